//! Async sockets on the runtime's port: [`TcpListener`], [`TcpStream`],
//! [`UdpSocket`], [`UnixListener`], [`UnixStream`].
//!
//! Operations take and return owned buffers — the kernel writes into (or reads
//! from) the buffer while the operation is in flight, so the operation must own
//! it: `let (res, buf) = stream.read(buf).await;`. A read fills the buffer's
//! capacity and returns it with `len()` = the bytes read; a write sends `buf[..]`.
//!
//! Streams also implement `futures_io::AsyncRead` and `AsyncWrite`, so crates
//! written against those traits (or against hyper's, through a small adapter;
//! see `examples/hyper_server.rs`) run on ringport. What a dropped operation
//! leaves behind is spelled out in the `core` module docs, in short: **a dropped
//! read never loses received bytes** (the next read returns them), a dropped write
//! may have been partly sent.
//!
//! ```
//! use ringport::net::{TcpListener, TcpStream};
//! let rt = ringport::Runtime::new()?;
//! rt.block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     let server = ringport::spawn(async move {
//!         let (conn, _peer) = listener.accept().await?;
//!         let (n, buf) = conn.read(Vec::with_capacity(64)).await;
//!         n?;
//!         conn.write_all(buf).await.0
//!     });
//!     let client = TcpStream::connect(addr).await?;
//!     client.write_all(b"ping".to_vec()).await.0?;
//!     let (n, buf) = client.read(Vec::with_capacity(64)).await;
//!     assert_eq!(&buf[..n?], b"ping");
//!     server.await??;
//!     Ok::<(), std::io::Error>(())
//! })?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub(crate) mod core;
mod inline;
mod stream;
mod tcp;
mod udp;
mod unix;
mod zc;

pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixListener, UnixStream};

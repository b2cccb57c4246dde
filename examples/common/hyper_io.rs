//! `HyperIo`: runs hyper 1.x over any `futures-io` stream (a ringport
//! `TcpStream`, `UnixStream`, ...).
//!
//! hyper 1.x does not use `futures-io` (nor tokio's) traits but its own,
//! `hyper::rt::Read` and `hyper::rt::Write`. The write side maps one to one. The
//! read side differs in one way: hyper hands over a `ReadBufCursor`, a view of
//! possibly *uninitialized* memory, while `AsyncRead::poll_read` wants an
//! initialized `&mut [u8]`. Filling the cursor in place would need `unsafe`
//! (`as_mut` + `advance`); this adapter stays safe instead: it reads into its own
//! scratch buffer (zeroed once, reused) and copies into the cursor with
//! `put_slice`. The price is one extra copy of received bytes, which for an HTTP
//! server is small beside parsing them.
//!
//! Shared by `examples/hyper_server.rs` and `tests/it/hyper_bridge.rs` through
//! `#[path]` module declarations; it is not an example on its own (cargo only
//! discovers `examples/*.rs` and `examples/*/main.rs`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

/// Largest read handed to the inner stream at once (ringport's own receive size).
const SCRATCH_MAX: usize = 64 * 1024;

/// A `futures-io` stream seen through hyper's I/O traits.
#[derive(Debug)]
pub struct HyperIo<T> {
    inner: T,
    /// Where reads land before they are copied into hyper's buffer; grows on
    /// demand up to `SCRATCH_MAX`.
    scratch: Vec<u8>,
}

impl<T> HyperIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        HyperIo {
            inner,
            scratch: Vec::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(SCRATCH_MAX);
        if want == 0 {
            // No room: nothing to read into (as with tokio's adapters, the caller
            // sees an untouched cursor).
            return Poll::Ready(Ok(()));
        }
        if this.scratch.len() < want {
            this.scratch.resize(want, 0);
        }
        // Pending means nothing was read (the AsyncRead contract; ringport keeps
        // what its receive brings for the next poll_read), so the scratch buffer
        // never holds bytes across polls.
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.scratch[..want]))?;
        // n == 0 leaves the cursor untouched: that is how hyper::rt::Read spells
        // end-of-stream.
        buf.put_slice(&this.scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// hyper's shutdown is futures-io's close: flush, then shut the write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    // is_write_vectored stays false (the default): futures-io's default
    // poll_write_vectored writes only the first buffer, so hyper is better off
    // flattening its headers and body into one buffer itself.
}

//! The tokio echo servers: a task per connection that reads into a 4096-byte
//! buffer and `write_all`s it back.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::{sig, spin, BUF};

/// Runs the echo server on a multi-thread runtime with `workers` worker threads, or on
/// a current-thread runtime when `workers` is `None`, until SIGINT/SIGTERM.
pub fn run(listen: SocketAddr, workers: Option<usize>, spin_for: Duration) -> io::Result<()> {
    run_with(listen, workers, move |s| serve(s, spin_for))
}

/// Runs a server whose connections `conn` serves, a task each, on a runtime
/// as [`run`] says, until SIGINT/SIGTERM.
pub fn run_with<F, Fut>(listen: SocketAddr, workers: Option<usize>, conn: F) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = match workers {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_io()
            .build()?,
        None => tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?,
    };
    // The signal thread tells the accept loop to stop through a socket pair.
    let (stop_rx, stop_tx) = StdUnixStream::pair()?;
    stop_rx.set_nonblocking(true)?;
    let signal = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sig::wait();
            let _ = io::Write::write_all(&mut &stop_tx, b"x");
            sig
        })?;
    let accepted = Arc::new(AtomicU64::new(0));
    let acc = accepted.clone();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
        println!("listening on {}", listener.local_addr()?);
        let stop = UnixStream::from_std(stop_rx)?;
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => {
                        acc.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(conn(s));
                    }
                    Err(e) => {
                        eprintln!("peer-echo: accept: {e}");
                        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                            // Out of descriptors: let connections close instead of spinning.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                },
                _ = stop.readable() => break,
            }
        }
        Ok::<(), io::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let sig = signal
        .join()
        .map_err(|_| io::Error::other("signal thread panicked"))??;
    eprintln!(
        "peer-echo: signal {sig}: stopped; {} connections accepted",
        accepted.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn serve(mut s: TcpStream, spin_for: Duration) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !spin_for.is_zero() && buf[0] == b'!' {
            spin(spin_for);
        }
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

//! The accept loop of the async servers (`echo --async`, `chat`).

use std::time::Duration;

use ringport::net::{TcpListener, TcpStream};

/// How long accepting pauses when the process is out of descriptors.
const BACKOFF: Duration = Duration::from_millis(10);

/// Accepts connections on `listener` for as long as the task runs, handing
/// each to `conn`. Out of descriptors (`EMFILE`, `ENFILE`) it pauses for
/// [`BACKOFF`] (with a warning at most once a second) instead of spinning on
/// the error; any other accept error is logged and skipped (after a yield:
/// at shutdown every accept fails at once, and the task must let go).
pub(crate) async fn accept_each(listener: &TcpListener, mut conn: impl FnMut(TcpStream)) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => conn(s),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                crate::warn_backoff(&e, BACKOFF);
                ringport::time::sleep(BACKOFF).await;
            }
            Err(e) => {
                tracing::debug!("accept: {e}");
                // Give the worker back: an error that comes again at once
                // (the runtime shutting down fails every accept) must not
                // keep this task polling forever, or shutdown never ends.
                ringport::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use ringport::net::TcpListener;
    use ringport::{BackendChoice, Runtime};

    /// The runtime shuts down while clients keep connecting: the accept loop
    /// must end (a closed port fails every accept at once; retried in a loop
    /// that never yields, the worker polling it never returned and
    /// `shutdown` hung).
    fn shutdown_while_connecting(backend: BackendChoice) {
        for _ in 0..40 {
            let Ok(rt) = Runtime::builder().backend(backend).build() else {
                return; // backend unavailable here
            };
            let l = rt
                .block_on(async {
                    TcpListener::bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
                })
                .unwrap();
            let addr = l.local_addr().unwrap();
            rt.spawn(async move { super::accept_each(&l, drop).await });
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let clients = std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let _ = std::net::TcpStream::connect(addr);
                }
            });
            std::thread::sleep(Duration::from_millis(5));
            let (tx, rx) = std::sync::mpsc::channel();
            let t = Instant::now();
            std::thread::spawn(move || {
                rt.shutdown();
                let _ = tx.send(());
            });
            let done = rx.recv_timeout(Duration::from_secs(5));
            stop.store(true, Ordering::Relaxed);
            clients.join().unwrap();
            assert!(done.is_ok(), "shutdown hung ({:?})", t.elapsed());
        }
    }

    #[test]
    fn shutdown_while_connecting_uring() {
        shutdown_while_connecting(BackendChoice::Uring);
    }

    #[test]
    fn shutdown_while_connecting_epoll() {
        shutdown_while_connecting(BackendChoice::Epoll);
    }
}

//! `ringport echo --async`: the same echo server written as ordinary async Rust
//! on [`ringport::Runtime`] — one task per connection, `read` then `write_all`
//! with the connection's own buffer — to measure what the async face costs over
//! raw completions (`echo.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringport::net::{TcpListener, TcpStream};
use ringport::Runtime;

use crate::echo::{spin, EchoArgs};
use crate::echo_multi::ConnCap;
use crate::signals;

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    closed: AtomicU64,
}

pub fn run(args: &EchoArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Each accept loop keeps an accept in flight: as many as --max-in-flight
    // would leave no room for the connections' reads. Connections past the
    // cap are closed at once, as on the raw paths: each keeps a read or a
    // write in flight, so one past it would wait for room without a word.
    let live = Arc::new(ConnCap::new(crate::echo::conn_cap(args, 1)?));
    signals::block()?;
    let mut b = Runtime::builder()
        .threads(args.workers())
        .concurrency(args.concurrency)
        .max_in_flight(args.max_in_flight)
        .lazy_release(args.lazy_release()?);
    if let Some(backend) = args.backend {
        b = b.backend(backend);
    }
    let rt = b
        .build()
        .map_err(|e| crate::echo::runtime_error(args.workers(), e))?;
    let listener = rt
        .block_on(async { TcpListener::bind(args.listen) })
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    let listener = Arc::new(listener);
    let counts = Arc::new(Counts::default());
    let spin_for = Duration::from_micros(args.spin_us);
    for _ in 0..args.accepts.max(1) {
        let l = listener.clone();
        let counts = counts.clone();
        let live = live.clone();
        let buf_size = args.buf_size;
        rt.spawn(async move {
            crate::accept::accept_each(&l, |s| {
                if !live.admit() {
                    drop(s); // past the cap: closed at once
                    return;
                }
                counts.accepted.fetch_add(1, Ordering::Relaxed);
                let counts = counts.clone();
                // Counted out when the task ends, or is dropped at shutdown.
                let admitted = Admitted(live.clone());
                ringport::spawn(async move {
                    serve(s, buf_size, spin_for).await;
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                    drop(admitted);
                });
            })
            .await;
        });
    }
    let signal = signals::waiter()?;
    crate::say(format_args!(
        "listening on {local} (async, backend {})",
        rt.handle().backend()
    ));
    let sig = signal.recv()?;
    let open = rt.handle().live_tasks();
    rt.shutdown();
    eprintln!(
        "echo --async: signal {sig}: stopped; {} connections accepted, {} closed by peers, {} tasks cancelled at shutdown",
        counts.accepted.load(Ordering::Relaxed),
        counts.closed.load(Ordering::Relaxed),
        open
    );
    Ok(())
}

/// A connection counted in by `ConnCap::admit`; counts it out when dropped.
struct Admitted(Arc<ConnCap>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.leave();
    }
}

async fn serve(s: TcpStream, buf_size: usize, spin_for: Duration) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(buf_size);
    loop {
        let (r, b) = s.read(buf).await;
        match r {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        if !spin_for.is_zero() && b.first() == Some(&b'!') {
            spin(spin_for);
        }
        let (r, mut b) = s.write_all(b).await;
        if r.is_err() {
            return;
        }
        b.clear();
        buf = b;
    }
}

//! The IOCP worker pool: threads that drain a port under its scheduling rules.
//!
//! The rules themselves (concurrency limit, LIFO wake, FIFO completions) live in
//! the port's scheduler core (`sched.rs`), exactly as IOCP keeps them in the
//! kernel's port object; this module adds what IOCP's thread pool adds: a set of
//! worker threads (default 2 × CPUs), panic isolation, and the stall detector —
//! a monitor thread that counts a handler running longer than a threshold
//! (default 10 ms) while completions wait as blocked, so another waiter runs.
//!
//! ```
//! use ringport::{CompletionPort, Pool};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//!
//! let port = CompletionPort::new()?;
//! let seen = Arc::new(AtomicUsize::new(0));
//! let s = seen.clone();
//! let pool = Pool::builder().spawn(&port, move |_port, c| {
//!     s.fetch_add(c.user_data as usize, Ordering::Relaxed);
//! })?;
//! for i in 1..=10 { port.post(0, i, 0)?; }
//! while seen.load(Ordering::Relaxed) < 55 { std::thread::yield_now(); }
//! pool.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::completion::Completion;
use crate::error::Error;
use crate::port::{batch_submissions, num_cpus, CompletionPort};

/// How long a handler may run while no thread waits for the kernel before the
/// monitor sends an idle thread to poll (lazy poll-role hand-off), and the
/// longest a completion held for a running thread waits (lazy release).
const POLL_HANDOFF: Duration = Duration::from_micros(250);

/// Configures a [`Pool`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    threads: usize,
    stall_threshold: Option<Duration>,
    lazy_release: usize,
    batch: usize,
    name: String,
    on_tick: Option<MonitorTick>,
}

/// What the monitor also runs each time it looks (see `on_monitor_tick`).
#[derive(Clone)]
struct MonitorTick(Arc<dyn Fn() + Send + Sync>);

impl fmt::Debug for MonitorTick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MonitorTick")
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            threads: 0,
            stall_threshold: Some(Duration::from_millis(10)),
            lazy_release: 0,
            batch: 1,
            name: "ringport".into(),
            on_tick: None,
        }
    }
}

impl PoolBuilder {
    /// Worker threads; 0 (the default) means 2 × CPUs, IOCP's classic advice.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// How long one handler may run, while completions wait, before the stall
    /// detector counts its thread as blocked (default 10 ms). `None` turns it
    /// off, and with it the workers' batching of what their handlers submit
    /// (each submission then reaches the kernel at once), which relies on the
    /// detector's monitor to flush what a long-running handler holds.
    pub fn stall_threshold(mut self, t: Option<Duration>) -> Self {
        self.stall_threshold = t;
        self
    }

    /// Lazy release: while a worker runs a handler, up to `n` queued
    /// completions wait for it instead of waking an idle worker (0, the
    /// default, keeps IOCP's rule: a completion queued while fewer than the
    /// concurrency value run releases a waiting thread at once).
    ///
    /// A worker that comes back within a few microseconds takes them itself,
    /// which saves the wake-up and the context switches of a second thread
    /// when one keeps up; more than `n` queued release a worker at once. The
    /// stall detector's monitor releases a worker for completions it finds
    /// queued without a break for 250 µs or more. It looks every half stall
    /// threshold while handlers run (5 ms by default), and up to every 4 ×
    /// the threshold after the pool was idle: that is about the most a held
    /// completion waits behind a handler that runs on. Needs the monitor:
    /// with [`stall_threshold`](Self::stall_threshold) `None` it is off.
    /// A thread outside the pool that called `get` counts as running until it
    /// calls again, as in IOCP, so completions may be held for it too.
    ///
    /// Measured (BENCHMARKS.md, session 11): on the skewed echo load it cut
    /// p99 to 0.66 ×, but on `ringport serve`'s CPU-bound loads one worker
    /// then did what two would (1 KiB on epoll: 0.87 × the requests/s).
    pub fn lazy_release(mut self, n: usize) -> Self {
        self.lazy_release = n;
        self
    }

    /// Completions a worker takes per dequeue (IOCP's
    /// `GetQueuedCompletionStatusEx` instead of `GetQueuedCompletionStatus`);
    /// default 1. A worker runs the handlers of its batch one after another,
    /// in the port's FIFO order, and counts as one running handler meanwhile,
    /// so the scheduler's lock, clock and backend look are paid once a batch.
    /// A batch is never more than the worker's fair share: with other workers
    /// idle and slots free for them, the queue is split evenly, so batching
    /// does not serialise work other threads could run (`get_many` does the
    /// same for any caller).
    ///
    /// The cost: a completion waits for the handlers before it in its batch,
    /// and the stall detector times the whole batch as one handler. Keep 1
    /// for handlers that may block or run long. Measured (BENCHMARKS.md,
    /// session 20): `ringport echo` on io_uring, 8: 0.93 and 0.90 × the CPU
    /// per message of 1 at 64 and 1000 connections; on epoll it cost more
    /// (its poller hands completions over a few at a time), so `echo` batches
    /// on io_uring only. A `max` of 0 is taken as 1.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Runs `f` on the stall detector's monitor each time it looks at the
    /// port: every half stall threshold or more often while handlers run,
    /// less often while the pool idles (see `lazy_release`). The runtime
    /// posts from here a task stuck in a stalled worker's next slot. Nothing
    /// runs it without the monitor (`stall_threshold` `None`).
    pub(crate) fn on_monitor_tick(mut self, f: Box<dyn Fn() + Send + Sync>) -> Self {
        self.on_tick = Some(MonitorTick(Arc::from(f)));
        self
    }

    /// Thread name prefix (default "ringport").
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the workers. Each loops `port.get(None)` (or `get_many`, see
    /// [`batch`](Self::batch)) → `handler(&port, completion)`
    /// until the port is closed. A handler that panics is caught and counted; its
    /// thread keeps serving.
    pub fn spawn<F>(self, port: &CompletionPort, handler: F) -> io::Result<Pool>
    where
        F: Fn(&CompletionPort, Completion) + Send + Sync + 'static,
    {
        let n = if self.threads == 0 {
            2 * num_cpus()
        } else {
            self.threads
        };
        let handler = Arc::new(handler);
        let shared = Arc::new(Shared {
            panics: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        // A worker holds back what its handler submits for its own next
        // `get` (one system call for the lot) only when the monitor runs,
        // which flushes what a handler that runs on keeps held: without it,
        // an operation submitted by a handler that then waits (say, for that
        // operation, on another thread) never reached the kernel.
        let batch = self.stall_threshold.is_some();
        let per_get = self.batch;
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let wport = port.clone();
            let handler = handler.clone();
            let shared = shared.clone();
            let t = thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || {
                    // The epoll backend's `sendfile` then needs no signal-mask
                    // calls per operation on this thread (see `epoll/sock.rs`).
                    crate::sys::epoll::block_sigpipe_here();
                    // Lives as long as the pool: may submit to io_uring itself.
                    crate::sys::own_thread();
                    batch_submissions(batch);
                    worker(&wport, &*handler, &shared, per_get);
                    batch_submissions(false);
                });
            match t {
                Ok(h) => workers.push(h),
                Err(e) => return Err(abandon(port, workers, e)),
            }
        }
        let monitor = match self.stall_threshold {
            None => None,
            Some(threshold) => {
                let mport = port.clone();
                let mshared = shared.clone();
                let on_tick = self.on_tick.clone();
                let spawned = thread::Builder::new()
                    .name(format!("{}-stall", self.name))
                    .spawn(move || {
                        crate::sys::own_thread();
                        // While the poll role is vacant behind a running handler,
                        // look again when that vacancy reaches the hand-off delay
                        // (at most every half delay); at half
                        // the stall threshold while handlers run otherwise; and
                        // back off (up to 4 × the threshold) while the port is
                        // idle, so an idle server hardly wakes at all.
                        let fast = (POLL_HANDOFF / 2).max(Duration::from_micros(50));
                        let busy = (threshold / 2).max(fast);
                        let idle_max = (threshold * 4).max(busy);
                        let mut tick = busy;
                        while !mshared.stop.load(Ordering::Acquire) && !mport.is_closed() {
                            thread::park_timeout(tick);
                            let watch = mport.stall_scan(threshold, POLL_HANDOFF);
                            if let Some(f) = &on_tick {
                                (f.0)();
                            }
                            let st = mport.sched_stats();
                            tick = if let Some(left) = watch {
                                left.max(fast)
                            } else if st.running == 0 && st.queued == 0 {
                                (tick * 2).min(idle_max)
                            } else {
                                busy
                            };
                        }
                    });
                match spawned {
                    Ok(h) => {
                        // With a monitor to hand the poll role over when a
                        // handler runs long, idle threads need not be woken for
                        // it after every completion (see `sched.rs`, lazy poll
                        // hand-off); held completions are handed out by the
                        // same monitor (lazy release).
                        port.set_lazy_poll(true);
                        port.set_hold(self.lazy_release);
                        Some(h)
                    }
                    Err(e) => return Err(abandon(port, workers, e)),
                }
            }
        };
        Ok(Pool {
            port: port.clone(),
            workers,
            monitor,
            shared,
        })
    }
}

/// A pool that could not start all its threads: closes the port, joins the
/// workers started so far, and hands back the spawn error.
fn abandon(port: &CompletionPort, workers: Vec<JoinHandle<()>>, e: io::Error) -> io::Error {
    port.close();
    for w in workers {
        let _ = w.join();
    }
    e
}

#[derive(Debug)]
struct Shared {
    panics: AtomicU64,
    stop: AtomicBool,
}

fn worker(
    port: &CompletionPort,
    handler: &(dyn Fn(&CompletionPort, Completion) + Sync),
    shared: &Shared,
    batch: usize,
) {
    // One reused vector: `get` would allocate one per completion.
    let mut got: Vec<Completion> = Vec::with_capacity(batch);
    loop {
        match port.get_many(&mut got, batch, None) {
            Ok(_) => {
                // In order: the port's FIFO order is kept within a batch.
                for c in got.drain(..) {
                    if catch_unwind(AssertUnwindSafe(|| handler(port, c))).is_err() {
                        shared.panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("a completion handler panicked; the worker keeps serving");
                    }
                }
            }
            Err(Error::Closed) => return,
            Err(e) => {
                tracing::error!("worker get failed: {e}");
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// A running pool of workers draining one port.
#[derive(Debug)]
pub struct Pool {
    port: CompletionPort,
    workers: Vec<JoinHandle<()>>,
    monitor: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Pool {
    /// A builder with the defaults (2 × CPUs threads, 10 ms stall threshold).
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The port this pool drains.
    pub fn port(&self) -> &CompletionPort {
        &self.port
    }

    /// Worker threads in the pool.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Handlers that panicked so far.
    pub fn panics(&self) -> u64 {
        self.shared.panics.load(Ordering::Relaxed)
    }

    /// Closes the port and waits for every worker to finish its current handler.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.port.close();
        // Dropped (or shut down) from one of its own handlers: that worker
        // cannot join itself; it sees `Closed` at its next `get` and exits.
        let me = thread::current().id();
        for w in self.workers.drain(..) {
            if w.thread().id() != me {
                let _ = w.join();
            }
        }
        if let Some(m) = self.monitor.take() {
            m.thread().unpark();
            let _ = m.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

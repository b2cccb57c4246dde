//! `ringport serve`: a static HTTP/1.1 file server on ringport's async face.
//!
//! One [`Runtime`] (the IOCP pool: `--threads`, `--concurrency`), a few acceptor
//! tasks on one listener, and one task per connection (`conn.rs`). Every wait
//! of a connection — for the next request, for the rest of a head, for a send —
//! is bounded in time and ends early when the server stops (but for the rest
//! of the body of a request whose head is in: that request is answered); see
//! [`Watch`].
//!
//! Deadlines are not port timers: a `ringport::time::timeout` around every
//! receive and send would submit a timer and then cancel it for each of them,
//! two more operations (and completions) per request than the I/O itself. A
//! wait stores its deadline in the task's [`Slot`] instead (an atomic store),
//! and one reaper task (`ringport::time::interval`, ticking every quarter of the
//! shortest timeout, at most every second) wakes the waits whose deadline has
//! passed. A timeout is thus late by at most a tick, never early.
//!
//! Shutdown (SIGINT/SIGTERM): the acceptors stop and the listener closes; a
//! connection waiting for a request closes at once; a response being sent is
//! finished (with `Connection: close`); then the runtime shuts down and the
//! program exits 0. If connections are still busy after `--grace-ms`, they are
//! cut.
//!
//! Files: `path.rs` (target → path under DIR, the traversal walls), `open.rs`
//! (opening it: `openat2` beneath DIR), `http.rs`
//! (parsing, limits, heads), `cond.rs` (ranges, conditional requests),
//! `conn.rs` (a connection),
//! `body.rs` (a file body onto the socket, copy-free), `cache.rs` (small files
//! in memory, larger ones kept open),
//! `listing.rs` (directory pages).

mod body;
mod cache;
mod cond;
mod conn;
mod http;
mod listing;
mod log;
mod open;
mod path;

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use clap::Args;
use ringport::net::TcpListener;
use ringport::{BackendChoice, Runtime};

use crate::signals;

/// Flags of `ringport serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder to serve.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = crate::socket_addr)]
    listen: SocketAddr,
    /// Worker threads (0 = CPUs, at least 2). A handler blocks only where a
    /// file read misses the page cache (as an nginx worker does), so the
    /// pool's usual 2 × CPUs mostly adds threads that take turns waiting in the
    /// kernel: with 4 rather than 2 on two CPUs, 1.2–1.6 × the context
    /// switches and up to 0.85 × the throughput on 64 KiB and 16 MiB files
    /// (BENCHMARKS.md, session 9).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Handlers running at once (0 = CPUs).
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Backend: auto, uring or epoll (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<BackendChoice>,
    /// Lazy release: while a worker runs a handler, up to this many queued
    /// completions wait for it instead of waking another worker (0 = off:
    /// IOCP's immediate release); the pool's monitor, at its next look,
    /// releases completions held 250 µs or more. Default:
    /// RINGPORT_LAZY_RELEASE, else 0.
    /// On a CPU-bound load it makes one worker do what two would (1 KiB
    /// files on epoll: 0.87 × the requests/s of 0; BENCHMARKS.md, session 11).
    #[arg(long)]
    lazy_release: Option<usize>,
    /// Print one access-log line per request on stdout.
    #[arg(long)]
    log: bool,
    /// Most connections open at once; more wait in the listen backlog
    /// [default: 10000, or less if the descriptor limit is lower].
    #[arg(long)]
    max_conns: Option<usize>,
    /// Memory for small files kept in memory, in MiB (0 = no cache).
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
    /// Largest file kept in memory, in KiB (larger ones go file → socket
    /// without a copy).
    #[arg(long, default_value_t = 32)]
    cache_file_kib: u64,
    /// Time a client has to send a whole request head.
    #[arg(long, default_value_t = 10_000, hide = true)]
    header_timeout_ms: u64,
    /// Time a kept-alive connection may wait for its next request.
    #[arg(long, default_value_t = 30_000, hide = true)]
    idle_timeout_ms: u64,
    /// Time one send may wait for a client that does not read.
    #[arg(long, default_value_t = 60_000, hide = true)]
    send_timeout_ms: u64,
    /// Copy file bodies through a buffer instead of the copy-free transfer.
    #[arg(long, hide = true)]
    copy_bodies: bool,
    /// Resolve paths with canonicalize + open instead of `openat2` (the
    /// fallback for kernels without it; for tests and comparisons).
    #[arg(long, hide = true)]
    no_openat2: bool,
    /// Time busy connections get to finish after a shutdown signal.
    #[arg(long, default_value_t = 30_000, hide = true)]
    grace_ms: u64,
    /// On exit, print the port's scheduler counters per request (hand-offs
    /// to sleeping workers, poll-role take-overs, stalls) on standard error.
    #[arg(long)]
    stats: bool,
}

/// What every connection task shares.
#[derive(Debug)]
pub struct Server {
    /// DIR, open: requests' files are opened beneath it.
    pub dir: open::Root,
    pub cfg: Config,
    pub cache: cache::Cache,
    stopping: AtomicBool,
    /// Every task that waits with a deadline or must notice a stop.
    watchers: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Deadlines count milliseconds from here.
    epoch: Instant,
    next_watch: AtomicU64,
    /// Connections open (reserved by an acceptor before its accept).
    open: AtomicUsize,
    max_conns: usize,
    /// Acceptors waiting for `open` to drop under `max_conns`.
    room: Mutex<Vec<Waker>>,
    pub requests: AtomicU64,
    accepted: AtomicU64,
    /// The access log, with `--log`.
    pub access_log: Option<log::AccessLog>,
}

/// The resolved settings a connection uses.
#[derive(Debug, Clone)]
pub struct Config {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub log: bool,
    /// File bodies go through a buffer (`--copy-bodies`, for tests and comparisons).
    pub copy_bodies: bool,
}

impl Server {
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops the server: every watcher wakes and sees it.
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let all: Vec<_> = lock(&self.watchers).values().cloned().collect();
        for slot in all {
            if let Some(w) = lock(&slot.waker).take() {
                w.wake();
            }
        }
        for w in std::mem::take(&mut *lock(&self.room)) {
            w.wake();
        }
    }

    /// Registers a task that waits (see [`Watch::wait`]).
    pub fn watch(self: &Arc<Self>) -> Watch {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            waker: Mutex::new(None),
            deadline: AtomicU64::new(NO_DEADLINE),
            expired: AtomicU64::new(NO_DEADLINE),
        });
        lock(&self.watchers).insert(id, slot.clone());
        Watch {
            srv: self.clone(),
            id,
            slot,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Wakes every wait whose deadline has passed, each `tick`, until stopped.
    async fn reap(self: Arc<Self>, tick: Duration) {
        let mut every = ringport::time::interval(tick);
        let mut due = Vec::new();
        // Kept-open files are swept about once a second.
        let sweep_every = (1000 / tick.as_millis().max(1)).max(1);
        let mut ticks = 0u128;
        while !self.stopping() {
            every.tick().await;
            ticks += 1;
            if ticks % sweep_every == 0 {
                self.cache.sweep_open(&self.dir);
            }
            let now = self.now_ms();
            for slot in lock(&self.watchers).values() {
                let d = slot.deadline.load(Ordering::SeqCst);
                if d <= now {
                    // Expires exactly this deadline: a later wait of the same
                    // task (another deadline) is not affected.
                    slot.expired.store(d, Ordering::SeqCst);
                    due.push(slot.clone());
                }
            }
            for slot in due.drain(..) {
                if let Some(w) = lock(&slot.waker).take() {
                    w.wake();
                }
            }
        }
    }

    /// Reserves a connection slot, waiting while `max_conns` are open. `None`:
    /// the server is stopping.
    async fn reserve(self: &Arc<Self>) -> Option<Permit> {
        poll_fn(|cx| {
            loop {
                if self.stopping() {
                    return Poll::Ready(None);
                }
                let n = self.open.load(Ordering::Acquire);
                if n < self.max_conns {
                    if self
                        .open
                        .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Poll::Ready(Some(Permit(self.clone())));
                    }
                    continue;
                }
                lock(&self.room).push(cx.waker().clone());
                // A connection may have closed (or a stop come) before the
                // waker was in place: look once more.
                if self.open.load(Ordering::Acquire) < self.max_conns || self.stopping() {
                    continue;
                }
                return Poll::Pending;
            }
        })
        .await
    }
}

/// One open connection's share of `max_conns`; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit(Arc<Server>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        let waiters = std::mem::take(&mut *lock(&self.0.room));
        for w in waiters {
            w.wake();
        }
    }
}

const NO_DEADLINE: u64 = u64::MAX;

/// What the stop broadcast and the reaper know of one waiting task.
#[derive(Debug)]
pub struct Slot {
    waker: Mutex<Option<Waker>>,
    /// The current wait's deadline (ms since `Server::epoch`), or `NO_DEADLINE`.
    deadline: AtomicU64,
    /// The last deadline the reaper found passed.
    expired: AtomicU64,
}

/// A task's registration for deadlines and the stop broadcast.
#[derive(Debug)]
pub struct Watch {
    srv: Arc<Server>,
    id: u64,
    slot: Arc<Slot>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        lock(&self.srv.watchers).remove(&self.id);
    }
}

/// How a bounded wait ended.
#[derive(Debug)]
pub enum Waited<T> {
    Done(T),
    Elapsed,
    Stopped,
}

impl Watch {
    /// Runs `fut` for at most `limit` (give or take a reaper tick), and only
    /// while the server is not stopping (if `stoppable`). A future cut short is
    /// dropped, which cancels the operation it waited on.
    pub async fn wait<F: Future>(
        &self,
        fut: F,
        limit: Duration,
        stoppable: bool,
    ) -> Waited<F::Output> {
        let mut fut = pin!(fut);
        let deadline = self
            .srv
            .now_ms()
            .saturating_add(limit.as_millis() as u64)
            .min(NO_DEADLINE - 1);
        let slot = &*self.slot;
        slot.deadline.store(deadline, Ordering::SeqCst);
        let r = poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Waited::Done(v));
            }
            {
                let mut w = lock(&slot.waker);
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            // After the waker is in place: `stop` and the reaper set their mark
            // before they take the waker, so one of the two sees the other.
            if stoppable && self.srv.stopping() {
                return Poll::Ready(Waited::Stopped);
            }
            if slot.expired.load(Ordering::SeqCst) == deadline {
                return Poll::Ready(Waited::Elapsed);
            }
            Poll::Pending
        })
        .await;
        slot.deadline.store(NO_DEADLINE, Ordering::SeqCst);
        r
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Acceptor tasks kept on the listener.
const ACCEPTORS: usize = 4;

pub fn run(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let root = std::fs::canonicalize(&args.dir)
        .map_err(|e| format!("cannot serve {}: {e}", args.dir.display()))?;
    if !root.is_dir() {
        return Err(format!("cannot serve {}: not a directory", args.dir.display()).into());
    }
    if args.max_conns == Some(0) {
        return Err("--max-conns must be at least 1".into());
    }
    if args.threads > crate::echo::MAX_THREADS {
        let most = crate::echo::MAX_THREADS;
        return Err(format!("--threads must be at most {most}").into());
    }
    // Each connection may hold its socket and one open file; the cache keeps
    // up to MAX_OPEN_FILES more open.
    let nofile = raise_nofile();
    let spare = 64 + cache::MAX_OPEN_FILES as u64;
    let fd_room = (nofile.saturating_sub(spare) / 2).max(1) as usize;
    let max_conns = match args.max_conns {
        Some(n) if n > fd_room => {
            eprintln!(
                "ringport serve: --max-conns {n} lowered to {fd_room} (the descriptor limit is {nofile})"
            );
            fd_room
        }
        Some(n) => n,
        None => fd_room.min(10_000),
    };
    signals::block()?;
    let workers = crate::echo::workers_or_one_per_cpu(args.threads);
    let mut b = Runtime::builder()
        .threads(workers)
        .concurrency(args.concurrency)
        .lazy_release(crate::echo::lazy_release_or(args.lazy_release, 0)?)
        // Each connection waits on a receive and a timer; leave room for them all.
        .max_in_flight((max_conns * 3 + 1024).max(32 * 1024));
    if let Some(backend) = args.backend {
        b = b.backend(backend);
    }
    let rt = b
        .build()
        .map_err(|e| crate::echo::runtime_error(workers, e))?;
    let listener = rt
        .block_on(async { TcpListener::bind(args.listen) })
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    let dir = open::Root::open(root.clone(), !args.no_openat2)
        .map_err(|e| format!("cannot serve {}: {e}", args.dir.display()))?;
    let srv = Arc::new(Server {
        dir,
        cfg: Config {
            header_timeout: Duration::from_millis(args.header_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(args.idle_timeout_ms.max(1)),
            send_timeout: Duration::from_millis(args.send_timeout_ms.max(1)),
            log: args.log,
            copy_bodies: args.copy_bodies,
        },
        cache: cache::Cache::new(
            args.cache_mib.saturating_mul(1 << 20),
            args.cache_file_kib.saturating_mul(1 << 10),
        ),
        stopping: AtomicBool::new(false),
        watchers: Mutex::new(HashMap::new()),
        epoch: Instant::now(),
        next_watch: AtomicU64::new(0),
        open: AtomicUsize::new(0),
        max_conns,
        room: Mutex::new(Vec::new()),
        requests: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        access_log: match args.log {
            true => Some(log::AccessLog::start()?),
            false => None,
        },
    });
    let listener = Arc::new(listener);
    let acceptors: Vec<_> = (0..ACCEPTORS)
        .map(|_| rt.spawn(accept_loop(srv.clone(), listener.clone())))
        .collect();
    drop(listener); // the acceptors own it: it closes when they end
    let shortest = [
        srv.cfg.header_timeout,
        srv.cfg.idle_timeout,
        srv.cfg.send_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1));
    let tick = (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    rt.spawn(srv.clone().reap(tick));
    let signal = signals::waiter()?;
    crate::say(format_args!(
        "serving {} at http://{local}/ (backend {}, max {max_conns} connections)",
        root.display(),
        rt.handle().backend()
    ));
    let sig = signal.recv()?;
    srv.stop();
    let deadline = Instant::now() + Duration::from_millis(args.grace_ms);
    while (srv.open.load(Ordering::Acquire) > 0 || acceptors.iter().any(|a| !a.is_finished()))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let cut = srv.open.load(Ordering::Acquire);
    // Read before the shutdown, which leaves the port closed.
    let stats = args.stats.then(|| rt.handle().port_stats());
    rt.shutdown();
    if let Some(stats) = stats {
        let requests = srv.requests.load(Ordering::Relaxed);
        eprintln!(
            "serve: {}",
            crate::info::stats_line(&stats, requests, "request")
        );
    }
    let dropped = srv.access_log.as_ref().map_or(0, |l| l.finish());
    eprintln!(
        "serve: signal {sig}: stopped; {} connections, {} requests{}{}",
        srv.accepted.load(Ordering::Relaxed),
        srv.requests.load(Ordering::Relaxed),
        if cut > 0 {
            format!(", {cut} still busy after the grace period were cut")
        } else {
            String::new()
        },
        if dropped > 0 {
            format!(", {dropped} access-log lines dropped (stdout was not read fast enough)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Accepts connections while there is room, until the server stops. Running
/// out of descriptors backs off (10 ms, doubling to 1 s) instead of spinning.
async fn accept_loop(srv: Arc<Server>, listener: Arc<TcpListener>) {
    let watch = srv.watch();
    let mut backoff = Duration::from_millis(10);
    loop {
        let Some(permit) = srv.reserve().await else {
            return;
        };
        // A long limit: an accept only ends early when the server stops.
        let (stream, peer) = match watch
            .wait(listener.accept(), Duration::from_secs(3600), true)
            .await
        {
            Waited::Stopped => return,
            Waited::Elapsed => continue,
            Waited::Done(Ok(c)) => c,
            Waited::Done(Err(e)) => {
                drop(permit);
                match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        crate::warn_backoff(&e, backoff);
                        let nap = ringport::time::sleep(backoff);
                        if let Waited::Stopped = watch.wait(nap, backoff * 2, true).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    _ if srv.stopping() => return,
                    // Not from the kernel: the port refused the operation (it is
                    // closing); every later accept would fail the same way.
                    None => return,
                    _ => {
                        // ECONNABORTED and the like: that connection only.
                        tracing::debug!("accept: {e}");
                        ringport::yield_now().await;
                    }
                }
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        srv.accepted.fetch_add(1, Ordering::Relaxed);
        ringport::spawn(conn::run(srv.clone(), stream, peer, permit));
    }
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit.
fn raise_nofile() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

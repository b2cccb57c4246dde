//! `ringport echo`: a TCP echo server on the completion port and its pool.
//! This file is the `--plain-recv` path and the flags; the default path, a
//! multishot receive into a provided-buffer pool, is `echo_multi.rs`.
//!
//! Every connection has exactly one operation in flight (a recv, or the send of
//! what that recv returned), so two handlers never work on the same connection at
//! once and no per-connection lock is needed. The descriptor number travels in
//! each operation's `user_data`; the descriptor itself is owned by the connection
//! table until its last operation has completed.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use ringport::{BackendChoice, Completion, CompletionPort, Op, Pool, Submitted};

use crate::signals;

impl EchoArgs {
    /// Worker threads to start (`--threads`, or its default).
    pub(crate) fn workers(&self) -> usize {
        workers_or_one_per_cpu(self.threads)
    }

    /// `--batch`, or its default for the port's backend: 8 on io_uring,
    /// 1 (IOCP's one completion per dequeue) on epoll.
    pub(crate) fn batch(&self, backend: ringport::BackendKind) -> usize {
        self.batch.map_or(
            match backend {
                ringport::BackendKind::Uring => 8,
                _ => 1,
            },
            |n| n as usize,
        )
    }

    /// `--lazy-release`, or its default.
    pub(crate) fn lazy_release(&self) -> Result<usize, String> {
        lazy_release_or(self.lazy_release, 4)
    }
}

/// `flag` if given, else `RINGPORT_LAZY_RELEASE` if set, else `default`.
pub(crate) fn lazy_release_or(flag: Option<usize>, default: usize) -> Result<usize, String> {
    if let Some(n) = flag {
        return Ok(n);
    }
    match std::env::var("RINGPORT_LAZY_RELEASE") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("RINGPORT_LAZY_RELEASE={v:?}: expected a whole number")),
        Err(_) => Ok(default),
    }
}

/// `threads` if set, else one worker per CPU (at least 2): the default of the
/// programs whose handlers do not block (`echo`, `serve`), where the pool's
/// usual 2 × CPUs only adds threads that contend for the CPUs.
pub(crate) fn workers_or_one_per_cpu(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        ringport::num_cpus().max(2)
    }
}

/// Flags of `ringport echo`.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000", value_parser = crate::socket_addr)]
    pub(crate) listen: SocketAddr,
    /// Worker threads (0 = CPUs, at least 2). Echo handlers never block, so the
    /// pool's usual 2 × CPUs (IOCP's rule for handlers that may) only adds threads
    /// that contend for the CPUs: unpinned, with the client on the same two CPUs,
    /// 4 workers made 4–5 × tokio's context switches and 1.4–1.5 × its p99 on the
    /// skewed load, 2 workers about tokio's (BENCHMARKS.md, session 4).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Handlers running at once (0 = CPUs).
    #[arg(long, default_value_t = 0)]
    pub(crate) concurrency: usize,
    /// Backend: auto, uring or epoll (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    pub(crate) backend: Option<BackendChoice>,
    /// Lazy release: while a worker runs a handler, up to this many queued
    /// completions wait for it instead of waking another worker (0 = off:
    /// IOCP's immediate release); the pool's monitor, at its next look,
    /// releases completions held 250 µs or more. Default:
    /// RINGPORT_LAZY_RELEASE, else 4: on the skewed load (64 connections)
    /// p99 0.66 × that of 0, and elsewhere no cost the noise shows (BENCHMARKS.md,
    /// session 11).
    #[arg(long)]
    pub(crate) lazy_release: Option<usize>,
    /// Completions a worker takes per dequeue (`PoolBuilder::batch`; at least 1).
    /// Default: 8 on io_uring, where it cut the CPU per message to 0.90–0.93 ×
    /// at 64 and 1000 connections; 1 on epoll, where it cost more
    /// (BENCHMARKS.md, session 20).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) batch: Option<u32>,
    /// Burn this many microseconds of CPU before echoing a message whose first byte is '!'.
    #[arg(long, default_value_t = 0)]
    pub(crate) spin_us: u64,
    /// Receive buffer size, in bytes: of each pool buffer, or (with
    /// `--plain-recv`) of each connection's own buffer.
    #[arg(long, default_value_t = 4096)]
    pub(crate) buf_size: usize,
    /// Receive with one recv and its own buffer per connection, instead of a
    /// multishot receive into a shared provided-buffer pool. The default is
    /// the multishot receive where the kernel has it (io_uring with native
    /// multishot `RECV`), the plain receive elsewhere: emulated on epoll, the
    /// multishot path costs about twice the CPU per 4 KiB message here (it
    /// copies each chunk into the connection's send queue), see BENCHMARKS.md.
    #[arg(long, conflicts_with = "multishot")]
    pub(crate) plain_recv: bool,
    /// Use the multishot receive even where it is emulated (epoll).
    #[arg(long)]
    pub(crate) multishot: bool,
    /// Operations in flight at most: each open connection keeps one receive
    /// in flight, so this caps the connections served (io_uring allows up to
    /// 32768).
    #[arg(long, default_value_t = 32768)]
    pub(crate) max_in_flight: usize,
    /// Buffers in the shared receive pool (1 to 32768; without `--plain-recv`).
    #[arg(long, default_value_t = 1024)]
    pub(crate) pool_buffers: usize,
    /// Accepts kept outstanding on the listener.
    #[arg(long, default_value_t = 16)]
    pub(crate) accepts: usize,
    /// Operations a handler chains inline before it returns to the port (plain
    /// receive only): a send or receive started with `submit_inline` that
    /// finishes at once (epoll) is handled on the spot, without a packet.
    /// 0 queues every completion.
    #[arg(long, default_value_t = 16)]
    pub(crate) inline_chain: u32,
    /// Serve with the async face (a `Runtime` task per connection) instead of raw completions.
    #[arg(long = "async")]
    pub(crate) async_mode: bool,
}

const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
/// The back-off timer after an accept ran out of descriptors.
const ACCEPT_RETRY: u64 = 4;
const LISTENER_KEY: u64 = u64::MAX;

/// How long accepting pauses when the process is out of descriptors.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Most worker threads `--threads` may ask for.
pub(crate) const MAX_THREADS: usize = 1024;

/// Binds `addr` (with `SO_REUSEADDR`, as std does) and listens with a backlog
/// of 1024, as `ringport::net::TcpListener` does: std's 128 overflowed on a
/// burst of connects, and each connect dropped then waited 1 s for its SYN
/// to be sent again.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A pool of `n` workers could not start: say which flag asked for them.
pub(crate) fn spawn_error(n: usize, e: std::io::Error) -> String {
    format!("cannot start {n} worker threads (--threads): {e}")
}

/// A `Runtime` of `n` workers could not be built: if a worker thread could
/// not start, say which flag asked for them.
pub(crate) fn runtime_error(n: usize, e: std::io::Error) -> String {
    match e.raw_os_error() {
        // What a worker thread that cannot start gives.
        Some(libc::EAGAIN | libc::ENOMEM) => {
            format!("cannot start the runtime ({n} worker threads, see --threads): {e}")
        }
        _ => e.to_string(),
    }
}

/// `user_data`: kind (4 bits) | position already sent (28 bits) | descriptor (32 bits).
fn ud(kind: u64, pos: usize, fd: RawFd) -> u64 {
    (kind << 60) | ((pos as u64 & 0x0fff_ffff) << 32) | (fd as u32 as u64)
}

fn ud_parts(ud: u64) -> (u64, usize, RawFd) {
    (
        ud >> 60,
        ((ud >> 32) & 0x0fff_ffff) as usize,
        (ud & 0xffff_ffff) as u32 as RawFd,
    )
}

struct Server {
    listener: TcpListener,
    /// Open connections, indexed by descriptor number. A descriptor stays here
    /// (open) until the completion of its connection's last operation.
    conns: Mutex<Vec<Option<OwnedFd>>>,
    spin: Duration,
    buf_size: usize,
    inline_chain: u32,
    stopping: AtomicBool,
    accepted: AtomicU64,
    closed: AtomicU64,
    /// Connections open, and the most that may be (`conn_cap`): each keeps
    /// one operation in flight, so past this a handler would wait for room
    /// that only other handlers can free — and with every worker waiting,
    /// nobody would. Connections past the cap are closed at once.
    live: crate::echo_multi::ConnCap,
    /// Out of descriptors: the accepts that failed wait for the back-off
    /// timer (one in flight while this is set) instead of being resubmitted,
    /// and `idle_accepts` counts them, to resubmit when it fires. No handler
    /// sleeps: one that did held a worker from every other connection.
    backing_off: AtomicBool,
    idle_accepts: AtomicUsize,
}

/// Connections `ops_per_conn` operations each can be served at once under
/// `--max-in-flight`, beside the accepts kept outstanding.
pub(crate) fn conn_cap(args: &EchoArgs, ops_per_conn: usize) -> Result<usize, String> {
    let accepts = args.accepts.max(1);
    if args.max_in_flight <= accepts {
        return Err(format!(
            "--max-in-flight ({}) must be larger than --accepts ({accepts}): \
             the accepts alone would fill it",
            args.max_in_flight
        ));
    }
    match (args.max_in_flight - accepts) / ops_per_conn {
        0 => Err(format!(
            "--max-in-flight ({}) leaves no room for a connection beside {accepts} accepts \
             (each connection keeps {ops_per_conn} operations in flight)",
            args.max_in_flight
        )),
        cap => Ok(cap),
    }
}

pub fn run(args: &EchoArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.buf_size == 0 || args.buf_size > 0x0fff_ffff {
        return Err("--buf-size must be between 1 and 268435455".into());
    }
    if args.threads > MAX_THREADS {
        return Err(format!("--threads must be at most {MAX_THREADS}").into());
    }
    if args.async_mode {
        return crate::echo_async::run(args);
    }
    signals::block()?;
    let mut builder = CompletionPort::builder()
        .concurrency(args.concurrency)
        .max_in_flight(args.max_in_flight);
    if let Some(b) = args.backend {
        builder = builder.backend(b);
    }
    let port = builder.build()?;
    let native =
        port.stats().op_paths.get(ringport::OpKind::RecvMulti) == Some(ringport::op::OpPath::Uring);
    if args.multishot || (!args.plain_recv && native) {
        return crate::echo_multi::run(args, port);
    }
    let cap = conn_cap(args, 1)?;
    let listener =
        listen(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    port.associate(&listener, LISTENER_KEY)?;
    let server = Arc::new(Server {
        listener,
        conns: Mutex::new(Vec::new()),
        spin: Duration::from_micros(args.spin_us),
        buf_size: args.buf_size,
        inline_chain: args.inline_chain,
        stopping: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        live: crate::echo_multi::ConnCap::new(cap),
        backing_off: AtomicBool::new(false),
        idle_accepts: AtomicUsize::new(0),
    });
    let s = server.clone();
    let pool = Pool::builder()
        .threads(args.workers())
        .lazy_release(args.lazy_release()?)
        .batch(args.batch(port.backend()))
        .name("echo")
        .spawn(&port, move |port, c| s.handle(port, c))
        .map_err(|e| spawn_error(args.workers(), e))?;
    for _ in 0..args.accepts.max(1) {
        port.submit(Op::accept(&server.listener), ud(ACCEPT, 0, 0))?;
    }
    let signal = signals::waiter()?;
    crate::say(format_args!(
        "listening on {local} (backend {}, {} threads, concurrency {}, batch {})",
        port.backend(),
        pool.threads(),
        port.concurrency(),
        args.batch(port.backend())
    ));
    let sig = signal.recv()?;
    server.stopping.store(true, Ordering::Release);
    pool.shutdown();
    let open = server
        .conns
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.is_some())
        .count();
    report_stop(sig, &server.accepted, &server.closed, open);
    Ok(())
}

impl Server {
    /// Handles a completion, and the completions of the operations it starts
    /// that finish at once (`submit_inline`), up to `--inline-chain` of them, so
    /// one busy connection cannot keep a thread from the others.
    fn handle(&self, port: &CompletionPort, c: Completion) {
        let mut next = Some(c);
        let mut budget = self.inline_chain;
        while let Some(c) = next.take() {
            next = self.step(port, c, &mut budget);
        }
    }

    /// Handles one completion; returns the completion of the operation it
    /// started if that finished inline.
    fn step(
        &self,
        port: &CompletionPort,
        mut c: Completion,
        budget: &mut u32,
    ) -> Option<Completion> {
        let (kind, pos, fd) = ud_parts(c.user_data);
        match kind {
            ACCEPT => {
                self.on_accept(port, &mut c);
                None
            }
            ACCEPT_RETRY => {
                self.on_retry(port, &c);
                None
            }
            RECV => match (&c.result, c.buf.take()) {
                (Ok(n), Some(buf)) if *n > 0 => {
                    if !self.spin.is_zero() && buf.first() == Some(&b'!') {
                        spin(self.spin);
                    }
                    self.submit(port, fd, |s| Op::send(&s, buf), ud(SEND, 0, fd), budget)
                }
                _ => {
                    self.close(port, fd);
                    None
                }
            },
            SEND => match (&c.result, c.buf.take()) {
                (Ok(n), Some(mut buf)) => {
                    let sent = pos + n;
                    if sent < buf.len() {
                        self.submit(
                            port,
                            fd,
                            |s| Op::send_from(&s, buf, sent),
                            ud(SEND, sent, fd),
                            budget,
                        )
                    } else {
                        buf.clear();
                        self.submit(port, fd, |s| Op::recv(&s, buf), ud(RECV, 0, fd), budget)
                    }
                }
                _ => {
                    self.close(port, fd);
                    None
                }
            },
            _ => {
                tracing::error!("unexpected completion {c:?}");
                None
            }
        }
    }

    fn on_accept(&self, port: &CompletionPort, c: &mut Completion) {
        match (c.take_fd(), &c.result) {
            (Some(fd), _) => {
                if !self.live.admit() {
                    drop(fd); // past the cap: closed at once
                    return self.resubmit_accept(port);
                }
                let raw = fd.as_raw_fd();
                let sock = socket2::SockRef::from(&fd);
                let _ = sock.set_tcp_nodelay(true);
                if let Err(e) = port.associate(&fd, raw as u64) {
                    tracing::error!("associate accepted socket: {e}");
                    self.live.leave();
                    return self.resubmit_accept(port);
                }
                {
                    let mut conns = self.conns.lock().unwrap();
                    let i = raw as usize;
                    if conns.len() <= i {
                        conns.resize_with(i + 1, || None);
                    }
                    conns[i] = Some(fd);
                }
                self.accepted.fetch_add(1, Ordering::Relaxed);
                let buf = Vec::with_capacity(self.buf_size);
                // (Not inline: its completion must not run inside the accept's.)
                self.submit(port, raw, |s| Op::recv(&s, buf), ud(RECV, 0, raw), &mut 0);
            }
            (None, Err(e)) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // Out of descriptors: back off instead of spinning on the error.
                crate::warn_backoff(e, ACCEPT_BACKOFF);
                return self.back_off(port);
            }
            (None, Err(e)) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            (None, Err(e)) => tracing::debug!("accept: {e}"),
            (None, Ok(_)) => {}
        }
        self.resubmit_accept(port);
    }

    /// An accept failed for want of descriptors: it waits for the back-off
    /// timer, which the first such accept starts.
    fn back_off(&self, port: &CompletionPort) {
        self.idle_accepts.fetch_add(1, Ordering::AcqRel);
        if self.backing_off.swap(true, Ordering::AcqRel) || self.stopping.load(Ordering::Acquire) {
            return;
        }
        // It takes the room of the accept that just failed.
        if port
            .submit(Op::timeout(ACCEPT_BACKOFF), ud(ACCEPT_RETRY, 0, 0))
            .is_err()
        {
            // The port is closing: nothing more is accepted.
            self.backing_off.store(false, Ordering::Release);
        }
    }

    /// The back-off timer fired: the accepts that waited for it go again.
    fn on_retry(&self, port: &CompletionPort, c: &Completion) {
        if matches!(&c.result, Err(e) if e.raw_os_error() == Some(libc::ECANCELED)) {
            return; // the port is closing
        }
        // Cleared first: an accept failing from here on starts a new timer
        // (and is counted in the swap below, or waits for that timer).
        self.backing_off.store(false, Ordering::Release);
        for _ in 0..self.idle_accepts.swap(0, Ordering::AcqRel) {
            self.resubmit_accept(port);
        }
    }

    fn resubmit_accept(&self, port: &CompletionPort) {
        if !self.stopping.load(Ordering::Acquire) {
            let _ = port.submit(Op::accept(&self.listener), ud(ACCEPT, 0, 0));
        }
    }

    /// Submits an op on connection `fd`; on failure (port closing) closes it.
    /// While `budget` lasts the op is submitted with `submit_inline` (one
    /// spent), and its completion is returned if it finished at once.
    fn submit(
        &self,
        port: &CompletionPort,
        fd: RawFd,
        op: impl FnOnce(BorrowedFd<'_>) -> Op,
        user_data: u64,
        budget: &mut u32,
    ) -> Option<Completion> {
        // SAFETY: `fd` is owned by `self.conns` and is only removed (closed) by
        // `close`, which runs when this connection's one operation has completed —
        // i.e. not while we are building its next one.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let op = op(borrowed);
        let r = if *budget > 0 {
            *budget -= 1;
            port.submit_inline(op, user_data)
        } else {
            port.submit(op, user_data).map(Submitted::Pending)
        };
        match r {
            Ok(Submitted::Done(c)) => Some(c),
            Ok(Submitted::Pending(_)) => None,
            Err(_) => {
                self.close(port, fd);
                None
            }
        }
    }

    fn close(&self, port: &CompletionPort, fd: RawFd) {
        let owned = self
            .conns
            .lock()
            .unwrap()
            .get_mut(fd as usize)
            .and_then(Option::take);
        if let Some(owned) = owned {
            let _ = port.disassociate(&owned);
            self.closed.fetch_add(1, Ordering::Relaxed);
            self.live.leave();
            drop(owned);
        }
    }
}

pub(crate) fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The line both raw-completion echo servers print when a signal stops them.
pub(crate) fn report_stop(sig: i32, accepted: &AtomicU64, closed: &AtomicU64, open: usize) {
    eprintln!(
        "echo: signal {sig}: stopped; {} connections accepted, {} closed by peers, {open} closed at shutdown",
        accepted.load(Ordering::Relaxed),
        closed.load(Ordering::Relaxed)
    );
}

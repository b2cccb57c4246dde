//! `ringport echo` (the default path): one multishot accept, and per
//! connection one multishot receive into a shared provided-buffer pool, so a
//! connection waiting for data holds no receive buffer (`--plain-recv` gives
//! the old path: one recv with its own buffer per connection, `echo.rs`).
//!
//! Per connection: the multishot receive (armed until its final completion)
//! and at most one send run at once, so a connection has a small state under
//! its own lock. A received chunk is copied out of its pool buffer into the
//! connection's send queue and the buffer goes back at once, so the pool is
//! never held by a slow peer; instead, a connection whose queue passes
//! [`HIGH_WATER`] has its receive cancelled (back-pressure, as the plain path
//! gets by not receiving while it sends) and re-armed once the queue is empty.
//!
//! An empty pool ends a receive with `ENOBUFS` (nothing is lost; the data
//! waits in the socket): the connection goes on a *starved* list, and is
//! re-armed as soon as a buffer is back — by this handler if some are back
//! already, else by the next handler that drops one. Every buffer is held
//! only by a completion waiting in the port's queue, so some handler always
//! comes to give one back: the pool cannot deadlock.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringport::{BufferPool, Completion, CompletionPort, Op, OpId, Pool, Submitted};

use crate::echo::{report_stop, spin, EchoArgs};
use crate::signals;

const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
/// The back-off timer after the accept ran out of descriptors.
const ACCEPT_RETRY: u64 = 4;
const LISTENER_KEY: u64 = u64::MAX;

/// Bytes queued for sending past which a connection's receive is paused.
const HIGH_WATER: usize = 256 << 10;
/// A send carries at most this much (chunks are coalesced up to it).
const SEND_MAX: usize = 64 << 10;

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

/// One connection.
struct Conn {
    fd: OwnedFd,
    st: Mutex<ConnState>,
}

#[derive(Default)]
struct ConnState {
    /// Chunks to send, in order; the front one is in flight while `sending`.
    out: VecDeque<Vec<u8>>,
    queued: usize,
    sending: bool,
    /// The multishot receive in flight (until its final completion).
    recv: Option<OpId>,
    /// Its receive was cancelled for back-pressure: re-arm once drained.
    paused: bool,
    /// The peer closed its side, or the connection failed: close once no
    /// operation is in flight (after the queue is sent, for an EOF).
    done: bool,
    /// A send failed: nothing more is sent.
    broken: bool,
    /// The `seq` of the receive's next completion to process, and those that
    /// came early (another thread took the connection's lock first).
    next_seq: u32,
    early: std::collections::BTreeMap<u32, Completion>,
}

/// The count of open connections against a cap (see `echo::conn_cap`).
#[derive(Debug)]
pub(crate) struct ConnCap {
    live: std::sync::atomic::AtomicUsize,
    cap: usize,
    warned: std::sync::Once,
}

impl ConnCap {
    pub(crate) fn new(cap: usize) -> ConnCap {
        ConnCap {
            live: std::sync::atomic::AtomicUsize::new(0),
            cap,
            warned: std::sync::Once::new(),
        }
    }

    /// Counts a new connection in; false (and a warning, once) at the cap.
    pub(crate) fn admit(&self) -> bool {
        let ok = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            self.warned.call_once(|| {
                tracing::warn!(
                    "{} connections open: closing new ones (raise --max-in-flight)",
                    self.cap
                )
            });
        }
        ok
    }

    /// Counts a connection out.
    pub(crate) fn leave(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Server {
    listener: TcpListener,
    live: ConnCap,
    pool: BufferPool,
    conns: Mutex<Vec<Option<Arc<Conn>>>>,
    /// Connections whose receive ended with `ENOBUFS`, to re-arm.
    starved: Mutex<VecDeque<RawFd>>,
    spin: Duration,
    stopping: AtomicBool,
    accepted: AtomicU64,
    closed: AtomicU64,
}

pub fn run(args: &EchoArgs, port: CompletionPort) -> Result<(), Box<dyn std::error::Error>> {
    let listener = crate::echo::listen(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    port.associate(&listener, LISTENER_KEY)?;
    let pool = port
        .buffer_pool(args.pool_buffers, args.buf_size)
        .map_err(|e| {
            format!(
                "cannot allocate the receive pool ({} buffers of {} B: --pool-buffers × --buf-size): {e}",
                args.pool_buffers, args.buf_size
            )
        })?;
    // Each connection keeps its multishot receive and at most one send in
    // flight.
    let cap = crate::echo::conn_cap(args, 2)?;
    let server = Arc::new(Server {
        listener,
        live: ConnCap::new(cap),
        pool,
        conns: Mutex::new(Vec::new()),
        starved: Mutex::new(VecDeque::new()),
        spin: Duration::from_micros(args.spin_us),
        stopping: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        closed: AtomicU64::new(0),
    });
    let s = server.clone();
    let workers = Pool::builder()
        .threads(args.workers())
        .lazy_release(args.lazy_release()?)
        .batch(args.batch(port.backend()))
        .name("echo")
        .spawn(&port, move |port, c| s.handle(port, c))
        .map_err(|e| crate::echo::spawn_error(args.workers(), e))?;
    port.submit(Op::accept_multishot(&server.listener), ud(ACCEPT, 0, 0))?;
    let signal = signals::waiter()?;
    let paths = port.stats().op_paths;
    crate::say(format_args!(
        "listening on {local} (backend {}, {} threads, concurrency {}, batch {}, multishot recv: {}, pool {} × {} B)",
        port.backend(),
        workers.threads(),
        port.concurrency(),
        args.batch(port.backend()),
        paths.get(ringport::OpKind::RecvMulti).expect("an op kind"),
        server.pool.count(),
        server.pool.buffer_size(),
    ));
    let sig = signal.recv()?;
    server.stopping.store(true, Ordering::Release);
    workers.shutdown();
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
    fn handle(&self, port: &CompletionPort, mut c: Completion) {
        let (kind, pos, fd) = ud_parts(c.user_data);
        match kind {
            ACCEPT => self.on_accept(port, &mut c),
            ACCEPT_RETRY => {
                // The back-off is over: accept again (unless the port is
                // closing, which cancelled the timer).
                let cancelled =
                    matches!(&c.result, Err(e) if e.raw_os_error() == Some(libc::ECANCELED));
                if !cancelled {
                    self.accept(port);
                }
            }
            RECV => {
                if let Some(conn) = self.conn(fd) {
                    self.on_recv(port, &conn, c);
                }
                self.feed_starved(port);
            }
            SEND => {
                if let Some(conn) = self.conn(fd) {
                    self.on_send(port, &conn, &mut c, pos);
                }
            }
            _ => tracing::error!("unexpected completion {c:?}"),
        }
    }

    fn conn(&self, fd: RawFd) -> Option<Arc<Conn>> {
        self.conns.lock().unwrap().get(fd as usize)?.clone()
    }

    fn on_accept(&self, port: &CompletionPort, c: &mut Completion) {
        if let Some(fd) = c.take_fd() {
            self.add(port, fd);
        }
        if c.more() {
            return;
        }
        // The multishot accept ended: say why, and re-arm it.
        match &c.result {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // Out of descriptors: accept again after a pause, timed by
                // the port, not slept in this handler (that held a worker
                // from every connection).
                let backoff = crate::echo::ACCEPT_BACKOFF;
                crate::warn_backoff(e, backoff);
                if !self.stopping.load(Ordering::Acquire) {
                    // It takes the room of the accept that just ended.
                    let _ = port.submit(Op::timeout(backoff), ud(ACCEPT_RETRY, 0, 0));
                }
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            Err(e) => tracing::debug!("accept: {e}"),
            Ok(_) => {}
        }
        self.accept(port);
    }

    /// (Re-)arms the multishot accept.
    fn accept(&self, port: &CompletionPort) {
        if !self.stopping.load(Ordering::Acquire) {
            let _ = port.submit(Op::accept_multishot(&self.listener), ud(ACCEPT, 0, 0));
        }
    }

    fn add(&self, port: &CompletionPort, fd: OwnedFd) {
        if !self.live.admit() {
            return; // past the cap: `fd` closes here
        }
        let raw = fd.as_raw_fd();
        let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
        if let Err(e) = port.associate(&fd, raw as u64) {
            tracing::error!("associate accepted socket: {e}");
            self.live.leave();
            return;
        }
        let conn = Arc::new(Conn {
            fd,
            st: Mutex::new(ConnState::default()),
        });
        {
            let mut conns = self.conns.lock().unwrap();
            let i = raw as usize;
            if conns.len() <= i {
                conns.resize_with(i + 1, || None);
            }
            conns[i] = Some(conn.clone());
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let mut st = conn.st.lock().unwrap();
        self.arm(port, &conn, &mut st);
        self.pump(port, &conn, &mut st);
    }

    /// Starts the connection's multishot receive.
    fn arm(&self, port: &CompletionPort, conn: &Conn, st: &mut ConnState) {
        let raw = conn.fd.as_raw_fd();
        // Never wait for room in a handler: every connection holds an
        // operation for as long as it is open, so room may never come.
        match port.try_submit(Op::recv_multishot(&conn.fd, &self.pool), ud(RECV, 0, raw)) {
            Ok(id) => {
                st.recv = Some(id);
                st.next_seq = 0;
            }
            Err(ringport::Error::QueueFull) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "{} operations in flight: closing new connections (raise --max-in-flight)",
                        port.max_in_flight()
                    )
                });
                st.done = true;
            }
            Err(_) => st.done = true, // the port is closing
        }
    }

    /// A receive completion: processed in `seq` order (one that comes early
    /// waits in the connection's state for those before it).
    fn on_recv(&self, port: &CompletionPort, conn: &Arc<Conn>, c: Completion) {
        let mut st = conn.st.lock().unwrap();
        if c.seq() != st.next_seq {
            st.early.insert(c.seq(), c);
            return;
        }
        let mut c = c;
        let mut starved = false;
        loop {
            st.next_seq += 1;
            starved |= self.take_recv(port, conn, &mut st, &mut c);
            let next = st.next_seq;
            match st.early.remove(&next) {
                Some(n) => c = n,
                None => break,
            }
        }
        self.resume(port, conn, &mut st);
        self.pump(port, conn, &mut st);
        drop(st);
        if starved {
            self.starved.lock().unwrap().push_back(conn.fd.as_raw_fd());
            self.feed_starved(port);
        }
    }

    /// Processes one receive completion in order; true if the receive ended
    /// with an empty pool (the caller puts the connection on the starved list).
    fn take_recv(
        &self,
        port: &CompletionPort,
        conn: &Conn,
        st: &mut ConnState,
        c: &mut Completion,
    ) -> bool {
        if let Some(chunk) = c.take_pooled() {
            if !self.spin.is_zero() && chunk.first() == Some(&b'!') {
                spin(self.spin);
            }
            if !st.broken {
                // Coalesce into the last queued chunk unless it is in flight.
                let can_join = st.out.len() > usize::from(st.sending)
                    && st
                        .out
                        .back()
                        .is_some_and(|b| b.len() + chunk.len() <= SEND_MAX);
                match st.out.back_mut() {
                    Some(b) if can_join => b.extend_from_slice(&chunk),
                    _ => st.out.push_back(chunk.to_vec()),
                }
                st.queued += chunk.len();
            }
            // `chunk` drops here: its buffer is back in the pool.
        }
        if c.more() {
            if st.queued > HIGH_WATER && !st.paused {
                if let Some(id) = st.recv {
                    st.paused = true;
                    let _ = port.cancel(id);
                }
            }
            return false;
        }
        st.recv = None;
        match &c.result {
            Ok(0) => st.done = true,
            // Stopped by the kernel with data (its CQ was full): re-arm.
            Ok(_) if !st.paused => self.arm(port, conn, st),
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOBUFS) if !st.paused => return true,
                Some(libc::ENOBUFS | libc::ECANCELED) if st.paused => {}
                _ => st.done = true,
            },
        }
        false
    }

    /// Re-arms a receive paused for back-pressure once its queue has drained
    /// and its cancelled receive has ended.
    fn resume(&self, port: &CompletionPort, conn: &Conn, st: &mut ConnState) {
        if st.paused && st.recv.is_none() && !st.done && st.queued <= HIGH_WATER / 4 {
            st.paused = false;
            self.arm(port, conn, st);
        }
    }

    fn on_send(&self, port: &CompletionPort, conn: &Arc<Conn>, c: &mut Completion, pos: usize) {
        let mut st = conn.st.lock().unwrap();
        let from = self.sent(port, &mut st, c, pos);
        self.resume(port, conn, &mut st);
        self.pump_from(port, conn, &mut st, from);
    }

    /// A send ended (its completion came, or it was made at once): the
    /// front chunk is out, or the position its rest goes from (returned).
    fn sent(
        &self,
        port: &CompletionPort,
        st: &mut ConnState,
        c: &mut Completion,
        pos: usize,
    ) -> usize {
        st.sending = false;
        match (&c.result, c.buf.take()) {
            (Ok(n), Some(buf)) => {
                let sent = pos + n;
                if sent < buf.len() {
                    st.out[0] = buf;
                    return sent;
                }
                st.out.pop_front();
                st.queued = st.queued.saturating_sub(buf.len());
            }
            _ => {
                st.broken = true;
                st.done = true;
                st.out.clear();
                st.queued = 0;
                if let Some(id) = st.recv {
                    let _ = port.cancel(id);
                }
            }
        }
        0
    }

    /// Starts the next send, or closes a finished connection.
    fn pump(&self, port: &CompletionPort, conn: &Arc<Conn>, st: &mut ConnState) {
        self.pump_from(port, conn, st, 0);
    }

    /// `pump`, the front chunk sent from `from`. A send made at once
    /// (`submit_inline`: io_uring when the socket's send lane is idle and the
    /// port lightly loaded, epoll when the socket has room) is handled here, and the next one started,
    /// until one must wait or the queue is empty; the queue only shrinks
    /// meanwhile (receives wait for the connection's lock), so this ends.
    fn pump_from(
        &self,
        port: &CompletionPort,
        conn: &Arc<Conn>,
        st: &mut ConnState,
        mut from: usize,
    ) {
        while !st.sending && !st.out.is_empty() && !st.broken {
            let Some(mut c) = self.send(port, conn, st, from) else {
                break;
            };
            from = self.sent(port, st, &mut c, from);
            self.resume(port, conn, st);
        }
        if st.done && !st.sending && st.recv.is_none() && (st.out.is_empty() || st.broken) {
            self.close(port, conn);
        }
    }

    /// Sends the front chunk from `from`: its completion if it was made at
    /// once, else `None` (in flight, or the connection broke).
    fn send(
        &self,
        port: &CompletionPort,
        conn: &Arc<Conn>,
        st: &mut ConnState,
        from: usize,
    ) -> Option<Completion> {
        let raw = conn.fd.as_raw_fd();
        let buf = std::mem::take(&mut st.out[0]);
        match port.submit_inline(Op::send_from(&conn.fd, buf, from), ud(SEND, from, raw)) {
            Ok(Submitted::Done(c)) => Some(c),
            Ok(Submitted::Pending(_)) => {
                st.sending = true;
                None
            }
            Err(_) => {
                st.broken = true;
                st.done = true;
                None
            }
        }
    }

    /// Re-arms starved connections while the pool has buffers back.
    fn feed_starved(&self, port: &CompletionPort) {
        while self.pool.available() > 0 {
            let Some(fd) = self.starved.lock().unwrap().pop_front() else {
                return;
            };
            if let Some(conn) = self.conn(fd) {
                let mut st = conn.st.lock().unwrap();
                if st.recv.is_none() && !st.done {
                    self.arm(port, &conn, &mut st);
                }
                self.pump(port, &conn, &mut st);
            }
        }
    }

    fn close(&self, port: &CompletionPort, conn: &Arc<Conn>) {
        let raw = conn.fd.as_raw_fd();
        let mut conns = self.conns.lock().unwrap();
        if let Some(slot) = conns.get_mut(raw as usize) {
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                *slot = None;
                let _ = port.disassociate(&conn.fd);
                self.closed.fetch_add(1, Ordering::Relaxed);
                self.live.leave();
            }
        }
    }
}

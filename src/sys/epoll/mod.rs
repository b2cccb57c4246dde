//! The epoll backend: completions emulated on readiness, for where io_uring is
//! forbidden (container seccomp profiles, `kernel.io_uring_disabled`, old kernels).
//!
//! # How a completion port is emulated on readiness
//!
//! This is the mirror image of smol-rs/polling's IOCP module, which emulates
//! readiness on completions. Here every operation is attempted **at once**, as a
//! non-blocking system call, in the thread that submits it:
//!
//! * If it finishes (data was there, the send fitted, a connection was waiting),
//!   its completion is queued in the port straight away — no epoll call at all,
//!   and no entry in the op table (its id is numbered apart: `INLINE_BIT`) —
//!   or, through `CompletionPort::submit_inline`, handed back to the caller
//!   without touching the port's queue.
//!   This is the common case under load, and it is why the epoll backend makes
//!   fewer system calls per message than a readiness loop that waits first.
//!   (It skips the attempt when the last one in the same direction said `EAGAIN`
//!   and no readiness edge has arrived since: that call could only say `EAGAIN`
//!   again. A short receive on a stream socket counts as "drained" too, unless an
//!   event has already announced the peer's FIN — which brings no further edge;
//!   the half-close test caught that. See `drained_after`.)
//!   Datagram operations are the same calls with an address: `recvfrom` and
//!   `sendto`.
//! * If it would block (`EAGAIN`), the operation waits in its socket's read or
//!   write queue, carrying its own record (`Own`; not in the op table, whose
//!   lock is global: a cancel finds it from its id, which holds the
//!   descriptor). Multishot operations, and sockets numbered past
//!   `fdtab::DIRECT`, keep their records in the table. Sockets are registered with the epoll instance once, when they
//!   are associated with the port (edge-triggered, for input and output, and set
//!   non-blocking — like IOCP's requirement that handles be opened overlapped).
//!   When the port's poller sees readiness, it retries the queued operations in
//!   order until one would block again, and queues their completions. It does
//!   so for a few sockets per poll (`ready.rs`): the rest of the edges one
//!   `epoll_wait` returned wait in a stash, so each socket's handler runs while
//!   what its receive touched is still in the cache.
//!   The try-then-queue step and the retry step hold the socket's queue lock, so
//!   an edge that arrives between a failed attempt and its queueing is never lost.
//!   A socket's queues are found by descriptor in a table read without a lock
//!   (`sys/fdtab.rs`), so the common submit and completion take that one lock.
//! * Regular files cannot be waited on with epoll (`EPERM`), so reads, writes
//!   (plain and vectored), fsyncs, opens, `statx` and `fallocate` run on
//!   blocking worker threads (`sys/workers.rs`; up to 64, started as operations
//!   queue, two kept when idle), which queue their completions and
//!   wake the poller through an eventfd. (A buffered read the page cache holds
//!   is done on the submitting thread instead: `sys/inline_read.rs`.) `shutdown` never blocks: it is done
//!   on the submitting thread, like a close, unless sends wait on the socket:
//!   a shutdown of the writing side then waits behind them in its write queue,
//!   as io_uring's write lane keeps it.
//! * `send_file` is `sendfile(2)` into the socket, tried and queued like a send
//!   (`sock.rs`). `send_zc` is a plain (copying) send. Fixed buffers are plain
//!   memory here: `read_fixed`/`write_fixed` are `pread`/`pwrite` on the file
//!   workers, or `recv`/`send` tried and queued like any on a socket.
//! * Timers are kept in a sorted set; the poller's `epoll_wait` timeout is
//!   shortened to the next one. A linked timeout (`Op::timeout_after`) is a
//!   timer entry too (its id tagged with [`DEADLINE_BIT`]): when it is due, the
//!   poller cancels the operation exactly as `cancel` would — it wins if the
//!   operation is still queued, loses if it is running on a file worker — and
//!   the operation's completion removes the entry.
//!
//! # What it costs
//!
//! An operation that has to wait costs one failed system call more than on
//! io_uring, and its completion costs the poller an `epoll_wait` wake-up plus the
//! retried call. File I/O costs a thread handoff each way. Cancel, close,
//! `post`, `max_in_flight`, timeouts and the scheduling rules are the port's and
//! behave exactly as on io_uring: a cancel of a queued operation always wins
//! (it is removed from its queue and completes with `ECANCELED`); a cancel of an
//! operation that has already been attempted successfully, or of a file
//! operation already running on a worker, loses and the real result arrives.
//! Closing a socket through `Op::close` (or `disassociate`) cancels the
//! operations still queued on it, at once; io_uring's driver does the same
//! with an `ASYNC_CANCEL` of every request on the socket. A file's
//! operations run to their end on both.

mod cancel;
mod fixed;
mod multi;
mod ready;
mod register;
mod sock;
mod submit;
mod wait;
pub(crate) use sock::{block_sigpipe_here, send_file_once};

use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::completion::{Completion, OpId};
use crate::error::Error;
use crate::op::{Op, OpBody, OpKind, OpPath, OpPaths};
use crate::sync::lock;

use self::sock::{drained_after, errno, try_op};

use super::fdtab::FdTable;
use super::table::OpTable;
use super::workers::{Sink, Workers};
use super::{Config, PollMode, SubmitResult};

/// epoll token of the eventfd that wakes the poller.
const WAKE_TOKEN: u64 = u64::MAX;

/// Set in a timer entry's id for an operation's linked timeout (its deadline),
/// as opposed to a `timeout` operation's own timer. Op ids never have it: their
/// generations stay below 2^30 (see `table.rs`).
const DEADLINE_BIT: u64 = 1 << 63;

/// Set in the id of an operation that never entered the op table (see
/// `submit_socket`): no table id has it. Alone, it marks one that finished
/// inside `submit` (a cancel says `NotFound`: it has completed); with
/// [`OWN_BIT`], one that waits in its socket's queue with its own record.
const INLINE_BIT: u64 = 1 << 62;

/// With [`INLINE_BIT`]: an operation waiting in a socket's queue outside the
/// op table (`Pending::own`). Such an id is `INLINE_BIT | OWN_BIT | fd << 40 |
/// sequence` (40 bits; descriptors below `fdtab::DIRECT`, 2^20), so a cancel
/// finds its queue from the id alone.
const OWN_BIT: u64 = 1 << 61;

/// The bits of an own id's sequence number.
const OWN_SEQ: u64 = (1 << 40) - 1;

/// The id of an own operation on `fd` (below `fdtab::DIRECT`), numbered `n`.
fn own_id(fd: usize, n: u64) -> OpId {
    OpId(INLINE_BIT | OWN_BIT | ((fd as u64) << 40) | (n & OWN_SEQ))
}

/// The descriptor of an own operation's id; `None` for any other id.
fn own_fd(id: OpId) -> Option<RawFd> {
    (id.0 & (DEADLINE_BIT | INLINE_BIT | OWN_BIT) == INLINE_BIT | OWN_BIT)
        .then_some(((id.0 >> 40) & 0xf_ffff) as RawFd)
}

/// Where an operation in flight is waiting.
#[derive(Debug)]
enum Wait {
    /// In the read or write queue of this socket.
    Fd(RawFd),
    /// In the timer set, due at this instant.
    Timer(Instant),
    /// On a file worker (queued or running).
    File,
}

#[derive(Debug)]
struct Record {
    kind: OpKind,
    key: u64,
    user_data: u64,
    /// Its completion's lane (`Op::priority`).
    prio: crate::Priority,
    wait: Wait,
    /// Its linked timeout (`Op::timeout_after`): a timer entry
    /// `(deadline, id | DEADLINE_BIT)` cancels it if it is still waiting then.
    deadline: Option<Instant>,
    /// Completions a multishot operation has produced (`multi.rs`).
    parts: u32,
}

#[derive(Debug)]
struct Inner {
    ops: OpTable<Record>,
    timers: BTreeSet<(Instant, u64)>,
    /// Completions produced off the poller (file workers, closes): the next
    /// `poll` hands them out.
    done: Vec<Completion>,
    closed: bool,
    /// `Shared::live`, which a table insert or remove counts up or down.
    live: Arc<AtomicUsize>,
}

impl Inner {
    /// Takes an operation's record out of the table, keeping `live` in step.
    fn remove_op(&mut self, id: OpId) -> Option<Record> {
        let rec = self.ops.remove(id);
        if rec.is_some() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        rec
    }
}

/// An operation waiting for readiness, with everything it owns.
#[derive(Debug)]
struct Pending {
    id: OpId,
    body: OpBody,
    /// A connect that returned `EINPROGRESS`: the next writability ends it.
    connecting: bool,
    /// `Some` for an operation outside the op table (its id has `OWN_BIT`):
    /// what its completion needs. `None`: its record is in the table.
    own: Option<Own>,
}

/// The record of a socket operation that waits in its queue outside the op
/// table: a submit and its completion then take no lock but the socket's
/// (the op table's is global), unless it has a linked timeout.
///
/// Invariant: it is counted in `Shared::live` from its admission until its
/// completion is built (`Driver::end`), and its linked timeout's timer entry,
/// if any, is added while the socket's lock is held after it is queued, and
/// removed when it ends — so a due timer's cancel always finds it queued, or
/// finds it gone because it has ended.
#[derive(Debug, Clone, Copy)]
struct Own {
    kind: OpKind,
    key: u64,
    user_data: u64,
    prio: crate::Priority,
    deadline: Option<Instant>,
}

impl Pending {
    /// Whether ending it needs `Inner` (a table record, or a timer entry).
    fn needs_inner(&self) -> bool {
        self.own.is_none_or(|o| o.deadline.is_some())
    }
}

#[derive(Debug, Default)]
struct Queues {
    read: VecDeque<Pending>,
    write: VecDeque<Pending>,
    /// Set when the socket is disassociated: an operation that reaches the queue
    /// afterwards (it raced with the close) is cancelled at once.
    dead: bool,
    /// An attempt in that direction said `EAGAIN` and no readiness edge has come
    /// since: a new operation goes straight to its queue instead of making a
    /// system call that would only say `EAGAIN` again (typically the receive
    /// re-armed right after a send). Only the poller clears it, on an edge, under
    /// this same lock — so no edge can be missed.
    read_blocked: bool,
    write_blocked: bool,
    /// A readiness event said the peer closed its side (or the socket hung up or
    /// failed, or urgent data came). Sticky: from then on a short receive
    /// never marks the socket drained (the FIN's edge has already been
    /// consumed; a receive stops short at the urgent mark).
    read_closed: bool,
    /// This number's registration count (wrapping), in its epoll token's high
    /// half: an edge of an earlier registration is told apart and dropped
    /// under this lock (`ready.rs`). Set by `associate` when it resets the
    /// queues.
    gen: u32,
}

/// A registered socket's waiting operations. Lock order: `Shared::big`, then a
/// socket's queues, then `Inner`; never the other way round.
///
/// One lives in `Shared::fds` for each descriptor number that has ever been
/// registered (below `fdtab::DIRECT`), for the driver's life: it is looked up
/// without a lock, so it is reused rather than freed when its socket leaves,
/// and what it refers to is told by `registered` and, under its lock, by
/// `Queues::dead`. A submitter that found it registered and locks it after the
/// socket left sees `dead`; one that locks it after the number was registered
/// again acts on the new socket, as its system call on that number would.
#[derive(Debug, Default)]
struct FdQueue {
    q: Mutex<Queues>,
    /// Set (Release) by `associate` after the queues are reset (dead) and
    /// `stream` is stored, before the socket is added to the epoll set; its
    /// queues come alive (`dead` cleared) once it is. Cleared by
    /// `disassociate`, which leaves them dead. Both run under `Shared::big`.
    registered: AtomicBool,
    /// A TCP socket: a short receive means its receive queue is empty
    /// (unless `read_closed`).
    stream: AtomicBool,
}

impl FdQueue {
    fn stream(&self) -> bool {
        self.stream.load(Ordering::Relaxed)
    }
}

/// A registered socket's queues, as found by `Shared::queue`.
enum QueueRef<'a> {
    /// In the lock-free table.
    Direct(&'a FdQueue),
    /// A descriptor at or above `fdtab::DIRECT`, from the locked map.
    Big(Arc<FdQueue>),
}

impl std::ops::Deref for QueueRef<'_> {
    type Target = FdQueue;
    fn deref(&self) -> &FdQueue {
        match self {
            QueueRef::Direct(q) => q,
            QueueRef::Big(q) => q,
        }
    }
}

/// State shared with the file workers.
#[derive(Debug)]
pub(crate) struct Shared {
    epfd: OwnedFd,
    wake: OwnedFd,
    inner: Mutex<Inner>,
    /// Registered sockets' queues, read without a lock (see `FdQueue`).
    fds: FdTable<FdQueue>,
    /// Serialises registering and unregistering; holds the queues of
    /// descriptors at or above `fdtab::DIRECT`.
    big: Mutex<HashMap<RawFd, Arc<FdQueue>>>,
    /// Operations in flight: the table's and the own ones (`Own`). The cap
    /// (`max_in_flight`) is applied against it.
    live: Arc<AtomicUsize>,
    /// `Inner::closed`, readable without its lock (set under it, first).
    closed: AtomicBool,
    /// Numbers the ids of operations finished inside `submit` (`INLINE_BIT`).
    inline_ids: AtomicU64,
    /// Readiness edges the poller has not acted on yet (`ready.rs`).
    stash: ready::Stash,
}

/// The epoll driver. See the module docs.
#[derive(Debug)]
pub(crate) struct Driver {
    shared: Arc<Shared>,
    files: Workers<Shared>,
    max_in_flight: usize,
    /// Identifies this driver's buffer pools (`multi.rs`).
    owner: u64,
    /// This driver's id for fixed-buffer sets (`fixed.rs`).
    fixed_owner: u64,
    /// Fixed-buffer slots the port's live sets take: counted against
    /// `MAX_FIXED_BUFFERS` as io_uring's table does, though nothing is
    /// registered here (`fixed.rs`).
    fixed_used: std::sync::Mutex<usize>,
}

impl Driver {
    pub(crate) fn new(cfg: Config) -> io::Result<Driver> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        // SAFETY: eventfd returns a new descriptor or -1.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_TOKEN,
        };
        // SAFETY: both descriptors are open; `ev` is a valid event.
        if unsafe {
            libc::epoll_ctl(
                epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                wake.as_raw_fd(),
                &mut ev,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let live = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            epfd,
            wake,
            inner: Mutex::new(Inner {
                ops: OpTable::new(),
                timers: BTreeSet::new(),
                done: Vec::new(),
                closed: false,
                live: live.clone(),
            }),
            fds: FdTable::new(),
            big: Mutex::new(HashMap::default()),
            live,
            closed: AtomicBool::new(false),
            inline_ids: AtomicU64::new(0),
            stash: ready::Stash::default(),
        });
        // Each file operation in flight blocks a worker, so the cap is the
        // deepest queue a device sees from this port: 64, like a program's own
        // threads at fio depth 32 (BENCHMARKS.md, session 4: 4 workers made
        // O_DIRECT depth 32 a depth of 4). Workers beyond two leave after 10 s
        // without work (`workers.rs`).
        let workers = 64;
        Ok(Driver {
            files: Workers::new(shared.clone(), workers),
            shared,
            max_in_flight: cfg.max_in_flight.max(1),
            owner: crate::provided::new_owner_id(),
            fixed_owner: crate::fixed::next_owner_id(),
            fixed_used: std::sync::Mutex::new(0),
        })
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The path of every kind of operation (for port statistics): files on
    /// the workers, the rest emulated (readiness, timers, or a call made on
    /// the submitting thread).
    pub(crate) fn op_paths(&self) -> OpPaths {
        let path = |k| match k {
            OpKind::Read
            | OpKind::Write
            | OpKind::ReadV
            | OpKind::WriteV
            | OpKind::Fsync
            | OpKind::OpenAt
            | OpKind::Statx
            | OpKind::Fallocate
            // (on a socket: readiness, like a receive or a send)
            | OpKind::ReadFixed
            | OpKind::WriteFixed => OpPath::Worker,
            _ => OpPath::Emulated,
        };
        OpPaths::new(path, OpPath::Emulated)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Ends a waiting operation taken out of its queue with `res`: its
    /// record leaves the table, or its own record is uncounted (and its timer
    /// entry removed); returns its completion.
    fn end(&self, inner: &mut Inner, p: Pending, res: i32) -> Option<Completion> {
        match p.own {
            None => finish(inner, p.id, res, p.body),
            Some(o) => {
                if let Some(at) = o.deadline {
                    inner.timers.remove(&(at, p.id.0 | DEADLINE_BIT));
                }
                Some(self.end_own(p.id, o, res, p.body))
            }
        }
    }

    /// Ends an own operation (one without a linked timeout, or whose timer
    /// entry the caller removes): uncounts it and builds its completion.
    fn end_own(&self, id: OpId, o: Own, res: i32, body: OpBody) -> Completion {
        self.shared.live.fetch_sub(1, Ordering::Relaxed);
        build(id, o.kind, o.key, o.user_data, o.prio, 0, res, body)
    }

    /// Takes a slot for a new operation, or says why not.
    fn admit(
        &self,
        op: Op,
        key: u64,
        user_data: u64,
        wait: impl FnOnce() -> Wait,
    ) -> Result<(OpId, Op), (Error, Option<Op>)> {
        match self.admit_parts(op.kind(), key, user_data, op.prio, op.link_timeout, wait) {
            Ok(id) => Ok((id, op)),
            Err(Error::QueueFull) => Err((Error::QueueFull, Some(op))),
            Err(e) => Err((e, None)),
        }
    }

    /// Enters an operation in the table (its timers too); `Closed` or
    /// `QueueFull` if it cannot be.
    fn admit_parts(
        &self,
        kind: OpKind,
        key: u64,
        user_data: u64,
        prio: crate::Priority,
        link_timeout: Option<Duration>,
        wait: impl FnOnce() -> Wait,
    ) -> Result<OpId, Error> {
        let mut inner = lock(&self.shared.inner);
        if inner.closed {
            return Err(Error::Closed);
        }
        // Reserved before anything else, by the same fetch-add the socket
        // path's own records use without this lock: a check here and an add
        // after the insert let one of theirs land in between, and both were
        // admitted past the cap (a review, session 17).
        if inner.live.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            inner.live.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::QueueFull);
        }
        let deadline = link_timeout.map(|d| Instant::now() + d);
        let id = inner.ops.insert(Record {
            kind,
            key,
            user_data,
            prio,
            wait: wait(),
            deadline,
            parts: 0,
        });
        if let Wait::Timer(at) = inner.ops.get(id).map(|r| &r.wait).expect("just inserted") {
            let at = *at;
            inner.timers.insert((at, id.0));
        }
        if let Some(at) = deadline {
            self.add_deadline(inner, at, id);
        }
        Ok(id)
    }

    /// Enters operation `id`'s linked timeout, due `at`, in the timer set
    /// (`inner` is that lock, held), and wakes the poller if it is now the
    /// first timer: the poller may be sleeping with a later one.
    fn add_deadline(&self, mut inner: std::sync::MutexGuard<'_, Inner>, at: Instant, id: OpId) {
        inner.timers.insert((at, id.0 | DEADLINE_BIT));
        let first = inner.timers.first() == Some(&(at, id.0 | DEADLINE_BIT));
        drop(inner);
        if first {
            self.notify();
        }
    }

    /// Records an operation that already finished (an inline read, see
    /// `sys/inline_read.rs`) and returns its completion.
    pub(crate) fn complete_inline(
        &self,
        op: Op,
        key: u64,
        user_data: u64,
        res: i32,
    ) -> SubmitResult {
        let (id, op) = self.admit(op, key, user_data, || Wait::File)?;
        self.done_now(id, res, op.body)
    }

    /// Completes an operation that finished during `submit`.
    fn done_now(&self, id: OpId, res: i32, body: OpBody) -> SubmitResult {
        let c = finish(&mut lock(&self.shared.inner), id, res, body);
        Ok((id, c))
    }

    pub(crate) fn submit(&self, op: Op, key: u64, user_data: u64, _flush: bool) -> SubmitResult {
        match &op.body {
            OpBody::Nop => {
                let (id, op) = self.admit(op, key, user_data, || Wait::File)?;
                self.done_now(id, 0, op.body)
            }
            OpBody::Timeout { after } => {
                let at = Instant::now() + *after;
                let (id, _) = self.admit(op, key, user_data, || Wait::Timer(at))?;
                // The poller may be sleeping with a later deadline.
                self.notify();
                Ok((id, None))
            }
            // (on a registered socket: below, like a receive or a send)
            OpBody::ReadFixed { .. } | OpBody::WriteFixed { .. } if !self.fixed_on_socket(&op) => {
                self.submit_fixed(op, key, user_data)
            }
            // Into a pipe, a FIFO or a terminal (anything but a registered
            // socket, which is non-blocking): `sendfile` would block the
            // submitting thread until there is room; a file worker waits
            // instead, as io_uring's workers do.
            OpBody::SendFile { sock, .. } if self.shared.queue(*sock).is_none() => {
                let (id, op) = self.admit(op, key, user_data, || Wait::File)?;
                self.files.push(id, op.body, op.prio);
                Ok((id, None))
            }
            OpBody::Read { .. }
            | OpBody::Write { .. }
            | OpBody::Fsync { .. }
            | OpBody::ReadV { .. }
            | OpBody::WriteV { .. }
            | OpBody::OpenAt { .. }
            | OpBody::Statx { .. }
            | OpBody::Fallocate { .. } => {
                let (id, op) = self.admit(op, key, user_data, || Wait::File)?;
                self.files.push(id, op.body, op.prio);
                Ok((id, None))
            }
            // Shutting the writing side of a registered socket down waits
            // behind the sends queued on it (below, with the socket
            // operations), as io_uring's write lane keeps it behind them: done
            // at once, it overtook them, and they failed `EPIPE` with their
            // bytes unsent (session 16's review). With none queued it is done
            // at once all the same (`sock.rs`).
            OpBody::Shutdown { fd, how }
                if *how == libc::SHUT_RD || self.shared.queue(*fd).is_none() =>
            {
                // Never blocks: done here, like a close.
                let (fd, how) = (*fd, *how);
                let (id, op) = self.admit(op, key, user_data, || Wait::File)?;
                // SAFETY: a plain system call on a descriptor; no memory is passed.
                let rc = unsafe { libc::shutdown(fd, how) };
                let res = if rc < 0 { -errno() } else { 0 };
                self.done_now(id, res, op.body)
            }
            OpBody::Close { fd } => {
                let raw = fd.as_raw_fd();
                let (id, op) = self.admit(op, key, user_data, || Wait::File)?;
                self.disassociate(raw);
                let OpBody::Close { fd } = op.body else {
                    unreachable!()
                };
                // SAFETY: we own `fd`; after this call nobody refers to it.
                let rc = unsafe { libc::close(fd.into_raw_fd()) };
                let res = if rc < 0 { -errno() } else { 0 };
                self.done_now(id, res, OpBody::Nop)
            }
            OpBody::AcceptMulti { .. } | OpBody::RecvMulti { .. } => {
                self.submit_multi(op, key, user_data)
            }
            OpBody::Recv { fd, .. }
            | OpBody::Send { fd, .. }
            | OpBody::RecvFrom { fd, .. }
            | OpBody::SendTo { fd, .. }
            | OpBody::Accept { fd }
            | OpBody::Connect { fd, .. }
            | OpBody::SendZc { fd, .. }
            | OpBody::ReadFixed { fd, .. }
            | OpBody::WriteFixed { fd, .. }
            | OpBody::SendFile { sock: fd, .. }
            | OpBody::Writable { fd }
            | OpBody::Shutdown { fd, .. } => {
                let fd = *fd;
                self.submit_socket(op, fd, key, user_data)
            }
        }
    }

    pub(crate) fn notify(&self) {
        self.shared.notify();
    }

    /// Refuses new work, cancels everything queued, waits for running file
    /// operations, and drops every completion.
    pub(crate) fn shutdown(&self) {
        lock(&self.shared.inner).closed = true;
        self.shared.closed.store(true, Ordering::Release);
        let mut fds: Vec<RawFd> = lock(&self.shared.big).keys().copied().collect();
        fds.extend(
            self.shared
                .fds
                .iter()
                .filter(|(_, q)| q.registered.load(Ordering::Acquire))
                .map(|(fd, _)| fd),
        );
        for fd in fds {
            self.disassociate(fd);
        }
        // Edges kept for a later poll: their sockets are unregistered now.
        self.shared.stash.clear();
        let left = self.files.shutdown();
        let mut inner = lock(&self.shared.inner);
        // Jobs still blocked in the kernel: forgotten (their late results
        // find no record), so this close does not wait for them.
        for id in left {
            inner.remove_op(id);
        }
        let timers: Vec<(Instant, u64)> = std::mem::take(&mut inner.timers).into_iter().collect();
        for (_, raw) in timers {
            // (A deadline's operation is cancelled where it waits.)
            if raw & DEADLINE_BIT == 0 {
                inner.remove_op(OpId(raw));
            }
        }
        inner.done.clear();
        // A submit that was admitted just before `closed` was set finishes on its
        // own (its socket queue is dead, the file workers refuse it); wait for it.
        let t0 = Instant::now();
        while self.shared.live.load(Ordering::Relaxed) > 0 && t0.elapsed() < Duration::from_secs(5)
        {
            drop(inner);
            std::thread::sleep(Duration::from_millis(1));
            inner = lock(&self.shared.inner);
            inner.done.clear();
        }
        let left = self.shared.live.load(Ordering::Relaxed);
        if left > 0 {
            tracing::error!("epoll shutdown: {left} operations never finished");
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 we own to our eventfd (non-blocking;
        // a full counter just means a wake-up is already pending).
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl Sink for Shared {
    /// A file worker finished an operation.
    fn done(&self, id: OpId, res: i32, body: OpBody) {
        let mut inner = lock(&self.inner);
        if let Some(c) = finish(&mut inner, id, res, body) {
            inner.done.push(c);
        }
        drop(inner);
        self.notify();
    }
}

/// Removes an operation's record and builds its completion, with the buffer
/// (and a received datagram's source address) taken back from its body.
fn finish(inner: &mut Inner, id: OpId, res: i32, body: OpBody) -> Option<Completion> {
    let rec = inner.remove_op(id)?;
    if let Some(at) = rec.deadline {
        inner.timers.remove(&(at, id.0 | DEADLINE_BIT));
    }
    Some(completion(id, &rec, res, body))
}

/// The completion of the operation `rec` describes, with its result and body.
fn completion(id: OpId, rec: &Record, res: i32, body: OpBody) -> Completion {
    build(
        id,
        rec.kind,
        rec.key,
        rec.user_data,
        rec.prio,
        rec.parts,
        res,
        body,
    )
}

/// An operation's completion; `parts`: the completions a multishot operation
/// has produced before this, its final one.
#[allow(clippy::too_many_arguments)]
fn build(
    id: OpId,
    kind: OpKind,
    key: u64,
    user_data: u64,
    prio: crate::Priority,
    parts: u32,
    res: i32,
    body: OpBody,
) -> Completion {
    if parts == 0 {
        return Completion::of_body(id, kind, key, user_data, res, body, prio);
    }
    Completion::from_raw(id, kind, key, user_data, res, body.into_output())
        .with_priority(prio)
        .multishot(false, None, parts)
}

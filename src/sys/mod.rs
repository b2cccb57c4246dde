//! The backend contract. Every backend (io_uring today, epoll next, Windows IOCP
//! some day) is one module under `sys/` and meets this contract exactly; the port
//! calls it through the plain `enum Backend`, one `match` per method, so the
//! choice is made once at start and never per call.
//!
//! # The contract
//!
//! * **`submit(op, key, user_data, flush, now)`** starts an operation and never blocks.
//!   The backend takes ownership of the op's buffer and auxiliary data (socket
//!   address, timeout) and keeps them alive, at a stable address, until the kernel
//!   has finished with them: until the operation's final completion has been reaped,
//!   even if it was cancelled or the port closed. It returns an [`OpId`] unique among
//!   operations in flight, or `QueueFull` when `max_in_flight` operations are
//!   outstanding (counted from submit to reap, for every op kind), or `Closed`.
//!   With `flush = false` the backend may hold the operation back until the next
//!   `poll` or `flush` from any thread (batching); the port only asks for that on
//!   pool threads, which are certain to come back.
//! * **`poll(timeout, out, mode)`** waits until at least one completion is
//!   available (or the timeout passes, or `notify` is called) and appends
//!   available completions to `out`: all of them, except that the epoll
//!   backend's poller acts on a few ready sockets per call and keeps the rest
//!   of the readiness it was given for the next call (`sys/epoll/ready.rs`) —
//!   never returning empty-handed while one of them can complete. In `Backup`
//!   mode it may wait longer: until completions pile up (more than one) — the
//!   backup covers for a poller that is busy running a handler, and should not
//!   wake for the completion that poller will take itself; the pool's monitor
//!   wakes it for a lone completion that waits too long. A wake-up from
//!   `notify` must never be lost: it wakes the poller and the backup, and a
//!   reaper in `Other` mode that swallows one gives it back. Completions are
//!   produced exactly once each; at most one thread is sent to `poll` by the
//!   scheduler, but a backend must tolerate `submit` and `cancel` from other
//!   threads meanwhile, and a second reaper (a submitter waiting for room).
//! * **`reap_ready(out)`** appends what `poll` would return at once, without
//!   waiting and without a system call (the port calls it before a dequeue
//!   while a `High` operation is in flight, so a completion still in the
//!   kernel's ring can overtake queued lower-priority ones; `port/prio.rs`).
//! * **Priority.** Every completion carries its operation's `Priority`
//!   (`Completion::with_priority` from the record), however it ended; file
//!   reads and writes pass it to the kernel as their I/O class (`ioprio.rs`).
//! * **Inline reads.** Before a backend sees a `read_at`/`readv_at`, `submit`
//!   tries it on the calling thread if the page cache may hold it
//!   (`inline_read.rs`); a hit is recorded and completed at once
//!   (`complete_inline`), a miss goes to the backend as usual.
//! * **Sends made at once.** With `now` (`submit_inline`, when no batch
//!   would carry the send: `port/submit.rs`), io_uring makes a send on a
//!   stream socket at once when nothing is in the socket's send lane
//!   (`Driver::send_now`); epoll's submit tries every socket operation at
//!   once anyway.
//! * **`notify()`** makes a thread blocked in `poll` return soon, even with nothing.
//! * **`cancel(id)`** asks for the operation to stop. The operation's completion
//!   always arrives: with `ECANCELED` if the cancel won, or its real result if it
//!   lost the race. `NotFound` if the id is not in flight.
//! * **`shutdown()`** (port close or drop): refuse new operations, cancel every
//!   operation in flight, and wait until the kernel has released all of them; their
//!   completions (and buffers, and accepted sockets) are dropped.
//! * Results are raw kernel results, converted to `io::Result` in `completion.rs`.
//! * **`op_paths()`** says how each kind of operation runs (`OpPath`: natively,
//!   on a worker thread, or emulated). A backend runs every kind of operation;
//!   one the kernel cannot do natively takes another path rather than fail.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::completion::{Completion, OpId};
use crate::error::{Error, Result};
use crate::op::Op;

pub(crate) mod epoll;
pub(crate) mod fdtab;
pub(crate) mod inline_read;
mod ioprio;
pub(crate) mod rawcall;
mod table;
mod thread;
pub(crate) use thread::{own_thread, thread_owned, OwnedScope};
pub(crate) mod uring;
mod workers;

/// Whether `RINGPORT_INLINE_SENDS` leaves sends made at once on (the async
/// face's streams, `net/stream.rs`; io_uring's `submit_inline`,
/// `Driver::send_now`). It is for measurements: `off` sends every byte
/// through the port (epoll's submit still tries each send at once).
pub(crate) fn inline_sends_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !switched_off("RINGPORT_INLINE_SENDS"))
}

/// Whether the environment switches a measurement knob off: `var` is `off`,
/// `0` or `no` (`RINGPORT_INLINE_READS`, `RINGPORT_INLINE_SENDS`).
pub(crate) fn switched_off(var: &str) -> bool {
    matches!(std::env::var(var).as_deref(), Ok("off" | "0" | "no"))
}

/// Which backend drives a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Linux io_uring.
    Uring,
    /// Linux epoll, emulating completions on readiness.
    Epoll,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Epoll => "epoll",
        })
    }
}

/// How to choose a backend: force one, or let the port probe (the default, also
/// settable with `RINGPORT_BACKEND=uring|epoll|auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendChoice {
    /// Probe io_uring and use it if it works; otherwise fall back.
    #[default]
    Auto,
    /// io_uring, or an error if it is unavailable.
    Uring,
    /// epoll.
    Epoll,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::Uring),
            "epoll" => Ok(BackendChoice::Epoll),
            other => Err(Error::Unsupported(format!(
                "unknown backend {other:?}: expected auto, uring or epoll"
            ))),
        }
    }
}

impl BackendChoice {
    /// The choice in `RINGPORT_BACKEND`, or `Auto` when unset. A value that is not
    /// `auto`, `uring` or `epoll` is an error, not a silent default.
    pub fn from_env() -> Result<Self> {
        match std::env::var("RINGPORT_BACKEND") {
            Ok(v) => v.parse(),
            Err(std::env::VarError::NotPresent) => Ok(BackendChoice::Auto),
            Err(e) => Err(Error::Unsupported(format!("RINGPORT_BACKEND: {e}"))),
        }
    }
}

/// The result of `submit`: the id, and the completion if the operation finished
/// at once (the port queues it); on `QueueFull` the operation is handed back
/// unchanged.
pub(crate) type SubmitResult = std::result::Result<(OpId, Option<Completion>), (Error, Option<Op>)>;

/// Who is calling `poll` (see the contract above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PollMode {
    /// The port's poller: return as soon as anything is there.
    Poller,
    /// The port's backup poller: return when completions pile up.
    Backup,
    /// Any other thread that reaps (to make room, or instead of sleeping).
    Other,
}

/// Sizes a backend is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) entries: u32,
    pub(crate) max_in_flight: usize,
}

/// The backend a port runs on.
#[derive(Debug)]
// One port has one backend for its whole life, so the size difference between
// the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    Uring(uring::Driver),
    Epoll(epoll::Driver),
}

/// Whether an io_uring setup error means "not available here" (fall back) rather
/// than a transient failure (report it).
fn falls_back(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::EINVAL | libc::EOPNOTSUPP)
    ) || matches!(
        e.kind(),
        io::ErrorKind::Unsupported | io::ErrorKind::TimedOut
    )
}

/// Explains an io_uring refusal, naming the sysctl when it is the cause.
fn uring_refusal(e: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    match (e.raw_os_error(), sysctl) {
        (Some(libc::EPERM), 2) => format!("{e}; kernel.io_uring_disabled = 2"),
        (Some(libc::EPERM), 1) => {
            format!("{e}; kernel.io_uring_disabled = 1 and this process is not allowed")
        }
        (Some(libc::EPERM), _) => format!("{e}; blocked, e.g. by a seccomp profile"),
        (Some(libc::ENOSYS), _) => format!("{e}; the kernel has no io_uring"),
        _ => e.to_string(),
    }
}

impl Backend {
    /// Builds the backend `choice` asks for. Returns it with the reason it was chosen.
    pub(crate) fn build(choice: BackendChoice, cfg: Config) -> Result<(Backend, String)> {
        match choice {
            BackendChoice::Uring => uring::Driver::new(cfg)
                .map(|d| {
                    (
                        Backend::Uring(d),
                        "forced (builder or RINGPORT_BACKEND=uring)".into(),
                    )
                })
                .map_err(|e| Error::Unsupported(format!("io_uring is unavailable here: {e}"))),
            BackendChoice::Epoll => epoll::Driver::new(cfg)
                .map(|d| {
                    (
                        Backend::Epoll(d),
                        "forced (builder or RINGPORT_BACKEND=epoll)".into(),
                    )
                })
                .map_err(Error::Io),
            BackendChoice::Auto => match uring::Driver::new(cfg) {
                Ok(d) => Ok((Backend::Uring(d), "auto: io_uring probe succeeded".into())),
                Err(e) if falls_back(&e) => {
                    let why = format!(
                        "auto: io_uring unavailable ({}), using epoll",
                        uring_refusal(&e)
                    );
                    static LOGGED: std::sync::Once = std::sync::Once::new();
                    LOGGED.call_once(|| tracing::warn!("{why}"));
                    let d = epoll::Driver::new(cfg).map_err(Error::Io)?;
                    Ok((Backend::Epoll(d), why))
                }
                // Resource exhaustion (ENOMEM, EMFILE, ...) is not a missing feature:
                // report it rather than silently change backends.
                Err(e) => Err(Error::Io(e)),
            },
        }
    }

    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            Backend::Uring(_) => BackendKind::Uring,
            Backend::Epoll(_) => BackendKind::Epoll,
        }
    }

    /// `now`: io_uring makes a send at once if it can (`Driver::send_now`;
    /// the port asks for it in `submit_inline` when that pays,
    /// `send_now_pays`); epoll tries every socket operation at once anyway.
    pub(crate) fn submit(
        &self,
        op: Op,
        key: u64,
        user_data: u64,
        flush: bool,
        now: bool,
    ) -> SubmitResult {
        use crate::op::OpBody;
        match &op.body {
            OpBody::Close { fd } => inline_read::forget(std::os::fd::AsRawFd::as_raw_fd(fd)),
            OpBody::Send { .. } if now => {
                if let Backend::Uring(d) = self {
                    return match d.send_now(op, key, user_data) {
                        Ok(r) => r,
                        Err(op) => d.submit(op, key, user_data, flush),
                    };
                }
            }
            // A buffered read served by the page cache ends here (`inline_read.rs`).
            OpBody::Read { .. } | OpBody::ReadV { .. } => {
                let mut op = op;
                let ring_batches = matches!(self, Backend::Uring(_)) && !flush;
                if let Some(res) = inline_read::try_read(&mut op.body, ring_batches) {
                    return match self {
                        Backend::Uring(d) => d.complete_inline(op, key, user_data, res),
                        Backend::Epoll(d) => d.complete_inline(op, key, user_data, res),
                    };
                }
                return self.submit_to_driver(op, key, user_data, flush);
            }
            _ => {}
        }
        self.submit_to_driver(op, key, user_data, flush)
    }

    #[inline]
    fn submit_to_driver(&self, op: Op, key: u64, user_data: u64, flush: bool) -> SubmitResult {
        match self {
            Backend::Uring(d) => d.submit(op, key, user_data, flush),
            Backend::Epoll(d) => d.submit(op, key, user_data, flush),
        }
    }

    pub(crate) fn poll(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
        mode: PollMode,
    ) -> io::Result<()> {
        match self {
            Backend::Uring(d) => d.poll(timeout, out, mode),
            Backend::Epoll(d) => d.poll(timeout, out, mode),
        }
    }

    /// Appends the completions the backend can gather without waiting or a
    /// system call (io_uring: the CQ ring; epoll: worker results and due
    /// timers), so that a priority dequeue sees them. Never blocks on the
    /// kernel; loses no wake-up.
    pub(crate) fn reap_ready(&self, out: &mut Vec<Completion>) {
        match self {
            Backend::Uring(d) => d.reap_ready(out),
            Backend::Epoll(d) => d.reap_ready(out),
        }
    }

    /// The calling thread is back for completions (see `inline_read.rs`).
    pub(crate) fn new_burst(&self) {
        inline_read::new_burst();
    }

    pub(crate) fn flush(&self) {
        match self {
            Backend::Uring(d) => d.flush(),
            Backend::Epoll(_) => {}
        }
    }

    pub(crate) fn has_unflushed(&self) -> bool {
        match self {
            Backend::Uring(d) => d.has_unflushed(),
            Backend::Epoll(_) => false,
        }
    }

    pub(crate) fn notify(&self) {
        match self {
            Backend::Uring(d) => d.notify(),
            Backend::Epoll(d) => d.notify(),
        }
    }

    pub(crate) fn cancel(&self, id: OpId) -> Result<Option<Completion>> {
        match self {
            Backend::Uring(d) => d.cancel(id),
            Backend::Epoll(d) => d.cancel(id),
        }
    }

    pub(crate) fn shutdown(&self) {
        match self {
            Backend::Uring(d) => d.shutdown(),
            Backend::Epoll(d) => d.shutdown(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        match self {
            Backend::Uring(d) => d.in_flight(),
            Backend::Epoll(d) => d.in_flight(),
        }
    }

    /// How long a poller may wait while other threads run handlers before it
    /// checks for completion work they hold (io_uring with `COOP_TASKRUN`, see
    /// `uring/taskrun.rs`); `None` where completions never wait for a busy thread.
    pub(crate) fn task_work_check(&self) -> Option<Duration> {
        match self {
            Backend::Uring(d) => d.task_work_check(),
            Backend::Epoll(_) => None,
        }
    }

    /// Whether the kernel says completion work waits for some thread (a hint).
    pub(crate) fn task_work_pending(&self) -> bool {
        match self {
            Backend::Uring(d) => d.task_work_pending(),
            Backend::Epoll(_) => false,
        }
    }

    /// Releases completion work held by running threads, if the kernel has any
    /// (or had, `seen`, before a wait). Returns whether it kicked.
    pub(crate) fn kick_task_work(&self, seen: bool) -> bool {
        match self {
            Backend::Uring(d) => d.kick_task_work(seen),
            Backend::Epoll(_) => false,
        }
    }

    /// How completion work reaches threads, and the kicks sent (`PortStats`).
    pub(crate) fn task_run(&self) -> (&'static str, &'static str, u64) {
        match self {
            Backend::Uring(d) => d.task_run(),
            Backend::Epoll(_) => ("none", "readiness: no task work", 0),
        }
    }

    /// Whether `submit(.., flush = false)` leaves the operation for a later
    /// `poll` or `flush` to hand to the kernel.
    pub(crate) fn defers_submission(&self) -> bool {
        matches!(self, Backend::Uring(_))
    }

    /// A handle was associated with the port.
    pub(crate) fn associate(&self, fd: std::os::fd::RawFd) -> Result<()> {
        inline_read::on_associate(fd);
        match self {
            Backend::Uring(d) => {
                // A descriptor that is not open is refused, as epoll's
                // `fstat` refuses it (IOCP: ERROR_INVALID_HANDLE); accepted,
                // its number would stay associated, and the socket that
                // later gets the number could not be.
                // SAFETY: F_GETFD only reads the descriptor's flags.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(crate::Error::Io(std::io::Error::last_os_error()));
                }
                d.associate(fd);
                Ok(())
            }
            Backend::Epoll(d) => d.associate(fd),
        }
    }

    /// A handle's association ended. `cancel`: cancel what is in flight on
    /// it (false when the caller knows nothing is, or cancels it itself: a
    /// close's own SQEs on io_uring; epoll always ends its queued ones).
    pub(crate) fn disassociate(&self, fd: std::os::fd::RawFd, cancel: bool) {
        inline_read::forget(fd);
        match self {
            Backend::Uring(d) => d.disassociate(fd, cancel),
            Backend::Epoll(d) => d.disassociate(fd),
        }
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        match self {
            Backend::Uring(d) => d.max_in_flight(),
            Backend::Epoll(d) => d.max_in_flight(),
        }
    }

    /// A pool of `count` buffers of `size` bytes for multishot receives.
    pub(crate) fn buffer_pool(
        &self,
        count: usize,
        size: usize,
    ) -> Result<std::sync::Arc<crate::provided::Shared>> {
        match self {
            Backend::Uring(d) => d.buffer_pool(count, size),
            Backend::Epoll(d) => d.buffer_pool(count, size),
        }
    }

    /// This backend instance's id for fixed-buffer sets (`fixed.rs`).
    pub(crate) fn fixed_owner(&self) -> u64 {
        match self {
            Backend::Uring(d) => d.fixed_owner(),
            Backend::Epoll(d) => d.fixed_owner(),
        }
    }

    /// Registers a set of fixed buffers: `Some(first slot)` if the kernel
    /// holds them in a table, `None` where nothing is registered (epoll, or
    /// io_uring without the support).
    pub(crate) fn register_fixed(&self, bufs: &[libc::iovec]) -> io::Result<Option<u32>> {
        match self {
            Backend::Uring(d) => d.register_fixed(bufs),
            Backend::Epoll(d) => d.register_fixed(bufs.len()),
        }
    }

    /// Clears the slots of a set of fixed buffers that is gone.
    pub(crate) fn unregister_fixed(&self, base: u32, count: usize) {
        match self {
            Backend::Uring(d) => d.unregister_fixed(base, count),
            Backend::Epoll(d) => d.unregister_fixed(count),
        }
    }

    /// How each kind of operation runs on this backend.
    pub(crate) fn op_paths(&self) -> crate::op::OpPaths {
        match self {
            Backend::Uring(d) => d.op_paths(),
            Backend::Epoll(d) => d.op_paths(),
        }
    }
}

/// A socket's `SO_TYPE` (`SOCK_STREAM`, `SOCK_DGRAM`, …); `None` if `fd` is
/// not a socket (or not open).
pub(crate) fn socket_type(fd: std::os::fd::RawFd) -> Option<libc::c_int> {
    socket_int(fd, libc::SO_TYPE)
}

/// Sets or clears `O_NONBLOCK` on a descriptor (its other status flags
/// stay).
pub(crate) fn set_nonblocking_fd(fd: std::os::fd::RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller holds open; no memory passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let want = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if want != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, want) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_DOMAIN` of a socket (`None` for anything else).
pub(crate) fn socket_domain(fd: std::os::fd::RawFd) -> Option<libc::c_int> {
    socket_int(fd, libc::SO_DOMAIN)
}

/// An integer `SOL_SOCKET` option of a socket (`None` for anything else).
pub(crate) fn socket_int(fd: std::os::fd::RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

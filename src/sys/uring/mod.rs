//! The io_uring backend: one ring shared by every thread of the port.
//!
//! # How many threads share one ring
//!
//! IOCP lets any thread submit and any thread dequeue; io_uring rings are built
//! for one thread. This backend shares one ring (see `docs/design.md` for the
//! designs measured and why this one won):
//!
//! * **Submission** — any thread pushes SQEs under `inner`'s mutex. The mutex also
//!   guards the table of operations in flight and every access to the CQ ring.
//!   Only threads the port owns (pool threads, a thread inside `block_on`, the
//!   driver's submitter thread) hand SQEs to the kernel: io_uring ties a request
//!   to the thread that submitted it and stops serving it when that thread exits
//!   (`sys/thread.rs`). Another thread publishes its SQEs and wakes the
//!   submitter thread (`Kicker`), which makes the `io_uring_enter`; if the SQ is
//!   full, its chain waits in `backlog`, in order. Submitting enters pass an
//!   exact count (see "Operations of several SQEs").
//! * **Reaping** — the scheduler sends one idle thread at a time to `poll`; it waits
//!   in `io_uring_enter(GETEVENTS)` without holding the mutex, then reaps the CQ
//!   under it. A submitter waiting for room may reap too; both are serialised by
//!   the mutex, so every CQE is consumed exactly once.
//! * **Task run: `COOP_TASKRUN`.** `SINGLE_ISSUER`/`DEFER_TASKRUN` need one
//!   submitting and reaping thread, so the ring takes `COOP_TASKRUN` where it can:
//!   a request's completion work still wakes its sleeping submitter, but no longer
//!   interrupts one that runs user code; the poller releases work held by a long
//!   handler with a `membarrier` kick. Why, what it saves and what it costs:
//!   `taskrun.rs`.
//!
//! # Operation records
//!
//! Every operation in flight has a record in `Inner::ops`, indexed by the low 32
//! bits of its `user_data` (the `OpId`); the high bits are a generation so a stale
//! id cannot match a newer operation. The record owns the buffer and any
//! auxiliary data the SQE points to. Buffers are heap allocations whose address
//! does not change when the record (or the table) moves; auxiliary data is boxed
//! for the same reason. A record is removed only when its CQE is reaped, which is
//! the kernel's promise that it no longer touches that memory.
//!
//! Datagram operations (`recv_from`, `send_to`) are `RECVMSG`/`SENDMSG`: their
//! auxiliary data is a `msghdr` with its `iovec` and socket address
//! (`ops::MsgAux`), which the kernel reads and — for a receive — writes back
//! (`msg_namelen`, `msg_flags`, the address) when the operation ends.
//!
//! # Operations of several SQEs
//!
//! `send_file` is a chain of linked SQEs (see `transfer.rs`) that produces
//! several CQEs; the user sees one completion. The CQE of a chain's first link
//! (its *head*) carries the operation's id with [`LEG_BIT`] set; every other CQE
//! of the operation carries the id itself. The record stays in the table until
//! the operation's last CQE is reaped.
//!
//! A chain is published in one step, and every `io_uring_enter` that submits
//! passes an exact count, so the kernel never sees half a chain: see
//! `Driver::submit_locked` and, for the one enter that submits and waits in a
//! single call, `Driver::enter`.
//!
//! # What the kernel lacks
//!
//! The driver needs the opcodes of Linux 5.11 (`probe.rs` lists them); the
//! others it uses are probed once, at start, and an operation whose opcode is
//! missing takes another path instead of failing: `READV`/`WRITEV`/`OPENAT`/
//! `STATX`/`FALLOCATE` run on worker threads (`fallback.rs`), `send_file`
//! without `SPLICE` reads and sends
//! through a buffer (`transfer.rs`), a linked timeout without
//! `LINK_TIMEOUT` is a timer that cancels the operation, and `send_zc` and
//! fixed buffers have their own fallbacks (`bufs.rs`). `PortStats::op_paths`
//! and `ringport info` show which path each kind takes;
//! `RINGPORT_URING_OPS_OFF` forces the fallbacks for testing.
//!
//! `send_zc` is one SQE with two CQEs, one completion (`bufs.rs`).
//!
//! # Socket lanes
//!
//! Receives (and sends) in flight on one socket are served in submission
//! order, as on IOCP and epoll: one per socket and direction is in the
//! kernel, the later ones wait in the driver (`lanes.rs`). Cancels, closes,
//! `disassociate` and shutdown end them there (`ending.rs`).
//!
//! # Linked timeouts
//!
//! `Op::timeout_after` links a `LINK_TIMEOUT` to the operation's SQE; its CQE
//! (tagged [`LINK_TIMEOUT_TAG`]) is swallowed, and the operation reports
//! `ECANCELED` if the timer won. Two cases use a plain `TIMEOUT` instead
//! (tagged with [`TIMER_BIT`]), whose expiry makes the driver cancel the
//! operation, and which the driver removes when the operation ends first:
//! `send_file` (its splices run on io-wq, where the kernel does not arm a
//! `LINK_TIMEOUT`; found on 6.18, the timer simply never fired) and kernels
//! without `LINK_TIMEOUT`.

mod bufs;
mod ending;
mod fallback;
mod lanes;
mod multi;
mod ops;
mod probe;
mod ready;
mod reap;
mod records;
mod submit;
mod taskrun;
use submit::{Kicker, NO_COMBINED};
mod transfer;

pub(crate) use probe::probe;
use probe::{check_ops, Support};

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use crate::completion::{Completion, OpId};
use crate::error::{Error, Result};
use crate::op::{Op, OpBody, OpKind, OpPath, OpPaths};
use std::sync::Mutex;

use crate::sync::lock;
use crate::sys::OwnedScope;

use self::fallback::Fallback;
use self::ops::Aux;
use self::records::{cancel_sqes, remove_timer, Inner, Record};
use self::transfer::{Pipe, Transfer};
use super::table::OpTable;
use super::{Config, PollMode, SubmitResult};

/// `user_data` of the NOPs `notify` submits; their CQEs are swallowed.
const WAKE_TAG: u64 = u64::MAX;
/// `user_data` of internal cancel requests; their CQEs are swallowed.
const CANCEL_TAG: u64 = u64::MAX - 1;
/// `user_data` of `LINK_TIMEOUT` SQEs; their CQEs are swallowed (the operation
/// they bound reports the outcome).
const LINK_TIMEOUT_TAG: u64 = u64::MAX - 2;
/// `user_data` of the `POLL_ADD` on the worker threads' eventfd (`fallback.rs`).
const MAILBOX_TAG: u64 = u64::MAX - 3;
/// Set in the `user_data` of the head of an operation's chain of SQEs. Op ids
/// never have it (nor [`TIMER_BIT`]): generations stay below 2^30 (see
/// `table.rs`), so an id is below 2^62. The tags above have both bits, but
/// their low 32 bits (an index of 2^32 − 1 to − 3) are never a table index
/// (the table holds at most `max_in_flight` ≤ 32768 records).
const LEG_BIT: u64 = 1 << 63;
/// Set in the `user_data` of the standalone `TIMEOUT` that emulates an
/// operation's linked timeout where `LINK_TIMEOUT` cannot serve: when it fires,
/// the driver cancels the operation.
const TIMER_BIT: u64 = 1 << 62;

/// The most SQEs pushed in one step (`Core::submit`: a `send_file`'s head
/// and tail, and the `TIMEOUT` of its deadline). The SQ is never smaller.
const MAX_CHAIN: u32 = 3;

/// The io_uring driver: its [`Core`], shared with the submitter thread.
pub(crate) struct Driver {
    core: Arc<Core>,
}

impl std::ops::Deref for Driver {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl Driver {
    pub(crate) fn new(cfg: Config) -> io::Result<Driver> {
        Driver::with_support(cfg, |_| {})
    }

    /// A driver whose optional opcodes are what the kernel offers, adjusted by
    /// `adjust` (tests switch them off to take the fallbacks).
    fn with_support(cfg: Config, adjust: impl FnOnce(&mut Support)) -> io::Result<Driver> {
        Driver::with_support_multi(cfg, adjust, None)
    }

    /// `with_support`, with multishot support forced to `multi` if given (tests).
    fn with_support_multi(
        cfg: Config,
        adjust: impl FnOnce(&mut Support),
        multi: Option<multi::MultiSupport>,
    ) -> io::Result<Driver> {
        let core = Core::with_support(cfg, adjust, multi)?;
        // A full round trip proves the ring works (some sandboxes let setup
        // succeed and then fail every submission). A NOP is done when submitted,
        // so this thread may submit it whatever it is.
        let owned = OwnedScope::enter();
        core.probe_nop()?;
        drop(owned);
        Ok(Driver { core })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The submitter first: it holds only a weak reference, so once it is
        // gone the core (and its shutdown, in `Core::drop`) ends here.
        self.core.kicker.stop();
    }
}

/// The driver's state. See the module docs for its threading rules.
pub(crate) struct Core {
    ring: IoUring,
    inner: Mutex<Inner>,
    max_in_flight: usize,
    support: Support,
    /// Worker threads for opcodes the kernel lacks; made on first use.
    fallback: OnceLock<Fallback>,
    /// Multishot support, and the provided-buffer rings (`multi.rs`).
    multi: multi::MultiSupport,
    bufs: multi::Pools,
    /// SQEs pushed since the ring was made. Written only under `inner` (so a
    /// holder of `inner` reads a stable value); `pushed − SQ length` is then how
    /// many the kernel has consumed.
    pushed: AtomicU64,
    /// The submit-and-wait `enter` in progress, if any: [`NO_COMBINED`], or the
    /// value of `pushed` when it took its count. Set under `inner`, cleared
    /// without it once that enter returns. While it is set and the kernel has
    /// consumed fewer SQEs than it names, no other thread may submit (see
    /// `submit_locked`): that enter's count is exact only if nobody moves the
    /// SQ head before it reaches the kernel.
    combined: AtomicU64,
    /// Chains pushed while the SQ was full by threads that may not submit
    /// (see `push_all_locked`), oldest first; `backlogged` counts them. Both
    /// change only under `inner`.
    backlog: Mutex<VecDeque<Vec<squeue::Entry>>>,
    backlogged: AtomicUsize,
    /// This core, for the submitter thread (which must not keep it alive).
    me: Weak<Core>,
    kicker: Kicker,
    /// The fixed-buffer table's slots (`bufs.rs`). Never locked with `inner`
    /// held, nor `inner` with it: a set is dropped (and clears its slots)
    /// wherever its last lease goes.
    slots: Mutex<bufs::Slots>,
    /// This driver's id for fixed-buffer sets.
    fixed_owner: u64,
    /// Descriptors known to be sockets, or not (`bufs.rs`).
    sockets: Mutex<bufs::SocketCache>,
    /// The ring's task-run mode (`taskrun.rs`).
    taskrun: taskrun::TaskRun,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Driver")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("cq_entries", &self.ring.params().cq_entries())
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl Core {
    fn with_support(
        cfg: Config,
        adjust: impl FnOnce(&mut Support),
        multi: Option<multi::MultiSupport>,
    ) -> io::Result<Arc<Core>> {
        // The SQ must hold the longest chain pushed in one step (`submit`: a
        // transfer's two splices and the TIMEOUT of its deadline), or that
        // push never fits and is retried for ever (`push_all_locked`).
        let entries = cfg
            .entries
            .clamp(MAX_CHAIN.next_power_of_two(), 32768)
            .next_power_of_two();
        // The CQ must hold every operation in flight plus internal CQEs (wakes and
        // cancels), so it can never overflow: size it to twice max_in_flight.
        let cq = cfg
            .max_in_flight
            .max(1)
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .max(entries as usize * 2);
        let cq = cq.min(65536) as u32;
        let build = |coop: bool| {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_clamp();
            if coop {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            b.build(entries)
        };
        let (ring, taskrun) = match taskrun::want_coop() {
            Ok(()) => match build(true) {
                Ok(ring) => (ring, taskrun::TaskRun::new(true, "COOP_TASKRUN")),
                // Kernels before 5.19 reject the flags.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                    build(false)?,
                    taskrun::TaskRun::new(false, "kernel lacks COOP_TASKRUN"),
                ),
                Err(e) => return Err(e),
            },
            Err(why) => (build(false)?, taskrun::TaskRun::new(false, why)),
        };
        if !ring.params().is_feature_nodrop() || !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel lacks IORING_FEAT_NODROP or IORING_FEAT_EXT_ARG (needs Linux 5.11+)",
            ));
        }
        let cq_entries = ring.params().cq_entries() as usize;
        let max_in_flight = cfg.max_in_flight.clamp(1, cq_entries / 2);
        let mut support = check_ops(&ring)?;
        support.fixed &= bufs::sparse_tables(&ring);
        adjust(&mut support);
        Ok(Arc::new_cyclic(|me| Core {
            ring,
            inner: Mutex::new(Inner {
                ops: OpTable::new(),
                closed: false,
                pipes: Vec::new(),
                worker_ops: 0,
                mailbox_armed: false,
                lanes: lanes::Lanes::default(),
                resume: Vec::new(),
                done: Vec::new(),
                timer_ts: std::collections::HashMap::new(),
                emulated_multi: std::collections::HashMap::new(),
            }),
            max_in_flight,
            support,
            fallback: OnceLock::new(),
            multi: multi.unwrap_or_else(|| {
                multi::multishot_support(
                    &std::env::var("RINGPORT_URING_OPS_OFF").unwrap_or_default(),
                )
            }),
            bufs: multi::Pools::new(),
            slots: Mutex::default(),
            fixed_owner: crate::fixed::next_owner_id(),
            sockets: Mutex::default(),
            pushed: AtomicU64::new(0),
            combined: AtomicU64::new(NO_COMBINED),
            backlog: Mutex::new(VecDeque::new()),
            backlogged: AtomicUsize::new(0),
            me: me.clone(),
            kicker: Kicker::default(),
            taskrun,
        }))
    }

    fn probe_nop(&self) -> io::Result<()> {
        let id = self
            .submit(Op::nop(), 0, 0, true)
            .map_err(|(e, _)| io::Error::from(e))?
            .0;
        let mut out = Vec::new();
        for _ in 0..100 {
            self.poll(Some(Duration::from_millis(10)), &mut out, PollMode::Poller)?;
            if out.iter().any(|c| c.op_id() == Some(id)) {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "io_uring NOP probe never completed",
        ))
    }

    /// How long a poller may wait, while other threads run handlers, before it
    /// looks for completion work they hold (`taskrun.rs`); `None` in the default
    /// task-run mode, where the kernel interrupts them itself.
    pub(crate) fn task_work_check(&self) -> Option<Duration> {
        self.taskrun.coop.then_some(taskrun::KICK_AFTER)
    }

    /// Whether the ring says completion work is pending for some thread
    /// (`IORING_SQ_TASKRUN`; one flag for the whole ring, cleared whenever any
    /// thread runs its work: a hint, see `taskrun.rs`).
    pub(crate) fn task_work_pending(&self) -> bool {
        if !self.taskrun.coop {
            return false;
        }
        let inner = lock(&self.inner);
        // SAFETY: `inner` is held; SubmissionQueues are only created under it.
        let pending = unsafe { self.ring.submission_shared() }.taskrun();
        drop(inner);
        pending
    }

    /// If completion work is pending for some thread (the ring's flag now, or
    /// `seen` — the flag as read before a wait), makes the running threads enter
    /// the kernel so it runs (`taskrun.rs`). Returns whether it kicked.
    pub(crate) fn kick_task_work(&self, seen: bool) -> bool {
        if !self.taskrun.coop || !(seen || self.task_work_pending()) {
            return false;
        }
        taskrun::kick(&self.taskrun);
        true
    }

    /// The task-run mode, why, and the kicks it sent.
    pub(crate) fn task_run(&self) -> (&'static str, &'static str, u64) {
        (
            if self.taskrun.coop { "coop" } else { "default" },
            self.taskrun.why,
            self.taskrun
                .kicks
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.inner).ops.len()
    }

    /// Starts `op`. On `QueueFull` the op is handed back untouched.
    pub(crate) fn submit(&self, op: Op, key: u64, user_data: u64, flush: bool) -> SubmitResult {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Err((Error::Closed, None));
        }
        if inner.ops.len() >= self.max_in_flight {
            return Err((Error::QueueFull, Some(op)));
        }
        let kind = op.kind();
        let (link, prio) = (op.link_timeout, op.prio);
        let mut body = op.body;
        let mut rec = Record {
            kind,
            key,
            user_data,
            prio,
            body: OpBody::Nop,
            aux: Aux::None,
            link_ts: None,
            timer: false,
            lane: None,
            parked: None,
        };
        // A send on a Unix datagram socket: the kernel must not try it
        // again (`Lanes::unix_datagram`).
        // (A fixed-buffer write to a socket is built as a `SEND` by
        // `build_bufs`, which adds the flag.)
        let dontwait = match &mut body {
            OpBody::Send { fd, flags, .. }
            | OpBody::SendTo { fd, flags, .. }
            | OpBody::SendZc { fd, flags, .. } => {
                let dontwait = inner.lanes.unix_datagram(*fd);
                if dontwait {
                    *flags |= libc::MSG_DONTWAIT;
                }
                dontwait
            }
            OpBody::WriteFixed { fd, .. } => inner.lanes.unix_datagram(*fd),
            _ => false,
        };
        let built = if let OpBody::SendFile {
            sock,
            file,
            offset,
            len,
        } = body
        {
            self.start_transfer(&mut inner, sock, file, offset, len)
                .map(|(t, head, tail)| {
                    rec.aux = Aux::Transfer(Box::new(t));
                    (Some(head), tail)
                })
        } else if matches!(body, OpBody::AcceptMulti { .. } | OpBody::RecvMulti { .. }) {
            self.build_multi(&body, link.is_some()).map(|(sqe, aux)| {
                rec.aux = aux;
                (None, sqe)
            })
        } else if let Some(built) = self.build_bufs(&mut body, dontwait) {
            built.map(|(sqe, aux)| {
                rec.aux = aux;
                (None, sqe)
            })
        } else if positional_write(&body).is_some_and(|fd| self.is_socket_or_pipe(fd)) {
            // A positional write is for files (`Op::write_at`), and epoll's
            // `pwrite` refuses a socket or a pipe. io_uring would write to
            // it, and its `WRITE` has no `MSG_NOSIGNAL`: to a reader that
            // has gone, the kernel raises `SIGPIPE` in the thread that
            // issued it — a pool worker, the submitter thread — which
            // kills a process whose `SIGPIPE` is the default.
            Err(-libc::ESPIPE)
        } else if self.path(kind) == OpPath::Worker {
            return self.submit_to_worker(inner, rec, body, link, flush);
        } else {
            if let OpBody::Close { fd } = &body {
                let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
                // What is still in flight on a socket ends first, with
                // ECANCELED (IOCP's CloseHandle; epoll's close does the same
                // to its sockets' queues). A file's operations run to their
                // end, as epoll's file jobs do.
                // (Its parked sends and receives go first, in order.)
                self.forget_lanes_locked(&mut inner, raw);
                if self.is_socket(raw) {
                    self.push_locked(&cancel_all_on(raw));
                }
                self.forget_fd(raw);
            }
            ops::build(&mut body, prio).map(|(sqe, aux)| {
                rec.aux = aux;
                (None, sqe)
            })
        };
        if built.is_ok() {
            rec.lane = inner.lanes.lane_of(&body);
        }
        rec.body = body;
        let lane = rec.lane;
        let id = inner.insert(rec);
        let (head, tail) = match built {
            Ok(sqes) => sqes,
            // Ended before it started: its completion is queued at once.
            Err(res) => return Ok((id, inner.complete(id, res))),
        };
        let tail = tail.user_data(id.0);
        if lane.is_some_and(|l| !inner.lanes.enter(l, id)) {
            // Parked behind its lane's busy operation (`lanes.rs`): pushed
            // when that one ends. Its deadline runs from now, as an
            // emulated linked timeout (a plain TIMEOUT that cancels it),
            // which keeps covering it once it is pushed.
            let mut chain = Vec::with_capacity(2);
            chain.extend(head.map(|h| h.user_data(id.0 | LEG_BIT)));
            chain.push(tail);
            let rec = inner.ops.get_mut(id).expect("just inserted");
            rec.parked = Some(chain);
            if let Some(d) = link {
                let ts: &types::Timespec = rec.link_ts.insert(Box::new(d.into()));
                rec.timer = true;
                self.push_locked(&opcode::Timeout::new(ts).build().user_data(id.0 | TIMER_BIT));
                drop(inner);
                if flush {
                    self.flush();
                }
            }
            return Ok((id, None));
        }
        match (head, link) {
            (None, None) => self.push_locked(&tail),
            (head, link) => {
                let mut chain = Vec::with_capacity(3);
                chain.extend(head.map(|h| h.user_data(id.0 | LEG_BIT)));
                chain.push(tail);
                if let Some(d) = link {
                    let rec = inner.ops.get_mut(id).expect("just inserted");
                    let ts: &types::Timespec = rec.link_ts.insert(Box::new(d.into()));
                    // A transfer's rounds run on io-wq, where the kernel never
                    // arms a LINK_TIMEOUT linked to a SPLICE (found on 6.18):
                    // those, and kernels without LINK_TIMEOUT, get a plain
                    // TIMEOUT whose expiry cancels the operation. So does a
                    // zero-copy send: where it is not supported (a Unix
                    // socket) it is sent again as a plain SEND, which a
                    // LINK_TIMEOUT on the first SQE would not cover.
                    let zero_copy = matches!(rec.aux, Aux::ZeroCopy(_));
                    if chain.len() > 1 || !self.support.link_timeout || zero_copy {
                        rec.timer = true;
                        chain.push(opcode::Timeout::new(ts).build().user_data(id.0 | TIMER_BIT));
                    } else {
                        let last = chain.pop().expect("a chain has an SQE");
                        chain.push(last.flags(squeue::Flags::IO_LINK));
                        chain.push(
                            opcode::LinkTimeout::new(ts)
                                .build()
                                .user_data(LINK_TIMEOUT_TAG),
                        );
                    }
                }
                self.push_all_locked(&chain);
            }
        }
        drop(inner);
        if flush {
            self.flush();
        }
        Ok((id, None))
    }

    /// Starts an operation on a worker thread (the kernel lacks its opcode),
    /// with an emulated timer if it has a linked timeout.
    fn submit_to_worker(
        &self,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        mut rec: Record,
        body: OpBody,
        link: Option<Duration>,
        flush: bool,
    ) -> SubmitResult {
        let fb = match self.fallback.get() {
            Some(fb) => fb,
            // Made under `inner`, so by one thread only.
            None => match Fallback::new() {
                Ok(fb) => self.fallback.get_or_init(|| fb),
                Err(e) => {
                    let id = inner.ops.insert(rec);
                    let res = -e.raw_os_error().unwrap_or(libc::EMFILE);
                    return Ok((id, inner.complete(id, res)));
                }
            },
        };
        rec.aux = Aux::Worker;
        rec.timer = link.is_some();
        let id = inner.ops.insert(rec);
        inner.worker_ops += 1;
        if !inner.mailbox_armed {
            inner.mailbox_armed = true;
            self.push_locked(&fb.arm().user_data(MAILBOX_TAG));
        }
        if let Some(d) = link {
            let rec = inner.ops.get_mut(id).expect("just inserted");
            let ts: &types::Timespec = rec.link_ts.insert(Box::new(d.into()));
            self.push_locked(&opcode::Timeout::new(ts).build().user_data(id.0 | TIMER_BIT));
        }
        let prio = inner.ops.get(id).expect("just inserted").prio;
        fb.workers.push(id, body, prio);
        drop(inner);
        if flush {
            self.flush();
        }
        Ok((id, None))
    }

    /// How operations of `kind` run on this driver.
    fn path(&self, kind: OpKind) -> OpPath {
        let s = &self.support;
        let native = |has: bool, or: OpPath| if has { OpPath::Uring } else { or };
        match kind {
            OpKind::SendFile => native(s.splice, OpPath::Emulated),
            OpKind::ReadV => native(s.readv, OpPath::Worker),
            OpKind::WriteV => native(s.writev, OpPath::Worker),
            OpKind::OpenAt => native(s.openat, OpPath::Worker),
            OpKind::Statx => native(s.statx, OpPath::Worker),
            OpKind::Fallocate => native(s.fallocate, OpPath::Worker),
            OpKind::AcceptMulti => native(self.multi.accept, OpPath::Emulated),
            OpKind::RecvMulti => native(self.multi.recv, OpPath::Emulated),
            OpKind::SendZc => native(s.send_zc, OpPath::Emulated),
            OpKind::ReadFixed | OpKind::WriteFixed => native(s.fixed, OpPath::Worker),
            _ => OpPath::Uring,
        }
    }

    /// The path of every kind of operation (for port statistics).
    pub(crate) fn op_paths(&self) -> OpPaths {
        let link = if self.support.link_timeout {
            OpPath::Uring
        } else {
            OpPath::Emulated
        };
        OpPaths::new(|k| self.path(k), link)
    }

    /// A `send_file`'s transfer and the first round of its SQEs (see
    /// `transfer.rs`), with a pipe from the pool or a new one; `Err(-errno)` if
    /// no pipe can be had (the descriptor limit).
    fn start_transfer(
        &self,
        inner: &mut Inner,
        sock: RawFd,
        file: RawFd,
        offset: u64,
        len: usize,
    ) -> std::result::Result<(Transfer, squeue::Entry, squeue::Entry), i32> {
        let pipe = if self.support.splice {
            let p = inner.pipes.pop().map_or_else(Pipe::new, Ok);
            Some(p.map_err(|e| -e.raw_os_error().unwrap_or(libc::EMFILE))?)
        } else {
            None
        };
        Ok(Transfer::start(sock, file, offset, len, pipe))
    }

    /// Wakes the poller and the backup: two NOPs, because the backup waits for
    /// two completions.
    pub(crate) fn notify(&self) {
        let inner = lock(&self.inner);
        self.push_locked(&opcode::Nop::new().build().user_data(WAKE_TAG));
        self.push_locked(&opcode::Nop::new().build().user_data(WAKE_TAG));
        drop(inner);
        let _ = self.submit_all();
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // The ring's memory and the records' buffers must outlive every request.
        if lock(&self.inner).ops.len() > 0 {
            self.shutdown();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod fallback_tests;

#[cfg(all(test, not(loom)))]
mod multi_tests;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// `notify` wakes a backup waiting with no timeout at all.
    #[test]
    fn notify_wakes_a_backup() {
        let d = std::sync::Arc::new(
            Driver::new(Config {
                entries: 8,
                max_in_flight: 8,
            })
            .expect("io_uring"),
        );
        let d2 = d.clone();
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            d2.poll(None, &mut out, PollMode::Backup).unwrap();
            out.len()
        });
        std::thread::sleep(Duration::from_millis(20));
        d.notify();
        assert_eq!(t.join().unwrap(), 0, "woken with nothing to hand out");
    }
}

/// The descriptor of a positional write (`write_at`, `writev_at`).
fn positional_write(body: &OpBody) -> Option<RawFd> {
    match body {
        OpBody::Write { fd, .. } | OpBody::WriteV { fd, .. } => Some(*fd),
        _ => None,
    }
}

/// An `ASYNC_CANCEL` of every request on descriptor `fd` (matched by the
/// file it names when the cancel runs; kernel 5.19, older ones refuse the
/// flags with `EINVAL`, which changes nothing). Its own CQE is ignored.
fn cancel_all_on(fd: RawFd) -> squeue::Entry {
    opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
        .build()
        .user_data(CANCEL_TAG)
}

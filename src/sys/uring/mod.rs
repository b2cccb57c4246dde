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
//!   Submitting to the kernel (`io_uring_enter`) happens outside the mutex: the
//!   kernel consumes SQEs under its own lock, and only published entries (the tail
//!   is written with release ordering when the `SubmissionQueue` is dropped) are
//!   ever visible to it.
//! * **Reaping** — the scheduler sends one idle thread at a time to `poll`; it waits
//!   in `io_uring_enter(GETEVENTS)` without holding the mutex, then reaps the CQ
//!   under it. A submitter waiting for room may reap too; both are serialised by
//!   the mutex, so every CQE is consumed exactly once.
//! * **No task-run flags.** `SINGLE_ISSUER`/`DEFER_TASKRUN` need one submitting and
//!   reaping thread, and `COOP_TASKRUN` lets a request's task work wait until its
//!   submitting thread next enters the kernel — which a thread asleep on the
//!   scheduler's condvar may never do. The default notification (a signal-style
//!   wake of the submitter) is the only mode that is correct with any thread
//!   submitting and any thread waiting.
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
//! Every `io_uring_enter` submits *all* published SQEs (see [`Driver::enter`]),
//! and a chain is published in one step, so the kernel never sees half a chain.
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

mod ops;
mod probe;
mod transfer;

pub(crate) use probe::probe;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use crate::completion::{Completion, OpId};
use crate::error::{Error, Result};
use crate::op::{Op, OpBody, OpKind};
use std::sync::Mutex;

use crate::sync::lock;

use self::ops::Aux;
use self::transfer::{Pipe, Step, Transfer, PIPE_POOL};
use super::table::OpTable;
use super::{Config, PollMode, SubmitResult};

/// `user_data` of the NOPs `notify` submits; their CQEs are swallowed.
const WAKE_TAG: u64 = u64::MAX;
/// `user_data` of internal cancel requests; their CQEs are swallowed.
const CANCEL_TAG: u64 = u64::MAX - 1;
/// `user_data` of `LINK_TIMEOUT` SQEs; their CQEs are swallowed (the operation
/// they bound reports the outcome).
const LINK_TIMEOUT_TAG: u64 = u64::MAX - 2;
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

/// Which optional opcodes this kernel has (found once, at start).
#[derive(Debug, Clone, Copy)]
struct Support {
    splice: bool,
    link_timeout: bool,
}

#[derive(Debug)]
struct Record {
    kind: OpKind,
    key: u64,
    user_data: u64,
    /// The operation: it owns the buffers its SQE points into.
    body: OpBody,
    aux: Aux,
    /// The `timespec` of its linked timeout (`Op::timeout_after`): of its
    /// `LINK_TIMEOUT` SQE, or of the `TIMEOUT` that emulates one.
    link_ts: Option<Box<types::Timespec>>,
    /// An emulated linked timeout ([`TIMER_BIT`]) is pending.
    timer: bool,
}

#[derive(Debug)]
struct Inner {
    ops: OpTable<Record>,
    closed: bool,
    /// Empty pipes for `send_file`, at most [`PIPE_POOL`].
    pipes: Vec<Pipe>,
}

/// The io_uring driver. See the module docs for its threading rules.
pub(crate) struct Driver {
    ring: IoUring,
    inner: Mutex<Inner>,
    max_in_flight: usize,
    support: Support,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Driver")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("cq_entries", &self.ring.params().cq_entries())
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl Driver {
    pub(crate) fn new(cfg: Config) -> io::Result<Driver> {
        let entries = cfg.entries.clamp(2, 32768).next_power_of_two();
        // The CQ must hold every operation in flight plus internal CQEs (wakes and
        // cancels), so it can never overflow: size it to twice max_in_flight.
        let cq = (cfg.max_in_flight.max(1) * 2)
            .next_power_of_two()
            .max(entries as usize * 2);
        let cq = cq.min(65536) as u32;
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_clamp()
            .build(entries)?;
        if !ring.params().is_feature_nodrop() || !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel lacks IORING_FEAT_NODROP or IORING_FEAT_EXT_ARG (needs Linux 5.11+)",
            ));
        }
        let cq_entries = ring.params().cq_entries() as usize;
        let max_in_flight = cfg.max_in_flight.clamp(1, cq_entries / 2);
        let support = check_ops(&ring)?;
        let d = Driver {
            ring,
            inner: Mutex::new(Inner {
                ops: OpTable::new(),
                closed: false,
                pipes: Vec::new(),
            }),
            max_in_flight,
            support,
        };
        // A full round trip proves the ring works (some sandboxes let setup succeed
        // and then fail every submission).
        d.probe_nop()?;
        Ok(d)
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
        let link = op.link_timeout;
        let mut body = op.body;
        let mut rec = Record {
            kind,
            key,
            user_data,
            body: OpBody::Nop,
            aux: Aux::None,
            link_ts: None,
            timer: false,
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
        } else {
            ops::build(&mut body).map(|(sqe, aux)| {
                rec.aux = aux;
                (None, sqe)
            })
        };
        rec.body = body;
        let id = inner.ops.insert(rec);
        let (head, tail) = match built {
            Ok(sqes) => sqes,
            // Ended before it started: its completion is queued at once.
            Err(res) => return Ok((id, inner.complete(id, res))),
        };
        let tail = tail.user_data(id.0);
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
                    // TIMEOUT whose expiry cancels the operation.
                    if chain.len() > 1 || !self.support.link_timeout {
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

    /// Pushes an SQE; the caller holds `inner`. If the SQ is full, submits first.
    fn push_locked(&self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: the `inner` mutex is held by our caller, and every
            // SubmissionQueue in this driver is created under it, so no other exists.
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: every pointer in `sqe` points into the record that was just
            // stored in `inner.ops` (a heap buffer or a boxed aux value) and stays
            // valid until its CQE is reaped; the record is only removed then.
            if unsafe { sq.push(sqe) }.is_ok() {
                return;
            }
            drop(sq);
            // SQ full: hand what is there to the kernel and retry.
            if let Err(e) = self.submit_all() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!("io_uring_enter failed while the SQ was full: {e}");
                }
            }
        }
    }

    /// Pushes the SQEs of one chain together, so the kernel never sees a linked
    /// SQE without the ones it links to; the caller holds `inner`.
    fn push_all_locked(&self, sqes: &[squeue::Entry]) {
        loop {
            // SAFETY: as in `push_locked`: the mutex is held, and every pointer
            // in the entries points into a record stored in `inner.ops`.
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: as above.
            if unsafe { sq.push_multiple(sqes) }.is_ok() {
                return;
            }
            drop(sq);
            if let Err(e) = self.submit_all() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!("io_uring_enter failed while the SQ was full: {e}");
                }
            }
        }
    }

    /// Asks the kernel to cancel every SQE of operation `id` still running;
    /// the caller holds `inner`.
    fn push_cancel_locked(&self, inner: &mut Inner, id: OpId) {
        if let Some(rec) = inner.ops.get_mut(id) {
            for sqe in cancel_sqes(id, rec) {
                self.push_locked(&sqe);
            }
        }
    }

    /// Hands every published SQE to the kernel (`io_uring_enter` without a wait).
    fn submit_all(&self) -> io::Result<usize> {
        self.enter(0, None)
    }

    /// `io_uring_enter`: submits every published SQE, then waits (with an
    /// optional timeout) until `want` completions are there.
    ///
    /// The count of SQEs to submit is the SQ's capacity, which the kernel
    /// clamps to the SQEs published — never a count read earlier, as the `io-uring`
    /// crate's `submit*` methods pass: with several threads submitting, such a
    /// count can be stale (others consumed SQEs since), and the kernel would stop
    /// part-way through what is published, possibly in the middle of a chain of
    /// linked SQEs; the chain's head would then run unlinked. Chains are
    /// published whole (`push_all_locked`), so an enter that takes everything
    /// never splits one.
    fn enter(&self, want: u32, timeout: Option<Duration>) -> io::Result<usize> {
        let to_submit = self.ring.params().sq_entries();
        let getevents = if want > 0 {
            io_uring::EnterFlags::GETEVENTS.bits()
        } else {
            0
        };
        match timeout {
            // SAFETY: io_uring_enter on our ring with no argument; the SQEs it
            // submits were pushed under `inner` with every pointer they hold
            // kept alive by their records (see `push_locked`).
            None => unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(to_submit, want, getevents, None)
            },
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                // SAFETY: as above; `args` (and the timespec it points to) is
                // the `io_uring_getevents_arg` EXT_ARG expects, alive for the call.
                unsafe {
                    self.ring.submitter().enter(
                        to_submit,
                        want,
                        getevents | io_uring::EnterFlags::EXT_ARG.bits(),
                        Some(&args),
                    )
                }
            }
        }
    }

    pub(crate) fn has_unflushed(&self) -> bool {
        let inner = lock(&self.inner);
        // SAFETY: the inner mutex is held; SubmissionQueues are only created under it.
        let n = unsafe { self.ring.submission_shared() }.len();
        drop(inner);
        n > 0
    }

    /// Submits every pushed SQE (one `io_uring_enter`, only if there are any).
    pub(crate) fn flush(&self) {
        if self.has_unflushed() {
            if let Err(e) = self.submit_all() {
                tracing::debug!("io_uring submit: {e}");
            }
        }
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

    pub(crate) fn cancel(&self, id: OpId) -> Result<Option<Completion>> {
        let mut inner = lock(&self.inner);
        if inner.ops.get(id).is_none() {
            return Err(Error::NotFound);
        }
        self.push_cancel_locked(&mut inner, id);
        drop(inner);
        let _ = self.submit_all();
        Ok(None)
    }

    /// Waits for completions (see the contract in `sys/mod.rs`). Only the port's
    /// poller passes `poller = true`; any other thread that reaps (to make room, or
    /// instead of sleeping) may consume a wake-up meant for the poller, and then
    /// posts it again so the poller cannot sleep through it.
    pub(crate) fn poll(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
        mode: PollMode,
    ) -> io::Result<()> {
        let waker = mode != PollMode::Other;
        let (n, woken) = self.reap(out);
        if n > 0 || (woken && waker) {
            // Something is there already; still hand pending SQEs over.
            self.flush();
            return self.repost(woken && !waker);
        }
        // The backup asks the kernel for two completions: it then sleeps through
        // every other one, which the poller, back from its handler, takes itself.
        // (The kernel counts completions posted since the wait began, not ones
        // left unreaped, so this halves the backup's wake-ups rather than ending
        // them. The port does not use backups yet.)
        let want = if mode == PollMode::Backup { 2 } else { 1 };
        let res = match timeout {
            Some(t) if t.is_zero() => self.enter(0, None),
            None => self.enter(want, None),
            Some(t) => self.enter(want, Some(t)),
        };
        match res {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let (_, woken2) = self.reap(out);
        self.repost((woken || woken2) && !waker)
    }

    fn repost(&self, consumed_wake: bool) -> io::Result<()> {
        if consumed_wake {
            self.notify();
        }
        Ok(())
    }

    /// Moves every available CQE into `out`. Returns how many completions it added
    /// and whether it consumed a wake-up from `notify`.
    fn reap(&self, out: &mut Vec<Completion>) -> (usize, bool) {
        let before = out.len();
        let mut woken = false;
        let mut inner = lock(&self.inner);
        let mut follow = Vec::new();
        // SAFETY: the inner mutex is held, and CompletionQueues are only created
        // under it, so no other exists.
        let cq = unsafe { self.ring.completion_shared() };
        for cqe in cq {
            let ud = cqe.user_data();
            if ud == WAKE_TAG {
                woken = true;
                continue;
            }
            if ud == CANCEL_TAG || ud == LINK_TIMEOUT_TAG {
                continue;
            }
            let id = OpId(ud & !(LEG_BIT | TIMER_BIT));
            if ud & TIMER_BIT != 0 {
                inner.on_timer(id, cqe.result(), &mut follow);
            } else if let Some(c) = inner.on_cqe(id, ud & LEG_BIT != 0, cqe.result(), &mut follow) {
                out.push(c);
            }
        }
        // Further SQEs of multi-SQE operations (a transfer's next round, a cancel
        // repeated for a tail that started after the first one).
        for chain in &follow {
            self.push_all_locked(chain.as_slice());
        }
        drop(inner);
        if !follow.is_empty() {
            if let Err(e) = self.submit_all() {
                tracing::debug!("io_uring submit: {e}");
            }
        }
        (out.len() - before, woken)
    }

    /// Refuses new work, cancels everything in flight and waits until the kernel
    /// has released it all. Completions reaped here are dropped.
    pub(crate) fn shutdown(&self) {
        lock(&self.inner).closed = true;
        let mut sink = Vec::new();
        let mut woken = false;
        let mut round = 0u32;
        loop {
            // Cancel everything in flight, again every half second: a request
            // that was not yet visible to the kernel's cancel (the tail of a
            // chain whose head was still running) is caught the next time.
            if round % 10 == 0 {
                let mut inner = lock(&self.inner);
                for id in inner.ops.ids() {
                    self.push_cancel_locked(&mut inner, id);
                }
            }
            round += 1;
            sink.clear();
            woken |= self.reap(&mut sink).1;
            if lock(&self.inner).ops.len() == 0 {
                break;
            }
            // (shutdown waits like a poller)
            if let Err(e) = self.enter(1, Some(Duration::from_millis(50))) {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) {
                    tracing::error!("io_uring_enter during shutdown: {e}");
                    break;
                }
            }
        }
        // A poller may still be on its way into the kernel: give back the wake-up
        // this loop swallowed.
        if woken {
            self.notify();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The ring's memory and the records' buffers must outlive every request.
        if lock(&self.inner).ops.len() > 0 {
            self.shutdown();
        }
    }
}

impl Inner {
    /// Takes one CQE of operation `id` (`head`: it carried [`LEG_BIT`]). Returns
    /// the operation's completion once its last CQE is in; SQEs it still needs
    /// go to `follow`, one chain per entry.
    fn on_cqe(
        &mut self,
        id: OpId,
        head: bool,
        res: i32,
        follow: &mut Vec<Vec<squeue::Entry>>,
    ) -> Option<Completion> {
        let closing = self.closed;
        let Some(rec) = self.ops.get_mut(id) else {
            tracing::error!("CQE for unknown operation {:#x}", id.0);
            return None;
        };
        let res = match &mut rec.aux {
            Aux::Transfer(t) => match t.on_cqe(head, res, closing) {
                Step::Wait => {
                    if head && t.is_cancelled() {
                        // The head is done, so the tail may only now have
                        // started: cancel it again.
                        follow.push(vec![opcode::AsyncCancel::new(id.0)
                            .build()
                            .user_data(CANCEL_TAG)]);
                    }
                    return None;
                }
                Step::Next(h, t) => {
                    let mut chain = Vec::with_capacity(2);
                    chain.extend(h.map(|h| h.user_data(id.0 | LEG_BIT)));
                    chain.push(t.user_data(id.0));
                    follow.push(chain);
                    return None;
                }
                Step::Done(res) => res,
            },
            _ if head => {
                tracing::error!("head CQE for single-SQE operation {:#x}", id.0);
                return None;
            }
            _ => res,
        };
        if rec.timer {
            // Its emulated timeout has not fired: remove it.
            follow.push(vec![opcode::TimeoutRemove::new(id.0 | TIMER_BIT)
                .build()
                .user_data(CANCEL_TAG)]);
        }
        self.complete(id, res)
    }

    /// The emulated linked timeout of `id` ended: if it fired (`-ETIME`, not
    /// removed) while the operation is still in flight, cancel the operation.
    fn on_timer(&mut self, id: OpId, res: i32, follow: &mut Vec<Vec<squeue::Entry>>) {
        let Some(rec) = self.ops.get_mut(id) else {
            // The operation ended first (and removed the timer, or the timer
            // fired as it ended): nothing to do.
            return;
        };
        rec.timer = false;
        if res == -libc::ETIME {
            follow.push(cancel_sqes(id, rec));
        }
    }

    /// Removes the record of `id` and builds its completion.
    fn complete(&mut self, id: OpId, res: i32) -> Option<Completion> {
        let rec = self.ops.remove(id)?;
        // The CQE is in hand: the kernel is done with everything the record
        // holds, so it may be read (a receive's header, a statx result).
        let mut out = rec.body.into_output();
        if let Aux::Msg(m) = &rec.aux {
            if rec.kind == OpKind::RecvFrom && res >= 0 {
                out.addr = m.source();
            }
        }
        if let Aux::Transfer(t) = rec.aux {
            if let Some(p) = t.into_pipe() {
                if self.pipes.len() < PIPE_POOL {
                    self.pipes.push(p);
                }
            }
        }
        Some(Completion::from_raw(
            id,
            rec.kind,
            rec.key,
            rec.user_data,
            res,
            out,
        ))
    }
}

/// The SQEs that cancel operation `id`: every SQE of it that may still run
/// (a transfer's head and tail; marking it cancelled, so it starts no further
/// round).
fn cancel_sqes(id: OpId, rec: &mut Record) -> Vec<squeue::Entry> {
    let mut sqes = Vec::with_capacity(2);
    if let Aux::Transfer(t) = &mut rec.aux {
        t.cancel();
        sqes.push(
            opcode::AsyncCancel::new(id.0 | LEG_BIT)
                .build()
                .user_data(CANCEL_TAG),
        );
    }
    sqes.push(opcode::AsyncCancel::new(id.0).build().user_data(CANCEL_TAG));
    sqes
}

/// Fails if the kernel lacks an opcode ringport needs (then `auto` falls back);
/// otherwise says which optional ones it has.
///
/// `RECVMSG`/`SENDMSG` (Linux 5.3) are required rather than probed per
/// operation: every kernel with `IORING_FEAT_EXT_ARG` (5.11), which the driver
/// already requires, has them, so the check can only fail on a kernel built or
/// filtered to lack them — and then epoll serves datagrams too.
fn check_ops(ring: &IoUring) -> io::Result<Support> {
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let required = [
        ("NOP", opcode::Nop::CODE),
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("FSYNC", opcode::Fsync::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("RECVMSG", opcode::RecvMsg::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("ACCEPT", opcode::Accept::CODE),
        ("CONNECT", opcode::Connect::CODE),
        ("CLOSE", opcode::Close::CODE),
        ("TIMEOUT", opcode::Timeout::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ];
    for (name, code) in required {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks IORING_OP_{name}"),
            ));
        }
    }
    Ok(Support {
        splice: probe.is_supported(opcode::Splice::CODE),
        link_timeout: probe.is_supported(opcode::LinkTimeout::CODE),
    })
}

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

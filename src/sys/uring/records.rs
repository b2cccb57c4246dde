//! The records of operations in flight, and what each CQE does to them:
//! ends an operation (building its completion), moves a multi-SQE operation on
//! (a transfer's next round), or fires an emulated timer.

use io_uring::{opcode, squeue, types};

use crate::completion::{Completion, OpId};
use crate::op::{OpBody, OpKind};
use crate::sched::Priority;

use super::bufs::{plain_send, ZcStep};
use super::lanes::{Lane, Lanes};
use super::ops::Aux;
use super::transfer::{Pipe, Step, PIPE_POOL};
use super::{CANCEL_TAG, LEG_BIT, TIMER_BIT};
use crate::sys::table::OpTable;

/// One operation in flight.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) kind: OpKind,
    pub(super) key: u64,
    pub(super) user_data: u64,
    /// Its completion's lane (`Op::priority`).
    pub(super) prio: Priority,
    /// The operation: it owns the buffers its SQE points into.
    pub(super) body: OpBody,
    pub(super) aux: Aux,
    /// The `timespec` of its linked timeout (`Op::timeout_after`): of its
    /// `LINK_TIMEOUT` SQE, or of the `TIMEOUT` that emulates one.
    pub(super) link_ts: Option<Box<types::Timespec>>,
    /// An emulated linked timeout ([`TIMER_BIT`]) is pending.
    pub(super) timer: bool,
    /// Its socket lane (`lanes.rs`), if it takes one.
    pub(super) lane: Option<Lane>,
    /// Parked behind its lane's busy operation: its SQEs, built, not pushed.
    pub(super) parked: Option<Vec<squeue::Entry>>,
}

/// The driver's state under its mutex (see the module docs of `uring`).
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) ops: OpTable<Record>,
    pub(super) closed: bool,
    /// Empty pipes for `send_file`, at most [`PIPE_POOL`].
    pub(super) pipes: Vec<Pipe>,
    /// Operations on the worker threads (`fallback.rs`).
    pub(super) worker_ops: usize,
    /// The `POLL_ADD` on the workers' eventfd is in the ring.
    pub(super) mailbox_armed: bool,
    /// Same-direction socket operations, one in the kernel at a time.
    pub(super) lanes: Lanes,
    /// Parked operations whose lane just passed to them: to push
    /// (`Core::resume_locked`).
    pub(super) resume: Vec<OpId>,
    /// Completions the driver built outside a reap (parked operations ended
    /// after the port closed): the next reap hands them out.
    pub(super) done: Vec<Completion>,
    /// The `timespec`s of emulated linked timeouts whose operation ended
    /// before the timer's CQE came: the kernel reads one when it takes the
    /// TIMEOUT SQE, which may still wait in the SQ (a batching thread, the
    /// submitter thread), so it lives until that CQE (`on_timer`).
    pub(super) timer_ts: std::collections::HashMap<OpId, Box<types::Timespec>>,
    /// Live emulated multishot operations per descriptor (`multi.rs`): a
    /// close or disassociate of one looks for them, and only then.
    pub(super) emulated_multi: std::collections::HashMap<std::os::fd::RawFd, u32>,
}

impl Inner {
    /// Takes one CQE of operation `id` (`head`: it carried [`LEG_BIT`]). Returns
    /// the operation's completion once its last CQE is in; SQEs it still needs
    /// go to `follow`, one chain per entry.
    pub(super) fn on_cqe(
        &mut self,
        id: OpId,
        head: bool,
        res: i32,
        flags: u32,
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
            Aux::ZeroCopy(z) => match z.on_cqe(res, flags, closing) {
                ZcStep::Wait => return None,
                ZcStep::Done(res) => res,
                // Its emulated timer fired already (the cancel it sent found
                // the zero-copy send ended): the deadline has passed, so it
                // ends cancelled rather than start again with no timer.
                ZcStep::Resend if rec.link_ts.is_some() && !rec.timer => -libc::ECANCELED,
                ZcStep::Resend => {
                    let sqe = plain_send(&rec.body).expect("a zero-copy record holds a send_zc");
                    follow.push(vec![sqe.user_data(id.0)]);
                    return None;
                }
            },
            _ if head => {
                tracing::error!("head CQE for single-SQE operation {:#x}", id.0);
                return None;
            }
            _ => res,
        };
        if rec.timer {
            // Its emulated timeout has not fired: remove it.
            follow.push(vec![remove_timer(id)]);
        }
        self.complete(id, res)
    }

    /// A worker thread finished operation `id`.
    pub(super) fn worker_done(
        &mut self,
        id: OpId,
        res: i32,
        body: OpBody,
        follow: &mut Vec<Vec<squeue::Entry>>,
    ) -> Option<Completion> {
        self.worker_ops -= 1;
        let rec = self.ops.get_mut(id)?;
        rec.body = body;
        if rec.timer {
            follow.push(vec![remove_timer(id)]);
        }
        self.complete(id, res)
    }

    /// The emulated linked timeout of `id` ended. Returns whether it fired
    /// (`-ETIME`, not removed) while the operation is still in flight: then
    /// the caller cancels the operation.
    pub(super) fn on_timer(&mut self, id: OpId, res: i32) -> bool {
        let Some(rec) = self.ops.get_mut(id) else {
            // The operation ended first (and removed the timer, or the timer
            // fired as it ended): its timespec may go now.
            self.timer_ts.remove(&id);
            return false;
        };
        rec.timer = false;
        res == -libc::ETIME
    }

    /// Removes the record of `id`. Its emulated linked timeout's
    /// `timespec`, which a `TIMEOUT` SQE points at, is kept until that
    /// timer's CQE (`on_timer`) or the driver goes: the SQE may still wait
    /// in the SQ (pushed by a batching thread, not yet entered), and the
    /// kernel reads it when it takes the SQE.
    pub(super) fn remove_record(&mut self, id: OpId) -> Option<Record> {
        let mut rec = self.ops.remove(id)?;
        if let Some(fd) = super::multi::emulated_fd(&rec.body, &rec.aux) {
            self.uncount_emulated(fd);
        }
        if rec.timer {
            // Its timer's CQE is still to come (removed or fired).
            if let Some(ts) = rec.link_ts.take() {
                self.timer_ts.insert(id, ts);
            }
        }
        Some(rec)
    }

    /// Removes the record of `id` and builds its completion.
    pub(super) fn complete(&mut self, id: OpId, res: i32) -> Option<Completion> {
        let rec = self.remove_record(id)?;
        if let Some(lane) = rec.lane {
            // Its lane passes to the next one parked behind it, if it was
            // the busy one (a parked one ending releases nothing).
            if let Some(next) = self.lanes.leave(lane, id) {
                self.resume.push(next);
            }
        }
        // The kernel's poll reports more than `poll(2)` does for the same
        // ask (`POLLRDHUP` after the peer closed): the bits epoll gives.
        let res = match rec.kind {
            OpKind::Writable if res > 0 => {
                res & i32::from(libc::POLLOUT | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL)
            }
            _ => res,
        };
        // The CQE is in hand: the kernel is done with everything the record
        // holds, so it may be read (a receive's header, a statx result).
        if matches!(rec.aux, Aux::None) {
            return Some(Completion::of_body(
                id,
                rec.kind,
                rec.key,
                rec.user_data,
                res,
                rec.body,
                rec.prio,
            ));
        }
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
        Some(
            Completion::from_raw(id, rec.kind, rec.key, rec.user_data, res, out)
                .with_priority(rec.prio),
        )
    }
}

impl Inner {
    /// Inserts a record, counting it if it is an emulated multishot one.
    pub(super) fn insert(&mut self, rec: Record) -> OpId {
        if let Some(fd) = super::multi::emulated_fd(&rec.body, &rec.aux) {
            *self.emulated_multi.entry(fd).or_insert(0) += 1;
        }
        self.ops.insert(rec)
    }

    fn uncount_emulated(&mut self, fd: std::os::fd::RawFd) {
        if let Some(n) = self.emulated_multi.get_mut(&fd) {
            *n -= 1;
            if *n == 0 {
                self.emulated_multi.remove(&fd);
            }
        }
    }

    /// Ends a parked operation `id` with `res` (it never reached the kernel);
    /// `None` if it is not parked. Its emulated timer, if still running,
    /// goes in `follow` to be removed.
    pub(super) fn end_parked(
        &mut self,
        id: OpId,
        res: i32,
        follow: &mut Vec<squeue::Entry>,
    ) -> Option<Completion> {
        let rec = self.ops.get_mut(id)?;
        rec.parked.take()?;
        let lane = rec.lane.expect("a parked operation has a lane");
        if rec.timer {
            follow.push(remove_timer(id));
        }
        self.lanes.unpark(lane, id);
        super::multi::end_unpushed(&rec.body, &mut rec.aux);
        self.complete(id, res)
    }
}

/// The SQE that removes the emulated linked timeout of operation `id`.
pub(super) fn remove_timer(id: OpId) -> squeue::Entry {
    opcode::TimeoutRemove::new(id.0 | TIMER_BIT)
        .build()
        .user_data(CANCEL_TAG)
}

/// The SQEs that cancel operation `id`: every SQE of it that may still run
/// (a transfer's head and tail; marking it cancelled, so it starts no further
/// round).
pub(super) fn cancel_sqes(id: OpId, rec: &mut Record) -> Vec<squeue::Entry> {
    let mut sqes = Vec::with_capacity(2);
    if let Aux::Multi(m) = &mut rec.aux {
        m.cancel();
    }
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

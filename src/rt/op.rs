//! One port operation as a future: submitted on first poll, completed by whichever
//! worker dequeues its completion, cancelled when dropped.
//!
//! ## Ownership (what keeps what alive)
//!
//! * The runtime's op registry holds each operation's [`OpSlot`] from submit
//!   until its future takes the completion (or, for a dropped future, until the
//!   completion is handed to the orphan policy); the completion's `user_data` is
//!   the slot's key, so a completion the port drops at close frees nothing twice
//!   and leaks nothing (the registry is drained at shutdown). Keeping the state in
//!   the registry's slot, under the registry's shard lock, costs no allocation and
//!   no lock of its own per operation.
//! * The kernel owns the operation's buffer (inside the port's `Op`) until the
//!   completion; the completion hands it back.
//! * `OpSlot::hold` keeps the handle's descriptor open (an `Arc` of its core)
//!   until the completion: a dropped future must not let the descriptor be closed
//!   and its number reused while the kernel may still act on it.
//!
//! A future dropped while its operation is in flight asks the port to cancel it and
//! leaves an *orphan policy* in the slot: what to do with the completion when it
//! comes (by default drop it, which frees the buffer and closes an accepted
//! socket; a stream's read keeps received bytes for the next read instead).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::{Shared, IO_KEY};
use crate::completion::{Completion, OpId};
use crate::error::Error;
use crate::op::Op;

/// What a dropped future's completion is handed to.
pub(crate) type Orphan = Box<dyn FnOnce(Completion) + Send>;

/// Something kept alive until an operation completes (a handle's core).
pub(crate) type Hold = Arc<dyn Any + Send + Sync>;

/// The meeting point of a submitted operation and its future (a registry slot).
pub(crate) struct OpSlot {
    done: Option<Completion>,
    waker: Option<Waker>,
    orphan: Option<Orphan>,
    hold: Option<Hold>,
}

impl OpSlot {
    /// At shutdown, after the registry was drained: wakes the future waiting
    /// on this slot (a `block_on` thread parked on it would otherwise sleep
    /// forever); its next poll finds the slot gone and reports the port
    /// closed. What the slot held (an orphan policy, a descriptor hold) drops
    /// here, outside the registry's lock.
    pub(crate) fn wake_closed(mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl fmt::Debug for OpSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpSlot")
            .field("done", &self.done.is_some())
            .field("orphan", &self.orphan.is_some())
            .finish()
    }
}

enum Stage {
    New(Op, Option<Hold>),
    InFlight {
        key: u64,
        id: OpId,
    },
    /// `start` could not submit it; `poll_op` reports why.
    Failed(Option<io::Error>),
    /// `start` submitted it and it finished inside the submit (epoll):
    /// `poll_op` returns it.
    Finished(Completion),
    Done,
}

/// A port operation as a future. Output: its [`Completion`], or the error that
/// kept it from being submitted.
pub(crate) struct OpFuture {
    shared: Arc<Shared>,
    stage: Stage,
    /// This future's last registration to wait for room (`wait_for_room`).
    room: Option<(u64, Waker)>,
}

impl fmt::Debug for OpFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match &self.stage {
            Stage::New(op, _) => format!("new {:?}", op.kind()),
            Stage::InFlight { id, .. } => format!("in flight {id:?}"),
            Stage::Failed(_) => "failed".into(),
            Stage::Finished(_) => "finished".into(),
            Stage::Done => "done".into(),
        };
        f.debug_struct("OpFuture").field("stage", &stage).finish()
    }
}

impl OpFuture {
    pub(crate) fn new(shared: Arc<Shared>, op: Op, hold: Option<Hold>) -> Self {
        OpFuture {
            shared,
            // A `with_priority` around the caller's future lanes its ops.
            stage: Stage::New(op.key(IO_KEY).priority(super::prio::current()), hold),
            room: None,
        }
    }

    /// True while the operation is submitted and its completion not yet taken.
    pub(crate) fn in_flight(&self) -> bool {
        matches!(self.stage, Stage::InFlight { .. } | Stage::Finished(_))
    }

    /// Polls: submits on the first call (waiting for room if `max_in_flight`
    /// operations are outstanding), then waits for the completion.
    pub(crate) fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Completion>> {
        match &mut self.stage {
            Stage::New(..) => {
                let Stage::New(op, hold) = std::mem::replace(&mut self.stage, Stage::Done) else {
                    unreachable!()
                };
                match self.shared.submit(op, hold, cx, true, &mut self.room) {
                    Submitted::Yes(key, id) => {
                        // The slot holds this waker: the completion wakes it.
                        self.stage = Stage::InFlight { key, id };
                        Poll::Pending
                    }
                    Submitted::Wait(op, hold) => {
                        self.stage = Stage::New(op, hold);
                        Poll::Pending
                    }
                    // Finished inside the submit (epoll): no packet comes.
                    Submitted::Done(c) => Poll::Ready(Ok(c)),
                    Submitted::Failed(e) => Poll::Ready(Err(e)),
                }
            }
            Stage::Failed(e) => {
                let e = e
                    .take()
                    .unwrap_or_else(|| io::Error::other("operation failed"));
                self.stage = Stage::Done;
                Poll::Ready(Err(e))
            }
            Stage::Finished(_) => {
                let Stage::Finished(c) = std::mem::replace(&mut self.stage, Stage::Done) else {
                    unreachable!()
                };
                Poll::Ready(Ok(c))
            }
            Stage::InFlight { key, .. } => {
                let r = std::task::ready!(self.shared.poll_done(*key, cx));
                self.stage = Stage::Done;
                Poll::Ready(r)
            }
            Stage::Done => {
                Poll::Ready(Err(io::Error::other("operation polled after it completed")))
            }
        }
    }

    /// Submits the operation if it has not been yet, without waiting for it (its
    /// completion is kept for the next `poll_op`).
    pub(crate) fn start(&mut self, cx: &mut Context<'_>) {
        if let Stage::New(..) = self.stage {
            let Stage::New(op, hold) = std::mem::replace(&mut self.stage, Stage::Done) else {
                unreachable!()
            };
            self.stage = match self.shared.submit(op, hold, cx, false, &mut self.room) {
                Submitted::Yes(key, id) => Stage::InFlight { key, id },
                Submitted::Wait(op, hold) => Stage::New(op, hold),
                Submitted::Done(c) => Stage::Finished(c),
                Submitted::Failed(e) => Stage::Failed(Some(e)),
            };
        }
    }

    /// Asks the port to cancel the operation but keeps waiting for its completion
    /// (which says whether the cancel won).
    pub(crate) fn cancel(&mut self) {
        if let Stage::InFlight { id, .. } = &self.stage {
            let _ = self.shared.port.cancel(*id);
        }
    }

    /// Stops waiting: an operation in flight is cancelled and its completion goes
    /// to `orphan` when it comes (at once, if it already has). An operation never
    /// submitted is simply dropped.
    // (Not a match guard: `orphan` moves into the call.)
    #[allow(clippy::collapsible_match)]
    pub(crate) fn detach(&mut self, orphan: Orphan) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::InFlight { key, id } => {
                if self.shared.orphan(key, orphan) {
                    // NotFound: it completed meanwhile (the orphan policy gets it);
                    // Closed: the port is shutting down and cancels everything.
                    let _ = self.shared.port.cancel(id);
                }
            }
            // It finished inside `start`: the policy gets its completion now.
            Stage::Finished(c) => orphan(c),
            _ => {}
        }
    }
}

impl Future for OpFuture {
    type Output = io::Result<Completion>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_op(cx)
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        self.detach(Box::new(drop));
    }
}

thread_local! {
    /// Sends this thread has had finish inside their submit in a row
    /// (`inline_allowed`).
    static INLINE_RUN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Inline completions in a row after which one send goes through the port,
/// so a task whose sends always finish at once still yields.
const INLINE_RUN_MAX: u32 = 16;

/// Whether `op` may be taken as `Done` if it finishes inside its submit:
/// sends only. A receive that finds data at once is the stream layer's to try
/// (`net/inline.rs`, with its own yield budget); taking it here too would
/// let a task that always finds data never yield. And after `INLINE_RUN_MAX`
/// in a row, one send goes through the port: its task then waits, and others
/// run (tokio's cooperative budget, for sends).
fn inline_allowed(op: &Op) -> bool {
    use crate::op::OpKind;
    if !matches!(
        op.kind(),
        OpKind::Send | OpKind::SendTo | OpKind::SendZc | OpKind::SendFile
    ) {
        return false;
    }
    INLINE_RUN.with(|r| {
        if r.get() >= INLINE_RUN_MAX {
            r.set(0);
            false
        } else {
            true
        }
    })
}

/// Takes a turn of the inline budget (`INLINE_RUN_MAX` in a row, then one
/// operation goes through the port): the stream layer's own inline sends
/// (`net/stream.rs`) and the listeners' inline accepts
/// (`net/core.rs`) share it with `inline_allowed`.
///
/// A refused turn leaves the budget spent: the caller's operation then goes
/// through the port, where `inline_allowed` refuses it too (so on epoll it is
/// not finished inside its submit after all) and its submit starts a new run.
pub(crate) fn inline_turn() -> bool {
    INLINE_RUN.with(|r| {
        if r.get() >= INLINE_RUN_MAX {
            false
        } else {
            r.set(r.get() + 1);
            true
        }
    })
}

/// What `Shared::submit` did.
pub(crate) enum Submitted {
    Yes(u64, OpId),
    /// No room; the waker is registered for when an operation completes.
    Wait(Op, Option<Hold>),
    /// It finished during the submit (`CompletionPort::submit_inline`'s
    /// rule): here is its completion.
    Done(Completion),
    Failed(io::Error),
}

impl Shared {
    /// Submits `op` under a fresh registry key.
    ///
    /// `wait`: the caller will wait for the completion (`poll_op`), so the
    /// waker goes in with the slot — the completion may be delivered (by
    /// another worker) before `submit` returns, and the first poll after
    /// submitting needs no second visit to the registry. `start` (submit now,
    /// wait later) leaves it out: its task must not be woken by a completion
    /// it is not waiting for yet.
    ///
    /// A send that finishes inside the submit (epoll: a send with room) comes
    /// back at once, as `Done` (`inline_allowed`): no packet is queued for it,
    /// so no worker has to deliver it and no task is woken and polled again
    /// for it.
    pub(crate) fn submit(
        &self,
        op: Op,
        hold: Option<Hold>,
        cx: &mut Context<'_>,
        wait: bool,
        room: &mut Option<(u64, Waker)>,
    ) -> Submitted {
        let mut op = op;
        let mut hold = hold;
        for attempt in 0..2 {
            let key = self.ops.insert(OpSlot {
                done: None,
                waker: wait.then(|| cx.waker().clone()),
                orphan: None,
                hold: hold.take(),
            });
            let mut done = None;
            let inline = inline_allowed(&op);
            match self
                .port
                .try_submit_keep_inline(op, key, inline.then_some(&mut done))
            {
                Ok(id) => {
                    if let Some(c) = done {
                        INLINE_RUN.with(|r| r.set(r.get() + 1));
                        // Nothing will complete this slot: free it (its waker
                        // and hold drop here, outside the registry's lock).
                        drop(self.ops.remove(key));
                        return Submitted::Done(c);
                    }
                    INLINE_RUN.with(|r| r.set(0));
                    return Submitted::Yes(key, id);
                }
                Err((Error::QueueFull, Some(back))) => {
                    hold = self.ops.remove(key).and_then(|s| s.hold);
                    op = back;
                    if attempt == 0 {
                        // Register, then try once more: a completion between the
                        // failed attempt and the registration would otherwise be
                        // a lost wake-up.
                        self.wait_for_room(cx.waker(), room);
                    }
                }
                Err((e, back)) => {
                    self.ops.remove(key);
                    return match back {
                        // Refused, buffers and all: they go back to the
                        // caller with the error (owned buffers come back
                        // on every path).
                        Some(op) => Submitted::Done(Completion::refused(op, 0, e.into())),
                        None => Submitted::Failed(e.into()),
                    };
                }
            }
        }
        Submitted::Wait(op, hold)
    }

    /// Takes the completion if it has come (freeing the slot); otherwise
    /// remembers the waker.
    fn poll_done(&self, key: u64, cx: &mut Context<'_>) -> Poll<io::Result<Completion>> {
        // A waker leaving the slot — the slot removed, or the waker replaced —
        // is dropped here, after the shard lock: it may be the last reference
        // to a task, whose drop can reach this registry again (`hold` went in
        // `complete_op`).
        let r = self.ops.update(key, |s| match s.done.take() {
            Some(c) => ((Some(c), s.waker.take()), true),
            None => match &s.waker {
                Some(w) if w.will_wake(cx.waker()) => ((None, None), false),
                _ => ((None, s.waker.replace(cx.waker().clone())), false),
            },
        });
        match r {
            Some((Some(c), _waker)) => Poll::Ready(Ok(c)),
            Some((None, _)) => Poll::Pending,
            // Only after shutdown drained the registry.
            None => Poll::Ready(Err(Error::Closed.into())),
        }
    }

    /// Gives the completion to `orphan` (now, if it has already come). Returns
    /// true if the operation is still in flight.
    fn orphan(&self, key: u64, orphan: Orphan) -> bool {
        let mut orphan = Some(orphan);
        let r = self.ops.update(key, |s| {
            let waker = s.waker.take();
            match s.done.take() {
                Some(c) => ((Some(c), waker), true),
                None => {
                    s.orphan = orphan.take();
                    ((None, waker), false)
                }
            }
        });
        match r {
            Some((Some(c), _waker)) => {
                if let Some(o) = orphan {
                    o(c);
                }
                false
            }
            Some((None, _waker)) => true,
            None => false,
        }
    }

    /// Delivers an operation's completion (called by the worker that dequeued it):
    /// to the waiting future, or to the orphan policy of a dropped one. The
    /// descriptor hold is released here, outside the registry lock.
    pub(crate) fn complete_op(&self, c: Completion) {
        let mut c = Some(c);
        let r = self.ops.update(c.as_ref().map_or(0, |c| c.user_data), |s| {
            let hold = s.hold.take();
            match s.orphan.take() {
                Some(o) => ((Some(o), None, hold), true),
                None => {
                    s.done = c.take();
                    ((None, s.waker.take(), hold), false)
                }
            }
        });
        // On removal (an orphan's) nothing is left in the slot to drop: the
        // orphan and the hold are taken, the waker was taken by `orphan`.
        if let Some((orphan, waker, hold)) = r {
            if let (Some(o), Some(c)) = (orphan, c.take()) {
                o(c);
            }
            if let Some(w) = waker {
                w.wake();
            }
            drop(hold);
        }
        self.room_freed();
    }
}

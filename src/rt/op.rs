//! One port operation as a future: submitted on first poll, completed by whichever
//! worker dequeues its completion, cancelled when dropped.
//!
//! ## Ownership (what keeps what alive)
//!
//! * The runtime's op registry owns an `Arc<OpState>` from submit until the
//!   completion is delivered; the completion's `user_data` is the registry key
//!   (so a completion the port drops at close frees nothing twice and leaks
//!   nothing: the registry is drained at shutdown).
//! * The kernel owns the operation's buffer (inside the port's `Op`) until the
//!   completion; the completion hands it back.
//! * `OpState::hold` keeps the handle's descriptor open (an `Arc` of its core)
//!   until the completion: a dropped future must not let the descriptor be closed
//!   and its number reused while the kernel may still act on it.
//!
//! A future dropped while its operation is in flight asks the port to cancel it and
//! leaves an *orphan policy* in the state: what to do with the completion when it
//! comes (by default drop it, which frees the buffer and closes an accepted
//! socket; a stream's read stashes received bytes for the next read instead).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::{Shared, IO_KEY};
use crate::completion::{Completion, OpId};
use crate::error::Error;
use crate::op::Op;
use crate::sync::lock;

/// What a dropped future's completion is handed to.
pub(crate) type Orphan = Box<dyn FnOnce(Completion) + Send>;

/// Something kept alive until an operation completes (a handle's core).
pub(crate) type Hold = Arc<dyn Any + Send + Sync>;

/// The meeting point of a submitted operation and its future.
pub(crate) struct OpState {
    inner: Mutex<OpInner>,
}

struct OpInner {
    done: Option<Completion>,
    waker: Option<Waker>,
    orphan: Option<Orphan>,
    hold: Option<Hold>,
}

impl fmt::Debug for OpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = lock(&self.inner);
        f.debug_struct("OpState")
            .field("done", &g.done.is_some())
            .field("orphan", &g.orphan.is_some())
            .finish()
    }
}

impl OpState {
    fn new(hold: Option<Hold>) -> Self {
        OpState {
            inner: Mutex::new(OpInner {
                done: None,
                waker: None,
                orphan: None,
                hold,
            }),
        }
    }

    /// Delivers the completion: to the waiting future, or to the orphan policy.
    pub(crate) fn complete(&self, c: Completion) {
        let (orphan, waker, hold, c) = {
            let mut g = lock(&self.inner);
            let hold = g.hold.take();
            match g.orphan.take() {
                Some(o) => (Some(o), None, hold, Some(c)),
                None => {
                    g.done = Some(c);
                    (None, g.waker.take(), hold, None)
                }
            }
        };
        if let (Some(o), Some(c)) = (orphan, c) {
            o(c);
        }
        if let Some(w) = waker {
            w.wake();
        }
        drop(hold);
    }

    /// Takes the completion if it has come; otherwise remembers the waker.
    pub(crate) fn poll_done(&self, cx: &mut Context<'_>) -> Poll<Completion> {
        let mut g = lock(&self.inner);
        if let Some(c) = g.done.take() {
            return Poll::Ready(c);
        }
        match &g.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => g.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Gives the completion to `orphan` (now, if it has already come). Returns true
    /// if it was still in flight.
    fn orphan(&self, orphan: Orphan) -> bool {
        let c = {
            let mut g = lock(&self.inner);
            g.waker = None;
            match g.done.take() {
                Some(c) => Some(c),
                None => {
                    g.orphan = Some(orphan);
                    return true;
                }
            }
        };
        if let Some(c) = c {
            orphan(c);
        }
        false
    }
}

enum Stage {
    New(Op, Option<Hold>),
    InFlight {
        state: Arc<OpState>,
        id: OpId,
    },
    /// `start` could not submit it; `poll_op` reports why.
    Failed(Option<io::Error>),
    Done,
}

/// A port operation as a future. Output: its [`Completion`], or the error that
/// kept it from being submitted.
pub(crate) struct OpFuture {
    shared: Arc<Shared>,
    stage: Stage,
}

impl fmt::Debug for OpFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match &self.stage {
            Stage::New(op, _) => format!("new {:?}", op.kind()),
            Stage::InFlight { id, .. } => format!("in flight {id:?}"),
            Stage::Failed(_) => "failed".into(),
            Stage::Done => "done".into(),
        };
        f.debug_struct("OpFuture").field("stage", &stage).finish()
    }
}

impl OpFuture {
    pub(crate) fn new(shared: Arc<Shared>, op: Op, hold: Option<Hold>) -> Self {
        OpFuture {
            shared,
            stage: Stage::New(op.key(IO_KEY), hold),
        }
    }

    /// True while the operation is submitted and its completion not yet taken.
    pub(crate) fn in_flight(&self) -> bool {
        matches!(self.stage, Stage::InFlight { .. })
    }

    /// Polls: submits on the first call (waiting for room if `max_in_flight`
    /// operations are outstanding), then waits for the completion.
    pub(crate) fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Completion>> {
        loop {
            match &mut self.stage {
                Stage::New(..) => {
                    let Stage::New(op, hold) = std::mem::replace(&mut self.stage, Stage::Done)
                    else {
                        unreachable!()
                    };
                    match self.shared.submit(op, hold, cx) {
                        Submitted::Yes(state, id) => self.stage = Stage::InFlight { state, id },
                        Submitted::Wait(op, hold) => {
                            self.stage = Stage::New(op, hold);
                            return Poll::Pending;
                        }
                        Submitted::Failed(e) => return Poll::Ready(Err(e)),
                    }
                }
                Stage::Failed(e) => {
                    let e = e
                        .take()
                        .unwrap_or_else(|| io::Error::other("operation failed"));
                    self.stage = Stage::Done;
                    return Poll::Ready(Err(e));
                }
                Stage::InFlight { state, .. } => {
                    let c = std::task::ready!(state.poll_done(cx));
                    self.stage = Stage::Done;
                    return Poll::Ready(Ok(c));
                }
                Stage::Done => {
                    return Poll::Ready(Err(io::Error::other(
                        "operation polled after it completed",
                    )))
                }
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
            self.stage = match self.shared.submit(op, hold, cx) {
                Submitted::Yes(state, id) => Stage::InFlight { state, id },
                Submitted::Wait(op, hold) => Stage::New(op, hold),
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

    /// Stops waiting without cancelling: the operation runs to its end and its
    /// completion is dropped.
    pub(crate) fn forget(&mut self) {
        if let Stage::InFlight { state, .. } = std::mem::replace(&mut self.stage, Stage::Done) {
            state.orphan(Box::new(drop));
        }
    }

    /// Stops waiting: an operation in flight is cancelled and its completion goes
    /// to `orphan` when it comes (at once, if it already has). An operation never
    /// submitted is simply dropped.
    pub(crate) fn detach(&mut self, orphan: Orphan) {
        if let Stage::InFlight { state, id } = std::mem::replace(&mut self.stage, Stage::Done) {
            if state.orphan(orphan) {
                // NotFound: it completed meanwhile (the orphan policy gets it);
                // Closed: the port is shutting down and cancels everything.
                let _ = self.shared.port.cancel(id);
            }
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

/// What `Shared::submit` did.
pub(crate) enum Submitted {
    Yes(Arc<OpState>, OpId),
    /// No room; the waker is registered for when an operation completes.
    Wait(Op, Option<Hold>),
    Failed(io::Error),
}

impl Shared {
    /// Submits `op` under a fresh registry key.
    pub(crate) fn submit(&self, op: Op, hold: Option<Hold>, cx: &mut Context<'_>) -> Submitted {
        let mut op = op;
        let mut hold = hold;
        for attempt in 0..2 {
            let state = Arc::new(OpState::new(hold.take()));
            let key = self.ops.insert(state.clone());
            match self.port.try_submit_keep(op, key) {
                Ok(id) => return Submitted::Yes(state, id),
                Err((Error::QueueFull, Some(back))) => {
                    self.ops.remove(key);
                    hold = lock(&state.inner).hold.take();
                    op = back;
                    if attempt == 0 {
                        // Register, then try once more: a completion between the
                        // failed attempt and the registration would otherwise be
                        // a lost wake-up.
                        self.wait_for_room(cx.waker());
                    }
                }
                Err((e, _)) => {
                    self.ops.remove(key);
                    return Submitted::Failed(e.into());
                }
            }
        }
        Submitted::Wait(op, hold)
    }

    /// Delivers an operation's completion (called by the worker that dequeued it).
    pub(crate) fn complete_op(&self, c: Completion) {
        if let Some(state) = self.ops.remove(c.user_data) {
            state.complete(c);
        }
        self.room_freed();
    }
}

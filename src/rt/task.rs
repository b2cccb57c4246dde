//! Tasks: a spawned future, its run-state machine, its waker, and its
//! [`JoinHandle`].
//!
//! A task is scheduled by becoming a completion packet: waking an idle task posts
//! `(TASK_KEY, its registry key)` to the runtime's port, and whichever pool worker
//! dequeues that packet runs it — so tasks obey the port's IOCP rules (at most N
//! running, FIFO packets, LIFO threads, `blocking` hints). A task woken by a
//! worker while that worker handles a completion skips the queue: it goes to the
//! worker's "next" slot and runs as soon as the handler returns (see `mod.rs`).
//!
//! The run-state machine and its invariant are in `state.rs`.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use super::state::RunState;
use super::Shared;
use crate::sync::lock;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One spawned future.
pub(crate) struct Task {
    state: RunState,
    /// The future; `None` once finished or aborted. Only the thread that moved the
    /// task to `RUNNING` locks it (and shutdown, after every worker stopped), so
    /// the lock is never contended.
    future: Mutex<Option<BoxFuture>>,
    /// The task's key in the runtime's task registry (set right after insert,
    /// before the first schedule).
    key: AtomicU64,
    aborted: AtomicBool,
    /// Reports a panic or an abort to the join state (the wrapper future that
    /// reports the output is gone by then).
    fail: Box<dyn Fn(JoinError) + Send + Sync>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("state", &self.state)
            .field("key", &self.key.load(Ordering::Relaxed))
            .finish()
    }
}

impl Task {
    /// Creates a task (in `SCHEDULED`: the caller must schedule it once) running
    /// `fut`, whose output goes to the returned join state.
    pub(crate) fn new<F>(shared: Arc<Shared>, fut: F) -> (Arc<Task>, Arc<JoinState<F::Output>>)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let join = Arc::new(JoinState::new());
        let j = join.clone();
        let wrapped: BoxFuture = Box::pin(async move {
            let out = fut.await;
            j.finish(Ok(out));
        });
        let j = join.clone();
        let task = Arc::new(Task {
            state: RunState::new_scheduled(),
            future: Mutex::new(Some(wrapped)),
            key: AtomicU64::new(0),
            aborted: AtomicBool::new(false),
            fail: Box::new(move |e| j.finish(Err(e))),
            shared,
        });
        (task, join)
    }

    pub(crate) fn set_key(&self, key: u64) {
        self.key.store(key, Ordering::Release);
    }

    pub(crate) fn key(&self) -> u64 {
        self.key.load(Ordering::Acquire)
    }

    /// Asks the task to stop: it is dropped the next time it would run.
    pub(crate) fn abort(self: &Arc<Self>) {
        self.aborted.store(true, Ordering::Release);
        self.wake_by_ref();
    }

    /// Runs the task once. The caller holds its schedule (state `SCHEDULED`).
    /// Returns true if the task finished.
    pub(crate) fn run(self: Arc<Self>) -> bool {
        let fail = &self.fail;
        self.state.begin();
        let mut slot = lock(&self.future);
        let done = if self.aborted.load(Ordering::Acquire) {
            // A future whose drop panics must still end the task (and its
            // join), and must not unwind through the worker.
            let fut = slot.take();
            let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
            fail(JoinError::Cancelled);
            true
        } else if let Some(fut) = slot.as_mut() {
            let waker = Waker::from(self.clone());
            let mut cx = Context::from_waker(&waker);
            match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
                Ok(Poll::Ready(())) => {
                    slot.take();
                    true
                }
                Ok(Poll::Pending) => false,
                Err(payload) => {
                    // Drop what is left of the future; a panic in its drop is
                    // caught too, so the worker keeps serving.
                    let fut = slot.take();
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
                    fail(JoinError::Panic(payload));
                    true
                }
            }
        } else {
            true
        };
        drop(slot);
        if done {
            self.state.finish();
            self.shared.tasks.remove(self.key());
            return true;
        }
        if self.state.end_pending() {
            // Woken while running: schedule again, through the port's queue so a
            // task that keeps waking itself cannot starve the others.
            let shared = self.shared.clone();
            shared.schedule(self, false);
        }
        false
    }

    /// Drops the future without running it (runtime shutdown).
    pub(crate) fn cancel_at_shutdown(&self) {
        let fail = &self.fail;
        self.state.finish();
        let fut = lock(&self.future).take();
        if fut.is_some() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
            fail(JoinError::Cancelled);
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.wake() {
            self.shared.schedule(self.clone(), true);
        }
    }
}

/// Why a task produced no output.
pub enum JoinError {
    /// It was aborted ([`JoinHandle::abort`]) or the runtime shut down first.
    Cancelled,
    /// It panicked; the payload is the panic's.
    Panic(Box<dyn Any + Send + 'static>),
}

impl JoinError {
    /// True if the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JoinError::Cancelled)
    }

    /// True if the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panic(_))
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("task was cancelled"),
            JoinError::Panic(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(non-string payload)");
                write!(f, "task panicked: {msg}")
            }
        }
    }
}

impl std::error::Error for JoinError {}

impl From<JoinError> for std::io::Error {
    fn from(e: JoinError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// Where a task's output waits for its [`JoinHandle`].
pub(crate) struct JoinState<T> {
    inner: Mutex<JoinInner<T>>,
}

struct JoinInner<T> {
    out: Option<Result<T, JoinError>>,
    finished: bool,
    waker: Option<Waker>,
}

impl<T> JoinState<T> {
    pub(crate) fn new() -> Self {
        JoinState {
            inner: Mutex::new(JoinInner {
                out: None,
                finished: false,
                waker: None,
            }),
        }
    }

    /// Stores the output (the first call wins) and wakes the joiner.
    pub(crate) fn finish(&self, out: Result<T, JoinError>) {
        let waker = {
            let mut g = lock(&self.inner);
            if g.finished {
                return;
            }
            g.finished = true;
            g.out = Some(out);
            g.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        let mut g = lock(&self.inner);
        if let Some(out) = g.out.take() {
            return Poll::Ready(out);
        }
        assert!(
            !g.finished,
            "JoinHandle polled after it returned its output"
        );
        match &g.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => g.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub(crate) fn is_finished(&self) -> bool {
        lock(&self.inner).finished
    }
}

/// Awaits a spawned task's output: `Ok(output)`, or `Err(JoinError)` if it
/// panicked or was aborted. Dropping the handle detaches the task (it keeps
/// running).
pub struct JoinHandle<T> {
    pub(crate) join: Arc<JoinState<T>>,
    pub(crate) task: Stoppable,
}

/// What [`JoinHandle::abort`] stops.
pub(crate) enum Stoppable {
    /// A spawned future.
    Task(Arc<Task>),
    /// A `spawn_blocking` closure, by its start flag: the abort and the
    /// closure's start race for it (`BlockingStart`), and only the winner
    /// finishes the join (so a closure that ran to its end is never
    /// reported as cancelled).
    Blocking(Arc<BlockingStart>),
}

/// A `spawn_blocking` closure's start: `false` until the closure starts or
/// an abort comes first; whichever swaps it to `true` first decides.
#[derive(Debug, Default)]
pub(crate) struct BlockingStart(AtomicBool);

impl BlockingStart {
    /// Claims the start; false if the other side claimed it first.
    pub(crate) fn claim(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Stops the task: it is dropped before it runs again (an operation it was
    /// awaiting is cancelled by that drop), and awaiting this handle gives
    /// `Err(JoinError::Cancelled)` — unless it had already finished, in which case
    /// its output stays. A `spawn_blocking` closure that has started cannot be
    /// stopped; one that has not is skipped.
    pub fn abort(&self) {
        match &self.task {
            Stoppable::Task(t) => t.abort(),
            // Too late once the closure has started: its output stays.
            Stoppable::Blocking(start) => {
                if start.claim() {
                    self.join.finish(Err(JoinError::Cancelled));
                }
            }
        }
    }

    /// True once the task has finished (with output, panic or abort).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Cancels the task and waits for the outcome, which is data, as with IOCP's
    /// `CancelIoEx`: [`Cancelled::Cancelled`] if the cancel won (the future was
    /// dropped before it finished, and with it the operation it was awaiting), or
    /// [`Cancelled::Finished`] with its output if it had already finished — so a
    /// result that raced the cancel is never lost.
    ///
    /// ```
    /// let rt = ringport::Runtime::new()?;
    /// rt.block_on(async {
    ///     let slow = ringport::spawn(ringport::time::sleep(std::time::Duration::from_secs(60)));
    ///     assert!(matches!(slow.cancel().await, ringport::rt::Cancelled::Cancelled));
    ///     let quick = ringport::spawn(async { 7 });
    ///     while !quick.is_finished() { ringport::yield_now().await; }
    ///     assert!(matches!(quick.cancel().await, ringport::rt::Cancelled::Finished(7)));
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn cancel(self) -> Cancelled<T> {
        self.abort();
        match self.await {
            Ok(v) => Cancelled::Finished(v),
            Err(JoinError::Cancelled) => Cancelled::Cancelled,
            Err(e) => Cancelled::Failed(e),
        }
    }
}

/// The outcome of [`JoinHandle::cancel`].
#[derive(Debug)]
pub enum Cancelled<T> {
    /// The cancel won: the task was dropped before it finished.
    Cancelled,
    /// The task had already finished; here is its output.
    Finished(T),
    /// The task had already panicked.
    Failed(JoinError),
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.join.poll(cx)
    }
}

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
use std::cell::UnsafeCell;
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

/// What the runtime holds of a task, whatever its future's type: the
/// registry's entry, a worker's next slot, a [`JoinHandle`]'s abort.
pub(crate) type TaskRef = Arc<dyn Runnable>;

/// A task seen without its future's type.
pub(crate) trait Runnable: Send + Sync + 'static {
    /// The task's key in the runtime's task registry.
    fn key(&self) -> u64;
    /// Sets the key (right after the registry insert, before the first schedule).
    fn set_key(&self, key: u64);
    /// Runs the task once. The caller holds its schedule (state `SCHEDULED`).
    /// Returns true if the task finished.
    fn run(self: Arc<Self>) -> bool;
    /// Asks the task to stop: it is dropped the next time it would run.
    fn abort(self: Arc<Self>);
    /// Drops the future without running it (runtime shutdown). The caller took
    /// the task out of the registry while no worker can be running it (see
    /// [`Task`]'s invariant).
    fn cancel_at_shutdown(&self);
}

/// One spawned future, in one allocation with its state (the `Arc`'s), so a
/// wake and the poll it leads to touch one object, not a task and a boxed
/// future behind a lock.
pub(crate) struct Task<F: Future> {
    state: RunState,
    /// The key in the runtime's task registry (set right after insert,
    /// before the first schedule).
    key: AtomicU64,
    aborted: AtomicBool,
    shared: Arc<Shared>,
    /// Where the output (or the panic, or the abort) goes.
    join: Arc<JoinState<F::Output>>,
    /// The future; `None` once finished, panicked or aborted (dropped in
    /// place: it is pinned here, never moved).
    ///
    /// Invariant: only two kinds of thread touch it, never at once — the
    /// thread that moved the task to `RUNNING` (`begin`, in `run`) until it
    /// leaves that state, and, at shutdown, the thread that took the task out
    /// of the registry: `stop_runtime` after the pool's workers are joined (so
    /// none runs it), or a waker whose post the closed port refused, which
    /// holds the task's one schedule (so nobody else can begin it). The state
    /// machine (`state.rs`, loom-checked) gives the first its exclusivity.
    future: UnsafeCell<Option<F>>,
}

// SAFETY: the only non-`Sync` field is `future`, and the invariant on it
// (above) means no two threads ever access it at once; each access is ordered
// after the previous one by the state machine's acquire/release RMWs (`begin`
// after the schedule that `end_pending`/`wake` handed over) or by the registry
// shard's lock and the pool's join (shutdown). `F: Send` makes moving the
// accesses between threads sound.
unsafe impl<F: Future + Send> Sync for Task<F> where F::Output: Send {}

impl<F: Future> fmt::Debug for Task<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("state", &self.state)
            .field("key", &self.key.load(Ordering::Relaxed))
            .finish()
    }
}

impl<F> Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// Creates a task (in `SCHEDULED`: the caller must schedule it once) running
    /// `fut`, whose output goes to the returned join state.
    pub(crate) fn new(shared: Arc<Shared>, fut: F) -> (Arc<Task<F>>, Arc<JoinState<F::Output>>) {
        let join = Arc::new(JoinState::new());
        let task = Arc::new(Task {
            state: RunState::new_scheduled(),
            key: AtomicU64::new(0),
            aborted: AtomicBool::new(false),
            shared,
            join: join.clone(),
            future: UnsafeCell::new(Some(fut)),
        });
        (task, join)
    }

    /// Drops the future in place, catching a panic in its `Drop` (the task
    /// and its join must still end, and the worker must not unwind); the
    /// panic's payload, if it panicked.
    ///
    /// # Safety
    ///
    /// The caller has the exclusive access `future`'s invariant describes.
    unsafe fn drop_future(&self) -> Option<Box<dyn Any + Send>> {
        // SAFETY: exclusive, by the caller's contract.
        let slot = unsafe { &mut *self.future.get() };
        catch_unwind(AssertUnwindSafe(|| *slot = None)).err()
    }

    /// Polls the future once (the caller moved the task to `RUNNING`): `None`
    /// while it is pending, else how it ended — its output, or the panic of
    /// its poll or of its drop, which is always done here.
    fn poll_once(self: &Arc<Self>) -> Option<Result<F::Output, JoinError>> {
        if self.aborted.load(Ordering::Acquire) {
            // SAFETY: the caller moved the task to RUNNING: exclusive. (A
            // panic in the drop of an aborted future is swallowed: the task
            // was cancelled either way.)
            let _ = unsafe { self.drop_future() };
            return Some(Err(JoinError::Cancelled));
        }
        // SAFETY: the caller moved the task to RUNNING (`begin`), so by the
        // invariant on `future` nobody else touches it until it leaves that
        // state.
        let fut = unsafe { (*self.future.get()).as_mut() }?;
        // SAFETY: the future lives in this `Arc`'s allocation, which never
        // moves, and is only ever dropped in place (`drop_future`), never
        // moved out: it stays pinned.
        let fut = unsafe { Pin::new_unchecked(fut) };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let r = match catch_unwind(AssertUnwindSafe(|| fut.poll(&mut cx))) {
            Ok(Poll::Pending) => return None,
            Ok(Poll::Ready(out)) => Ok(out),
            Err(payload) => Err(JoinError::Panic(payload)),
        };
        // SAFETY: still RUNNING, still exclusive. A future that finished but
        // panics in its drop failed, as tokio reports it: the panic wins
        // over the output (dropped here, its own drop's panic caught too).
        match (unsafe { self.drop_future() }, r) {
            (Some(p), Ok(out)) => {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(out)));
                Some(Err(JoinError::Panic(p)))
            }
            (_, r) => Some(r),
        }
    }
}

impl<F> Runnable for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn key(&self) -> u64 {
        self.key.load(Ordering::Acquire)
    }

    fn set_key(&self, key: u64) {
        self.key.store(key, Ordering::Release);
    }

    fn abort(self: Arc<Self>) {
        self.aborted.store(true, Ordering::Release);
        self.wake_by_ref();
    }

    fn run(self: Arc<Self>) -> bool {
        self.state.begin();
        match self.poll_once() {
            Some(r) => {
                // The task ends (and leaves the registry) before its joiner
                // hears of it: a joiner sees it gone from `live_tasks`.
                self.state.finish();
                self.shared.tasks.remove(self.key());
                self.join.finish(r);
                true
            }
            None => {
                if self.state.end_pending() {
                    // Woken while running: schedule again, through the port's
                    // queue so a task that keeps waking itself cannot starve
                    // the others.
                    let shared = self.shared.clone();
                    shared.schedule(self, false);
                }
                false
            }
        }
    }

    fn cancel_at_shutdown(&self) {
        self.state.finish();
        // SAFETY: the caller took the task out of the registry at shutdown,
        // which by `future`'s invariant makes its access exclusive.
        let had = unsafe { (*self.future.get()).is_some() };
        if had {
            // SAFETY: as above. (A panic in the drop is swallowed: the task
            // is cancelled either way.)
            let _ = unsafe { self.drop_future() };
            self.join.finish(Err(JoinError::Cancelled));
        }
    }
}

impl<F> Wake for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
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
    /// The `JoinHandle` is gone: nobody will take the output, so `finish`
    /// drops it at once, where a panic in its drop is caught, rather than
    /// leaving it to whichever thread lets go of the task last.
    detached: bool,
}

impl<T> JoinState<T> {
    pub(crate) fn new() -> Self {
        JoinState {
            inner: Mutex::new(JoinInner {
                out: None,
                finished: false,
                waker: None,
                detached: false,
            }),
        }
    }

    /// Stores the output (the first call wins) and wakes the joiner; with no
    /// joiner left, drops it.
    pub(crate) fn finish(&self, out: Result<T, JoinError>) {
        let waker = {
            let mut g = lock(&self.inner);
            if g.finished {
                return;
            }
            g.finished = true;
            if g.detached {
                drop(g);
                // The output's drop is foreign code, like the waker below.
                if catch_unwind(AssertUnwindSafe(move || drop(out))).is_err() {
                    tracing::error!(
                        "ringport: a detached task's output panicked when dropped; the panic is dropped"
                    );
                }
                return;
            }
            g.out = Some(out);
            g.waker.take()
        };
        if let Some(w) = waker {
            // The joiner's waker is foreign code: its panic must not unwind
            // through the worker that finished the task (nor through
            // shutdown).
            if catch_unwind(AssertUnwindSafe(|| w.wake())).is_err() {
                tracing::error!("ringport: a JoinHandle's waker panicked; the panic is dropped");
            }
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

    /// The handle is dropped: no one will take the output. Returns an output
    /// already stored and the joiner's waker, for the caller to drop outside
    /// the lock.
    fn detach(&self) -> (Option<Result<T, JoinError>>, Option<Waker>) {
        let mut g = lock(&self.inner);
        g.detached = true;
        (g.out.take(), g.waker.take())
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
    Task(TaskRef),
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
            Stoppable::Task(t) => t.clone().abort(),
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

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        // Dropped here, on the thread that lets go of the handle (inside a
        // task, that task's poll catches a panic).
        drop(self.join.detach());
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.join.poll(cx)
    }
}

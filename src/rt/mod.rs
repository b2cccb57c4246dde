//! The async face: `async` Rust on the IOCP pool.
//!
//! A [`Runtime`] is a [`CompletionPort`] plus a [`Pool`] whose workers run both
//! kinds of packet the port hands out:
//!
//! * **I/O completions** (key `IO_KEY`): the completion is delivered to the future
//!   that submitted the operation, which wakes its task;
//! * **task packets** (key `TASK_KEY`): a woken task, posted to the port (IOCP's
//!   `PostQueuedCompletionStatus`), is polled by whichever worker dequeues it.
//!
//! So an async program gets the IOCP model unchanged: at most `concurrency`
//! workers poll tasks at once, packets are served FIFO, the most recently idle
//! worker is woken first, [`blocking`](crate::blocking) frees a slot, and the
//! stall detector covers a task that blocks without saying so. A task woken on
//! one worker may run on another.
//!
//! One shortcut: a task woken by a worker *while it handles a completion* (the
//! common case: its read finished) does not go through the queue; it waits in
//! that worker's "next" slot and runs as soon as the handler returns, on the same
//! thread, with its data still in cache. At most [`NEXT_BUDGET`] tasks run that
//! way per packet; the rest are posted. A task there is not trapped behind its
//! worker: if the handler calls [`blocking`](crate::blocking), stalls past the
//! pool's stall threshold, or unwinds, the task goes to the port for another
//! worker (`next.rs`).
//!
//! ```
//! let rt = ringport::Runtime::new()?;
//! let answer = rt.block_on(async {
//!     let h = ringport::spawn(async { 6 * 7 });
//!     h.await.unwrap()
//! });
//! assert_eq!(answer, 42);
//! # Ok::<(), std::io::Error>(())
//! ```

mod blocking;
mod next;
pub(crate) mod op;
mod prio;
mod registry;
mod state;
mod task;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use crate::completion::Completion;
use crate::pool::Pool;
use crate::port::CompletionPort;
use crate::sync::lock;
use crate::sys::{BackendChoice, BackendKind};

pub use prio::{with_priority, WithPriority};
pub use task::{Cancelled, JoinError, JoinHandle};

use blocking::BlockingPool;
use op::OpSlot;
use registry::Registry;
use task::{BlockingStart, JoinState, Stoppable, Task, TaskRef};

/// Key of the runtime's task packets.
pub(crate) const TASK_KEY: u64 = u64::MAX - 1;
/// Key of every handle (and timer) the runtime submits operations on.
pub(crate) const IO_KEY: u64 = u64::MAX - 2;
/// Tasks a worker runs from its next slot per dequeued packet.
pub const NEXT_BUDGET: usize = 32;

/// Configures a [`Runtime`].
#[derive(Debug, Clone)]
pub struct Builder {
    threads: usize,
    concurrency: usize,
    backend: Option<BackendChoice>,
    max_in_flight: usize,
    stall_threshold: Option<Duration>,
    lazy_release: usize,
    blocking_threads: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            threads: 0,
            concurrency: 0,
            backend: None,
            max_in_flight: 32 * 1024,
            stall_threshold: Some(Duration::from_millis(10)),
            lazy_release: 0,
            blocking_threads: 512,
        }
    }
}

impl Builder {
    /// Worker threads; 0 (the default) means 2 × CPUs.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// At most `n` workers poll tasks at once; 0 (the default) means the CPUs.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Forces a backend; by default `RINGPORT_BACKEND` decides, else `Auto`.
    pub fn backend(mut self, choice: BackendChoice) -> Self {
        self.backend = Some(choice);
        self
    }

    /// Caps operations in flight (default 32,768, enough for that many idle
    /// connections each waiting to receive; 0 is taken as 1). Past it, a new operation waits (its
    /// future stays pending) until one completes. Timers are operations too:
    /// at the cap, a `sleep` or `timeout` starts (and so fires) only once
    /// room comes.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// The pool's stall threshold (default 10 ms; see [`PoolBuilder::stall_threshold`](crate::PoolBuilder::stall_threshold)).
    pub fn stall_threshold(mut self, t: Option<Duration>) -> Self {
        self.stall_threshold = t;
        self
    }

    /// The pool's lazy release (default 0, off; see [`PoolBuilder::lazy_release`](crate::PoolBuilder::lazy_release)).
    pub fn lazy_release(mut self, n: usize) -> Self {
        self.lazy_release = n;
        self
    }

    /// Most threads [`spawn_blocking`] may use at once (default 512; 0 is
    /// taken as 1).
    pub fn blocking_threads(mut self, n: usize) -> Self {
        self.blocking_threads = n.max(1);
        self
    }

    /// Starts the runtime.
    pub fn build(self) -> io::Result<Runtime> {
        let mut pb = CompletionPort::builder()
            .concurrency(self.concurrency)
            .max_in_flight(self.max_in_flight);
        if let Some(b) = self.backend {
            pb = pb.backend(b);
        }
        let port = pb.build()?;
        let shared = Arc::new(Shared {
            port: port.clone(),
            tasks: Registry::new(),
            ops: Registry::new(),
            room: Mutex::new(VecDeque::new()),
            room_waiters: AtomicUsize::new(0),
            room_epoch: AtomicU64::new(0),
            blocking: BlockingPool::new(self.blocking_threads),
            shut: AtomicBool::new(false),
            nexts: next::Slots::default(),
        });
        let s = shared.clone();
        let mut pb = Pool::builder()
            .threads(self.threads)
            .stall_threshold(self.stall_threshold)
            .lazy_release(self.lazy_release)
            .name("ringport-rt");
        if let Some(limit) = self.stall_threshold {
            // A task woken into a worker's next slot must not wait there
            // behind a handler that stalls (`next.rs`).
            let w = Arc::downgrade(&shared);
            pb = pb.on_monitor_tick(Box::new(move || {
                if let Some(sh) = w.upgrade() {
                    sh.nexts.steal_stuck(&sh, limit);
                }
            }));
        }
        let pool = pb.spawn(&port, move |_port, c| s.handle_packet(c))?;
        Ok(Runtime {
            handle: Handle { shared },
            pool: Mutex::new(Some(pool)),
        })
    }
}

/// The state every handle, task and worker of one runtime shares.
pub(crate) struct Shared {
    pub(crate) port: CompletionPort,
    /// Every live task. Owning them here (not in their packets) is what lets
    /// shutdown drop them all, whatever the port dropped.
    pub(crate) tasks: Registry<TaskRef>,
    /// Every operation in flight (see `op.rs`).
    pub(crate) ops: Registry<OpSlot>,
    /// Futures waiting for room under `max_in_flight`.
    room: Mutex<VecDeque<Waker>>,
    room_waiters: AtomicUsize,
    /// Bumped (under `room`'s lock) each time the waiters for room are taken
    /// out to be woken: a future that registered in the current epoch with
    /// the same waker is still queued and need not register again.
    room_epoch: AtomicU64,
    blocking: BlockingPool,
    shut: AtomicBool,
    /// Every worker's next slot, for the pool's monitor (`next.rs`).
    nexts: next::Slots,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("backend", &self.port.backend())
            .field("tasks", &self.tasks.len())
            .field("ops", &self.ops.len())
            .finish()
    }
}

thread_local! {
    /// The runtime `spawn`, `sleep` and the handles' constructors use here.
    static CONTEXT: RefCell<Option<Handle>> = const { RefCell::new(None) };
    /// The runtime this thread is a worker of (its `Shared` address), or 0.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

impl Shared {
    fn addr(&self) -> usize {
        self as *const Shared as usize
    }

    /// One dequeued packet, on a pool worker.
    fn handle_packet(self: &Arc<Self>, c: Completion) {
        if WORKER.with(Cell::get) != self.addr() {
            WORKER.with(|w| w.set(self.addr()));
            CONTEXT.with(|cx| {
                *cx.borrow_mut() = Some(Handle {
                    shared: self.clone(),
                })
            });
            next::register(self);
        }
        // Whatever is left in the next slot when this returns — past the
        // budget, or because a handler unwound — goes to the port, where any
        // worker may take it.
        struct Flush<'a>(&'a Shared);
        impl Drop for Flush<'_> {
            fn drop(&mut self) {
                next::flush(self.0);
            }
        }
        let _flush = Flush(self);
        match c.key {
            TASK_KEY => {
                if let Some(t) = self.tasks.with(c.user_data, Arc::clone) {
                    t.run();
                }
            }
            IO_KEY => self.complete_op(c),
            other => tracing::warn!(key = other, "ringport runtime: a packet with a foreign key"),
        }
        for _ in 0..NEXT_BUDGET {
            match next::take() {
                Some(t) => {
                    t.run();
                }
                None => return,
            }
        }
    }

    /// Schedules a task that just moved to `SCHEDULED` (it holds no other
    /// schedule). `inline`: a worker of this runtime may keep it in its next slot.
    pub(crate) fn schedule(&self, task: TaskRef, inline: bool) {
        if inline {
            match next::put(self, task) {
                None => {}
                Some(t) => self.post_task(&t),
            }
            return;
        }
        self.post_task(&task);
    }

    fn post_task(&self, task: &TaskRef) {
        self.post_key(task.key());
    }

    /// Posts the task `key` names (it holds a schedule: see `state.rs`).
    fn post_key(&self, key: u64) {
        if self.port.post(TASK_KEY, key, 0).is_err() {
            // Closed: the runtime is shutting down; shutdown drops the task (it
            // is still in the registry, or was never run).
            if self.shut.load(Ordering::Acquire) {
                if let Some(t) = self.tasks.remove(key) {
                    t.cancel_at_shutdown();
                }
            }
        }
    }

    /// Spawns a task.
    fn spawn<F>(self: &Arc<Self>, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (task, join) = Task::new(self.clone(), fut);
        let task: TaskRef = task;
        let key = self.tasks.insert(task.clone());
        task.set_key(key);
        self.post_task(&task);
        JoinHandle {
            join,
            task: Stoppable::Task(task),
        }
    }

    fn spawn_blocking<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let join = Arc::new(JoinState::new());
        let start = Arc::new(BlockingStart::default());
        let (j, st) = (join.clone(), start.clone());
        let job = Box::new(move || {
            if !st.claim() {
                return; // aborted before it started
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            j.finish(r.map_err(JoinError::Panic));
        });
        match self.blocking.spawn(job) {
            Ok(()) => {}
            // As `spawn` after shutdown: cancelled.
            Err(blocking::Refused::Stopped) => join.finish(Err(JoinError::Cancelled)),
            Err(blocking::Refused::NoThread(e)) => join.finish(Err(JoinError::Panic(Box::new(
                format!("spawn_blocking: could not start a thread: {e}"),
            )))),
        }
        JoinHandle {
            join,
            task: Stoppable::Blocking(start),
        }
    }

    /// Queues `waker` to be woken when an operation completes. `seen` is the
    /// caller's last registration (epoch and waker): while it is still
    /// queued, polling again adds nothing (each poll of a waiting future used
    /// to queue one more clone).
    pub(crate) fn wait_for_room(&self, waker: &Waker, seen: &mut Option<(u64, Waker)>) {
        let mut q = lock(&self.room);
        let epoch = self.room_epoch.load(Ordering::Relaxed);
        if let Some((e, w)) = seen {
            if *e == epoch && w.will_wake(waker) {
                return;
            }
        }
        q.push_back(waker.clone());
        self.room_waiters.store(q.len(), Ordering::Release);
        drop(q);
        *seen = Some((epoch, waker.clone()));
    }

    /// An operation completed: every future waiting for room retries. (All of
    /// them, not one: a waiter may have been dropped since it registered, and a
    /// wake given to it would be lost. Waiting for room only happens at
    /// `max_in_flight`, so the stampede is rare and bounded by the waiters.)
    fn room_freed(&self) {
        if self.room_waiters.load(Ordering::Acquire) == 0 {
            return;
        }
        let waiters = {
            let mut q = lock(&self.room);
            self.room_waiters.store(0, Ordering::Release);
            self.room_epoch.fetch_add(1, Ordering::Relaxed);
            std::mem::take(&mut *q)
        };
        for w in waiters {
            w.wake();
        }
    }
}

/// A cheap, cloneable reference to a runtime: spawn on it, or enter it from
/// another thread. Handles and tasks keep working until the runtime shuts down;
/// after that, new operations fail with a "port closed" error and spawned tasks
/// are cancelled.
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl Handle {
    /// The runtime the calling thread runs in (a worker, or inside `block_on`).
    pub fn try_current() -> Option<Handle> {
        CONTEXT.with(|c| c.borrow().clone())
    }

    /// Like [`try_current`](Self::try_current), but an `io::Error` outside a runtime.
    pub fn current() -> io::Result<Handle> {
        Handle::try_current().ok_or_else(no_runtime)
    }

    /// Spawns a future onto the runtime's workers.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared.spawn(fut)
    }

    /// Runs a blocking closure on the runtime's blocking threads (not its workers).
    pub fn spawn_blocking<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.shared.spawn_blocking(f)
    }

    /// Runs `fut` to completion on the calling thread (see [`Runtime::block_on`]).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        block_on_with(self.clone(), fut)
    }

    /// The backend the runtime's port runs on.
    pub fn backend(&self) -> BackendKind {
        self.shared.port.backend()
    }

    /// The counters of the runtime's port: the scheduler's hand-offs, poll
    /// take-overs and stalls, operations in flight, the backend's task-run mode.
    pub fn port_stats(&self) -> crate::PortStats {
        self.shared.port.stats()
    }

    /// Tasks alive now (spawned, not finished).
    pub fn live_tasks(&self) -> usize {
        self.shared.tasks.len()
    }

    /// Operations in flight now.
    pub fn ops_in_flight(&self) -> usize {
        self.shared.ops.len()
    }
}

pub(crate) fn no_runtime() -> io::Error {
    io::Error::other(
        "no ringport runtime here: call this inside Runtime::block_on or a spawned task",
    )
}

/// The runtime the calling thread is in; panics with a clear message outside one
/// (for APIs that cannot return an error).
pub(crate) fn current_or_panic(what: &str) -> Handle {
    Handle::try_current().unwrap_or_else(|| {
        panic!("{what} called outside a ringport runtime (use Runtime::block_on or spawn)")
    })
}

/// An async runtime on a completion port and its IOCP pool.
///
/// Dropping it (or [`shutdown`](Self::shutdown)) closes the port, stops the
/// workers, cancels every operation in flight (waiting until the kernel has
/// released their buffers) and drops every task that has not finished.
pub struct Runtime {
    handle: Handle,
    pool: Mutex<Option<Pool>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Runtime {
    /// A runtime with the defaults (2 × CPUs workers, concurrency = CPUs, backend
    /// from `RINGPORT_BACKEND` or automatic).
    pub fn new() -> io::Result<Runtime> {
        Builder::default().build()
    }

    /// A builder to configure one.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A handle to this runtime.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `fut` to completion on the calling thread, which is parked while the
    /// future waits; I/O and spawned tasks are served by the workers meanwhile.
    /// Inside, [`spawn`] and the I/O handles use this runtime.
    ///
    /// # Panics
    ///
    /// When called on a worker thread of any ringport runtime, this one's or
    /// another's (it would block a worker that may be the one to complete
    /// what it waits for); use `.await` or [`spawn_blocking`] there.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        block_on_with(self.handle.clone(), fut)
    }

    /// Spawns a future onto the workers.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Runs a blocking closure on a blocking thread.
    pub fn spawn_blocking<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.handle.spawn_blocking(f)
    }

    /// Shuts the runtime down (what dropping it does).
    pub fn shutdown(self) {
        self.stop();
    }

    fn stop(&self) {
        let Some(pool) = lock(&self.pool).take() else {
            return;
        };
        let sh = self.handle.shared.clone();
        if WORKER.with(Cell::get) == sh.addr() {
            // Dropped by one of its own tasks: a worker cannot join itself, so
            // another thread finishes the shutdown once this task returns.
            sh.shut.store(true, Ordering::Release);
            sh.port.close();
            let spawned = thread::Builder::new()
                .name("ringport-rt-stop".into())
                .spawn(move || stop_runtime(&sh, pool));
            if let Err(e) = spawned {
                tracing::error!("runtime dropped on its own worker; cannot finish shutdown: {e}");
            }
            return;
        }
        stop_runtime(&sh, pool);
    }
}

/// Closes the port (cancelling everything in flight, waiting for the kernel to
/// release it) and joins the workers, so nobody runs a task or delivers a
/// completion after; then frees every operation slot and drops every task left.
fn stop_runtime(sh: &Arc<Shared>, pool: Pool) {
    sh.shut.store(true, Ordering::Release);
    pool.shutdown();
    // Whoever waits on an operation or for room — a task, or a thread parked
    // in `block_on` — is woken: its next poll finds the operation gone (or the
    // port closed) and returns the error. A task's wake finds the port closed
    // and cancels the task (`post_task`).
    for slot in sh.ops.drain() {
        slot.wake_closed();
    }
    let room = {
        let mut q = lock(&sh.room);
        sh.room_epoch.fetch_add(1, Ordering::Relaxed);
        std::mem::take(&mut *q)
    };
    sh.room_waiters.store(0, Ordering::Release);
    for w in room {
        w.wake();
    }
    // Dropping a task's future may drop handles and wake other tasks (whose
    // packets the closed port refuses): loop until nothing is left.
    loop {
        let tasks = sh.tasks.drain();
        if tasks.is_empty() {
            break;
        }
        for t in tasks {
            t.cancel_at_shutdown();
        }
    }
    sh.blocking.stop();
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What [`blocking`](crate::blocking) does first on a runtime worker: the task
/// in its next slot goes to the port, where another worker may run it.
pub(crate) fn before_blocking() {
    next::flush_current();
}

/// Spawns a future onto the current runtime's workers.
///
/// # Panics
///
/// Outside a runtime (use [`Handle::spawn`] there).
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    current_or_panic("ringport::spawn").spawn(fut)
}

/// Runs a blocking closure on the current runtime's blocking threads, returning
/// a handle to await its result.
///
/// # Panics
///
/// Outside a runtime (use [`Handle::spawn_blocking`] there).
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    current_or_panic("ringport::spawn_blocking").spawn_blocking(f)
}

/// Lets other tasks run: the current task is rescheduled behind the packets
/// already queued.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Wakes a thread parked in `block_on`.
struct Parker {
    thread: Thread,
    notified: AtomicBool,
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.thread.unpark();
        }
    }
}

/// Sets the thread's runtime context for a scope.
struct Enter(Option<Handle>);

impl Enter {
    fn new(h: Handle) -> Enter {
        Enter(CONTEXT.with(|c| c.borrow_mut().replace(h)))
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let prev = self.0.take();
        CONTEXT.with(|c| *c.borrow_mut() = prev);
    }
}

fn block_on_with<F: Future>(h: Handle, fut: F) -> F::Output {
    assert!(
        WORKER.with(Cell::get) == 0,
        "Runtime::block_on called on a ringport worker thread; use .await or spawn_blocking"
    );
    let _enter = Enter::new(h);
    // Submits to io_uring directly while here (see `sys/thread.rs`).
    let _owned = crate::sys::OwnedScope::enter();
    let parker = Arc::new(Parker {
        thread: thread::current(),
        notified: AtomicBool::new(false),
    });
    let waker = Waker::from(parker.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        while !parker.notified.swap(false, Ordering::AcqRel) {
            thread::park();
        }
    }
}

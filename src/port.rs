//! `CompletionPort`: IOCP's port on Linux (SPEC §1).
//!
//! A port is a backend (which talks to the kernel) plus the scheduler core in
//! `sched.rs` (which decides which thread gets which completion). Any thread may
//! submit; any thread may dequeue; at most `concurrency` threads are counted as
//! running handlers at once.
//!
//! ```
//! use ringport::{CompletionPort, Op};
//! use std::time::Duration;
//!
//! let port = CompletionPort::builder().concurrency(1).build()?;
//! port.post(7, 42, 3)?;
//! port.submit(Op::nop().key(8), 43)?;
//! let a = port.get(Some(Duration::from_secs(5)))?;
//! assert_eq!((a.key, a.user_data, a.result.as_ref().ok().copied()), (7, 42, Some(3)));
//! let b = port.get(Some(Duration::from_secs(5)))?;
//! assert_eq!((b.key, b.user_data), (8, 43));
//! # Ok::<(), ringport::Error>(())
//! ```

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::completion::{Completion, OpId};
use crate::error::{Error, Result};
use crate::sched::{Next, Priority, Sched, SchedStats, SlotId};
use crate::sync::give_back;
use crate::sys::{Backend, BackendChoice, BackendKind, Config, PollMode};

mod assoc;
mod prio;
mod submit;
pub use submit::Submitted;

static NEXT_PORT_ID: AtomicU64 = AtomicU64::new(1);

/// Builds a [`CompletionPort`] (IOCP's `CreateIoCompletionPort`).
#[derive(Debug, Clone)]
pub struct Builder {
    concurrency: usize,
    max_in_flight: usize,
    entries: u32,
    backend: Option<BackendChoice>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            concurrency: 0,
            max_in_flight: 4096,
            entries: 256,
            backend: None,
        }
    }
}

impl Builder {
    /// At most `n` threads run handlers at once. 0 (the default) means the number of CPUs.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Caps the operations outstanding at once (default 4096; 0 is taken as 1). `try_submit` past it
    /// returns [`Error::QueueFull`]; `submit` waits for room. The backend may lower
    /// the cap to what its completion queue can hold without overflowing.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Submission ring entries (default 256; rounded up to a power of two, and
    /// at least 4 on io_uring, which pushes up to three linked SQEs at once).
    /// More operations than this may be in flight: the ring is refilled as it
    /// drains.
    pub fn ring_entries(mut self, n: u32) -> Self {
        self.entries = n.max(2);
        self
    }

    /// Forces a backend; by default `RINGPORT_BACKEND` decides, else `Auto`.
    pub fn backend(mut self, choice: BackendChoice) -> Self {
        self.backend = Some(choice);
        self
    }

    /// Creates the port.
    pub fn build(self) -> Result<CompletionPort> {
        let choice = match self.backend {
            Some(c) => c,
            None => BackendChoice::from_env()?,
        };
        let cfg = Config {
            entries: self.entries,
            max_in_flight: self.max_in_flight,
        };
        let (backend, reason) = Backend::build(choice, cfg)?;
        let concurrency = if self.concurrency == 0 {
            num_cpus()
        } else {
            self.concurrency
        };
        tracing::debug!(backend = %backend.kind(), %reason, concurrency, "completion port created");
        Ok(CompletionPort {
            inner: Arc::new(PortInner {
                id: NEXT_PORT_ID.fetch_add(1, Ordering::Relaxed),
                sched: Sched::with_backup(concurrency, false),
                backend,
                reason,
                assoc: assoc::Assoc::new(),
                closed: AtomicBool::new(false),
                in_backend: AtomicUsize::new(0),
                high_in_flight: AtomicUsize::new(0),
                last_reap: AtomicUsize::new(0),
            }),
        })
    }
}

/// The number of CPUs this process may run on.
pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A completion port. Cloning gives another handle to the same port.
#[derive(Debug, Clone)]
pub struct CompletionPort {
    inner: Arc<PortInner>,
}

#[derive(Debug)]
pub(crate) struct PortInner {
    id: u64,
    sched: Sched<Completion>,
    backend: Backend,
    reason: String,
    /// Descriptor → completion key (IOCP's association); read without a lock.
    assoc: assoc::Assoc,
    closed: AtomicBool,
    /// Threads inside the backend's wait (the poller, and pollers whose role was
    /// taken over and who have not woken yet). `close` wakes them by count, not
    /// by role: a deposed poller holds no role but still sleeps in the kernel.
    /// Incremented before a thread checks `closed` and `close` sets `closed`
    /// before it reads this (both SeqCst), so either the thread sees the close or
    /// the close sees the thread.
    in_backend: AtomicUsize,
    /// `High` operations submitted whose completions have not been dequeued
    /// yet (see `port/prio.rs`).
    high_in_flight: AtomicUsize,
    /// Completions the last look at the backend gathered (`poll`, by any
    /// thread): a hint of load, read by `send_now_pays` (`port/submit.rs`).
    /// Relaxed: a stale value only moves a guess.
    last_reap: AtomicUsize,
}

/// Statistics of a port, for tests and `ringport info`.
#[derive(Debug, Clone, Copy)]
// Fields are added as the port learns to count more: built only here.
#[non_exhaustive]
pub struct PortStats {
    /// Scheduler counters: running threads, peak, stalls, handoffs, queued.
    pub sched: SchedStats,
    /// Operations submitted and not yet reaped from the kernel.
    pub in_flight: usize,
    /// How each kind of operation runs on this port's backend: natively, on a
    /// worker thread, or emulated (fixed when the port is built, from what the
    /// kernel offers).
    pub op_paths: crate::op::OpPaths,
    /// How a request's completion work reaches the threads: io_uring's task-run
    /// mode, `"coop"` or `"default"` (`"none"` on epoll).
    pub task_run: &'static str,
    /// Why that mode (the kernel, `membarrier`, or `RINGPORT_URING_COOP`).
    pub task_run_reason: &'static str,
    /// Kicks sent to make running threads release held completion work (io_uring
    /// `COOP_TASKRUN`; see `docs/design.md`, "Task run").
    pub task_work_kicks: u64,
}

impl CompletionPort {
    /// A builder with the defaults (concurrency = CPUs, 4096 in flight, 256 entries).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A port with the defaults.
    pub fn new() -> Result<CompletionPort> {
        Builder::default().build()
    }

    /// The backend this port runs on.
    pub fn backend(&self) -> BackendKind {
        self.inner.backend.kind()
    }

    /// The backend itself (for `provided.rs`).
    pub(crate) fn backend_ref(&self) -> &Backend {
        &self.inner.backend
    }

    /// Why that backend was chosen.
    pub fn backend_reason(&self) -> &str {
        &self.inner.reason
    }

    /// The concurrency value N.
    pub fn concurrency(&self) -> usize {
        self.inner.sched.max()
    }

    /// Associates a handle with this port: every completion of an operation on it
    /// carries `key`. The association lasts until the handle is closed through
    /// [`Op::close`](crate::Op::close) or [`disassociate`](Self::disassociate) is called.
    ///
    /// A descriptor that is not open is refused (`EBADF`).
    ///
    /// On the epoll backend a socket is made non-blocking
    /// (`O_NONBLOCK`) here, as its operations are tried at once and waited
    /// for by readiness; it stays so after `disassociate`. A program that
    /// also makes blocking calls of its own on the descriptor sees
    /// `WouldBlock` instead of waiting: make them through the port, or wait
    /// for readiness ([`Op::writable`]).
    ///
    /// [`Op::writable`]: crate::Op::writable
    pub fn associate(&self, handle: &impl AsFd, key: u64) -> Result<()> {
        let fd = handle.as_fd().as_raw_fd();
        self.inner
            .assoc
            .insert(fd, key, || self.inner.backend.associate(fd))
    }

    /// Ends a handle's association (call it before closing the handle yourself, so a
    /// later descriptor with the same number is not mistaken for it).
    ///
    /// Operations still in flight on a socket are cancelled, on both
    /// backends: each completes with `ECANCELED` (or with its result, if it
    /// finished first). On epoll they complete here; on io_uring when the
    /// kernel has taken the cancel, soon after. A file's operations run to
    /// their end. (On io_uring the kernel finds them by the open socket, not
    /// by the number: of two associated duplicates of a socket, ending one's
    /// association cancels the other's operations too.)
    pub fn disassociate(&self, handle: &impl AsFd) -> Result<()> {
        let fd = handle.as_fd().as_raw_fd();
        self.inner
            .assoc
            .remove(fd, || self.inner.backend.disassociate(fd, true))?;
        Ok(())
    }

    /// [`disassociate`](Self::disassociate) for a handle with no operation in
    /// flight (the async face's handles, whose operations keep them alive):
    /// there is nothing to cancel.
    pub(crate) fn disassociate_idle(&self, handle: &impl AsFd) -> Result<()> {
        let fd = handle.as_fd().as_raw_fd();
        self.inner
            .assoc
            .remove(fd, || self.inner.backend.disassociate(fd, false))?;
        Ok(())
    }

    /// Queues a user packet (IOCP's `PostQueuedCompletionStatus`); it is dequeued
    /// like any completion, with `result = Ok(bytes)`.
    pub fn post(&self, key: u64, user_data: u64, bytes: usize) -> Result<()> {
        self.post_with_priority(key, user_data, bytes, Priority::Normal)
    }

    /// Like [`post`](Self::post), in a priority lane: a dequeue takes the
    /// highest-priority packet present (a `Low` one waits at most
    /// [`AGE_LIMIT`](crate::AGE_LIMIT) dequeues once it is first in its lane).
    ///
    /// ```
    /// use ringport::{CompletionPort, Priority};
    /// let port = CompletionPort::new()?;
    /// port.post_with_priority(0, 1, 0, Priority::Low)?;
    /// port.post_with_priority(0, 2, 0, Priority::High)?;
    /// assert_eq!(port.get(None)?.user_data, 2);
    /// assert_eq!(port.get(None)?.user_data, 1);
    /// # Ok::<(), ringport::Error>(())
    /// ```
    pub fn post_with_priority(
        &self,
        key: u64,
        user_data: u64,
        bytes: usize,
        priority: Priority,
    ) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let packet = Completion::packet(key, user_data, bytes).with_priority(priority);
        if self.inner.sched.push(packet) {
            self.inner.backend.notify();
        }
        Ok(())
    }

    /// Asks for an operation to stop (IOCP's `CancelIoEx`). The operation's
    /// completion still arrives: failed with `ECANCELED` if the cancel won, or with
    /// its real result if it had already finished. `NotFound` if it is not in flight
    /// — on epoll, also for one that has just finished and whose completion is
    /// on its way. Either way its completion comes, or has come.
    pub fn cancel(&self, id: OpId) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(c) = self.inner.backend.cancel(id)? {
            if self.inner.sched.push(c) {
                self.inner.backend.notify();
            }
        }
        Ok(())
    }

    /// Dequeues one completion (IOCP's `GetQueuedCompletionStatus`). `None` waits
    /// forever; `Some(Duration::ZERO)` only looks.
    ///
    /// The calling thread counts as running a handler from the moment this returns
    /// a completion until it calls `get` (or `get_many`) again, on this port or
    /// another (as in IOCP, waiting on another port ends its association with
    /// this one); while `concurrency` threads are running, further callers wait
    /// even if completions are queued.
    pub fn get(&self, timeout: Option<Duration>) -> Result<Completion> {
        let mut out = Vec::with_capacity(1);
        self.dequeue(&mut out, 1, timeout)?;
        Ok(out.pop().expect("dequeue returned one completion"))
    }

    /// Dequeues up to `max` completions into `out` (IOCP's
    /// `GetQueuedCompletionStatusEx`): returns as soon as at least one is available.
    /// Each entry carries its own result; the count is returned. They are
    /// appended: what `out` held stays. A `max` of 0 is taken as 1.
    pub fn get_many(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        self.dequeue(out, max.max(1), timeout)
    }

    fn dequeue(
        &self,
        out: &mut Vec<Completion>,
        limit: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let from = out.len();
        let home = HOME.with(|h| h.replace(self.inner.id));
        if home != self.inner.id && home != 0 {
            self.leave_others();
        }
        self.inner.backend.new_burst();
        let r = self.dequeue_inner(out, limit, timeout);
        self.dequeued(&out[from.min(out.len())..]);
        r
    }

    fn dequeue_inner(
        &self,
        out: &mut Vec<Completion>,
        limit: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        // A timeout too long for the clock (`Duration::MAX`) waits forever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let slot = self.slot();
        let inner = &self.inner;
        loop {
            // Submissions a batching thread held back must reach the kernel before
            // this thread may sleep on the scheduler (a thread polling hands them
            // over in the same system call as its wait).
            // Only this thread's own held-back submissions matter: another thread's
            // are its own to hand over when it comes back.
            let may_sleep = !HOLDING.with(Cell::get);
            self.gather_high();
            let (next, wake) = inner.sched.dequeue(slot, out, limit, deadline, may_sleep);
            if wake {
                inner.backend.notify();
            }
            match next {
                // WouldSleep: hand our submissions over and take whatever is
                // ready now, rather than sleeping while they complete.
                // PollFirst: look at the backend before serving the queue
                // further (fairness, `sched::POLL_EVERY`); what it has goes
                // to the queue's back.
                Next::WouldSleep | Next::PollFirst => {
                    HOLDING.with(|h| h.set(false));
                    let mut batch = BATCH.take();
                    if let Err(e) =
                        inner
                            .backend
                            .poll(Some(Duration::ZERO), &mut batch, PollMode::Other)
                    {
                        tracing::error!("backend flush failed: {e}");
                    }
                    inner.last_reap.store(batch.len(), Ordering::Relaxed);
                    let offered = inner.sched.offer(slot, false, batch.drain(..), out, limit);
                    give_back(&BATCH, batch, BATCH_KEEP);
                    if let Some(r) = self.after_offer(offered) {
                        return r;
                    }
                }
                Next::Got(n) => return Ok(n),
                Next::Closed => return Err(Error::Closed),
                Next::Timeout => return Err(Error::Timeout),
                role @ (Next::Poll | Next::Backup) => {
                    let mode = if role == Next::Poll {
                        PollMode::Poller
                    } else {
                        PollMode::Backup
                    };
                    // The wait hands this thread's submissions over too.
                    HOLDING.with(|h| h.set(false));
                    let mut batch = BATCH.take();
                    inner.in_backend.fetch_add(1, Ordering::SeqCst);
                    // The slice of the wait while handlers are out (below): it
                    // doubles, up to a scheduler tick, while slices end with
                    // nothing held, so a port whose threads run long without
                    // holding anything wakes its poller rarely.
                    let mut slice_len = inner.backend.task_work_check();
                    loop {
                        if inner.closed.load(Ordering::SeqCst) {
                            break;
                        }
                        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                        // While other threads run handlers, completions of requests
                        // they submitted may wait for them (io_uring COOP_TASKRUN):
                        // wait in short slices, and release such work when a slice
                        // ends empty (`sys/uring/taskrun.rs`).
                        // (A poller that begins its wait with no handler out
                        // keeps it unsliced when one starts: waking it then was
                        // measured to cost the skewed load's p99 — see
                        // `sys/uring/taskrun.rs`.)
                        let slice = slice_len
                            .filter(|s| left.is_none_or(|l| *s < l))
                            .filter(|_| inner.sched.handlers_out());
                        let seen = slice.is_some() && inner.backend.task_work_pending();
                        let wait = slice.or(left);
                        if let Err(e) = inner.backend.poll(wait, &mut batch, mode) {
                            tracing::error!("backend poll failed: {e}");
                            break;
                        }
                        if slice.is_some() && batch.is_empty() {
                            slice_len = if inner.backend.kick_task_work(seen) {
                                inner.backend.task_work_check()
                            } else {
                                slice_len.map(|s| (s * 2).min(Duration::from_millis(4)))
                            };
                        }
                        // Woken with nothing to do and nothing changed: a stale
                        // wake-up. Keep the role and wait again, rather than
                        // reshuffling roles between threads.
                        if !batch.is_empty()
                            || deadline.is_some_and(|d| d <= Instant::now())
                            || !inner.sched.idle_wake(slot)
                        {
                            break;
                        }
                    }
                    // The close wake-up may have been consumed here (with completions
                    // or without) while another thread in the backend still sleeps:
                    // pass it on, or that thread never learns of the close.
                    let others = inner.in_backend.fetch_sub(1, Ordering::SeqCst) - 1;
                    if others > 0 && inner.closed.load(Ordering::SeqCst) {
                        inner.backend.notify();
                    }
                    inner.last_reap.store(batch.len(), Ordering::Relaxed);
                    let offered = inner.sched.poll_done(slot, batch.drain(..), out, limit);
                    give_back(&BATCH, batch, BATCH_KEEP);
                    if let Some(r) = self.after_offer(offered) {
                        return r;
                    }
                    if deadline.is_some_and(|d| d <= Instant::now()) {
                        return Err(Error::Timeout);
                    }
                }
            }
        }
    }

    /// After reaped completions were offered to the scheduler: wakes the poller if
    /// asked, and says whether this thread's `get` is over.
    fn after_offer(&self, (got, wake): (Option<Next>, bool)) -> Option<Result<usize>> {
        if wake {
            self.inner.backend.notify();
        }
        match got {
            Some(Next::Got(n)) => Some(Ok(n)),
            Some(Next::Closed) => Some(Err(Error::Closed)),
            _ => None,
        }
    }

    /// Closes the port (IOCP's `CloseHandle` on the port): every waiting thread
    /// wakes with [`Error::Closed`]; queued completions are dropped; operations in
    /// flight are cancelled, and this call returns only when the kernel has released
    /// all of them (so their buffers are freed safely). Idempotent.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (dropped, wake) = self.inner.sched.close();
        if wake || self.inner.in_backend.load(Ordering::SeqCst) > 0 {
            self.inner.backend.notify();
        }
        drop(dropped);
        self.inner.backend.shutdown();
    }

    /// Registers `count` buffers of `size` bytes each with this port (io_uring's
    /// registered, or *fixed*, buffers), for [`Op::read_fixed`](crate::Op::read_fixed) and
    /// [`Op::write_fixed`](crate::Op::write_fixed); see [`FixedBuffers`](crate::FixedBuffers). A port
    /// holds at most [`MAX_FIXED_BUFFERS`](crate::MAX_FIXED_BUFFERS) at once,
    /// each at most [`MAX_FIXED_SIZE`](crate::MAX_FIXED_SIZE) bytes. Zero or
    /// absurd sizes fail with `InvalidInput`; memory the kernel will not pin
    /// (`RLIMIT_MEMLOCK`) fails with `OutOfMemory`, saying so; a closed port
    /// with an error naming it.
    pub fn register_buffers(
        &self,
        count: usize,
        size: usize,
    ) -> std::io::Result<crate::FixedBuffers> {
        if self.is_closed() {
            return Err(std::io::Error::other(Error::Closed.to_string()));
        }
        crate::fixed::register(&self.inner, count, size)
    }

    /// True once `close` has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The scheduler's counters alone (what the pool's monitor reads every tick;
    /// cheaper than [`stats`](Self::stats)).
    pub(crate) fn sched_stats(&self) -> SchedStats {
        self.inner.sched.stats()
    }

    /// Current statistics.
    pub fn stats(&self) -> PortStats {
        let (task_run, task_run_reason, task_work_kicks) = self.inner.backend.task_run();
        PortStats {
            sched: self.inner.sched.stats(),
            in_flight: self.inner.backend.in_flight(),
            op_paths: self.inner.backend.op_paths(),
            task_run,
            task_run_reason,
            task_work_kicks,
        }
    }

    /// Lazy poll-role handoff (see `sched.rs`): only a pool turns it on, because
    /// its monitor is what hands the role over when a handler runs long.
    pub(crate) fn set_lazy_poll(&self, on: bool) {
        self.inner.sched.set_lazy_poll(on);
    }

    /// Lazy release (see `sched.rs`): only a pool turns it on, because its
    /// monitor is what hands held completions out when a handler runs on.
    pub(crate) fn set_hold(&self, hold: usize) {
        self.inner.sched.set_hold(hold);
    }

    /// Runs the stall detector once (the pool's monitor thread calls this),
    /// sends an idle thread to poll if nobody has for `delay` while a handler
    /// runs, and hands out completions lazy release has held back for `delay`
    /// or longer. Returns when to look again if the poll role is vacant behind
    /// a running handler (`None` otherwise).
    pub(crate) fn stall_scan(&self, threshold: Duration, delay: Duration) -> Option<Duration> {
        let now = Instant::now();
        // Held completions first: once they are handed out, `poll_scan` may
        // send an idle thread to poll in the same pass (it leaves a non-empty
        // queue alone). They are not watched closely (no earlier look for
        // them): ticking every 125 µs while completions were held woke the
        // monitor 1,400–2,100 times a second in `serve` and preempted the
        // workers (session 11).
        let released = self.inner.sched.release_scan(now, delay);
        let watch = self.inner.sched.poll_scan(now, delay);
        let (_, wake) = self.inner.sched.stall_scan(now, threshold);
        if wake || released {
            self.inner.backend.notify();
        }
        if self.inner.backend.has_unflushed() {
            self.inner.backend.flush();
        }
        watch
    }

    /// This thread now waits on this port, after another: as in IOCP (iocp.md
    /// §1.3), that ends its association with every other port. It no longer
    /// counts as running there (another thread may take that port's next
    /// packet), and what it submitted there and held back for its next `get`
    /// goes to the kernel now.
    fn leave_others(&self) {
        for (port, slot) in thread_ports(Some(self.inner.id)) {
            if port.backend.has_unflushed() {
                port.backend.flush();
            }
            if port.sched.leave(slot) {
                port.backend.notify();
            }
        }
        HOLDING.with(|h| h.set(false));
    }

    /// This thread's scheduler slot on this port, registering it on first use.
    fn slot(&self) -> SlotId {
        THREAD_SLOTS.with(|regs| {
            let mut regs = regs.borrow_mut();
            if let Some(r) = regs.0.iter().find(|r| r.port_id == self.inner.id) {
                return r.slot;
            }
            regs.0.retain(|r| r.port.strong_count() > 0);
            let slot = self.inner.sched.register();
            regs.0.push(Registration {
                port_id: self.inner.id,
                port: Arc::downgrade(&self.inner),
                slot,
            });
            slot
        })
    }
}

impl PortInner {
    /// The port's backend.
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl Drop for PortInner {
    fn drop(&mut self) {
        let (dropped, _) = self.sched.close();
        drop(dropped);
        self.backend.shutdown();
    }
}

/// One thread's registration with one port.
struct Registration {
    port_id: u64,
    port: Weak<PortInner>,
    slot: SlotId,
}

/// A thread's registrations; on thread exit each is released (a thread that exits
/// while counted as running gives its slot back).
struct Registrations(Vec<Registration>);

impl Drop for Registrations {
    fn drop(&mut self) {
        for r in self.0.drain(..) {
            if let Some(port) = r.port.upgrade() {
                if port.sched.unregister(r.slot) {
                    port.backend.notify();
                }
            }
        }
    }
}

thread_local! {
    static THREAD_SLOTS: RefCell<Registrations> = const { RefCell::new(Registrations(Vec::new())) };
    /// Set on pool worker threads: their submissions are batched until their next
    /// `get`, which they are certain to make.
    static DEFER_SUBMIT: Cell<bool> = const { Cell::new(false) };
    /// This thread holds submissions it has not handed to the kernel yet (to
    /// its home port).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    /// The port this thread last waited on (0: none): the only one its
    /// submissions are held back for, as it is the one whose `get` it comes
    /// back to.
    pub(crate) static HOME: Cell<u64> = const { Cell::new(0) };
    /// How deep in [`blocking`] calls this thread is: only the outermost one
    /// releases and takes back the concurrency slots (an inner one returning
    /// must not count the thread as running while the outer still blocks).
    static BLOCKING_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The thread's buffer for completions reaped by one wait, kept between
    /// waits (an allocation and a free per wait otherwise).
    static BATCH: Cell<Vec<Completion>> = const { Cell::new(Vec::new()) };
}

/// The live ports this thread is registered with (but `except`), with its
/// slot on each.
fn thread_ports(except: Option<u64>) -> Vec<(Arc<PortInner>, SlotId)> {
    THREAD_SLOTS.with(|regs| {
        regs.borrow()
            .0
            .iter()
            .filter(|r| Some(r.port_id) != except)
            .filter_map(|r| r.port.upgrade().map(|p| (p, r.slot)))
            .collect()
    })
}

/// Room kept in a thread's reaping buffer (`BATCH`) between waits.
const BATCH_KEEP: usize = 256;

/// Promises that the calling thread outlives every operation it submits (or
/// the ports it submits them to), so it may hand them to the kernel itself.
///
/// io_uring ties a request to the thread that submitted it and stops serving
/// it when that thread exits; so a port's io_uring backend lets only threads
/// it knows will stay (pool workers, a thread inside `Runtime::block_on`) enter
/// the kernel with requests, and hands any other thread's submissions to a
/// submitter thread of its own — one thread hop per batch. A program whose
/// own long-lived thread submits and dequeues (a benchmark loop, a hand-made
/// event loop) calls this once to skip that hop. Promising it on a thread that
/// then exits with operations in flight leaves those operations stuck
/// (io_uring) until they are cancelled. The epoll backend ignores it.
pub fn long_lived_thread() {
    crate::sys::own_thread();
}

/// Turns submission batching on or off for the calling thread.
///
/// With batching on, operations this thread submits are handed to the kernel at
/// its next `get`, `get_many` or [`blocking`] call (or by the pool's monitor),
/// together, in one system call, instead of one system call each. Pool workers
/// have it on. Turn it on only on a thread that is certain to call `get` again
/// soon; otherwise its operations may wait until another thread enters the port.
pub fn batch_submissions(on: bool) {
    DEFER_SUBMIT.with(|d| d.set(on));
}

/// Runs `f`, telling every port this thread is running on that it is about to
/// block: its concurrency slot is released for the duration, so another waiting
/// thread may run (IOCP's kernel does this by itself when a thread blocks; Linux
/// gives no such signal, so say it). When `f` returns the thread counts as running
/// again, even if that briefly puts more than N threads to work.
///
/// ```
/// let v = ringport::blocking(|| std::fs::read_to_string("/proc/self/stat").map(|s| s.len()));
/// assert!(v.unwrap() > 0);
/// ```
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            BLOCKING_DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    let outer = BLOCKING_DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    let _depth = Depth;
    if !outer {
        // Nested: the outermost call released the slots already and takes
        // them back when it returns.
        return f();
    }
    // A task this runtime worker woke into its next slot would wait behind
    // the blocking call: it goes to the port, for another worker.
    crate::rt::before_blocking();
    let ports = thread_ports(None);
    HOLDING.with(|h| h.set(false));
    for (port, slot) in &ports {
        if port.backend.has_unflushed() {
            port.backend.flush();
        }
        if port.sched.block_begin(*slot) {
            port.backend.notify();
        }
    }
    struct End<'a>(&'a [(Arc<PortInner>, SlotId)]);
    impl Drop for End<'_> {
        fn drop(&mut self) {
            for (port, slot) in self.0 {
                port.sched.block_end(*slot);
            }
        }
    }
    let _end = End(&ports);
    f()
}

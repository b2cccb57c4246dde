//! The IOCP scheduler core: the running count, the LIFO stack of idle threads and
//! the FIFO queue of completions (SPEC §2). It knows nothing of kernels: the port
//! feeds it completions and asks it, for each thread calling `get`, whether that
//! thread takes a completion, waits, or goes to poll the backend.
//!
//! # The state and its invariants (all under one mutex)
//!
//! * `running` = the number of slots whose `run` is `Running`. It may exceed `max`
//!   only transiently, when a thread returns from `blocking` (as IOCP allows);
//!   no new completion is handed out while `running >= max`.
//! * `queue` holds completions nobody has taken yet, oldest first.
//! * `waiters` holds the ids of idle threads waiting on their condvar, most recently
//!   idle last (the top). A slot is on the stack iff its handoff is `None` and it is
//!   blocked in `dequeue`.
//! * `poller` names the one idle thread (not on the stack) that owns the right
//!   to wait in the backend for kernel completions. A thread that comes back
//!   with submissions it has not handed to the kernel yet takes the role over
//!   (it submits and waits in one system call, and on io_uring the kernel work
//!   for its own requests then runs in its own wait); the deposed poller keeps
//!   waiting until the next completion wakes it, then retires to the stack.
//! * `backup` names at most one more idle thread waiting in the backend, but only
//!   for completions that pile up (see `Backend::poll`'s `Backup` mode). While
//!   the poller runs a handler, the backup covers for it without being woken by
//!   every completion, and with a long handler the completions behind it are
//!   still taken. It is switched off for now (see docs/design.md: io_uring
//!   counts completions posted since a wait began, not ones left unreaped, so a
//!   backup still wakes for every other completion, and a completion was seen to
//!   stall with it on); the scheduler and its loom model keep it. Whenever the queue is
//!   empty and some thread is idle, somebody polls: `dispatch` hands the role to the
//!   top waiter if the poller leaves.
//! * Handing out: a completion is handed to the top waiter (LIFO) only while
//!   `running < max`; the giver increments `running` on the taker's behalf, so the
//!   count never lags the handoff.
//! * Lazy release (opt-in, `hold > 0`; only a pool with a monitor turns it on):
//!   while `running > 0` and at most `hold` completions are queued, nobody is
//!   released for them (no handoff, no notification): a running thread takes
//!   them at its next dequeue. This waives IOCP's rule that a completion queued
//!   while fewer than `max` run releases a waiter at once. `held_since` says
//!   since when the queue has been held without a break: every change that can
//!   start or end a hold (`dispatch`, `take`, `push_with` without dispatch,
//!   `block_end`) ends in `note_hold`, which stamps it if it is `None` while
//!   holding and clears it otherwise. The monitor's `release_scan` hands held
//!   completions out if that is `delay` or longer ago when it looks (every half
//!   stall threshold while handlers run; up to 4 × the threshold after the port
//!   was idle): a held completion waits at most about that long behind a
//!   handler that runs on, and so may a kernel completion, since nobody is
//!   sent to poll while completions are queued (`poll_scan`). More than `hold`
//!   queued releases at once, as before.
//!
//! The poller itself is woken by the backend (a kernel completion, or
//! `Backend::notify`). `dispatch` returns `true` when the poller must be notified:
//! completions are queued and not held, a slot is free, and no waiter is left
//! to take them.
//! `poller_notified` is true only while a notification is owed to the current
//! poller and not yet seen by it: it is cleared whenever a thread takes the
//! role, any thread that waited in the backend as poller returns from it (a
//! deposed one may have spent the notification sent to its successor), or the
//! poller goes back to its wait (`idle_wake`) — every point where a
//! notification may have been spent. Clearing it costs at most one extra
//! notification; keeping it set when one was spent loses the next wake-up.

use std::time::{Duration, Instant};

use crate::sync::model::{lock, Arc, Condvar, Mutex};

mod prio;
use prio::PrioQueue;
pub(crate) use prio::Prioritized;
pub use prio::{Priority, AGE_LIMIT};

/// A thread's registration with one scheduler.
pub(crate) type SlotId = usize;

/// What a registered thread is doing, as the port sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// Not counted: waiting, polling, or not using the port.
    Idle,
    /// Counted as running since the instant it dequeued.
    Running(Instant),
    /// Inside `ringport::blocking`: not counted.
    Blocking,
    /// Caught by the stall detector: not counted until it comes back.
    Stalled,
}

#[derive(Debug)]
enum Handoff<T> {
    None,
    Item(T),
    Poll,
}

#[derive(Debug)]
struct Slot<T> {
    run: Run,
    handoff: Handoff<T>,
    cv: Arc<Condvar>,
}

/// Counters a test or `ringport info` can read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
// Fields are added as the port learns to count more: built only here.
#[non_exhaustive]
pub struct SchedStats {
    /// Threads counted as running now.
    pub running: usize,
    /// The most threads ever counted as running at once.
    pub peak_running: usize,
    /// Threads the stall detector counted as blocked.
    pub stalls: u64,
    /// Completions handed directly to a waiting thread.
    pub handoffs: u64,
    /// Completions queued and not yet taken.
    pub queued: usize,
    /// Times a thread with fresh submissions took the poll role over.
    pub poll_steals: u64,
    /// Times lazy release handed out completions it had held back for a
    /// running thread (to a waiter, or by waking the poller), because they
    /// waited too long (see
    /// [`PoolBuilder::lazy_release`](crate::PoolBuilder::lazy_release)).
    pub releases: u64,
}

#[derive(Debug)]
struct State<T> {
    queue: PrioQueue<T>,
    running: usize,
    max: usize,
    waiters: Vec<SlotId>,
    slots: Vec<Option<Slot<T>>>,
    free_slots: Vec<SlotId>,
    poller: Option<SlotId>,
    poller_notified: bool,
    backup: Option<SlotId>,
    /// Whether the backend can hold a backup poller (it needs a wait that ignores
    /// a lone completion for a while; io_uring's min-wait does that).
    backup_enabled: bool,
    /// Lazy poll-role handoff (pools only): while a thread runs a handler it will
    /// come back and poll, so the role is not handed to a sleeping thread at once
    /// (a wake-up per completion); the pool's monitor hands it over if the
    /// handler runs long (`poll_scan`).
    lazy_poll: bool,
    /// Lazy release: completions that may wait for a running thread instead of
    /// releasing a waiter (0 = off, IOCP's immediate release). See the module
    /// docs.
    hold: usize,
    /// Since when completions have been held back by lazy release without a
    /// break (`None` while nothing is held; see `note_hold`).
    held_since: Option<Instant>,
    /// Since when nobody has held the poll role: set when a poller leaves it to
    /// run a completion, cleared whenever a thread takes it. The monitor hands the
    /// role over only once this is old (`poll_scan`) — not merely because some
    /// handler runs long while other threads keep coming back to poll.
    vacant_since: Option<Instant>,
    closed: bool,
    /// Completions handed out from the queue since a thread last looked at
    /// the backend (polled, or offered what it reaped); see `POLL_EVERY`.
    since_poll: u32,
    stats: SchedStats,
}

/// What `dequeue` tells the calling thread to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// `n` completions were appended to the output; the thread is now running.
    Got(usize),
    /// The thread holds the poll role: wait in the backend, then call `poll_done`.
    Poll,
    /// The thread holds the backup role: wait in the backend for completions that
    /// pile up, then call `poll_done`.
    Backup,
    /// The port is closed.
    Closed,
    /// The deadline passed with nothing to take.
    Timeout,
    /// The thread would have to sleep but said it may not (it holds unsubmitted
    /// work): it should flush and call again.
    WouldSleep,
    /// Completions are queued, but nobody has looked at the backend for
    /// [`POLL_EVERY`] dequeues: the thread should gather what the backend has
    /// ready (without waiting), offer it, and take from the queue's front.
    PollFirst,
}

/// Dequeues from a queue that never drains between two looks at the backend,
/// at most, while no thread holds the poll role. The queue is served first
/// (FIFO), but completions the kernel has ready are only queued when somebody
/// looks: a port whose threads always find work queued — work its handlers
/// keep making, such as stream reads done inline — would otherwise starve
/// every operation waiting on the kernel (measured: async echo on epoll at
/// 1000 connections, p99 110–140 ms against 22–25 ms). tokio's scheduler
/// polls its driver every 61 ticks for the same reason.
pub(crate) const POLL_EVERY: u32 = 61;

/// The scheduler core, generic over the completion type so loom can check it alone.
#[derive(Debug)]
pub(crate) struct Sched<T> {
    state: Mutex<State<T>>,
}

impl<T: Prioritized> Sched<T> {
    #[cfg(any(test, loom))]
    pub(crate) fn new(max: usize) -> Self {
        Self::with_backup(max, false)
    }

    /// A scheduler whose idle threads may also hold the backup role.
    pub(crate) fn with_backup(max: usize, backup_enabled: bool) -> Self {
        Sched {
            state: Mutex::new(State {
                queue: PrioQueue::new(),
                running: 0,
                max: max.max(1),
                waiters: Vec::new(),
                slots: Vec::new(),
                free_slots: Vec::new(),
                poller: None,
                poller_notified: false,
                backup: None,
                backup_enabled,
                lazy_poll: false,
                hold: 0,
                held_since: None,
                vacant_since: None,
                closed: false,
                since_poll: 0,
                stats: SchedStats::default(),
            }),
        }
    }

    /// Registers a thread; it starts idle.
    pub(crate) fn register(&self) -> SlotId {
        let mut st = lock(&self.state);
        let slot = Slot {
            run: Run::Idle,
            handoff: Handoff::None,
            cv: Arc::new(Condvar::new()),
        };
        match st.free_slots.pop() {
            Some(id) => {
                st.slots[id] = Some(slot);
                id
            }
            None => {
                st.slots.push(Some(slot));
                st.slots.len() - 1
            }
        }
    }

    /// Forgets a thread (it exited): its running slot, if counted, is released.
    /// Returns true if the backend's poller must be notified.
    pub(crate) fn unregister(&self, id: SlotId) -> bool {
        let mut st = lock(&self.state);
        st.release(id);
        st.slots[id] = None;
        st.free_slots.push(id);
        st.dispatch()
    }

    /// Dequeues up to `limit` completions into `out` (IOCP's GQCS / GQCSEx).
    ///
    /// First releases the caller's running slot if it was counted (a thread counts as
    /// running from its dequeue until it calls `get` again). The second value is
    /// true if the backend's poller must be notified.
    pub(crate) fn dequeue(
        &self,
        id: SlotId,
        out: &mut Vec<T>,
        limit: usize,
        deadline: Option<Instant>,
        may_sleep: bool,
    ) -> (Next, bool) {
        let mut st = lock(&self.state);
        // The caller takes first (IOCP's KeRemoveQueue checks the queue before it
        // wakes anyone): releasing our own slot must not hand our next packet away.
        st.release(id);
        let mut wake = false;
        {
            if st.closed {
                return (Next::Closed, wake);
            }
            if st.running < st.max && !st.queue.is_empty() {
                st.since_poll += 1;
                if st.since_poll > POLL_EVERY && st.poller.is_none() {
                    st.since_poll = 0;
                    return (Next::PollFirst, wake);
                }
                let n = st.take(id, out, limit);
                if limit > 1 {
                    // A batch held to its share leaves the rest to idle threads.
                    wake |= st.dispatch();
                }
                return (Next::Got(n), wake);
            }
            if st.queue.is_empty() && (st.poller.is_none() || !may_sleep) {
                if st.poller.is_some() {
                    st.stats.poll_steals += 1;
                }
                st.poller = Some(id);
                st.vacant_since = None;
                st.poller_notified = false;
                st.since_poll = 0;
                return (Next::Poll, wake);
            }
            if st.queue.is_empty() && st.backup_enabled && st.backup.is_none() {
                st.backup = Some(id);
                return (Next::Backup, wake);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                wake |= st.dispatch();
                return (Next::Timeout, wake);
            }
            if !may_sleep {
                return (Next::WouldSleep, wake);
            }
            // Wait on our own condvar, on top of the LIFO stack.
            let cv = st.slot(id).cv.clone();
            st.waiters.push(id);
            loop {
                st = match deadline {
                    None => cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        cv.wait_timeout(st, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
                match std::mem::replace(&mut st.slot_mut(id).handoff, Handoff::None) {
                    Handoff::Item(t) => {
                        // The giver counted us as running already.
                        out.push(t);
                        let rest = st.share(limit.saturating_sub(1), 1);
                        let more = st.drain_more(out, rest);
                        st.slot_mut(id).run = Run::Running(Instant::now());
                        return (Next::Got(1 + more), wake);
                    }
                    Handoff::Poll => return (Next::Poll, wake),
                    Handoff::None => {}
                }
                if st.closed {
                    st.waiters.retain(|&w| w != id);
                    return (Next::Closed, wake);
                }
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    st.waiters.retain(|&w| w != id);
                    // Leaving the stack may leave the queue with nobody polling.
                    wake |= st.dispatch();
                    return (Next::Timeout, wake);
                }
            }
        }
    }

    /// The poller is back from the backend with `items`. It gets first pick (it is
    /// awake already, so no handoff is needed); the rest go to waiters, newest first.
    /// Returns what the poller should do next, and whether to notify a poller.
    pub(crate) fn poll_done(
        &self,
        id: SlotId,
        items: impl IntoIterator<Item = T>,
        out: &mut Vec<T>,
        limit: usize,
    ) -> (Option<Next>, bool) {
        self.offer(id, true, items, out, limit)
    }

    /// Like `poll_done`, for a thread that reaped completions without holding the
    /// poll role (it flushed its own submissions instead of sleeping): it gets
    /// first pick of what it reaped, and the rest is dispatched.
    pub(crate) fn offer(
        &self,
        id: SlotId,
        was_poller: bool,
        items: impl IntoIterator<Item = T>,
        out: &mut Vec<T>,
        limit: usize,
    ) -> (Option<Next>, bool) {
        let mut st = lock(&self.state);
        // A thread back from the backend may have spent a notification — its
        // own, or, if it was deposed, the one sent to the thread that took the
        // role over (which then sleeps through it): count none as owed, and
        // `dispatch` below sends one if it is still needed.
        if was_poller {
            st.poller_notified = false;
        }
        // A deposed poller (another thread took the role over) leaves it alone.
        if was_poller && st.poller == Some(id) {
            st.poller = None;
            st.vacant_since = Some(Instant::now());
        }
        if was_poller && st.backup == Some(id) {
            st.backup = None;
        }
        if st.closed {
            return (Some(Next::Closed), false);
        }
        st.since_poll = 0;
        st.queue.extend(items);
        let got = if st.running < st.max && !st.queue.is_empty() {
            Some(Next::Got(st.take(id, out, limit)))
        } else {
            None
        };
        let wake = st.dispatch();
        (got, wake)
    }

    /// Whether a poller (or backup) woken with nothing may simply wait again: it
    /// still holds its role, nothing is queued, and the port is open.
    ///
    /// If so, any notification sent to it counts as spent (it may be the one
    /// that woke it: another thread took the completion it was sent for), so
    /// the next completion that needs the poller notifies it again. Keeping
    /// `poller_notified` set here lost that wake-up: a pool hung with a packet
    /// queued, a free slot and its poller asleep. (A notification still in
    /// flight only makes a later wait end early, with nothing: harmless.)
    pub(crate) fn idle_wake(&self, id: SlotId) -> bool {
        let mut st = lock(&self.state);
        let again =
            !st.closed && st.queue.is_empty() && (st.poller == Some(id) || st.backup == Some(id));
        if again {
            st.poller_notified = false;
        }
        again
    }

    /// Whether any registered thread is out running a handler (counted, or
    /// caught by the stall detector): such a thread may hold completion work of
    /// requests it submitted (see `sys/uring/taskrun.rs`). A thread inside
    /// `blocking` is not counted: it sleeps in the kernel, which wakes it for
    /// its own work.
    pub(crate) fn handlers_out(&self) -> bool {
        let st = lock(&self.state);
        st.running > 0 || st.slots.iter().flatten().any(|s| s.run == Run::Stalled)
    }

    /// Whether a thread other than `id` holds the poller or backup role (and so may
    /// be waiting in the backend for a wake-up that `id` consumed).
    #[cfg(loom)]
    pub(crate) fn other_waiter(&self, id: SlotId) -> bool {
        let st = lock(&self.state);
        st.poller.is_some_and(|p| p != id) || st.backup.is_some_and(|b| b != id)
    }

    /// Queues a completion (a posted packet, or one reaped outside the poller).
    pub(crate) fn push(&self, item: T) -> bool {
        self.push_with(item, true)
    }

    /// Queues a completion; with `dispatch = false` nobody is woken for it (the
    /// caller is a running thread that takes it at its next dequeue; the stall
    /// detector, or lazy release's `release_scan`, hands it on if that thread
    /// runs on).
    /// Every item goes in its own priority lane (see `prio.rs`).
    pub(crate) fn push_with(&self, item: T, dispatch: bool) -> bool {
        let mut st = lock(&self.state);
        if st.closed {
            return false;
        }
        st.queue.push_back(item);
        if dispatch {
            st.dispatch()
        } else {
            st.note_hold();
            false
        }
    }

    /// The thread is about to block (`ringport::blocking`): its slot is released.
    pub(crate) fn block_begin(&self, id: SlotId) -> bool {
        let mut st = lock(&self.state);
        match st.slot(id).run {
            Run::Running(_) => {
                st.running -= 1;
                st.slot_mut(id).run = Run::Blocking;
                st.dispatch()
            }
            Run::Stalled => {
                st.slot_mut(id).run = Run::Blocking;
                false
            }
            Run::Idle | Run::Blocking => false,
        }
    }

    /// The thread waits on another port now (IOCP ends its association with
    /// this one): no longer counted as running. True if the poller must be
    /// notified.
    pub(crate) fn leave(&self, id: SlotId) -> bool {
        let mut st = lock(&self.state);
        match st.slot(id).run {
            Run::Running(_) | Run::Stalled => {
                st.release(id);
                st.dispatch()
            }
            // Inside `blocking`: not counted; waiting on another port ends the
            // association, so it is not counted again when `blocking` ends.
            Run::Blocking => {
                st.slot_mut(id).run = Run::Idle;
                false
            }
            Run::Idle => false,
        }
    }

    /// The thread is back from blocking: counted as running again, unconditionally
    /// (running may exceed `max` for a while, as in IOCP).
    pub(crate) fn block_end(&self, id: SlotId) {
        let mut st = lock(&self.state);
        if st.slot(id).run == Run::Blocking {
            st.running += 1;
            st.stats.peak_running = st.stats.peak_running.max(st.running);
            st.slot_mut(id).run = Run::Running(Instant::now());
            st.note_hold();
        }
    }

    /// The stall detector: while completions wait, a thread that has been running one
    /// handler for `threshold` or longer is counted as blocked and its slot released.
    /// Returns the number caught now and whether to notify the poller.
    pub(crate) fn stall_scan(&self, now: Instant, threshold: Duration) -> (usize, bool) {
        let mut st = lock(&self.state);
        if st.queue.is_empty() {
            return (0, false);
        }
        let mut caught = 0;
        for slot in st.slots.iter_mut().flatten() {
            if let Run::Running(since) = slot.run {
                if now.saturating_duration_since(since) >= threshold {
                    slot.run = Run::Stalled;
                    caught += 1;
                }
            }
        }
        st.running -= caught;
        st.stats.stalls += caught as u64;
        (caught, if caught > 0 { st.dispatch() } else { false })
    }

    /// Turns lazy poll-role handoff on (see `State::lazy_poll`).
    pub(crate) fn set_lazy_poll(&self, on: bool) {
        lock(&self.state).lazy_poll = on;
    }

    /// The monitor's half of lazy handoff: if the poll role has been vacant for
    /// `delay` or longer while a thread runs a handler, the newest idle thread
    /// takes it, so completions behind a long handler do not wait for it. Returns
    /// when the monitor should look again: `Some(left)` while the role is vacant
    /// behind a running handler (the rest of `delay`), `None` otherwise.
    ///
    /// The age of the vacancy, not the age of the oldest handler, decides: while
    /// one thread runs a long handler, another that runs short ones takes the
    /// role back after each, and handing it to a third would only wake threads.
    /// The clock runs on while running threads work through queued completions:
    /// a vacancy that outlives the queue means every running thread is in a long
    /// handler, and the role is handed over at once.
    pub(crate) fn poll_scan(&self, now: Instant, delay: Duration) -> Option<Duration> {
        let mut st = lock(&self.state);
        // Completions already queued are the stall detector's business (and,
        // held ones, `release_scan`'s, which the monitor runs first): polling
        // would not get them taken sooner. Watching a held queue closely was
        // measured to cost more than it saved (see `Port::stall_scan`).
        if !st.lazy_poll
            || st.closed
            || st.poller.is_some()
            || st.waiters.is_empty()
            || st.running == 0
            || !st.queue.is_empty()
        {
            return None;
        }
        let since = *st.vacant_since.get_or_insert(now);
        let age = now.saturating_duration_since(since);
        if age < delay {
            return Some(delay - age);
        }
        let id = st.waiters.pop().expect("waiters is not empty");
        st.poller = Some(id);
        st.vacant_since = None;
        st.poller_notified = false;
        let slot = st.slot_mut(id);
        slot.handoff = Handoff::Poll;
        slot.cv.notify_one();
        None
    }

    /// Turns lazy release on with `hold` > 0 (see the module docs), or off.
    pub(crate) fn set_hold(&self, hold: usize) {
        let mut st = lock(&self.state);
        st.hold = hold;
        st.held_since = None;
    }

    /// The monitor's half of lazy release: completions held back for a running
    /// thread for `delay` or longer are handed out (to waiters, newest first, or
    /// by notifying the poller), as IOCP would have at once. A hold younger
    /// than `delay` is left alone: the running thread is likely to come back
    /// for it first. Returns whether the poller must be notified.
    pub(crate) fn release_scan(&self, now: Instant, delay: Duration) -> bool {
        let mut st = lock(&self.state);
        if st.closed || !st.holding() {
            return false;
        }
        let since = *st.held_since.get_or_insert(now);
        if now.saturating_duration_since(since) < delay {
            return false;
        }
        let handoffs = st.stats.handoffs;
        let wake = st.dispatch_with(true);
        if wake || st.stats.handoffs != handoffs {
            st.stats.releases += 1;
        }
        wake
    }

    /// Closes: every waiter wakes with `Closed`; queued completions are returned so
    /// the caller drops them outside the lock. Returns them and whether a poller
    /// must be woken.
    pub(crate) fn close(&self) -> (Vec<T>, bool) {
        let mut st = lock(&self.state);
        st.closed = true;
        for id in std::mem::take(&mut st.waiters) {
            st.slot(id).cv.notify_one();
        }
        let waiting = st.poller.is_some() || st.backup.is_some();
        (st.queue.drain_all(), waiting)
    }

    #[cfg(loom)]
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    pub(crate) fn stats(&self) -> SchedStats {
        let st = lock(&self.state);
        SchedStats {
            running: st.running,
            queued: st.queue.len(),
            ..st.stats
        }
    }

    /// The concurrency value N.
    pub(crate) fn max(&self) -> usize {
        lock(&self.state).max
    }

    /// Whether no completion is queued (none waits for a thread).
    pub(crate) fn nothing_queued(&self) -> bool {
        lock(&self.state).queue.is_empty()
    }

    /// Whether a completion not yet queued could be taken before what is:
    /// something is queued, none of it `High`, and the port is open.
    pub(crate) fn could_be_overtaken(&self) -> bool {
        let st = lock(&self.state);
        !st.closed && !st.queue.is_empty() && !st.queue.has_high()
    }
}

impl<T: Prioritized> State<T> {
    fn slot(&self, id: SlotId) -> &Slot<T> {
        self.slots[id].as_ref().expect("registered slot")
    }

    fn slot_mut(&mut self, id: SlotId) -> &mut Slot<T> {
        self.slots[id].as_mut().expect("registered slot")
    }

    /// The caller called `get` again: it stops counting as running.
    fn release(&mut self, id: SlotId) {
        let slot = self.slot_mut(id);
        let was = std::mem::replace(&mut slot.run, Run::Idle);
        if let Run::Running(_) = was {
            self.running -= 1;
        }
    }

    /// Whether lazy release holds the queued completions back now: some are
    /// queued, no more than `hold`, and a running thread will come back for
    /// them.
    fn holding(&self) -> bool {
        self.hold > 0 && self.running > 0 && !self.queue.is_empty() && self.queue.len() <= self.hold
    }

    /// Takes up to `limit` queued items for `id`, which becomes running.
    fn take(&mut self, id: SlotId, out: &mut Vec<T>, limit: usize) -> usize {
        let limit = self.share(limit, 0);
        let n = self.drain_more(out, limit.max(1));
        self.running += 1;
        self.stats.peak_running = self.stats.peak_running.max(self.running);
        self.slot_mut(id).run = Run::Running(Instant::now());
        self.note_hold();
        n
    }

    /// Keeps `held_since` true to its meaning after a change: stamped now if a
    /// hold begins, kept while it lasts, cleared when it ends.
    fn note_hold(&mut self) {
        if !self.holding() {
            self.held_since = None;
        } else if self.held_since.is_none() {
            self.held_since = Some(Instant::now());
        }
    }

    /// A batch's fair share: of `limit` items asked for, no more than the
    /// queue split evenly between the taker and the idle threads that free
    /// slots would let run them now (`counted`: 1 if the taker is counted in
    /// `running` already, else 0). Taking more would leave those threads
    /// idle while the taker works through a batch alone.
    fn share(&self, limit: usize, counted: usize) -> usize {
        if limit <= 1 {
            return limit;
        }
        let free = (self.max + counted).saturating_sub(self.running + 1);
        let helpers = free.min(self.waiters.len());
        limit.min(self.queue.len().div_ceil(helpers + 1))
    }

    fn drain_more(&mut self, out: &mut Vec<T>, limit: usize) -> usize {
        self.queue.take_into(out, limit)
    }

    /// Hands queued completions to waiters (newest first) while slots are free, gives
    /// the poll role to the newest waiter if nobody polls, and says whether the
    /// poller must be notified because completions wait with no waiter to take them.
    ///
    /// With lazy release on, completions a running thread will come back for are
    /// held instead (see `holding`), unless `force` (the monitor's
    /// `release_scan`).
    fn dispatch(&mut self) -> bool {
        self.dispatch_with(false)
    }

    fn dispatch_with(&mut self, force: bool) -> bool {
        if self.closed {
            return false;
        }
        let hold = !force && self.holding();
        while !hold && self.running < self.max && !self.queue.is_empty() {
            let Some(id) = self.waiters.pop() else { break };
            let item = self.queue.pop_front().expect("queue is not empty");
            self.running += 1;
            self.stats.peak_running = self.stats.peak_running.max(self.running);
            self.stats.handoffs += 1;
            let slot = self.slot_mut(id);
            slot.handoff = Handoff::Item(item);
            slot.cv.notify_one();
        }
        // Somebody must wait for the kernel when the queue is empty — unless a
        // running thread will come back to do it and a backup covers meanwhile.
        if self.queue.is_empty()
            && self.poller.is_none()
            && (self.running == 0 || (self.backup.is_none() && !self.lazy_poll))
        {
            if let Some(id) = self.waiters.pop() {
                self.poller = Some(id);
                self.vacant_since = None;
                self.poller_notified = false;
                let slot = self.slot_mut(id);
                slot.handoff = Handoff::Poll;
                slot.cv.notify_one();
            }
        }
        // A forced release that could hand nothing out keeps the stamp: the
        // next look tries again.
        self.note_hold();
        if !hold
            && (self.poller.is_some() || self.backup.is_some())
            && !self.poller_notified
            && !self.queue.is_empty()
            && self.running < self.max
        {
            self.poller_notified = true;
            return true;
        }
        false
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;

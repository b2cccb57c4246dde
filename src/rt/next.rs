//! A worker's "next" slot: the task it woke while handling a packet, run on the
//! same thread as soon as the handler returns (see the module docs of `rt`).
//!
//! The slot belongs to one worker, but what it holds is not hidden from the
//! others. A task must not sit there behind a handler that no longer returns
//! soon while other workers idle (IOCP: a woken packet goes to whichever thread
//! is free). Three ways out, each of which posts the task to the port, where any
//! worker may take it:
//!
//! * the handler calls [`blocking`](crate::blocking): [`flush`] runs first;
//! * the handler unwinds: `handle_packet`'s guard calls [`flush`];
//! * the handler runs long without saying so (a stall): the pool's monitor
//!   calls [`Slots::steal_stuck`] each time it looks, which takes a task that
//!   has sat in a slot for the stall threshold.
//!
//! **Invariant** (the one that makes every task run exactly once per
//! schedule): a slot's `key` is `EMPTY` or the key of the task its worker's
//! thread-local `Local::task` holds. Whoever swaps a non-empty key out of
//! `key` — the worker in [`take`], or the monitor in `steal_stuck` — owns
//! that schedule and runs or posts it; the other side finds `EMPTY` and does
//! nothing with it. A `Local::task` whose slot says `EMPTY` was stolen; its
//! worker drops that reference without running it.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::sync::lock;
use crate::sync::model::AtomicU64;

use super::task::TaskRef;
use super::Shared;

/// `Published::key` when the slot is empty. (A registry key is never all
/// ones: that would take 2³² live tasks in one shard.)
const EMPTY: u64 = u64::MAX;

/// The part of a worker's slot the monitor sees.
#[derive(Debug)]
struct Published {
    /// The key of the task in the slot, or `EMPTY` (see the invariant above).
    key: AtomicU64,
    /// How many tasks the worker has put in the slot. Written by the worker
    /// only: the monitor tells from it whether the task it sees is the one it
    /// saw last time.
    puts: AtomicU64,
    /// The monitor's own note: the `puts` it last saw, and since when.
    seen: Mutex<(u64, Instant)>,
}

impl Published {
    fn new() -> Published {
        Published {
            key: AtomicU64::new(EMPTY),
            puts: AtomicU64::new(0),
            seen: Mutex::new((0, Instant::now())),
        }
    }

    /// The worker put the task `key` in its (empty) slot.
    fn publish(&self, key: u64) {
        debug_assert_ne!(key, EMPTY);
        self.puts
            .store(self.puts.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // A swap, not a store: the claims are swaps too, and loom (0.7)
        // loses a plain store that races them (its model let a later swap
        // of this thread read past it).
        let old = self.key.swap(key, Ordering::AcqRel);
        debug_assert_eq!(old, EMPTY);
    }

    /// The slot holds a task not yet claimed (by either side).
    fn is_full(&self) -> bool {
        self.key.load(Ordering::Acquire) != EMPTY
    }

    /// Takes the slot's schedule: the key, if nobody took it first.
    fn claim(&self) -> Option<u64> {
        match self.key.swap(EMPTY, Ordering::AcqRel) {
            EMPTY => None,
            key => Some(key),
        }
    }
}

/// Every worker's slot of one runtime, for the monitor.
#[derive(Debug, Default)]
pub(crate) struct Slots(Mutex<Vec<Arc<Published>>>);

impl Slots {
    /// Posts each task that has sat in its slot for `limit` or longer (its
    /// worker has been in one handler since it was put there). Called by the
    /// pool's monitor each time it looks.
    pub(crate) fn steal_stuck(&self, shared: &Shared, limit: Duration) {
        let slots = lock(&self.0);
        let mut now = None;
        for p in slots.iter() {
            if !p.is_full() {
                continue;
            }
            let now = *now.get_or_insert_with(Instant::now);
            let puts = p.puts.load(Ordering::Relaxed);
            let mut seen = lock(&p.seen);
            if seen.0 != puts {
                *seen = (puts, now);
                continue;
            }
            if now.saturating_duration_since(seen.1) < limit {
                continue;
            }
            if let Some(key) = p.claim() {
                shared.post_key(key);
            }
        }
    }
}

/// This thread's slot.
#[derive(Default)]
struct Local {
    /// The task in the slot (or one stolen from it: see the invariant).
    task: Option<TaskRef>,
    /// The runtime this thread is a worker of, and its published slot.
    slot: Option<(Weak<Shared>, Arc<Published>)>,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// Makes this thread a worker of `shared` for the slot: registers its
/// published part with the runtime. Called on the thread's first packet.
pub(crate) fn register(shared: &Arc<Shared>) {
    let p = Arc::new(Published::new());
    lock(&shared.nexts.0).push(p.clone());
    let old = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.slot = Some((Arc::downgrade(shared), p));
        l.task.take()
    });
    drop(old);
}

/// Puts `task` in this worker's slot; hands it back if the slot is taken (or
/// this thread is not a worker of `shared`).
pub(crate) fn put(shared: &Shared, task: TaskRef) -> Option<TaskRef> {
    let (back, stale) = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let l = &mut *l;
        let Some((owner, p)) = &l.slot else {
            return (Some(task), None);
        };
        if !std::ptr::eq(owner.as_ptr(), shared) {
            return (Some(task), None);
        }
        if l.task.is_some() && p.is_full() {
            return (Some(task), None);
        }
        let key = task.key();
        // A task left here was stolen: this reference is dropped, below,
        // outside the borrow (a last reference runs arbitrary drops).
        let stale = l.task.replace(task);
        p.publish(key);
        (None, stale)
    });
    drop(stale);
    back
}

/// Takes the task in this thread's slot, unless the monitor stole it.
pub(crate) fn take() -> Option<TaskRef> {
    let (task, ours) = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let task = l.task.take();
        let ours = match (&task, &l.slot) {
            (Some(_), Some((_, p))) => p.claim().is_some(),
            _ => false,
        };
        (task, ours)
    });
    if ours {
        task
    } else {
        drop(task);
        None
    }
}

/// Posts the task in this thread's slot, if any, so another worker may run
/// it: this thread is about to block, or its handler unwinds.
pub(crate) fn flush(shared: &Shared) {
    if let Some(t) = take() {
        shared.post_task(&t);
    }
}

/// [`flush`] for whichever runtime this thread is a worker of: what
/// [`blocking`](crate::blocking) does first.
pub(crate) fn flush_current() {
    let shared = LOCAL.with(|l| {
        let l = l.borrow();
        match (&l.task, &l.slot) {
            (Some(_), Some((owner, _))) => owner.upgrade(),
            _ => None,
        }
    });
    if let Some(shared) = shared {
        flush(&shared);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// The worker puts a task in its slot and takes it back while the
    /// monitor steals: exactly one of them gets each schedule, and a second
    /// put after a steal is again claimed exactly once.
    #[test]
    fn loom_next_slot_claimed_once() {
        loom::model(|| {
            let p = Arc::new(Published::new());
            let m = p.clone();
            let monitor = thread::spawn(move || {
                let a = m.claim();
                let b = m.claim();
                a.into_iter().chain(b).collect::<Vec<_>>()
            });
            let mut mine = Vec::new();
            p.publish(1);
            mine.extend(p.claim());
            p.publish(2);
            mine.extend(p.claim());
            let mut all = monitor.join().unwrap();
            all.extend(mine);
            all.sort();
            assert_eq!(all, [1, 2]);
        });
    }
}

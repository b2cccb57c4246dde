//! A task's run state, alone so loom can check it (`loom_task_*` below).
//!
//! ```text
//!   IDLE --wake--> SCHEDULED --begin--> RUNNING --Pending--> IDLE
//!                                        |   \--wake--> NOTIFIED --Pending--> SCHEDULED
//!                                        \--Ready/abort--> DONE (wakes ignored forever)
//! ```
//!
//! Invariant: a task in `SCHEDULED` has exactly one schedule (a packet in the
//! port's queue, or a worker's next slot) and a task in any other state has none;
//! only the holder of that schedule calls `begin`. Hence one poller at a time, and
//! no lost wake: a wake during a poll leaves `NOTIFIED`, which `end_pending` turns
//! into a new schedule.

use std::sync::atomic::Ordering;

use crate::sync::model::AtomicU8;

const IDLE: u8 = 0;
const SCHEDULED: u8 = 1;
const RUNNING: u8 = 2;
const NOTIFIED: u8 = 3;
const DONE: u8 = 4;

#[derive(Debug)]
pub(crate) struct RunState(AtomicU8);

impl RunState {
    /// A new task, scheduled once by its spawner.
    pub(crate) fn new_scheduled() -> Self {
        RunState(AtomicU8::new(SCHEDULED))
    }

    /// A wake. True: the caller must schedule the task (exactly once).
    pub(crate) fn wake(&self) -> bool {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let next = match cur {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED,
                _ => return false,
            };
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return cur == IDLE,
                Err(now) => cur = now,
            }
        }
    }

    /// The schedule's holder starts a poll.
    pub(crate) fn begin(&self) {
        let prev = self.0.swap(RUNNING, Ordering::AcqRel);
        debug_assert_eq!(prev, SCHEDULED, "a task ran without its schedule");
    }

    /// The poll returned `Pending`. True: it was woken meanwhile and the caller
    /// must schedule it again (it is `SCHEDULED` now).
    pub(crate) fn end_pending(&self) -> bool {
        if self
            .0
            .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return false;
        }
        // Only a wake can have changed RUNNING, and only to NOTIFIED; an RMW
        // (not a plain store) so it is ordered after that wake's.
        self.0.swap(SCHEDULED, Ordering::AcqRel);
        true
    }

    /// The task finished (or was dropped): wakes are ignored from now on.
    pub(crate) fn finish(&self) {
        self.0.swap(DONE, Ordering::AcqRel);
    }

    #[cfg(any(test, loom))]
    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    /// Two wakers race a poll that returns Pending: afterwards the task is
    /// scheduled exactly once more if any wake came after `begin` (none lost),
    /// and never twice.
    #[test]
    fn loom_task_wakes_during_poll() {
        loom::model(|| {
            let st = Arc::new(RunState::new_scheduled());
            let schedules = Arc::new(AtomicUsize::new(0));
            st.begin();
            let wakers: Vec<_> = (0..2)
                .map(|_| {
                    let st = st.clone();
                    let n = schedules.clone();
                    thread::spawn(move || {
                        if st.wake() {
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            if st.end_pending() {
                schedules.fetch_add(1, Ordering::SeqCst);
            }
            for w in wakers {
                w.join().unwrap();
            }
            // Both wakes happened after `begin`: exactly one new schedule.
            assert_eq!(schedules.load(Ordering::SeqCst), 1);
            assert_eq!(st.get(), SCHEDULED);
        });
    }

    /// A wake racing the task's end: it schedules nothing after `finish`, and if
    /// it schedules, the task was not finished yet (the runner must then see it).
    #[test]
    fn loom_task_wake_vs_finish() {
        loom::model(|| {
            let st = Arc::new(RunState::new_scheduled());
            st.begin();
            let s2 = st.clone();
            let w = thread::spawn(move || s2.wake());
            st.finish();
            let scheduled = w.join().unwrap();
            assert!(!scheduled, "a running task is never scheduled by a wake");
            assert_eq!(st.get(), DONE);
        });
    }

    /// Idle task, two concurrent wakes: exactly one schedules it.
    #[test]
    fn loom_task_idle_double_wake() {
        loom::model(|| {
            let st = Arc::new(RunState::new_scheduled());
            st.begin();
            assert!(!st.end_pending());
            let n = Arc::new(AtomicUsize::new(0));
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let st = st.clone();
                    let n = n.clone();
                    thread::spawn(move || {
                        if st.wake() {
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(n.load(Ordering::SeqCst), 1);
            assert_eq!(st.get(), SCHEDULED);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_wake_during_a_poll_reschedules_once() {
        let st = RunState::new_scheduled();
        st.begin();
        assert!(!st.wake(), "running: the poller reschedules, not the waker");
        assert!(!st.wake());
        assert!(st.end_pending());
        assert_eq!(st.get(), SCHEDULED);
        assert!(!st.wake(), "already scheduled");
        st.begin();
        assert!(!st.end_pending());
        assert!(st.wake(), "idle: the waker schedules");
        st.begin();
        st.finish();
        assert!(!st.wake(), "done: ignored");
    }
}

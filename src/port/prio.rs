//! Priority across the kernel boundary.
//!
//! The scheduler's lanes order the completions the port has *gathered*. On
//! io_uring a completion sits in the kernel's CQ ring until a thread reaps it,
//! and while completions are queued in the port nobody polls (every idle
//! thread takes queued work instead) — so without help a `High` operation that
//! completes behind a thousand queued `Low` completions would wait in the ring
//! until all of them were taken, and its lane would mean nothing.
//!
//! So while a `High` operation is in flight, a thread about to dequeue first
//! gathers what the backend holds without waiting (`Backend::reap_ready`: the
//! CQ ring under the driver's lock, no system call; on epoll the workers'
//! results and due timers), if that could change the answer: something is
//! queued and none of it is `High`. Ports that never submit a `High`
//! operation pay one relaxed atomic load per dequeue.
//!
//! The count is of `High` operations submitted and not yet dequeued; it may
//! run high for a while (a completion dropped at close), which costs only
//! needless gathers, never a missed one.

use std::sync::atomic::Ordering;

use crate::completion::Completion;
use crate::op::Op;
use crate::sched::Priority;

use super::CompletionPort;

impl CompletionPort {
    /// Counts `op` if it is `High`; returns whether it did.
    pub(super) fn count_high(&self, op: &Op) -> bool {
        let high = op.prio == Priority::High;
        if high {
            self.inner.high_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        high
    }

    /// Undoes `count_high` for an operation the backend refused.
    pub(super) fn uncount_high(&self, counted: bool) {
        if counted {
            self.inner.high_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// `got` was just handed to the caller: its `High` operations are done.
    pub(super) fn dequeued(&self, got: &[Completion]) {
        if self.inner.high_in_flight.load(Ordering::Relaxed) == 0 {
            return;
        }
        let n = got
            .iter()
            // A multishot operation's completions with `more` set are not
            // its end: only its last one ends what `count_high` counted.
            .filter(|c| c.priority == Priority::High && c.op.is_some() && !c.more)
            .count();
        if n > 0 {
            // Saturating: a count that ran low (it cannot, but) must not wrap.
            let _ =
                self.inner
                    .high_in_flight
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        Some(v.saturating_sub(n))
                    });
        }
    }

    /// Before a dequeue: gathers ready completions if a `High` one may be
    /// among them and would overtake what is queued.
    pub(super) fn gather_high(&self) {
        let inner = &self.inner;
        if inner.high_in_flight.load(Ordering::Relaxed) == 0 || !inner.sched.could_be_overtaken() {
            return;
        }
        let mut got = Vec::new();
        inner.backend.reap_ready(&mut got);
        let mut wake = false;
        for c in got {
            wake |= inner.sched.push(c);
        }
        if wake {
            inner.backend.notify();
        }
    }
}

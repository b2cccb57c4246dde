//! The port's completion queue with priorities (SPEC §2, beyond IOCP).
//!
//! Three FIFO lanes, `High`, `Normal`, `Low`. A dequeue takes the front of the
//! highest non-empty lane — unless some lane's front has waited through
//! [`AGE_LIMIT`] dequeues since it was queued, in which case the oldest such
//! front goes first. So a `High` packet posted behind a thousand `Low` ones is
//! the next one out, and a `Low` packet cannot starve: at most `AGE_LIMIT`
//! dequeues pass over it once it is at the front of its lane (and the ones ahead
//! of it in its lane are older still, so they age out first, in order). Within a
//! lane, order is arrival order, as IOCP's.

use std::collections::VecDeque;

/// An operation's (or packet's) priority: which completion a dequeue takes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Taken before `Normal` and `Low`.
    High,
    /// The default.
    #[default]
    Normal,
    /// Taken last, but never starved (see the aging rule).
    Low,
}

impl Priority {
    fn lane(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// Dequeues a front may wait through before it is taken regardless of lanes.
pub const AGE_LIMIT: u64 = 64;

/// What the queue needs to know of an item: the lane it goes in. A completion
/// carries the priority of the operation (or packet) it came from, so every
/// path that queues one — the poller's batch, an inline completion, a cancel —
/// puts it in its lane without being told.
pub(crate) trait Prioritized {
    fn priority(&self) -> Priority {
        Priority::Normal
    }
}

#[cfg(any(test, loom))]
impl Prioritized for u32 {}

#[derive(Debug)]
pub(crate) struct PrioQueue<T> {
    /// Each entry: the `taken` count when it was queued, and the item.
    lanes: [VecDeque<(u64, T)>; 3],
    /// Items taken so far (the aging clock).
    taken: u64,
    len: usize,
}

impl<T: Prioritized> PrioQueue<T> {
    pub(crate) fn new() -> Self {
        PrioQueue {
            lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            taken: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a `High` item is queued.
    pub(crate) fn has_high(&self) -> bool {
        !self.lanes[0].is_empty()
    }

    /// Queues in the item's own lane.
    pub(crate) fn push_back(&mut self, item: T) {
        let p = item.priority();
        self.push(item, p);
    }

    pub(crate) fn push(&mut self, item: T, p: Priority) {
        self.lanes[p.lane()].push_back((self.taken, item));
        self.len += 1;
    }

    /// Queues each in its own lane.
    pub(crate) fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        for i in items {
            self.push_back(i);
        }
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let lane = if self.lanes[0].is_empty() && self.lanes[2].is_empty() {
            // Only `Normal` items (the usual case): no other front to age.
            1
        } else {
            let now = self.taken;
            // The oldest front that has waited through AGE_LIMIT dequeues, if
            // any. The clock moves only on dequeues, so fronts queued between
            // the same two dequeues tie: the lowest lane goes first, the one
            // aging exists for (with the highest first, a `Low` front was
            // passed over by every `High` queued in the same batch as it,
            // however many: session 18's docs review).
            let aged = (0..3)
                .rev()
                .filter_map(|l| self.lanes[l].front().map(|(at, _)| (*at, l)))
                .filter(|(at, _)| now - at >= AGE_LIMIT)
                .min_by_key(|(at, _)| *at);
            match aged {
                Some((_, l)) => l,
                None => (0..3).find(|&l| !self.lanes[l].is_empty())?,
            }
        };
        let (_, item) = self.lanes[lane].pop_front()?;
        self.taken += 1;
        self.len -= 1;
        Some(item)
    }

    /// Moves up to `n` items into `out`, in dequeue order.
    pub(crate) fn take_into(&mut self, out: &mut Vec<T>, n: usize) -> usize {
        let mut k = 0;
        while k < n {
            match self.pop_front() {
                Some(i) => out.push(i),
                None => break,
            }
            k += 1;
        }
        k
    }

    /// Everything, in dequeue order (at close).
    pub(crate) fn drain_all(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        self.take_into(&mut out, usize::MAX);
        out
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    impl Prioritized for i32 {}

    #[test]
    fn high_jumps_the_queue_low_is_never_starved() {
        let mut q = PrioQueue::new();
        for i in 0..1000 {
            q.push(i, Priority::Low);
        }
        q.push(-1, Priority::High);
        assert_eq!(q.pop_front(), Some(-1), "High posted last comes out first");
        // A steady stream of Normal work cannot hold the Low ones back forever.
        let mut lows = 0;
        for n in 0..10_000 {
            q.push(100_000 + n, Priority::Normal);
            let x = q.pop_front().unwrap();
            if x < 100_000 {
                lows += 1;
            }
        }
        assert!(
            lows > 0,
            "aging lets Low through under constant Normal load"
        );
        let rest = q.drain_all();
        let mut all_low: Vec<i32> = rest
            .into_iter()
            .filter(|&x| (0..1000).contains(&x))
            .collect();
        all_low.sort();
        assert_eq!(
            all_low.len() + lows,
            1000,
            "every Low item is delivered once"
        );
    }

    #[test]
    fn low_queued_with_a_burst_of_high_waits_at_most_age_limit() {
        let mut q = PrioQueue::new();
        q.push(-1, Priority::Low);
        for i in 0..(AGE_LIMIT as i32 + 10) {
            q.push(i, Priority::High);
        }
        let at = (0..)
            .map_while(|_| q.pop_front())
            .position(|x| x == -1)
            .expect("the Low item comes out");
        assert_eq!(at as u64, AGE_LIMIT, "taken as soon as it has aged");
    }

    #[test]
    fn fifo_within_a_lane() {
        let mut q = PrioQueue::new();
        q.extend([1, 2, 3]);
        q.push(9, Priority::High);
        let mut out = Vec::new();
        assert_eq!(q.take_into(&mut out, 10), 4);
        assert_eq!(out, vec![9, 1, 2, 3]);
        assert!(q.is_empty());
    }
}

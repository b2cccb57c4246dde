//! Unit tests of the scheduler core.

use super::*;

#[test]
fn fifo_and_concurrency_limit() {
    let s: Sched<u32> = Sched::new(1);
    let a = s.register();
    let b = s.register();
    s.push(1);
    s.push(2);
    let mut out = Vec::new();
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    assert_eq!(out, [1]);
    // a is running and N = 1: b must not get the second completion.
    let soon = Some(Instant::now() + Duration::from_millis(10));
    assert_eq!(s.dequeue(b, &mut out, 1, soon, true).0, Next::Timeout);
    // a comes back: it takes the next one, in order.
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    assert_eq!(out, [1, 2]);
    assert_eq!(s.stats().peak_running, 1);
}

#[test]
fn blocking_releases_the_slot() {
    let s: Sched<u32> = Sched::new(1);
    let a = s.register();
    let b = s.register();
    s.push(1);
    s.push(2);
    let mut out = Vec::new();
    s.dequeue(a, &mut out, 1, None, true);
    s.block_begin(a);
    assert_eq!(s.dequeue(b, &mut out, 1, None, true).0, Next::Got(1));
    s.block_end(a);
    assert_eq!(
        s.stats().running,
        2,
        "returning from blocking oversubscribes"
    );
}

#[test]
fn stall_detector_releases_when_work_waits() {
    let s: Sched<u32> = Sched::new(1);
    let a = s.register();
    s.push(1);
    let mut out = Vec::new();
    s.dequeue(a, &mut out, 1, None, true);
    assert_eq!(
        s.stall_scan(
            Instant::now() + Duration::from_secs(1),
            Duration::from_millis(10)
        )
        .0,
        0,
        "nothing waits: no stall"
    );
    s.push(2);
    assert_eq!(
        s.stall_scan(
            Instant::now() + Duration::from_secs(1),
            Duration::from_millis(10)
        )
        .0,
        1
    );
    assert_eq!(s.stats().running, 0);
    // Coming back does not decrement twice.
    let b = s.register();
    assert_eq!(s.dequeue(b, &mut out, 1, None, true).0, Next::Got(1));
    assert_eq!(
        s.dequeue(a, &mut out, 1, Some(Instant::now()), true).0,
        Next::Poll
    );
    assert_eq!(s.stats().running, 1);
}

/// A lazy-poll scheduler (concurrency 2) whose thread `a` (this one) holds the
/// poll role while a second thread sleeps idle in `dequeue`, whose handle (its
/// `Next`, within 10 s) is returned.
fn lazy_poller_and_sleeper() -> (
    std::sync::Arc<Sched<u32>>,
    SlotId,
    std::thread::JoinHandle<Next>,
) {
    let s: Sched<u32> = Sched::new(2);
    s.set_lazy_poll(true);
    let a = s.register();
    let mut out = Vec::new();
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Poll);
    let sc = std::sync::Arc::new(s);
    let s2 = sc.clone();
    let b = std::thread::spawn(move || {
        let b = s2.register();
        let mut out = Vec::new();
        s2.dequeue(
            b,
            &mut out,
            1,
            Some(Instant::now() + Duration::from_secs(10)),
            true,
        )
        .0
    });
    while lock(&sc.state).waiters.is_empty() {
        std::thread::yield_now();
    }
    (sc, a, b)
}

#[test]
fn lazy_poll_handoff_waits_for_a_long_handler() {
    let (sc, a, b) = lazy_poller_and_sleeper();
    let mut out = Vec::new();
    // The poller takes a completion and runs: nobody else is sent to poll...
    let (next, _) = sc.poll_done(a, [1], &mut out, 1);
    assert_eq!(next, Some(Next::Got(1)));
    assert_eq!(lock(&sc.state).poller, None);
    assert_eq!(lock(&sc.state).waiters.len(), 1);
    // ...until its handler has run long: then the idle thread polls.
    assert!(
        sc.poll_scan(Instant::now(), Duration::from_secs(60))
            .is_some_and(|left| left <= Duration::from_secs(60)),
        "vacant: watch it"
    );
    assert_eq!(
        sc.poll_scan(
            Instant::now() + Duration::from_secs(1),
            Duration::from_millis(1)
        ),
        None
    );
    assert_eq!(b.join().unwrap(), Next::Poll);
    assert_eq!(lock(&sc.state).poller, Some(1), "the idle thread polls");
}

#[test]
fn poller_and_backup_roles_are_unique() {
    let s: Sched<u32> = Sched::with_backup(2, true);
    let a = s.register();
    let b = s.register();
    let c = s.register();
    let mut out = Vec::new();
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Poll);
    assert_eq!(s.dequeue(b, &mut out, 1, None, true).0, Next::Backup);
    let soon = Some(Instant::now() + Duration::from_millis(5));
    assert_eq!(s.dequeue(c, &mut out, 1, soon, true).0, Next::Timeout);
    let (next, _) = s.poll_done(a, [7, 8], &mut out, 1);
    assert_eq!(next, Some(Next::Got(1)));
    assert_eq!(out, [7]);
    // With a backup waiting, the poller leaving does not wake anyone else.
    assert_eq!(s.stats().queued, 1);
}

#[test]
fn lazy_poll_vacancy_clock_restarts_when_the_role_is_taken_back() {
    let (sc, a, b) = lazy_poller_and_sleeper();
    let mut out = Vec::new();
    let delay = Duration::from_secs(60);
    // The poller takes a completion: the role is vacant from now.
    assert_eq!(sc.poll_done(a, [1], &mut out, 1).0, Some(Next::Got(1)));
    assert!(sc.poll_scan(Instant::now(), delay).is_some());
    std::thread::sleep(Duration::from_millis(20));
    // It comes back with nothing queued and takes the role again...
    assert_eq!(sc.dequeue(a, &mut out, 1, None, true).0, Next::Poll);
    assert_eq!(
        sc.poll_scan(Instant::now(), delay),
        None,
        "held: no vacancy"
    );
    // ...and leaves it again: a new vacancy, timed from now, not from the first.
    let t2 = Instant::now();
    assert_eq!(sc.poll_done(a, [2], &mut out, 1).0, Some(Next::Got(1)));
    assert!(
        sc.poll_scan(t2 + delay - Duration::from_millis(10), delay)
            .is_some(),
        "the vacancy clock restarted when the role was taken back"
    );
    assert_eq!(lock(&sc.state).waiters.len(), 1, "nobody was sent to poll");
    let _ = sc.close();
    assert_eq!(b.join().unwrap(), Next::Closed);
}

/// A poller woken for a completion that another thread took first goes back
/// to its wait (`idle_wake`); the wake-up it consumed must not count as still
/// pending, or the next completion that needs the poller does not notify it
/// (found: a pool hung with its packet queued and its poller asleep).
#[test]
fn a_consumed_wake_up_is_sent_again_when_needed() {
    let s: Sched<u32> = Sched::new(1);
    let a = s.register();
    let b = s.register();
    let mut out = Vec::new();
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Poll);
    // Nobody waits on the stack: the poller is notified for the packet...
    assert!(s.push(1), "the poller is notified");
    // ...but b, arriving, takes it first.
    assert_eq!(s.dequeue(b, &mut out, 1, None, true).0, Next::Got(1));
    // The poller wakes to an empty queue and waits again, the wake-up spent.
    assert!(s.idle_wake(a));
    // b blocks, freeing the slot, and the next packet comes: nobody but the
    // poller can take it, so it must be notified again.
    assert!(!s.block_begin(b), "nothing queued yet");
    assert!(
        s.push(2),
        "the poller, whose wake-up was spent, is notified again"
    );
}

/// The same through a deposed poller: a thread with fresh submissions takes
/// the poll role over while the old poller still waits in the backend; the old
/// one may then spend the notification sent to the new one (whose wait began
/// after it was posted). Its return must count that notification as spent.
#[test]
fn a_wake_up_spent_by_a_deposed_poller_is_sent_again() {
    let s: Sched<u32> = Sched::new(1);
    let a = s.register();
    let c = s.register();
    let mut out = Vec::new();
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Poll);
    // c holds unsubmitted work: it may not sleep, so it takes the role over.
    assert_eq!(s.dequeue(c, &mut out, 1, None, false).0, Next::Poll);
    assert!(s.push(1), "the poller (now c) is notified");
    // a, still in the backend, reaps that notification and returns: it takes
    // the packet (c sleeps on, its notification spent).
    let (got, _) = s.poll_done(a, std::iter::empty(), &mut out, 1);
    assert_eq!(got, Some(Next::Got(1)));
    // a blocks, freeing the slot; the next packet can only go to c.
    assert!(!s.block_begin(a), "nothing queued yet");
    assert!(
        s.push(2),
        "c, whose notification a spent, is notified again"
    );
}

/// A queue that never drains is not served forever without a look at the
/// backend while nobody polls (`POLL_EVERY`); with a poller, never.
#[test]
fn a_busy_queue_lets_the_backend_be_looked_at() {
    let s: Sched<u32> = Sched::new(1);
    let a = s.register();
    let mut out = Vec::new();
    for i in 0..(3 * POLL_EVERY) {
        s.push(i);
    }
    let mut got = 0;
    loop {
        match s.dequeue(a, &mut out, 1, None, true).0 {
            Next::Got(1) => got += 1,
            Next::PollFirst => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, POLL_EVERY, "served POLL_EVERY, then asked to look");
    // Offering what the backend had (nothing here) serves the queue again.
    let (next, _) = s.offer(a, false, std::iter::empty(), &mut out, 1);
    assert_eq!(next, Some(Next::Got(1)));
    // With a poller in the backend, nobody else needs to look.
    let s2: Sched<u32> = Sched::new(1);
    let (a2, p2) = (s2.register(), s2.register());
    assert_eq!(s2.dequeue(p2, &mut out, 1, None, true).0, Next::Poll);
    for i in 0..(3 * POLL_EVERY) {
        s2.push(i);
    }
    for _ in 0..(2 * POLL_EVERY) {
        assert_eq!(s2.dequeue(a2, &mut out, 1, None, true).0, Next::Got(1));
    }
}

/// Lazy release (`hold` = 2, concurrency 2): while `a` runs, up to two
/// completions wait for it and the idle thread is not woken; a third
/// releases it at once; and completions held past the monitor's delay are
/// handed out (`release_scan`).
#[test]
fn lazy_release_holds_up_to_its_depth_for_a_running_thread() {
    let s: Sched<u32> = Sched::new(2);
    s.set_hold(2);
    let a = s.register();
    let mut out = Vec::new();
    s.push(1);
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    let sc = std::sync::Arc::new(s);
    let s2 = sc.clone();
    let b = std::thread::spawn(move || {
        let b = s2.register();
        let mut out = Vec::new();
        // b takes the poll role, or sleeps on the stack if it is taken:
        // either way it waits for a hand-off, never for `hold` items.
        let next = s2
            .dequeue(
                b,
                &mut out,
                4,
                Some(Instant::now() + Duration::from_secs(10)),
                true,
            )
            .0;
        (next, out)
    });
    // b is the poller (nothing was queued when it came).
    while lock(&sc.state).poller.is_none() {
        std::thread::yield_now();
    }
    assert!(!sc.push(2), "held for a: the poller is not notified");
    assert!(!sc.push(3), "still within the depth");
    assert!(lock(&sc.state).held_since.is_some());
    assert_eq!(sc.stats().handoffs, 0);
    // Not yet held for the delay: the monitor leaves it.
    assert!(!sc.release_scan(Instant::now(), Duration::from_secs(60)));
    assert_eq!(sc.stats().releases, 0);
    // a comes back and takes them itself, in order; the queue empties.
    assert_eq!(sc.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    assert_eq!(sc.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    assert_eq!(out, [1, 2, 3]);
    assert!(lock(&sc.state).held_since.is_none());
    assert!(!sc.release_scan(Instant::now(), Duration::ZERO));
    // Past the depth, the poller is notified at once.
    assert!(!sc.push(4));
    assert!(!sc.push(5));
    assert!(sc.push(6), "three queued > hold 2: the poller is notified");
    let _ = sc.close();
    let _ = b.join().unwrap();
}

/// Concurrency 2 with lazy release `hold` (0 = off): `a` took completion 1
/// and runs; `c` holds the poll role. Returns the scheduler, `c`, and the
/// output vector (holding 1).
fn one_runs_one_polls(hold: usize) -> (Sched<u32>, SlotId, Vec<u32>) {
    let s: Sched<u32> = Sched::new(2);
    s.set_hold(hold);
    let a = s.register();
    let c = s.register();
    let mut out = Vec::new();
    s.push(1);
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    assert_eq!(s.dequeue(c, &mut out, 1, None, true).0, Next::Poll);
    (s, c, out)
}

/// A completion held for a thread whose handler runs on is handed to an idle
/// thread by the monitor once it has been held for the delay.
#[test]
fn lazy_release_hands_out_what_was_held_too_long() {
    let (s, c, mut out) = one_runs_one_polls(4);
    // A second completion is held for a.
    assert!(!s.push(2));
    let t0 = Instant::now();
    let delay = Duration::from_millis(1);
    assert!(!s.release_scan(t0, Duration::from_secs(60)));
    // Past the delay: the poller is notified for it, counted as a release.
    assert!(s.release_scan(t0 + Duration::from_secs(120), delay));
    assert_eq!(s.stats().releases, 1);
    // The poller, back with nothing, takes it while a still runs.
    let (got, _) = s.poll_done(c, std::iter::empty(), &mut out, 1);
    assert_eq!(got, Some(Next::Got(1)));
    assert_eq!(out, [1, 2]);
    assert_eq!(s.stats().running, 2);
}

/// Without lazy release (the default), a completion queued while a thread runs
/// notifies the poller at once (IOCP's rule).
#[test]
fn without_lazy_release_a_waiter_is_released_at_once() {
    let (s, _, _) = one_runs_one_polls(0);
    assert!(s.push(2), "the poller is notified at once");
    assert!(!s.release_scan(Instant::now(), Duration::ZERO));
}

/// A hold that begins without a dispatch — a running thread's dequeue leaves
/// the queue within the depth — is stamped then, so the monitor's delay counts
/// from it; a forced release that can hand nothing out keeps the stamp and
/// counts no release.
#[test]
fn a_hold_begun_by_a_take_is_stamped_and_a_fruitless_release_keeps_it() {
    let s: Sched<u32> = Sched::new(2);
    s.set_hold(1);
    let a = s.register();
    let mut out = Vec::new();
    for i in 0..3 {
        s.push(i);
    }
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    assert!(lock(&s.state).held_since.is_none(), "two queued > hold 1");
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    let stamp = lock(&s.state).held_since;
    assert!(stamp.is_some(), "the take began a hold");
    // Nobody else is registered: a forced release has nobody to hand to.
    let later = Instant::now() + Duration::from_secs(1);
    assert!(!s.release_scan(later, Duration::from_millis(1)));
    assert_eq!(s.stats().releases, 0);
    assert_eq!(
        lock(&s.state).held_since,
        stamp,
        "the next look tries again"
    );
    // a takes the last one: the hold ends.
    assert_eq!(s.dequeue(a, &mut out, 1, None, true).0, Next::Got(1));
    assert!(lock(&s.state).held_since.is_none());
    assert_eq!(out, [0, 1, 2]);
}

#[test]
fn a_batch_leaves_an_idle_thread_its_share() {
    let s: Arc<Sched<u32>> = Arc::new(Sched::new(2));
    let a = s.register();
    let b = s.register();
    let mut out = Vec::new();
    // a polls the backend; b waits, idle.
    assert_eq!(s.dequeue(a, &mut out, 8, None, true).0, Next::Poll);
    let s2 = s.clone();
    let waiter = std::thread::spawn(move || {
        let mut got = Vec::new();
        let next = s2.dequeue(b, &mut got, 8, None, true).0;
        (next, got)
    });
    while !lock(&s.state).waiters.contains(&b) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // a comes back with 8 completions and asks for 8: it takes half, and b
    // (a free slot, idle) is handed the other half.
    let (next, _) = s.offer(a, true, 0..8, &mut out, 8);
    assert_eq!(next, Some(Next::Got(4)));
    assert_eq!(out, [0, 1, 2, 3]);
    let (next, got) = waiter.join().unwrap();
    assert_eq!(next, Next::Got(4));
    assert_eq!(got, [4, 5, 6, 7]);
    // Alone (b running, no one idle), a batch takes up to its limit.
    s.push(8);
    s.push(9);
    s.push(10);
    out.clear();
    assert_eq!(s.dequeue(a, &mut out, 8, None, true).0, Next::Got(3));
    assert_eq!(out, [8, 9, 10]);
}

#[test]
fn a_batch_taken_from_a_queue_filled_without_dispatch_hands_the_rest_on() {
    // A running thread queued completions without waking anyone
    // (`push_with(.., false)`); when it dequeues a batch it takes its share
    // and the idle waiter must be handed the rest, not left asleep.
    let s: Arc<Sched<u32>> = Arc::new(Sched::new(4));
    let a = s.register();
    let b = s.register();
    let c = s.register();
    let mut out = Vec::new();
    assert_eq!(s.dequeue(a, &mut out, 8, None, true).0, Next::Poll);
    assert_eq!(s.poll_done(a, [0], &mut out, 8).0, Some(Next::Got(1)));
    // b takes the poll role; c waits, idle.
    assert_eq!(s.dequeue(b, &mut Vec::new(), 8, None, true).0, Next::Poll);
    let s2 = s.clone();
    let waiter = std::thread::spawn(move || {
        let mut got = Vec::new();
        // A deadline: left asleep, it times out instead of hanging the test.
        let deadline = Instant::now() + Duration::from_secs(5);
        let next = s2.dequeue(c, &mut got, 8, Some(deadline), true).0;
        (next, got)
    });
    while !lock(&s.state).waiters.contains(&c) {
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 1..=6 {
        assert!(!s.push_with(i, false));
    }
    out.clear();
    assert_eq!(s.dequeue(a, &mut out, 8, None, true).0, Next::Got(3));
    assert_eq!(out, [1, 2, 3]);
    let (next, got) = waiter.join().unwrap();
    assert_eq!(next, Next::Got(3));
    assert_eq!(got, [4, 5, 6]);
}

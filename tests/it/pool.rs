//! The pool under IOCP's scheduling rules: the concurrency limit, `blocking`, the
//! stall detector, LIFO wake, panic isolation.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use ringport::{BackendChoice, Pool};

use crate::common::*;

/// Tracks how many handlers run at once, and the most ever seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
    done: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

backend_test!(
    concurrency_limits_running_handlers,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(2));
        let g = Arc::new(Gauge::default());
        let h = g.clone();
        // No stall detector: nothing but the concurrency value may let a handler run.
        let pool = Pool::builder()
            .threads(8)
            .stall_threshold(None)
            .spawn(&port, move |_, _| {
                h.enter();
                std::thread::sleep(Duration::from_millis(2));
                h.leave();
            })
            .unwrap();
        assert_eq!(pool.threads(), 8);
        for i in 0..200 {
            port.post(0, i, 0).unwrap();
        }
        wait_until("200 packets are handled", || {
            g.done.load(Ordering::SeqCst) == 200
        });
        let peak = g.peak.load(Ordering::SeqCst);
        assert!(peak <= 2, "{peak} handlers ran at once with concurrency 2");
        assert!(port.stats().sched.peak_running <= 2, "{:?}", port.stats());
        shutdown(pool);
    }
);

backend_test!(
    blocking_hint_lets_more_handlers_run,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(2));
        let g = Arc::new(Gauge::default());
        let h = g.clone();
        let give_up = Instant::now() + T;
        let pool = Pool::builder()
            .threads(8)
            .stall_threshold(None)
            .spawn(&port, move |_, _| {
                h.enter();
                ringport::blocking(|| {
                    std::thread::sleep(Duration::from_millis(2));
                    // Stay blocked until a third handler has joined (it can only if
                    // the hint released this slot), or give up and let the test fail.
                    while h.peak.load(Ordering::SeqCst) <= 2 && Instant::now() < give_up {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
                h.leave();
            })
            .unwrap();
        for i in 0..200 {
            port.post(0, i, 0).unwrap();
        }
        wait_until("200 packets are handled", || {
            g.done.load(Ordering::SeqCst) == 200
        });
        let peak = g.peak.load(Ordering::SeqCst);
        assert!(
            peak > 2,
            "with the blocking hint more than N = 2 handlers must overlap; peak {peak}"
        );
        shutdown(pool);
    }
);

/// Handlers for packets 1 and 2: packet 1's blocks (no hint) until packet 2
/// has been handled by another thread, gives up after T, and records whether
/// it saw that; with `post_second` it posts packet 2 itself first. Returns the
/// handler, "packet 2 handled" and "packet 1 saw packet 2 handled".
#[allow(clippy::type_complexity)]
fn first_waits_for_second(
    post_second: bool,
) -> (
    impl Fn(&ringport::CompletionPort, ringport::Completion) + Send + Sync + 'static,
    Arc<AtomicBool>,
    Arc<AtomicBool>,
) {
    let second_done = Arc::new(AtomicBool::new(false));
    let first_saw_second = Arc::new(AtomicBool::new(false));
    let (s, f) = (second_done.clone(), first_saw_second.clone());
    let handler = move |port: &ringport::CompletionPort, c: ringport::Completion| match c.user_data
    {
        1 => {
            if post_second {
                port.post(0, 2, 0).unwrap();
            }
            let deadline = Instant::now() + T;
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            f.store(s.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        _ => s.store(true, Ordering::SeqCst),
    };
    (handler, second_done, first_saw_second)
}

backend_test!(
    stall_detector_releases_a_handler_that_blocks_without_the_hint,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(1));
        // Packet 1's handler blocks until packet 2 is handled by the other
        // thread, which only the stall detector can allow.
        let (handler, second_done, first_saw_second) = first_waits_for_second(false);
        let pool = Pool::builder()
            .threads(2)
            .stall_threshold(Some(Duration::from_millis(10)))
            .spawn(&port, handler)
            .unwrap();
        port.post(0, 1, 0).unwrap();
        port.post(0, 2, 0).unwrap();
        wait_until("both packets are handled", || {
            second_done.load(Ordering::SeqCst) && first_saw_second.load(Ordering::SeqCst)
        });
        assert!(
            first_saw_second.load(Ordering::SeqCst),
            "packet 2 waited for the stalled handler"
        );
        assert!(port.stats().sched.stalls >= 1, "{:?}", port.stats());
        shutdown(pool);
    }
);

backend_test!(
    a_nested_blocking_hint_keeps_the_slot_released,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(1));
        // Packet 1's handler blocks inside a blocking hint, after a nested
        // one returned, until packet 2 is handled by the other thread: which
        // only the outer hint, still in force, allows.
        let (inner, second_done, first_saw_second) = first_waits_for_second(false);
        let pool = Pool::builder()
            .threads(2)
            .stall_threshold(None)
            .spawn(&port, move |p, c| {
                if c.user_data == 1 {
                    ringport::blocking(|| {
                        ringport::blocking(|| ());
                        inner(p, c)
                    })
                } else {
                    inner(p, c)
                }
            })
            .unwrap();
        port.post(0, 1, 0).unwrap();
        port.post(0, 2, 0).unwrap();
        wait_until("both packets are handled", || {
            second_done.load(Ordering::SeqCst) && first_saw_second.load(Ordering::SeqCst)
        });
        shutdown(pool);
    }
);

backend_test!(
    most_recently_idle_thread_is_woken_first,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(1));
        let warm: Arc<Mutex<HashSet<ThreadId>>> = Arc::default();
        let warmed = Arc::new(AtomicUsize::new(0));
        let who: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
        let (wm, wd, w) = (warm.clone(), warmed.clone(), who.clone());
        let pool = Pool::builder()
            .threads(4)
            .stall_threshold(None)
            .spawn(&port, move |_, c| {
                let me = std::thread::current().id();
                if c.key == 1 {
                    // Warm-up: every thread takes one packet, so all four are known to
                    // the port before the measured phase.
                    wm.lock().unwrap().insert(me);
                    let deadline = Instant::now() + T;
                    ringport::blocking(|| {
                        while wm.lock().unwrap().len() < 4 && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    });
                    wd.fetch_add(1, Ordering::SeqCst);
                } else {
                    w.lock().unwrap().push(me);
                }
            })
            .unwrap();
        for i in 0..4 {
            port.post(1, i, 0).unwrap();
        }
        // Every warm-up handler has returned, and every thread is back in `get` (a
        // thread counts as running until it calls `get` again): all four are idle.
        wait_until("all four threads are idle", || {
            warmed.load(Ordering::SeqCst) == 4 && port.stats().sched.running == 0
        });

        for i in 0..100 {
            port.post(0, i, 0).unwrap();
            wait_until("the packet is handled", || {
                who.lock().unwrap().len() == i as usize + 1
            });
        }
        let who = who.lock().unwrap();
        let distinct: HashSet<_> = who[1..].iter().collect();
        assert_eq!(
            distinct.len(),
            1,
            "LIFO: the warm thread must handle every packet after the first; handlers in order: {}",
            who.iter()
                .map(|t| format!("{t:?}").replace("ThreadId", ""))
                .collect::<Vec<_>>()
                .join(" ")
        );
        shutdown(pool);
    }
);

backend_test!(
    a_panicking_handler_does_not_lose_the_pool,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(2));
        let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let s = seen.clone();
        let pool = Pool::builder()
            .threads(2)
            .spawn(&port, move |_, c| {
                if c.user_data == 1 {
                    panic!("handler panics on packet 1 (expected by this test)");
                }
                assert!(
                    s.lock().unwrap().insert(c.user_data),
                    "packet {} handled twice",
                    c.user_data
                );
            })
            .unwrap();
        for i in 1..=100 {
            port.post(0, i, 0).unwrap();
        }
        wait_until("packets 2..=100 are handled", || {
            seen.lock().unwrap().len() == 99
        });
        assert_eq!(*seen.lock().unwrap(), (2..=100).collect::<HashSet<_>>());
        // The panicking thread counts its panic once it has unwound.
        wait_until("the panic is counted", || pool.panics() >= 1);
        assert_eq!(pool.panics(), 1);
        // Both threads still serve, and the slot of the panicking one was released.
        port.post(0, 101, 0).unwrap();
        wait_until("a packet after the panic is handled", || {
            seen.lock().unwrap().contains(&101)
        });
        shutdown(pool);
    }
);

backend_test!(
    pool_handlers_submit_io_and_see_its_completion,
    |choice: BackendChoice| {
        use ringport::Op;
        // Handlers chain operations: each nop completion submits the next one. Pool
        // threads batch their submissions; every one must still reach the kernel.
        let port = build(builder(choice).concurrency(2));
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let pool = Pool::builder()
            .threads(4)
            .spawn(&port, move |port, c| {
                if c.user_data < 1000 {
                    port.submit(Op::nop(), c.user_data + 1).unwrap();
                } else {
                    d.fetch_add(1, Ordering::SeqCst);
                }
            })
            .unwrap();
        for _ in 0..4 {
            port.submit(Op::nop(), 0).unwrap();
        }
        wait_until("four chains of 1000 nops finish", || {
            done.load(Ordering::SeqCst) == 4
        });
        shutdown(pool);
        assert!(port.is_closed(), "shutdown closes the port");
    }
);

backend_test!(
    lazy_release_holds_a_packet_only_until_the_monitor_hands_it_out,
    |choice: BackendChoice| {
        // Concurrency 2, lazy release 4: packet 2, posted by the running
        // handler of packet 1, is held for that handler's thread — which waits
        // for packet 2 to be handled elsewhere. Only the monitor's release lets
        // it be, at its first look (half the 1 s stall threshold), before the
        // stall detector would catch the handler (1 s).
        let port = build(builder(choice).concurrency(2));
        let (handler, second_done, first_saw_second) = first_waits_for_second(true);
        let pool = Pool::builder()
            .threads(2)
            .stall_threshold(Some(Duration::from_secs(1)))
            .lazy_release(4)
            .spawn(&port, handler)
            .unwrap();
        // Let both workers settle (one polling, one asleep on the stack): a
        // worker still on its way to its first dequeue, or a poller woken for
        // packet 1 after the other worker took it, would take packet 2 without
        // a release (seen once in CI).
        std::thread::sleep(Duration::from_millis(200));
        port.post(0, 1, 0).unwrap();
        wait_until("both packets are handled", || {
            second_done.load(Ordering::SeqCst) && first_saw_second.load(Ordering::SeqCst)
        });
        let st = port.stats().sched;
        assert!(st.releases >= 1, "held, then released: {st:?}");
        assert_eq!(st.stalls, 0, "{st:?}");
        shutdown(pool);
    }
);

backend_test!(
    lazy_release_loses_nothing_under_load,
    |choice: BackendChoice| {
        // Many short handlers with lazy release on, each posting the next
        // packet of its chain: every packet is handled exactly once.
        let port = build(builder(choice).concurrency(2));
        let seen = Arc::new(Mutex::new(vec![0u8; 20_000]));
        let s = seen.clone();
        let pool = Pool::builder()
            .threads(3)
            .lazy_release(2)
            .spawn(&port, move |port, c| {
                let i = c.user_data as usize;
                s.lock().unwrap()[i] += 1;
                if i % 4 != 3 {
                    port.post(0, c.user_data + 1, 0).unwrap();
                }
            })
            .unwrap();
        for chain in 0..5_000u64 {
            port.post(0, chain * 4, 0).unwrap();
        }
        wait_until("20,000 packets are handled", || {
            seen.lock().unwrap().iter().all(|&n| n > 0)
        });
        shutdown(pool);
        assert!(
            seen.lock().unwrap().iter().all(|&n| n == 1),
            "each exactly once"
        );
    }
);

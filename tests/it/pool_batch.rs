//! `PoolBuilder::batch`: workers that take several completions per dequeue
//! (IOCP's `GetQueuedCompletionStatusEx`) keep the port's rules — FIFO order,
//! the concurrency limit, every completion handled exactly once, a panicking
//! handler costing only its own completion — on both backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringport::{BackendChoice, Pool};

use crate::common::*;

backend_test!(
    batches_keep_fifo_order_under_concurrency_one,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let pool = Pool::builder()
            .threads(3)
            .batch(8)
            .spawn(&port, move |_, c| s.lock().unwrap().push(c.user_data))
            .unwrap();
        for i in 0..2000u64 {
            port.post(0, i, 0).unwrap();
        }
        wait_until("2000 packets are handled", || {
            seen.lock().unwrap().len() == 2000
        });
        // One handler at a time: the batches follow one another in queue order.
        assert_eq!(*seen.lock().unwrap(), (0..2000).collect::<Vec<u64>>());
        shutdown(pool);
    }
);

backend_test!(
    batches_respect_the_concurrency_limit_and_lose_nothing,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(2));
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (n, p, s) = (now.clone(), peak.clone(), seen.clone());
        let pool = Pool::builder()
            .threads(6)
            .stall_threshold(None)
            .batch(4)
            .spawn(&port, move |_, c| {
                // Handlers of one worker's batch run one after another, so
                // at most `concurrency` run at once, batched or not.
                let k = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(k, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
                n.fetch_sub(1, Ordering::SeqCst);
                s.lock().unwrap().push(c.user_data);
            })
            .unwrap();
        for i in 0..400u64 {
            port.post(0, i, 0).unwrap();
        }
        wait_until("400 packets are handled", || {
            seen.lock().unwrap().len() == 400
        });
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 2, "{peak} handlers ran at once with concurrency 2");
        let mut all = seen.lock().unwrap().clone();
        all.sort_unstable();
        assert_eq!(all, (0..400).collect::<Vec<u64>>(), "each exactly once");
        shutdown(pool);
    }
);

backend_test!(
    a_panic_in_a_batch_costs_only_its_own_completion,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let pool = Pool::builder()
            .threads(1)
            .batch(16)
            .spawn(&port, move |_, c| {
                if c.user_data % 5 == 0 {
                    panic!("handler {} panics (on purpose)", c.user_data);
                }
                s.lock().unwrap().push(c.user_data);
            })
            .unwrap();
        for i in 0..100u64 {
            port.post(0, i, 0).unwrap();
        }
        wait_until("the 80 that do not panic are handled", || {
            seen.lock().unwrap().len() == 80
        });
        let want: Vec<u64> = (0..100).filter(|i| i % 5 != 0).collect();
        assert_eq!(*seen.lock().unwrap(), want);
        assert_eq!(pool.panics(), 20);
        shutdown(pool);
    }
);

backend_test!(batch_zero_is_one, |choice: BackendChoice| {
    let port = build(builder(choice).concurrency(1));
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let pool = Pool::builder()
        .threads(1)
        .batch(0)
        .spawn(&port, move |_, _| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    for i in 0..10u64 {
        port.post(0, i, 0).unwrap();
    }
    wait_until("10 packets are handled", || {
        seen.load(Ordering::SeqCst) == 10
    });
    shutdown(pool);
});

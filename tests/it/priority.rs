//! Priority lanes (SPEC §2, issue 6 item 5): a dequeue takes the highest-priority
//! completion present, and aging keeps `Low` from starving.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ringport::{BackendChoice, Pool, Priority, AGE_LIMIT};

use crate::common::*;

backend_test!(
    high_posted_last_is_dequeued_next,
    |choice: BackendChoice| {
        let port = port(choice);
        for i in 0..1000 {
            port.post_with_priority(1, i, 0, Priority::Low).unwrap();
        }
        port.post_with_priority(2, 5000, 0, Priority::High).unwrap();
        let c = get(&port);
        assert_eq!(
            (c.key, c.user_data),
            (2, 5000),
            "the High packet comes first"
        );
        // Then every Low packet, each exactly once, in the order posted.
        for i in 0..1000 {
            let c = get(&port);
            assert_eq!((c.key, c.user_data), (1, i));
        }
        assert!(matches!(
            port.get(Some(std::time::Duration::ZERO)),
            Err(ringport::Error::Timeout)
        ));
    }
);

backend_test!(
    low_is_delivered_under_constant_normal_load,
    |choice: BackendChoice| {
        // One worker keeps re-posting Normal packets for every one it takes, so the
        // Normal lane is never empty; the Low packets still all come out (aging).
        let port = builder(choice).concurrency(1).build().unwrap();
        let lows = Arc::new(Mutex::new(HashSet::new()));
        let normals = Arc::new(AtomicUsize::new(0));
        let at_first_low = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, n, st, first) = (
            lows.clone(),
            normals.clone(),
            stop.clone(),
            at_first_low.clone(),
        );
        let pool = Pool::builder()
            .threads(1)
            .spawn(&port, move |port, c| match c.key {
                1 => {
                    first
                        .lock()
                        .unwrap()
                        .get_or_insert(n.load(Ordering::Relaxed));
                    l.lock().unwrap().insert(c.user_data);
                }
                _ => {
                    n.fetch_add(1, Ordering::Relaxed);
                    if !st.load(Ordering::Relaxed) {
                        let _ = port.post(2, 0, 0);
                    }
                }
            })
            .unwrap();
        for _ in 0..8 {
            port.post(2, 0, 0).unwrap();
        }
        let before = normals.load(Ordering::Relaxed);
        for i in 0..1000 {
            port.post_with_priority(1, i, 0, Priority::Low).unwrap();
        }
        wait_until("every Low packet delivered", || {
            lows.lock().unwrap().len() == 1000
        });
        stop.store(true, Ordering::Relaxed);
        // The Normal lane was never empty, so the first Low packet went out only
        // once it had aged: after at least AGE_LIMIT Normal ones (one worker, in order).
        let first = at_first_low
            .lock()
            .unwrap()
            .expect("a Low packet was delivered");
        assert!(
            (first - before) as u64 >= AGE_LIMIT,
            "Low overtook Normal early: {} Normal packets before it",
            first - before
        );
        shutdown(pool);
    }
);

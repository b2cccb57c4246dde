//! FIFO: completions leave the port in the order they arrived in it, posted packets
//! and I/O completions alike.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Duration;

use ringport::{BackendChoice, Error, Op, OpKind};

use crate::common::*;

backend_test!(
    posts_keep_their_order_among_io_completions,
    |choice: BackendChoice| {
        // Posts are queued at once; nops and zero timers arrive when the kernel has
        // run them. Whatever the interleaving, posts keep their relative order and
        // every item comes out exactly once: dequeuing on the way, or only at the end.
        for dequeue_every in [Some(3), Some(7), None] {
            let port = build(builder(choice).concurrency(1));
            let rounds = 200u64;
            let mut seen = Seen::default();
            let mut taken = 0;
            for r in 0..rounds {
                port.post(1, r, 0).unwrap();
                port.submit(Op::nop().key(2), r).unwrap();
                port.submit(Op::timeout(Duration::ZERO).key(3), r).unwrap();
                if dequeue_every.is_some_and(|k| r % k == 0) {
                    check(&mut seen, &get(&port));
                    taken += 1;
                }
            }
            for _ in taken..rounds * 3 {
                check(&mut seen, &get(&port));
            }
            assert_eq!(seen.posts, rounds);
            assert_eq!(seen.ops.len() as u64, rounds * 2);
            assert!(matches!(
                port.get(Some(Duration::from_millis(20))),
                Err(Error::Timeout)
            ));
        }
    }
);

#[derive(Default)]
struct Seen {
    posts: u64,
    ops: HashSet<(u64, u64)>,
}

fn check(seen: &mut Seen, c: &ringport::Completion) {
    match c.key {
        1 => {
            assert!(c.is_packet());
            assert_eq!(c.user_data, seen.posts, "posted packets out of order");
            seen.posts += 1;
        }
        2 | 3 => {
            assert!(matches!(c.kind(), OpKind::Nop | OpKind::Timeout));
            assert_eq!(c.result.as_ref().ok(), Some(&0));
            assert!(
                seen.ops.insert((c.key, c.user_data)),
                "{c:?} dequeued twice"
            );
        }
        k => panic!("unexpected key {k}"),
    }
}

backend_test!(
    an_io_completion_queued_before_a_post_is_dequeued_before_it,
    |choice: BackendChoice| {
        // Concurrency 1. This thread takes packet A and so holds the only slot; a second
        // thread becomes the poller, reaps the nop B into the port's queue, and cannot
        // take it. Only then are C and D posted: the port holds B, C, D in that order.
        let port = build(builder(choice).concurrency(1));
        port.post(10, 0, 0).unwrap();
        assert_eq!(get(&port).key, 10);

        let (tx, rx) = mpsc::channel();
        let other = {
            let port = port.clone();
            std::thread::spawn(move || {
                let _ = tx.send(port.get(Some(T)).map(|c| c.key));
            })
        };
        // Wait until the other thread is the poller: only then is B reaped by it.
        std::thread::sleep(Duration::from_millis(20));
        port.submit(Op::nop().key(11), 1).unwrap();
        wait_until("the nop is reaped into the port's queue", || {
            port.stats().sched.queued == 1
        });
        port.post(12, 2, 0).unwrap();
        port.post(13, 3, 0).unwrap();
        assert_eq!(port.stats().sched.queued, 3);
        let keys: Vec<u64> = (0..3).map(|_| get(&port).key).collect();
        assert_eq!(
            keys,
            [11, 12, 13],
            "completions must leave in arrival order"
        );
        // This thread held the slot throughout: the other one got nothing.
        assert!(
            rx.try_recv().is_err(),
            "the second thread ran while concurrency 1 was taken"
        );
        port.close();
        match rx.recv_timeout(T) {
            Ok(Err(Error::Closed)) => {}
            other => panic!("the waiting thread: expected Err(Closed), got {other:?}"),
        }
        other.join().unwrap();
    }
);

backend_test!(
    get_many_takes_several_queued_completions_in_order,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(1));
        for i in 0..10 {
            port.post(i, 100 + i, i as usize).unwrap();
        }
        let mut out = Vec::new();
        let n = port.get_many(&mut out, 4, Some(T)).unwrap();
        assert_eq!(
            n, 4,
            "get_many takes several at once when several are queued"
        );
        assert_eq!(
            out.iter().map(|c| c.user_data).collect::<Vec<_>>(),
            [100, 101, 102, 103]
        );
        let n = port.get_many(&mut out, 100, Some(T)).unwrap();
        assert_eq!(n, 6);
        assert_eq!(out.len(), 10, "get_many appends");
        assert_eq!(
            out.iter().map(|c| c.user_data).collect::<Vec<_>>(),
            (100..110).collect::<Vec<_>>()
        );
        for c in &out {
            assert_eq!(c.result.as_ref().ok(), Some(&(c.key as usize)));
        }
        // With I/O completions too: nops submitted now are reaped together.
        for i in 0..8 {
            port.submit(Op::nop(), i).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 8 {
            let mut out = Vec::new();
            let n = port.get_many(&mut out, 64, Some(T)).unwrap();
            assert!(n >= 1 && n == out.len());
            got.extend(out.into_iter().map(|c| c.user_data));
        }
        got.sort_unstable();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        assert!(matches!(
            port.get_many(&mut Vec::new(), 8, Some(Duration::from_millis(10))),
            Err(Error::Timeout)
        ));
    }
);

backend_test!(
    a_post_always_wakes_the_thread_waiting_in_get,
    |choice: BackendChoice| {
        // One thread loops in get(None); this one posts a packet, waits until it is
        // taken, posts the next. Each post lands while the getter is somewhere on its
        // way back into the port (taking the poll role, reaping, entering the kernel
        // wait): wherever that is, the packet must reach it. A lost wake-up leaves a
        // packet queued while the only thread waits in the kernel for ever.
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let port = build(builder(choice).concurrency(1));
        let taken = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        {
            let (port, taken) = (port.clone(), taken.clone());
            std::thread::spawn(move || loop {
                match port.get(None) {
                    Ok(c) => taken.store(c.user_data + 1, Ordering::SeqCst),
                    Err(e) => return tx.send(e).unwrap(),
                }
            });
        }
        for i in 0..200_000u64 {
            port.post(0, i, 0).unwrap();
            let deadline = std::time::Instant::now() + T;
            while taken.load(Ordering::SeqCst) <= i {
                if std::time::Instant::now() > deadline {
                    let stats = port.stats();
                    port.close();
                    panic!(
                        "packet {i} was never taken by the thread waiting in get(None) \
                     (lost wake-up): {stats:?}"
                    );
                }
                std::hint::spin_loop();
            }
        }
        port.close();
        match rx.recv_timeout(T) {
            Ok(Error::Closed) => {}
            Ok(e) => panic!("the getter: expected Closed, got {e:?}"),
            Err(_) => panic!("the getter never woke from close"),
        }
    }
);

//! Operations outlive the threads that submitted them, and linked operations
//! stay whole while several threads submit and one thread submits and waits in
//! the same system call (io_uring: `Driver::enter`).
//!
//! A chain the kernel received in two parts would leave its `LINK_TIMEOUT`
//! unlinked (the kernel refuses it with `EINVAL`) and the receive it bounds
//! would wait forever. And io_uring stops serving a request whose submitting
//! thread has exited (its receive ends `ECANCELED` at the next event, its
//! timer never fires), which IOCP does not do to a port's I/O: the port must
//! submit such threads' requests from a thread of its own (`sys/thread.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringport::{BackendChoice, Op, OpKind};

use crate::common::*;

backend_test!(
    linked_timeouts_stay_linked_under_concurrent_submission,
    |choice: BackendChoice| {
        const SIDE_THREADS: u64 = 3;
        const PER_THREAD: u64 = 300;
        const ON_POLLER: u64 = 600;
        let port = Arc::new(port(choice));
        // Idle connections: nothing ever arrives, so every bounded receive ends
        // by its timeout.
        let pairs: Vec<_> = (0..4).map(|_| tcp_pair()).collect();
        for (i, (_, server)) in pairs.iter().enumerate() {
            port.associate(server, i as u64).unwrap();
        }
        let pairs = Arc::new(pairs);
        let bounded = |pairs: &[(std::net::TcpStream, std::net::TcpStream)], n: u64| {
            let server = &pairs[(n % pairs.len() as u64) as usize].1;
            Op::recv(server, Vec::with_capacity(16))
                .timeout_after(Duration::from_micros(200 + (n % 7) * 100))
        };
        let stop = Arc::new(AtomicBool::new(false));
        let side: Vec<_> = (0..SIDE_THREADS)
            .map(|t| {
                let port = port.clone();
                let pairs = pairs.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let n = 1_000_000 * (t + 1) + i;
                        port.submit(bounded(&pairs, n), n).unwrap();
                        // Unlinked operations between the chains.
                        port.submit(Op::nop().key(99), 0).unwrap();
                    }
                    // and exits with its receives still waiting (see the
                    // test below)
                })
            })
            .collect();

        // This thread is the one that dequeues: each completion it takes, it
        // follows with another bounded receive, which its next `get` submits
        // in the same call that waits.
        let total = SIDE_THREADS * PER_THREAD + ON_POLLER;
        let mut submitted_here = 0u64;
        while submitted_here < 8 {
            port.submit(bounded(&pairs, submitted_here), submitted_here)
                .unwrap();
            submitted_here += 1;
        }
        let mut ended = 0u64;
        let mut nops = 0u64;
        while ended < total {
            let c = match port.get(Some(T)) {
                Ok(c) => c,
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    panic!(
                        "{ended} of {total} bounded receives ended, then: {e:?} \
                         (a receive whose linked timeout was lost waits forever; stats {:?})",
                        port.stats()
                    );
                }
            };
            if c.key == 99 {
                nops += 1;
                assert_eq!(c.result.as_ref().ok(), Some(&0));
                continue;
            }
            assert_eq!(c.kind(), OpKind::Recv);
            assert!(
                c.is_cancelled(),
                "receive {} on an idle socket: expected ECANCELED from its timer, got {:?}",
                c.user_data,
                c.result
            );
            ended += 1;
            if submitted_here < ON_POLLER {
                port.submit(bounded(&pairs, submitted_here), submitted_here)
                    .unwrap();
                submitted_here += 1;
            }
        }
        for h in side {
            h.join().unwrap();
        }
        while nops < SIDE_THREADS * PER_THREAD {
            assert_eq!(get(&port).key, 99);
            nops += 1;
        }
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    an_operation_outlives_the_thread_that_submitted_it,
    |choice: BackendChoice| {
        let port = Arc::new(port(choice));
        let (client, server) = tcp_pair();
        let (_idle, idle) = tcp_pair();
        port.associate(&server, 1).unwrap();
        port.associate(&idle, 2).unwrap();
        let server = Arc::new(server);
        let idle = Arc::new(idle);
        {
            let (port, server, idle) = (port.clone(), server.clone(), idle.clone());
            std::thread::spawn(move || {
                port.submit(Op::recv(&*server, Vec::with_capacity(16)), 10)
                    .unwrap();
                port.submit(
                    Op::recv(&*idle, Vec::with_capacity(16))
                        .timeout_after(Duration::from_millis(50)),
                    11,
                )
                .unwrap();
            })
            .join()
            .unwrap();
        }
        // The thread is gone. Its bounded receive still times out...
        let c = get(&port);
        assert_eq!(c.user_data, 11);
        assert!(
            c.is_cancelled(),
            "expected ECANCELED from the timer, got {:?}",
            c.result
        );
        // ...and its receive still takes the data when it comes.
        std::io::Write::write_all(&mut &client, b"after exit").unwrap();
        let c = get(&port);
        assert_eq!(c.user_data, 10);
        assert_eq!(c.result.as_ref().ok(), Some(&10), "{:?}", c.result);
        assert_eq!(c.buf.unwrap(), b"after exit");
        assert_eq!(port.stats().in_flight, 0);
    }
);

//! Closing a port with work in flight: everything is cancelled and released, and
//! the port refuses new work.

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use ringport::{BackendChoice, Error, Op};

use crate::common::*;

backend_test!(exclusive close_with_ops_in_flight_cancels_them_all_without_leaks, |choice: BackendChoice| {
    let before = fd_snapshot();
    {
        let port = port(choice);
        let pairs: Vec<_> = (0..100).map(|_| tcp_pair()).collect();
        for (i, (_, server)) in pairs.iter().enumerate() {
            port.associate(server, i as u64).unwrap();
            port.submit(Op::recv(server, Vec::with_capacity(1024)), i as u64).unwrap();
        }
        // Accepts whose connections arrive before the close: the accepted sockets
        // must be closed by the port, queued or not.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        port.associate(&listener, 1000).unwrap();
        for i in 0..3 {
            port.submit(Op::accept(&listener), 1000 + i).unwrap();
        }
        let clients: Vec<_> = (0..3).map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap()).collect();
        // A pending timer and some queued packets too.
        port.submit(Op::timeout(Duration::from_secs(60)), 2000).unwrap();
        for i in 0..10 {
            port.post(0, i, 0).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(port.stats().in_flight >= 101, "stats: {:?}", port.stats());

        port.close();
        let stats = port.stats();
        assert_eq!(stats.in_flight, 0, "close must wait until the kernel released every operation");
        assert_eq!(stats.sched.queued, 0, "close drops every queued completion");

        // A closed port refuses everything.
        let (_, server) = &pairs[0];
        assert!(matches!(port.submit(Op::recv(server, Vec::with_capacity(8)), 1), Err(Error::Closed)));
        assert!(matches!(port.try_submit(Op::recv(server, Vec::with_capacity(8)), 1), Err(Error::Closed)));
        assert!(matches!(port.submit(Op::nop(), 1), Err(Error::Closed)));
        assert!(matches!(port.post(0, 0, 0), Err(Error::Closed)));
        assert!(matches!(port.get(Some(Duration::ZERO)), Err(Error::Closed)));
        drop(clients);
        drop(pairs);
        drop(listener);
        drop(port);
    }
    assert_no_new_fds(&before, "closing a port with work in flight");
});

backend_test!(
    close_while_threads_wait_with_ops_in_flight,
    |choice: BackendChoice| {
        for round in 0..10 {
            let port = build(builder(choice).concurrency(1));
            let pairs: Vec<_> = (0..20).map(|_| tcp_pair()).collect();
            for (i, (_, server)) in pairs.iter().enumerate() {
                port.associate(server, i as u64).unwrap();
                port.submit(Op::recv(server, Vec::with_capacity(64)), i as u64)
                    .unwrap();
            }
            let (tx, rx) = mpsc::channel();
            for _ in 0..3 {
                let port = port.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(port.get(None).map(|c| c.user_data));
                });
            }
            std::thread::sleep(Duration::from_millis(if round % 2 == 0 { 10 } else { 0 }));
            port.close();
            for i in 0..3 {
                match rx.recv_timeout(T) {
                    Ok(Err(Error::Closed)) => {}
                    Ok(other) => {
                        panic!("round {round}: waiter {i}: expected Err(Closed), got {other:?}")
                    }
                    Err(_) => panic!(
                        "round {round}: waiter {i} never woke after close ({:?})",
                        port.stats()
                    ),
                }
            }
            let stats = port.stats();
            assert_eq!(stats.in_flight, 0, "round {round}");
            assert_eq!(
                stats.sched.queued, 0,
                "round {round}: completions reaped during close were queued on a closed port"
            );
        }
    }
);

backend_test!(
    drop_of_the_last_handle_closes_the_port,
    |choice: BackendChoice| {
        let port = port(choice);
        let (_client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        port.submit(Op::recv(&server, Vec::with_capacity(64)), 1)
            .unwrap();
        port.post(1, 1, 1).unwrap();
        // Dropping with an op in flight must neither hang nor crash.
        drop(port);
    }
);

backend_test!(
    close_wakes_a_thread_that_is_just_returning_to_get,
    |choice: BackendChoice| {
        // A thread takes a packet and goes straight back into get(None); close() comes
        // while it is on its way (taking the poll role, reaping, entering the kernel
        // wait), at a slightly different moment each round. Wherever it is, close must
        // wake it.
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        for round in 0..2000u64 {
            let port = build(builder(choice).concurrency(1));
            let took = Arc::new(AtomicBool::new(false));
            let (tx, rx) = mpsc::channel();
            {
                let (port, took) = (port.clone(), took.clone());
                std::thread::spawn(move || {
                    let r = loop {
                        match port.get(None) {
                            Ok(_) => took.store(true, Ordering::SeqCst),
                            Err(e) => break e,
                        }
                    };
                    let _ = tx.send(r);
                });
            }
            port.post(0, 0, 0).unwrap();
            // Spin (no sleep): close must land while the thread is still on its way.
            let deadline = std::time::Instant::now() + T;
            while !took.load(Ordering::SeqCst) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the packet was never taken"
                );
                std::hint::spin_loop();
            }
            for _ in 0..(round % 64) * 8 {
                std::hint::spin_loop();
            }
            port.close();
            match rx.recv_timeout(T) {
                Ok(Error::Closed) => {}
                Ok(e) => panic!("round {round}: expected Closed, got {e:?}"),
                Err(_) => panic!(
                    "round {round}: a thread in get(None) never woke after close ({:?})",
                    port.stats()
                ),
            }
        }
    }
);

//! One thread, several ports (session 16's review): a thread that waits on
//! another port leaves the first (IOCP, iocp.md §1.3), a pool worker's
//! submission to another port reaches the kernel, and a descriptor that is
//! not open cannot be associated.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use ringport::{BackendChoice, Error, Op};

use crate::common::*;

backend_test!(
    waiting_on_another_port_frees_the_first_ports_slot,
    |choice: BackendChoice| {
        let a = build(builder(choice).concurrency(1));
        let b = port(choice);
        a.post(1, 1, 0).unwrap();
        // This thread runs a handler of A: 1 of 1.
        assert_eq!(get(&a).user_data, 1);
        let a2 = a.clone();
        let other = std::thread::spawn(move || {
            // After the main thread has gone to wait on B (sooner, and this
            // test shows nothing).
            std::thread::sleep(Duration::from_millis(100));
            a2.post(1, 2, 0).unwrap();
            a2.get(Some(T)).map(|c| c.user_data)
        });
        // Waiting on B ends this thread's association with A: A's slot is free.
        let r = b.get(Some(Duration::from_millis(500)));
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        let got = other.join().unwrap();
        assert!(
            matches!(got, Ok(2)),
            "A's packet waited while A's only runner waited on B: {got:?} ({:?})",
            a.stats().sched
        );
        // Back on A, the thread takes A's packets again.
        a.post(1, 3, 0).unwrap();
        assert_eq!(get(&a).user_data, 3);
    }
);

backend_test!(
    a_pool_worker_submitting_to_another_port_is_not_held_back,
    |choice: BackendChoice| {
        let a = port(choice);
        let b = port(choice);
        let b2 = b.clone();
        let pool = ringport::Pool::builder()
            .threads(1)
            .spawn(&a, move |_, c| {
                b2.submit(Op::nop().key(77), c.user_data).unwrap();
            })
            .unwrap();
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.get(Some(T)).map(|c| (c.key, c.user_data)))
        };
        // The waiter asleep in B's backend first (sooner, and this test
        // shows nothing).
        std::thread::sleep(Duration::from_millis(200));
        a.post(0, 5, 0).unwrap();
        let r = waiter.join().unwrap();
        shutdown(pool);
        // A pool worker holds its submissions for its next `get`, on A: the
        // nop stayed in B's ring and B's waiter slept on (io_uring).
        assert!(
            matches!(r, Ok((77, 5))),
            "a nop submitted to B by A's pool worker: {r:?} (B in flight: {})",
            b.stats().in_flight
        );
    }
);

// Exclusive: between the close and the associate no other test may open a
// descriptor (one took the number back once, and the associate rightly
// succeeded).
backend_test!(
    exclusive a_descriptor_that_is_not_open_is_not_associated,
    |choice: BackendChoice| {
        let port = port(choice);
        let f = temp_file();
        let n = f.as_raw_fd();
        drop(f);
        // SAFETY: only the number is used; the port checks it is open.
        let closed = unsafe { BorrowedFd::borrow_raw(n) };
        match port.associate(&closed, 3) {
            Err(Error::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADF)),
            other => panic!("associating closed descriptor {n}: {other:?}"),
        }
        // The number, once open again (if this thread gets it back: the
        // port's own threads may open descriptors), associates: the refusal
        // left nothing.
        let f = temp_file();
        if f.as_raw_fd() == n {
            port.associate(&f, 3)
                .expect("associate the reopened number");
        }
    }
);

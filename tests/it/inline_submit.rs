//! `CompletionPort::submit_inline` (IOCP's `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`):
//! an operation that finishes during the call is handed back and never queued;
//! one that must wait completes through the port as after `submit`. On epoll
//! a socket operation is tried at once (`Done` when it can finish); on io_uring
//! a receive is `Pending`, and a send on a stream socket with nothing before
//! it is made at once when no batch would carry it (`send_now.rs`).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use ringport::{BackendChoice, BackendKind, Completion, CompletionPort, Error, Op, Submitted};

use crate::common::*;

/// The completion of `s`: handed back (`Done`), or dequeued for a `Pending`
/// one (with its own `user_data`). Says which.
fn finish(port: &CompletionPort, s: Submitted, user_data: u64) -> (Completion, bool) {
    match s {
        Submitted::Done(c) => (c, true),
        Submitted::Pending(_) => {
            let c = get(port);
            assert_eq!(c.user_data, user_data, "the pending operation's packet");
            (c, false)
        }
    }
}

/// Nothing is queued in the port.
fn assert_empty(port: &CompletionPort) {
    match port.get(Some(Duration::ZERO)) {
        Err(Error::Timeout) => {}
        other => panic!("expected no packet, got {other:?}"),
    }
}

backend_test!(
    a_send_with_room_and_a_receive_with_data_are_done_in_the_call,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, mut b) = tcp_pair();
        port.associate(&a, 5).unwrap();
        let epoll = port.backend() == BackendKind::Epoll;

        let s = port
            .submit_inline(Op::send(&a, b"hello".to_vec()), 1)
            .unwrap();
        assert!(
            matches!(s, Submitted::Done(_)),
            "a send with room and nothing before it: Done on both"
        );
        let (c, _) = finish(&port, s, 1);
        assert_eq!((c.key, c.user_data), (5, 1));
        assert_eq!(c.result.as_ref().ok().copied(), Some(5));
        assert_eq!(
            c.buf.as_deref(),
            Some(&b"hello"[..]),
            "the buffer comes back"
        );
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        b.write_all(b"world!").unwrap();
        // Until the bytes have arrived (loopback: at once, but not promised).
        wait_until("bytes to arrive", || {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int into a live local.
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&a), libc::FIONREAD, &mut n) };
            n == 6
        });
        let s = port
            .submit_inline(Op::recv(&a, Vec::with_capacity(64)), 2)
            .unwrap();
        assert_eq!(
            matches!(s, Submitted::Done(_)),
            epoll,
            "a receive with data waiting"
        );
        let (c, _) = finish(&port, s, 2);
        assert_eq!(c.result.as_ref().ok().copied(), Some(6));
        assert_eq!(c.buf.as_deref(), Some(&b"world!"[..]));
        assert_empty(&port);
        assert_eq!(port.stats().in_flight, 0, "nothing left in flight");
    }
);

backend_test!(
    a_receive_that_must_wait_completes_through_the_port,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, mut b) = tcp_pair();
        port.associate(&a, 9).unwrap();
        let s = port
            .submit_inline(Op::recv(&a, Vec::with_capacity(64)), 3)
            .unwrap();
        let Submitted::Pending(id) = s else {
            panic!("nothing to receive yet: the receive must wait");
        };
        assert_empty(&port);
        b.write_all(b"late").unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data, c.op_id()), (9, 3, Some(id)));
        assert_eq!(c.buf.as_deref(), Some(&b"late"[..]));
        assert_empty(&port);
    }
);

backend_test!(
    a_synchronous_error_is_handed_back_once,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, b) = tcp_pair();
        port.associate(&a, 1).unwrap();
        // The peer is gone: a send fails with EPIPE (or ECONNRESET once the reset
        // has come back).
        b.shutdown(Shutdown::Both).unwrap();
        drop(b);
        let mut saw_error = false;
        for i in 0..50u64 {
            let s = port
                .submit_inline(Op::send(&a, vec![1u8; 1024]), 10 + i)
                .unwrap();
            let (c, _) = finish(&port, s, 10 + i);
            if let Err(e) = &c.result {
                assert!(
                    matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
                    "unexpected error {e}"
                );
                assert!(c.buf.is_some(), "the failed send's buffer comes back");
                saw_error = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(saw_error, "a send to a closed peer fails");
        assert_empty(&port);
    }
);

backend_test!(refusals_queue_nothing, |choice: BackendChoice| {
    let port = port(choice);
    let (a, _b) = tcp_pair();
    match port.submit_inline(Op::recv(&a, Vec::with_capacity(8)), 1) {
        Err(Error::Unassociated(_)) => {}
        other => panic!("an unassociated socket: {other:?}"),
    }
    port.close();
    match port.submit_inline(Op::nop(), 2) {
        Err(Error::Closed) => {}
        other => panic!("a closed port: {other:?}"),
    }
});

backend_test!(
    a_done_operation_leaves_no_slot_taken,
    |choice: BackendChoice| {
        // One operation in flight at most: each send must have freed its slot,
        // handed back or dequeued, before the next can start (a leaked slot makes
        // the second `submit_inline` wait for room forever).
        let port = build(builder(choice).max_in_flight(1));
        let (a, mut b) = tcp_pair();
        port.associate(&a, 1).unwrap();
        for i in 0..100u64 {
            let s = port
                .submit_inline(Op::send(&a, vec![i as u8; 16]), i)
                .unwrap();
            assert!(matches!(s, Submitted::Done(_)));
            let (c, _) = finish(&port, s, i);
            assert_eq!(c.result.as_ref().ok().copied(), Some(16));
        }
        let mut got = vec![0u8; 1600];
        b.read_exact(&mut got).unwrap();
        assert!(got
            .chunks(16)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&x| x == i as u8)));
        assert_empty(&port);
        assert_eq!(port.stats().in_flight, 0);
    }
);

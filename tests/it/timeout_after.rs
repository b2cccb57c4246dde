//! `Op::timeout_after`, the linked timeout that bounds any operation: it
//! cancels an idle receive, changes nothing when it does not fire, and bounds a
//! blocked `send_file` — on both backends.

use std::io::Write;
use std::time::Duration;

use ringport::{BackendChoice, CompletionPort, Error, Op, OpKind};

use crate::common::*;
use crate::ops2::{file_with, pattern, read_all};

/// Asserts that nothing more completes for a moment (no stray completion from
/// a linked timeout's timer).
#[track_caller]
fn assert_quiet(port: &CompletionPort) {
    match port.get(Some(Duration::from_millis(50))) {
        Err(Error::Timeout) => {}
        other => panic!("expected no further completion, got {other:?}"),
    }
}

backend_test!(
    a_linked_timeout_cancels_an_idle_recv,
    |choice: BackendChoice| {
        let port = port(choice);
        let (client, server) = tcp_pair();
        port.associate(&server, 2).unwrap();
        let buf = Vec::with_capacity(64);
        let ptr = buf.as_ptr();
        let op = Op::recv(&server, buf).timeout_after(Duration::from_millis(20));
        assert_eq!(op.kind(), OpKind::Recv);
        let id = port.submit(op, 1).unwrap();
        let c = get(&port);
        assert_eq!(
            (c.key, c.user_data, c.kind(), c.op_id()),
            (2, 1, OpKind::Recv, Some(id))
        );
        assert!(c.is_cancelled(), "expected ECANCELED, got {:?}", c.result);
        let buf = c.buf.expect("a timed-out recv hands its buffer back");
        assert_eq!(buf.as_ptr(), ptr);
        assert!(buf.is_empty());
        assert_quiet(&port);
        assert_eq!(port.stats().in_flight, 0);

        // The socket is unharmed: the next receive gets the data.
        (&client).write_all(b"late").unwrap();
        port.submit(Op::recv(&server, Vec::with_capacity(64)), 2)
            .unwrap();
        assert_eq!(get(&port).buf.unwrap(), b"late");
    }
);

backend_test!(
    a_linked_timeout_that_does_not_fire_changes_nothing,
    |choice: BackendChoice| {
        let port = port(choice);
        let (client, server) = tcp_pair();
        port.associate(&server, 3).unwrap();
        let long = Duration::from_secs(30);

        // Data already there.
        (&client).write_all(b"ready").unwrap();
        port.submit(
            Op::recv(&server, Vec::with_capacity(64)).timeout_after(long),
            1,
        )
        .unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data), (3, 1));
        assert_eq!(c.result.unwrap(), 5);
        assert_eq!(c.buf.unwrap(), b"ready");
        assert_quiet(&port);

        // Data arriving while the receive waits.
        port.submit(
            Op::recv(&server, Vec::with_capacity(64)).timeout_after(long),
            2,
        )
        .unwrap();
        assert_quiet(&port);
        (&client).write_all(b"later").unwrap();
        let c = get(&port);
        assert_eq!((c.user_data, c.result.as_ref().ok()), (2, Some(&5)));
        assert_eq!(c.buf.unwrap(), b"later");
        assert_quiet(&port);

        // A file op and a nop, bounded too.
        let file = file_with(b"0123456789");
        port.associate(&file, 4).unwrap();
        port.submit(
            Op::read_at(&file, Vec::with_capacity(4), 2).timeout_after(long),
            3,
        )
        .unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data), (4, 3));
        assert_eq!(c.buf.unwrap(), b"2345");
        port.submit(Op::nop().key(9).timeout_after(long), 4)
            .unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data, c.result.ok()), (9, 4, Some(0)));
        // A timer shorter than its bound fires normally.
        port.submit(Op::timeout(Duration::from_millis(5)).timeout_after(long), 5)
            .unwrap();
        let c = get(&port);
        assert_eq!((c.user_data, c.result.ok()), (5, Some(0)));
        assert_quiet(&port);
        assert_eq!(port.stats().in_flight, 0);

        // A transfer that finishes well within its bound (its timer is a
        // separate one on io_uring); then an operation that likely reuses its
        // slot waits past that bound untouched by it.
        let reader = read_all(client);
        let short = Duration::from_millis(40);
        port.submit(Op::send_file(&server, &file, 0, 10).timeout_after(short), 6)
            .unwrap();
        let c = get(&port);
        assert_eq!((c.user_data, c.result.ok()), (6, Some(10)));
        let (_idle, other) = tcp_pair();
        port.associate(&other, 5).unwrap();
        let id = port
            .submit(Op::recv(&other, Vec::with_capacity(8)), 7)
            .unwrap();
        std::thread::sleep(short * 3);
        assert_quiet(&port);
        port.cancel(id).unwrap();
        assert!(get(&port).is_cancelled());
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let got = reader.join().unwrap();
        assert!(got.ends_with(b"0123456789"), "{got:?}");
    }
);

backend_test!(
    a_linked_timeout_bounds_a_blocked_send_file,
    |choice: BackendChoice| {
        let port = port(choice);
        let data = pattern(4 << 20);
        let file = file_with(&data);
        let (sender, peer) = tcp_pair();
        socket2::SockRef::from(&sender)
            .set_send_buffer_size(64 << 10)
            .unwrap();
        socket2::SockRef::from(&peer)
            .set_recv_buffer_size(64 << 10)
            .unwrap();
        port.associate(&sender, 8).unwrap();

        // The peer never reads: sooner or later a transfer cannot finish, and
        // its timeout ends it.
        let mut offset = 0u64;
        for i in 0..1000 {
            let op = Op::send_file(&sender, &file, offset, data.len() - offset as usize)
                .timeout_after(Duration::from_millis(30));
            port.submit(op, i).unwrap();
            let c = get(&port);
            assert_eq!((c.key, c.user_data, c.kind()), (8, i, OpKind::SendFile));
            match c.result {
                Ok(n) => {
                    assert!(n > 0);
                    offset = (offset + n as u64) % data.len() as u64;
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e:?}");
                    assert_quiet(&port);
                    assert_eq!(port.stats().in_flight, 0);
                    return;
                }
            }
        }
        panic!("1000 transfers to a peer that never reads all finished");
    }
);

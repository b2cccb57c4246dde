//! Cancel: one that wins, one that loses the race, and stale or unknown ids.

use std::io::Write;
use std::time::Duration;

use ringport::{BackendChoice, Error, Op, OpKind};

use crate::common::*;

backend_test!(
    cancel_of_an_idle_recv_wins_and_hands_the_buffer_back,
    |choice: BackendChoice| {
        let port = port(choice);
        let (_client, server) = tcp_pair();
        port.associate(&server, 5).unwrap();
        let buf = Vec::with_capacity(4096);
        let ptr = buf.as_ptr();
        let id = port.submit(Op::recv(&server, buf), 1).unwrap();
        // Nothing will ever arrive: make sure the recv really is pending.
        assert!(matches!(
            port.get(Some(Duration::from_millis(20))),
            Err(Error::Timeout)
        ));
        port.cancel(id).unwrap();
        let c = get(&port);
        assert_eq!(
            (c.key, c.user_data, c.kind(), c.op_id()),
            (5, 1, OpKind::Recv, Some(id))
        );
        assert!(c.is_cancelled(), "expected ECANCELED, got {:?}", c.result);
        assert_errno(&c.result, libc::ECANCELED);
        let buf = c.buf.expect("a cancelled recv hands its buffer back");
        assert_eq!(buf.as_ptr(), ptr, "the very allocation comes back");
        assert!(buf.capacity() >= 4096);
        assert_eq!(port.stats().in_flight, 0);
        // Its id is stale now.
        assert!(matches!(port.cancel(id), Err(Error::NotFound)));
    }
);

backend_test!(cancel_of_a_pending_timeout_wins, |choice: BackendChoice| {
    let port = port(choice);
    let id = port
        .submit(Op::timeout(Duration::from_secs(60)), 1)
        .unwrap();
    port.cancel(id).unwrap();
    let c = get(&port);
    assert_eq!(c.op_id(), Some(id));
    assert!(c.is_cancelled(), "expected ECANCELED, got {:?}", c.result);
});

backend_test!(
    cancel_after_the_completion_was_dequeued_is_not_found,
    |choice: BackendChoice| {
        let port = port(choice);
        let id = port.submit(Op::nop(), 1).unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 0);
        assert!(matches!(port.cancel(id), Err(Error::NotFound)));

        let id = port
            .submit(Op::timeout(Duration::from_millis(1)), 2)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 0);
        assert!(matches!(port.cancel(id), Err(Error::NotFound)));
    }
);

backend_test!(
    cancel_that_loses_the_race_leaves_the_real_result,
    |choice: BackendChoice| {
        let port = port(choice);
        // Completed in the kernel, not yet dequeued: cancel may say Ok or NotFound, but
        // the completion carries the real result, never ECANCELED.
        let id = port
            .submit(Op::timeout(Duration::from_millis(1)), 1)
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let r = port.cancel(id);
        assert!(matches!(r, Ok(()) | Err(Error::NotFound)), "cancel: {r:?}");
        let c = get(&port);
        assert_eq!(c.op_id(), Some(id));
        assert!(
            !c.is_cancelled(),
            "the timer had fired: cancel must not change its result"
        );
        assert_eq!(c.result.unwrap(), 0);

        // A race with no sleep: either outcome, but exactly one completion each, and
        // only ECANCELED or the real result.
        for i in 0..200u64 {
            let id = port.submit(Op::nop(), i).unwrap();
            match port.cancel(id) {
                Ok(()) | Err(Error::NotFound) => {}
                Err(e) => panic!("cancel of a nop: {e:?}"),
            }
            let c = get(&port);
            assert_eq!((c.user_data, c.op_id()), (i, Some(id)));
            assert!(
                c.is_cancelled() || matches!(c.result, Ok(0)),
                "nop {i}: {:?}",
                c.result
            );
        }
        assert!(
            matches!(
                port.get(Some(Duration::from_millis(20))),
                Err(Error::Timeout)
            ),
            "no extra completions"
        );
    }
);

backend_test!(
    stale_op_id_does_not_cancel_a_newer_operation,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        let old = port.submit(Op::nop(), 1).unwrap();
        assert_eq!(get(&port).op_id(), Some(old));
        // The newer operation probably reuses the old one's slot.
        let new = port
            .submit(Op::recv(&server, Vec::with_capacity(8)), 2)
            .unwrap();
        assert_ne!(old, new);
        assert!(
            matches!(port.cancel(old), Err(Error::NotFound)),
            "a stale id must be NotFound"
        );
        // The recv was not cancelled: it still receives.
        client.write_all(b"still").unwrap();
        let c = get(&port);
        assert_eq!(c.op_id(), Some(new));
        assert_eq!(
            c.result.unwrap(),
            5,
            "the stale cancel hit the newer operation"
        );
        assert_eq!(c.buf.unwrap(), b"still");
    }
);

backend_test!(
    cancel_of_an_id_from_another_port_or_never_issued_is_not_found,
    |choice: BackendChoice| {
        let port = port(choice);
        let other = crate::common::port(choice);
        // An id the other port issued (a slot this port has never used).
        for _ in 0..3 {
            other.submit(Op::nop(), 0).unwrap();
        }
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(
                other
                    .submit(Op::timeout(Duration::from_secs(60)), 0)
                    .unwrap(),
            );
        }
        for id in &ids {
            assert!(
                matches!(port.cancel(*id), Err(Error::NotFound)),
                "{id:?} is unknown to this port"
            );
        }
        other.close();
    }
);

backend_test!(
    an_id_from_another_port_cancels_nothing_there,
    |choice: BackendChoice| {
        let a = port(choice);
        let b = port(choice);
        let on_a = a
            .submit(Op::timeout(std::time::Duration::from_secs(30)), 1)
            .unwrap();
        let on_b = b
            .submit(Op::timeout(std::time::Duration::from_millis(50)), 2)
            .unwrap();
        assert_ne!(on_a, on_b, "two ports' first operations share an id");
        assert!(matches!(b.cancel(on_a), Err(ringport::Error::NotFound)));
        // B's timer runs to its end, not cancelled by A's id.
        let c = get(&b);
        assert_eq!(c.user_data, 2);
        assert!(c.result.is_ok(), "{:?}", c.result);
        a.cancel(on_a).unwrap();
        assert!(get(&a).is_cancelled());
    }
);

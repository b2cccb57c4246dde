//! Datagram sockets: `recv_from` and `send_to` on UDP (IPv4 and IPv6 loopback)
//! and Unix datagram sockets bound to paths in a temp directory.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use ringport::{BackendChoice, Completion, CompletionPort, Error, Op, OpKind};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::common::*;

/// A UDP socket on 127.0.0.1, on a free port.
fn udp4() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1")
}

fn local(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("local_addr")
}

/// Dequeues `n` completions, sorted by `user_data`.
fn get_sorted(port: &CompletionPort, n: usize) -> Vec<Completion> {
    let mut v: Vec<Completion> = (0..n).map(|_| get(port)).collect();
    v.sort_by_key(|c| c.user_data);
    v
}

/// Asserts that nothing completes for a moment: the operation submitted is
/// really waiting (queued), not finished inline.
#[track_caller]
fn assert_pending(port: &CompletionPort) {
    match port.get(Some(Duration::from_millis(20))) {
        Err(Error::Timeout) => {}
        other => panic!("expected nothing to complete yet, got {other:?}"),
    }
}

/// A Unix datagram socket, bound to `path` if given.
fn unix_dgram(path: Option<&Path>) -> Socket {
    let s = Socket::new(Domain::UNIX, Type::DGRAM, None).expect("a Unix datagram socket");
    if let Some(p) = path {
        s.bind(&SockAddr::unix(p).expect("a Unix socket path"))
            .expect("bind a Unix datagram socket");
    }
    s
}

backend_test!(
    udp_round_trip_reports_the_senders_address,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, b) = (udp4(), udp4());
        port.associate(&a, 10).unwrap();
        port.associate(&b, 20).unwrap();

        // Receive first, so the recv_from is really pending when the datagram comes.
        let buf = Vec::with_capacity(64);
        let ptr = buf.as_ptr();
        port.submit(Op::recv_from(&b, buf), 1).unwrap();
        port.submit(Op::send_to(&a, b"ping".to_vec(), local(&b)), 2)
            .unwrap();
        let [mut recv, mut send] = <[Completion; 2]>::try_from(get_sorted(&port, 2)).unwrap();

        assert_eq!((recv.key, recv.kind()), (20, OpKind::RecvFrom));
        assert_eq!(recv.result.as_ref().ok(), Some(&4));
        let from = recv.take_addr().expect("a recv_from reports its sender");
        assert_eq!(from.as_socket(), Some(local(&a)));
        assert!(recv.take_addr().is_none(), "the address can be taken once");
        let got = recv.buf.take().expect("a recv_from hands its buffer back");
        assert_eq!(got, b"ping");
        assert_eq!(got.as_ptr(), ptr, "the very allocation comes back");

        assert_eq!((send.key, send.kind()), (10, OpKind::SendTo));
        assert_eq!(send.result.as_ref().ok(), Some(&4));
        assert!(send.take_addr().is_none(), "a send_to carries no address");
        assert_eq!(
            send.buf.take().unwrap(),
            b"ping",
            "a send_to hands its buffer back unchanged"
        );

        // Reply to the address the datagram came from.
        port.submit(Op::recv_from(&a, Vec::with_capacity(64)), 3)
            .unwrap();
        port.submit(Op::send_to(&b, b"pong!".to_vec(), from), 4)
            .unwrap();
        let [mut recv, send] = <[Completion; 2]>::try_from(get_sorted(&port, 2)).unwrap();
        assert_eq!(send.result.unwrap(), 5);
        assert_eq!((recv.key, recv.kind()), (10, OpKind::RecvFrom));
        assert_eq!(recv.result.as_ref().ok(), Some(&5));
        assert_eq!(
            recv.take_addr().and_then(|s| s.as_socket()),
            Some(local(&b))
        );
        assert_eq!(recv.buf.unwrap(), b"pong!");
    }
);

backend_test!(
    an_empty_datagram_is_ok_zero_with_its_sender,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, b) = (udp4(), udp4());
        port.associate(&a, 1).unwrap();
        port.associate(&b, 2).unwrap();
        port.submit(Op::send_to(&a, Vec::new(), local(&b)), 1)
            .unwrap();
        assert_eq!(get(&port).result.unwrap(), 0);
        port.submit(Op::recv_from(&b, Vec::with_capacity(16)), 2)
            .unwrap();
        let mut c = get(&port);
        assert_eq!(
            c.result.as_ref().ok(),
            Some(&0),
            "an empty datagram is Ok(0), not end of stream"
        );
        assert_eq!(c.take_addr().and_then(|s| s.as_socket()), Some(local(&a)));
        assert_eq!(c.buf.unwrap().len(), 0);
    }
);

backend_test!(
    recv_from_waits_until_a_datagram_arrives,
    |choice: BackendChoice| {
        let port = port(choice);
        let (sender, b) = (udp4(), udp4());
        port.associate(&b, 7).unwrap();

        // One waiting alone.
        port.submit(Op::recv_from(&b, Vec::with_capacity(64)), 1)
            .unwrap();
        assert_pending(&port);
        sender.send_to(b"late", local(&b)).unwrap();
        let mut c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (7, 1, OpKind::RecvFrom));
        assert_eq!(c.result.as_ref().ok(), Some(&4));
        assert_eq!(
            c.take_addr().and_then(|s| s.as_socket()),
            Some(local(&sender))
        );
        assert_eq!(c.buf.unwrap(), b"late");

        // Several queued on one socket: each datagram goes to exactly one of them.
        for i in 0..4 {
            port.submit(Op::recv_from(&b, Vec::with_capacity(64)), 10 + i)
                .unwrap();
        }
        assert_pending(&port);
        let sent: BTreeSet<Vec<u8>> = (0..4u8).map(|i| vec![b'd', i]).collect();
        for d in &sent {
            sender.send_to(d, local(&b)).unwrap();
        }
        let mut got = BTreeSet::new();
        for mut c in get_sorted(&port, 4) {
            assert_eq!(c.kind(), OpKind::RecvFrom);
            assert_eq!(c.result.as_ref().ok(), Some(&2));
            assert_eq!(
                c.take_addr().and_then(|s| s.as_socket()),
                Some(local(&sender))
            );
            assert!(got.insert(c.buf.unwrap()), "a datagram was received twice");
        }
        assert_eq!(got, sent);
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    a_datagram_longer_than_the_buffer_is_truncated_to_it,
    |choice: BackendChoice| {
        let port = port(choice);
        let (sender, b) = (udp4(), udp4());
        port.associate(&b, 1).unwrap();
        sender.send_to(b"0123456789", local(&b)).unwrap();
        sender.send_to(b"next", local(&b)).unwrap();

        let buf = Vec::with_capacity(4);
        let cap = buf.capacity();
        assert!(cap < 10, "the buffer must be smaller than the datagram");
        port.submit(Op::recv_from(&b, buf), 1).unwrap();
        let mut c = get(&port);
        // recvfrom(2) semantics: the result is the bytes that fitted, not the
        // datagram's length, and the rest of that datagram is gone.
        assert_eq!(
            c.result.as_ref().ok(),
            Some(&cap),
            "a truncated datagram reports the bytes received"
        );
        assert_eq!(c.buf.take().unwrap(), &b"0123456789"[..cap]);
        assert_eq!(
            c.take_addr().and_then(|s| s.as_socket()),
            Some(local(&sender))
        );

        port.submit(Op::recv_from(&b, Vec::with_capacity(64)), 2)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 4);
        assert_eq!(
            c.buf.unwrap(),
            b"next",
            "the truncated rest must not be delivered"
        );
    }
);

backend_test!(send_to_ipv6_loopback, |choice: BackendChoice| {
    let (a, b) = match (UdpSocket::bind("[::1]:0"), UdpSocket::bind("[::1]:0")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipped: no IPv6 loopback here ({e}) [dgram::send_to_ipv6_loopback]");
            return;
        }
    };
    let port = port(choice);
    port.associate(&a, 1).unwrap();
    port.associate(&b, 2).unwrap();
    port.submit(Op::recv_from(&b, Vec::with_capacity(64)), 1)
        .unwrap();
    port.submit(Op::send_to(&a, b"over v6".to_vec(), local(&b)), 2)
        .unwrap();
    let [mut recv, send] = <[Completion; 2]>::try_from(get_sorted(&port, 2)).unwrap();
    assert_eq!(send.result.unwrap(), 7);
    assert_eq!(recv.result.as_ref().ok(), Some(&7));
    let from = recv.take_addr().expect("a recv_from reports its sender");
    assert!(from.is_ipv6());
    assert_eq!(from.as_socket(), Some(local(&a)));
    assert_eq!(recv.buf.unwrap(), b"over v6");
});

backend_test!(
    cancel_of_a_pending_recv_from_returns_ecanceled_and_the_buffer,
    |choice: BackendChoice| {
        let port = port(choice);
        let b = udp4();
        port.associate(&b, 5).unwrap();
        let buf = Vec::with_capacity(2048);
        let ptr = buf.as_ptr();
        let id = port.submit(Op::recv_from(&b, buf), 1).unwrap();
        assert_pending(&port);
        port.cancel(id).unwrap();
        let mut c = get(&port);
        assert_eq!(
            (c.key, c.user_data, c.kind(), c.op_id()),
            (5, 1, OpKind::RecvFrom, Some(id))
        );
        assert!(c.is_cancelled(), "expected ECANCELED, got {:?}", c.result);
        assert_errno(&c.result, libc::ECANCELED);
        assert!(
            c.take_addr().is_none(),
            "a cancelled recv_from has no sender"
        );
        let buf = c.buf.expect("a cancelled recv_from hands its buffer back");
        assert_eq!(buf.as_ptr(), ptr, "the very allocation comes back");
        assert!(buf.capacity() >= 2048);
        assert_eq!(buf.len(), 0);
        assert_eq!(port.stats().in_flight, 0);
        assert!(matches!(port.cancel(id), Err(Error::NotFound)));

        // The socket still works afterwards.
        port.submit(Op::recv_from(&b, Vec::with_capacity(8)), 2)
            .unwrap();
        udp4().send_to(b"ok", local(&b)).unwrap();
        assert_eq!(get(&port).result.unwrap(), 2);
    }
);

backend_test!(
    closing_the_port_releases_pending_datagram_ops,
    |choice: BackendChoice| {
        let port = port(choice);
        let sockets: Vec<UdpSocket> = (0..8).map(|_| udp4()).collect();
        for (i, s) in sockets.iter().enumerate() {
            port.associate(s, i as u64).unwrap();
            port.submit(Op::recv_from(s, Vec::with_capacity(256)), i as u64)
                .unwrap();
        }
        assert_pending(&port);
        assert_eq!(port.stats().in_flight, 8);
        port.close();
        assert_eq!(
            port.stats().in_flight,
            0,
            "close must wait until every recv_from was released"
        );
        assert!(matches!(
            port.submit(Op::send_to(&sockets[0], vec![1], local(&sockets[1])), 9),
            Err(Error::Closed)
        ));
    }
);

backend_test!(
    close_or_disassociate_with_a_pending_recv_from_hands_the_buffer_back,
    |choice: BackendChoice| {
        // Ending the association (close, or disassociate) cancels what is
        // in flight on the socket, on both backends, without a cancel call:
        // the recv_from's completion is ECANCELED, with its buffer.
        use std::os::fd::OwnedFd;
        let port = port(choice);
        for close in [false, true] {
            let s = udp4();
            port.associate(&s, 4).unwrap();
            let buf = Vec::with_capacity(512);
            let ptr = buf.as_ptr();
            let id = port.submit(Op::recv_from(&s, buf), 1).unwrap();
            assert_pending(&port);
            if close {
                port.submit(Op::close(OwnedFd::from(s)), 2).unwrap();
            } else {
                port.disassociate(&s).unwrap();
            }
            // (The close's own completion may come before or after.)
            let mut c = get(&port);
            if c.kind() == OpKind::Close {
                assert_eq!(c.result.unwrap(), 0);
                c = get(&port);
            } else if close {
                let closed = get(&port);
                assert_eq!((closed.kind(), closed.result.unwrap()), (OpKind::Close, 0));
            }
            assert_eq!(
                (c.op_id(), c.key, c.kind()),
                (Some(id), 4, OpKind::RecvFrom)
            );
            assert!(c.is_cancelled(), "close={close}: got {:?}", c.result);
            assert!(c.take_addr().is_none());
            let buf = c.buf.expect("a cancelled recv_from hands its buffer back");
            assert_eq!(buf.as_ptr(), ptr, "close={close}: the very allocation");
            assert_eq!(port.stats().in_flight, 0);
        }
    }
);

backend_test!(
    unix_datagram_sockets_report_the_senders_path,
    |choice: BackendChoice| {
        let dir = TempDir::new("dgram");
        let (pa, pb) = (dir.path("a.sock"), dir.path("b.sock"));
        let a = unix_dgram(Some(&pa));
        let b = unix_dgram(Some(&pb));
        let port = port(choice);
        port.associate(&a, 1).unwrap();
        port.associate(&b, 2).unwrap();

        port.submit(Op::recv_from(&b, Vec::with_capacity(64)), 1)
            .unwrap();
        assert_pending(&port);
        let to_b = SockAddr::unix(&pb).unwrap();
        port.submit(Op::send_to(&a, b"hello b".to_vec(), to_b.clone()), 2)
            .unwrap();
        let [mut recv, send] = <[Completion; 2]>::try_from(get_sorted(&port, 2)).unwrap();
        assert_eq!((send.kind(), send.result.unwrap()), (OpKind::SendTo, 7));
        assert_eq!((recv.key, recv.kind()), (2, OpKind::RecvFrom));
        assert_eq!(recv.result.as_ref().ok(), Some(&7));
        let from = recv.take_addr().expect("a recv_from reports its sender");
        assert!(from.is_unix());
        assert_eq!(from.as_pathname(), Some(pa.as_path()));
        assert_eq!(recv.buf.unwrap(), b"hello b");

        // Back to the path it came from.
        port.submit(Op::recv_from(&a, Vec::with_capacity(64)), 3)
            .unwrap();
        port.submit(Op::send_to(&b, b"hi a".to_vec(), from), 4)
            .unwrap();
        let [mut recv, send] = <[Completion; 2]>::try_from(get_sorted(&port, 2)).unwrap();
        assert_eq!(send.result.unwrap(), 4);
        assert_eq!(recv.result.as_ref().ok(), Some(&4));
        assert_eq!(
            recv.take_addr().as_ref().and_then(|s| s.as_pathname()),
            Some(pb.as_path())
        );
        assert_eq!(recv.buf.unwrap(), b"hi a");

        // From an unbound sender the kernel reports no address (namelen 0): the
        // datagram arrives, its sender is `None`.
        let c = unix_dgram(None);
        port.associate(&c, 3).unwrap();
        port.submit(Op::send_to(&c, b"anon".to_vec(), to_b), 5)
            .unwrap();
        assert_eq!(get(&port).result.unwrap(), 4);
        port.submit(Op::recv_from(&b, Vec::with_capacity(64)), 6)
            .unwrap();
        let mut recv = get(&port);
        assert_eq!(recv.result.as_ref().ok(), Some(&4));
        assert_eq!(
            recv.take_addr(),
            None,
            "an unbound Unix sender has no address"
        );
        assert_eq!(recv.buf.unwrap(), b"anon");
    }
);

backend_test!(
    unix_send_to_a_missing_or_dead_path_fails_with_its_errno,
    |choice: BackendChoice| {
        let dir = TempDir::new("dgram");
        let port = port(choice);
        let a = unix_dgram(None);
        port.associate(&a, 1).unwrap();

        // No such file.
        let missing = SockAddr::unix(dir.path("missing.sock")).unwrap();
        port.submit(Op::send_to(&a, b"x".to_vec(), missing), 1)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.kind(), OpKind::SendTo);
        assert_errno(&c.result, libc::ENOENT);
        assert_eq!(
            c.buf.unwrap(),
            b"x",
            "a failed send_to hands its buffer back"
        );

        // A path whose socket was closed: the file is there, nobody listens on it.
        let dead = dir.path("dead.sock");
        drop(unix_dgram(Some(&dead)));
        assert!(dead.exists());
        // Another test forking a child at the moment of the drop gives the child
        // a copy of the socket's descriptor until it execs (close-on-exec acts
        // only then), keeping the socket alive for a moment: a send may still be
        // taken then. Once that copy is gone, every send is refused.
        let mut last = None;
        for attempt in 0..100 {
            port.submit(
                Op::send_to(&a, b"x".to_vec(), SockAddr::unix(&dead).unwrap()),
                2,
            )
            .unwrap();
            let r = get(&port).result;
            match &r {
                Ok(_) if attempt < 99 => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    last = Some(r);
                }
                _ => {
                    last = Some(r);
                    break;
                }
            }
        }
        assert_errno(&last.expect("one attempt at least"), libc::ECONNREFUSED);
    }
);

backend_test!(
    udp_send_to_a_closed_port_succeeds,
    |choice: BackendChoice| {
        let port = port(choice);
        // A port nobody listens on any more.
        let closed = local(&udp4());

        // UDP does not know whether anyone listens: the send itself succeeds.
        let a = udp4();
        port.associate(&a, 1).unwrap();
        port.submit(Op::send_to(&a, b"void".to_vec(), closed), 1)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.kind(), OpKind::SendTo);
        assert_eq!(c.result.unwrap(), 4, "UDP to a closed port still sends");

        // A connected socket may hear of the refusal (ICMP port unreachable) on a
        // later receive. When that report arrives is up to the kernel, so only
        // its kind is checked: ECONNREFUSED, or nothing until our cancel.
        let s = udp4();
        s.connect(closed).unwrap();
        port.associate(&s, 2).unwrap();
        port.submit(Op::send_to(&s, b"void".to_vec(), closed), 2)
            .unwrap();
        assert_eq!(get(&port).result.unwrap(), 4);
        let id = port
            .submit(Op::recv_from(&s, Vec::with_capacity(16)), 3)
            .unwrap();
        let c = match port.get(Some(Duration::from_secs(1))) {
            Ok(c) => c,
            Err(Error::Timeout) => {
                let _ = port.cancel(id);
                get(&port)
            }
            Err(e) => panic!("get failed: {e:?}"),
        };
        assert_eq!(c.op_id(), Some(id));
        match &c.result {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ECANCELED)) => {}
            other => panic!("expected ECONNREFUSED (or ECANCELED), got {other:?}"),
        }
    }
);

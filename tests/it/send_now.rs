//! Sends `submit_inline` makes at once (IOCP's skip-on-success): a send on a
//! stream socket with nothing before it in its direction is `Done` in the
//! call on both backends (io_uring: `Driver::send_now`, when no batch would
//! carry it; epoll: its inline attempt). What it must never do: overtake a
//! send submitted before it, lose or duplicate bytes when it is short, or
//! leave a slot taken.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ringport::{BackendChoice, BackendKind, Completion, CompletionPort, Op, Submitted};

use crate::common::*;

/// The completion of `s`: handed back, or dequeued for a pending one.
fn finish(port: &CompletionPort, s: Submitted) -> Completion {
    match s {
        Submitted::Done(c) => c,
        Submitted::Pending(_) => get(port),
    }
}

/// A connected TCP pair with 16 KiB buffers (doubled by the kernel), the
/// sending side associated with `port` (key 1).
fn small_buffered_pair(port: &CompletionPort) -> (std::net::TcpStream, std::net::TcpStream) {
    let (a, b) = tcp_pair();
    for (s, opt) in [(&a, libc::SO_SNDBUF), (&b, libc::SO_RCVBUF)] {
        let bytes: libc::c_int = 16 << 10;
        // SAFETY: setsockopt reads one int from a live local.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(s),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt");
    }
    port.associate(&a, 1).unwrap();
    (a, b)
}

/// A byte pattern that shows order: byte `i` of a buffer tagged `tag`.
fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag ^ (i % 251) as u8).collect()
}

backend_test!(
    a_send_on_an_idle_stream_socket_is_done_in_the_call,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, mut b) = tcp_pair();
        let (u, mut v) = UnixStream::pair().unwrap();
        port.associate(&a, 1).unwrap();
        port.associate(&u, 2).unwrap();
        for (sock, peer, key) in [
            (&a as &dyn std::os::fd::AsFd, &mut b as &mut dyn Read, 1u64),
            (&u, &mut v, 2),
        ] {
            for round in 0..3u8 {
                let buf = pattern(round, 100);
                let s = port
                    .submit_inline(Op::send(&sock.as_fd(), buf.clone()), 7)
                    .unwrap();
                let Submitted::Done(c) = s else {
                    panic!("key {key}: a send with room and nothing before it is Done");
                };
                assert_eq!((c.key, c.user_data), (key, 7));
                assert_eq!(c.result.as_ref().ok().copied(), Some(100));
                assert_eq!(c.buf.as_deref(), Some(&buf[..]), "the buffer comes back");
                assert!(c.op_id().is_some(), "it has an id, as any operation");
                let mut got = vec![0u8; 100];
                peer.read_exact(&mut got).unwrap();
                assert_eq!(got, buf);
            }
        }
        assert_eq!(port.stats().in_flight, 0, "nothing left in flight");
        assert!(matches!(
            port.get(Some(Duration::ZERO)),
            Err(ringport::Error::Timeout)
        ));
    }
);

backend_test!(
    a_send_behind_a_waiting_send_waits_its_turn,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, mut b) = small_buffered_pair(&port);
        // The socket and its peer full first, so the first send must wait
        // (epoll would otherwise send part of it at once).
        let prefix = vec![b'z'; fill_send_buffer(&a, b'z')];
        let big = pattern(1, 1 << 20);
        let first = port.submit(Op::send(&a, big.clone()), 1).unwrap();
        // Room again; the first send has not been resumed (nobody is in the
        // port to run it), so a send made now would overtake it.
        let mut head = vec![0u8; prefix.len()];
        b.read_exact(&mut head).unwrap();
        assert!(head == prefix);
        std::thread::sleep(Duration::from_millis(50));
        let small = pattern(2, 64);
        let s = port.submit_inline(Op::send(&a, small.clone()), 2).unwrap();
        assert!(
            matches!(s, Submitted::Pending(_)),
            "a send behind one in flight must not be made at once"
        );
        // The peer reads everything; the first send may be short, and then
        // the second's bytes follow what it sent (`Op::send`).
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                match b.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                    Err(e) => panic!("read: {e}"),
                }
            }
            all
        });
        let mut sent = [0usize; 2];
        for _ in 0..2 {
            let c = get(&port);
            let i = if c.op_id() == Some(first) { 0 } else { 1 };
            sent[i] = *c.result.as_ref().unwrap();
        }
        assert_eq!(sent[1], small.len());
        drop(a);
        let all = reader.join().unwrap();
        let mut want = big[..sent[0]].to_vec();
        want.extend_from_slice(&small);
        assert_eq!(all.len(), want.len(), "bytes on the wire");
        assert!(all == want, "the second send's bytes follow the first's");
    }
);

backend_test!(
    a_short_send_made_at_once_says_what_went,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, mut b) = small_buffered_pair(&port);
        let data = pattern(3, 2 << 20);
        let reader = std::thread::spawn(move || {
            // Start reading only after the first send has found the socket
            // short of room.
            std::thread::sleep(Duration::from_millis(50));
            let mut all = vec![0u8; 2 << 20];
            b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            b.read_exact(&mut all).unwrap();
            all
        });
        let mut pos = 0;
        let mut sends = 0;
        while pos < data.len() {
            let s = port
                .submit_inline(Op::send_from(&a, data.clone(), pos), 1)
                .unwrap();
            let c = finish(&port, s);
            let n = *c.result.as_ref().expect("the send");
            assert!(n > 0 && pos + n <= data.len(), "count {n} at {pos}");
            pos += n;
            sends += 1;
        }
        assert!(sends > 1, "2 MiB does not fit 16 KiB buffers in one send");
        assert!(reader.join().unwrap() == data, "every byte once, in order");
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    a_send_to_a_peer_that_is_gone_fails_in_the_call_without_sigpipe,
    |choice: BackendChoice| {
        let port = port(choice);
        let (u, v) = UnixStream::pair().unwrap();
        port.associate(&u, 1).unwrap();
        drop(v);
        // (A Unix stream fails at once: EPIPE, and no SIGPIPE kills the test.)
        let s = port.submit_inline(Op::send(&u, vec![9u8; 32]), 4).unwrap();
        let Submitted::Done(c) = s else {
            panic!("the error is the result of the send made at once");
        };
        assert_errno(&c.result, libc::EPIPE);
        assert_eq!(
            c.buf.as_deref().map(<[u8]>::len),
            Some(32),
            "the buffer comes back"
        );
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    when_completions_are_queued_io_uring_leaves_the_send_to_the_ring,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, mut b) = tcp_pair();
        port.associate(&a, 1).unwrap();
        // A queued completion: a thread will be back in the port, and the
        // send rides with whatever it hands the kernel then.
        port.post(0, 99, 0).unwrap();
        let s = port
            .submit_inline(Op::send(&a, b"queued".to_vec()), 5)
            .unwrap();
        let epoll = port.backend() == BackendKind::Epoll;
        assert_eq!(
            matches!(s, Submitted::Done(_)),
            epoll,
            "io_uring: Pending while a completion is queued; epoll tries it"
        );
        let mut seen = Vec::new();
        let mut sent = None;
        if let Submitted::Done(c) = s {
            sent = Some(c);
        }
        while seen.len() < if epoll { 1 } else { 2 } {
            let c = get(&port);
            seen.push(c.user_data);
            if c.user_data == 5 {
                sent = Some(c);
            }
        }
        assert!(seen.contains(&99));
        assert_eq!(sent.unwrap().result.as_ref().ok().copied(), Some(6));
        let mut got = [0u8; 6];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"queued");
    }
);

backend_test!(
    a_datagram_send_is_not_made_at_once_on_io_uring,
    |choice: BackendChoice| {
        let port = port(choice);
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        port.associate(&a, 1).unwrap();
        let s = port
            .submit_inline(Op::send(&a, b"dgram".to_vec()), 6)
            .unwrap();
        // Only stream sockets have a send lane to say nothing is before it.
        assert_eq!(
            matches!(s, Submitted::Done(_)),
            port.backend() == BackendKind::Epoll
        );
        let c = finish(&port, s);
        assert_eq!(c.result.as_ref().ok().copied(), Some(5));
        let mut got = [0u8; 16];
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(b.recv(&mut got).unwrap(), 5);
        assert_eq!(&got[..5], b"dgram");
    }
);

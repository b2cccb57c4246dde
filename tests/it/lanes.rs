//! Several receives (or sends) in flight on one socket are served in the order
//! they were submitted, as IOCP serves overlapped `WSARecv`s: the bytes of a
//! stream are never split among them out of order. On io_uring the driver keeps
//! the later ones back until the one before has ended; these tests pin that,
//! and that a kept-back operation can still be cancelled, timed out and closed.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use ringport::{BackendChoice, Completion, CompletionPort, Error, Op, OpKind};

use crate::common::*;

/// Nothing more comes out of the port for a moment (what was submitted waits).
fn quiet(port: &CompletionPort) {
    assert!(matches!(
        port.get(Some(Duration::from_millis(30))),
        Err(Error::Timeout)
    ));
}

/// Takes `n` completions, indexed by their `user_data`.
fn take(port: &CompletionPort, n: usize) -> Vec<Completion> {
    take_for(port, n, "")
}

/// [`take`], saying what it waits for if one never comes.
fn take_for(port: &CompletionPort, n: usize, what: &str) -> Vec<Completion> {
    let mut out: Vec<Completion> = (0..n)
        .map(|i| {
            port.get(Some(T)).unwrap_or_else(|e| {
                panic!(
                    "{what}: completion {i} of {n} never came ({e:?}; {:?})",
                    port.stats().in_flight
                )
            })
        })
        .collect();
    out.sort_by_key(|c| c.user_data);
    out
}

backend_test!(
    receives_waiting_on_one_socket_fill_in_submission_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        for i in 0..4u64 {
            port.submit(Op::recv(&server, Vec::with_capacity(4)), i)
                .unwrap();
        }
        quiet(&port);
        client.write_all(b"0000111122223333").unwrap();
        for c in take(&port, 4) {
            assert_eq!(c.kind(), OpKind::Recv);
            let n = c.result.as_ref().map_err(|e| e.to_string()).unwrap();
            let buf = c.buf.unwrap();
            let want = format!("{0}{0}{0}{0}", c.user_data);
            assert_eq!(
                (*n, String::from_utf8_lossy(&buf).into_owned()),
                (4, want),
                "receive #{} got another's bytes",
                c.user_data
            );
        }
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    sends_waiting_on_one_socket_go_out_in_submission_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        port.associate(&server, 1).unwrap();
        // The first fills the socket and the peer's window (nobody reads yet),
        // so the next ones wait.
        let sizes = [4 << 20, 64 << 10, 64 << 10, 64 << 10];
        for (i, &n) in sizes.iter().enumerate() {
            port.submit(Op::send(&server, vec![b'A' + i as u8; n]), i as u64)
                .unwrap();
        }
        // (The first one may complete, short, at once on epoll: the socket
        // took what fit.)
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        let done = take(&port, 4);
        server.shutdown(Shutdown::Write).unwrap();
        let all = reader.join().unwrap();
        // The stream is a run of each send's bytes, in submission order, each
        // as long as that send says it sent (a short send sends a prefix).
        let mut at = 0;
        for c in &done {
            let n = *c.result.as_ref().map_err(|e| e.to_string()).unwrap();
            let byte = b'A' + c.user_data as u8;
            assert!(n > 0, "send #{} sent nothing", c.user_data);
            let run = all[at..].iter().take_while(|&&b| b == byte).count();
            assert_eq!(
                run, n,
                "send #{} ({}) sent {n} bytes but the stream has {run} of them at {at}",
                c.user_data, byte as char
            );
            at += n;
        }
        assert_eq!(at, all.len(), "bytes nobody sent");
    }
);

backend_test!(
    a_receive_kept_back_can_be_cancelled_and_the_others_keep_their_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        let mut ids = Vec::new();
        for i in 0..3u64 {
            ids.push(
                port.submit(Op::recv(&server, Vec::with_capacity(4)), i)
                    .unwrap(),
            );
        }
        quiet(&port);
        port.cancel(ids[1]).unwrap();
        let c = get(&port);
        assert_eq!((c.user_data, c.op_id()), (1, Some(ids[1])));
        assert_errno(&c.result, libc::ECANCELED);
        assert!(c.buf.is_some(), "the cancelled receive's buffer comes back");
        client.write_all(b"xxxxyyyy").unwrap();
        let got: Vec<_> = take(&port, 2)
            .into_iter()
            .map(|c| (c.user_data, c.buf.unwrap()))
            .collect();
        assert_eq!(got, vec![(0, b"xxxx".to_vec()), (2, b"yyyy".to_vec())]);
        assert!(matches!(port.cancel(ids[1]), Err(Error::NotFound)));
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    a_receive_kept_back_still_times_out_on_its_own_deadline,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        // The first waits with no deadline; the second, behind it, has one.
        port.submit(Op::recv(&server, Vec::with_capacity(4)), 0)
            .unwrap();
        port.submit(
            Op::recv(&server, Vec::with_capacity(4)).timeout_after(Duration::from_millis(50)),
            1,
        )
        .unwrap();
        let c = get(&port);
        assert_eq!(c.user_data, 1, "the one with the deadline ends first");
        assert!(c.is_cancelled(), "expected ECANCELED, got {:?}", c.result);
        // A third, behind the first, still comes after it.
        port.submit(Op::recv(&server, Vec::with_capacity(4)), 2)
            .unwrap();
        quiet(&port);
        client.write_all(b"aaaabbbb").unwrap();
        let got: Vec<_> = take(&port, 2)
            .into_iter()
            .map(|c| (c.user_data, c.buf.unwrap()))
            .collect();
        assert_eq!(got, vec![(0, b"aaaa".to_vec()), (2, b"bbbb".to_vec())]);
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    when_the_first_receive_times_out_the_next_one_takes_the_bytes,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        port.submit(
            Op::recv(&server, Vec::with_capacity(4)).timeout_after(Duration::from_millis(30)),
            0,
        )
        .unwrap();
        port.submit(Op::recv(&server, Vec::with_capacity(4)), 1)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.user_data, 0);
        assert!(c.is_cancelled(), "expected ECANCELED, got {:?}", c.result);
        client.write_all(b"zzzz").unwrap();
        let c = get(&port);
        assert_eq!((c.user_data, c.buf.unwrap()), (1, b"zzzz".to_vec()));
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    closing_a_socket_ends_the_receives_kept_back_too,
    |choice: BackendChoice| {
        let port = port(choice);
        for how in ["close op", "disassociate"] {
            let (_client, server) = tcp_pair();
            port.associate(&server, 1).unwrap();
            for i in 0..3u64 {
                port.submit(Op::recv(&server, Vec::with_capacity(4)), i)
                    .unwrap();
            }
            quiet(&port);
            match how {
                "close op" => {
                    let fd: OwnedFd = server.into();
                    port.submit(Op::close(fd), 9).unwrap();
                }
                _ => {
                    port.disassociate(&server).unwrap();
                    drop(server);
                }
            }
            let mut ended = take_for(&port, if how == "close op" { 4 } else { 3 }, how);
            if how == "close op" {
                let close = ended.pop().unwrap();
                assert_eq!(close.user_data, 9);
                close.result.unwrap();
            }
            for c in ended {
                assert!(
                    c.is_cancelled(),
                    "{how}: receive #{} ended with {:?}",
                    c.user_data,
                    c.result
                );
                assert!(c.buf.is_some());
            }
            assert_eq!(port.stats().in_flight, 0, "{how}");
        }
    }
);

backend_test!(
    a_new_socket_on_a_reused_descriptor_does_not_wait_behind_the_old_one,
    |choice: BackendChoice| {
        let port = port(choice);
        let (_c1, s1) = tcp_pair();
        port.associate(&s1, 1).unwrap();
        port.submit(Op::recv(&s1, Vec::with_capacity(4)), 0)
            .unwrap();
        port.submit(Op::recv(&s1, Vec::with_capacity(4)), 1)
            .unwrap();
        let old = s1.as_raw_fd();
        port.submit(Op::close(s1.into()), 2).unwrap();
        for c in take(&port, 3) {
            if c.user_data < 2 {
                assert!(c.is_cancelled(), "{:?}", c.result);
            }
        }
        // Very likely the same number again (the lowest free one).
        let (mut c2, s2) = tcp_pair();
        let reused = s2.as_raw_fd() == old;
        port.associate(&s2, 1).unwrap();
        port.submit(Op::recv(&s2, Vec::with_capacity(4)), 3)
            .unwrap();
        c2.write_all(b"new!").unwrap();
        let c = get(&port);
        assert_eq!(
            (c.user_data, c.buf.unwrap()),
            (3, b"new!".to_vec()),
            "descriptor reused: {reused}"
        );
    }
);

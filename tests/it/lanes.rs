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

// (The tests named `review_*` came from a review of the first version.)

use crate::common::*;

/// A receive of up to 4 bytes on `sock`.
fn recv4(sock: &std::net::TcpStream) -> Op {
    Op::recv(sock, Vec::with_capacity(4))
}

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
            port.submit(recv4(&server), i).unwrap();
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
            ids.push(port.submit(recv4(&server), i).unwrap());
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
        port.submit(recv4(&server), 0).unwrap();
        port.submit(recv4(&server).timeout_after(Duration::from_millis(50)), 1)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.user_data, 1, "the one with the deadline ends first");
        assert!(c.is_cancelled(), "expected ECANCELED, got {:?}", c.result);
        // A third, behind the first, still comes after it.
        port.submit(recv4(&server), 2).unwrap();
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
        port.submit(recv4(&server).timeout_after(Duration::from_millis(30)), 0)
            .unwrap();
        port.submit(recv4(&server), 1).unwrap();
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
                port.submit(recv4(&server), i).unwrap();
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

/// Two sends on one socket, then `last` (a close, which takes the socket,
/// or a shutdown of the sending side): the peer gets both sends' bytes, and
/// every operation succeeds.
fn send_send_then(
    choice: BackendChoice,
    what: &str,
    last: fn(&mut Option<std::net::TcpStream>) -> Op,
) {
    let port = port(choice);
    let (mut client, server) = tcp_pair();
    port.associate(&server, 1).unwrap();
    port.submit(Op::send(&server, b"aaaa".to_vec()), 0).unwrap();
    port.submit(Op::send(&server, b"bbbb".to_vec()), 1).unwrap();
    let mut server = Some(server);
    port.submit(last(&mut server), 2).unwrap();
    let done = take_for(&port, 3, what);
    let res: Vec<_> = done
        .iter()
        .map(|c| {
            (
                c.user_data,
                c.result.as_ref().map(|n| *n).map_err(|e| e.raw_os_error()),
            )
        })
        .collect();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut all = Vec::new();
    client.read_to_end(&mut all).unwrap();
    assert_eq!(
        (String::from_utf8_lossy(&all).into_owned(), &res),
        (
            "aaaabbbb".to_string(),
            &vec![(0, Ok(4)), (1, Ok(4)), (2, Ok(0))]
        )
    );
}

backend_test!(
    review_send_send_close_sends_both,
    |choice: BackendChoice| {
        send_send_then(choice, "send send close", |s| {
            Op::close(s.take().unwrap().into())
        });
    }
);

backend_test!(
    review_send_send_shutdown_sends_both,
    |choice: BackendChoice| {
        send_send_then(choice, "send send shutdown", |s| {
            Op::shutdown(s.as_ref().unwrap(), Shutdown::Write)
        });
    }
);

backend_test!(
    review_disassociate_at_once_cancels_a_receive_not_yet_submitted,
    |choice: BackendChoice| {
        let port = port(choice);
        for round in 0..50 {
            let (_client, server) = tcp_pair();
            port.associate(&server, 1).unwrap();
            port.submit(recv4(&server), round).unwrap();
            port.disassociate(&server).unwrap();
            // The caller keeps the socket open: the receive must still end.
            let c = port.get(Some(Duration::from_secs(2))).unwrap_or_else(|e| {
                panic!("round {round}: the receive never ended after disassociate ({e:?})")
            });
            assert!(c.is_cancelled(), "round {round}: {:?}", c.result);
            drop(server);
        }
    }
);

fn res(c: &Completion) -> (u64, Result<usize, Option<i32>>) {
    (
        c.user_data,
        c.result.as_ref().map(|n| *n).map_err(|e| e.raw_os_error()),
    )
}

fn file_of(data: &[u8]) -> std::fs::File {
    use std::io::Seek;
    let mut f = temp_file();
    f.write_all(data).unwrap();
    f.rewind().unwrap();
    f
}

// send, send_file, send_zc, send_file, send on one socket, all having to wait.
backend_test!(
    review_send_send_file_send_zc_keep_their_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        port.associate(&server, 1).unwrap();
        let fa = file_of(&vec![b'B'; 200 << 10]);
        let fb = file_of(&vec![b'D'; 100 << 10]);
        port.submit(Op::send(&server, vec![b'A'; 4 << 20]), 0)
            .unwrap();
        port.submit(Op::send_file(&server, &fa, 0, 200 << 10), 1)
            .unwrap();
        port.submit(Op::send_zc(&server, vec![b'C'; 64 << 10]), 2)
            .unwrap();
        port.submit(Op::send_file(&server, &fb, 0, 100 << 10), 3)
            .unwrap();
        port.submit(Op::send(&server, vec![b'E'; 64 << 10]), 4)
            .unwrap();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        let done = take_for(&port, 5, "mixed sends");
        server.shutdown(Shutdown::Write).unwrap();
        let all = reader.join().unwrap();
        let mut at = 0;
        for c in &done {
            let n = *c.result.as_ref().map_err(|e| e.to_string()).unwrap();
            let byte = b'A' + c.user_data as u8;
            let run = all[at..].iter().take_while(|&&b| b == byte).count();
            assert_eq!(
                run, n,
                "op #{} sent {n}, stream has {run} at {at}",
                c.user_data
            );
            at += n;
        }
        assert_eq!(at, all.len());
        assert!(matches!(
            port.get(Some(Duration::from_millis(50))),
            Err(Error::Timeout)
        ));
        assert_eq!(port.stats().in_flight, 0);
    }
);

// Cancel the busy receive while others wait behind it.
backend_test!(
    review_cancelling_the_busy_receive_passes_its_lane_on,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        let ids: Vec<_> = (0..3u64)
            .map(|i| port.submit(recv4(&server), i).unwrap())
            .collect();
        assert!(matches!(
            port.get(Some(Duration::from_millis(30))),
            Err(Error::Timeout)
        ));
        port.cancel(ids[0]).unwrap();
        let c = get(&port);
        assert_eq!(c.user_data, 0);
        assert!(c.is_cancelled());
        assert!(matches!(
            port.get(Some(Duration::from_millis(30))),
            Err(Error::Timeout)
        ));
        client.write_all(b"xxxxyyyy").unwrap();
        let got: Vec<_> = take_for(&port, 2, "after cancel")
            .into_iter()
            .map(|c| (c.user_data, c.buf.unwrap()))
            .collect();
        assert_eq!(got, vec![(1, b"xxxx".to_vec()), (2, b"yyyy".to_vec())]);
        assert!(matches!(
            port.get(Some(Duration::from_millis(50))),
            Err(Error::Timeout)
        ));
        assert_eq!(port.stats().in_flight, 0);
    }
);

// Parked sends with deadlines: a send_file and a send_zc time out while parked,
// the rest go in order once the first drains.
backend_test!(
    review_parked_send_file_and_send_zc_time_out,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        port.associate(&server, 1).unwrap();
        let fa = file_of(&vec![b'B'; 100 << 10]);
        let prefill = fill_send_buffer(&server, b'z');
        port.submit(Op::send(&server, vec![b'A'; 64 << 10]), 0)
            .unwrap();
        port.submit(
            Op::send_file(&server, &fa, 0, 100 << 10).timeout_after(Duration::from_millis(40)),
            1,
        )
        .unwrap();
        port.submit(
            Op::send_zc(&server, vec![b'C'; 64 << 10]).timeout_after(Duration::from_millis(40)),
            2,
        )
        .unwrap();
        port.submit(Op::send(&server, vec![b'D'; 64 << 10]), 3)
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all.split_off(prefill)
        });
        let done = take_for(&port, 4, "all");
        server.shutdown(Shutdown::Write).unwrap();
        let all = reader.join().unwrap();
        assert!(done[2].is_cancelled(), "zc: {:?}", res(&done[2]));
        let mut at = 0;
        for c in &done {
            let n = *c.result.as_ref().unwrap_or(&0);
            let byte = b'A' + c.user_data as u8;
            let run = all[at..].iter().take_while(|&&b| b == byte).count();
            assert_eq!(run, n, "op {}", c.user_data);
            at += n;
        }
        assert_eq!(at, all.len());
        assert!(matches!(
            port.get(Some(Duration::from_millis(100))),
            Err(Error::Timeout)
        ));
        assert_eq!(port.stats().in_flight, 0);
    }
);

// A parked receive with a deadline is pushed, then its deadline passes in the kernel.
backend_test!(
    review_a_resumed_receive_times_out_once,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        port.submit(recv4(&server), 0).unwrap();
        port.submit(recv4(&server).timeout_after(Duration::from_millis(150)), 1)
            .unwrap();
        port.submit(recv4(&server), 2).unwrap();
        client.write_all(b"aaaa").unwrap();
        let c = get(&port);
        assert_eq!((c.user_data, c.buf.clone().unwrap()), (0, b"aaaa".to_vec()));
        let c = get(&port);
        assert_eq!(c.user_data, 1);
        assert!(c.is_cancelled(), "{:?}", res(&c));
        client.write_all(b"cccc").unwrap();
        let c = get(&port);
        assert_eq!((c.user_data, c.buf.clone().unwrap()), (2, b"cccc".to_vec()));
        assert!(matches!(
            port.get(Some(Duration::from_millis(200))),
            Err(Error::Timeout)
        ));
        assert_eq!(port.stats().in_flight, 0);
    }
);

// max_in_flight reached by parked operations: submit waits for room, order holds.
backend_test!(
    review_queue_full_with_parked_receives_keeps_order,
    |choice: BackendChoice| {
        let port = build(builder(choice).max_in_flight(3));
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        for i in 0..3u64 {
            port.submit(recv4(&server), i).unwrap();
        }
        assert!(matches!(
            port.try_submit(recv4(&server), 3),
            Err(Error::QueueFull)
        ));
        let w = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            client.write_all(b"0000111122223333").unwrap();
            client
        });
        // Waits for room (reaps meanwhile).
        port.submit(recv4(&server), 3).unwrap();
        let _client = w.join().unwrap();
        for c in take_for(&port, 4, "queue full") {
            let want = format!("{0}{0}{0}{0}", c.user_data);
            assert_eq!(String::from_utf8_lossy(&c.buf.unwrap()), want);
        }
    }
);

// Dropping a port with parked operations of every kind: no hang.
backend_test!(
    review_closing_a_port_with_parked_operations_does_not_hang,
    |choice: BackendChoice| {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let port = port(choice);
            let (client, server) = tcp_pair();
            socket2::SockRef::from(&server)
                .set_send_buffer_size(16 * 1024)
                .unwrap();
            port.associate(&server, 1).unwrap();
            let fa = file_of(&vec![b'B'; 100 << 10]);
            for i in 0..3 {
                port.submit(recv4(&server), i).unwrap();
            }
            port.submit(recv4(&server).timeout_after(Duration::from_secs(60)), 3)
                .unwrap();
            port.submit(Op::send(&server, vec![b'A'; 4 << 20]), 10)
                .unwrap();
            port.submit(Op::send_file(&server, &fa, 0, 100 << 10), 11)
                .unwrap();
            port.submit(
                Op::send_zc(&server, vec![b'C'; 64 << 10]).timeout_after(Duration::from_secs(60)),
                12,
            )
            .unwrap();
            port.submit(Op::send(&server, vec![b'D'; 64 << 10]), 13)
                .unwrap();
            std::thread::sleep(Duration::from_millis(30));
            let s = std::time::Instant::now();
            port.close();
            drop(port);
            drop((client, server));
            tx.send(s.elapsed()).unwrap();
        });
        let took = rx
            .recv_timeout(Duration::from_secs(8))
            .expect("port close hung");
        t.join().unwrap();
        assert!(took < Duration::from_secs(2), "close took {took:?}");
    }
);

// Disassociate + close with a busy receive and parked ones, then the number is
// reused by a new socket: two receives on it are served in order.
backend_test!(
    review_reused_descriptor_after_disassociate_keeps_order,
    |choice: BackendChoice| {
        let port = port(choice);
        for round in 0..20u64 {
            let (_c1, s1) = tcp_pair();
            let old = std::os::fd::AsRawFd::as_raw_fd(&s1);
            port.associate(&s1, 1).unwrap();
            for i in 0..3 {
                port.submit(Op::recv(&s1, Vec::with_capacity(4)), 100 + i)
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
            port.disassociate(&s1).unwrap();
            drop(s1);
            let (mut c2, s2) = tcp_pair();
            let _reused = std::os::fd::AsRawFd::as_raw_fd(&s2) == old;
            port.associate(&s2, 2).unwrap();
            port.submit(Op::recv(&s2, Vec::with_capacity(4)), 0)
                .unwrap();
            port.submit(Op::recv(&s2, Vec::with_capacity(4)), 1)
                .unwrap();
            c2.write_all(b"xxxxyyyy").unwrap();
            let all = take_for(&port, 5, &format!("round {round}"));
            for c in &all[..2] {
                assert_eq!(
                    c.buf.clone().unwrap(),
                    if c.user_data == 0 {
                        b"xxxx".to_vec()
                    } else {
                        b"yyyy".to_vec()
                    },
                    "round {round}"
                );
            }
            for c in &all[2..] {
                assert!(c.is_cancelled(), "round {round}: {:?}", res(c));
            }
            port.disassociate(&s2).unwrap();
        }
    }
);

// Submit a receive, disassociate at once and close the socket (the documented
// order): the receive must end, and the peer must see the connection closed.
backend_test!(
    review_disassociate_then_close_ends_the_receive_and_the_connection,
    |choice: BackendChoice| {
        let port = port(choice);
        let mut stuck = 0;
        for round in 0..50 {
            let (mut client, server) = tcp_pair();
            port.associate(&server, 1).unwrap();
            port.submit(recv4(&server), round).unwrap();
            port.disassociate(&server).unwrap();
            drop(server);
            client
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut b = [0u8; 1];
            let eof = matches!(client.read(&mut b), Ok(0));
            let got = port.get(Some(Duration::from_millis(500)));
            if round < 3 {
                eprintln!("r3b round {round}: {:?}", got.as_ref().map(res));
            }
            let ended = got.is_ok();
            if !eof || !ended {
                stuck += 1;
                eprintln!("round {round}: peer saw EOF: {eof}; receive ended: {ended}");
            }
        }
        assert_eq!(stuck, 0, "rounds with a receive left on a closed socket");
    }
);

backend_test!(
    a_close_refused_for_room_still_ends_the_sockets_operations_and_closes_it,
    |choice: BackendChoice| {
        let port = build(builder(choice).max_in_flight(1));
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        port.submit(recv4(&server), 0).unwrap();
        quiet(&port);
        let fd: OwnedFd = server.into();
        let refused = match port.try_submit(Op::close(fd), 1) {
            Err(Error::QueueFull) => true,
            Ok(_) => false,
            Err(e) => panic!("close: {e:?}"),
        };
        let ended = take(&port, if refused { 1 } else { 2 });
        let c = &ended[0];
        assert_eq!(c.user_data, 0, "refused: {refused}");
        assert!(c.is_cancelled(), "refused: {refused}: {:?}", c.result);
        // The peer sees the connection closed.
        client.set_read_timeout(Some(T)).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0, "refused: {refused}");
        assert_eq!(port.stats().in_flight, 0);
    }
);

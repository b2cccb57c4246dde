//! Every operation, on real files and real sockets on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use ringport::{BackendChoice, Error, Op, OpKind};

use crate::common::*;

backend_test!(
    nop_completes_with_zero_and_its_key,
    |choice: BackendChoice| {
        let port = port(choice);
        let id = port.submit(Op::nop().key(5), 42).unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data), (5, 42));
        assert_eq!(c.result.as_ref().ok(), Some(&0));
        assert_eq!(c.kind(), OpKind::Nop);
        assert_eq!(c.op_id(), Some(id));
        assert!(!c.is_packet());
        assert!(!c.is_cancelled());
        // A nop without a key reports key 0.
        port.submit(Op::nop(), 43).unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data), (0, 43));
    }
);

backend_test!(
    write_then_read_round_trips_through_a_file,
    |choice: BackendChoice| {
        let port = port(choice);
        let file = temp_file();
        port.associate(&file, 11).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        port.submit(Op::write_at(&file, data.clone(), 0), 1)
            .unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (11, 1, OpKind::Write));
        assert_eq!(c.result.unwrap(), data.len());
        // The kernel really wrote it.
        let mut on_disk = vec![0; data.len()];
        file.read_exact_at(&mut on_disk, 0).unwrap();
        assert_eq!(on_disk, data);

        port.submit(Op::read_at(&file, Vec::with_capacity(data.len()), 0), 2)
            .unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (11, 2, OpKind::Read));
        assert_eq!(c.result.unwrap(), data.len());
        assert_eq!(c.buf.unwrap(), data);

        // At an offset, in the middle.
        port.submit(Op::read_at(&file, Vec::with_capacity(10), 300), 3)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 10);
        assert_eq!(c.buf.unwrap(), &data[300..310]);
    }
);

backend_test!(
    read_at_eof_is_short_and_past_eof_is_zero,
    |choice: BackendChoice| {
        let port = port(choice);
        let mut file = temp_file();
        file.write_all(b"0123456789").unwrap();
        port.associate(&file, 1).unwrap();

        port.submit(Op::read_at(&file, Vec::with_capacity(64), 4), 1)
            .unwrap();
        let c = get(&port);
        assert_eq!(
            c.result.unwrap(),
            6,
            "a read across EOF returns the bytes that exist"
        );
        assert_eq!(c.buf.unwrap(), b"456789");

        port.submit(Op::read_at(&file, Vec::with_capacity(64), 10), 2)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 0, "a read at EOF is Ok(0)");
        assert_eq!(c.buf.unwrap().len(), 0);

        port.submit(Op::read_at(&file, Vec::with_capacity(64), 1_000_000), 3)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 0, "a read past EOF is Ok(0)");
        assert_eq!(c.buf.unwrap().len(), 0);
    }
);

backend_test!(fsync_and_fdatasync_succeed, |choice: BackendChoice| {
    let port = port(choice);
    let file = temp_file();
    port.associate(&file, 3).unwrap();
    port.submit(Op::write_at(&file, b"durable".to_vec(), 0), 1)
        .unwrap();
    assert_eq!(get(&port).result.unwrap(), 7);

    port.submit(Op::fsync(&file), 2).unwrap();
    let c = get(&port);
    assert_eq!((c.key, c.user_data, c.kind()), (3, 2, OpKind::Fsync));
    assert_eq!(c.result.unwrap(), 0);

    port.submit(Op::fdatasync(&file), 3).unwrap();
    let c = get(&port);
    assert_eq!((c.key, c.user_data, c.kind()), (3, 3, OpKind::Fsync));
    assert_eq!(c.result.unwrap(), 0);
});

backend_test!(
    send_and_recv_on_a_connected_tcp_pair,
    |choice: BackendChoice| {
        let port = port(choice);
        let (client, server) = tcp_pair();
        port.associate(&client, 100).unwrap();
        port.associate(&server, 200).unwrap();

        // Receive first, so the recv is really pending when the data arrives.
        port.submit(Op::recv(&server, Vec::with_capacity(64)), 1)
            .unwrap();
        port.submit(Op::send(&client, b"ping".to_vec()), 2).unwrap();
        let mut got = [get(&port), get(&port)];
        got.sort_by_key(|c| c.user_data);
        let [recv, send] = got;
        assert_eq!((recv.key, recv.kind()), (200, OpKind::Recv));
        assert_eq!(recv.result.unwrap(), 4);
        assert_eq!(recv.buf.unwrap(), b"ping");
        assert_eq!((send.key, send.kind()), (100, OpKind::Send));
        assert_eq!(send.result.unwrap(), 4);
        assert_eq!(
            send.buf.unwrap(),
            b"ping",
            "a send hands its buffer back unchanged"
        );

        // And the other way, checked against plain std I/O.
        port.submit(Op::send(&server, b"pong!".to_vec()), 3)
            .unwrap();
        assert_eq!(get(&port).result.unwrap(), 5);
        let mut buf = [0; 5];
        (&client).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong!");

        // A recv after the peer shut down its side is Ok(0).
        client.shutdown(std::net::Shutdown::Write).unwrap();
        port.submit(Op::recv(&server, Vec::with_capacity(8)), 4)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 0, "EOF is Ok(0)");
        assert_eq!(c.buf.unwrap().len(), 0);
    }
);

backend_test!(
    accept_hands_over_a_working_socket,
    |choice: BackendChoice| {
        let port = port(choice);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        port.associate(&listener, 9).unwrap();
        port.submit(Op::accept(&listener), 1).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (9, 1, OpKind::Accept));
        let n = c.result.as_ref().copied().expect("accept succeeds");
        let fd: OwnedFd = c.take_fd().expect("a successful accept carries the socket");
        assert_eq!(
            fd.as_raw_fd() as usize,
            n,
            "the result is the descriptor's number"
        );
        assert!(c.take_fd().is_none(), "the socket can be taken once");
        drop(c);

        let mut accepted = TcpStream::from(fd);
        assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
        client.write_all(b"hello").unwrap();
        let mut buf = [0; 5];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        accepted.write_all(b"back").unwrap();
        let mut buf = [0; 4];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"back");
    }
);

backend_test!(exclusive dropping_an_accept_completion_closes_the_socket, |choice: BackendChoice| {
    let port = port(choice);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    port.associate(&listener, 1).unwrap();
    // One round first, so anything allocated once (io_uring workers, ...) exists.
    port.submit(Op::accept(&listener), 0).unwrap();
    let client = TcpStream::connect(addr).unwrap();
    drop(get(&port));
    drop(client);

    let before = fd_snapshot();
    for i in 0..50 {
        port.submit(Op::accept(&listener), i).unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let c = get(&port);
        let n = *c.result.as_ref().expect("accept succeeds") as i32;
        assert!(fd_is_open(n));
        drop(c);
        assert!(!fd_is_open(n), "round {i}: dropping the completion must close accepted descriptor {n}");
        drop(client);
    }
    assert_no_new_fds(&before, "dropped accept completions");
});

backend_test!(connect_to_a_listener_succeeds, |choice: BackendChoice| {
    let port = port(choice);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    port.associate(&sock, 4).unwrap();
    port.submit(Op::connect(&sock, listener.local_addr().unwrap()), 1)
        .unwrap();
    let c = get(&port);
    assert_eq!((c.key, c.user_data, c.kind()), (4, 1, OpKind::Connect));
    assert_eq!(c.result.unwrap(), 0);
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(peer, sock.local_addr().unwrap().as_socket().unwrap());
    let mut stream = TcpStream::from(sock);
    stream.write_all(b"x").unwrap();
    let mut b = [0; 1];
    accepted.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
});

backend_test!(
    connect_to_a_closed_port_is_econnrefused,
    |choice: BackendChoice| {
        let port = port(choice);
        let addr = closed_addr();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        port.associate(&sock, 4).unwrap();
        port.submit(Op::connect(&sock, addr), 1).unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (4, 1, OpKind::Connect));
        assert_errno(&c.result, libc::ECONNREFUSED);
    }
);

backend_test!(
    close_op_closes_the_descriptor_and_ends_the_association,
    |choice: BackendChoice| {
        let port = port(choice);
        let (client, server) = tcp_pair();
        port.associate(&server, 77).unwrap();
        let n = server.as_raw_fd();
        port.submit(Op::close(OwnedFd::from(server)), 1).unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (77, 1, OpKind::Close));
        assert_eq!(c.result.unwrap(), 0);

        // Really closed: the peer sees end-of-stream.
        client.set_read_timeout(Some(T)).unwrap();
        let mut b = [0; 1];
        assert_eq!(
            (&client).read(&mut b).unwrap(),
            0,
            "the peer must see EOF once the close op ran"
        );

        // The association is gone: the number is unknown to the port now.
        // SAFETY: `disassociate` and `submit` only read the descriptor's number to look
        // it up in the port's table; both fail before any system call touches it.
        let stale = unsafe { BorrowedFd::borrow_raw(n) };
        assert!(matches!(port.disassociate(&stale), Err(Error::Unassociated(x)) if x == n));
        assert!(matches!(
            port.submit(Op::recv(&stale, Vec::with_capacity(1)), 2),
            Err(Error::Unassociated(x)) if x == n
        ));
    }
);

backend_test!(
    timeout_op_completes_with_zero_after_it_fires,
    |choice: BackendChoice| {
        let port = port(choice);
        let start = std::time::Instant::now();
        port.submit(Op::timeout(Duration::from_millis(20)).key(6), 1)
            .unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (6, 1, OpKind::Timeout));
        assert_eq!(
            c.result.unwrap(),
            0,
            "a timer that fired is Ok(0), not ETIME"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "a timer must not fire early"
        );

        port.submit(Op::timeout(Duration::ZERO), 2).unwrap();
        assert_eq!(get(&port).result.unwrap(), 0);
    }
);

backend_test!(
    read_hands_back_exactly_the_bytes_read_and_write_the_buffer_unchanged,
    |choice: BackendChoice| {
        let port = port(choice);
        let file = temp_file();
        file.write_all_at(b"abcdef", 0).unwrap();
        port.associate(&file, 1).unwrap();

        // A read replaces the buffer's old contents; len == bytes read, capacity kept.
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(b"old contents");
        let ptr = buf.as_ptr();
        port.submit(Op::read_at(&file, buf, 2), 1).unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 4);
        let buf = c.buf.expect("a read hands its buffer back");
        assert_eq!(buf, b"cdef");
        assert_eq!(buf.len(), 4);
        assert!(buf.capacity() >= 4096);
        assert_eq!(buf.as_ptr(), ptr, "the same allocation comes back");

        // A write hands back the very buffer, unchanged.
        let data = b"0123456789".repeat(100);
        let sent = data.clone();
        let ptr = sent.as_ptr();
        port.submit(Op::write_at(&file, sent, 0), 2).unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), data.len());
        let back = c.buf.expect("a write hands its buffer back");
        assert_eq!(back, data);
        assert_eq!(back.as_ptr(), ptr, "the very allocation comes back");

        // write_at_from writes only the tail.
        port.submit(Op::write_at_from(&file, b"XXhi".to_vec(), 2, 0), 3)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 2);
        assert_eq!(c.buf.unwrap(), b"XXhi");
        let mut head = [0; 3];
        file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"hi2");
    }
);

backend_test!(
    closing_a_listener_cancels_its_pending_accept_and_frees_the_address,
    |choice: BackendChoice| {
        let port = port(choice);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        port.associate(&l, 3).unwrap();
        let id = port.submit(Op::accept(&l), 1).unwrap();
        port.submit(Op::close(OwnedFd::from(l)), 2).unwrap();
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let c = get(&port);
            if c.kind() == OpKind::Accept {
                assert_eq!(c.op_id(), Some(id));
                assert!(
                    c.is_cancelled(),
                    "the accept of a closed listener: {:?}",
                    c.result
                );
            } else {
                assert_eq!(*c.result.as_ref().unwrap(), 0, "{c:?}");
            }
            kinds.push(c.kind());
        }
        kinds.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(kinds, [OpKind::Accept, OpKind::Close]);
        assert_eq!(port.stats().in_flight, 0);
        // Nothing holds the listener any more: nobody accepts there, and the
        // address is free again.
        assert!(std::net::TcpStream::connect_timeout(&addr, T).is_err());
        std::net::TcpListener::bind(addr).expect("the closed listener's address is free");
    }
);

//! Zero-copy send (`Op::send_zc`) and registered buffers
//! (`CompletionPort::register_buffers`, `Op::read_fixed`, `Op::write_fixed`)
//! on real TCP and Unix sockets and real files.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;
use std::time::Duration;

use ringport::op::OpPath;
use ringport::{BackendChoice, CompletionPort, Error, Op, OpKind};

use crate::common::*;

/// `n` bytes that differ at every offset.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads everything `peer` sends until end of stream, on a thread.
fn read_all(mut peer: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        peer.read_to_end(&mut got)
            .expect("the peer reads until EOF");
        got
    })
}

/// Sends all of `data` with `send_zc`, resubmitting after short sends; every
/// completion hands the same buffer back, once.
fn send_zc_all(port: &CompletionPort, sock: &impl std::os::fd::AsFd, data: Vec<u8>) -> Vec<u8> {
    let mut buf = data;
    let mut pos = 0;
    while pos < buf.len() {
        port.submit(Op::send_zc_from(sock, buf, pos), pos as u64)
            .unwrap();
        let mut c = get(port);
        assert_eq!((c.kind(), c.user_data), (OpKind::SendZc, pos as u64));
        buf = c.buf.take().expect("the buffer comes back");
        let n = c.result.expect("send_zc succeeds");
        assert!(
            n > 0 && n <= buf.len() - pos,
            "sent {n} of {}",
            buf.len() - pos
        );
        pos += n;
    }
    buf
}

backend_test!(
    send_zc_small_and_large_payloads_arrive_intact,
    |choice: BackendChoice| {
        let port = port(choice);
        let path = port.stats().op_paths.get(OpKind::SendZc);
        eprintln!("send_zc path on {choice:?}: {path:?}");
        let (sender, peer) = tcp_pair();
        port.associate(&sender, 4).unwrap();
        peer.set_read_timeout(Some(T)).unwrap();
        let reader = read_all(peer);

        let small = pattern(100);
        let large = pattern(8 << 20);
        assert_eq!(send_zc_all(&port, &sender, small.clone()), small);
        assert_eq!(send_zc_all(&port, &sender, large.clone()), large);
        sender.shutdown(std::net::Shutdown::Write).unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), small.len() + large.len(), "byte count");
        assert!(
            got[..100] == small[..] && got[100..] == large[..],
            "different bytes"
        );

        // An empty send completes with 0 and hands its buffer back.
        port.submit(Op::send_zc(&sender, Vec::new()), 0).unwrap();
        let c = get(&port);
        assert!(c.buf.is_some());
        let _ = c.result;
        assert!(matches!(
            port.get(Some(Duration::from_millis(100))),
            Err(Error::Timeout)
        ));
    }
);

backend_test!(
    send_zc_to_a_peer_that_reset_fails_and_hands_the_buffer_back,
    |choice: BackendChoice| {
        let port = port(choice);
        let (sender, peer) = tcp_pair();
        port.associate(&sender, 1).unwrap();
        // Close with a reset (SO_LINGER 0): the sender's next sends fail.
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        let data = pattern(64 << 10);
        let mut failed = None;
        for i in 0..200 {
            port.submit(Op::send_zc(&sender, data.clone()), i).unwrap();
            let mut c = get(&port);
            assert_eq!(c.user_data, i);
            let buf = c.buf.take().expect("the buffer comes back, failed or not");
            assert_eq!(buf, data, "handed back unchanged");
            if let Err(e) = c.result {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("sends to a reset peer fail");
        assert!(
            matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
            "{e:?}"
        );
        // (a SIGPIPE would have killed the test process)
    }
);

backend_test!(
    send_zc_on_a_unix_socket_sends_by_copying,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        port.associate(&a, 1).unwrap();
        b.set_read_timeout(Some(T)).unwrap();
        let reader = read_all(b);
        let data = pattern(300_000);
        assert_eq!(send_zc_all(&port, &a, data.clone()), data);
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(reader.join().unwrap() == data);
    }
);

backend_test!(
    a_cancelled_send_zc_completes_once_with_its_buffer,
    |choice: BackendChoice| {
        let port = port(choice);
        let (sender, mut peer) = tcp_pair();
        port.associate(&sender, 1).unwrap();
        // Fill the connection until a send waits: the peer does not read.
        let chunk = pattern(1 << 20);
        let mut queued = 0usize;
        let mut waiting = None;
        for i in 0..64u64 {
            let id = port.submit(Op::send_zc(&sender, chunk.clone()), i).unwrap();
            match port.get(Some(Duration::from_millis(300))) {
                Ok(c) => {
                    assert_eq!(c.user_data, i);
                    queued += c.result.expect("a send into a live connection");
                }
                Err(Error::Timeout) => {
                    waiting = Some((id, i));
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        let (id, i) = waiting.expect("a send that waits for room");
        port.cancel(id).unwrap();
        // Let the peer drain, so queued bytes are acknowledged and the kernel
        // releases the buffer (the completion comes after that).
        peer.set_read_timeout(Some(T)).unwrap();
        let drain = std::thread::spawn(move || {
            let mut n = 0usize;
            let mut b = vec![0; 1 << 16];
            loop {
                match peer.read(&mut b) {
                    Ok(0) => return n,
                    Ok(k) => n += k,
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        let mut c = get(&port);
        assert_eq!(c.user_data, i);
        assert_eq!(c.buf.take().expect("the buffer comes back"), chunk);
        match &c.result {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e:?}"),
            Ok(n) => queued += n, // the cancel lost: part was sent
        }
        assert!(
            matches!(
                port.get(Some(Duration::from_millis(200))),
                Err(Error::Timeout)
            ),
            "one completion"
        );
        assert!(matches!(port.cancel(id), Err(Error::NotFound)));
        drop(sender);
        assert_eq!(
            drain.join().unwrap(),
            queued,
            "the peer got what was reported sent"
        );
    }
);

/// A fresh unlinked file holding `data`.
fn file_with(data: &[u8]) -> std::fs::File {
    let f = temp_file();
    f.write_all_at(data, 0).unwrap();
    f
}

backend_test!(fixed_reads_and_writes_on_a_file, |choice: BackendChoice| {
    let port = port(choice);
    eprintln!(
        "fixed paths on {choice:?}: {:?} {:?}",
        port.stats().op_paths.get(OpKind::ReadFixed),
        port.stats().op_paths.get(OpKind::WriteFixed)
    );
    let bufs = port.register_buffers(4, 8192).expect("register");
    assert_eq!(
        (bufs.count(), bufs.buf_size(), bufs.available()),
        (4, 8192, 4)
    );
    let data = pattern(10_000);
    let file = file_with(&data);
    port.associate(&file, 2).unwrap();

    // A full read.
    port.submit(Op::read_fixed(&file, bufs.lease().unwrap(), 100), 1)
        .unwrap();
    let mut c = get(&port);
    assert_eq!((c.key, c.user_data, c.kind()), (2, 1, OpKind::ReadFixed));
    assert_eq!(c.result.as_ref().ok(), Some(&8192));
    let buf = c.take_fixed().unwrap();
    assert!(c.take_fixed().is_none(), "taken once");
    assert!(buf[..] == data[100..8292]);
    assert_eq!(bufs.available(), 3);

    // Short at the end of the file, then Ok(0) past it.
    port.submit(Op::read_fixed(&file, buf, 9000), 2).unwrap();
    let mut c = get(&port);
    assert_eq!(c.result.as_ref().ok(), Some(&1000));
    let buf = c.take_fixed().unwrap();
    assert!(buf[..] == data[9000..]);
    port.submit(Op::read_fixed(&file, buf, 20_000), 3).unwrap();
    let mut c = get(&port);
    assert_eq!(c.result.as_ref().ok(), Some(&0));
    let mut buf = c.take_fixed().unwrap();
    assert!(buf.is_empty());

    // Write, then a write from a position within the buffer.
    buf.extend_from_slice(b"0123456789");
    port.submit(Op::write_fixed(&file, buf, 10_000), 4).unwrap();
    let mut c = get(&port);
    assert_eq!(c.result.as_ref().ok(), Some(&10));
    let buf = c.take_fixed().unwrap();
    assert_eq!(&buf[..], b"0123456789", "handed back unchanged");
    port.submit(Op::write_fixed_from(&file, buf, 6, 0), 5)
        .unwrap();
    let c = get(&port);
    assert_eq!(c.result.as_ref().ok(), Some(&4));
    drop(c); // the lease goes back with the completion
    let mut back = vec![0; 10];
    file.read_exact_at(&mut back, 10_000).unwrap();
    assert_eq!(&back, b"0123456789");
    file.read_exact_at(&mut back[..4], 0).unwrap();
    assert_eq!(&back[..4], b"6789");
    assert_eq!(bufs.available(), 4, "every lease is back");
});

backend_test!(
    fixed_ops_on_a_bad_descriptor_fail_and_hand_the_lease_back,
    |choice: BackendChoice| {
        let port = port(choice);
        let bufs = port.register_buffers(2, 4096).unwrap();
        let wo = write_only_file();
        port.associate(&wo, 1).unwrap();
        port.submit(Op::read_fixed(&wo, bufs.lease().unwrap(), 0), 0)
            .unwrap();
        let mut c = get(&port);
        assert_errno(&c.result, libc::EBADF);
        assert!(c.take_fixed().is_some());

        let ro = std::fs::File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
        port.associate(&ro, 2).unwrap();
        let mut buf = bufs.lease().unwrap();
        buf.extend_from_slice(b"x");
        port.submit(Op::write_fixed(&ro, buf, 0), 0).unwrap();
        let c = get(&port);
        assert_errno(&c.result, libc::EBADF);
        drop(c);
        assert_eq!(bufs.available(), 2);
    }
);

backend_test!(
    fixed_reads_and_writes_on_a_socket,
    |choice: BackendChoice| {
        let port = port(choice);
        let bufs = port.register_buffers(2, 64 << 10).unwrap();
        let (a, mut b) = tcp_pair();
        port.associate(&a, 7).unwrap();
        b.set_read_timeout(Some(T)).unwrap();

        // Write from a fixed buffer; the peer reads it.
        let msg = pattern(50_000);
        let mut buf = bufs.lease().unwrap();
        assert_eq!(buf.extend_from_slice(&msg), msg.len());
        let mut sent = 0;
        while sent < msg.len() {
            port.submit(Op::write_fixed_from(&a, buf, sent, 0), 0)
                .unwrap();
            let mut c = get(&port);
            sent += c.result.as_ref().copied().expect("write to a socket");
            buf = c.take_fixed().unwrap();
        }
        let mut got = vec![0; msg.len()];
        b.read_exact(&mut got).unwrap();
        assert!(got == msg);

        // Read into a fixed buffer what the peer writes.
        b.write_all(b"from the peer").unwrap();
        port.submit(Op::read_fixed(&a, buf, 0), 1).unwrap();
        let mut c = get(&port);
        assert_eq!((c.key, c.result.as_ref().ok()), (7, Some(&13)));
        let buf = c.take_fixed().unwrap();
        assert_eq!(&buf[..], b"from the peer");

        // An offset on a socket is ESPIPE, as for read(2).
        port.submit(Op::read_fixed(&a, buf, 5), 2).unwrap();
        let mut c = get(&port);
        assert_errno(&c.result, libc::ESPIPE);
        let buf = c.take_fixed().unwrap();

        // The peer closes: end of stream; a reset peer: EPIPE/ECONNRESET, no SIGPIPE.
        socket2::SockRef::from(&b)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(b);
        port.submit(Op::read_fixed(&a, buf, 0), 3).unwrap();
        let mut c = get(&port);
        match &c.result {
            Ok(0) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
            other => panic!("read after the peer reset: {other:?}"),
        }
        let mut buf = c.take_fixed().unwrap();
        buf.clear();
        buf.extend_from_slice(&[1; 1000]);
        let mut err = None;
        for _ in 0..100 {
            port.submit(Op::write_fixed(&a, buf, 0), 4).unwrap();
            let mut c = get(&port);
            buf = c.take_fixed().unwrap();
            if let Err(e) = c.result {
                err = Some(e);
                break;
            }
        }
        let e = err.expect("writes to a reset peer fail");
        assert!(
            matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
            "{e:?}"
        );
        drop(buf);
        assert_eq!(bufs.available(), 2);
    }
);

backend_test!(
    an_exhausted_set_and_absurd_sizes_give_clear_errors,
    |choice: BackendChoice| {
        let port = port(choice);
        let bufs = port.register_buffers(3, 100).unwrap();
        let leases: Vec<_> = (0..3).map(|_| bufs.lease().unwrap()).collect();
        let mut idx: Vec<usize> = leases.iter().map(|b| b.index()).collect();
        idx.sort();
        assert_eq!(idx, [0, 1, 2], "each buffer leased once");
        let e = bufs.lease().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        assert!(e.to_string().contains("all 3 fixed buffers"), "{e}");
        drop(leases);
        assert_eq!(bufs.available(), 3);
        assert!(bufs.lease().is_ok());

        for (count, size, kind) in [
            (0, 4096, ErrorKind::InvalidInput),
            (4, 0, ErrorKind::InvalidInput),
            (
                ringport::MAX_FIXED_BUFFERS + 1,
                4096,
                ErrorKind::InvalidInput,
            ),
            (4, ringport::MAX_FIXED_SIZE + 1, ErrorKind::InvalidInput),
            // 4 TiB: more than any test machine has.
            (4096, 1 << 30, ErrorKind::OutOfMemory),
        ] {
            let e = port.register_buffers(count, size).unwrap_err();
            assert_eq!(e.kind(), kind, "{count} × {size}: {e}");
            assert!(e.to_string().contains("fixed buffers"), "{e}");
        }
        // The port's table fills up: io_uring's, and epoll's count of the
        // same size (only an io_uring kernel without registered buffers,
        // whose sets run on workers, keeps no table).
        let big = port
            .register_buffers(ringport::MAX_FIXED_BUFFERS - 3, 64)
            .unwrap();
        let counted = choice == BackendChoice::Epoll
            || port.stats().op_paths.get(OpKind::ReadFixed) == Some(OpPath::Uring);
        match (counted, port.register_buffers(1, 64)) {
            (true, Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::OutOfMemory);
                assert!(e.to_string().contains("slots are free"), "{e}");
            }
            (true, Ok(_)) => panic!("the port's 4096 slots should be taken"),
            (false, r) => assert!(r.is_ok()),
        }
        // Dropping a set frees its slots for the next one.
        drop(big);
        drop(bufs);
        let again = port
            .register_buffers(ringport::MAX_FIXED_BUFFERS, 64)
            .unwrap();
        assert_eq!(again.available(), ringport::MAX_FIXED_BUFFERS);
    }
);

backend_test!(
    a_lease_from_another_port_is_refused_and_handed_back,
    |choice: BackendChoice| {
        let (p1, p2) = (port(choice), port(choice));
        let bufs = p1.register_buffers(1, 4096).unwrap();
        let file = temp_file();
        p2.associate(&file, 1).unwrap();
        p2.submit(Op::read_fixed(&file, bufs.lease().unwrap(), 0), 0)
            .unwrap();
        let mut c = get(&p2);
        assert_errno(&c.result, libc::EINVAL);
        assert!(c.take_fixed().is_some());
        drop(c);
        assert_eq!(bufs.available(), 1);
    }
);

backend_test!(leases_outlive_a_closed_port, |choice: BackendChoice| {
    let port = port(choice);
    let bufs = port.register_buffers(2, 4096).unwrap();
    let mut lease = bufs.lease().unwrap();
    let file = temp_file();
    port.associate(&file, 1).unwrap();
    port.close();
    lease.extend_from_slice(b"still mine");
    assert_eq!(&lease[..], b"still mine");
    assert!(matches!(
        port.submit(Op::write_fixed(&file, lease, 0), 0),
        Err(Error::Closed)
    ));
    assert_eq!(bufs.available(), 2, "the refused op's lease went back");
    assert!(
        port.register_buffers(1, 64).is_err(),
        "a closed port registers nothing"
    );
    drop(port);
    let lease = bufs.lease().unwrap();
    assert_eq!(lease.capacity(), 4096);
});

backend_test!(exclusive fixed_buffers_and_send_zc_leak_no_descriptors, |choice: BackendChoice| {
    let before = fd_snapshot();
    {
        let port = port(choice);
        let bufs = port.register_buffers(8, 4096).unwrap();
        let file = temp_file();
        port.associate(&file, 1).unwrap();
        let mut b = bufs.lease().unwrap();
        b.extend_from_slice(b"abc");
        port.submit(Op::write_fixed(&file, b, 0), 0).unwrap();
        get(&port).result.unwrap();
        let (a, peer) = tcp_pair();
        port.associate(&a, 2).unwrap();
        let reader = read_all(peer);
        send_zc_all(&port, &a, pattern(200_000));
        drop(a);
        assert_eq!(reader.join().unwrap().len(), 200_000);
        // A set alive at close: the port goes first, the set after.
        port.close();
        drop(port);
        drop(bufs);
    }
    assert_no_new_fds(&before, "zero-copy and fixed-buffer operations");
});

backend_test!(register_while_ops_are_in_flight, |choice: BackendChoice| {
    // A receive that waits for ever on one thread while sets come and go.
    let port = port(choice);
    let (a, _b) = tcp_pair();
    port.associate(&a, 1).unwrap();
    let id = port
        .submit(Op::recv(&a, Vec::with_capacity(16)), 9)
        .unwrap();
    let file = temp_file();
    port.associate(&file, 2).unwrap();
    for round in 0..20 {
        let bufs = port.register_buffers(4, 4096).unwrap();
        let mut b = bufs.lease().unwrap();
        b.extend_from_slice(&[round as u8; 100]);
        port.submit(Op::write_fixed(&file, b, 0), round).unwrap();
        let c = get(&port);
        assert_eq!((c.user_data, c.result.as_ref().ok()), (round, Some(&100)));
    }
    port.cancel(id).unwrap();
    let c = get(&port);
    assert_eq!(c.user_data, 9);
    assert!(c.is_cancelled());
});

backend_test!(
    closing_the_port_with_a_send_zc_stuck_behind_a_silent_peer_returns,
    |choice: BackendChoice| {
        let port = port(choice);
        let (sender, peer) = tcp_pair();
        port.associate(&sender, 1).unwrap();
        // The peer never reads: a large send fills both buffers and waits,
        // and the kernel holds the pages it queued until the peer reads.
        let mut waiting = false;
        for i in 0..64u64 {
            port.submit(Op::send_zc(&sender, pattern(1 << 20)), i)
                .unwrap();
            if let Err(Error::Timeout) = port.get(Some(Duration::from_millis(300))) {
                waiting = true;
                break;
            }
        }
        assert!(waiting, "a send that waits for room");
        let (tx, rx) = std::sync::mpsc::channel();
        let p = port.clone();
        std::thread::spawn(move || {
            p.close();
            let _ = tx.send(());
        });
        rx.recv_timeout(T)
            .expect("close returns even though the kernel keeps the buffer");
        drop(peer);
    }
);

backend_test!(
    a_send_zc_with_a_linked_timeout_that_fires_hands_its_buffer_back,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut sender, mut peer) = tcp_pair();
        // Small buffers (no autotuning), filled with plain writes until they
        // stay full (the peer does not read yet).
        socket2::SockRef::from(&peer)
            .set_recv_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&sender)
            .set_send_buffer_size(4096)
            .unwrap();
        sender.set_nonblocking(true).unwrap();
        let mut filled = 0usize;
        let junk = vec![0u8; 1 << 16];
        for _ in 0..100 {
            let before = filled;
            loop {
                match sender.write(&junk) {
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
            if filled == before {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sender.set_nonblocking(false).unwrap();
        port.associate(&sender, 1).unwrap();
        // A send that waits for room and gives up after 50 ms.
        let data = pattern(1 << 20);
        let op = Op::send_zc(&sender, data.clone()).timeout_after(Duration::from_millis(50));
        port.submit(op, 5).unwrap();
        // The kernel releases what a zero-copy send queued only once it is
        // sent, so the completion waits for the peer to read (the timer has
        // fired by then, or, on a slow machine, the send got room: both are
        // checked below).
        std::thread::sleep(Duration::from_millis(200));
        peer.set_read_timeout(Some(T)).unwrap();
        let drain = std::thread::spawn(move || {
            let mut n = 0;
            let mut b = vec![0; 1 << 16];
            loop {
                match peer.read(&mut b).unwrap() {
                    0 => return n,
                    k => n += k,
                }
            }
        });
        let mut c = get(&port);
        assert_eq!(c.user_data, 5);
        assert_eq!(c.buf.take().expect("the buffer comes back"), data);
        let sent = match c.result {
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e:?}");
                0
            }
            Ok(n) => n, // room appeared before the timer fired (a loaded machine)
        };
        port.disassociate(&sender).unwrap();
        drop(sender);
        let n = drain.join().unwrap();
        assert_eq!(
            n,
            filled + sent,
            "the peer got exactly what was reported sent"
        );
    }
);

// `TcpStream::send_zc_all` on the async face: 4 MiB reach a std client intact,
// and the buffer comes back.
backend_test!(send_zc_on_the_async_face, |choice: BackendChoice| {
    use crate::rt::{block, runtime, wait_idle};
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let listener = block(&h, async {
        ringport::net::TcpListener::bind("127.0.0.1:0")
    })
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    });
    let data = pattern(4 << 20);
    let d = data.clone();
    let back = block(&h, async move {
        let (conn, _) = listener.accept().await?;
        let (r, back) = conn.send_zc_all(d).await;
        r?;
        conn.shutdown(std::net::Shutdown::Write)?;
        Ok::<_, std::io::Error>(back)
    })
    .unwrap();
    assert!(back == data, "the buffer comes back unchanged");
    let got = reader.join().unwrap().unwrap();
    assert!(got == data, "the bytes differ");
    wait_idle(&h);
});

/// Sets or clears `CAP_IPC_LOCK` in the calling thread's effective set
/// (capabilities are per thread); returns whether it was set before.
fn set_ipc_lock(on: bool) -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget writes two capability data structs into `d`, which we own.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    let was = d[0].effective & (1 << CAP_IPC_LOCK) != 0;
    if on && d[0].permitted & (1 << CAP_IPC_LOCK) != 0 {
        d[0].effective |= 1 << CAP_IPC_LOCK;
    } else if !on {
        d[0].effective &= !(1 << CAP_IPC_LOCK);
    }
    // SAFETY: capset reads the header and the two structs; it changes only
    // this thread's capabilities.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
    was
}

// Pinned memory counts against RLIMIT_MEMLOCK for a ring made without
// CAP_IPC_LOCK: a set over the limit fails with a message naming it (also
// when the kernel pinned part of it first), and nothing is left registered.
// On epoll nothing is pinned, so the same sets register.
backend_test!(exclusive fixed_buffers_over_the_memlock_limit_fail_clearly, |choice: BackendChoice| {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on structs we own.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut old) };
    let low = libc::rlimit {
        rlim_cur: 128 << 10,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above; restored at the end of the test.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &low) }, 0);
    let had = set_ipc_lock(false);
    let result = std::panic::catch_unwind(|| {
        // A small ring: its own memory is accounted too.
        let port = build(builder(choice).max_in_flight(8).ring_entries(8));
        let pinned = port.stats().op_paths.get(OpKind::ReadFixed) == Some(OpPath::Uring);
        for (count, size) in [(4, 1 << 20), (8, 32 << 10)] {
            match port.register_buffers(count, size) {
                Err(e) if pinned => {
                    assert_eq!(e.kind(), ErrorKind::OutOfMemory, "{e}");
                    assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
                }
                Ok(_) if !pinned => {}
                other => panic!("{count} × {size} (pinned: {pinned}): {other:?}"),
            }
        }
        // What fits still registers, and works (the partly pinned set above
        // was cleared, or this would not fit).
        let bufs = port
            .register_buffers(2, 16 << 10)
            .expect("32 KiB fit in 128 KiB");
        let file = temp_file();
        port.associate(&file, 1).unwrap();
        let mut b = bufs.lease().unwrap();
        b.extend_from_slice(b"pinned");
        port.submit(Op::write_fixed(&file, b, 0), 0).unwrap();
        assert_eq!(get(&port).result.unwrap(), 6);
    });
    set_ipc_lock(had);
    // SAFETY: restores the limit read above.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &old) };
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
});

backend_test!(
    a_zero_copy_send_sent_again_plainly_keeps_its_timeout,
    |choice: BackendChoice| {
        use std::io::Write;
        let port = port(choice);
        // A Unix socket (no zero-copy there: io_uring sends it again as a
        // plain SEND), full, whose peer does not read.
        let (a, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        while (&a).write(&[0u8; 4096]).is_ok() {}
        a.set_nonblocking(false).unwrap();
        port.associate(&a, 1).unwrap();
        port.submit(
            Op::send_zc(&a, vec![1; 1000]).timeout_after(std::time::Duration::from_millis(50)),
            1,
        )
        .unwrap();
        let c = get(&port);
        assert!(c.is_cancelled(), "the timeout did not end the send: {c:?}");
    }
);

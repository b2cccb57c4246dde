//! Multishot accept and receive with a provided-buffer pool, on real TCP
//! sockets: many connections, many messages byte-exact, short reads, EOF,
//! peer reset, cancel (won and lost), an empty pool and re-arming, leases
//! that outlive their operation and their port, and no descriptor leaks.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ringport::op::OpPath;
use ringport::{BackendChoice, Completion, CompletionPort, Error, Op, OpKind, PooledBuf};

use crate::common::*;

/// `n` bytes that differ at every offset.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Dequeues completions of a multishot receive until its final one, keeping
/// the bytes of each (`first_seq`: the `seq` of the first one); returns them
/// and the final completion.
fn drain_recv(port: &CompletionPort, first_seq: u32) -> (Vec<u8>, Completion) {
    let mut got = Vec::new();
    let mut seq = first_seq;
    loop {
        let mut c = get(port);
        assert_eq!(c.kind(), OpKind::RecvMulti);
        assert_eq!(c.seq(), seq, "completions come in order, numbered");
        seq += 1;
        if let Some(b) = c.take_pooled() {
            assert_eq!(Some(b.len()), c.result.as_ref().ok().copied());
            got.extend_from_slice(&b);
        }
        if !c.more() {
            return (got, c);
        }
        assert!(
            matches!(c.result, Ok(n) if n > 0),
            "a partial completion carries data: {c:?}"
        );
    }
}

/// Like [`drain_recv`], but re-arms the receive whenever the pool ran dry
/// (`ENOBUFS`: the bytes are copied out and every lease dropped by then), as
/// a server does; returns every byte and the final completion of another
/// cause. Counts the re-arms.
fn drain_rearming(
    port: &CompletionPort,
    server: &TcpStream,
    pool: &ringport::BufferPool,
) -> (Vec<u8>, Completion, usize) {
    let mut got = Vec::new();
    let mut rearms = 0;
    loop {
        let (chunk, end) = drain_recv(port, 0);
        got.extend_from_slice(&chunk);
        match &end.result {
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                assert_eq!(pool.available(), pool.count(), "no lease is held");
                rearms += 1;
                port.submit(Op::recv_multishot(server, pool), end.user_data)
                    .unwrap();
            }
            _ => return (got, end, rearms),
        }
    }
}

/// A multishot receive on the server side of a fresh TCP pair.
fn armed(port: &CompletionPort, pool: &ringport::BufferPool) -> (TcpStream, TcpStream) {
    let (client, server) = tcp_pair();
    port.associate(&server, 5).unwrap();
    port.submit(Op::recv_multishot(&server, pool), 9).unwrap();
    (client, server)
}

backend_test!(paths_are_reported, |choice: BackendChoice| {
    let port = port(choice);
    let paths = port.stats().op_paths;
    let expect = match choice {
        BackendChoice::Epoll => OpPath::Emulated,
        _ => OpPath::Uring, // this kernel (6.18) has both natively
    };
    for kind in [OpKind::AcceptMulti, OpKind::RecvMulti] {
        let path = paths.get(kind).unwrap();
        if choice == BackendChoice::Uring && path != OpPath::Uring {
            eprintln!("note: {kind:?} is {path} on this kernel");
            continue;
        }
        assert_eq!(path, expect, "{kind:?}");
    }
    let pool = port.buffer_pool(4, 128).unwrap();
    assert_eq!(
        (pool.count(), pool.buffer_size(), pool.available()),
        (4, 128, 4)
    );
    assert_eq!(pool.is_kernel_ring(), choice == BackendChoice::Uring);
});

backend_test!(bad_pools_are_refused, |choice: BackendChoice| {
    let port = port(choice);
    for (count, size) in [(0, 64), (40_000, 64), (4, 0), (4, (1 << 30) + 1)] {
        match port.buffer_pool(count, size) {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
            other => panic!("{count} × {size}: {other:?}"),
        }
    }
});

backend_test!(accepts_many_connections, |choice: BackendChoice| {
    let port = port(choice);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    port.associate(&listener, 3).unwrap();
    let id = port.submit(Op::accept_multishot(&listener), 77).unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut accepted = Vec::new();
    while accepted.len() < clients.len() {
        let mut c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (3, 77, OpKind::AcceptMulti));
        assert_eq!(
            c.op_id(),
            Some(id),
            "every completion names the one operation"
        );
        assert!(c.more(), "the accept stays armed: {c:?}");
        let fd = c.take_fd().expect("an accepted socket");
        assert_eq!(c.result.as_ref().ok(), Some(&(fd.as_raw_fd() as usize)));
        accepted.push(TcpStream::from(fd));
    }
    // Each accepted socket is the server side of one client.
    let mut peers: Vec<_> = accepted.iter().map(|s| s.peer_addr().unwrap()).collect();
    let mut locals: Vec<_> = clients.iter().map(|s| s.local_addr().unwrap()).collect();
    peers.sort();
    locals.sort();
    assert_eq!(peers, locals);
    port.cancel(id).unwrap();
    let end = get(&port);
    assert!(end.is_cancelled() && !end.more(), "{end:?}");
    assert!(matches!(port.cancel(id), Err(Error::NotFound)));
    assert_eq!(port.stats().in_flight, 0);
});

backend_test!(
    receives_many_messages_byte_exact,
    |choice: BackendChoice| {
        let port = port(choice);
        // Few, small buffers: the pool is recycled hundreds of times.
        let pool = port.buffer_pool(8, 4096).unwrap();
        let (mut client, server) = armed(&port, &pool);
        let data = pattern(2 << 20);
        let to_send = data.clone();
        let writer = std::thread::spawn(move || {
            for chunk in to_send.chunks(1000) {
                client.write_all(chunk).unwrap();
            }
            // Dropped: EOF.
        });
        let (got, end, rearms) = drain_rearming(&port, &server, &pool);
        eprintln!("{rearms} re-arms after an empty pool");
        writer.join().unwrap();
        assert_eq!(end.result.as_ref().ok(), Some(&0), "EOF ends it: {end:?}");
        assert!(end.pooled().is_none());
        assert_eq!(got.len(), data.len());
        assert!(
            got == data,
            "the bytes arrive in order, none lost or repeated"
        );
        assert_eq!(pool.available(), pool.count(), "every buffer is back");
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    a_short_message_is_a_short_completion,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(4, 4096).unwrap();
        let (mut client, _server) = armed(&port, &pool);
        for msg in [&b"a"[..], b"bc", b"def"] {
            client.write_all(msg).unwrap();
            let mut c = get(&port);
            assert_eq!((c.key, c.user_data), (5, 9));
            assert!(c.more());
            assert_eq!(c.result.as_ref().ok(), Some(&msg.len()));
            let b = c.take_pooled().unwrap();
            assert_eq!(&b[..], msg);
            assert_eq!(b.capacity(), 4096);
            assert!(c.take_pooled().is_none(), "taken once");
        }
        drop(client);
        let end = get(&port);
        assert_eq!(end.result.as_ref().ok(), Some(&0));
        assert!(!end.more());
    }
);

backend_test!(
    a_peer_reset_ends_it_with_the_error,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(4, 4096).unwrap();
        let (mut client, _server) = armed(&port, &pool);
        client.write_all(b"last words").unwrap();
        let mut c = get(&port);
        assert_eq!(c.take_pooled().as_deref(), Some(&b"last words"[..]));
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client); // RST
        let (rest, end) = drain_recv(&port, 1);
        assert!(rest.is_empty());
        assert_errno(&end.result, libc::ECONNRESET);
        assert!(!end.more());
    }
);

backend_test!(a_cancel_wins_while_it_waits, |choice: BackendChoice| {
    let port = port(choice);
    let pool = port.buffer_pool(4, 4096).unwrap();
    let (client, server) = tcp_pair();
    port.associate(&server, 5).unwrap();
    let id = port.submit(Op::recv_multishot(&server, &pool), 1).unwrap();
    port.cancel(id).unwrap();
    let end = get(&port);
    assert!(end.is_cancelled() && !end.more(), "{end:?}");
    assert!(matches!(port.cancel(id), Err(Error::NotFound)));
    // Nothing was consumed: a new receive gets what the peer sends next.
    drop(end);
    let mut client = client;
    client.write_all(b"after").unwrap();
    port.submit(Op::recv_multishot(&server, &pool), 2).unwrap();
    let mut c = get(&port);
    assert_eq!(c.user_data, 2);
    assert_eq!(c.take_pooled().as_deref(), Some(&b"after"[..]));
});

backend_test!(
    a_cancel_mid_stream_loses_nothing,
    |choice: BackendChoice| {
        // A cancel racing with data and EOF: whichever wins, every byte the
        // peer sent before its EOF arrives if the final result is EOF (the cancel
        // lost), and a prefix of them if it is ECANCELED (it won).
        let port = port(choice);
        let pool = port.buffer_pool(64, 1024).unwrap();
        let (mut client, _server) = tcp_pair();
        port.associate(&_server, 5).unwrap();
        let id = port.submit(Op::recv_multishot(&_server, &pool), 1).unwrap();
        let data = pattern(20_000);
        client.write_all(&data).unwrap();
        drop(client);
        // Give the data and the EOF time to arrive, so the cancel is likely to
        // find the operation already ended (either outcome is checked).
        std::thread::sleep(Duration::from_millis(50));
        let cancel = port.cancel(id);
        let (got, end) = drain_recv(&port, 0);
        match (&cancel, &end.result) {
            (Ok(()), Ok(0)) | (Err(Error::NotFound), Ok(0)) => {
                assert!(got == data, "lost cancel: every byte arrives")
            }
            (Ok(()), Err(_)) if end.is_cancelled() => {
                assert!(data.starts_with(&got), "won cancel: a prefix arrives")
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        assert!(matches!(port.cancel(id), Err(Error::NotFound)));
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    an_empty_pool_ends_it_and_a_rearm_resumes,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(4, 1024).unwrap();
        let (mut client, server) = tcp_pair();
        port.associate(&server, 5).unwrap();
        let data = pattern(10_000);
        client.write_all(&data).unwrap();
        port.submit(Op::recv_multishot(&server, &pool), 1).unwrap();
        // Hold every lease: the pool runs dry.
        let mut held: Vec<PooledBuf> = Vec::new();
        let end = loop {
            let mut c = get(&port);
            match c.take_pooled() {
                Some(b) if c.more() => held.push(b),
                Some(b) => {
                    // A final completion with data: the kernel stopped early.
                    held.push(b);
                    break c;
                }
                None => break c,
            }
        };
        assert!(!end.more());
        assert_errno(&end.result, libc::ENOBUFS);
        assert_eq!(pool.available(), 0, "{pool:?}");
        let mut got: Vec<u8> = held.iter().flat_map(|b| b.iter().copied()).collect();
        assert!(!got.is_empty() && data.starts_with(&got));
        // Give the buffers back and re-arm: the rest arrives, nothing lost.
        held.clear();
        assert_eq!(pool.available(), 4);
        port.submit(Op::recv_multishot(&server, &pool), 2).unwrap();
        drop(client);
        let (rest, end, _) = drain_rearming(&port, &server, &pool);
        assert_eq!(end.result.as_ref().ok(), Some(&0), "{end:?}");
        got.extend_from_slice(&rest);
        assert!(got == data, "{} of {} bytes", got.len(), data.len());
    }
);

backend_test!(
    leases_outlive_the_operation_and_the_port,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(4, 64).unwrap();
        let (mut client, server) = armed(&port, &pool);
        client.write_all(b"kept").unwrap();
        let lease = get(&port).take_pooled().unwrap();
        // A receive is still in flight; the pool handle, then the port, go away.
        drop(pool);
        port.close();
        drop(port);
        drop(server);
        assert_eq!(&lease[..], b"kept");
        let copy = lease.to_vec();
        drop(lease); // gives the buffer back to a pool no port uses any more
        assert_eq!(copy, b"kept");
    }
);

backend_test!(a_pool_serves_only_its_own_port, |choice: BackendChoice| {
    let a = port(choice);
    let b = port(choice);
    let pool = a.buffer_pool(4, 64).unwrap();
    let (_client, server) = tcp_pair();
    b.associate(&server, 1).unwrap();
    b.submit(Op::recv_multishot(&server, &pool), 0).unwrap();
    let c = get(&b);
    assert_errno(&c.result, libc::EINVAL);
    assert!(!c.more());
    // A linked timeout cannot bound a multishot operation.
    let own = b.buffer_pool(4, 64).unwrap();
    let op = Op::recv_multishot(&server, &own).timeout_after(Duration::from_secs(1));
    b.submit(op, 0).unwrap();
    assert_errno(&get(&b).result, libc::EINVAL);
});

backend_test!(exclusive nothing_leaks, |choice: BackendChoice| {
    let before = fd_count();
    {
        let port = port(choice);
        let pool = port.buffer_pool(16, 256).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        port.associate(&listener, 1).unwrap();
        port.submit(Op::accept_multishot(&listener), 0).unwrap();
        let clients: Vec<TcpStream> = (0..8)
            .map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap())
            .collect();
        // Half the accepted sockets are taken and receive; the rest are
        // dropped with their completions (which closes them).
        let mut servers = Vec::new();
        for i in 0..clients.len() {
            let mut c = get(&port);
            let fd = c.take_fd().unwrap();
            if i % 2 == 0 {
                port.associate(&fd, 10 + i as u64).unwrap();
                port.submit(Op::recv_multishot(&fd, &pool), i as u64).unwrap();
                servers.push(fd);
            }
        }
        for mut c in clients {
            let _ = c.write_all(b"x");
        }
        // The port closes with a multishot accept and receives in flight.
        port.close();
    }
    wait_until("every descriptor is closed", || fd_count() <= before);
});

backend_test!(
    a_receive_outlives_its_pool_handle,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(2, 16).unwrap();
        let (mut client, server) = armed(&port, &pool);
        // The operation keeps the pool alive; buffers still cycle through it.
        drop(pool);
        let data = pattern(1000);
        let to_send = data.clone();
        let writer = std::thread::spawn(move || client.write_all(&to_send).unwrap());
        let mut got = Vec::new();
        while got.len() < data.len() {
            let mut c = get(&port);
            if let Some(b) = c.take_pooled() {
                got.extend_from_slice(&b);
            }
            if !c.more() {
                // The pool ran dry: this handle-less pool is gone for new
                // submissions, so read the rest with a new one.
                assert_errno(&c.result, libc::ENOBUFS);
                let fresh = port.buffer_pool(64, 64).unwrap();
                port.submit(Op::recv_multishot(&server, &fresh), 9).unwrap();
            }
        }
        writer.join().unwrap();
        assert!(got == data);
    }
);

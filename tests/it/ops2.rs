//! The file and transfer operations: `send_file`, vectored reads and writes,
//! `openat`, `statx`, `fallocate`, `shutdown`, and the linked timeout — on real
//! files and real TCP sockets on 127.0.0.1.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;
use std::time::Duration;

use ringport::{BackendChoice, CompletionPort, Error, Op, OpKind};

use crate::common::*;

/// `n` bytes that differ at every offset (so a transfer from the wrong offset,
/// or with a chunk lost or repeated, cannot match).
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// An unlinked temp file holding `data`.
fn file_with(data: &[u8]) -> File {
    let f = temp_file();
    f.write_all_at(data, 0).expect("fill the temp file");
    f
}

/// Reads everything `peer` sends until end of stream, on a thread.
fn read_all(mut peer: TcpStream) -> JoinHandle<Vec<u8>> {
    peer.set_read_timeout(Some(T)).unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        peer.read_to_end(&mut got)
            .expect("the peer reads until EOF");
        got
    })
}

/// Sends `file[offset..offset + len]` on `sock`, resubmitting after each short
/// transfer; returns the bytes sent (less than `len` only if the file ends).
fn send_file_all(
    port: &CompletionPort,
    sock: &TcpStream,
    file: &File,
    offset: u64,
    len: usize,
) -> usize {
    let mut sent = 0;
    while sent < len {
        port.submit(
            Op::send_file(sock, file, offset + sent as u64, len - sent),
            sent as u64,
        )
        .unwrap();
        let c = get(port);
        assert_eq!(c.kind(), OpKind::SendFile);
        assert_eq!(c.user_data, sent as u64);
        assert!(c.buf.is_none(), "a send_file has no buffer");
        match c.result.expect("send_file succeeds") {
            0 => break,
            n => {
                assert!(
                    n <= len - sent,
                    "sent {n}, more than the {} asked",
                    len - sent
                );
                sent += n;
            }
        }
    }
    sent
}

backend_test!(
    send_file_of_a_large_file_reaches_the_peer_intact,
    |choice: BackendChoice| {
        let port = port(choice);
        let data = pattern(5 << 20);
        let file = file_with(&data);
        let (sender, peer) = tcp_pair();
        port.associate(&sender, 3).unwrap();
        let reader = read_all(peer);

        assert_eq!(
            send_file_all(&port, &sender, &file, 0, data.len()),
            data.len()
        );
        sender.shutdown(std::net::Shutdown::Write).unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), data.len(), "byte count");
        assert!(got == data, "the peer received different bytes");

        // At the end of the file there is nothing left to send.
        port.submit(Op::send_file(&sender, &file, data.len() as u64, 100), 9)
            .unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data), (3, 9));
        assert_eq!(c.result.unwrap(), 0, "send_file at EOF is Ok(0)");
    }
);

backend_test!(
    send_file_sends_exactly_the_range_asked,
    |choice: BackendChoice| {
        let port = port(choice);
        let data = pattern(300_000);
        let file = file_with(&data);
        let (sender, peer) = tcp_pair();
        port.associate(&sender, 1).unwrap();
        let reader = read_all(peer);

        // A range in the middle, then one that runs past the end of the file.
        assert_eq!(send_file_all(&port, &sender, &file, 1_000, 5_000), 5_000);
        assert_eq!(
            send_file_all(&port, &sender, &file, 123_457, 100_000),
            100_000
        );
        let tail = data.len() as u64 - 777;
        assert_eq!(
            send_file_all(&port, &sender, &file, tail, 10_000),
            777,
            "a range past EOF sends up to EOF"
        );
        sender.shutdown(std::net::Shutdown::Write).unwrap();
        let got = reader.join().unwrap();
        let mut want = data[1_000..6_000].to_vec();
        want.extend_from_slice(&data[123_457..223_457]);
        want.extend_from_slice(&data[data.len() - 777..]);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the peer received different bytes");
    }
);

/// Restores the previous `SIGPIPE` disposition on drop.
struct SigpipeDefault(libc::sighandler_t);

impl SigpipeDefault {
    /// Sets `SIGPIPE` to its default action — killing the process — for as
    /// long as this lives, so a `SIGPIPE` cannot go unnoticed.
    fn set() -> SigpipeDefault {
        // SAFETY: signal() only swaps the disposition; SIG_DFL needs no handler.
        SigpipeDefault(unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) })
    }
}

impl Drop for SigpipeDefault {
    fn drop(&mut self) {
        // SAFETY: puts back the disposition signal() returned (SIG_IGN in a
        // Rust program).
        unsafe { libc::signal(libc::SIGPIPE, self.0) };
    }
}

// Exclusive: with `SIGPIPE` at its default action, a stray one anywhere in the
// process would kill the whole test binary, so nothing else may run meanwhile.
backend_test!(exclusive send_file_to_a_closed_peer_is_an_error_not_a_signal, |choice: BackendChoice| {
    let _sigpipe = SigpipeDefault::set();
    let port = port(choice);
    let data = pattern(1 << 20);
    let file = file_with(&data);
    let (sender, peer) = tcp_pair();
    port.associate(&sender, 1).unwrap();
    // The peer goes away without reading what it was sent: the kernel answers
    // with a reset, and every send after that fails.
    (&sender).write_all(b"unread").unwrap();
    std::thread::sleep(Duration::from_millis(10));
    drop(peer);
    let mut outcome = None;
    for i in 0..100 {
        port.submit(Op::send_file(&sender, &file, 0, data.len()), i).unwrap();
        let c = get(&port);
        match c.result {
            Ok(n) => assert!(n > 0, "round {i}: the file is not at its end"),
            Err(e) => {
                outcome = Some(e);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = outcome.expect("send_file to a closed peer must fail within 100 rounds");
    assert!(
        matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
        "expected EPIPE or ECONNRESET, got {e:?}"
    );
    // And again: EPIPE now, still no signal.
    port.submit(Op::send_file(&sender, &file, 0, 10), 200).unwrap();
    let r = get(&port).result;
    assert!(
        matches!(&r, Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET))),
        "expected EPIPE or ECONNRESET, got {r:?}"
    );
});

backend_test!(exclusive cancel_of_a_blocked_send_file_frees_everything, |choice: BackendChoice| {
    let data = pattern(4 << 20);
    let file = file_with(&data);
    let before = fd_count();
    {
        let port = port(choice);
        let (sender, peer) = tcp_pair();
        // Small buffers, so a peer that never reads blocks the sender soon.
        let s = socket2::SockRef::from(&sender);
        s.set_send_buffer_size(64 << 10).unwrap();
        socket2::SockRef::from(&peer).set_recv_buffer_size(64 << 10).unwrap();
        port.associate(&sender, 8).unwrap();

        // Send until one transfer stays pending: the socket's buffer is full.
        let mut offset = 0u64;
        let mut pending = None;
        for i in 0..1000 {
            let id = port
                .submit(Op::send_file(&sender, &file, offset, data.len() - offset as usize), i)
                .unwrap();
            match port.get(Some(Duration::from_millis(100))) {
                Ok(c) => {
                    let n = c.result.expect("send_file succeeds while there is room");
                    assert!(n > 0);
                    offset = (offset + n as u64) % data.len() as u64;
                }
                Err(Error::Timeout) => {
                    pending = Some((id, i));
                    break;
                }
                Err(e) => panic!("get failed: {e:?}"),
            }
        }
        let (id, ud) = pending.expect("a send_file to a peer that never reads must block");
        port.cancel(id).unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind(), c.op_id()), (8, ud, OpKind::SendFile, Some(id)));
        match &c.result {
            Ok(n) => assert!(*n > 0, "a cancel that lost the race reports bytes sent"),
            Err(_) => assert!(c.is_cancelled(), "expected ECANCELED, got {:?}", c.result),
        }
        assert_eq!(port.stats().in_flight, 0);
        assert!(matches!(port.cancel(id), Err(Error::NotFound)));

        // The socket still works: the peer drains it and more gets through.
        let reader = read_all(peer);
        let n = send_file_all(&port, &sender, &file, 0, 100_000);
        assert_eq!(n, 100_000);
        sender.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(reader.join().unwrap().ends_with(&data[..100_000]));
    }
    assert_eq!(fd_count(), before, "descriptors leaked (a pipe?) by a cancelled send_file");
});

backend_test!(
    vectored_write_then_read_round_trips,
    |choice: BackendChoice| {
        let port = port(choice);
        let file = temp_file();
        port.associate(&file, 4).unwrap();
        let parts = vec![
            pattern(1000),
            Vec::new(),
            b"middle".to_vec(),
            pattern(70_000),
        ];
        let total: usize = parts.iter().map(Vec::len).sum();
        let sent = parts.clone();
        let ptrs: Vec<*const u8> = sent.iter().map(|b| b.as_ptr()).collect();
        port.submit(Op::writev_at(&file, sent, 10), 1).unwrap();
        let mut c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (4, 1, OpKind::WriteV));
        assert_eq!(c.result.as_ref().ok(), Some(&total));
        assert!(
            c.buf.is_none(),
            "a vectored op hands back `bufs`, not `buf`"
        );
        let back = c.take_bufs().expect("a writev hands its buffers back");
        assert_eq!(back, parts, "unchanged");
        let back_ptrs: Vec<*const u8> = back.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(back_ptrs, ptrs, "the very allocations come back");
        assert!(c.take_bufs().is_none(), "taken once");

        // The kernel really wrote them, one after the other, at the offset.
        let mut on_disk = vec![0; total];
        file.read_exact_at(&mut on_disk, 10).unwrap();
        assert!(on_disk == parts.concat());

        // Read it back into differently cut buffers, with old contents to replace.
        let mut first = Vec::with_capacity(600);
        first.extend_from_slice(b"stale");
        let caps = [600, 0, 406, 80_000];
        let bufs: Vec<Vec<u8>> = std::iter::once(first)
            .chain(caps[1..].iter().map(|&n| Vec::with_capacity(n)))
            .collect();
        port.submit(Op::readv_at(&file, bufs, 10), 2).unwrap();
        let mut c = get(&port);
        assert_eq!((c.key, c.user_data, c.kind()), (4, 2, OpKind::ReadV));
        assert_eq!(c.result.as_ref().ok(), Some(&total));
        let got = c.take_bufs().expect("a readv hands its buffers back");
        let lens: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(
            lens,
            [600, 0, 406, total - 1006],
            "each buffer filled in turn"
        );
        assert!(got.concat() == parts.concat());
    }
);

backend_test!(
    vectored_read_across_eof_is_short_and_at_eof_is_zero,
    |choice: BackendChoice| {
        let port = port(choice);
        let file = file_with(b"0123456789");
        port.associate(&file, 1).unwrap();
        let bufs = || {
            vec![
                Vec::with_capacity(4),
                Vec::with_capacity(4),
                Vec::with_capacity(4),
            ]
        };

        port.submit(Op::readv_at(&file, bufs(), 3), 1).unwrap();
        let mut c = get(&port);
        assert_eq!(
            c.result.as_ref().ok(),
            Some(&7),
            "a read across EOF returns what exists"
        );
        assert_eq!(
            c.take_bufs().unwrap(),
            [b"3456".to_vec(), b"789".to_vec(), Vec::new()]
        );

        port.submit(Op::readv_at(&file, bufs(), 10), 2).unwrap();
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&0), "a read at EOF is Ok(0)");
        assert!(c.take_bufs().unwrap().iter().all(Vec::is_empty));

        // A failed one still hands its buffers back.
        let wo = write_only_file();
        port.associate(&wo, 2).unwrap();
        port.submit(Op::readv_at(&wo, bufs(), 0), 3).unwrap();
        let mut c = get(&port);
        assert_errno(&c.result, libc::EBADF);
        assert_eq!(c.take_bufs().map(|b| b.len()), Some(3));

        // Other kinds carry no buffers list.
        port.submit(Op::read_at(&file, Vec::with_capacity(4), 0), 4)
            .unwrap();
        assert!(get(&port).take_bufs().is_none());
    }
);

//! The async face taking work done at once: a stream read whose bytes are
//! waiting is ready at its first poll (`net/inline.rs`, epoll), and so is a send
//! with room (`net/stream.rs`, `try_send_now`; on epoll with
//! `RINGPORT_INLINE_SENDS=off`, the port's submit: `rt/op.rs`,
//! `inline_allowed`), with a yield after 16 in a row.

use std::io::{Read, Write};
use std::pin::pin;
use std::thread;
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use ringport::net::TcpStream;
use ringport::BackendChoice;

use crate::common::*;
use crate::rt::{block, join, runtime};

/// Whether a send with room is done at once on `choice`: always on epoll; on
/// io_uring unless `RINGPORT_INLINE_SENDS=off` (a measurement switch) says not.
fn sends_inline(choice: BackendChoice) -> bool {
    choice == BackendChoice::Epoll
        || !matches!(
            std::env::var("RINGPORT_INLINE_SENDS").as_deref(),
            Ok("off" | "0" | "no")
        )
}

/// Waits until `fd` has bytes to read (or 10 s pass).
fn readable(fd: std::os::fd::RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd we own for the call.
    let n = unsafe { libc::poll(&mut p, 1, 10_000) };
    assert_eq!(n, 1, "the bytes never arrived");
}

backend_test!(
    a_read_whose_bytes_are_waiting_is_ready_at_its_first_poll,
    |choice: BackendChoice| {
        // On epoll, stream reads are tried inline before a receive is
        // submitted (`net/inline.rs`): bytes already there come back at the
        // first poll, with no operation and no wake-up — through the
        // owned-buffer read and through `AsyncRead`. (Through the port, the
        // first poll after a submit is always `Pending`: so on io_uring,
        // where the receive goes to the ring, measured cheaper there.)
        use std::future::Future;
        use std::os::fd::AsRawFd;
        use std::task::{Context, Poll, Waker};
        if matches!(
            std::env::var("RINGPORT_INLINE_READS").as_deref(),
            Ok("off" | "0" | "no")
        ) {
            eprintln!("note: RINGPORT_INLINE_READS=off: reads are not tried inline; skipped");
            return;
        }
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let fd = server.as_raw_fd();
        let mut s = block(
            &h,
            async move { TcpStream::from_std(server).expect("from_std") },
        );
        peer.write_all(b"ping").unwrap();
        readable(fd);
        let (first, s_back) = block(&h, async move {
            let first = {
                let mut fut = pin!(s.read(Vec::with_capacity(16)));
                let mut cx = Context::from_waker(Waker::noop());
                match fut.as_mut().poll(&mut cx) {
                    Poll::Ready((r, buf)) => Some((r.map_err(|e| e.to_string()), buf)),
                    Poll::Pending => None,
                }
            };
            (first, s)
        });
        s = s_back;
        let inline = choice == BackendChoice::Epoll;
        if !inline {
            assert!(first.is_none(), "io_uring: the receive goes to the ring");
            // The ping is still there: the dropped read's receive was
            // cancelled or kept for the next read; take it now.
            let (r, buf) = block(&h, async move { s.read(Vec::with_capacity(16)).await });
            assert_eq!(
                (r.map_err(|e| e.to_string()), buf.as_slice()),
                (Ok(4), &b"ping"[..])
            );
            return;
        }
        let (r, buf) = first.expect("the waiting bytes were not ready at the first poll");
        assert_eq!((r, buf.as_slice()), (Ok(4), &b"ping"[..]));
        peer.write_all(b"pong!").unwrap();
        readable(fd);
        let (first, s_back) = block(&h, async move {
            let mut dst = [0u8; 16];
            let first = {
                let mut fut = pin!(AsyncReadExt::read(&mut s, &mut dst));
                let mut cx = Context::from_waker(Waker::noop());
                match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => Some(r.map_err(|e| e.to_string())),
                    Poll::Pending => None,
                }
            };
            (first.map(|r| r.map(|n| dst[..n].to_vec())), s)
        });
        s = s_back;
        assert_eq!(
            first.expect("AsyncRead: not ready at the first poll"),
            Ok(b"pong!".to_vec())
        );
        // With nothing waiting the read waits, and gets the bytes when they come.
        let reader = rt.spawn(async move {
            let (r, buf) = s.read(Vec::with_capacity(16)).await;
            (r.map_err(|e| e.to_string()), buf)
        });
        thread::sleep(Duration::from_millis(20));
        assert!(!reader.is_finished(), "a read returned with nothing sent");
        peer.write_all(b"late").unwrap();
        let (r, buf) = join(&h, reader).expect("the reader");
        assert_eq!((r, buf.as_slice()), (Ok(4), &b"late"[..]));
    }
);

backend_test!(
    a_write_with_room_is_done_at_its_first_poll,
    |choice: BackendChoice| {
        // The stream tries one `send` before it submits (`try_send_now`,
        // both backends); with `RINGPORT_INLINE_SENDS=off` epoll's submit
        // still finishes a send with room inside the call, and the async
        // layer takes it there (`submit_inline`'s rule). Either way the write
        // is ready at its first poll, with no packet and no wake-up. (With
        // `RINGPORT_INLINE_SENDS=off`, io_uring's send goes to the ring, and
        // the first poll is `Pending`.)
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let mut s = block(
            &h,
            async move { TcpStream::from_std(server).expect("from_std") },
        );
        let inline = sends_inline(choice);
        for round in 0..3u8 {
            let msg = vec![b'a' + round; 100];
            let (first, s_back) = block(&h, async move {
                let first = {
                    let mut fut = pin!(s.write(msg));
                    match poll_once(fut.as_mut()) {
                        Some((r, buf)) => Some((r.map_err(|e| e.to_string()), buf.len())),
                        // (Awaited to its end: the bytes must arrive.)
                        None => {
                            let (r, buf) = fut.await;
                            assert_eq!(r.map_err(|e| e.to_string()), Ok(100));
                            assert_eq!(buf.len(), 100);
                            None
                        }
                    }
                };
                (first, s)
            });
            s = s_back;
            if inline {
                assert_eq!(
                    first.expect("a write with room was not done at its first poll"),
                    (Ok(100), 100)
                );
            } else {
                assert!(
                    first.is_none(),
                    "inline sends off: the send goes to the ring"
                );
            }
            let mut got = [0u8; 100];
            peer.read_exact(&mut got).unwrap();
            assert!(got.iter().all(|&b| b == b'a' + round), "the bytes arrive");
        }
        // `AsyncWrite` writes behind: `write` is ready at once on both
        // backends, and the send's end is waited for by the next write or
        // `flush`. A send with room finished inside `write` (both backends),
        // so the flush is ready at its first poll.
        let (flushed, s_back) = block(&h, async move {
            let n = AsyncWriteExt::write(&mut s, b"xyz").await;
            assert_eq!(n.map_err(|e| e.to_string()), Ok(3));
            let first = {
                let mut fut = pin!(AsyncWriteExt::flush(&mut s));
                match poll_once(fut.as_mut()) {
                    Some(r) => Some(r.map_err(|e| e.to_string())),
                    None => {
                        assert_eq!(fut.await.map_err(|e| e.to_string()), Ok(()));
                        None
                    }
                }
            };
            (first, s)
        });
        drop(s_back);
        if inline {
            assert_eq!(
                flushed.expect("AsyncWrite: the flush was not ready at its first poll"),
                Ok(())
            );
        }
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"xyz");
    }
);

/// Polls `fut` once with a waker that does nothing: its output if ready.
fn poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

backend_test!(
    sends_that_always_finish_at_once_still_yield,
    |choice: BackendChoice| {
        // A send with room is ready at once (both backends); after 16 in a
        // row one goes through the port, so a task that only sends still
        // waits now and then and other tasks run.
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let s = block(
            &h,
            async move { TcpStream::from_std(server).expect("from_std") },
        );
        let reader = thread::spawn(move || {
            let mut got = vec![0u8; 40 * 64];
            peer.read_exact(&mut got).unwrap();
            got
        });
        let firsts = block(&h, async move {
            let mut firsts = Vec::new();
            for i in 0..40u8 {
                let mut fut = pin!(s.write(vec![i; 64]));
                let ready = match poll_once(fut.as_mut()) {
                    Some((r, _)) => {
                        assert_eq!(r.map_err(|e| e.to_string()), Ok(64));
                        true
                    }
                    None => {
                        let (r, _) = fut.await;
                        assert_eq!(r.map_err(|e| e.to_string()), Ok(64));
                        false
                    }
                };
                firsts.push(ready);
            }
            firsts
        });
        let got = reader.join().expect("reader");
        assert!(got
            .chunks(64)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        let longest = firsts
            .split(|ready| !ready)
            .map(<[bool]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest <= 16, "{longest} sends in a row never yielded");
        if sends_inline(choice) {
            assert!(
                firsts.iter().filter(|r| **r).count() >= 30,
                "sends with room are ready at once: {firsts:?}"
            );
        }
    }
);

backend_test!(
    owned_writes_after_an_async_write_keep_the_stream_order,
    |choice: BackendChoice| {
        // `AsyncWrite` writes behind: its send may still be in flight (the
        // budget's forced turn, or a full buffer) when the task goes on with
        // an owned `write_all`. That write must not overtake it, inline or not.
        const ROUNDS: usize = 40;
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let reader = thread::spawn(move || {
            let mut got = vec![0u8; ROUNDS * 4];
            peer.read_exact(&mut got).unwrap();
            got
        });
        let task = rt.spawn(async move {
            let mut s = TcpStream::from_std(server).expect("from_std");
            for _ in 0..ROUNDS {
                s.write_all(b"a".to_vec()).await.0.expect("write a");
                s.write_all(b"|".to_vec()).await.0.expect("write |");
                AsyncWriteExt::write_all(&mut s, b"B")
                    .await
                    .expect("write B");
                s.write_all(b"C".to_vec()).await.0.expect("write C");
                AsyncWriteExt::flush(&mut s).await.expect("flush");
            }
            s
        });
        let s = join(&h, task).expect("writer task");
        let got = reader.join().expect("reader");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "a|BC".repeat(ROUNDS),
            "the stream's bytes came out of order"
        );
        drop(s);
    }
);

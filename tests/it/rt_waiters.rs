//! Several waiters on one stream's own operation (session 16's review): two
//! reads behind a receive an abandoned `poll_read` left with the stream, from
//! two tasks and from two futures of one task; an owned write behind a
//! write-behind send while another waiter gives up. Each waiter must be woken
//! when the operation ends, whoever polled it last (the operation's slot kept
//! the last poller's waker alone, and the others slept for ever).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use ringport::net::TcpStream;
use ringport::time::timeout;
use ringport::BackendChoice;

use crate::common::*;
use crate::rt::{block, join, runtime};

/// A stream with a receive of its own in flight: one `AsyncRead` poll
/// abandoned before any data came.
async fn with_a_pending_receive(server: std::net::TcpStream) -> TcpStream {
    let mut s = TcpStream::from_std(server).expect("from_std");
    let mut b = [0u8; 16];
    let r = timeout(
        Duration::from_millis(20),
        AsyncReadExt::read(&mut s, &mut b),
    )
    .await;
    assert!(r.is_err(), "nothing was sent yet");
    s
}

backend_test!(
    two_tasks_reading_behind_a_pending_receive_both_get_their_bytes,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let s = Arc::new(block(&h, with_a_pending_receive(server)));
        let (started, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (s, started, done) = (s.clone(), started.clone(), done.clone());
                rt.spawn(async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let (r, buf) = s.read(Vec::with_capacity(64)).await;
                    done.fetch_add(1, Ordering::SeqCst);
                    r.map(|n| buf[..n].to_vec())
                })
            })
            .collect();
        wait_until("both readers started", || {
            started.load(Ordering::SeqCst) == 2
        });
        // Time for both to wait behind the receive (sooner only hides the bug).
        thread::sleep(Duration::from_millis(100));
        peer.write_all(b"first").unwrap();
        // The second piece only once one reader has the first: the other must
        // be woken by it, not by the first.
        wait_until("one reader finished", || done.load(Ordering::SeqCst) == 1);
        peer.write_all(b"second").unwrap();
        let mut got: Vec<Vec<u8>> = readers
            .into_iter()
            .map(|t| join(&h, t).expect("reader task").expect("read"))
            .collect();
        got.sort();
        assert_eq!(got, [b"first".to_vec(), b"second".to_vec()]);
    }
);

backend_test!(
    two_futures_of_one_task_reading_behind_a_pending_receive_both_finish,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (first_tx, first_rx) = mpsc::channel::<()>();
        let writer = thread::spawn(move || {
            ready_rx.recv().unwrap();
            thread::sleep(Duration::from_millis(100));
            peer.write_all(b"first").unwrap();
            first_rx.recv().unwrap();
            peer.write_all(b"second").unwrap();
            peer
        });
        let mut got = block(&h, async move {
            let s = with_a_pending_receive(server).await;
            // Each read gets a waker of its own from `FuturesUnordered`.
            let mut reads = futures::stream::FuturesUnordered::new();
            reads.push(s.read(Vec::with_capacity(64)));
            reads.push(s.read(Vec::with_capacity(64)));
            let mut got = Vec::new();
            let mut first_tx = Some(first_tx);
            ready_tx.send(()).unwrap();
            while let Some((r, buf)) = timeout(Duration::from_secs(5), reads.next())
                .await
                .expect("a read behind the pending receive was never woken")
            {
                let n = r.expect("read");
                got.push(buf[..n].to_vec());
                if let Some(tx) = first_tx.take() {
                    tx.send(()).unwrap();
                }
            }
            got
        });
        let _peer = writer.join().unwrap();
        got.sort();
        assert_eq!(got, [b"first".to_vec(), b"second".to_vec()]);
    }
);

backend_test!(
    an_owned_write_behind_a_write_behind_send_is_woken_when_another_waiter_gave_up,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        // Write behind until a send is stuck (the peer does not read).
        let (s, sent) = block(&h, async move {
            let mut s = TcpStream::from_std(server).expect("from_std");
            let chunk = vec![7u8; 64 * 1024];
            let mut sent = 0;
            while let Ok(r) = timeout(
                Duration::from_millis(100),
                AsyncWriteExt::write(&mut s, &chunk),
            )
            .await
            {
                sent += r.expect("write");
            }
            (Arc::new(s), sent)
        });
        let started = Arc::new(AtomicUsize::new(0));
        let (s1, st1) = (s.clone(), started.clone());
        let a = rt.spawn(async move {
            st1.fetch_add(1, Ordering::SeqCst);
            s1.write_all(b"A".to_vec()).await.0
        });
        wait_until("A started", || started.load(Ordering::SeqCst) == 1);
        thread::sleep(Duration::from_millis(50));
        // B waits behind the same send, last, then gives up.
        let s2 = s.clone();
        let b = rt.spawn(async move {
            timeout(Duration::from_millis(200), s2.write_all(b"B".to_vec()))
                .await
                .is_err()
        });
        assert!(
            join(&h, b).expect("task B"),
            "B's write should have timed out"
        );
        peer.set_read_timeout(Some(T)).unwrap();
        let reader = thread::spawn(move || {
            let mut total = 0;
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n @ 1..) = peer.read(&mut buf) {
                total += n;
            }
            total
        });
        join(&h, a).expect("task A").expect("A's write");
        drop(s);
        drop(rt);
        let total = reader.join().unwrap();
        assert_eq!(total, sent + 1, "everything written, A's byte last");
    }
);

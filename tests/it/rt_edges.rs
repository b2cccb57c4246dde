//! The async face at its edges (session 12's review): shutdown while a plain
//! thread waits in `block_on`, an aborted task whose future panics when
//! dropped, cancelling a `spawn_blocking` closure that already runs, timers
//! and timeouts of `Duration::MAX`, and a client that resets its connection
//! before the server accepts it; (session 13's) a finished task whose
//! drop panics, and a joiner whose waker panics; and (session 16's) a
//! `spawn_blocking` after shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ringport::rt::Cancelled;
use ringport::time::{sleep, timeout};
use ringport::{BackendChoice, JoinError};

use crate::common::*;
use crate::rt::{block, join, pseudo_random, runtime, wait_idle};

backend_test!(
    shutdown_wakes_a_thread_waiting_in_block_on,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            // Waits on an operation (a timer far beyond the test's bound) and
            // on a stream read that nothing will ever answer.
            let slept = h.block_on(async {
                let t0 = Instant::now();
                sleep(Duration::from_secs(3600)).await;
                t0.elapsed()
            });
            let _ = tx.send(slept);
        });
        thread::sleep(Duration::from_millis(100));
        drop(rt);
        let slept = rx
            .recv_timeout(T)
            .expect("a thread in block_on stayed asleep after the runtime shut down");
        assert!(slept < Duration::from_secs(3600));
        waiter.join().unwrap();
    }
);

backend_test!(
    shutdown_ends_a_read_awaited_in_block_on_with_an_error,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let r = h.block_on(async move {
                let s = ringport::net::TcpStream::connect(addr).await?;
                let (r, _buf) = s.read(Vec::with_capacity(16)).await;
                r
            });
            let _ = tx.send(r);
        });
        let (_peer, _) = l.accept().unwrap(); // connected, never writes
        thread::sleep(Duration::from_millis(100));
        drop(rt);
        let r = rx
            .recv_timeout(T)
            .expect("a read awaited in block_on stayed asleep after the runtime shut down");
        assert!(r.is_err(), "a read ended by shutdown must fail, got {r:?}");
        reader.join().unwrap();
    }
);

/// A value whose drop panics.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("PanicsOnDrop dropped");
    }
}

backend_test!(
    an_aborted_task_whose_drop_panics_still_ends,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let task = rt.spawn(async {
            let _bomb = PanicsOnDrop;
            sleep(Duration::from_secs(3600)).await;
        });
        thread::sleep(Duration::from_millis(50));
        task.abort();
        match join(&h, task) {
            Err(e) => assert!(e.is_cancelled(), "{e}"),
            Ok(()) => panic!("an aborted task reported its output"),
        }
        wait_idle(&h);
        // The worker that dropped it still serves.
        assert_eq!(join(&h, rt.spawn(async { 5 })).unwrap(), 5);
    }
);

backend_test!(
    a_finished_task_whose_drop_panics_reports_the_panic,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let task = rt.spawn(async {
            let _bomb = PanicsOnDrop;
            ringport::yield_now().await;
            1
        });
        match join(&h, task) {
            Err(e) => assert!(e.is_panic(), "{e}"),
            Ok(v) => panic!("the output ({v}) hid the panic of the future's drop"),
        }
        wait_idle(&h);
    }
);

/// A waker that panics when woken: a joiner's, foreign to the runtime.
struct PanickingWaker;

impl std::task::Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("PanickingWaker woken");
    }
}

backend_test!(
    a_joiner_whose_waker_panics_strands_nothing,
    |choice: BackendChoice| {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let rt = runtime(choice);
        let h = rt.handle().clone();
        // U parks its waker, then ends when woken again.
        let (parked_tx, parked_rx) = mpsc::channel::<Waker>();
        let u_ran = Arc::new(AtomicBool::new(false));
        let ran = u_ran.clone();
        let mut first = true;
        let _u = rt.spawn(std::future::poll_fn(move |cx| {
            if std::mem::take(&mut first) {
                parked_tx.send(cx.waker().clone()).unwrap();
                Poll::Pending
            } else {
                ran.store(true, Ordering::SeqCst);
                Poll::Ready(())
            }
        }));
        let u_waker = parked_rx.recv_timeout(T).unwrap();
        let gate = Arc::new(AtomicBool::new(false));
        let g = gate.clone();
        let mut task = rt.spawn(async move {
            while !g.load(Ordering::SeqCst) {
                ringport::yield_now().await;
            }
            // Woken from this worker: U waits in its next slot while this
            // task finishes and wakes its joiner.
            u_waker.wake();
            7
        });
        let w = Waker::from(Arc::new(PanickingWaker));
        let mut cx = Context::from_waker(&w);
        assert!(std::pin::Pin::new(&mut task).poll(&mut cx).is_pending());
        gate.store(true, Ordering::SeqCst);
        // The finished task leaves the registry, and U runs, with nothing
        // else happening on the runtime.
        wait_idle(&h);
        assert!(u_ran.load(Ordering::SeqCst));
        assert!(task.is_finished());
        assert_eq!(join(&h, task).unwrap(), 7);
    }
);

backend_test!(
    cancelling_a_running_blocking_closure_gives_its_output,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let job = rt.spawn_blocking(move || {
            s.store(true, Ordering::Release);
            thread::sleep(Duration::from_millis(100));
            42
        });
        let deadline = Instant::now() + T;
        while !started.load(Ordering::Acquire) {
            assert!(
                Instant::now() < deadline,
                "the blocking closure never started"
            );
            thread::sleep(Duration::from_millis(1));
        }
        match block(&h, job.cancel()) {
            Cancelled::Finished(v) => assert_eq!(v, 42),
            other => panic!("a closure that ran to its end was reported {other:?}"),
        }

        // One that has not started yet is cancelled, and never runs.
        let gate = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(AtomicBool::new(false));
        let hold: Vec<_> = (0..64)
            .map(|_| {
                let g = gate.clone();
                rt.spawn_blocking(move || {
                    while !g.load(Ordering::Acquire) {
                        thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        let r = ran.clone();
        let queued = rt.spawn_blocking(move || r.store(true, Ordering::Release));
        queued.abort();
        gate.store(true, Ordering::Release);
        for j in hold {
            join(&h, j).unwrap();
        }
        // Either the abort won (the closure never ran) or the closure had
        // started first (then it ran, and its output is reported).
        match block(&h, queued) {
            Err(JoinError::Cancelled) => {
                thread::sleep(Duration::from_millis(20));
                assert!(!ran.load(Ordering::Acquire), "a cancelled closure ran");
            }
            Ok(()) => assert!(ran.load(Ordering::Acquire)),
            Err(e) => panic!("{e}"),
        }
    }
);

backend_test!(
    a_timeout_of_duration_max_never_elapses,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let r = block(&h, async {
            let t0 = Instant::now();
            let r = timeout(Duration::MAX, sleep(Duration::from_millis(30))).await;
            (r, t0.elapsed())
        });
        assert!(
            r.0.is_ok(),
            "timeout(Duration::MAX) elapsed after {:?}",
            r.1
        );
        assert!(
            r.1 >= Duration::from_millis(30),
            "the sleep ended early: {:?}",
            r.1
        );

        // A sleep of Duration::MAX waits (and is cancelled cleanly).
        let r = block(&h, async {
            timeout(Duration::from_millis(30), sleep(Duration::MAX)).await
        });
        assert!(r.is_err(), "sleep(Duration::MAX) ended");
        // An interval of Duration::MAX ticks once at once, then waits.
        let r = block(&h, async {
            let mut i = ringport::time::interval(Duration::MAX);
            i.tick().await;
            timeout(Duration::from_millis(30), i.tick()).await
        });
        assert!(r.is_err(), "interval(Duration::MAX) ticked twice");
        wait_idle(&h);
    }
);

backend_test!(
    a_port_wait_of_duration_max_is_a_wait_without_limit,
    |choice: BackendChoice| {
        let port = ringport::CompletionPort::builder()
            .backend(choice)
            .build()
            .unwrap();
        port.post(7, 1, 0).unwrap();
        let c = port.get(Some(Duration::MAX)).unwrap();
        assert_eq!((c.key, c.user_data), (7, 1));
        // A timer of Duration::MAX waits (until cancelled).
        let id = port
            .submit(ringport::Op::timeout(Duration::MAX), 3)
            .unwrap();
        assert!(port.get(Some(Duration::from_millis(30))).is_err());
        port.cancel(id).unwrap();
        let c = port.get(Some(T)).unwrap();
        assert!(c.is_cancelled(), "{c:?}");
    }
);

backend_test!(
    a_connection_reset_before_accept_is_skipped,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let peers = block(&h, async {
            let l = ringport::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let gone = std::net::TcpStream::connect(addr).unwrap();
            socket2::SockRef::from(&gone)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(gone); // RST, while still in the listen backlog
            thread::sleep(Duration::from_millis(20));
            let good = std::net::TcpStream::connect(addr).unwrap();
            let (_s, peer) = l.accept().await.expect("accept after a reset connection");
            (peer, good.local_addr().unwrap())
        });
        assert_eq!(peers.0, peers.1, "accept returned the reset connection");
    }
);

/// A connected pair: a std stream with small buffers for the runtime's side
/// (so sends come back short), and the peer, read slowly by a thread that
/// returns everything it read until end-of-stream.
fn slow_pair() -> (std::net::TcpStream, thread::JoinHandle<Vec<u8>>) {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut b, _) = l.accept().unwrap();
    socket2::SockRef::from(&b)
        .set_recv_buffer_size(8 * 1024)
        .unwrap();
    socket2::SockRef::from(&a)
        .set_send_buffer_size(16 * 1024)
        .unwrap();
    let reader = thread::spawn(move || {
        b.set_read_timeout(Some(T)).unwrap();
        thread::sleep(Duration::from_millis(100));
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 3000];
        loop {
            let n = b.read(&mut chunk).expect("the peer's read timed out");
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&chunk[..n]);
            thread::sleep(Duration::from_micros(100));
        }
    });
    (a, reader)
}

backend_test!(
    an_owned_write_after_async_write_keeps_stream_order,
    |choice: BackendChoice| {
        use futures::io::AsyncWriteExt;
        const NA: usize = 512 * 1024;
        const NB: usize = 64 * 1024;
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (a, reader) = slow_pair();
        block(&h, async move {
            let mut s = ringport::net::TcpStream::from_std(a).unwrap();
            // Written behind (the last chunk's send still in flight, short).
            AsyncWriteExt::write_all(&mut s, &vec![b'A'; NA])
                .await
                .unwrap();
            let (r, _) = s.write_all(vec![b'B'; NB]).await;
            r.unwrap();
            s.close().await.unwrap();
        });
        let all = reader.join().unwrap();
        assert_eq!(all.len(), NA + NB, "bytes lost or added");
        let first_b = all.iter().position(|&c| c == b'B');
        assert_eq!(
            first_b,
            Some(NA),
            "an owned write overtook the AsyncWrite bytes before it"
        );
    }
);

backend_test!(
    dropping_a_stream_after_async_write_sends_every_byte,
    |choice: BackendChoice| {
        use futures::io::AsyncWriteExt;
        const N: usize = 512 * 1024;
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (a, reader) = slow_pair();
        let data = pseudo_random(N, 12);
        let sent = data.clone();
        block(&h, async move {
            let mut s = ringport::net::TcpStream::from_std(a).unwrap();
            AsyncWriteExt::write_all(&mut s, &sent).await.unwrap();
            drop(s); // no flush: what poll_write reported written must still go
        });
        let all = reader.join().unwrap();
        assert_eq!(all.len(), N, "a dropped stream lost part of its last write");
        assert!(all == data, "the bytes arrived changed");
        wait_idle(&h);
    }
);

backend_test!(
    two_tasks_writing_behind_one_async_write_both_finish,
    |choice: BackendChoice| {
        use futures::io::AsyncWriteExt;
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (a, reader) = slow_pair();
        let total = block(&h, async move {
            let mut s = ringport::net::TcpStream::from_std(a).unwrap();
            // A write-behind send in flight (the socket is full).
            AsyncWriteExt::write_all(&mut s, &vec![b'A'; 256 * 1024])
                .await
                .unwrap();
            let s = Arc::new(s);
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    let s = s.clone();
                    ringport::spawn(async move { s.write_all(vec![b'B'; 10]).await.0 })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            drop(s);
            256 * 1024 + 20
        });
        let all = reader.join().unwrap();
        assert_eq!(
            all.len(),
            total,
            "a write behind the AsyncWrite send was lost"
        );
    }
);

/// A waker that does nothing; its clones are counted by its `Arc`.
struct Quiet;

impl std::task::Wake for Quiet {
    fn wake(self: Arc<Self>) {}
}

backend_test!(
    a_future_polled_while_it_waits_for_room_registers_once,
    |choice: BackendChoice| {
        use std::future::Future;
        use std::task::{Context, Waker};
        // One operation in flight at most: the timer holds it.
        let rt = ringport::Runtime::builder()
            .backend(choice)
            .max_in_flight(1)
            .build()
            .expect("build a runtime");
        let h = rt.handle().clone();
        let holder = rt.spawn(async { sleep(Duration::from_secs(3600)).await });
        while h.ops_in_flight() == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        let clones = block(&h, async move {
            let quiet = Arc::new(Quiet);
            let w = Waker::from(quiet.clone());
            let mut cx = Context::from_waker(&w);
            let mut waiting = Box::pin(sleep(Duration::from_millis(1)));
            // Polled again and again while there is no room (a select! on a
            // busy channel does this).
            for _ in 0..10_000 {
                assert!(waiting.as_mut().poll(&mut cx).is_pending());
            }
            let held = Arc::strong_count(&quiet) - 2; // less `quiet` and `w`
            drop(waiting);
            held
        });
        assert!(clones <= 2, "{clones} clones of one waker held for room");
        holder.abort();
        assert!(join(&h, holder).unwrap_err().is_cancelled());
        wait_idle(&h);
    }
);

backend_test!(
    spawn_blocking_after_shutdown_is_cancelled_like_spawn,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        drop(rt);
        let r = futures::executor::block_on(h.spawn(async { 1 }));
        assert!(matches!(r, Err(JoinError::Cancelled)), "spawn: {r:?}");
        // It said the closure had panicked.
        let r = futures::executor::block_on(h.spawn_blocking(|| 1));
        assert!(
            matches!(r, Err(JoinError::Cancelled)),
            "spawn_blocking: {r:?}"
        );
    }
);

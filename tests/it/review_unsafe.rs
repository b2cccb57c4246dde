//! Tests from the unsafe-code review (session 18): each walks a path whose
//! soundness rests on an `unsafe` block's argument — a buffer's length set
//! from a kernel count, memory handed to the kernel outliving its port, a
//! task's future dropped exactly once — so that memcheck (epoll) and the
//! assertions (both backends) check the argument at run time.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ringport::net::TcpStream;
use ringport::{BackendChoice, Op};

use crate::common::*;
use crate::rt::{block, join, runtime, wait_idle};

/// Waits until `fd` has bytes to read (or `T` passes).
fn readable(fd: std::os::fd::RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd we own for the call.
    let n = unsafe { libc::poll(&mut p, 1, T.as_millis() as i32) };
    assert_eq!(n, 1, "the bytes never arrived");
}

backend_test!(
    a_stream_read_into_a_vec_with_contents_holds_exactly_the_bytes_read,
    |choice: BackendChoice| {
        // The read's buffer already holds bytes and has spare capacity: the
        // result holds only what was read, from its start (epoll: the inline
        // `recv` into the spare capacity, `net/inline.rs`; io_uring: the
        // queued receive, `Completion::plain`'s `set_len`).
        use std::os::fd::AsRawFd;
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let fd = server.as_raw_fd();
        let s = block(
            &h,
            async move { TcpStream::from_std(server).expect("from_std") },
        );
        peer.write_all(b"hello").unwrap();
        readable(fd);
        let (r, buf, s) = block(&h, async move {
            let mut buf = Vec::with_capacity(64);
            buf.extend_from_slice(b"old contents");
            let (r, buf) = s.read(buf).await;
            (r.map_err(|e| e.to_string()), buf, s)
        });
        assert_eq!(r, Ok(5));
        assert_eq!(&buf[..], b"hello");
        // The same with the bytes not there yet (the queued receive on both).
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            rx.recv().unwrap();
            peer.write_all(b"world!").unwrap();
            peer
        });
        let (r, buf, s) = block(&h, async move {
            let mut buf = vec![0xAA; 7];
            buf.reserve(57);
            let read = s.read(buf);
            tx.send(()).unwrap();
            let (r, buf) = read.await;
            (r.map_err(|e| e.to_string()), buf, s)
        });
        let _peer = writer.join().unwrap();
        let n = r.expect("the second read");
        assert!((1..=6).contains(&n), "{n}");
        assert_eq!(&buf[..], &b"world!"[..n]);
        drop(s);
        wait_idle(&h);
    }
);

backend_test!(
    a_vectored_read_fills_each_buffer_to_its_capacity_in_order,
    |choice: BackendChoice| {
        // `Completion::from_raw` spreads a readv's count over the buffers by
        // their capacities (`set_len` on each): one of no capacity, one that
        // held bytes already, and a last one only partly filled.
        use std::os::unix::fs::FileExt;
        let port = port(choice);
        let file = temp_file();
        file.write_all_at(b"0123456789", 0).unwrap();
        port.associate(&file, 1).unwrap();
        let mut held = Vec::with_capacity(4);
        held.extend_from_slice(b"zz");
        let bufs = vec![
            Vec::with_capacity(3),
            Vec::new(),
            held,
            Vec::with_capacity(16),
        ];
        port.submit(Op::readv_at(&file, bufs, 0), 0).unwrap();
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&10));
        let bufs = c.take_bufs().expect("the buffers come back");
        let got: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        assert_eq!(got, [&b"012"[..], b"", b"3456", b"789"]);
    }
);

backend_test!(
    a_fixed_lease_in_flight_when_its_port_drops_goes_back_to_its_set,
    |choice: BackendChoice| {
        // The lease is held by a receive waiting for data when the port is
        // dropped: it goes back to the set only once the kernel is done with
        // it, and the set's memory stays valid after the port (`fixed.rs`).
        let port = port(choice);
        let bufs = port.register_buffers(2, 4096).unwrap();
        let (mut peer, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        let lease = bufs.lease().unwrap();
        port.submit(Op::read_fixed(&server, lease, 0), 7).unwrap();
        assert_eq!(bufs.available(), 1, "the receive holds its lease");
        drop(port);
        wait_until("the receive's lease is back", || bufs.available() == 2);
        // Data arriving now goes nowhere near the set.
        peer.write_all(b"late").unwrap();
        let mut a = bufs.lease().unwrap();
        let mut b = bufs.lease().unwrap();
        assert_eq!(a.extend_from_slice(&[1; 4096]), 4096);
        assert_eq!(
            b.extend_from_slice(&[2; 5000]),
            4096,
            "capped at the capacity"
        );
        a.set_len(1 << 20);
        assert_eq!(a.len(), 4096, "set_len is capped at the capacity");
        assert!(a.iter().all(|&x| x == 1) && b.iter().all(|&x| x == 2));
        drop(bufs);
        // The leases keep the set (and its memory) alive.
        assert_eq!(a[4095], 1);
        drop((a, b));
    }
);

backend_test!(
    a_multishot_receive_armed_when_its_port_drops_leaves_its_leases_valid,
    |choice: BackendChoice| {
        // A lease taken from a receive that is still armed, then the port and
        // the pool handle dropped: the lease's bytes stay readable, and the
        // pool's memory goes only with the last lease (`provided.rs`).
        let port = port(choice);
        let pool = port.buffer_pool(4, 64).unwrap();
        let (mut peer, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        port.submit(Op::recv_multishot(&server, &pool), 9).unwrap();
        peer.write_all(b"first").unwrap();
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&5));
        assert!(c.more(), "still armed");
        let lease = c.take_pooled().expect("a lease");
        drop(c);
        assert_eq!(pool.available(), 3);
        drop(port);
        peer.write_all(b"after the port").unwrap();
        drop(pool);
        assert_eq!(&lease[..], b"first");
        assert_eq!(lease.to_vec(), b"first");
        drop(lease);
    }
);

/// A future that stays pending, keeps the last waker it was given, and on
/// drop wakes its own task (a drop that wakes is ordinary: a channel sender
/// notifying its receiver, say) and counts the drop.
struct WakesInDrop {
    waker: Arc<Mutex<Option<Waker>>>,
    drops: Arc<AtomicUsize>,
}

impl Future for WakesInDrop {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for WakesInDrop {
    fn drop(&mut self) {
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

backend_test!(
    a_future_that_wakes_its_task_when_dropped_is_dropped_once,
    |choice: BackendChoice| {
        // The future is dropped in place by whoever holds the task's
        // exclusive access (`rt/task.rs`): an abort's run, or shutdown.
        // Its drop's wake must find the task done and schedule nothing, and
        // a waker kept outside must outlive the future harmlessly.
        let drops = Arc::new(AtomicUsize::new(0));
        let kept = Arc::new(Mutex::new(None::<Waker>));
        {
            let rt = runtime(choice);
            let h = rt.handle().clone();
            // Aborted while pending.
            let waker = Arc::new(Mutex::new(None));
            let t = h.spawn(WakesInDrop {
                waker: waker.clone(),
                drops: drops.clone(),
            });
            wait_until("the task was polled", || waker.lock().unwrap().is_some());
            *kept.lock().unwrap() = waker.lock().unwrap().clone();
            t.abort();
            let r = join(&h, t);
            assert!(matches!(r, Err(e) if e.is_cancelled()));
            assert_eq!(drops.load(Ordering::SeqCst), 1);
            // Left pending at shutdown (detached, and one still joined).
            for _ in 0..8 {
                drop(h.spawn(WakesInDrop {
                    waker: Arc::new(Mutex::new(None)),
                    drops: drops.clone(),
                }));
            }
            let last = h.spawn(WakesInDrop {
                waker: Arc::new(Mutex::new(None)),
                drops: drops.clone(),
            });
            std::thread::sleep(Duration::from_millis(20));
            drop(rt);
            let r = futures::executor::block_on(last);
            assert!(matches!(r, Err(e) if e.is_cancelled()));
        }
        assert_eq!(drops.load(Ordering::SeqCst), 10, "each future dropped once");
        // A waker of a task long gone: waking it does nothing.
        let w = kept.lock().unwrap().take();
        if let Some(w) = w {
            w.wake();
        }
    }
);

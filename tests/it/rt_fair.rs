//! Fairness between work the port keeps queued and work waiting on the
//! kernel: a task that wakes itself forever keeps the port's queue from ever
//! draining, yet an operation waiting on the kernel still completes
//! (`sched::POLL_EVERY`: a thread that keeps taking queued completions while
//! nobody polls looks at the backend now and then).

use std::future::poll_fn;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use ringport::net::TcpStream;
use ringport::{BackendChoice, Runtime};

use crate::common::*;
use crate::rt::{block, join};

/// Spins of the busy task, at most: far more than a look every 61 dequeues
/// needs, far fewer than would take long.
const SPINS: u64 = 200_000;

backend_test!(
    a_read_completes_while_a_busy_task_keeps_the_queue_full,
    |choice: BackendChoice| {
        // One thread, so nobody else polls while it runs the busy task.
        let rt = Runtime::builder()
            .backend(choice)
            .threads(1)
            .concurrency(1)
            .build()
            .expect("a runtime");
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let s = block(
            &h,
            async move { TcpStream::from_std(server).expect("from_std") },
        );
        let spins = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        // The reader: its receive waits on the kernel (nothing is sent yet).
        let (sp, dn) = (spins.clone(), done.clone());
        let reader = rt.spawn(async move {
            let (r, buf) = s.read(Vec::with_capacity(16)).await;
            dn.store(true, Ordering::SeqCst);
            (r.map_err(|e| e.to_string()), buf, sp.load(Ordering::SeqCst))
        });
        // The busy task: wakes itself at every poll, so its packet is always
        // queued, until the reader is done or SPINS ran out.
        let (sp, dn) = (spins.clone(), done.clone());
        let busy = rt.spawn(poll_fn(move |cx| {
            if dn.load(Ordering::SeqCst) || sp.fetch_add(1, Ordering::SeqCst) >= SPINS {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        wait_until("the busy task spins", || {
            spins.load(Ordering::SeqCst) > 1_000
        });
        let at_send = spins.load(Ordering::SeqCst);
        peer.write_all(b"hello").unwrap();
        let (r, buf, at_read) = join(&h, reader).expect("the reader");
        assert_eq!((r, buf.as_slice()), (Ok(5), &b"hello"[..]));
        join(&h, busy).expect("the busy task");
        assert!(
            at_read < SPINS,
            "the read completed only when the busy task stopped ({at_send} spins at the send, {at_read} at the read)"
        );
    }
);

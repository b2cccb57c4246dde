//! A task woken into a worker's next slot (the task a worker woke while it
//! handled a packet, run when that handler returns) must not wait there
//! behind a handler that does not return soon: it is posted to the port for
//! another worker when the handler calls `ringport::blocking`, when it stalls
//! (the stall detector's monitor), and when it unwinds. Found by the session
//! 17 review; each test below hung until its wait gave up before the fix.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};

use ringport::BackendChoice;

use crate::common::*;
use crate::rt::{join, runtime};

/// `rx`, which sets `parked` the first time it is polled and not ready: the
/// task awaiting it is then surely waiting for a wake.
struct Parked<F> {
    inner: F,
    parked: Arc<AtomicBool>,
}

impl<F: Future + Unpin> Future for Parked<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = Pin::new(&mut self.inner).poll(cx);
        if r.is_pending() {
            self.parked.store(true, Ordering::SeqCst);
        }
        r
    }
}

/// Spawns task B, which waits on a oneshot, then sends on `done`; returns
/// the oneshot's sender once B is parked on it, and B's handle.
fn parked_task(
    rt: &ringport::Runtime,
    done: mpsc::Sender<()>,
) -> (
    futures::channel::oneshot::Sender<()>,
    ringport::JoinHandle<()>,
) {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    let parked = Arc::new(AtomicBool::new(false));
    let wait = Parked {
        inner: rx,
        parked: parked.clone(),
    };
    let b = rt.spawn(async move {
        wait.await.unwrap();
        // Fails if the waiter gave up.
        let _ = done.send(());
    });
    wait_until("task B waits", || parked.load(Ordering::SeqCst));
    (tx, b)
}

// A wakes B (B goes to A's worker's next slot), then waits for B in
// `ringport::blocking`: B must run on another worker meanwhile.
backend_test!(
    a_blocking_wait_for_a_task_just_woken_does_not_deadlock,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (done_tx, done_rx) = mpsc::channel();
        let (tx, b) = parked_task(&rt, done_tx);
        let a = rt.spawn(async move {
            tx.send(()).unwrap();
            ringport::blocking(|| done_rx.recv_timeout(T))
        });
        let r = join(&h, a).expect("task A");
        assert!(
            r.is_ok(),
            "A's blocking wait for B ended {r:?}: B sat in A's next slot"
        );
        join(&h, b).expect("task B");
    }
);

// The same, with A blocking its worker without saying so (the stall
// detector's case): the monitor posts B.
backend_test!(
    a_stalled_wait_for_a_task_just_woken_does_not_deadlock,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (done_tx, done_rx) = mpsc::channel();
        let (tx, b) = parked_task(&rt, done_tx);
        let a = rt.spawn(async move {
            tx.send(()).unwrap();
            done_rx.recv_timeout(T)
        });
        let r = join(&h, a).expect("task A");
        assert!(
            r.is_ok(),
            "A's stalled wait for B ended {r:?}: B sat in A's next slot"
        );
        join(&h, b).expect("task B");
    }
);

/// A value whose drop panics.
struct PanicOnDrop;
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("PanicOnDrop dropped (on purpose)");
    }
}

// A detached task (its handle dropped) wakes B, then ends with an output
// whose drop panics. The panic used to unwind out of the worker's handler,
// past the next slot, leaving B there for good.
backend_test!(
    a_detached_tasks_output_that_panics_on_drop_strands_no_task,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (done_tx, done_rx) = mpsc::channel();
        let (tx, b) = parked_task(&rt, done_tx);
        let (go_tx, go_rx) = futures::channel::oneshot::channel::<()>();
        drop(rt.spawn(async move {
            go_rx.await.unwrap();
            tx.send(()).unwrap();
            PanicOnDrop
        }));
        go_tx.send(()).unwrap();
        join(&h, b).expect("task B");
        done_rx.recv_timeout(T).expect("B ran");
        // The runtime still works.
        let h2 = h.clone();
        assert_eq!(
            crate::rt::block(&h, async move { h2.spawn(async { 3 }).await }).unwrap(),
            3
        );
    }
);

// A finished task's output is dropped once nobody can take it: when its
// handle is dropped after it finished, or at once when it finishes after
// its handle was dropped.
backend_test!(
    a_detached_tasks_output_is_dropped,
    |choice: BackendChoice| {
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let rt = runtime(choice);
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let d = dropped.clone();
        let early = rt.spawn(async move { Count(d) });
        wait_until("the task finished", || early.is_finished());
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "dropped before its handle"
        );
        drop(early);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "kept after its handle was dropped"
        );
        let (go_tx, go_rx) = futures::channel::oneshot::channel::<()>();
        let d = dropped.clone();
        drop(rt.spawn(async move {
            go_rx.await.unwrap();
            Count(d)
        }));
        go_tx.send(()).unwrap();
        wait_until("the detached output dropped", || {
            dropped.load(Ordering::SeqCst) == 2
        });
    }
);

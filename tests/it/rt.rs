//! The async face's runtime: `block_on` (from any plain thread), `spawn` and
//! `JoinHandle` (abort, detach, panics), `spawn_blocking`, the context rules
//! outside a runtime. The timers' tests are in `rt_time.rs`.
//!
//! The helpers here (`runtime`, `block`, `wait_idle`, ...) are shared with
//! `rt_io.rs` and `rt_time.rs`. `block` runs a future with `Handle::block_on` on a fresh plain
//! thread and gives up after `T`: the bound uses no runtime timer (a broken timer
//! must fail a test, not hang it) and leaves no operation of its own in flight, so
//! `ops_in_flight()` counts only what the test started.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ringport::time::sleep;
use ringport::{BackendChoice, Handle, JoinError, JoinHandle, Runtime};

use crate::common::*;

/// A runtime forced to `choice`, with the defaults otherwise.
pub(crate) fn runtime(choice: BackendChoice) -> Runtime {
    Runtime::builder()
        .backend(choice)
        .build()
        .expect("build a runtime on a backend that was just built")
}

/// Runs `fut` with `h.block_on` on a fresh plain thread; fails (not hangs) after
/// `T`. A panic inside `fut` is re-raised here.
#[track_caller]
pub(crate) fn block<F>(h: &Handle, fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let h = h.clone();
    let (tx, rx) = mpsc::channel();
    let th = thread::spawn(move || {
        let _ = tx.send(h.block_on(fut));
    });
    match rx.recv_timeout(T) {
        Ok(v) => {
            let _ = th.join();
            v
        }
        Err(RecvTimeoutError::Timeout) => panic!("block_on did not finish within {T:?}"),
        Err(RecvTimeoutError::Disconnected) => match th.join() {
            Err(p) => resume_unwind(p),
            Ok(()) => unreachable!("the block_on thread ended without sending"),
        },
    }
}

/// Awaits a task's outcome (from a plain thread), failing after `T`.
#[track_caller]
pub(crate) fn join<R: Send + 'static>(h: &Handle, task: JoinHandle<R>) -> Result<R, JoinError> {
    block(h, task)
}

/// Waits (polling from outside the runtime) until no operation is in flight and
/// no task is alive; fails after `T` with the counts.
#[track_caller]
pub(crate) fn wait_idle(h: &Handle) {
    let deadline = Instant::now() + T;
    while h.ops_in_flight() != 0 || h.live_tasks() != 0 {
        assert!(
            Instant::now() < deadline,
            "after {T:?}: {} operations still in flight, {} tasks alive",
            h.ops_in_flight(),
            h.live_tasks()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until exactly `n` operations are in flight; fails after `T`.
#[track_caller]
pub(crate) fn wait_ops(h: &Handle, n: usize) {
    let deadline = Instant::now() + T;
    while h.ops_in_flight() != n {
        assert!(
            Instant::now() < deadline,
            "after {T:?}: {} operations in flight, expected {n}",
            h.ops_in_flight()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until this process has exactly `n` descriptors open (exclusive tests
/// only); fails after `T` with the count.
#[track_caller]
pub(crate) fn wait_fds(n: usize, what: &str) {
    let deadline = Instant::now() + T;
    while fd_count() != n {
        assert!(
            Instant::now() < deadline,
            "after {T:?}: {} descriptors open, expected {n}: {what}",
            fd_count()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// A panic payload's message.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string payload)".into())
}

/// A small deterministic generator (xorshift64*), for payloads and sizes.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `len` pseudo-random bytes.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| (r.next_u64() >> 56) as u8).collect()
}

/// Sets a flag when dropped.
pub(crate) struct SetOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn boom(k: usize) -> usize {
    panic!("task {k} panics on purpose")
}

backend_test!(
    block_on_works_from_a_plain_thread,
    |choice: BackendChoice| {
        let rt = Arc::new(runtime(choice));
        let want = match choice {
            BackendChoice::Epoll => "epoll",
            _ => "io_uring",
        };
        assert_eq!(rt.handle().backend().to_string(), want);

        // Runtime::block_on, from a thread the runtime did not make.
        let (tx, rx) = mpsc::channel();
        let r = rt.clone();
        thread::spawn(move || {
            let out = r.block_on(async {
                let inside = Handle::current().map(|h| h.backend().to_string());
                let task = ringport::spawn(async { 6 * 7 });
                let v = task.await.map_err(|e| e.to_string());
                (inside.map_err(|e| e.to_string()), v)
            });
            // The context ends with block_on.
            let after = Handle::try_current().is_none();
            let _ = tx.send((out, after));
        });
        let ((inside, v), after) = rx
            .recv_timeout(T)
            .expect("Runtime::block_on on a plain thread did not return");
        assert_eq!(inside.as_deref(), Ok(want));
        assert_eq!(v, Ok(42));
        assert!(after, "the runtime context outlived block_on");

        // Handle::block_on, nested spawns and a timer, from another plain thread.
        let sum = block(rt.handle(), async {
            let tasks: Vec<_> = (0..100u64)
                .map(|i| {
                    ringport::spawn(async move {
                        let inner = ringport::spawn(async move { i * 2 });
                        sleep(Duration::from_millis(1)).await;
                        inner.await.expect("inner task") + 1
                    })
                })
                .collect();
            let mut sum = 0;
            for t in tasks {
                sum += t.await.expect("task");
            }
            sum
        });
        assert_eq!(sum, (0..100u64).map(|i| i * 2 + 1).sum::<u64>());
        wait_idle(rt.handle());
    }
);

backend_test!(
    outside_a_runtime_spawn_panics_and_current_is_an_error,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let r = thread::spawn(move || {
            // A thread that has been inside block_on is outside again afterwards.
            h.block_on(async { assert!(Handle::try_current().is_some()) });

            assert!(Handle::try_current().is_none());
            let e = Handle::current().expect_err("Handle::current outside a runtime");
            assert!(
                e.to_string().contains("no ringport runtime"),
                "unclear error: {e}"
            );

            let p = catch_unwind(|| drop(ringport::spawn(async {})))
                .expect_err("ringport::spawn outside a runtime must panic");
            let msg = panic_message(&*p);
            assert!(
                msg.contains("ringport::spawn") && msg.contains("outside a ringport runtime"),
                "unclear panic message: {msg}"
            );

            let p = catch_unwind(|| drop(ringport::spawn_blocking(|| 1)))
                .expect_err("ringport::spawn_blocking outside a runtime must panic");
            let msg = panic_message(&*p);
            assert!(msg.contains("outside a ringport runtime"), "unclear: {msg}");

            let p = catch_unwind(|| drop(sleep(Duration::from_millis(1))))
                .expect_err("time::sleep outside a runtime must panic");
            let msg = panic_message(&*p);
            assert!(msg.contains("outside a ringport runtime"), "unclear: {msg}");
        })
        .join();
        if let Err(p) = r {
            resume_unwind(p);
        }
    }
);

backend_test!(
    block_on_on_a_worker_thread_panics_clearly,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let inner = h.clone();
        let task = rt.spawn(async move { inner.block_on(async { 1 }) });
        match join(&h, task) {
            Err(JoinError::Panic(p)) => {
                let msg = panic_message(&*p);
                assert!(
                    msg.contains("worker thread"),
                    "unclear panic message: {msg}"
                );
            }
            other => panic!("block_on on a worker should panic the task, got {other:?}"),
        }
        // The worker survived it.
        assert_eq!(join(&h, rt.spawn(async { 5 })).expect("task"), 5);
        wait_idle(&h);
    }
);

backend_test!(spawn_blocking_returns_its_value, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    block(&h, async {
        let (name, v) =
            ringport::spawn_blocking(|| (thread::current().name().map(String::from), 42))
                .await
                .expect("spawn_blocking");
        assert_eq!(v, 42);
        assert_eq!(name.as_deref(), Some("ringport-blocking"));

        // Many at once, each sleeping (blocking) a little.
        let jobs: Vec<_> = (0..64u64)
            .map(|i| {
                ringport::spawn_blocking(move || {
                    thread::sleep(Duration::from_millis(1));
                    i * i
                })
            })
            .collect();
        for (i, j) in jobs.into_iter().enumerate() {
            assert_eq!(j.await.expect("blocking job"), (i * i) as u64);
        }

        // A panicking closure gives JoinError::Panic with its message.
        let e = ringport::spawn_blocking(|| -> u32 { panic!("blocking job panics on purpose") })
            .await
            .expect_err("a panicking closure");
        assert!(e.is_panic());
        assert!(
            e.to_string().contains("blocking job panics on purpose"),
            "{e}"
        );
    });
    // Runtime::spawn_blocking from outside, too.
    let j = rt.spawn_blocking(|| "from outside");
    assert_eq!(join(&h, j).expect("job"), "from outside");
    wait_idle(&h);
});

backend_test!(
    a_panicking_task_gives_join_error_and_the_worker_survives,
    |choice: BackendChoice| {
        // One worker: if a panic killed it, nothing below could run.
        let rt = Runtime::builder()
            .backend(choice)
            .threads(1)
            .build()
            .expect("build a runtime");
        let h = rt.handle().clone();
        for k in 0..10 {
            match join(&h, rt.spawn(async move { boom(k) })) {
                Err(JoinError::Panic(p)) => {
                    let msg = panic_message(&*p);
                    assert_eq!(msg, format!("task {k} panics on purpose"));
                }
                other => panic!("task {k}: expected a panic, got {other:?}"),
            }
        }
        // The same error through Display and is_panic.
        let e = join(&h, rt.spawn(async { boom(99) })).expect_err("panics");
        assert!(e.is_panic() && !e.is_cancelled());
        assert!(e.to_string().contains("task 99 panics on purpose"), "{e}");

        // 100 more tasks run on the same worker, each awaiting something.
        let total = block(&h, async {
            let tasks: Vec<_> = (0..100u64)
                .map(|i| {
                    ringport::spawn(async move {
                        ringport::yield_now().await;
                        sleep(Duration::from_micros(100)).await;
                        i * 3
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("task after the panics");
            }
            total
        });
        assert_eq!(total, (0..100u64).map(|i| i * 3).sum::<u64>());
        wait_idle(&h);
    }
);

backend_test!(
    abort_and_detach_follow_the_join_handle_rules,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();

        // A finished task keeps its output through a late abort.
        let t = rt.spawn(async { 5 });
        wait_until("the task finishes", || t.is_finished());
        t.abort();
        assert_eq!(join(&h, t).expect("finished before the abort"), 5);

        // A sleeping task is aborted: Cancelled, its future dropped, its timer cancelled.
        let dropped = Arc::new(AtomicBool::new(false));
        let d = dropped.clone();
        let t = rt.spawn(async move {
            let _guard = SetOnDrop(d);
            sleep(Duration::from_secs(3600)).await;
        });
        wait_ops(&h, 1);
        t.abort();
        match join(&h, t) {
            Err(JoinError::Cancelled) => {}
            other => panic!("expected Cancelled, got {other:?}"),
        }
        assert!(
            dropped.load(Ordering::SeqCst),
            "the aborted future was not dropped"
        );
        wait_idle(&h);

        // Dropping a JoinHandle detaches: the task still runs to the end.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        drop(rt.spawn(async move {
            sleep(Duration::from_millis(2)).await;
            r.fetch_add(1, Ordering::SeqCst);
        }));
        wait_until("the detached task finishes", || {
            ran.load(Ordering::SeqCst) == 1
        });
        wait_idle(&h);

        // Aborting a spawn_blocking job that has not started skips it (one blocking
        // thread, busy with the first job, so the second waits in the queue).
        let rt1 = Runtime::builder()
            .backend(choice)
            .blocking_threads(1)
            .build()
            .expect("build a runtime");
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let first = rt1.spawn_blocking(move || {
            let _ = started_tx.send(());
            thread::sleep(Duration::from_millis(20));
        });
        started_rx.recv_timeout(T).expect("the first job starts");
        let skipped = Arc::new(AtomicBool::new(true));
        let s = skipped.clone();
        let second = rt1.spawn_blocking(move || s.store(false, Ordering::SeqCst));
        second.abort();
        match join(rt1.handle(), second) {
            Err(JoinError::Cancelled) => {}
            other => panic!("expected Cancelled, got {other:?}"),
        }
        join(rt1.handle(), first).expect("first job");
        // One more job proves the single thread got past the skipped one.
        assert_eq!(
            join(rt1.handle(), rt1.spawn_blocking(|| 3)).expect("job"),
            3
        );
        assert!(
            skipped.load(Ordering::SeqCst),
            "an aborted, unstarted job ran"
        );
    }
);

backend_test!(
    join_handles_resolve_without_polling_once_finished,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let tasks: Vec<_> = (0..1000usize).map(|i| rt.spawn(async move { i })).collect();
        wait_until("1000 trivial tasks finish", || {
            tasks.iter().all(JoinHandle::is_finished)
        });
        for (i, t) in tasks.into_iter().enumerate() {
            match t.now_or_never() {
                Some(Ok(v)) => assert_eq!(v, i),
                other => panic!("task {i}: {other:?}"),
            }
        }
        wait_idle(&h);
    }
);

// Was a bug: a future dropped while waiting for room under max_in_flight left
// its waker in the room queue, and the next freed slot woke it instead of a live
// waiter, which then waited forever.
backend_test!(
    a_dropped_waiter_for_room_does_not_strand_the_next,
    |choice: BackendChoice| {
        const BUG: &str = "a future dropped while waiting for room stranded the next waiter";

        // One operation in flight at most: further ones wait for room.
        let rt = Runtime::builder()
            .backend(choice)
            .max_in_flight(1)
            .build()
            .expect("build a runtime");
        let h = rt.handle().clone();
        let holder = rt.spawn(async { sleep(Duration::from_millis(50)).await });
        wait_ops(&h, 1);
        let first = rt.spawn(async { sleep(Duration::from_millis(1)).await });
        // Lets `first` queue for room before `second`; not a timing assertion:
        // if it has not, the test only checks less.
        thread::sleep(Duration::from_millis(5));
        let second = rt.spawn(async {
            sleep(Duration::from_millis(1)).await;
            "second slept"
        });
        thread::sleep(Duration::from_millis(5));
        first.abort();
        match join(&h, first) {
            // Ok: under load it got the slot before the holder submitted (the
            // registry entry precedes the port's count); the check below stands.
            Err(JoinError::Cancelled) | Ok(()) => {}
            other => panic!("the aborted waiter gave {other:?}"),
        }
        join(&h, holder).expect("holder");
        let deadline = Instant::now() + T;
        while !second.is_finished() {
            assert!(Instant::now() < deadline, "{BUG}");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(join(&h, second).expect("second"), "second slept");
        wait_idle(&h);
    }
);

backend_test!(
    a_handle_outliving_its_runtime_fails_instead_of_hanging,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        drop(rt);
        // A task spawned after the shutdown is cancelled, not left pending.
        match join(&h, h.spawn(async { 1 })) {
            Err(JoinError::Cancelled) => {}
            other => panic!("a task spawned on a shut-down runtime gave {other:?}"),
        }
        // Operations fail or end; nothing waits forever.
        let (slept, connect, accept) = block(&h, async {
            sleep(Duration::from_secs(3600)).await;
            let connect = ringport::net::TcpStream::connect(closed_addr())
                .await
                .map(drop);
            // Binding may work (it starts no operation); accepting must not wait.
            let accept = match ringport::net::TcpListener::bind("127.0.0.1:0") {
                Ok(l) => l.accept().await.map(drop),
                Err(e) => Err(e),
            };
            (true, connect, accept)
        });
        assert!(
            slept,
            "an hour-long sleep on a shut-down runtime ends at once"
        );
        assert!(connect.is_err(), "connect on a shut-down runtime succeeded");
        assert!(accept.is_err(), "accept on a shut-down runtime succeeded");
        let r = block(&h, async { ringport::spawn_blocking(|| 5).await });
        assert!(
            r.is_err(),
            "spawn_blocking on a shut-down runtime gave {r:?}"
        );
    }
);

// A task that drops the last `Runtime` (it owns it): shutdown cannot join the
// worker it runs on, so it finishes on another thread; nothing panics, the other
// tasks end, and the handle then refuses new work.
backend_test!(
    dropping_the_runtime_on_its_own_worker,
    |choice: BackendChoice| {
        let rt = Runtime::builder()
            .backend(choice)
            .build()
            .expect("build a runtime");
        let h = rt.handle().clone();
        let slot = Arc::new(std::sync::Mutex::new(Some(rt)));
        let sleeper = h.spawn(async { sleep(Duration::from_secs(60)).await });
        let s = slot.clone();
        let (tx, rx) = mpsc::channel();
        let _dropper = h.spawn(async move {
            let rt = s.lock().unwrap().take();
            drop(rt);
            let _ = tx.send(());
        });
        rx.recv_timeout(T)
            .expect("the dropping task ran to its end");
        let deadline = Instant::now() + T;
        while !sleeper.is_finished() {
            assert!(Instant::now() < deadline, "the sleeper was never cancelled");
            thread::sleep(Duration::from_millis(1));
        }
        // Cancelled, or its timer's cancellation by the closing port reached it
        // first (a sleep whose timer the runtime cancelled ends rather than hangs).
        match sleeper.now_or_never() {
            Some(Err(JoinError::Cancelled)) | Some(Ok(())) => {}
            other => panic!("the sleeper gave {other:?}"),
        }
        wait_idle(&h);
        let after = h.spawn(async { 1 });
        let deadline = Instant::now() + T;
        while !after.is_finished() {
            assert!(
                Instant::now() < deadline,
                "a task spawned after shutdown hangs"
            );
            thread::sleep(Duration::from_millis(1));
        }
        assert!(matches!(
            after.now_or_never(),
            Some(Err(JoinError::Cancelled))
        ));
        // The shutdown finishes on a thread of its own, which holds the port (and
        // its descriptors) until it is done: wait for it, so no later test that
        // counts descriptors sees them close under it.
        let deadline = Instant::now() + T;
        while stop_threads() > 0 {
            assert!(
                Instant::now() < deadline,
                "the shutdown thread never finished"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
);

/// Threads of this process named `ringport-rt-stop` (a runtime finishing its
/// shutdown after being dropped on its own worker).
fn stop_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .map(|c| c.trim() == "ringport-rt-stop")
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

//! A completion whose submitting thread is busy in a long handler still reaches a
//! waiting thread while that handler runs. On io_uring with `COOP_TASKRUN` the
//! kernel no longer interrupts the busy submitter to post the completion; the
//! waiting poller releases it (`sys/uring/taskrun.rs`). On epoll the readiness
//! is the port's own, so the property holds by construction — tested the same.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringport::op::{Op, OpKind};
use ringport::{BackendChoice, CompletionPort};

use crate::common::*;

/// How long the submitter computes without entering the kernel.
const SPIN: Duration = Duration::from_millis(300);

/// One episode: thread A dequeues a packet (so the port counts it as running a
/// handler), submits a receive itself, then computes for `SPIN` without a
/// system call. Thread B waits in `get`. Data arrives 20 ms into the spin.
/// Returns whether B had the receive's completion while A was still spinning,
/// and the task-work kicks the port sent.
fn episode(port: &CompletionPort) -> (bool, u64) {
    let (mut client, server) = tcp_pair();
    port.associate(&server, 7).unwrap();
    let spinning = Arc::new(AtomicBool::new(true));
    let kicks_before = port.stats().task_work_kicks;
    port.post(1, 0, 0).unwrap();

    let a = {
        let port = port.clone();
        let spinning = spinning.clone();
        thread::spawn(move || {
            // A program's own long-lived loop: it hands its submissions to the
            // kernel itself, so it is the requests' submitter.
            ringport::long_lived_thread();
            let go = port.get(Some(T)).expect("the go packet");
            assert_eq!(go.key, 1);
            port.submit(Op::recv(&server, Vec::with_capacity(16)), 2)
                .unwrap();
            let end = Instant::now() + SPIN;
            let mut x = 0u64;
            // `Instant::now` reads the vDSO clock: no system call.
            while Instant::now() < end {
                x = x.wrapping_mul(31).wrapping_add(1);
                std::hint::black_box(x);
            }
            spinning.store(false, Ordering::SeqCst);
            server
        })
    };
    // Let A take the packet and submit before B starts waiting.
    wait_until("A runs its handler", || port.stats().sched.running == 1);
    thread::sleep(Duration::from_millis(5));
    let b = {
        let port = port.clone();
        let spinning = spinning.clone();
        thread::spawn(move || {
            let c = port.get(Some(T)).expect("the receive's completion");
            let during = spinning.load(Ordering::SeqCst);
            assert_eq!(c.kind(), OpKind::Recv);
            assert_eq!(c.result.as_ref().copied().unwrap(), 5);
            assert_eq!(c.buf.as_deref(), Some(&b"hello"[..]));
            during
        })
    };
    thread::sleep(Duration::from_millis(20));
    client.write_all(b"hello").unwrap();
    let during = b.join().expect("waiter");
    let server = a.join().expect("submitter");
    port.disassociate(&server).unwrap();
    (during, port.stats().task_work_kicks - kicks_before)
}

backend_test!(
    a_completion_does_not_wait_for_its_busy_submitter,
    |choice: BackendChoice| {
        let port = port(choice);
        let stats = port.stats();
        let coop = stats.task_run == "coop";
        if choice == BackendChoice::Uring && !coop {
            eprintln!(
                "note: io_uring runs in the default task-run mode here ({}): the kernel interrupts the busy submitter itself; no kicks to check",
                stats.task_run_reason
            );
        }
        // The scheduler tick also makes a spinning thread run its task work, so a
        // single episode may need no kick; a few episodes show the kick is sent.
        let mut kicks = 0;
        for _ in 0..5 {
            let (during, k) = episode(&port);
            assert!(
                during,
                "the receive completed only after its submitter stopped computing ({:?})",
                port.stats()
            );
            kicks += k;
            if kicks > 0 || !coop {
                break;
            }
        }
        if coop {
            assert!(kicks > 0, "no task-work kick in 5 episodes");
        } else {
            assert_eq!(kicks, 0, "kicks counted without COOP_TASKRUN");
        }
    }
);

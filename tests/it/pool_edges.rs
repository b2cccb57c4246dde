//! The pool and the scheduler at their edges (session 17's review; each
//! test failed before its fix, on both backends): a pool dropped by its own
//! handler, what a handler submits with the stall detector off, and a thread
//! that waits on another port inside `ringport::blocking`.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ringport::{BackendChoice, Error, Op, Pool};

use crate::common::*;

// Dropping (or shutting down) a Pool from inside one of its own handlers:
//    `Pool::stop` joins every worker, the calling one included.
backend_test!(
    a_pool_dropped_by_its_own_handler_stops_cleanly,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(2));
        let slot: Arc<Mutex<Option<Pool>>> = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let tx = Mutex::new(tx);
        let s = slot.clone();
        let pool = Pool::builder()
            .threads(2)
            .spawn(&port, move |_, c| {
                if c.user_data == 1 {
                    let p = s.lock().unwrap().take();
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(p)))
                        .map_err(|e| {
                            e.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        });
                    let _ = tx.lock().unwrap().send(r);
                }
            })
            .unwrap();
        *slot.lock().unwrap() = Some(pool);
        port.post(0, 1, 0).unwrap();
        let r = rx
            .recv_timeout(T)
            .expect("the handler dropping its own pool returned (no hang)");
        assert!(port.is_closed());
        assert!(
            r.is_ok(),
            "dropping the Pool inside its own handler panicked: {r:?}"
        );
    }
);

// A pool handler submits an operation and then waits (without the
//    `blocking` hint) for another worker to handle its completion. With the
//    stall detector off, a free slot (concurrency 2, one running) and an idle
//    worker, IOCP would release the idle worker; here the operation is held
//    for the submitter's next `get` (io_uring: the SQE is never handed to the
//    kernel; epoll: its inline completion is queued without a dispatch).
backend_test!(
    without_the_stall_detector_a_handlers_submission_is_not_held,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(2));
        let seen = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new(None::<(bool, usize, usize, usize)>));
        let (s2, r2) = (seen.clone(), result.clone());
        let pool = Pool::builder()
            .threads(2)
            .stall_threshold(None)
            .spawn(&port, move |p, c| match c.user_data {
                1 => {
                    p.submit(Op::nop(), 2).unwrap();
                    let until = Instant::now() + T;
                    while !s2.load(SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let st = p.stats();
                    *r2.lock().unwrap() = Some((
                        s2.load(SeqCst),
                        st.sched.running,
                        st.sched.queued,
                        st.in_flight,
                    ));
                }
                2 => s2.store(true, SeqCst),
                _ => {}
            })
            .unwrap();
        // Setup only (not an assertion): let both workers reach the port and go
        // idle (one polls, one waits) before the packet arrives.
        std::thread::sleep(Duration::from_millis(200));
        port.post(0, 1, 0).unwrap();
        wait_until("handler 1 has finished", || {
            result.lock().unwrap().is_some()
        });
        let (ok, running, queued, in_flight) = result.lock().unwrap().unwrap();
        shutdown(pool);
        assert!(
            ok,
            "the nop's completion was not handled by the idle worker within T; \
         seen by the waiting handler: running {running}, queued {queued}, in flight {in_flight}"
        );
    }
);

// Control: the same with the default stall detector passes.
backend_test!(
    with_the_stall_detector_a_handlers_submission_is_served,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(2));
        let seen = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new(None::<bool>));
        let (s2, r2) = (seen.clone(), result.clone());
        let pool = Pool::builder()
            .threads(2)
            .spawn(&port, move |p, c| match c.user_data {
                1 => {
                    p.submit(Op::nop(), 2).unwrap();
                    let until = Instant::now() + T;
                    while !s2.load(SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    *r2.lock().unwrap() = Some(s2.load(SeqCst));
                }
                2 => s2.store(true, SeqCst),
                _ => {}
            })
            .unwrap();
        port.post(0, 1, 0).unwrap();
        wait_until("handler 1 has finished", || {
            result.lock().unwrap().is_some()
        });
        let ok = result.lock().unwrap().unwrap();
        shutdown(pool);
        assert!(ok);
    }
);

// A thread running a packet of port A waits on port B inside
//    `ringport::blocking`. IOCP: waiting on B ends its association with A, so
//    it no longer counts as running on A. Here `leave` skips a Blocking slot
//    and `block_end` counts the thread as running on A again when `blocking`
//    returns: A's count stays up while the thread serves only B.
backend_test!(
    waiting_on_another_port_inside_blocking_ends_the_first_association,
    |choice: BackendChoice| {
        let a = build(builder(choice).concurrency(1));
        let b = build(builder(choice).concurrency(1));
        a.post(0, 1, 0).unwrap();
        assert_eq!(get(&a).user_data, 1);
        assert_eq!(a.stats().sched.running, 1);
        b.post(0, 2, 0).unwrap();
        let c = ringport::blocking(|| b.get(Some(T))).expect("get on B");
        assert_eq!(c.user_data, 2);
        // This thread now serves B only; it keeps dequeuing from B.
        assert!(matches!(b.get(Some(Duration::ZERO)), Err(Error::Timeout)));
        let a_running = a.stats().sched.running;
        // Another thread must be able to take A's next packet.
        a.post(0, 3, 0).unwrap();
        let a2 = a.clone();
        let r = std::thread::spawn(move || a2.get(Some(T)).map(|c| c.user_data))
            .join()
            .unwrap();
        assert!(
            a_running == 0 && matches!(r, Ok(3)),
            "port A still counts this thread as running ({a_running}) after it waited on B; \
         another thread's get on A: {r:?}"
        );
    }
);

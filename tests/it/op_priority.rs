//! Priority carried by operations (issue 6 item 5): an operation's completion is
//! queued in its lane whatever way it ends, a `High` one completing behind a
//! thousand queued `Low` ones is dequeued next (also when it is still in the
//! kernel's ring), `Low` is not starved by a stream of `High`, and the class
//! reaches the kernel as the I/O priority of file reads and writes.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ringport::{BackendChoice, CompletionPort, Error, Op, Pool, Priority, AGE_LIMIT};

use crate::common::*;

const LOWS: u64 = 1000;
const HIGH_UD: u64 = 1 << 40;

/// Holds `port`'s one concurrency slot (N = 1) from the calling thread, and
/// has another thread reap until `n` completions are queued in the port (it
/// cannot take any: the slot is held). On epoll inline completions are queued
/// already; on io_uring this moves them from the ring into the port.
fn hold_slot_and_gather(port: &CompletionPort, n: usize) {
    port.post(9, 0, 0).unwrap();
    let c = get(port);
    assert_eq!(c.key, 9, "the slot holder's packet");
    let p = port.clone();
    let reaper = std::thread::spawn(move || {
        wait_until("the Low completions are queued in the port", || {
            match p.get(Some(Duration::from_millis(5))) {
                Err(Error::Timeout) => {}
                other => panic!("the reaper must not take anything: {other:?}"),
            }
            p.stats().sched.queued >= n
        });
    });
    reaper.join().unwrap();
}

backend_test!(
    high_op_completing_last_is_dequeued_next,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(1));
        // This thread submits the High operation and dequeues right after: it
        // must hand its submissions to the kernel itself, not through the
        // io_uring submitter thread, for the High one to have completed by
        // then (it does not exit before its operations end).
        ringport::long_lived_thread();
        for i in 0..LOWS {
            port.submit(Op::nop().priority(Priority::Low), i).unwrap();
        }
        hold_slot_and_gather(&port, LOWS as usize);
        assert_eq!(port.stats().sched.queued, LOWS as usize);
        // Completes last: after every Low one is queued. On io_uring it is still
        // in the kernel's ring when this thread dequeues.
        port.submit(Op::nop().priority(Priority::High), HIGH_UD)
            .unwrap();
        let c = get(&port);
        assert_eq!(
            (c.user_data, c.priority()),
            (HIGH_UD, Priority::High),
            "the High completion is dequeued next"
        );
        for i in 0..LOWS {
            let c = get(&port);
            assert_eq!((c.user_data, c.priority()), (i, Priority::Low));
            assert_eq!(c.result.unwrap(), 0);
        }
        assert!(matches!(
            port.get(Some(Duration::ZERO)),
            Err(Error::Timeout)
        ));
    }
);

backend_test!(
    a_high_multishot_op_ends_the_count_of_high_ops_once,
    |choice: BackendChoice| {
        let port = build(builder(choice).concurrency(1));
        ringport::long_lived_thread();
        let t0 = std::time::Instant::now();
        port.submit(
            Op::timeout(Duration::from_millis(300)).priority(Priority::High),
            HIGH_UD,
        )
        .unwrap();
        // A High multishot receive gives four completions and ends, while
        // the High timer is still in flight.
        let pool = port.buffer_pool(8, 64).unwrap();
        let (a, mut w) = UnixStream::pair().unwrap();
        port.associate(&a, 1).unwrap();
        port.submit(Op::recv_multishot(&a, &pool).priority(Priority::High), 5)
            .unwrap();
        for i in 0..3u8 {
            w.write_all(&[i; 10]).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(w);
        let mut n = 0;
        loop {
            let c = get(&port);
            assert_eq!(c.user_data, 5);
            n += 1;
            if !c.more() {
                break;
            }
        }
        assert!(
            n >= 2,
            "a multishot receive of three messages ended after {n}"
        );
        for i in 0..LOWS {
            port.submit(Op::nop().priority(Priority::Low), i).unwrap();
        }
        hold_slot_and_gather(&port, LOWS as usize);
        // The timer has fired (into the kernel's ring, on io_uring).
        while t0.elapsed() < Duration::from_millis(500) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let c = get(&port);
        assert_eq!(
            c.user_data, HIGH_UD,
            "the High timer must overtake the queued Low completions"
        );
    }
);

backend_test!(
    high_file_read_overtakes_queued_low_reads,
    |choice: BackendChoice| {
        // The same with reads that finish on worker threads (epoll) or in the
        // kernel (io_uring), not on the submitting thread.
        let port = build(builder(choice).concurrency(1));
        // This thread submits the High operation and dequeues right after: it
        // must hand its submissions to the kernel itself, not through the
        // io_uring submitter thread, for the High one to have completed by
        // then (it does not exit before its operations end).
        ringport::long_lived_thread();
        let mut f = temp_file();
        f.write_all(&[7u8; 4096]).unwrap();
        port.associate(&f, 3).unwrap();
        for i in 0..LOWS {
            let op = Op::read_at(&f, Vec::with_capacity(64), (i % 64) * 64).priority(Priority::Low);
            port.submit(op, i).unwrap();
        }
        hold_slot_and_gather(&port, LOWS as usize);
        let op = Op::read_at(&f, Vec::with_capacity(64), 0).priority(Priority::High);
        port.submit(op, HIGH_UD).unwrap();
        // On epoll the High read finishes on a worker after this submit returns:
        // wait until it has (the port's in-flight count drops to zero).
        wait_until("the High read has finished", || {
            port.stats().in_flight == 0 || choice == BackendChoice::Uring
        });
        let c = get(&port);
        assert_eq!((c.user_data, c.priority()), (HIGH_UD, Priority::High));
        assert_eq!(c.buf.unwrap(), vec![7u8; 64]);
        let mut seen = vec![false; LOWS as usize];
        for _ in 0..LOWS {
            let c = get(&port);
            assert_eq!(c.priority(), Priority::Low);
            assert_eq!(c.result.unwrap(), 64);
            assert!(
                !std::mem::replace(&mut seen[c.user_data as usize], true),
                "delivered twice"
            );
        }
        assert!(seen.iter().all(|&s| s), "every Low read is delivered");
    }
);

backend_test!(
    low_ops_are_not_starved_by_a_stream_of_high,
    |choice: BackendChoice| {
        // One worker; every High completion it handles submits another High op, so
        // Highs keep arriving. The thousand Low ops queued meanwhile all come out,
        // the first after at most AGE_LIMIT (+ the Highs in flight) others.
        let port = build(builder(choice).concurrency(1));
        // This thread submits the High operation and dequeues right after: it
        // must hand its submissions to the kernel itself, not through the
        // io_uring submitter thread, for the High one to have completed by
        // then (it does not exit before its operations end).
        ringport::long_lived_thread();
        let order = Arc::new(Mutex::new(Vec::<Priority>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate_rx = Mutex::new(Some(gate_rx));
        let (o, st) = (order.clone(), stop.clone());
        let pool = Pool::builder()
            .threads(1)
            .spawn(&port, move |port, c| {
                // The first completion waits until every Low op is submitted.
                if let Some(rx) = gate_rx.lock().unwrap().take() {
                    rx.recv_timeout(T).expect("the test opens the gate");
                }
                o.lock().unwrap().push(c.priority());
                if c.priority() == Priority::High && !st.load(Ordering::Relaxed) {
                    let _ = port.submit(Op::nop().priority(Priority::High), c.user_data);
                }
            })
            .unwrap();
        const STREAM: u64 = 8;
        for i in 0..STREAM {
            port.submit(Op::nop().priority(Priority::High), HIGH_UD + i)
                .unwrap();
        }
        for i in 0..LOWS {
            port.submit(Op::nop().priority(Priority::Low), i).unwrap();
        }
        gate_tx.send(()).unwrap();
        wait_until("every Low op delivered", || {
            order
                .lock()
                .unwrap()
                .iter()
                .filter(|p| **p == Priority::Low)
                .count()
                == LOWS as usize
        });
        stop.store(true, Ordering::Relaxed);
        shutdown(pool);
        let order = order.lock().unwrap();
        let first_low = order.iter().position(|p| *p == Priority::Low).unwrap();
        assert!(first_low >= 1, "a High op went first");
        assert!(
            first_low as u64 <= AGE_LIMIT + STREAM + 1,
            "Low waited through {first_low} dequeues (aging bounds it by {AGE_LIMIT})"
        );
        assert!(
            order.iter().filter(|p| **p == Priority::High).count() as u64 > STREAM,
            "the High stream kept going"
        );
    }
);

backend_test!(
    priority_survives_cancel_timeout_and_inline_ends,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, _b) = UnixStream::pair().unwrap();
        port.associate(&a, 1).unwrap();
        for p in [Priority::High, Priority::Low] {
            // Cancelled while waiting for data.
            let id = port
                .submit(Op::recv(&a, Vec::with_capacity(8)).priority(p), 1)
                .unwrap();
            port.cancel(id).unwrap();
            let c = get(&port);
            assert!(c.is_cancelled(), "{c:?}");
            assert_eq!(c.priority(), p, "a cancelled op keeps its lane");
            // Stopped by its linked timeout.
            let op = Op::recv(&a, Vec::with_capacity(8))
                .priority(p)
                .timeout_after(Duration::from_millis(5));
            port.submit(op, 2).unwrap();
            let c = get(&port);
            assert!(c.is_cancelled(), "{c:?}");
            assert_eq!(c.priority(), p, "a timed-out op keeps its lane");
            // Ended before it started (a path with a NUL byte).
            port.submit(Op::openat(None, "a\0b", libc::O_RDONLY, 0).priority(p), 3)
                .unwrap();
            let c = get(&port);
            assert_errno(&c.result, libc::EINVAL);
            assert_eq!(c.priority(), p);
        }
        // A cancelled timer, and a timer that fires.
        let id = port
            .submit(
                Op::timeout(Duration::from_secs(60)).priority(Priority::Low),
                4,
            )
            .unwrap();
        port.cancel(id).unwrap();
        let c = get(&port);
        assert!(c.is_cancelled());
        assert_eq!(c.priority(), Priority::Low);
        port.submit(
            Op::timeout(Duration::from_millis(1)).priority(Priority::High),
            5,
        )
        .unwrap();
        assert_eq!(get(&port).priority(), Priority::High);
    }
);

backend_test!(
    every_op_kind_completes_in_its_lane,
    |choice: BackendChoice| {
        let port = port(choice);
        let f = temp_file();
        port.associate(&f, 1).unwrap();
        let (s1, s2) = UnixStream::pair().unwrap();
        port.associate(&s1, 2).unwrap();
        port.associate(&s2, 3).unwrap();
        let (c1, c2) = tcp_pair();
        port.associate(&c1, 4).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        port.associate(&listener, 5).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        port.associate(&udp, 6).unwrap();
        let connecting =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        port.associate(&connecting, 7).unwrap();
        let closing = std::fs::File::open("/dev/null").unwrap();
        port.associate(&closing, 8).unwrap();
        let ops: Vec<Op> = vec![
            Op::nop(),
            Op::write_at(&f, b"hello".to_vec(), 0),
            Op::writev_at(&f, vec![b"ab".to_vec()], 5),
            Op::fsync(&f),
            Op::fallocate(&f, 0, 0, 4096),
            Op::read_at(&f, Vec::with_capacity(4), 0),
            Op::readv_at(&f, vec![Vec::with_capacity(4)], 0),
            Op::statx(None, "/", 0, libc::STATX_BASIC_STATS),
            Op::openat(None, "/dev/null", libc::O_RDONLY, 0),
            Op::send(&s1, b"x".to_vec()),
            Op::recv(&s2, Vec::with_capacity(4)),
            Op::send_to(&udp, b"d".to_vec(), udp.local_addr().unwrap()),
            Op::recv_from(&udp, Vec::with_capacity(4)),
            Op::accept(&listener),
            Op::connect(&connecting, listener.local_addr().unwrap()),
            Op::shutdown(&c1, std::net::Shutdown::Write),
            Op::send_file(&c1, &f, 0, 1),
            Op::timeout(Duration::from_millis(1)),
            Op::close(closing.into()),
        ];
        let kinds = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            let p = if i % 2 == 0 {
                Priority::Low
            } else {
                Priority::High
            };
            port.submit(op.priority(p), i as u64).unwrap();
        }
        for _ in 0..kinds {
            let c = get(&port);
            let want = if c.user_data % 2 == 0 {
                Priority::Low
            } else {
                Priority::High
            };
            assert_eq!(c.priority(), want, "{:?}: {c:?}", c.kind());
        }
        drop(c2);
    }
);

/// The ioprio of every thread of this process named `name`.
fn ioprios_of_threads(name: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let Ok(tid) = e.file_name().to_string_lossy().parse::<libc::c_long>() else {
            continue;
        };
        // SAFETY: ioprio_get(IOPRIO_WHO_PROCESS = 1, tid) only reads.
        let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, tid) };
        if rc >= 0 {
            out.push(rc as u16);
        }
    }
    out
}

/// The ioprios of the `ringport-worker` threads, scanned until one has
/// `want` or five scans went by (a scan of /proc/self/task can miss an entry
/// while other tests' threads come and go).
fn worker_ioprios_until(want: u16) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen = ioprios_of_threads("ringport-worker");
        if seen.contains(&want) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    seen
}

backend_test!(
    file_reads_carry_their_class_to_the_kernel,
    |choice: BackendChoice| {
        let port = port(choice);
        let mut f = temp_file();
        f.write_all(&[1u8; 8192]).unwrap();
        port.associate(&f, 1).unwrap();
        let be = |level: u16| (2u16 << 13) | level;
        for (p, want) in [(Priority::Low, be(7)), (Priority::High, be(0))] {
            // The kernel validates an SQE's ioprio (a bad one fails with EINVAL):
            // reads and writes at each class succeed.
            port.submit(Op::read_at(&f, Vec::with_capacity(4096), 0).priority(p), 0)
                .unwrap();
            let c = get(&port);
            assert_eq!(c.result.unwrap(), 4096, "{p:?}");
            port.submit(Op::write_at(&f, vec![2u8; 512], 0).priority(p), 0)
                .unwrap();
            assert_eq!(get(&port).result.unwrap(), 512, "{p:?}");
            if choice == BackendChoice::Epoll {
                // A worker keeps the class of the last operation it ran: one of
                // them now has it.
                let seen = worker_ioprios_until(want);
                assert!(
                    seen.contains(&want),
                    "{p:?}: no worker thread at ioprio {want:#x}: {seen:x?}"
                );
            } else {
                // io_uring's SQE field cannot be read back from user space; the unit
                // test `sys::uring::ops::tests` checks the SQE itself.
                eprintln!("io_uring: ioprio {want:#x} is in the SQE (checked by unit test)");
            }
        }
    }
);

backend_test!(
    async_file_writes_take_the_futures_priority,
    |choice: BackendChoice| {
        use ringport::rt::with_priority;
        let rt = crate::rt::runtime(choice);
        let mut f = temp_file();
        f.write_all(&[3u8; 8192]).unwrap();
        // A write goes to the kernel (a worker on epoll) even when reads are served
        // from the page cache: its class is the one observed.
        let file = crate::rt::block(rt.handle(), async move { ringport::fs::File::from_std(f) });
        let file = Arc::new(file.unwrap());
        for (p, level) in [(Priority::Low, 7u16), (Priority::High, 0)] {
            let fl = file.clone();
            let (r, buf) = crate::rt::block(
                rt.handle(),
                with_priority(p, async move { fl.write_at(vec![9u8; 512], 0).await }),
            );
            assert_eq!(r.unwrap(), 512);
            assert_eq!(buf.len(), 512);
            if choice == BackendChoice::Epoll {
                let want = (2u16 << 13) | level;
                let seen = worker_ioprios_until(want);
                assert!(
                    seen.contains(&want),
                    "{p:?}: no worker thread at ioprio {want:#x}: {seen:x?}"
                );
            } else {
                eprintln!("io_uring: the write's SQE carries the class (unit tests)");
            }
        }
    }
);

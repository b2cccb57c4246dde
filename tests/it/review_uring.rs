//! A white-box review of the io_uring backend (session 18), as tests through
//! the public API on both backends. Each test names the edge it probes.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use ringport::{BackendChoice, Op};

use crate::common::*;

/// Runs `f` on a thread of its own and fails (rather than hangs) if it has not
/// returned within `T`. On a hang the thread and what it holds are leaked.
fn within_t<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(T) {
        Ok(r) => r,
        Err(_) => panic!("{what}: did not finish within {T:?} (a hang)"),
    }
}

/// A file holding `n` bytes of a pattern.
fn file_of(n: usize) -> std::fs::File {
    let mut f = temp_file();
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).unwrap();
    f
}

// The smallest ring the builder allows (`ring_entries(2)`) must still take
// every operation the port offers. A `send_file` with a deadline is a chain of
// three SQEs (the file → pipe splice, the pipe → socket splice, and the plain
// TIMEOUT that emulates its linked timeout), pushed in one step: on a
// two-entry SQ it can never fit, and the driver retried the push for ever
// under its lock (`push_all_locked` / `submit_locked`), freezing the port.
backend_test!(
    a_send_file_with_a_deadline_fits_the_smallest_ring,
    |choice: BackendChoice| {
        let port = Arc::new(build(builder(choice).ring_entries(2)));
        let file = file_of(10_000);
        let (sender, mut peer) = tcp_pair();
        port.associate(&sender, 7).unwrap();
        let p = port.clone();
        let c = within_t("send_file with a deadline on a 2-entry ring", move || {
            p.submit(
                Op::send_file(&sender, &file, 0, 10_000).timeout_after(Duration::from_secs(30)),
                1,
            )
            .unwrap();
            let c = p.get(Some(T));
            drop((sender, file));
            c
        });
        let c = c.expect("the send_file completes");
        assert_eq!((c.key, c.user_data), (7, 1));
        assert_eq!(c.result.unwrap(), 10_000);
        let mut got = vec![0u8; 10_000];
        peer.set_read_timeout(Some(T)).unwrap();
        peer.read_exact(&mut got).unwrap();
        // The port still works afterwards.
        port.submit(Op::nop(), 2).unwrap();
        assert_eq!(get(&port).user_data, 2);
    }
);

/// Runs test `name` (a `backend_test!` in this file, its io_uring half) in a
/// child process with `RINGPORT_URING_OPS_OFF=off`: the driver then takes
/// the fallback it takes on a kernel without those opcodes.
fn in_child_with_ops_off(name: &str, off: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("review_uring::{name}::uring"),
            "--exact",
            "--nocapture",
        ])
        .env("RINGPORT_URING_OPS_OFF", off)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "RINGPORT_URING_OPS_OFF={off}: {text}");
    assert!(text.contains("1 passed"), "{text}");
}

// A send that must wait for room, then a shutdown of the sending side: the
// shutdown takes the send lane, so it goes out after the send (design.md,
// "Socket lanes"). Where the kernel lacked `IORING_OP_SHUTDOWN` (or
// `RINGPORT_URING_OPS_OFF=SHUTDOWN` said so), the driver called
// `shutdown(2)` on the submitting thread at once, ahead of the send still
// waiting in the kernel: the send failed `EPIPE` and its bytes never
// reached the peer. `SHUTDOWN` is now required (every kernel the driver
// accepts has it), so the knob no longer takes that path.
backend_test!(
    a_shutdown_after_a_waiting_send_goes_out_after_it,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut client, server) = tcp_pair();
        let filled = fill_send_buffer(&server, b'z');
        port.associate(&server, 1).unwrap();
        port.submit(Op::send(&server, b"tail".to_vec()), 0).unwrap();
        port.submit(Op::shutdown(&server, std::net::Shutdown::Write), 1)
            .unwrap();
        // The peer reads everything, then the end of the stream.
        client.set_read_timeout(Some(T)).unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = client.read_to_end(&mut all);
            all
        });
        let mut res = Vec::new();
        for _ in 0..2 {
            let c = get(&port);
            res.push((c.user_data, c.result.map_err(|e| e.raw_os_error())));
        }
        res.sort_by_key(|r| r.0);
        let all = reader.join().unwrap();
        assert_eq!(
            res,
            vec![(0, Ok(4)), (1, Ok(0))],
            "the send and then the shutdown succeed"
        );
        assert_eq!(all.len(), filled + 4, "the peer got every byte before EOF");
        assert_eq!(&all[filled..], b"tail");
    }
);

#[test]
fn a_shutdown_after_a_waiting_send_goes_out_after_it_with_shutdown_emulated() {
    in_child_with_ops_off(
        "a_shutdown_after_a_waiting_send_goes_out_after_it",
        "SHUTDOWN",
    );
}

// Probe (held): a multishot accept is one slot of `max_in_flight` and many
// CQEs. With the smallest CQ the builder allows (max_in_flight 1, a ring of
// 2 (4 after the fix): a CQ of 4 or 8), fifty connections overflow it; the
// kernel ends the multishot request with the CQE that did not fit (the
// documented `Ok(n)` final completion: submit again), `IORING_FEAT_NODROP`
// keeps what did not fit, and the next `GETEVENTS` enter brings it back:
// every connection comes out, once.
backend_test!(
    an_overflowing_completion_queue_loses_no_accept,
    |choice: BackendChoice| {
        let port = build(builder(choice).ring_entries(2).max_in_flight(1));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        port.associate(&l, 5).unwrap();
        port.submit(Op::accept_multishot(&l), 1).unwrap();
        // Let the accept reach the kernel before the connections come.
        std::thread::sleep(Duration::from_millis(50));
        let clients: Vec<_> = (0..50)
            .map(|_| std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap())
            .collect();
        // Nobody reaps while they pile up.
        std::thread::sleep(Duration::from_millis(100));
        let mut got = 0;
        let mut ended = 0;
        while got < clients.len() {
            let mut c = get(&port);
            match (c.more(), c.take_fd()) {
                (true, Some(_)) => got += 1,
                // The kernel ends a multishot request whose CQE did not fit
                // the CQ, with that last connection (design.md: "submit
                // again").
                (false, fd) => {
                    assert!(c.result.is_ok(), "{:?}", c.result);
                    got += usize::from(fd.is_some());
                    ended += 1;
                    port.submit(Op::accept_multishot(&l), 1).unwrap();
                }
                (true, None) => panic!("an accept without a descriptor: {:?}", c.result),
            }
        }
        eprintln!("{choice:?}: the kernel ended the multishot accept {ended} times");
        assert!(
            port.get(Some(Duration::from_millis(50))).is_err(),
            "a connection came out twice"
        );
        port.close();
    }
);

// Probe (held): cancel against completion. Data and a cancel race a
// receive; whichever wins, exactly one completion comes, and the slot is
// given back (nothing in flight at the end, so `try_submit` is never
// refused with room left).
backend_test!(
    cancel_racing_completion_ends_each_operation_once,
    |choice: BackendChoice| {
        let port = Arc::new(build(builder(choice).max_in_flight(2)));
        let (mut client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        let mut cancelled = 0;
        for round in 0..300u64 {
            let id = port
                .try_submit(Op::recv(&server, Vec::with_capacity(8)), round)
                .expect("room: the last round's receive was reaped");
            if round % 2 == 0 {
                client.write_all(b"x").unwrap();
            }
            let _ = port.cancel(id);
            let c = get(&port);
            assert_eq!(c.user_data, round);
            match c.result {
                Ok(1) => {}
                Err(ref e) if e.raw_os_error() == Some(libc::ECANCELED) => cancelled += 1,
                ref other => panic!("round {round}: {other:?}"),
            }
            // A byte a cancelled receive did not take is still there: drain it.
            if c.result.is_err() && round % 2 == 0 {
                port.submit(Op::recv(&server, Vec::with_capacity(8)), 1 << 40)
                    .unwrap();
                let c = get(&port);
                assert_eq!(c.result.unwrap(), 1);
            }
            assert!(
                port.get(Some(Duration::ZERO)).is_err(),
                "round {round}: a second completion for one operation"
            );
        }
        assert!(cancelled > 0, "no cancel ever won: the race was not probed");
        wait_until("nothing in flight", || port.stats().in_flight == 0);
    }
);

// Probe (held): bounded receives (linked timeouts) on a port whose cap is
// one: each holds its slot until its last CQE, the timer's included, and
// gives it back, so a plain loop never sees `QueueFull`.
backend_test!(
    linked_timeouts_give_their_slot_back,
    |choice: BackendChoice| {
        let port = build(builder(choice).max_in_flight(1));
        let (_client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        for round in 0..100u64 {
            port.try_submit(
                Op::recv(&server, Vec::with_capacity(8)).timeout_after(Duration::from_micros(200)),
                round,
            )
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            let c = get(&port);
            assert!(c.is_cancelled(), "round {round}: {:?}", c.result);
        }
        assert_eq!(port.stats().in_flight, 0);
    }
);

// Probe (held): a thread the port does not own submits far more chains than
// the SQ holds (a ring of 4: most wait in the driver's backlog for the
// submitter thread), with cancels of some of them in between. Every chain
// reaches the kernel whole (a split one would leave its LINK_TIMEOUT
// unlinked: `EINVAL`, and a receive that never ends), and each cancel lands
// after the request it cancels: every receive ends cancelled, once.
backend_test!(
    chains_and_cancels_through_the_backlog_stay_whole_and_ordered,
    |choice: BackendChoice| {
        let port = build(builder(choice).ring_entries(4).max_in_flight(256));
        let pairs: Vec<_> = (0..8).map(|_| tcp_pair()).collect();
        for (i, (_, s)) in pairs.iter().enumerate() {
            port.associate(s, i as u64).unwrap();
        }
        let n = 200u64;
        for i in 0..n {
            let s = &pairs[(i % 8) as usize].1;
            let id = port
                .submit(
                    Op::recv(s, Vec::with_capacity(8))
                        .timeout_after(Duration::from_millis(if i % 3 == 0 { 1 } else { 20_000 })),
                    i,
                )
                .unwrap();
            if i % 3 == 1 {
                port.cancel(id).unwrap();
            }
        }
        // The long ones that were not cancelled: end them by closing their
        // association.
        let mut seen = vec![false; n as usize];
        let mut ended = 0;
        let mut disassociated = false;
        while ended < n {
            let c = match port.get(Some(Duration::from_secs(2))) {
                Ok(c) => c,
                Err(_) if !disassociated => {
                    for (_, s) in &pairs {
                        port.disassociate(s).unwrap();
                    }
                    disassociated = true;
                    continue;
                }
                Err(e) => panic!("{ended} of {n} ended, then {e:?}"),
            };
            assert!(
                c.is_cancelled(),
                "{}: {:?} (EINVAL: a chain split)",
                c.user_data,
                c.result
            );
            assert!(!seen[c.user_data as usize], "{} twice", c.user_data);
            seen[c.user_data as usize] = true;
            ended += 1;
        }
        assert_eq!(port.stats().in_flight, 0);
    }
);

// Probe (held): many threads the port does not own share a tiny port (a
// ring of 4, four operations at most): each submits (waiting for room,
// reaping for it: a second reaper beside the poller) and dequeues, while
// another thread posts. Nothing is lost, nothing comes twice, nobody sleeps
// through a completion (every wait is bounded), and the cap is given back.
backend_test!(
    a_tiny_port_shared_by_many_threads_loses_nothing,
    |choice: BackendChoice| {
        use std::sync::atomic::{AtomicU64, Ordering};
        let port = Arc::new(build(builder(choice).ring_entries(4).max_in_flight(4)));
        let pairs = Arc::new((0..4).map(|_| tcp_pair()).collect::<Vec<_>>());
        for (i, (_, s)) in pairs.iter().enumerate() {
            port.associate(s, i as u64).unwrap();
        }
        const THREADS: u64 = 4;
        const EACH: u64 = 150;
        const POSTS: u64 = 300;
        let got = Arc::new(AtomicU64::new(0));
        let total = THREADS * EACH + POSTS;
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (port, pairs, got) = (port.clone(), pairs.clone(), got.clone());
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let op = match i % 3 {
                            0 => Op::nop(),
                            1 => Op::timeout(Duration::from_micros(100)),
                            _ => Op::recv(&pairs[t as usize].1, Vec::with_capacity(4))
                                .timeout_after(Duration::from_micros(300)),
                        };
                        port.submit(op, (t << 32) | i).unwrap();
                        // Take whatever is there (anyone's).
                        while got.load(Ordering::SeqCst) < total {
                            match port.get(Some(Duration::from_millis(1))) {
                                Ok(_) => {
                                    got.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                })
            })
            .collect();
        let poster = {
            let port = port.clone();
            std::thread::spawn(move || {
                for i in 0..POSTS {
                    port.post(9, i, 0).unwrap();
                    if i % 16 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        for w in workers {
            w.join().unwrap();
        }
        poster.join().unwrap();
        while got.load(Ordering::SeqCst) < total {
            match port.get(Some(T)) {
                Ok(_) => {
                    got.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => panic!(
                    "{} of {total} dequeued, then {e:?} (stats {:?})",
                    got.load(Ordering::SeqCst),
                    port.stats()
                ),
            }
        }
        assert_eq!(got.load(Ordering::SeqCst), total);
        assert!(
            port.get(Some(Duration::from_millis(20))).is_err(),
            "one too many"
        );
        assert_eq!(port.stats().in_flight, 0);
    }
);

// `write_at` (and `writev_at`) is for files, and epoll's `pwrite` refuses a
// socket (`ESPIPE`). io_uring's WRITE on a socket goes through
// `sock_write_iter`, which has no `MSG_NOSIGNAL`: to a peer that has gone,
// the kernel raises `SIGPIPE` in the thread that issued it (the submitter
// thread, a pool worker) — the same hazard `bufs.rs` already avoids for
// `write_fixed` on a socket. A program whose `SIGPIPE` is the default (a C
// host, or any program that restores it) dies. Run in a child process with
// `SIGPIPE` set to its default: the write must end with an error on both
// backends, and the process must live.
backend_test!(
    a_write_at_on_a_socket_whose_peer_left_raises_no_sigpipe,
    |choice: BackendChoice| {
        if std::env::var_os("RINGPORT_REVIEW_SIGPIPE_CHILD").is_none() {
            return; // only in the child (it changes a process-wide disposition)
        }
        // SAFETY: restores the default disposition of SIGPIPE in this child
        // process, which runs this one test only.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let port = port(choice);
        let (client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
        let mut errors = Vec::new();
        for i in 0..4 {
            // The first write may still be taken (the RST comes back), the
            // next ones find the connection gone.
            port.submit(Op::write_at(&server, vec![b'x'; 1000], 0), i)
                .unwrap();
            let c = get(&port);
            if let Err(e) = c.result {
                errors.push(e.raw_os_error());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!errors.is_empty(), "every write to a gone peer succeeded");
        eprintln!("{choice:?}: socket errors {errors:?}");
        // A pipe whose reader has gone raises SIGPIPE the same way.
        let (r, w) = pipe();
        port.associate(&w, 2).unwrap();
        drop(r);
        port.submit(Op::write_at(&w, vec![b'y'; 10], 0), 9).unwrap();
        let c = get(&port);
        eprintln!("{choice:?}: pipe result {:?}", c.result);
        assert!(
            c.result.is_err(),
            "a write to a pipe with no reader succeeded"
        );
    }
);

#[test]
fn a_write_at_on_a_socket_whose_peer_left_raises_no_sigpipe_in_child() {
    for backend in ["uring", "epoll"] {
        let name = format!(
            "review_uring::a_write_at_on_a_socket_whose_peer_left_raises_no_sigpipe::{backend}"
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([&name, "--exact", "--nocapture"])
            .env("RINGPORT_REVIEW_SIGPIPE_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_ne!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{backend}: the process was killed by SIGPIPE: {text}"
        );
        assert!(out.status.success(), "{backend}: {text}");
        assert!(text.contains("1 passed"), "{backend}: {text}");
    }
}

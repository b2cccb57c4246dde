//! The epoll backend at its edges (a review, session 17; each test failed on
//! epoll before its fix, and states what io_uring did already): a receive
//! after TCP's urgent mark, a shutdown behind a cancelled send, a file job
//! behind blocked ones, and the in-flight cap under racing submits.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ringport::{BackendChoice, Error, Op, Submitted};

use crate::common::*;

/// How long the cap race is run.
const SHORT: Duration = Duration::from_secs(2);

// A short receive that stops at TCP's urgent mark (data still queued after
// it) marks the socket drained; the next receive waits for an edge that
// never comes.
backend_test!(
    recv_after_urgent_mark_is_not_stranded,
    |choice: BackendChoice| {
        let port = port(choice);
        let (client, server) = tcp_pair();
        client.set_nodelay(true).unwrap();
        port.associate(&server, 1).unwrap();
        (&client).write_all(b"AB").unwrap();
        // SAFETY: sends one byte we own.
        let rc = unsafe { libc::send(client.as_raw_fd(), b"X".as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(rc, 1);
        (&client).write_all(b"CD").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // A server loop's idle poll: the poller consumes the edges.
        assert!(matches!(
            port.get(Some(Duration::from_millis(50))),
            Err(Error::Timeout)
        ));
        port.submit(Op::recv(&server, Vec::with_capacity(16)), 1)
            .unwrap();
        let c = get(&port);
        assert_eq!(
            c.buf.as_deref(),
            Some(&b"AB"[..]),
            "stops at the urgent mark"
        );
        port.submit(Op::recv(&server, Vec::with_capacity(16)), 2)
            .unwrap();
        match port.get(Some(T)) {
            Ok(c) => assert_eq!(c.buf.as_deref(), Some(&b"CD"[..])),
            Err(e) => panic!("the second receive never completed ({e:?}) though \"CD\" is queued"),
        }
    }
);

// A shutdown queued behind a send stays queued for ever when that send is
// cancelled: nothing retries the write queue until an EPOLLOUT edge.
backend_test!(
    shutdown_behind_a_cancelled_send_runs,
    |choice: BackendChoice| {
        let port = port(choice);
        let (client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        // Fill the socket until a send has to wait.
        let mut waiting = None;
        for _ in 0..1000 {
            match port
                .submit_inline(Op::send(&server, vec![7u8; 256 * 1024]), 1)
                .unwrap()
            {
                Submitted::Done(c) => assert!(c.result.is_ok()),
                Submitted::Pending(id) => {
                    waiting = Some(id);
                    break;
                }
            }
        }
        let Some(send) = waiting else {
            eprintln!("no send waited (io_uring completes sends in the kernel); skip");
            return;
        };
        let shut = port
            .submit(Op::shutdown(&server, std::net::Shutdown::Write), 2)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let _ = port.cancel(send);
        let mut got_shut = false;
        let t0 = Instant::now();
        while !got_shut && t0.elapsed() < T {
            match port.get(Some(Duration::from_millis(200))) {
                Ok(c) if c.op_id() == Some(shut) => {
                    assert!(c.result.is_ok(), "{:?}", c.result);
                    got_shut = true;
                }
                _ => {}
            }
        }
        drop(client);
        assert!(got_shut, "the shutdown behind the cancelled send never ran");
    }
);

fn fill_pipe(w: &std::fs::File) {
    let fd = w.as_raw_fd();
    // SAFETY: fcntl on our descriptor; write of bytes we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        let chunk = [0u8; 4096];
        while libc::write(fd, chunk.as_ptr().cast(), chunk.len()) > 0 {}
        libc::fcntl(fd, libc::F_SETFL, fl);
    }
}

// File jobs pushed faster than idle workers wake are not given a thread of
// their own (`st.idle` is stale until a woken worker re-takes the lock): one
// queued behind two jobs that block waits for them, with 62 threads to spare.
backend_test!(
    file_job_not_starved_by_blocked_jobs,
    |choice: BackendChoice| {
        let port = port(choice);
        let mut f = temp_file();
        f.write_all(&[1u8; 4096]).unwrap();
        port.associate(&f, 9).unwrap();
        let mut fails = 0;
        for round in 0..5 {
            // Two workers, idle.
            for i in 0..2 {
                port.submit(Op::fsync(&f), 100 + i).unwrap();
            }
            get(&port);
            get(&port);
            std::thread::sleep(Duration::from_millis(50));
            let (mut r1, w1) = pipe();
            let (mut r2, w2) = pipe();
            fill_pipe(&w1);
            fill_pipe(&w2);
            port.associate(&w1, 9).unwrap();
            port.associate(&w2, 9).unwrap();
            port.submit(Op::send_file(&w1, &f, 0, 4096), 1).unwrap();
            port.submit(Op::send_file(&w2, &f, 0, 4096), 2).unwrap();
            port.submit(Op::fsync(&f), 3).unwrap();
            // The send_files block until the pipes are drained, which happens
            // only after this: the fsync must come first, whatever the wait.
            let ok = match port.get(Some(T)) {
                Ok(c) => {
                    eprintln!(
                        "round {round}: first completion user_data {} {:?}",
                        c.user_data, c.result
                    );
                    c.user_data == 3
                }
                Err(_) => false,
            };
            if ok {
                // The send_files must still be blocked (else the test proves nothing).
                assert!(
                    port.get(Some(Duration::from_millis(100))).is_err(),
                    "a send_file into a full pipe did not block"
                );
            }
            if !ok {
                fails += 1;
                eprintln!("round {round}: the fsync waited behind two blocked send_files");
            }
            // Unblock the send_files, collect everything.
            let mut sink = vec![0u8; 1 << 20];
            let mut left = if ok { 2 } else { 3 };
            let t0 = Instant::now();
            while left > 0 && t0.elapsed() < T {
                // SAFETY: fcntl on descriptors we own; no memory passed.
                let _ = unsafe { libc::fcntl(r1.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
                // SAFETY: as above.
                let _ = unsafe { libc::fcntl(r2.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
                let _ = r1.read(&mut sink);
                let _ = r2.read(&mut sink);
                if port.get(Some(Duration::from_millis(20))).is_ok() {
                    left -= 1;
                }
            }
            assert_eq!(left, 0, "completions missing after the pipes were drained");
            port.disassociate(&w1).unwrap();
            port.disassociate(&w2).unwrap();
        }
        assert_eq!(
            fails, 0,
            "{fails}/5 rounds: a file job waited behind blocked jobs"
        );
    }
);

// `admit` (table ops, under `Inner`'s lock: load, then add) and
// `submit_socket`'s own path (a lock-free fetch_add) race: both pass the
// cap check and `max_in_flight` is exceeded.
backend_test!(max_in_flight_is_never_exceeded, |choice: BackendChoice| {
    const CAP: usize = 1;
    let port = Arc::new(build(builder(choice).max_in_flight(CAP)));
    let (_c, s) = tcp_pair();
    port.associate(&s, 1).unwrap();
    // Make the socket "blocked" so the next receive takes the own path.
    if let Ok(id) = port.try_submit(Op::recv(&s, Vec::with_capacity(8)), 0) {
        let _ = port.cancel(id);
        let _ = get(&port);
    }
    let s = Arc::new(s);
    let bar = Arc::new(Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let over = Arc::new(AtomicUsize::new(0));
    let rounds = Arc::new(AtomicUsize::new(0));
    let wins = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let t0 = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|t| {
            let (port, s, bar, stop, over, rounds) = (
                port.clone(),
                s.clone(),
                bar.clone(),
                stop.clone(),
                over.clone(),
                rounds.clone(),
            );
            let wins = wins.clone();
            std::thread::spawn(move || loop {
                bar.wait();
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let r = if t == 0 {
                    port.try_submit(Op::recv(&*s, Vec::with_capacity(8)), 1)
                } else {
                    port.try_submit(Op::timeout(Duration::from_secs(60)), 2)
                };
                let id = r.ok();
                wins[t].store(id.is_some() as usize, Ordering::Relaxed);
                bar.wait();
                if t == 0 {
                    let n = wins[0].load(Ordering::Relaxed) + wins[1].load(Ordering::Relaxed);
                    if n > CAP {
                        over.fetch_add(1, Ordering::Relaxed);
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(id) = id {
                    let _ = port.cancel(id);
                }
                bar.wait();
                if t == 0 {
                    let n = wins[0].load(Ordering::Relaxed) + wins[1].load(Ordering::Relaxed);
                    for _ in 0..n {
                        let _ = port.get(Some(T)).expect("a cancelled op's completion");
                    }
                    if t0.elapsed() > SHORT {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let (o, r) = (over.load(Ordering::Relaxed), rounds.load(Ordering::Relaxed));
    eprintln!("{o} of {r} rounds admitted more than max_in_flight = {CAP}");
    assert_eq!(
        o, 0,
        "{o} of {r} rounds admitted more than max_in_flight = {CAP}"
    );
    assert_eq!(port.stats().in_flight, 0);
});

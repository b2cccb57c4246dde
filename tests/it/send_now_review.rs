//! Review of session 19's sends made at once (`Driver::send_now`): what a
//! send `submit_inline` makes at once must never overtake, and what it must
//! leave behind.

use std::io::Read;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use ringport::{BackendChoice, Completion, CompletionPort, Op, Pool, Submitted};

use crate::common::*;

fn finish(port: &CompletionPort, s: Submitted) -> Completion {
    match s {
        Submitted::Done(c) => c,
        Submitted::Pending(_) => get(port),
    }
}

fn read_to_end(mut b: impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match b.read(&mut chunk) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
}

backend_test!(
    a_send_made_at_once_does_not_overtake_a_shutdown_submitted_before_it,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, b) = tcp_pair();
        port.associate(&a, 1).unwrap();
        // The shutdown reaches the kernel in its submit; its completion is
        // not reaped yet, so its lane is still taken.
        port.submit(Op::shutdown(&a, Shutdown::Write), 1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let s = port
            .submit_inline(Op::send(&a, b"late".to_vec()), 2)
            .unwrap();
        let mut send = None;
        if let Submitted::Done(c) = s {
            send = Some(c);
        }
        while send.is_none() || port.stats().in_flight > 0 {
            let c = get(&port);
            if c.user_data == 2 {
                send = Some(c);
            }
        }
        assert_errno(&send.unwrap().result, libc::EPIPE);
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(read_to_end(&b).is_empty(), "no byte after the FIN");
    }
);

backend_test!(
    a_send_made_at_once_waits_behind_one_a_pool_thread_holds_unsubmitted,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, b) = tcp_pair();
        let a = Arc::new(a);
        port.associate(&*a, 1).unwrap();
        let (held_tx, held_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = std::sync::Mutex::new(go_rx);
        let (done_tx, done_rx) = mpsc::channel::<(u64, std::io::Result<usize>)>();
        let done_tx = std::sync::Mutex::new(done_tx);
        let sock = a.clone();
        let pool = Pool::builder()
            .threads(1)
            .spawn(&port, move |port, c| {
                if c.user_data == 100 {
                    // Batched: this SQE waits for the thread's next `get`.
                    port.submit(Op::send(&*sock, b"first-".to_vec()), 1)
                        .unwrap();
                    held_tx.send(()).unwrap();
                    go_rx.lock().unwrap().recv().unwrap();
                } else {
                    let r = c.result;
                    done_tx.lock().unwrap().send((c.user_data, r)).unwrap();
                }
            })
            .unwrap();
        port.post(0, 100, 0).unwrap();
        held_rx.recv().unwrap();
        let s = port
            .submit_inline(Op::send(&*a, b"second".to_vec()), 2)
            .unwrap();
        let inline_done = matches!(s, Submitted::Done(_));
        go_tx.send(()).unwrap();
        let want = if inline_done { 1 } else { 2 };
        for _ in 0..want {
            let (_, r) = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(r.is_ok());
        }
        pool.shutdown();
        drop(port);
        drop(a);
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(read_to_end(&b), b"first-second".to_vec());
    }
);

backend_test!(
    a_send_with_a_timeout_made_at_once_leaves_no_timer_behind,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, mut b) = tcp_pair();
        port.associate(&a, 1).unwrap();
        let s = port
            .submit_inline(
                Op::send(&a, b"timed".to_vec()).timeout_after(Duration::from_millis(20)),
                3,
            )
            .unwrap();
        let c = finish(&port, s);
        assert_eq!(c.result.as_ref().ok().copied(), Some(5));
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"timed");
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(
            port.get(Some(Duration::from_millis(50))),
            Err(ringport::Error::Timeout)
        ));
        assert_eq!(port.stats().in_flight, 0);
    }
);

backend_test!(
    seqpacket_sends_made_at_once_keep_their_records_in_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: both are fresh descriptors we own.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        port.associate(&a, 1).unwrap();
        for i in 0..20u8 {
            let s = port
                .submit_inline(Op::send(&a, vec![i; 10 + i as usize]), 1)
                .unwrap();
            let c = finish(&port, s);
            assert_eq!(c.result.as_ref().ok().copied(), Some(10 + i as usize));
        }
        for i in 0..20u8 {
            let mut buf = [0u8; 64];
            // SAFETY: recv writes at most 64 bytes into `buf`.
            let n = unsafe { libc::recv(b.as_raw_fd(), buf.as_mut_ptr().cast(), 64, 0) };
            assert_eq!(n, 10 + i as isize);
            assert!(buf[..n as usize].iter().all(|&x| x == i));
        }
    }
);

backend_test!(
    closing_the_port_while_threads_send_at_once_neither_hangs_nor_panics,
    |choice: BackendChoice| {
        let port = Arc::new(port(choice));
        let mut threads = Vec::new();
        let mut readers = Vec::new();
        for t in 0..3u64 {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            port.associate(&a, t).unwrap();
            readers.push(std::thread::spawn(move || read_to_end(&b).len()));
            let port = port.clone();
            threads.push(std::thread::spawn(move || {
                let mut sent = 0usize;
                loop {
                    match port.submit_inline(Op::send(&a, vec![t as u8; 64]), t) {
                        Ok(Submitted::Done(c)) => sent += c.result.unwrap_or(0),
                        Ok(Submitted::Pending(_)) => {
                            match port.get(Some(Duration::from_secs(10))) {
                                Ok(c) => sent += c.result.unwrap_or(0),
                                Err(_) => return sent,
                            }
                        }
                        Err(_) => return sent,
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(100));
        port.close();
        for t in threads {
            t.join().unwrap();
        }
        drop(port);
        for r in readers {
            r.join().unwrap();
        }
    }
);

// `submit_inline`'s rustdoc said a send on io_uring is made at once "when
// no batch would carry it (the calling thread holds no batched submissions
// and no completion is queued)", and left out the third condition the
// second commit added (`send_now_pays`: the last reap gathered at most one
// completion): here nothing is queued and this thread holds nothing, yet the
// send was `Pending`. The rustdoc now names it; this checks both halves.
backend_test!(
    submit_inline_doc_names_every_condition_of_a_send_made_at_once,
    |choice: BackendChoice| {
        let port = port(choice);
        let uring = port.backend() != ringport::BackendKind::Epoll;
        let (a, mut b) = tcp_pair();
        port.associate(&a, 1).unwrap();
        // Two completions ready in the kernel; one `get_many` reaps both and
        // hands both back: nothing is left queued.
        port.submit(Op::timeout(Duration::from_millis(1)), 1)
            .unwrap();
        port.submit(Op::timeout(Duration::from_millis(1)), 2)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut out = Vec::new();
        while out.len() < 2 {
            port.get_many(&mut out, 2, Some(T)).unwrap();
        }
        let reaped_two = out.len() == 2;
        // Nothing queued, this thread holds no batched submission, nothing
        // in the socket's send lane; but the last reap gathered two.
        let s = port.submit_inline(Op::send(&a, b"x".to_vec()), 3).unwrap();
        if uring && reaped_two {
            assert!(
                matches!(s, Submitted::Pending(_)),
                "io_uring: after a reap of two the send rides the ring"
            );
        } else if !uring {
            assert!(matches!(s, Submitted::Done(_)), "epoll tries it at once");
        }
        // Its completion is the next reap's only one (io_uring): light load.
        let c = finish(&port, s);
        assert_eq!(c.result.as_ref().ok().copied(), Some(1));
        let s = port.submit_inline(Op::send(&a, b"y".to_vec()), 4).unwrap();
        assert!(
            matches!(s, Submitted::Done(_)),
            "after a reap of at most one, with nothing queued or held: Done"
        );
        let mut got = [0u8; 2];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"xy");
    }
);

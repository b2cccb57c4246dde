//! Many sockets ready at once: every completion arrives, with its own socket's
//! data. On epoll the poller acts on a few of one `epoll_wait`'s edges per poll
//! and keeps the rest (`sys/epoll/ready.rs`); a kept edge must never wait behind
//! a poll that sleeps, or be lost, or be mistaken for another socket's.

use std::io::Write;
use std::time::Duration;

use ringport::{BackendChoice, BackendKind, Error, Op};

use crate::common::*;

const N: usize = 200;

/// `N` connected pairs, the first of each associated with key `i` and a
/// receive in flight; then every peer writes its index, so all `N` are ready
/// at once.
fn burst(port: &ringport::CompletionPort) -> Vec<(std::net::TcpStream, std::net::TcpStream)> {
    let mut pairs: Vec<_> = (0..N).map(|_| tcp_pair()).collect();
    for (i, (a, _)) in pairs.iter().enumerate() {
        port.associate(a, i as u64).unwrap();
        port.submit(Op::recv(a, Vec::with_capacity(16)), i as u64)
            .unwrap();
    }
    assert!(
        matches!(port.get(Some(Duration::ZERO)), Err(Error::Timeout)),
        "nothing is ready before the peers write"
    );
    for (i, (_, b)) in pairs.iter_mut().enumerate() {
        b.write_all(&(i as u32).to_le_bytes()).unwrap();
    }
    pairs
}

/// Checks one receive's completion: its own socket's bytes; marks it seen.
fn check(c: ringport::Completion, seen: &mut [bool]) {
    let i = c.key as usize;
    assert_eq!(c.user_data, c.key, "key and user_data belong together");
    assert_eq!(
        c.result.as_ref().ok().copied(),
        Some(4),
        "socket {i}: {:?}",
        c.result
    );
    let got = c.buf.as_deref().expect("the buffer comes back");
    assert_eq!(
        got,
        (i as u32).to_le_bytes(),
        "socket {i} got another socket's bytes"
    );
    assert!(
        !std::mem::replace(&mut seen[i], true),
        "socket {i} completed twice"
    );
}

backend_test!(
    every_socket_of_a_burst_completes_without_waiting,
    |choice: BackendChoice| {
        let port = port(choice);
        let _pairs = burst(&port);
        let mut seen = vec![false; N];
        for k in 0..N {
            // On epoll every edge is in the kernel's ready list by now (a
            // loopback write delivers before it returns), so each `get` must
            // find a completion without waiting: one kept back from an earlier
            // poll included. io_uring's receives run as task work the next
            // kernel entry starts, which a zero wait may not cover.
            let wait = if port.backend() == BackendKind::Epoll {
                Duration::ZERO
            } else {
                T
            };
            match port.get(Some(wait)) {
                Ok(c) => check(c, &mut seen),
                Err(e) => panic!("completion {k} of {N}: {e:?} (stats {:?})", port.stats()),
            }
        }
        assert!(matches!(
            port.get(Some(Duration::ZERO)),
            Err(Error::Timeout)
        ));
    }
);

backend_test!(
    a_burst_split_between_two_threads_completes_once_each,
    |choice: BackendChoice| {
        let port = port(choice);
        let _pairs = burst(&port);
        // Each thread takes until nothing comes for 2 s (a bound on a stall,
        // not a speed target: every completion is ready from the start).
        let take = |port: &ringport::CompletionPort| {
            let mut got = Vec::new();
            loop {
                match port.get(Some(Duration::from_secs(2))) {
                    Ok(c) => got.push(c),
                    Err(Error::Timeout) => return got,
                    Err(e) => panic!("get: {e:?}"),
                }
            }
        };
        let (mine, theirs) = std::thread::scope(|s| {
            let other = s.spawn(|| take(&port));
            (take(&port), other.join().unwrap())
        });
        let mut seen = vec![false; N];
        for c in mine.into_iter().chain(theirs) {
            check(c, &mut seen);
        }
        let missing: Vec<_> = (0..N).filter(|i| !seen[*i]).collect();
        assert!(missing.is_empty(), "never completed: {missing:?}");
    }
);

backend_test!(
    a_ready_socket_behind_idle_ones_is_seen_by_a_zero_wait,
    |choice: BackendChoice| {
        let port = port(choice);
        // Sockets with nothing queued: on epoll each has an edge (writable,
        // from the moment it joins the epoll set) that finishes nothing.
        let idle: Vec<_> = (0..3 * 8).map(|_| tcp_pair()).collect();
        for (i, (a, _)) in idle.iter().enumerate() {
            port.associate(a, 1000 + i as u64).unwrap();
        }
        let (a, mut b) = tcp_pair();
        port.associate(&a, 7).unwrap();
        port.submit(Op::recv(&a, Vec::with_capacity(16)), 7)
            .unwrap();
        b.write_all(b"abcd").unwrap();
        // Its edge comes after all the idle ones'; a zero wait must still find
        // the receive's completion (epoll: a loopback write is readable when it
        // returns; io_uring's receive needs a kernel entry, so it may wait).
        let wait = if port.backend() == BackendKind::Epoll {
            Duration::ZERO
        } else {
            T
        };
        match port.get(Some(wait)) {
            Ok(c) => {
                assert_eq!((c.key, c.user_data), (7, 7));
                assert_eq!(c.buf.as_deref(), Some(&b"abcd"[..]));
            }
            Err(e) => panic!("a finished receive behind idle sockets: {e:?}"),
        }
        drop(idle);
    }
);

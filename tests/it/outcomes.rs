//! Every outcome of `get`: success, an I/O error with the real errno, a timeout, a
//! closed port; and the port's own errors for association mistakes.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Once;
use std::time::Duration;

use ringport::{BackendChoice, Error, Op};

use crate::common::*;

backend_test!(
    read_on_a_write_only_file_is_ebadf,
    |choice: BackendChoice| {
        let port = port(choice);
        let file = write_only_file();
        port.associate(&file, 1).unwrap();
        port.submit(Op::read_at(&file, Vec::with_capacity(16), 0), 7)
            .unwrap();
        let c = get(&port);
        assert_eq!((c.key, c.user_data), (1, 7));
        assert_errno(&c.result, libc::EBADF);
        assert!(!c.is_cancelled());
        assert!(c.buf.is_some(), "a failed read still hands its buffer back");
    }
);

/// SIGPIPEs delivered to this process since the handler was installed.
static SIGPIPES: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_sigpipe(_: libc::c_int) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

/// Rust ignores SIGPIPE in every binary, which would hide a missing MSG_NOSIGNAL;
/// count them instead (harmless to every other test).
fn install_sigpipe_counter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid value to fill in; the handler
        // only touches an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = count_sigpipe as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGPIPE, &sa, std::ptr::null_mut()), 0);
        }
    });
}

/// Makes `client` reset the connection (SO_LINGER 0, then close).
fn reset(client: std::net::TcpStream) {
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
}

backend_test!(
    recv_after_peer_reset_is_econnreset,
    |choice: BackendChoice| {
        let port = port(choice);
        let (client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        // Pending when the reset arrives.
        port.submit(Op::recv(&server, Vec::with_capacity(64)), 1)
            .unwrap();
        reset(client);
        let c = get(&port);
        assert_errno(&c.result, libc::ECONNRESET);

        // And one submitted after the reset has (almost certainly) arrived: the first
        // recv on a reset socket reports it, whether it was pending or not.
        let (client, server2) = tcp_pair();
        port.associate(&server2, 2).unwrap();
        reset(client);
        std::thread::sleep(Duration::from_millis(20));
        port.submit(Op::recv(&server2, Vec::with_capacity(64)), 2)
            .unwrap();
        let c = get(&port);
        assert_errno(&c.result, libc::ECONNRESET);
    }
);

backend_test!(
    send_to_a_reset_peer_is_epipe_or_econnreset_never_sigpipe,
    |choice: BackendChoice| {
        install_sigpipe_counter();
        let port = port(choice);
        let (client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        reset(client);
        // Wait until the reset has certainly arrived (a plain recv reports it).
        port.submit(Op::recv(&server, Vec::with_capacity(8)), 0)
            .unwrap();
        assert_errno(&get(&port).result, libc::ECONNRESET);

        let before = SIGPIPES.load(Ordering::SeqCst);
        for i in 1..=3 {
            port.submit(Op::send(&server, vec![7; 1024]), i).unwrap();
            let c = get(&port);
            let errno = c.result.as_ref().err().and_then(|e| e.raw_os_error());
            assert!(
                errno == Some(libc::EPIPE) || errno == Some(libc::ECONNRESET),
                "send {i} to a reset peer: expected EPIPE or ECONNRESET, got {:?}",
                c.result
            );
            assert_eq!(
                c.buf.as_deref(),
                Some(&[7u8; 1024][..]),
                "the buffer comes back"
            );
        }
        assert_eq!(
            SIGPIPES.load(Ordering::SeqCst),
            before,
            "a send raised SIGPIPE (MSG_NOSIGNAL missing)"
        );
    }
);

backend_test!(
    get_times_out_with_the_timeout_variant,
    |choice: BackendChoice| {
        let port = port(choice);
        match port.get(Some(Duration::from_millis(30))) {
            Err(Error::Timeout) => {}
            other => panic!("expected Err(Timeout), got {other:?}"),
        }
        match port.get(Some(Duration::ZERO)) {
            Err(Error::Timeout) => {}
            other => panic!("a zero timeout only looks: expected Err(Timeout), got {other:?}"),
        }
        // A pending operation that does not complete is still a timeout.
        let (_client, server) = tcp_pair();
        port.associate(&server, 1).unwrap();
        port.submit(Op::recv(&server, Vec::with_capacity(8)), 1)
            .unwrap();
        match port.get(Some(Duration::from_millis(30))) {
            Err(Error::Timeout) => {}
            other => panic!("expected Err(Timeout) with an idle recv pending, got {other:?}"),
        }
        let e: std::io::Error = Error::Timeout.into();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // The port still works after a timeout.
        port.post(1, 2, 3).unwrap();
        assert_eq!(get(&port).result.unwrap(), 3);
    }
);

backend_test!(get_on_a_closed_port_is_closed, |choice: BackendChoice| {
    let port = port(choice);
    port.post(1, 1, 1).unwrap();
    port.close();
    assert!(port.is_closed());
    for timeout in [None, Some(Duration::ZERO), Some(T)] {
        match port.get(timeout) {
            Err(Error::Closed) => {}
            other => {
                panic!("get({timeout:?}) on a closed port: expected Err(Closed), got {other:?}")
            }
        }
    }
    let mut out = Vec::new();
    assert!(matches!(
        port.get_many(&mut out, 8, None),
        Err(Error::Closed)
    ));
    assert!(out.is_empty(), "queued completions are dropped by close");
    port.close(); // idempotent
});

backend_test!(
    threads_blocked_in_get_all_wake_with_closed,
    |choice: BackendChoice| {
        for round in 0..20 {
            let port = build(builder(choice).concurrency(2));
            let (tx, rx) = mpsc::channel();
            let threads = 4;
            for _ in 0..threads {
                let port = port.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let r = port.get(None);
                    let _ = tx.send(r.map(|c| c.user_data));
                });
            }
            // Let them reach the port (the waiters and the poller); a thread that comes
            // late sees the port closed, which is the same outcome.
            std::thread::sleep(Duration::from_millis(if round % 2 == 0 { 20 } else { 0 }));
            port.close();
            for i in 0..threads {
                match rx.recv_timeout(T) {
                Ok(Err(Error::Closed)) => {}
                Ok(other) => panic!("round {round}: thread {i}: expected Err(Closed), got {other:?}"),
                Err(_) => panic!(
                    "round {round}: only {i} of {threads} threads blocked in get(None) woke after close \
                     (stats {:?})",
                    port.stats()
                ),
            }
            }
        }
    }
);

backend_test!(
    associate_twice_and_unassociated_handles_are_errors,
    |choice: BackendChoice| {
        let port = port(choice);
        let (client, server) = tcp_pair();
        let fd = server.as_raw_fd();
        match port.submit(Op::recv(&server, Vec::with_capacity(8)), 1) {
            Err(Error::Unassociated(x)) => assert_eq!(x, fd),
            other => {
                panic!("recv on an unassociated socket: expected Unassociated({fd}), got {other:?}")
            }
        }
        match port.try_submit(Op::send(&server, b"x".to_vec()), 1) {
            Err(Error::Unassociated(x)) => assert_eq!(x, fd),
            other => panic!(
                "try_submit on an unassociated socket: expected Unassociated({fd}), got {other:?}"
            ),
        }
        port.associate(&server, 1).unwrap();
        match port.associate(&server, 2) {
            Err(Error::AlreadyAssociated(x)) => assert_eq!(x, fd),
            other => panic!("second associate: expected AlreadyAssociated({fd}), got {other:?}"),
        }
        // The first key stands.
        port.submit(Op::send(&server, b"k".to_vec()), 3).unwrap();
        assert_eq!(get(&port).key, 1);
        port.disassociate(&server).unwrap();
        assert!(matches!(port.disassociate(&server), Err(Error::Unassociated(x)) if x == fd));
        assert!(
            matches!(port.submit(Op::send(&server, b"x".to_vec()), 4), Err(Error::Unassociated(x)) if x == fd)
        );
        // Re-associating after disassociate is allowed, with a new key.
        port.associate(&server, 9).unwrap();
        port.submit(Op::send(&server, b"z".to_vec()), 5).unwrap();
        assert_eq!(get(&port).key, 9);
        drop(client);
        // Nothing was submitted by the failed calls.
        assert_eq!(port.stats().in_flight, 0);
    }
);

//! Session 17's changes at their edges (a review of them): an `O_PATH`
//! open and a leased file after the non-blocking first try of `openat`, and
//! the io_uring receive lane as multishot receives take it (parked, cancelled,
//! resubmitted, closed, on UDP); each on both backends.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ringport::fs::OpenOptions;
use ringport::{BackendChoice, Op};

use crate::common::*;
use crate::rt::{block, runtime};

// Op::openat with O_PATH: io_uring's OPENAT opens it; the epoll file worker
// (open_like_io_uring) opens it with O_NONBLOCK, then F_SETFL on an O_PATH
// descriptor fails EBADF, and the open is reported failed.
backend_test!(openat_o_path_opens, |choice: BackendChoice| {
    let port = port(choice);
    let dir = TempDir::new("opath");
    let file = dir.path("f");
    std::fs::write(&file, b"x").unwrap();
    for (what, path, flags) in [
        (
            "dir",
            dir.dir().to_path_buf(),
            libc::O_PATH | libc::O_DIRECTORY,
        ),
        ("file", file.clone(), libc::O_PATH),
    ] {
        port.submit(Op::openat(None, &path, flags, 0), 1).unwrap();
        let mut c = get(&port);
        assert!(
            c.result.is_ok(),
            "{choice:?}: openat(O_PATH) of a {what} failed: {:?}",
            c.result
        );
        assert!(c.take_fd().is_some());
    }
});

// ringport::fs open of a file another open file description holds a read
// lease on: open(2) (blocking) waits for the lease to be given up; the new
// open_without_waiting (O_NONBLOCK first, no retry) fails EWOULDBLOCK at
// once. io_uring's OPENAT and the epoll worker retry without O_NONBLOCK on
// EAGAIN; fs.rs does not.
backend_test!(fs_open_waits_for_lease_break, |choice: BackendChoice| {
    // The lease holder is this process: SIGIO (sent on a lease break) would
    // kill it.
    // SAFETY: setting a signal's disposition to ignore.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    let dir = TempDir::new("lease");
    let path = dir.path("f");
    std::fs::write(&path, b"x").unwrap();
    let holder = std::fs::File::open(&path).unwrap();
    // SAFETY: fcntl on a descriptor we own.
    let rc = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    if rc != 0 {
        eprintln!("skipped: F_SETLEASE: {}", std::io::Error::last_os_error());
        return;
    }
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        holder
    });
    let rt = runtime(choice);
    let p = path.clone();
    let t0 = Instant::now();
    let r = block(rt.handle(), async move {
        OpenOptions::new()
            .write(true)
            .open(&p)
            .await
            .map(drop)
            .map_err(|e| format!("{e} ({:?})", e.kind()))
    });
    let took = t0.elapsed();
    drop(releaser.join());
    assert!(
        r.is_ok(),
        "{choice:?}: opening for write a file with a read lease failed after {took:?}: {r:?} (std::fs::OpenOptions waits for the lease break)"
    );
});

// Control for the above: the port's own Op::openat of the same situation
// waits and succeeds (kernel OPENAT / worker retry on EAGAIN).
backend_test!(
    port_openat_waits_for_lease_break,
    |choice: BackendChoice| {
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
        let dir = TempDir::new("lease2");
        let path = dir.path("f");
        std::fs::write(&path, b"x").unwrap();
        let holder = std::fs::File::open(&path).unwrap();
        // SAFETY: as above.
        let rc = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
        if rc != 0 {
            eprintln!("skipped: F_SETLEASE: {}", std::io::Error::last_os_error());
            return;
        }
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: as above.
            unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
            holder
        });
        let port = port(choice);
        port.submit(Op::openat(None, &path, libc::O_WRONLY, 0), 1)
            .unwrap();
        let c = get(&port);
        drop(releaser.join());
        assert!(c.result.is_ok(), "{choice:?}: {:?}", c.result);
    }
);

/// The next completion with `user_data` `ud`, others kept aside.
fn get_ud(
    port: &ringport::CompletionPort,
    ud: u64,
    aside: &mut Vec<ringport::Completion>,
) -> ringport::Completion {
    loop {
        let c = get(port);
        if c.user_data == ud {
            return c;
        }
        aside.push(c);
    }
}

// A one-shot receive busy on a TCP socket, a multishot receive parked behind
// it (io_uring), cancelled while parked: it ends; the pool's buffer comes
// back (a later multishot receives with a one-buffer pool); the busy receive
// still gets the first bytes.
backend_test!(
    parked_multishot_cancel_returns_buffer,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(1, 64).unwrap();
        let (mut c, s) = tcp_pair();
        port.associate(&s, 1).unwrap();
        port.submit(Op::recv(&s, Vec::with_capacity(64)), 1)
            .unwrap();
        let m = port.submit(Op::recv_multishot(&s, &pool), 2).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        port.cancel(m).ok();
        let mut aside = Vec::new();
        let end = get_ud(&port, 2, &mut aside);
        assert!(!end.more(), "{choice:?}: {:?}", end.result);
        c.write_all(b"one").unwrap();
        let r = get_ud(&port, 1, &mut aside);
        assert_eq!(r.buf.as_deref(), Some(&b"one"[..]), "{choice:?}");
        port.submit(Op::recv_multishot(&s, &pool), 3).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        c.write_all(b"two").unwrap();
        let mut got = get_ud(&port, 3, &mut aside);
        assert!(
        got.result.is_ok() && got.more(),
        "{choice:?}: the multishot after the cancelled parked one: {:?} more={} (pool buffer not given back?)",
        got.result,
        got.more()
    );
        assert_eq!(got.take_pooled().as_deref(), Some(&b"two"[..]));
    }
);

// A multishot receive armed on a TCP socket with a one-shot receive parked
// behind it. Several messages all go to the multishot (an emulated one keeps
// the lane across its resubmits); once it is cancelled, the one-shot receive
// gets the next bytes (the lane is released, once).
backend_test!(
    multishot_keeps_lane_then_releases,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(8, 64).unwrap();
        let (mut c, s) = tcp_pair();
        port.associate(&s, 1).unwrap();
        let m = port.submit(Op::recv_multishot(&s, &pool), 2).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        port.submit(Op::recv(&s, Vec::with_capacity(64)), 1)
            .unwrap();
        let mut aside = Vec::new();
        for msg in [&b"a1"[..], b"b22", b"c333"] {
            c.write_all(msg).unwrap();
            let mut g = get(&port);
            assert_eq!(
                g.user_data, 2,
                "{choice:?}: {msg:?} went to {} {:?}",
                g.user_data, g.result
            );
            assert!(g.more());
            assert_eq!(g.take_pooled().as_deref(), Some(msg));
            std::thread::sleep(Duration::from_millis(10));
        }
        port.cancel(m).unwrap();
        let end = get_ud(&port, 2, &mut aside);
        assert!(!end.more());
        c.write_all(b"after").unwrap();
        let r = get_ud(&port, 1, &mut aside);
        assert_eq!(r.buf.as_deref(), Some(&b"after"[..]), "{choice:?}");
        // And the lane is free again: another receive goes straight in.
        port.submit(Op::recv(&s, Vec::with_capacity(64)), 4)
            .unwrap();
        c.write_all(b"again").unwrap();
        let r = get_ud(&port, 4, &mut aside);
        assert_eq!(r.buf.as_deref(), Some(&b"again"[..]), "{choice:?}");
    }
);

// Closing a socket (Op::close) with a multishot busy and a recv and a
// multishot parked: every operation ends, nothing hangs.
backend_test!(close_with_parked_multishot, |choice: BackendChoice| {
    let port = port(choice);
    let pool = port.buffer_pool(4, 64).unwrap();
    let (_c, s) = tcp_pair();
    port.associate(&s, 1).unwrap();
    port.submit(Op::recv_multishot(&s, &pool), 2).unwrap();
    port.submit(Op::recv(&s, Vec::with_capacity(64)), 3)
        .unwrap();
    port.submit(Op::recv_multishot(&s, &pool), 4).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    port.submit(Op::close(std::os::fd::OwnedFd::from(s)), 5)
        .unwrap();
    let mut ended = std::collections::BTreeSet::new();
    while ended.len() < 4 {
        let c = get(&port);
        if !c.more() {
            ended.insert(c.user_data);
        }
    }
    // The pool is whole again: 4 buffers to take.
    let (mut c2, s2) = tcp_pair();
    port.associate(&s2, 1).unwrap();
    port.submit(Op::recv_multishot(&s2, &pool), 6).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    c2.write_all(b"x").unwrap();
    let g = get(&port);
    assert!(
        g.result.is_ok() && g.user_data == 6,
        "{choice:?}: {:?}",
        g.result
    );
});

// UDP: a multishot receive takes no lane; a one-shot recv submitted after it
// is not parked (both are in the kernel; a datagram goes to one of them).
backend_test!(udp_multishot_takes_no_lane, |choice: BackendChoice| {
    let port = port(choice);
    let pool = port.buffer_pool(4, 64).unwrap();
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    port.associate(&u, 1).unwrap();
    let m = port.submit(Op::recv_multishot(&u, &pool), 2).unwrap();
    port.submit(Op::recv_from(&u, Vec::with_capacity(64)), 3)
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    port.cancel(m).unwrap();
    let mut aside = Vec::new();
    let _ = get_ud(&port, 2, &mut aside);
    peer.send_to(b"d", u.local_addr().unwrap()).unwrap();
    let r = get_ud(&port, 3, &mut aside);
    assert!(r.result.is_ok(), "{choice:?}: {:?}", r.result);
});

// send_file into a pipe nobody reads (epoll: now on a file worker; io_uring:
// splice on io-wq), then a cancel: the operation must end (ECANCELED or a
// short count), not stay blocked until a reader comes.
backend_test!(send_file_into_full_pipe_cancels, |choice: BackendChoice| {
    let port = port(choice);
    let dir = TempDir::new("sfpipe");
    let path = dir.path("src");
    std::fs::write(&path, vec![7u8; 4 << 20]).unwrap();
    let src = std::fs::File::open(&path).unwrap();
    let (r, w) = pipe();
    port.associate(&w, 1).unwrap();
    port.associate(&src, 1).unwrap();
    let id = port.submit(Op::send_file(&w, &src, 0, 4 << 20), 9).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _ = port.cancel(id);
    let t0 = Instant::now();
    let mut c = None;
    while t0.elapsed() < Duration::from_secs(3) {
        if let Ok(got) = port.get(Some(Duration::from_millis(100))) {
            c = Some(got);
            break;
        }
    }
    drop(r); // unblocks a stuck job (EPIPE) so the test can end
    assert!(
        c.is_some(),
        "{choice:?}: a cancelled send_file into a full pipe did not end within 3 s"
    );
});

//! Backend parity (issue 4): each test states what both backends must do
//! alike, where a review (session 17) found them apart; the backend named in
//! each comment is the one that differed before its fix.
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ringport::{BackendChoice, Op};

use crate::common::*;

const SHORT: Duration = Duration::from_millis(500);

// A one-shot receive waiting on a TCP socket, then a multishot receive on the
// same socket: the bytes that arrive go to the one submitted first (as
// `Op::recv` promises for receives on one stream socket, and as epoll does).
backend_test!(
    parity_recv_then_multishot_keep_submission_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(4, 64).unwrap();
        let (mut c, s) = tcp_pair();
        port.associate(&s, 1).unwrap();
        port.submit(Op::recv(&s, Vec::with_capacity(64)), 1)
            .unwrap();
        port.submit(Op::recv_multishot(&s, &pool), 2).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(b"first").unwrap();
        let got = get(&port);
        assert_eq!(
        got.user_data, 1,
        "{choice:?}: the multishot receive submitted second took the first bytes ({:?}); the one-shot receive submitted first still waits",
        got.result
    );
    }
);

// A multishot receive armed on a TCP socket, then a one-shot receive (with a
// linked timeout): epoll keeps the one-shot behind the multishot, which takes
// the bytes; io_uring lets the later one-shot receive take them.
backend_test!(
    parity_multishot_then_recv_keep_submission_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(4, 64).unwrap();
        let (mut c, s) = tcp_pair();
        port.associate(&s, 1).unwrap();
        port.submit(Op::recv_multishot(&s, &pool), 2).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        port.submit(
            Op::recv(&s, Vec::with_capacity(64)).timeout_after(Duration::from_millis(600)),
            1,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(b"abc").unwrap();
        let got = get(&port);
        assert_eq!(
        (got.user_data, got.more()),
        (2, true),
        "{choice:?}: bytes went to the one-shot receive submitted after the armed multishot: {:?}",
        got.result
    );
    }
);

// A receive then a `recv_from` waiting on one TCP socket: filled in
// submission order (epoll: yes; io_uring: `recv_from` takes no lane and
// overtakes).
backend_test!(
    parity_recv_then_recv_from_on_tcp_keep_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut c, s) = tcp_pair();
        port.associate(&s, 1).unwrap();
        port.submit(Op::recv(&s, Vec::with_capacity(64)), 1)
            .unwrap();
        port.submit(Op::recv_from(&s, Vec::with_capacity(64)), 2)
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(b"first").unwrap();
        let a = get(&port);
        c.write_all(b"second").unwrap();
        let b = get(&port);
        let got = [(a.user_data, a.buf.clone()), (b.user_data, b.buf.clone())];
        assert_eq!(
            got,
            [(1, Some(b"first".to_vec())), (2, Some(b"second".to_vec()))],
            "{choice:?}: out of submission order"
        );
    }
);

// `send_file` into an associated pipe that is full: `submit` must not block
// (SPEC §1: "never blocks the caller"). epoll makes a blocking `sendfile`
// on the submitting thread (the pipe is not registered, so not made
// non-blocking) and waits for the reader.
backend_test!(
    parity_send_file_into_a_full_pipe_does_not_block_submit,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut r, w) = pipe();
        port.associate(&w, 1).unwrap();
        // Fill the pipe, then leave it blocking, as the program had it.
        // SAFETY: fcntl on a descriptor we own; no memory passed.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let mut filled = 0usize;
        // SAFETY: writes 4096 bytes from a live array to a descriptor we own.
        while unsafe { libc::write(w.as_raw_fd(), [0u8; 4096].as_ptr().cast(), 4096) } > 0 {
            filled += 4096;
        }
        // SAFETY: as above.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) };
        let mut f = temp_file();
        f.write_all(&[1u8; 8192]).unwrap();
        // The reader drains the pipe once `submit` has returned, or after
        // `T` if it has not (it blocked until there was room).
        let (returned_tx, returned_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let returned = returned_rx.recv_timeout(T).is_ok();
            let mut buf = vec![0u8; filled + 8192];
            let mut got = 0;
            while got < buf.len() {
                match r.read(&mut buf[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            returned
        });
        port.submit(Op::send_file(&w, &f, 0, 8192), 7).unwrap();
        let _ = returned_tx.send(());
        let c = get(&port);
        let returned = reader.join().unwrap();
        assert!(
            returned,
            "{choice:?}: submit blocked until the reader drained the pipe; completion {:?}",
            c.result
        );
        assert_eq!(c.result.as_ref().ok(), Some(&8192), "{choice:?}");
    }
);

fn fifo() -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("parity-fifo");
    let path = dir.path("f");
    let cp = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(cp.as_ptr(), 0o600) }, 0);
    (dir, path)
}

// Opens a FIFO with no one at the other end through the port with `flags`:
// the result, or `None` if nothing came back within `T` (the open waits for
// the other end: then one is opened, to let it go).
fn open_fifo_alone(choice: BackendChoice, flags: i32) -> Option<Result<usize, Option<i32>>> {
    let port = port(choice);
    let (_dir, path) = fifo();
    port.submit(Op::openat(None, &path, flags, 0), 1).unwrap();
    let got = match port.get(Some(T)) {
        Ok(c) => Some(c.result.as_ref().map_err(|e| e.raw_os_error()).copied()),
        Err(_) => {
            use std::os::unix::fs::OpenOptionsExt;
            let _peer = std::fs::OpenOptions::new()
                .read(flags != libc::O_RDONLY)
                .write(flags == libc::O_RDONLY)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
            let _ = port.get(Some(T));
            None
        }
    };
    if let Some(Ok(fd)) = got {
        // SAFETY: the descriptor the open made, which nothing else holds.
        unsafe { libc::close(fd as i32) };
    }
    got
}

// `openat(O_RDONLY)` of a FIFO with no writer: io_uring's first attempt is
// non-blocking (the kernel adds O_NONBLOCK, and clears it on the new file),
// so it opens at once; epoll's file worker used to wait in open(2) for a
// writer, where no cancel or linked timeout could end it.
backend_test!(
    parity_openat_fifo_for_reading_without_a_writer,
    |choice: BackendChoice| {
        let got = open_fifo_alone(choice, libc::O_RDONLY);
        assert!(
            matches!(got, Some(Ok(_))),
            "{choice:?}: an open of a FIFO for reading with no writer: {got:?} \
             (None: it waited for one)"
        );
    }
);

// `openat(O_WRONLY)` of a FIFO with no reader: `ENXIO` at once on both.
backend_test!(
    parity_openat_fifo_for_writing_without_a_reader,
    |choice: BackendChoice| {
        let got = open_fifo_alone(choice, libc::O_WRONLY);
        assert_eq!(
            got,
            Some(Err(Some(libc::ENXIO))),
            "{choice:?}: an open of a FIFO for writing with no reader (None: it waited for one)"
        );
    }
);

// `Op::writable` on a socket whose peer has closed: the result is the poll
// bits, same on both (epoll's `poll(2)` gives `POLLOUT`; io_uring's
// `POLL_ADD` adds `POLLRDHUP`, 0x2000, which was not asked for).
backend_test!(
    parity_writable_bits_after_the_peer_closed,
    |choice: BackendChoice| {
        let port = port(choice);
        let (c, s) = tcp_pair();
        port.associate(&s, 1).unwrap();
        drop(c);
        std::thread::sleep(Duration::from_millis(50));
        port.submit(Op::writable(&s), 1).unwrap();
        let r = get(&port).result.unwrap();
        assert_eq!(
            r & !(libc::POLLOUT | libc::POLLERR | libc::POLLHUP) as usize,
            0,
            "{choice:?}: writable reported bits beyond POLLOUT/POLLERR/POLLHUP: {r:#x}"
        );
        let _ = s.shutdown(Shutdown::Both);
    }
);

// A send waiting for room on a TCP socket, then a `send_to` on the same
// (connected) socket: the bytes go out in submission order on epoll (one
// write queue); on io_uring `send_to` takes no lane and can overtake.
backend_test!(
    parity_send_then_send_to_on_tcp_keep_order,
    |choice: BackendChoice| {
        let port = port(choice);
        let (mut c, s) = tcp_pair();
        s.set_nonblocking(true).unwrap();
        // Fill the socket's buffers first (plain non-blocking writes).
        let mut pre = 0usize;
        while let Ok(n) = (&s).write(&[b'p'; 1 << 16]) {
            pre += n;
        }
        port.associate(&s, 1).unwrap();
        let a_len = 256 * 1024;
        port.submit(Op::send(&s, vec![b'a'; a_len]), 1).unwrap();
        let peer = s.peer_addr().unwrap();
        port.submit(Op::send_to(&s, b"BBBB".to_vec(), peer), 2)
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Read everything: prefill, then the two sends' bytes.
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut done = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < T {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            while let Ok(d) = port.get(Some(Duration::ZERO)) {
                done.push((d.user_data, d.result.as_ref().ok().copied()));
            }
            if done.len() == 2
                && all.len() >= pre + done.iter().map(|d| d.1.unwrap_or(0)).sum::<usize>()
            {
                break;
            }
        }
        let rest = &all[pre.min(all.len())..];
        let first_b = rest.iter().position(|&b| b == b'B');
        let last_a = rest.iter().rposition(|&b| b == b'a');
        assert!(
        matches!((first_b, last_a), (Some(b), Some(a)) if b > a),
        "{choice:?}: the send_to's bytes overtook the send queued before it: first 'B' at {first_b:?}, last 'a' at {last_a:?} (completions {done:?})"
    );
    }
);

// A multishot receive submitted while its pool is empty, on an idle
// socket: io_uring ends it at once with `ENOBUFS`; epoll, when the socket
// is known drained (after a short receive), waits for data instead (and
// takes a buffer then). On a fresh socket epoll says `ENOBUFS` at once too.
backend_test!(
    parity_multishot_with_an_empty_pool_on_an_idle_socket,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(1, 64).unwrap();
        let (mut c, s) = tcp_pair();
        port.associate(&s, 1).unwrap();
        // A short receive: epoll now knows the socket drained.
        c.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        port.submit(Op::recv(&s, Vec::with_capacity(64)), 9)
            .unwrap();
        assert_eq!(get(&port).result.unwrap(), 1);
        // Empty the pool: a lease held from another socket's multishot receive.
        let (mut c2, s2) = tcp_pair();
        port.associate(&s2, 2).unwrap();
        let id = port.submit(Op::recv_multishot(&s2, &pool), 20).unwrap();
        c2.write_all(b"y").unwrap();
        let mut first = get(&port);
        let lease = first.take_pooled().expect("a lease");
        let _ = port.cancel(id);
        let _: Vec<_> =
            std::iter::from_fn(|| port.get(Some(Duration::from_millis(200))).ok()).collect();
        assert_eq!(pool.available(), 0);
        port.submit(Op::recv_multishot(&s, &pool), 1).unwrap();
        let early = port.get(Some(SHORT));
        let early = early.map(|c| {
            (
                c.user_data,
                c.more(),
                c.result.map_err(|e| e.raw_os_error()),
            )
        });
        drop(lease);
        c.write_all(b"late").unwrap();
        let late = port.get(Some(SHORT)).map(|c| {
            (
                c.user_data,
                c.more(),
                c.result.map_err(|e| e.raw_os_error()),
            )
        });
        eprintln!("{choice:?}: at submit {early:?}; after data {late:?}");
        assert!(
            early.is_ok(),
            "{choice:?}: io_uring ends it with ENOBUFS at once; here it waited, then {late:?}"
        );
    }
);

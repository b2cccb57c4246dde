//! Session 18 review: the documented contract (rustdoc, README) checked against
//! the behaviour, on both backends. Each test names the doc it checks.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::panic::catch_unwind;
use std::thread;
use std::time::Duration;

use ringport::{BackendChoice, CompletionPort, Error, Op, Runtime};

use crate::common::*;
use crate::rt::{block, join, runtime};

/// A descriptor number nothing in this process has open.
const NOT_OPEN: i32 = 900_000;

/// A pipe (read end, write end); `std::io::pipe` is newer than the MSRV.
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are fresh descriptors owned by nobody else.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

// ---------------------------------------------------------------- the port

// port.rs `associate`: "A descriptor that is not open is refused (`EBADF`)."
backend_test!(
    associate_refuses_a_descriptor_that_is_not_open,
    |choice: BackendChoice| {
        let port = port(choice);
        // SAFETY: only the number is read (fcntl/fstat); nothing is closed.
        let fd = unsafe { BorrowedFd::borrow_raw(NOT_OPEN) };
        match port.associate(&fd, 1) {
            Err(Error::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e:?}"),
            other => panic!("expected EBADF, got {other:?}"),
        }
        // error.rs: `AlreadyAssociated` for a second associate on the same port.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        port.associate(&a, 1).unwrap();
        assert!(
            matches!(port.associate(&a, 2), Err(Error::AlreadyAssociated(fd)) if fd == a.as_raw_fd())
        );
        // `disassociate` of a handle that is not associated: `Unassociated`.
        port.disassociate(&a).unwrap();
        assert!(matches!(port.disassociate(&a), Err(Error::Unassociated(_))));
    }
);

// error.rs `Unassociated`: "The operation names a file descriptor that was
// never associated with this port."
backend_test!(
    submit_on_an_unassociated_handle_is_refused,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        match port.submit(Op::recv(&a, Vec::with_capacity(8)), 0) {
            Err(Error::Unassociated(fd)) => assert_eq!(fd, a.as_raw_fd()),
            other => panic!("expected Unassociated, got {other:?}"),
        }
    }
);

// port.rs `get`: "`Some(Duration::ZERO)` only looks"; SPEC: timeout → `Err(Timeout)`.
backend_test!(
    get_zero_only_looks_and_times_out,
    |choice: BackendChoice| {
        let port = port(choice);
        assert!(matches!(
            port.get(Some(Duration::ZERO)),
            Err(Error::Timeout)
        ));
        assert!(matches!(
            port.get(Some(Duration::from_millis(5))),
            Err(Error::Timeout)
        ));
        port.post(3, 4, 5).unwrap();
        let c = port
            .get(Some(Duration::ZERO))
            .expect("a queued packet is taken");
        assert_eq!(
            (c.key, c.user_data, c.result.as_ref().ok().copied()),
            (3, 4, Some(5))
        );
        assert!(c.is_packet() && c.op_id().is_none());
    }
);

// port.rs `get_many`: "Dequeues up to `max` completions into `out`".
backend_test!(get_many_takes_at_most_max, |choice: BackendChoice| {
    let port = port(choice);
    for i in 0..5 {
        port.post(0, i, 0).unwrap();
    }
    let mut out = Vec::new();
    assert_eq!(port.get_many(&mut out, 3, Some(T)).unwrap(), 3);
    assert_eq!(
        out.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    // `max` = 0: the doc says "up to 0"; the code takes one (documented now).
    let mut out = Vec::new();
    assert_eq!(port.get_many(&mut out, 0, Some(T)).unwrap(), 1);
    assert_eq!(out.len(), 1);
    // Appended: what `out` held stays.
    assert_eq!(port.get_many(&mut out, 5, Some(T)).unwrap(), 1);
    assert_eq!(out.iter().map(|c| c.user_data).collect::<Vec<_>>(), [3, 4]);
});

// port.rs `close`: waiters wake with `Closed`; `post`/`cancel` say `Closed`;
// "Idempotent".
backend_test!(
    close_wakes_waiters_and_refuses_after,
    |choice: BackendChoice| {
        let port = port(choice);
        let p2 = port.clone();
        let waiter = thread::spawn(move || p2.get(Some(T)));
        // Give the waiter a chance to be waiting; the outcome is the same if not.
        thread::sleep(Duration::from_millis(20));
        port.post(0, 1, 0).unwrap();
        let _ = port.get(Some(Duration::ZERO));
        let p3 = port.clone();
        let waiter2 = thread::spawn(move || p3.get(Some(T)));
        thread::sleep(Duration::from_millis(20));
        let id = port
            .submit(Op::timeout(Duration::from_secs(3600)), 9)
            .unwrap();
        port.close();
        port.close();
        assert!(port.is_closed());
        for w in [waiter, waiter2] {
            match w.join().unwrap() {
                Err(Error::Closed) => {}
                Ok(c) => assert_eq!(c.user_data, 1, "only the posted packet may come"),
                other => panic!("a waiter woke with {other:?}"),
            }
        }
        assert!(matches!(port.get(Some(T)), Err(Error::Closed)));
        assert!(matches!(port.post(0, 0, 0), Err(Error::Closed)));
        assert!(matches!(port.cancel(id), Err(Error::Closed)));
        assert!(matches!(port.submit(Op::nop(), 0), Err(Error::Closed)));
        assert!(matches!(port.try_submit(Op::nop(), 0), Err(Error::Closed)));
        let mut out = Vec::new();
        assert!(matches!(
            port.get_many(&mut out, 4, Some(T)),
            Err(Error::Closed)
        ));
        // register_buffers: "a closed port with an error naming it".
        let e = port.register_buffers(1, 4096).unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
    }
);

// port.rs `cancel`: "`NotFound` if it is not in flight".
backend_test!(
    cancel_of_a_dequeued_op_is_not_found,
    |choice: BackendChoice| {
        let port = port(choice);
        let id = port.submit(Op::nop(), 1).unwrap();
        let c = get(&port);
        assert_eq!(c.op_id(), Some(id));
        assert!(matches!(port.cancel(id), Err(Error::NotFound)));
        // A timer cancelled: one completion, ECANCELED (op/mod.rs `timeout`).
        let id = port
            .submit(Op::timeout(Duration::from_secs(3600)), 2)
            .unwrap();
        port.cancel(id).unwrap();
        let c = get(&port);
        assert_eq!(c.user_data, 2);
        assert!(c.is_cancelled(), "{:?}", c.result);
        assert_errno(&c.result, libc::ECANCELED);
        assert!(matches!(
            port.get(Some(Duration::ZERO)),
            Err(Error::Timeout)
        ));
    }
);

// port.rs `Builder::max_in_flight`: `try_submit` past it is `QueueFull`;
// `Builder::concurrency(0)` means the CPUs; defaults 4096 in flight.
backend_test!(builder_defaults_and_queue_full, |choice: BackendChoice| {
    let port = port(choice);
    assert_eq!(port.concurrency(), ringport::num_cpus());
    assert!(port.max_in_flight() <= 4096 && port.max_in_flight() > 0);
    let port = build(builder(choice).concurrency(0).max_in_flight(1));
    assert_eq!(port.concurrency(), ringport::num_cpus());
    assert_eq!(port.max_in_flight(), 1);
    let id = port
        .submit(Op::timeout(Duration::from_secs(3600)), 1)
        .unwrap();
    assert!(matches!(
        port.try_submit(Op::nop(), 2),
        Err(Error::QueueFull)
    ));
    port.cancel(id).unwrap();
    assert!(get(&port).is_cancelled());
    port.try_submit(Op::nop(), 3).unwrap();
    assert_eq!(get(&port).user_data, 3);
});

// port.rs `register_buffers`: "Zero or absurd sizes fail with `InvalidInput`".
backend_test!(
    register_buffers_refuses_zero_and_absurd,
    |choice: BackendChoice| {
        let port = port(choice);
        for (count, size) in [
            (0, 4096),
            (1, 0),
            (ringport::MAX_FIXED_BUFFERS + 1, 4096),
            (1, ringport::MAX_FIXED_SIZE + 1),
            (usize::MAX, usize::MAX),
        ] {
            match port.register_buffers(count, size) {
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{count}x{size}: {e}"),
                Ok(_) => panic!("{count} x {size} registered"),
            }
        }
    }
);

// provided.rs `buffer_pool`: count 1..=MAX_BUFFERS, size 1..=MAX_BUFFER_SIZE.
backend_test!(buffer_pool_limits, |choice: BackendChoice| {
    let port = port(choice);
    for (count, size) in [
        (0, 64),
        (ringport::provided::MAX_BUFFERS + 1, 64),
        (1, 0),
        (1, ringport::provided::MAX_BUFFER_SIZE + 1),
    ] {
        match port.buffer_pool(count, size) {
            Err(Error::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
            other => panic!("{count} x {size}: {other:?}"),
        }
    }
});

// op/multishot.rs `recv_multishot`: "`pool` must come from the same port
// (otherwise the operation fails with `EINVAL`). Submitted while the pool has
// no buffer free, it ends at once with `ENOBUFS` on both backends."
backend_test!(
    recv_multishot_foreign_and_empty_pool,
    |choice: BackendChoice| {
        let port = port(choice);
        let other = self::port(choice);
        let foreign = other.buffer_pool(2, 64).unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        port.associate(&b, 1).unwrap();
        match port.submit(Op::recv_multishot(&b, &foreign), 1) {
            Ok(_) => {
                let c = get(&port);
                assert!(!c.more());
                assert_errno(&c.result, libc::EINVAL);
            }
            Err(Error::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e:?}"),
            Err(e) => panic!("a foreign pool: {e:?}"),
        }
        // Empty pool: take its one buffer with a first receive.
        let pool = port.buffer_pool(1, 64).unwrap();
        use std::io::Write;
        a.write_all(b"x").unwrap();
        port.submit(Op::recv_multishot(&b, &pool), 2).unwrap();
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&1));
        let lease = c.take_pooled().expect("a lease");
        // The first multishot may still be armed; cancel it and drain it.
        if c.more() {
            // NotFound on epoll when it has just ended (ENOBUFS) on its own.
            let _ = port.cancel(c.op_id().unwrap());
            loop {
                let c = get(&port);
                if !c.more() {
                    break;
                }
            }
        }
        assert_eq!(pool.available(), 0);
        port.submit(Op::recv_multishot(&b, &pool), 3).unwrap();
        let c = get(&port);
        assert_eq!(c.user_data, 3);
        assert!(!c.more());
        assert_errno(&c.result, libc::ENOBUFS);
        drop(lease);
    }
);

// ---------------------------------------------------------------- operations

// op/mod.rs `read_at`: "An offset past `i64::MAX` fails with `EINVAL` on both
// backends"; `readv_at`: "At most 1,024 buffers: more fail with `EINVAL`".
backend_test!(
    read_at_huge_offset_and_too_many_iovecs,
    |choice: BackendChoice| {
        let port = port(choice);
        let f = temp_file();
        port.associate(&f, 1).unwrap();
        port.submit(Op::read_at(&f, Vec::with_capacity(8), u64::MAX), 1)
            .unwrap();
        assert_errno(&get(&port).result, libc::EINVAL);
        port.submit(
            Op::read_at(&f, Vec::with_capacity(8), i64::MAX as u64 + 1),
            2,
        )
        .unwrap();
        assert_errno(&get(&port).result, libc::EINVAL);
        let bufs = (0..1025).map(|_| Vec::with_capacity(1)).collect::<Vec<_>>();
        match port.submit(Op::readv_at(&f, bufs, 0), 3) {
            Ok(_) => assert_errno(&get(&port).result, libc::EINVAL),
            Err(e) => panic!("readv_at with 1025 buffers refused at submit: {e:?}"),
        }
        // 1024 is fine: Ok(0) at the end of an empty file.
        let bufs = (0..1024).map(|_| Vec::with_capacity(1)).collect::<Vec<_>>();
        port.submit(Op::readv_at(&f, bufs, 0), 4).unwrap();
        assert_eq!(get(&port).result.unwrap(), 0);
    }
);

// op/mod.rs `openat`: "A path with a NUL byte fails with `EINVAL`"; its key is
// 0, or `Op::key`.
backend_test!(openat_nul_path_and_key, |choice: BackendChoice| {
    let port = port(choice);
    port.submit(Op::openat(None, "a\0b", libc::O_RDONLY, 0), 1)
        .unwrap();
    let c = get(&port);
    assert_eq!(c.key, 0);
    assert_errno(&c.result, libc::EINVAL);
    port.submit(Op::openat(None, "/", libc::O_RDONLY, 0).key(77), 2)
        .unwrap();
    let mut c = get(&port);
    assert_eq!(c.key, 77);
    assert!(c.take_fd().is_some(), "{:?}", c.result);
    // statx with a NUL path likewise.
    port.submit(Op::statx(None, "a\0b", 0, libc::STATX_SIZE), 3)
        .unwrap();
    let c = get(&port);
    assert_errno(&c.result, libc::EINVAL);
    assert!(c.statx().is_none());
});

// op/mod.rs `Op::key`: "For operations on a handle the associated key is used
// and this is ignored."
backend_test!(op_key_is_ignored_on_a_handle, |choice: BackendChoice| {
    let port = port(choice);
    let f = temp_file();
    port.associate(&f, 5).unwrap();
    port.submit(Op::fsync(&f).key(99), 1).unwrap();
    let c = get(&port);
    assert_eq!((c.key, c.result.as_ref().ok()), (5, Some(&0)));
});

// op/mod.rs `shutdown`: "`Ok(0)`, or `ENOTCONN` for a socket that is not
// connected"; `send`: "a closed peer gives `EPIPE`, never a `SIGPIPE`".
backend_test!(
    shutdown_unconnected_and_send_to_closed_peer,
    |choice: BackendChoice| {
        let port = port(choice);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        port.associate(&s, 1).unwrap();
        port.submit(Op::shutdown(&s, std::net::Shutdown::Both), 1)
            .unwrap();
        assert_errno(&get(&port).result, libc::ENOTCONN);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        port.associate(&a, 2).unwrap();
        port.submit(Op::shutdown(&a, std::net::Shutdown::Write), 2)
            .unwrap();
        assert_eq!(get(&port).result.unwrap(), 0);
        drop(b);
        let (c2, d) = std::os::unix::net::UnixStream::pair().unwrap();
        port.associate(&c2, 3).unwrap();
        drop(d);
        port.submit(Op::send(&c2, b"x".to_vec()), 3).unwrap();
        let c = get(&port);
        assert_errno(&c.result, libc::EPIPE);
        assert_eq!(c.buf.as_deref(), Some(&b"x"[..]), "the buffer comes back");
    }
);

// op/mod.rs `send_file`: "a directory or a socket fails with `EINVAL`, a pipe
// with `ESPIPE`, a descriptor not open for reading with `EBADF`"; `Ok(0)` when
// `len` is 0 or `offset` is at or past the end.
backend_test!(send_file_refusals, |choice: BackendChoice| {
    let port = port(choice);
    let (c, _s) = tcp_pair();
    port.associate(&c, 1).unwrap();
    let dir = std::fs::File::open("/").unwrap();
    let (r, _w) = pipe();
    let wo = write_only_file();
    let (sock, _other) = std::os::unix::net::UnixStream::pair().unwrap();
    let cases: [(&dyn std::os::fd::AsFd, i32, &str); 4] = [
        (&dir, libc::EINVAL, "a directory"),
        (&sock, libc::EINVAL, "a socket"),
        (&r, libc::ESPIPE, "a pipe"),
        (&wo, libc::EBADF, "write-only"),
    ];
    for (i, (file, errno, what)) in cases.into_iter().enumerate() {
        port.submit(Op::send_file(&c, &file.as_fd(), 0, 100), i as u64)
            .unwrap();
        let got = get(&port);
        match &got.result {
            Err(e) if e.raw_os_error() == Some(errno) => {}
            other => panic!("send_file from {what}: expected errno {errno}, got {other:?}"),
        }
    }
    let mut f = temp_file();
    use std::io::Write;
    f.write_all(b"abc").unwrap();
    for (off, len) in [(0, 0), (3, 10), (10, 10)] {
        port.submit(Op::send_file(&c, &f, off, len), 9).unwrap();
        assert_eq!(get(&port).result.unwrap(), 0, "offset {off} len {len}");
    }
});

// op/mod.rs `fallocate`: "mode 0: ... extends the file to `offset + len`";
// `Ok(0)` on success.
backend_test!(fallocate_extends, |choice: BackendChoice| {
    let port = port(choice);
    let f = temp_file();
    port.associate(&f, 1).unwrap();
    port.submit(Op::fallocate(&f, 0, 100, 28), 1).unwrap();
    match get(&port).result {
        Ok(0) => assert_eq!(f.metadata().unwrap().len(), 128),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("skipped: the temp file system has no fallocate")
        }
        other => panic!("fallocate: {other:?}"),
    }
});

// op/mod.rs `recv_from`: "A datagram longer than the buffer's capacity is
// truncated ... the result is the number of bytes that fitted"; "`Ok(0)` is an
// empty datagram".
backend_test!(
    recv_from_truncates_and_empty_datagram,
    |choice: BackendChoice| {
        let port = port(choice);
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        port.associate(&rx, 1).unwrap();
        tx.send_to(b"0123456789", rx.local_addr().unwrap()).unwrap();
        port.submit(Op::recv_from(&rx, Vec::with_capacity(4)), 1)
            .unwrap();
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&4));
        assert_eq!(c.buf.as_deref(), Some(&b"0123"[..]));
        let from = c.take_addr().and_then(|a| a.as_socket()).unwrap();
        assert_eq!(from, tx.local_addr().unwrap());
        tx.send_to(b"", rx.local_addr().unwrap()).unwrap();
        port.submit(Op::recv_from(&rx, Vec::with_capacity(4)), 2)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&0));
    }
);

// op/mod.rs `timeout`: a duration longer than 136 years is "taken as 136
// years" — no overflow, no error; cancelling gives ECANCELED.
backend_test!(timeout_duration_max_is_accepted, |choice: BackendChoice| {
    let port = port(choice);
    let id = port.submit(Op::timeout(Duration::MAX), 1).unwrap();
    assert!(matches!(
        port.get(Some(Duration::from_millis(20))),
        Err(Error::Timeout)
    ));
    port.cancel(id).unwrap();
    assert_errno(&get(&port).result, libc::ECANCELED);
    let id = port
        .submit(Op::recv(&temp_file(), Vec::new()), 0)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(id, Error::Unassociated(_)));
});

// ---------------------------------------------------------------- runtime

// rt/mod.rs `spawn`, `spawn_blocking`, time.rs `sleep`, `sleep_until`,
// `timeout`, `interval`: "# Panics: Outside a runtime"; `interval`: "or if
// `period` is zero".
backend_test!(
    documented_panics_outside_a_runtime,
    |_choice: BackendChoice| {
        let msg = |r: std::thread::Result<()>| -> String {
            let p = r.expect_err("expected a panic");
            crate::rt::panic_message(&*p)
        };
        let m = msg(catch_unwind(|| {
            drop(ringport::spawn(async {}));
        }));
        assert!(m.contains("outside a ringport runtime"), "{m}");
        let m = msg(catch_unwind(|| {
            drop(ringport::spawn_blocking(|| ()));
        }));
        assert!(m.contains("outside a ringport runtime"), "{m}");
        let m = msg(catch_unwind(|| {
            drop(ringport::time::sleep(Duration::from_millis(1)));
        }));
        assert!(m.contains("outside a ringport runtime"), "{m}");
        let m = msg(catch_unwind(|| {
            drop(ringport::time::sleep_until(std::time::Instant::now()));
        }));
        assert!(m.contains("outside a ringport runtime"), "{m}");
        let m = msg(catch_unwind(|| {
            drop(ringport::time::timeout(Duration::from_millis(1), async {}));
        }));
        assert!(m.contains("outside a ringport runtime"), "{m}");
        let m = msg(catch_unwind(|| {
            drop(ringport::time::interval(Duration::from_millis(1)));
        }));
        assert!(m.contains("outside a ringport runtime"), "{m}");
        assert!(ringport::Handle::try_current().is_none());
        assert!(ringport::Handle::current().is_err());
    }
);

backend_test!(interval_zero_period_panics, |choice: BackendChoice| {
    let rt = runtime(choice);
    let r = block(rt.handle(), async {
        catch_unwind(|| {
            drop(ringport::time::interval(Duration::ZERO));
        })
        .is_err()
    });
    assert!(r, "interval(0) did not panic");
});

// rt/mod.rs `Runtime::block_on`: "# Panics When called on a worker thread".
backend_test!(block_on_on_a_worker_panics, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let h2 = h.clone();
    let task = h.spawn(async move {
        catch_unwind(std::panic::AssertUnwindSafe(|| h2.block_on(async { 1 }))).is_err()
    });
    assert!(
        join(&h, task).unwrap(),
        "block_on on a worker did not panic"
    );
});

// rt/task.rs `JoinHandle::abort`: "awaiting this handle gives
// `Err(JoinError::Cancelled)` — unless it had already finished, in which case
// its output stays".
backend_test!(abort_before_and_after_finish, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let slow = h.spawn(async { ringport::time::sleep(Duration::from_secs(3600)).await });
    slow.abort();
    assert!(join(&h, slow).unwrap_err().is_cancelled());
    let quick = h.spawn(async { 7 });
    wait_until("the quick task finished", || quick.is_finished());
    quick.abort();
    assert_eq!(join(&h, quick).unwrap(), 7);
    // A spawn_blocking closure that has started runs to its end.
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let b = h.spawn_blocking(move || {
        tx.send(()).unwrap();
        go_rx.recv_timeout(T).unwrap();
        5
    });
    rx.recv_timeout(T).unwrap();
    b.abort();
    go_tx.send(()).unwrap();
    assert_eq!(join(&h, b).unwrap(), 5);
});

// rt/mod.rs `Handle`: "after [shutdown], new operations fail with a "port
// closed" error and spawned tasks are cancelled"; `spawn_blocking` likewise.
backend_test!(handle_after_shutdown, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    rt.shutdown();
    let t = h.spawn(async { 1 });
    assert!(join(&h, t).unwrap_err().is_cancelled());
    let b = h.spawn_blocking(|| 1);
    assert!(join(&h, b).unwrap_err().is_cancelled());
    let r = block(&h, async {
        let s = ringport::net::UdpSocket::bind("127.0.0.1:0")?;
        let (r, buf) = s.recv(Vec::with_capacity(100)).await;
        // SPEC §5 / README: owned buffers come back, on every path.
        assert!(
            buf.capacity() >= 100,
            "the buffer was lost: {}",
            buf.capacity()
        );
        let f = ringport::fs::File::from_std(temp_file())?;
        let (r2, buf) = f.read_at(Vec::with_capacity(100), 0).await;
        assert!(r2.is_err());
        assert!(
            buf.capacity() >= 100,
            "File::read_at lost the buffer: {}",
            buf.capacity()
        );
        let (a, _b) = ringport::net::UnixStream::pair()?;
        let (r3, buf) = a.read(Vec::with_capacity(100)).await;
        assert!(r3.is_err());
        assert!(
            buf.capacity() >= 100,
            "read lost the buffer: {}",
            buf.capacity()
        );
        r
    });
    let e = r.expect_err("a receive after shutdown");
    assert!(e.to_string().contains("closed"), "{e}");
});

// time.rs `sleep`: "Waits until `after` has passed"; `timeout`: "its output,
// or `Err(Elapsed)`". After the runtime shut down, a sleep cannot wait: the
// docs did not say what it does (it ends at once, so a `timeout` reports
// `Elapsed` at once, whatever the future, and an interval ticks at once);
// documented now (review finding).
backend_test!(
    sleep_after_shutdown_ends_at_once,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        rt.shutdown();
        let r = block(&h, async {
            ringport::time::sleep(Duration::from_secs(3600)).await;
            let mut iv = ringport::time::interval(Duration::from_secs(3600));
            iv.tick().await;
            iv.tick().await;
            ringport::time::timeout(Duration::from_secs(3600), std::future::pending::<()>()).await
        });
        assert_eq!(r, Err(ringport::time::Elapsed));
    }
);

// net/stream.rs `read`: "returns the count (0 = the peer closed its side, or
// `buf` has no capacity)"; net/udp.rs `recv`: "a buffer of no capacity takes a
// datagram and returns 0".
backend_test!(zero_capacity_reads, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let r = block(&h, async {
        let (a, b) = ringport::net::UnixStream::pair()?;
        let (w, _) = b.write_all(b"hi".to_vec()).await;
        w?;
        let (n, _) = a.read(Vec::new()).await;
        assert_eq!(n?, 0);
        // The bytes were not consumed by the empty read.
        let (n, buf) = a.read(Vec::with_capacity(8)).await;
        assert_eq!((n?, &buf[..]), (2, &b"hi"[..]));
        let rx = ringport::net::UdpSocket::bind("127.0.0.1:0")?;
        let tx = ringport::net::UdpSocket::bind("127.0.0.1:0")?;
        rx.connect(tx.local_addr()?)?;
        tx.connect(rx.local_addr()?)?;
        let (s, _) = tx.send(b"one".to_vec()).await;
        s?;
        let (s, _) = tx.send(b"two".to_vec()).await;
        s?;
        let (n, _) = rx.recv(Vec::new()).await;
        assert_eq!(n?, 0);
        let (n, buf) = rx.recv(Vec::with_capacity(8)).await;
        assert_eq!(
            (n?, &buf[..]),
            (3, &b"two"[..]),
            "the first datagram was taken"
        );
        Ok::<(), io::Error>(())
    });
    r.unwrap();
});

// fs.rs module docs: "opening or taking over a pipe, a FIFO, a socket or a
// terminal fails with `InvalidInput` on both backends"; `read_at`: "0 at or
// past the end".
backend_test!(
    fs_file_refuses_unseekable_and_reads_past_end,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("review-docs");
        let fifo = dir.path("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let f = dir.path("f");
        std::fs::write(&f, b"abc").unwrap();
        let r = block(&h, async move {
            let e = ringport::fs::File::open(&fifo).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            let (r, _w) = pipe();
            let e = ringport::fs::File::from_std(std::fs::File::from(r)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            let file = ringport::fs::File::open(&f).await?;
            let (n, buf) = file.read_at(Vec::with_capacity(8), 3).await;
            assert_eq!((n?, buf.len()), (0, 0));
            let (n, buf) = file.read_at(Vec::with_capacity(8), 1).await;
            assert_eq!((n?, &buf[..]), (2, &b"bc"[..]));
            Ok::<(), io::Error>(())
        });
        r.unwrap();
    }
);

// README: "`RINGPORT_BACKEND=uring|epoll|auto` or
// `CompletionPort::builder().backend(..)` force a choice"; `Runtime::new` is
// the defaults (backend from the environment or automatic).
backend_test!(
    runtime_backend_is_the_forced_one,
    |choice: BackendChoice| {
        let rt = Runtime::builder().backend(choice).build().unwrap();
        let want = match choice {
            BackendChoice::Epoll => "epoll",
            _ => "io_uring",
        };
        assert_eq!(rt.handle().backend().to_string(), want);
        let port = CompletionPort::builder().backend(choice).build().unwrap();
        assert!(!port.backend_reason().is_empty());
    }
);

// port.rs `disassociate`: "Operations still in flight on a socket are
// cancelled, on both backends: each completes with `ECANCELED`".
backend_test!(disassociate_cancels_socket_ops, |choice: BackendChoice| {
    let port = port(choice);
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    port.associate(&a, 4).unwrap();
    port.submit(Op::recv(&a, Vec::with_capacity(8)), 1).unwrap();
    port.submit(Op::recv(&a, Vec::with_capacity(8)), 2).unwrap();
    // Let io_uring's kept-back one be pushed by a reaping thread.
    assert!(matches!(
        port.get(Some(Duration::from_millis(20))),
        Err(Error::Timeout)
    ));
    port.disassociate(&a).unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let c = get(&port);
        assert_eq!(c.key, 4, "the key comes back after disassociate");
        assert_errno(&c.result, libc::ECANCELED);
        assert_eq!(c.buf.as_ref().map(|b| b.capacity() >= 8), Some(true));
        seen.push(c.user_data);
    }
    seen.sort();
    assert_eq!(seen, [1, 2]);
});

// op/mod.rs `close`: "Its association with the port ends when this operation
// is submitted. On a socket, operations still in flight are cancelled first";
// submit.rs `try_submit`: "A refused `Op::close` still closes its descriptor".
backend_test!(exclusive close_op_cancels_and_ends_the_association, |choice: BackendChoice| {
    let port = port(choice);
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    port.associate(&a, 4).unwrap();
    port.submit(Op::recv(&a, Vec::with_capacity(8)), 1).unwrap();
    let fd = a.as_raw_fd();
    port.submit(Op::close(a.into()), 2).unwrap();
    // "Its association with the port ends when this operation is submitted."
    // SAFETY: only the number is read.
    let gone = unsafe { BorrowedFd::borrow_raw(fd) };
    assert!(matches!(port.disassociate(&gone), Err(Error::Unassociated(_))));
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let c = get(&port);
        got.insert(c.user_data, c.result);
    }
    assert_errno(&got[&1], libc::ECANCELED);
    assert_eq!(got[&2].as_ref().ok(), Some(&0));
    assert!(!fd_is_open(fd), "the close op closed it");
});

// submit.rs `try_submit`: "A refused [`Op::close`] still closes its descriptor
// (the operation owns it and is dropped), after cancelling what is in flight
// on it, as the close would have."
backend_test!(exclusive refused_close_still_closes, |choice: BackendChoice| {
    let port = build(builder(choice).max_in_flight(2));
    let id = port.submit(Op::timeout(Duration::from_secs(3600)), 1).unwrap();
    let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
    port.associate(&c, 5).unwrap();
    port.submit(Op::recv(&c, Vec::with_capacity(8)), 2).unwrap();
    let fd = c.as_raw_fd();
    let r = port.try_submit(Op::close(c.into()), 3);
    match choice {
        // Review finding: on epoll the close ends the socket's association
        // (cancelling its receive, which frees a slot) before the cap is
        // checked, so a close at the cap is taken, not `QueueFull`.
        BackendChoice::Epoll => assert!(r.is_ok(), "{r:?}"),
        _ => assert!(matches!(r, Err(Error::QueueFull)), "{r:?}"),
    }
    assert!(!fd_is_open(fd), "the close left its descriptor open");
    let mut got = std::collections::BTreeMap::new();
    while let Ok(c) = port.get(Some(Duration::from_millis(50))) {
        got.insert(c.user_data, c.result);
    }
    assert_errno(&got[&2], libc::ECANCELED);
    port.cancel(id).unwrap();
    assert!(get(&port).is_cancelled());
});

// op/mod.rs `accept`: "The accepted socket (close-on-exec) comes back with
// `take_fd`"; `openat`: "`O_CLOEXEC` is always added".
backend_test!(
    accepted_and_opened_fds_are_cloexec,
    |choice: BackendChoice| {
        let port = port(choice);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        port.associate(&l, 1).unwrap();
        port.submit(Op::accept(&l), 1).unwrap();
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut c = get(&port);
        let fd = c.take_fd().expect("an accepted socket");
        // SAFETY: F_GETFD reads the flags of a descriptor we own.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert!(fl & libc::FD_CLOEXEC != 0);
        assert!(c.take_fd().is_none(), "take_fd gives it once");
        port.submit(Op::openat(None, "/", libc::O_RDONLY, 0), 2)
            .unwrap();
        let fd = get(&port).take_fd().unwrap();
        // SAFETY: as above.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert!(fl & libc::FD_CLOEXEC != 0);
    }
);

// op/mod.rs `timeout_after`: "Calling it again replaces the duration."; the
// operation that finished first keeps its own result.
backend_test!(
    timeout_after_replaces_and_loses_to_the_op,
    |choice: BackendChoice| {
        let port = port(choice);
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        port.associate(&a, 1).unwrap();
        let op = Op::recv(&a, Vec::with_capacity(8))
            .timeout_after(Duration::from_millis(1))
            .timeout_after(Duration::from_secs(3600));
        port.submit(op, 1).unwrap();
        assert!(matches!(
            port.get(Some(Duration::from_millis(50))),
            Err(Error::Timeout)
        ));
        use std::io::Write;
        b.write_all(b"ok").unwrap();
        let c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&2));
        assert!(
            matches!(
                port.get(Some(Duration::from_millis(20))),
                Err(Error::Timeout)
            ),
            "the removed timer produced no completion"
        );
    }
);

// op/mod.rs `writable`: "`Ok(events)` (the `poll(2)` bits, `POLLOUT` set ...
// no other bit, on either backend)"; `POLLERR`/`POLLHUP` for one shut down.
backend_test!(writable_reports_pollout, |choice: BackendChoice| {
    let port = port(choice);
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    port.associate(&a, 1).unwrap();
    port.submit(Op::writable(&a), 1).unwrap();
    let ev = get(&port).result.unwrap();
    assert_eq!(ev as i16 & libc::POLLOUT, libc::POLLOUT, "{ev:#x}");
    assert_eq!(
        ev as i16 & !(libc::POLLOUT | libc::POLLERR | libc::POLLHUP),
        0,
        "{ev:#x}"
    );
});

// net/tcp.rs `send_file_all`: "`UnexpectedEof` if the file ends first";
// fs.rs `from_std`: "at its current position (the cursor starts there)".
backend_test!(
    send_file_all_eof_and_from_std_cursor,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let mut f = temp_file();
        use std::io::{Seek, Write};
        f.write_all(b"0123456789").unwrap();
        f.seek(std::io::SeekFrom::Start(4)).unwrap();
        let r = block(&h, async move {
            let file = ringport::fs::File::from_std(f)?;
            let (n, buf) = file.read_to_end(Vec::new()).await;
            assert_eq!((n?, &buf[..]), (6, &b"456789"[..]));
            let l = ringport::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = l.local_addr()?;
            let c = ringport::net::TcpStream::connect(addr).await?;
            let (_s, _) = l.accept().await?;
            let e = c.send_file_all(&file, 5, 10).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            Ok::<(), io::Error>(())
        });
        r.unwrap();
    }
);

// net/udp.rs `connect`: "an IPv6 one is skipped on an IPv4 socket, as with std".
backend_test!(udp_connect_skips_other_family, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let r = block(&h, async move {
        let peer = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let s = ringport::net::UdpSocket::bind("127.0.0.1:0")?;
        let v4 = peer.local_addr()?;
        let v6: std::net::SocketAddr = format!("[::1]:{}", v4.port()).parse().unwrap();
        s.connect(&[v6, v4][..])?;
        assert_eq!(s.peer_addr()?, v4);
        Ok::<(), io::Error>(())
    });
    r.unwrap();
});

// rt/mod.rs `JoinHandle::cancel` (its doc example, on both backends).
backend_test!(join_handle_cancel_outcomes, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    block(&h, async {
        let slow = ringport::spawn(async {
            ringport::time::sleep(Duration::from_secs(3600)).await;
        });
        assert!(matches!(
            slow.cancel().await,
            ringport::rt::Cancelled::Cancelled
        ));
        let quick = ringport::spawn(async { 7 });
        while !quick.is_finished() {
            ringport::yield_now().await;
        }
        assert!(matches!(
            quick.cancel().await,
            ringport::rt::Cancelled::Finished(7)
        ));
    });
});

// completion.rs `OpId`: "a stale id from a completed operation is answered with
// `NotFound` rather than cancelling an unrelated newer one"; `Completion::result`:
// "for `accept`, the new descriptor's number".
backend_test!(stale_op_id_and_accept_result, |choice: BackendChoice| {
    let port = port(choice);
    let old = port
        .submit(Op::timeout(Duration::from_secs(3600)), 1)
        .unwrap();
    port.cancel(old).unwrap();
    assert!(get(&port).is_cancelled());
    let new = port
        .submit(Op::timeout(Duration::from_secs(3600)), 2)
        .unwrap();
    assert_ne!(old, new);
    assert!(matches!(port.cancel(old), Err(Error::NotFound)));
    assert!(
        matches!(
            port.get(Some(Duration::from_millis(20))),
            Err(Error::Timeout)
        ),
        "the stale cancel reached the newer timer"
    );
    port.cancel(new).unwrap();
    assert_eq!(get(&port).user_data, 2);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    port.associate(&l, 1).unwrap();
    port.submit(Op::accept(&l), 3).unwrap();
    let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let mut c = get(&port);
    let n = *c.result.as_ref().unwrap();
    let fd = c.take_fd().unwrap();
    assert_eq!(n, fd.as_raw_fd() as usize);
});

// pool.rs: "Worker threads; 0 (the default) means 2 × CPUs"; `spawn`: "A
// handler that panics is caught and counted; its thread keeps serving";
// `name`: "Thread name prefix (default "ringport")"; `shutdown`: "Closes the
// port".
backend_test!(
    pool_defaults_panics_and_shutdown,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = ringport::Pool::builder().spawn(&port, |_, _| {}).unwrap();
        assert_eq!(pool.threads(), 2 * ringport::num_cpus());
        pool.shutdown();
        assert!(port.is_closed());
        let port = self::port(choice);
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let pool = ringport::Pool::builder()
            .threads(1)
            .spawn(&port, move |_, c| {
                if c.user_data == 1 {
                    panic!("review_docs: a handler panics on purpose");
                }
                let name = std::thread::current().name().map(str::to_owned);
                tx.lock().unwrap().send(name).unwrap();
            })
            .unwrap();
        port.post(0, 1, 0).unwrap();
        port.post(0, 2, 0).unwrap();
        let name = rx.recv_timeout(T).expect("the one worker kept serving");
        assert!(
            name.as_deref().unwrap_or("").starts_with("ringport"),
            "{name:?}"
        );
        assert_eq!(pool.panics(), 1);
        pool.shutdown();
    }
);

// rt/mod.rs `Builder::max_in_flight`: "Past it, a new operation waits (its
// future stays pending) until one completes. Timers are operations too".
backend_test!(
    runtime_max_in_flight_waits_for_room,
    |choice: BackendChoice| {
        let rt = Runtime::builder()
            .backend(choice)
            .max_in_flight(1)
            .build()
            .unwrap();
        let h = rt.handle().clone();
        let holder = h.spawn(async {
            ringport::time::sleep(Duration::from_secs(3600)).await;
        });
        wait_until("the sleep is in flight", || h.ops_in_flight() == 1);
        let s = block(&h, async { ringport::net::UdpSocket::bind("127.0.0.1:0") }).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"waiting", s.local_addr().unwrap()).unwrap();
        let waiter = h.spawn(async move {
            let (r, buf) = s.recv_from(Vec::with_capacity(16)).await;
            r.map(|(n, _)| buf[..n].to_vec())
        });
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "an operation ran past max_in_flight");
        holder.abort();
        assert_eq!(join(&h, waiter).unwrap().unwrap(), b"waiting");
    }
);

// fixed.rs `lease`: "Fails with `WouldBlock` if every buffer is leased";
// op/fixed.rs `read_fixed`: "On a connected socket ... `offset` must then be 0
// ... anything else fails with `ESPIPE`. A lease from another port's set fails
// with `EINVAL` (and comes back too)"; `set_len`: "at most the capacity".
backend_test!(fixed_buffer_contract, |choice: BackendChoice| {
    let port = port(choice);
    let set = match port.register_buffers(1, 64) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
            eprintln!("skipped: RLIMIT_MEMLOCK: {e}");
            return;
        }
        Err(e) => panic!("register_buffers: {e}"),
    };
    let mut lease = set.lease().unwrap();
    assert_eq!(set.lease().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    lease.set_len(1000);
    assert_eq!(lease.len(), 64);
    lease.clear();
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    port.associate(&a, 1).unwrap();
    use std::io::Write;
    b.write_all(b"fixed").unwrap();
    port.submit(Op::read_fixed(&a, lease, 1), 1).unwrap();
    let mut c = get(&port);
    assert_errno(&c.result, libc::ESPIPE);
    let lease = c.take_fixed().expect("the lease comes back");
    port.submit(Op::read_fixed(&a, lease, 0), 2).unwrap();
    let mut c = get(&port);
    assert_eq!(c.result.as_ref().ok(), Some(&5));
    let lease = c.take_fixed().unwrap();
    assert_eq!(&lease[..], b"fixed");
    drop(lease);
    // Another port's set.
    let other = self::port(choice);
    let foreign = other.register_buffers(1, 64).unwrap();
    let mut l = foreign.lease().unwrap();
    l.extend_from_slice(b"x");
    port.submit(Op::write_fixed(&a, l, 0), 3).unwrap();
    let mut c = get(&port);
    assert_errno(&c.result, libc::EINVAL);
    assert!(c.take_fixed().is_some(), "the foreign lease comes back");
});

// op/mod.rs `writable`: "Given anything else (a pipe), [epoll] looks once and
// completes with `EAGAIN` if there is no room, where io_uring waits";
// `read_at` on epoll: "a pipe ... refuses (`ESPIPE`)".
backend_test!(writable_and_read_at_on_a_pipe, |choice: BackendChoice| {
    let port = port(choice);
    let (r, w) = pipe();
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut wf = std::fs::File::from(w.try_clone().unwrap());
    use std::io::Write;
    while wf.write(&[0u8; 65536]).is_ok() {}
    port.associate(&w, 1).unwrap();
    port.submit(Op::writable(&w), 1).unwrap();
    match choice {
        BackendChoice::Epoll => assert_errno(&get(&port).result, libc::EAGAIN),
        _ => {
            assert!(matches!(
                port.get(Some(Duration::from_millis(30))),
                Err(Error::Timeout)
            ));
            let mut rf = std::fs::File::from(r.try_clone().unwrap());
            use std::io::Read;
            let mut sink = vec![0u8; 1 << 20];
            let _ = rf.read(&mut sink).unwrap();
            let ev = get(&port).result.unwrap();
            assert_eq!(ev as i16 & libc::POLLOUT, libc::POLLOUT);
        }
    }
    port.associate(&r, 2).unwrap();
    port.submit(Op::read_at(&r, Vec::with_capacity(8), 0), 2)
        .unwrap();
    if choice == BackendChoice::Epoll {
        assert_errno(&get(&port).result, libc::ESPIPE);
    } else {
        // io_uring reads the pipe (the offset is ignored): it waits for data.
        assert!(matches!(
            port.get(Some(Duration::from_millis(30))),
            Err(Error::Timeout)
        ));
        wf.write_all(b"p").unwrap();
        assert_eq!(get(&port).result.unwrap(), 1);
    }
});

// README: "Dropping a read future (a timeout, a `select`) cancels its receive
// without losing bytes: whatever the kernel had already received is returned
// by the next read"; task.rs: "Dropping the handle detaches the task (it keeps
// running)"; a panicking task gives `JoinError::Panic`.
backend_test!(dropped_read_and_detached_task, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let r = block(&h, async {
        let (a, b) = ringport::net::UnixStream::pair()?;
        let r =
            ringport::time::timeout(Duration::from_millis(10), a.read(Vec::with_capacity(8))).await;
        assert!(r.is_err(), "nothing was sent yet");
        let (w, _) = b.write_all(b"kept".to_vec()).await;
        w?;
        let (n, buf) = a.read(Vec::with_capacity(8)).await;
        assert_eq!((n?, &buf[..]), (4, &b"kept"[..]));
        let (tx, rx) = std::sync::mpsc::channel();
        drop(ringport::spawn(async move {
            ringport::time::sleep(Duration::from_millis(5)).await;
            tx.send(1).unwrap();
        }));
        let got = ringport::spawn_blocking(move || rx.recv_timeout(T)).await;
        assert_eq!(got.unwrap().unwrap(), 1, "the detached task ran on");
        let p = ringport::spawn(async { panic!("review_docs: a task panics on purpose") }).await;
        assert!(matches!(p, Err(e) if e.is_panic()));
        Ok::<(), io::Error>(())
    });
    r.unwrap();
});

// port.rs `post_with_priority` / sched `AGE_LIMIT`: "a `Low` one waits at most
// `AGE_LIMIT` dequeues once it is first in its lane".
backend_test!(low_waits_at_most_age_limit, |choice: BackendChoice| {
    let port = port(choice);
    port.post_with_priority(0, 0, 0, ringport::Priority::Low)
        .unwrap();
    let n = ringport::AGE_LIMIT as usize + 10;
    for i in 1..=n as u64 {
        port.post_with_priority(0, i, 0, ringport::Priority::High)
            .unwrap();
    }
    let mut at = None;
    for k in 0..=n {
        if get(&port).user_data == 0 {
            at = Some(k);
            break;
        }
    }
    let at = at.expect("the Low packet came");
    assert!(
        at <= ringport::AGE_LIMIT as usize,
        "the Low packet waited through {at} dequeues"
    );
});

// submit.rs `submit_inline`: "A multishot operation is always `Pending`"; on
// epoll "a receive with data waiting is `Done`"; "a `Done` operation holds no
// slot once it is returned".
backend_test!(submit_inline_contract, |choice: BackendChoice| {
    let port = build(builder(choice).max_in_flight(1));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    port.associate(&l, 1).unwrap();
    let id = match port.submit_inline(Op::accept_multishot(&l), 1).unwrap() {
        ringport::Submitted::Pending(id) => id,
        ringport::Submitted::Done(c) => panic!("a multishot accept was Done: {:?}", c.result),
    };
    port.cancel(id).unwrap();
    loop {
        if !get(&port).more() {
            break;
        }
    }
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    port.associate(&a, 2).unwrap();
    use std::io::Write;
    for round in 0..3u8 {
        b.write_all(&[round]).unwrap();
        let c = match port
            .submit_inline(Op::recv(&a, Vec::with_capacity(4)), 2)
            .unwrap()
        {
            ringport::Submitted::Done(c) => {
                assert_eq!(choice, BackendChoice::Epoll, "Done on io_uring");
                c
            }
            ringport::Submitted::Pending(_) => get(&port),
        };
        assert_eq!(c.buf.as_deref(), Some(&[round][..]));
    }
    assert_eq!(port.stats().in_flight, 0);
});

// SPEC §1: "op failed → the real errno"; completion.rs `take_addr`: "`None`
// ... for a failed or cancelled one"; port.rs `PortStats::task_run`: "`"none"`
// on epoll".
backend_test!(
    connect_refused_cancelled_recv_from_and_task_run,
    |choice: BackendChoice| {
        let port = port(choice);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        port.associate(&s, 1).unwrap();
        port.submit(Op::connect(&s, closed_addr()), 1).unwrap();
        assert_errno(&get(&port).result, libc::ECONNREFUSED);
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        port.associate(&u, 2).unwrap();
        let id = port
            .submit(Op::recv_from(&u, Vec::with_capacity(8)), 2)
            .unwrap();
        assert!(matches!(
            port.get(Some(Duration::from_millis(20))),
            Err(Error::Timeout)
        ));
        port.cancel(id).unwrap();
        let mut c = get(&port);
        assert!(c.is_cancelled());
        assert!(c.take_addr().is_none());
        let tr = port.stats().task_run;
        match choice {
            BackendChoice::Epoll => assert_eq!(tr, "none"),
            _ => assert!(tr == "coop" || tr == "default", "{tr}"),
        }
    }
);

// rt/mod.rs `Runtime`: "Dropping it ... drops every task that has not
// finished"; `yield_now` lets other tasks run.
backend_test!(runtime_drop_drops_tasks, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guard = crate::rt::SetOnDrop(dropped.clone());
    drop(h.spawn(async move {
        let _g = guard;
        std::future::pending::<()>().await;
    }));
    wait_until("the task is alive", || h.live_tasks() == 1);
    drop(rt);
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(h.live_tasks(), 0);
});

// op/prio.rs `Op::priority`: "Whatever way the operation ends, its completion
// keeps the lane: ... cancelled, or stopped by its `timeout_after`"; "The
// default is `Normal`".
backend_test!(
    priority_survives_cancel_and_timeout_after,
    |choice: BackendChoice| {
        use ringport::Priority;
        let port = port(choice);
        assert_eq!(Op::nop().get_priority(), Priority::Normal);
        let id = port
            .submit(
                Op::timeout(Duration::from_secs(3600)).priority(Priority::High),
                1,
            )
            .unwrap();
        port.cancel(id).unwrap();
        let c = get(&port);
        assert!(c.is_cancelled());
        assert_eq!(c.priority(), Priority::High);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        port.associate(&a, 1).unwrap();
        port.submit(
            Op::recv(&a, Vec::with_capacity(8))
                .priority(Priority::Low)
                .timeout_after(Duration::from_millis(5)),
            2,
        )
        .unwrap();
        let c = get(&port);
        assert!(c.is_cancelled(), "{:?}", c.result);
        assert_eq!(c.priority(), Priority::Low);
    }
);

// port.rs `blocking`: "its concurrency slot is released for the duration ...
// When `f` returns the thread counts as running again"; nested calls.
backend_test!(blocking_releases_the_slot, |choice: BackendChoice| {
    let port = port(choice);
    port.post(0, 1, 0).unwrap();
    let _ = get(&port);
    assert_eq!(port.stats().sched.running, 1);
    ringport::blocking(|| {
        assert_eq!(port.stats().sched.running, 0);
        ringport::blocking(|| assert_eq!(port.stats().sched.running, 0));
        assert_eq!(
            port.stats().sched.running,
            0,
            "an inner blocking gave it back"
        );
    });
    assert_eq!(port.stats().sched.running, 1);
    assert!(matches!(
        port.get(Some(Duration::ZERO)),
        Err(Error::Timeout)
    ));
    assert_eq!(port.stats().sched.running, 0);
});

// port.rs `Builder::max_in_flight`: "0 is taken as 1" (documented by this
// review); "The backend may lower the cap", never raise it.
backend_test!(max_in_flight_bounds, |choice: BackendChoice| {
    let port = build(builder(choice).max_in_flight(0));
    assert_eq!(port.max_in_flight(), 1);
    port.submit(Op::nop(), 1).unwrap();
    assert_eq!(get(&port).user_data, 1);
    let port = build(builder(choice).max_in_flight(1 << 20));
    assert!(port.max_in_flight() <= 1 << 20 && port.max_in_flight() > 0);
});

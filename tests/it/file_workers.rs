//! File operations the backend runs on blocking worker threads (every file
//! operation on epoll; on io_uring only those a kernel lacks the opcode for):
//! a job waiting for a worker acts on its own file even if the caller's
//! descriptor is closed meanwhile, and a job blocked in the kernel does not
//! hang the port's close (session 12's review).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ringport::{BackendChoice, Op};

use crate::common::*;

/// A FIFO in a fresh temp path: opening it to read blocks until a writer comes.
fn fifo(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ringport-fifo-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path alive for the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    p
}

/// Opens `p` to write without blocking (there is a reader, or it fails).
fn open_writer(p: &PathBuf) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
}

backend_test!(
    a_write_waiting_for_a_worker_reaches_its_own_file_after_close,
    |choice: BackendChoice| {
        let port = port(choice);
        let tag = format!("{choice:?}-w");
        let f = fifo(&tag);
        // Every worker busy (epoll has at most 64): the write waits its turn.
        for i in 0..64 {
            port.submit(Op::openat(None, &f, libc::O_RDONLY, 0), 1000 + i)
                .unwrap();
        }
        thread::sleep(Duration::from_millis(100));
        let pa = std::env::temp_dir().join(format!("ringport-a-{}-{tag}", std::process::id()));
        let pb = std::env::temp_dir().join(format!("ringport-b-{}-{tag}", std::process::id()));
        let fa = std::fs::File::create(&pa).unwrap();
        let num = fa.as_raw_fd();
        port.associate(&fa, 7).unwrap();
        port.submit(Op::write_at(&fa, b"meant for A".to_vec(), 0), 1)
            .unwrap();
        port.submit(Op::close(OwnedFd::from(fa)), 2).unwrap();
        // The close ran (at once on epoll): the next file takes its number.
        let fb = std::fs::File::create(&pb).unwrap();
        let reused = fb.as_raw_fd() == num;
        // Release the workers: opening the FIFO's write side lets every
        // blocked open finish.
        let writer = (0..1000)
            .find_map(|_| {
                open_writer(&f).ok().or_else(|| {
                    thread::sleep(Duration::from_millis(1));
                    None
                })
            })
            .expect("open the FIFO's write side");
        let mut seen = 0;
        while seen < 66 {
            let c = get(&port);
            if c.user_data < 1000 {
                assert!(c.result.is_ok(), "op {}: {:?}", c.user_data, c.result);
            }
            seen += 1;
        }
        drop(writer);
        let read = |p: &PathBuf| {
            let mut s = String::new();
            std::fs::File::open(p)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        assert_eq!(read(&pa), "meant for A", "the write missed its file");
        assert_eq!(
            read(&pb),
            "",
            "the write landed in another file (number reused: {reused})"
        );
        drop(fb);
        for p in [&pa, &pb, &f] {
            let _ = std::fs::remove_file(p);
        }
    }
);

#[test]
fn close_does_not_hang_on_a_fallback_job_blocked_in_the_kernel() {
    // io_uring with `openat` forced onto the worker threads (as on a kernel
    // without the opcode): the job blocks on a worker, not in io-wq.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "file_workers::close_does_not_hang_on_an_operation_blocked_in_the_kernel::uring",
            "--exact",
            "--nocapture",
        ])
        .env("RINGPORT_URING_OPS_OFF", "openat")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

backend_test!(
    close_does_not_hang_on_an_operation_blocked_in_the_kernel,
    |choice: BackendChoice| {
        let port = port(choice);
        let f = fifo(&format!("{choice:?}-c"));
        // An open of a FIFO nobody writes to blocks (on a worker, on epoll).
        port.submit(Op::openat(None, &f, libc::O_RDONLY, 0), 1)
            .unwrap();
        thread::sleep(Duration::from_millis(50));
        let (tx, rx) = mpsc::channel();
        let p = port.clone();
        let closer = thread::spawn(move || {
            p.close();
            let _ = tx.send(());
        });
        let closed = rx.recv_timeout(T).is_ok();
        // Unblock whatever is left, so no thread outlives the test for long.
        let _w = open_writer(&f);
        assert!(closed, "close() hung on an operation blocked in the kernel");
        closer.join().unwrap();
        let _ = std::fs::remove_file(&f);
    }
);

backend_test!(
    an_offset_past_i64_max_is_refused_alike_on_both_backends,
    |choice: BackendChoice| {
        use std::io::{Seek, SeekFrom, Write};
        let port = port(choice);
        let mut f = temp_file();
        f.write_all(b"0123456789").unwrap();
        f.seek(SeekFrom::Start(4)).unwrap();
        port.associate(&f, 1).unwrap();
        let (sock, _peer) = tcp_pair();
        port.associate(&sock, 2).unwrap();
        // io_uring reads -1 as "the current position": it must not here.
        for (i, op) in [
            Op::read_at(&f, Vec::with_capacity(3), u64::MAX),
            Op::write_at(&f, b"XY".to_vec(), u64::MAX),
            Op::read_at(&f, Vec::with_capacity(3), 1 << 63),
            Op::send_file(&sock, &f, u64::MAX, 100),
        ]
        .into_iter()
        .enumerate()
        {
            port.submit(op, i as u64).unwrap();
            let c = get(&port);
            assert_errno(&c.result, libc::EINVAL);
        }
        assert_eq!(f.stream_position().unwrap(), 4, "the file position moved");
        let mut all = String::new();
        std::fs::File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .unwrap()
            .read_to_string(&mut all)
            .unwrap();
        assert_eq!(all, "0123456789", "the file was written");
    }
);

backend_test!(
    a_close_refused_for_room_leaves_the_number_free,
    |choice: BackendChoice| {
        use std::os::unix::net::UnixStream;
        let port = build(builder(choice).max_in_flight(1));
        let (a, _peer) = UnixStream::pair().unwrap();
        port.associate(&a, 1).unwrap();
        let recv = port
            .submit(Op::recv(&a, Vec::with_capacity(16)), 10)
            .unwrap();
        // No room (on io_uring; epoll's close ends the queued receive first,
        // which makes room): refused or not, the descriptor is closed.
        let r = port.try_submit(Op::close(OwnedFd::from(a)), 11);
        assert!(
            matches!(r, Ok(_) | Err(ringport::Error::QueueFull)),
            "{r:?}"
        );
        // The number's next socket associates, and the old receive ends.
        let (c, _cpeer) = UnixStream::pair().unwrap();
        port.associate(&c, 2).unwrap();
        let _ = port.cancel(recv);
        loop {
            let got = get(&port);
            if got.user_data == 10 {
                assert!(got.result.is_err(), "{:?}", got.result);
                break;
            }
            assert_eq!(got.user_data, 11, "{got:?}");
        }
    }
);

backend_test!(
    send_file_from_what_it_cannot_read_fails_alike_on_both_backends,
    |choice: BackendChoice| {
        // A pipe, a socket, a directory and a write-only file as the source:
        // the same errno on both backends (sendfile said ESPIPE for a
        // socket, where io_uring's splice says EINVAL).
        use std::io::Write;
        let port = port(choice);
        let (sock, _peer) = tcp_pair();
        port.associate(&sock, 2).unwrap();
        let (pipe, mut w) = crate::common::pipe();
        w.write_all(b"hello").unwrap();
        let (other, _other_peer) = tcp_pair();
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        let write_only = write_only_file();
        for (name, op, errno) in [
            ("a pipe", Op::send_file(&sock, &pipe, 0, 5), libc::ESPIPE),
            ("a socket", Op::send_file(&sock, &other, 0, 5), libc::EINVAL),
            (
                "a directory",
                Op::send_file(&sock, &dir, 0, 5),
                libc::EINVAL,
            ),
            (
                "a write-only file",
                Op::send_file(&sock, &write_only, 0, 5),
                libc::EBADF,
            ),
        ] {
            port.submit(op, 0).unwrap();
            let c = get(&port);
            assert_eq!(
                c.result.as_ref().map_err(|e| e.raw_os_error()),
                Err(Some(errno)),
                "{name}"
            );
        }
    }
);

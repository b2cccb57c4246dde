//! `fs::File` at its edges (session 13's review): appending writers, many
//! `write_all`s on one file at once, a `write_all` dropped midway, a file
//! taken over at its position, options that used to clash, and descriptors
//! that cannot seek — the same on both backends.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Duration;

use ringport::fs::{File, OpenOptions};
use ringport::time::timeout;
use ringport::BackendChoice;

use crate::common::*;
use crate::rt::{block, runtime, wait_idle};

backend_test!(
    appending_writers_never_write_over_each_other,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("append");
        let p = dir.path("log");
        std::fs::write(&p, b"0123456789").unwrap();
        block(&h, async move {
            let open = || async {
                OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&p)
                    .await
                    .expect("open to append")
            };
            let (a, b) = (open().await, open().await);
            // Another writer appends after both opened.
            let mut other = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
            other.write_all(b"xyz").unwrap();
            a.write_all(b"AAAA".to_vec()).await.0.unwrap();
            b.write_all(b"BB".to_vec()).await.0.unwrap();
            // write_at on an appending file appends too (Linux's rule).
            a.write_at(b"!".to_vec(), 0).await.0.unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"0123456789xyzAAAABB!");
            // The cursor is for reads, and starts at 0.
            let (n, all) = a.read_to_end(Vec::new()).await;
            assert_eq!(n.unwrap(), 20);
            assert_eq!(all, b"0123456789xyzAAAABB!");
        });
        wait_idle(&h);
    }
);

backend_test!(append_false_keeps_write_access, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let dir = TempDir::new("append-false");
    let p = dir.path("f");
    block(&h, async move {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .append(false)
            .open(&p)
            .await
            .expect("write + create + append(false) opens, as with std");
        f.write_all(b"hi".to_vec()).await.0.unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hi");
    });
});

backend_test!(
    concurrent_write_alls_on_one_file_keep_every_byte,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("concurrent");
        let p = dir.path("f");
        let f = Arc::new(block(&h, {
            let p = p.clone();
            async move { File::create(&p).await.unwrap() }
        }));
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let f = f.clone();
                rt.spawn(async move { f.write_all(vec![b'a' + i; 4096]).await.0 })
            })
            .collect();
        for t in tasks {
            block(&h, t).unwrap().unwrap();
        }
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 8 * 4096, "bytes were written over");
        // Each write is whole, in a range of its own.
        let mut seen: Vec<u8> = data.chunks(4096).map(|c| c[0]).collect();
        for c in data.chunks(4096) {
            assert!(
                c.iter().all(|&b| b == c[0]),
                "two writes mixed in one range"
            );
        }
        seen.sort();
        assert_eq!(seen, (0..8u8).map(|i| b'a' + i).collect::<Vec<_>>());
    }
);

backend_test!(
    a_dropped_write_all_leaves_the_cursor_past_its_range,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("dropped");
        let p = dir.path("f");
        block(&h, async move {
            let f = File::create(&p).await.unwrap();
            let len = 32 << 20;
            // Usually cut off before it is done; either way the next write
            // goes after its range, never into it.
            let _ = timeout(Duration::from_micros(200), f.write_all(vec![b'A'; len])).await;
            f.write_all(b"second".to_vec()).await.0.unwrap();
            let data = std::fs::read(&p).unwrap();
            assert_eq!(data.len(), len + 6);
            assert_eq!(&data[len..], b"second");
        });
        wait_idle(&h);
    }
);

backend_test!(
    a_file_taken_over_keeps_its_position,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("from-std");
        let p = dir.path("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut std_file = std::fs::File::open(&p).unwrap();
        std_file.seek(SeekFrom::Start(4)).unwrap();
        block(&h, async move {
            let f = File::from_std(std_file).unwrap();
            let (n, rest) = f.read_to_end(Vec::new()).await;
            assert_eq!(n.unwrap(), 6);
            assert_eq!(rest, b"456789");
        });
    }
);

backend_test!(
    a_pipe_or_fifo_is_refused_with_a_clear_error,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("fifo");
        let fifo = dir.path("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A writer, so that an open for reading could not wait forever
        // (opened read-write: on Linux that never waits for a peer, where a
        // write-only open waited for one and hung the test when it came
        // after `File::open`'s probe had closed its end).
        let _w = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        block(&h, async move {
            let e = File::open(&fifo)
                .await
                .expect_err("a FIFO opened as a File");
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("seekable"), "{e}");
            let (r, _w) = crate::common::pipe();
            let e = File::from_std(r).expect_err("a pipe taken over as a File");
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        });
        wait_idle(&h);
    }
);

backend_test!(
    a_unix_connect_to_a_full_accept_queue_ends,
    |choice: BackendChoice| {
        use ringport::net::UnixStream;
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("unix-full");
        let path = dir.path("s");
        let l = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        l.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
        l.listen(0).unwrap();
        // Fill the accept queue with plain blocking-free connects.
        let mut held = Vec::new();
        loop {
            let s =
                socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            match s.connect(&socket2::SockAddr::unix(&path).unwrap()) {
                Ok(()) => held.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the queue: {e}"),
            }
            assert!(held.len() < 1000, "the accept queue never filled");
        }
        // Room appears a little later.
        let acceptor = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let a = l.accept();
            (l, a)
        });
        let r = block(
            &h,
            async move { timeout(T, UnixStream::connect(&path)).await },
        );
        match r {
            Err(_) => panic!("the connect never ended"),
            // io_uring waits for the room; epoll says WouldBlock at once.
            Ok(Ok(_)) => {}
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
        }
        let _ = acceptor.join().unwrap();
        drop(held);
        wait_idle(&h);
    }
);

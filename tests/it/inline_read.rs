//! Inline buffered reads (`src/sys/inline_read.rs`): a read the page cache can
//! serve completes on the submitting thread — its completion is queued before
//! `submit` returns — and returns exactly what a queued read returns; direct
//! reads and reads on anything but a buffered regular file take the queued path.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use ringport::{BackendChoice, Op};

use crate::common::*;

fn cached_file(len: usize) -> std::fs::File {
    let mut f = temp_file();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).unwrap();
    f
}

backend_test!(
    a_cached_read_completes_before_submit_returns,
    |choice: BackendChoice| {
        let port = port(choice);
        let f = cached_file(10_000);
        port.associate(&f, 1).unwrap();
        port.submit(Op::read_at(&f, Vec::with_capacity(4096), 100), 7)
            .unwrap();
        assert_eq!(
            port.stats().sched.queued,
            1,
            "the page-cache hit is queued by submit itself"
        );
        let c = get(&port);
        assert_eq!((c.key, c.user_data), (1, 7));
        assert_eq!(c.result.unwrap(), 4096);
        let want: Vec<u8> = (100..4196).map(|i| (i % 251) as u8).collect();
        assert_eq!(c.buf.unwrap(), want);
    }
);

backend_test!(
    inline_reads_end_like_queued_ones,
    |choice: BackendChoice| {
        let port = port(choice);
        let f = cached_file(10_000);
        port.associate(&f, 1).unwrap();
        // Across the end of the file: the bytes up to it.
        port.submit(Op::read_at(&f, Vec::with_capacity(4096), 8192), 0)
            .unwrap();
        let c = get(&port);
        assert_eq!(c.result.unwrap(), 10_000 - 8192);
        assert_eq!(c.buf.unwrap().len(), 10_000 - 8192);
        // At and past the end: 0.
        for off in [10_000, 1 << 40] {
            port.submit(Op::read_at(&f, Vec::with_capacity(64), off), 0)
                .unwrap();
            assert_eq!(get(&port).result.unwrap(), 0, "offset {off}");
        }
        // Vectored, in order.
        let bufs = vec![Vec::with_capacity(3), Vec::with_capacity(5)];
        port.submit(Op::readv_at(&f, bufs, 0), 0).unwrap();
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().unwrap(), &8);
        assert_eq!(
            c.take_bufs().unwrap(),
            vec![vec![0, 1, 2], vec![3, 4, 5, 6, 7]]
        );
        // A file open for writing only: EBADF, as the queued path gives.
        let w = write_only_file();
        port.associate(&w, 2).unwrap();
        port.submit(Op::read_at(&w, Vec::with_capacity(64), 0), 0)
            .unwrap();
        assert_errno(&get(&port).result, libc::EBADF);
    }
);

backend_test!(a_direct_read_is_never_inline, |choice: BackendChoice| {
    let f = cached_file(16_384);
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    let direct = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: the temp directory's file system refuses O_DIRECT: {e}");
            return;
        }
    };
    let port = port(choice);
    port.associate(&direct, 1).unwrap();
    // The test binary's allocator may not page-align this buffer: then the
    // kernel refuses the direct read (EINVAL) — either way it is not inline.
    let buf: Vec<u8> = Vec::with_capacity(4096);
    port.submit(Op::read_at(&direct, buf, 0), 0).unwrap();
    if choice == BackendChoice::Uring {
        // Not done by submit: its CQE waits in the ring until a get reaps it.
        assert_eq!(
            port.stats().sched.queued,
            0,
            "a direct read is queued to the kernel"
        );
    }
    let c = get(&port);
    match c.result {
        Ok(n) => assert_eq!(n, 4096),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "unaligned buffer"),
    }
});

//! What the async face refuses, and how: a clear error, at once, with the
//! caller's buffers handed back. Found by the session 17 review (each test
//! but the last failed before its fix, on both backends).

use std::os::unix::fs::OpenOptionsExt;

use ringport::fs::{File, OpenOptions};
use ringport::time::timeout;
use ringport::BackendChoice;

use crate::common::*;
use crate::rt::{block, runtime};

/// A FIFO in a temp folder (kept while the folder lives).
fn fifo(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path("fifo");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    path
}

// The fs docs: opening a FIFO fails with `InvalidInput`. With no one at the
// other end, open(2) used to wait for one for ever (on a blocking thread).
backend_test!(
    opening_a_fifo_with_no_peer_fails_at_once,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("fifo-alone");
        let path = fifo(&dir);
        for write in [false, true] {
            let p = path.clone();
            let r = block(&h, async move {
                let mut o = OpenOptions::new();
                o.read(!write).write(write);
                timeout(T, o.open(&p))
                    .await
                    .map(|r| r.map(drop).map_err(|e| e.kind()))
            });
            // Let an open stuck in open(2) go (a peer appears), then judge.
            let _peer = std::fs::OpenOptions::new()
                .read(write)
                .write(!write)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
            assert_eq!(
                r,
                Ok(Err(std::io::ErrorKind::InvalidInput)),
                "open of a FIFO with no peer, for {} (Err(Elapsed): it waited for one)",
                if write { "writing" } else { "reading" }
            );
        }
    }
);

// Owned buffers come back on every path: an operation the runtime refuses
// (it has shut down) hands its buffer back with the error.
backend_test!(
    a_refused_operation_gives_its_buffer_back,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let f = block(
            &h,
            async move { File::from_std(temp_file()).expect("file") },
        );
        drop(rt);
        let f = std::sync::Arc::new(f);
        let f2 = f.clone();
        let (r, buf) = block(
            &h,
            async move { f2.read_at(Vec::with_capacity(4096), 0).await },
        );
        assert!(r.is_err(), "a read after shutdown: {r:?}");
        assert_eq!(buf.capacity(), 4096, "the read's buffer was dropped: {r:?}");
        let (r, buf) = block(&h, async move { f.write_at(vec![7; 100], 0).await });
        assert!(r.is_err(), "a write after shutdown: {r:?}");
        assert_eq!(buf, vec![7; 100], "the write's buffer was dropped: {r:?}");
    }
);

// A Unix socket path with a NUL inside is refused, as std refuses it (the
// kernel would read the path as ending at the NUL, and bind another one).
backend_test!(
    a_unix_path_with_a_nul_inside_is_refused,
    |choice: BackendChoice| {
        use ringport::net::{UnixListener, UnixStream};
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let dir = TempDir::new("unix-nul");
        let mut p = dir.path("a").into_os_string();
        p.push("\0b");
        let p2 = p.clone();
        let r = block(&h, async move {
            UnixListener::bind(&p).map(drop).map_err(|e| e.kind())
        });
        assert_eq!(
            r,
            Err(std::io::ErrorKind::InvalidInput),
            "bind(\"<dir>/a\\0b\"); a socket at <dir>/a: {}",
            dir.path("a").exists()
        );
        let r = block(&h, async move {
            UnixStream::connect(&p2)
                .await
                .map(drop)
                .map_err(|e| e.kind())
        });
        assert_eq!(r, Err(std::io::ErrorKind::InvalidInput), "connect");
    }
);

// A write to a full device: a clear ENOSPC, and the buffer back.
backend_test!(
    write_all_on_a_full_device_is_enospc,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (r, buf) = block(&h, async move {
            let f = OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .await
                .expect("open");
            f.write_all(vec![1u8; 10000]).await
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(buf.len(), 10000);
    }
);

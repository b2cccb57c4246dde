//! Files on the port: [`File`] and [`OpenOptions`].
//!
//! Reads and writes are positional port operations (io_uring `READ`/`WRITE`; on
//! epoll, the backend's file threads) taking owned buffers. Opening (a path
//! lookup that may block on storage) runs on the runtime's blocking threads.
//! `File` also keeps a cursor for the sequential helpers
//! ([`read_to_end`](File::read_to_end), [`write_all`](File::write_all)).
//!
//! A `File` is for seekable files (regular files, block devices, most
//! character devices): opening or taking over a pipe, a FIFO, a socket or a
//! terminal fails with `InvalidInput` on both backends — use a stream handle
//! for those.
//!
//! ```
//! use ringport::fs::File;
//! let rt = ringport::Runtime::new()?;
//! let path = std::env::temp_dir().join(format!("ringport-fs-doc-{}", std::process::id()));
//! let p = path.clone();
//! rt.block_on(async move {
//!     let f = File::create(&p).await?;
//!     f.write_all(b"hello, file".to_vec()).await.0?;
//!     f.sync_all().await?;
//!     let f = File::open(&p).await?;
//!     let (n, buf) = f.read_at(Vec::with_capacity(4), 7).await;
//!     assert_eq!(&buf[..n?], b"file");
//!     let (all, _) = f.read_to_end(Vec::new()).await;
//!     assert_eq!(all?, 11);
//!     assert_eq!(f.metadata().await?.len(), 11);
//!     Ok::<(), std::io::Error>(())
//! })?;
//! std::fs::remove_file(&path)?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::net::core::Core;
use crate::op::Op;
use crate::rt::Handle;

/// How to open a file (the same choices as `std::fs::OpenOptions`).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    std: std::fs::OpenOptions,
    append: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// Nothing set: pick at least one of read, write or append.
    pub fn new() -> Self {
        OpenOptions {
            std: std::fs::OpenOptions::new(),
            append: false,
        }
    }

    /// Open for reading.
    pub fn read(&mut self, on: bool) -> &mut Self {
        self.std.read(on);
        self
    }

    /// Open for writing.
    pub fn write(&mut self, on: bool) -> &mut Self {
        self.std.write(on);
        self
    }

    /// Open for appending (`O_APPEND`, which implies writing): every write
    /// goes to the end of the file as it is then — atomically against other
    /// appending writers, and whatever offset `write_at` names (Linux's rule
    /// for `pwrite` on such a file). The cursor starts at 0, for reads, and
    /// appending writes do not move it.
    pub fn append(&mut self, on: bool) -> &mut Self {
        self.std.append(on);
        self.append = on;
        self
    }

    /// Truncate to 0 bytes.
    pub fn truncate(&mut self, on: bool) -> &mut Self {
        self.std.truncate(on);
        self
    }

    /// Create if missing.
    pub fn create(&mut self, on: bool) -> &mut Self {
        self.std.create(on);
        self
    }

    /// Create, failing if it exists.
    pub fn create_new(&mut self, on: bool) -> &mut Self {
        self.std.create_new(on);
        self
    }

    /// Opens `path` on the current runtime.
    pub async fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let rt = Handle::current()?;
        let opts = self.std.clone();
        let path = path.as_ref().to_path_buf();
        let f = rt
            .spawn_blocking(move || open_without_waiting(opts, &path))
            .await??;
        File::new(rt, f, false, self.append)
    }
}

/// Opens with `O_NONBLOCK`, then clears it: an open(2) of a FIFO would
/// otherwise wait for the other end for ever (a `File` refuses FIFOs, but
/// only once it holds one). For writing with no reader, the kernel says
/// `ENXIO`: refused like any FIFO.
fn open_without_waiting(mut opts: std::fs::OpenOptions, path: &Path) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = match opts.custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        // A lease on the file (`EWOULDBLOCK` without waiting for it to be
        // given up): wait, as a plain open does.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => opts.custom_flags(0).open(path)?,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(match std::fs::metadata(path) {
                Ok(m) if m.file_type().is_fifo() => not_seekable("ENXIO: a FIFO with no reader"),
                _ => e,
            })
        }
        Err(e) => return Err(e),
    };
    crate::sys::set_nonblocking_fd(f.as_raw_fd(), false)?;
    Ok(f)
}

/// The error for a descriptor a `File` cannot take (see the module docs).
fn not_seekable(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "ringport::fs::File is for seekable files; this is a pipe, FIFO, \
             socket or terminal ({what})"
        ),
    )
}

impl OpenOptions {}

/// An open file.
pub struct File {
    core: Arc<Core>,
    /// Where the sequential helpers go next. A `write_all` reserves its range
    /// here before it writes (`fetch_add`), so concurrent ones never write
    /// over each other, and one dropped midway still leaves the cursor past
    /// its range.
    cursor: AtomicU64,
    /// Opened with `O_APPEND`: writes go to the end, the cursor stays.
    append: bool,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("fd", &self.core.fd)
            .field("cursor", &self.cursor.load(Ordering::Relaxed))
            .finish()
    }
}

impl File {
    /// Opens for reading.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new().read(true).open(path).await
    }

    /// Opens for writing, creating or truncating.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await
    }

    /// Takes over a file opened elsewhere, at its current position (the
    /// cursor starts there) and in its mode (`O_APPEND` or not).
    pub fn from_std(f: std::fs::File) -> io::Result<File> {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl F_GETFL on a descriptor `f` owns; no memory passed.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        File::new(Handle::current()?, f, true, flags & libc::O_APPEND != 0)
    }

    /// A `File` on `f`, its cursor at the file's position (`at_position`) or
    /// at 0; refuses a descriptor that cannot seek (see the module docs).
    fn new(rt: Handle, f: std::fs::File, at_position: bool, append: bool) -> io::Result<File> {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek of 0 from the current position moves nothing; it
        // fails with ESPIPE on a pipe, FIFO, socket or terminal.
        let pos = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_CUR) };
        if pos < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ESPIPE) {
                not_seekable("ESPIPE")
            } else {
                e
            });
        }
        Ok(File {
            core: Core::new(rt, OwnedFd::from(f))?,
            cursor: AtomicU64::new(if at_position { pos as u64 } else { 0 }),
            append,
        })
    }

    /// Reads into `buf`'s capacity from `offset`; the buffer comes back with
    /// `len()` = the bytes read (0 at or past the end).
    pub async fn read_at(&self, buf: Vec<u8>, offset: u64) -> (io::Result<usize>, Vec<u8>) {
        match self.core.run(Op::read_at(&self.core.fd, buf, offset)).await {
            Ok(c) => (c.result, c.buf.unwrap_or_default()),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Writes `buf` at `offset` once; returns the count written (possibly short).
    pub async fn write_at(&self, buf: Vec<u8>, offset: u64) -> (io::Result<usize>, Vec<u8>) {
        match self
            .core
            .run(Op::write_at(&self.core.fd, buf, offset))
            .await
        {
            Ok(c) => (c.result, c.buf.unwrap_or_default()),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Writes all of `buf` at `offset` (on an `O_APPEND` file: at the end,
    /// whatever `offset` says).
    pub async fn write_all_at(&self, buf: Vec<u8>, offset: u64) -> (io::Result<()>, Vec<u8>) {
        let (r, buf, _) = self.write_all_counted(buf, offset).await;
        (r, buf)
    }

    /// `write_all_at`, also saying how many bytes were written.
    async fn write_all_counted(
        &self,
        buf: Vec<u8>,
        offset: u64,
    ) -> (io::Result<()>, Vec<u8>, usize) {
        let mut pos = 0usize;
        let mut buf = buf;
        while pos < buf.len() {
            let op = Op::write_at_from(&self.core.fd, buf, pos, offset.saturating_add(pos as u64));
            let c = match self.core.run(op).await {
                Ok(c) => c,
                Err(e) => return (Err(e), Vec::new(), pos),
            };
            buf = c.buf.unwrap_or_default();
            match c.result {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf, pos),
                Ok(n) => pos += n,
                Err(e) => return (Err(e), buf, pos),
            }
        }
        (Ok(()), buf, pos)
    }

    /// Writes all of `buf` at the cursor and moves it past them; on a file
    /// opened with [`append`](OpenOptions::append), at the end of the file.
    ///
    /// The range is taken from the cursor before the first byte is written,
    /// so concurrent calls on one `File` write one after another's range,
    /// never over it. A call that fails gives back what it did not write if
    /// no later call took a range meanwhile; a call dropped midway (or one
    /// that failed after another took a range) leaves its range in the file
    /// with whatever part of `buf` reached it.
    pub async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if self.append {
            // O_APPEND: every write goes to the end, whatever the offset.
            return self.write_all_at(buf, 0).await;
        }
        let len = buf.len() as u64;
        let at = self.cursor.fetch_add(len, Ordering::AcqRel);
        if at.checked_add(len).is_none_or(|end| end > i64::MAX as u64) {
            let _ = self.cursor.compare_exchange(
                at.wrapping_add(len),
                at,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return (Err(io::Error::from_raw_os_error(libc::EFBIG)), buf);
        }
        let (r, buf, written) = self.write_all_counted(buf, at).await;
        if r.is_err() {
            let _ = self.cursor.compare_exchange(
                at + len,
                at + written as u64,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        (r, buf)
    }

    /// Reads from the cursor to the end of the file, appending to `buf`; returns
    /// the count read and moves the cursor past it.
    pub async fn read_to_end(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let mut out = buf;
        let start = self.cursor.load(Ordering::Acquire);
        let mut at = start;
        let mut chunk = Vec::with_capacity(64 * 1024);
        loop {
            let (r, b) = self.read_at(chunk, at).await;
            match r {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&b[..n]);
                    at += n as u64;
                    chunk = b;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => chunk = b,
                Err(e) => {
                    self.cursor.store(at, Ordering::Release);
                    return (Err(e), out);
                }
            }
        }
        self.cursor.store(at, Ordering::Release);
        (Ok((at - start) as usize), out)
    }

    pub(crate) fn core(&self) -> Arc<Core> {
        self.core.clone()
    }

    /// Moves the cursor.
    pub fn seek_to(&self, pos: u64) {
        self.cursor.store(pos, Ordering::Release);
    }

    /// Flushes data and metadata to storage.
    pub async fn sync_all(&self) -> io::Result<()> {
        self.core
            .run(Op::fsync(&self.core.fd))
            .await?
            .result
            .map(drop)
    }

    /// Flushes data to storage.
    pub async fn sync_data(&self) -> io::Result<()> {
        self.core
            .run(Op::fdatasync(&self.core.fd))
            .await?
            .result
            .map(drop)
    }

    /// The file's metadata (`fstat`; a quick call on an open file).
    pub async fn metadata(&self) -> io::Result<std::fs::Metadata> {
        std::fs::File::from(self.core.fd.try_clone()?).metadata()
    }
}

impl std::os::fd::AsFd for File {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.core.fd)
    }
}

//! A file's bytes onto a socket: the one place a response body leaves a file.
//!
//! # Inline first, then wait through the port
//!
//! As nginx does on epoll, every send is first tried right here, on the
//! connection task's thread, without waiting: [`send_now`] (`send` with
//! `MSG_DONTWAIT`) for heads and in-memory bodies, [`send_body`]'s
//! non-blocking `sendfile(2)` for file bodies (the socket is made non-blocking
//! when the connection starts: [`nonblocking`]). While the socket's buffer has
//! room — nearly always for a 64 KiB body, and for most of a large one — a
//! response costs one or two system calls and no port operation (no
//! completion, no wake-up of the task). Only when the kernel says `EAGAIN`
//! does the task wait through the port: the rest of a head or in-memory body
//! goes as a `send` operation, and a file body waits for room
//! (`TcpStream::writable`: an io_uring `POLL_ADD`, or the epoll backend's
//! readiness) and goes on inline. A head followed by a file body is sent with
//! `MSG_MORE`, so it leaves in the same segments as the start of the body
//! rather than as a packet of its own.
//!
//! This replaced the port's copy-free transfer (`TcpStream::send_file`), which
//! on io_uring is two linked `SPLICE`s through a pipe, each run by an io-wq
//! worker thread: with `bench/serve-cost.sh` (wrk -c32, 16 MiB file, io_uring)
//! it cost about 1.6–2 × the server CPU per MiB of this path.
//!
//! Each wait for room is bounded by the send timeout, so a client that reads
//! slowly but steadily is not cut off in a long body. One inline `sendfile`
//! moves at most [`SEND_STEP`] bytes, and the task yields after each full step,
//! so a fast reader of a large file does not keep a pool thread from the
//! other connections.
//!
//! Costs accepted: an inline `sendfile` of a file that is not in the page
//! cache reads it from disk on the task's thread (nginx without `aio` does
//! the same); `SIGPIPE` is ignored in the `ringport` program (the Rust
//! runtime's default), so a peer gone away is `EPIPE`, never a signal.
//!
//! Where the kernel refuses `sendfile` for a file (a file system without
//! splice support: `EINVAL`, `ENOSYS`, `EOPNOTSUPP` before any byte went), the
//! body is copied instead: positional reads of [`CHUNK`] bytes into the
//! connection's buffer, each followed by `write_all`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use ringport::fs::File;
use ringport::net::TcpStream;

use super::{Waited, Watch};

/// Most bytes one inline `sendfile` moves (nginx's `sendfile_max_chunk`).
pub const SEND_STEP: usize = 2 << 20;
/// Bytes read and sent per step of the copying fallback.
pub const CHUNK: usize = 256 * 1024;

/// Sends `len` bytes of `file` from `offset`. Each wait for room may last at
/// most `limit`. `copy` asks for the copying path from the
/// start; `buf` is the connection's reusable buffer for that path.
///
/// A file that shrinks while it is sent fails with `UnexpectedEof`: the head
/// promised `len` bytes, so the connection must be closed.
pub async fn send_body(
    stream: &TcpStream,
    file: BorrowedFd<'_>,
    (offset, len): (u64, u64),
    watch: &Watch,
    limit: Duration,
    copy: bool,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    if copy {
        return copy_body(stream, file, offset, len, watch, limit, buf).await;
    }
    let (sock, fd) = (stream.as_raw_fd(), file.as_raw_fd());
    let end = offset + len;
    let mut pos = offset;
    // The socket's buffer may have room: false after an inline attempt found
    // it full.
    let mut room = true;
    while pos < end {
        let step = (end - pos).min(SEND_STEP as u64) as usize;
        let r = if room {
            match sendfile_now(sock, fd, pos, step) {
                Ok(Some(n)) if n == SEND_STEP => {
                    // More may fit at once: let the other tasks run first.
                    ringport::yield_now().await;
                    Ok(n)
                }
                Ok(Some(n)) => Ok(n),
                Ok(None) => {
                    room = false;
                    continue;
                }
                Err(e) => Err(e),
            }
        } else {
            match watch.wait(stream.writable(), limit, false).await {
                Waited::Done(Ok(())) => {
                    room = true;
                    continue;
                }
                Waited::Done(Err(e)) => Err(e),
                Waited::Elapsed | Waited::Stopped => return Err(io::ErrorKind::TimedOut.into()),
            }
        };
        match r {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => pos += n as u64,
            Err(e) if pos == offset && unsupported(&e) => {
                tracing::debug!("sendfile refused ({e}); copying the body instead");
                return copy_body(stream, file, pos, end - pos, watch, limit, buf).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes the socket non-blocking, so that [`sendfile_now`] never waits (the
/// epoll backend's sockets already are; io_uring's operations on it still wait
/// for readiness in the kernel).
pub fn nonblocking(stream: &TcpStream) -> io::Result<()> {
    let mut on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int from the pointer, which is ours and alive.
    if unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONBIO, &mut on) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One non-blocking `send` of `buf` (`more`: a body follows at once, so the
/// kernel may hold a partial segment for it). `Ok(0)` also when the socket's
/// buffer is full.
pub fn send_now(sock: RawFd, buf: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    loop {
        // SAFETY: send reads `buf.len()` initialised bytes we borrow; the
        // descriptor is the connection's socket, open for this call.
        let n = unsafe { libc::send(sock, buf.as_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// One `sendfile` of up to `len` bytes from `offset` into the non-blocking
/// socket; `None` if its buffer is full.
fn sendfile_now(sock: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<Option<usize>> {
    let mut off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: sendfile moves bytes between two descriptors (both open for
        // the call); the only memory it touches is `off`, which we own.
        let n = unsafe { libc::sendfile(sock, file, &mut off, len) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// The kernel cannot transfer this file without a copy.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// The copying path: read a chunk, send it, repeat.
async fn copy_body(
    stream: &TcpStream,
    file: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    watch: &Watch,
    limit: Duration,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    // Reads go through the port: the file joins it (a descriptor of its own,
    // as this path is rare: `--copy-bodies`, or a file system without
    // `sendfile`).
    let file = File::from_std(std::fs::File::from(file.try_clone_to_owned()?))?;
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let want = (end - pos).min(CHUNK as u64) as usize;
        // A read fills the buffer's capacity: a short rest gets a buffer of its
        // own size instead of a read of a whole chunk.
        let b = if buf.capacity() >= want && buf.capacity() <= want * 2 {
            std::mem::take(buf)
        } else {
            Vec::with_capacity(want)
        };
        let (r, mut got) = file.read_at(b, pos).await;
        let n = r?.min(want);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got.truncate(n);
        match watch.wait(stream.write_all(got), limit, false).await {
            Waited::Done((Ok(()), back)) => {
                if back.capacity() == CHUNK {
                    *buf = back;
                }
            }
            Waited::Done((Err(e), _)) => return Err(e),
            Waited::Elapsed | Waited::Stopped => return Err(io::ErrorKind::TimedOut.into()),
        }
        pos += n as u64;
    }
    Ok(())
}

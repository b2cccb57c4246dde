//! A file's bytes onto a socket: the one place a response body leaves a file.
//!
//! [`send_body`] hands the range to the port's copy-free transfer
//! (`TcpStream::send_file`: io_uring splice through a pipe, epoll `sendfile`),
//! [`SEND_STEP`] bytes per operation so that the send timeout measures progress
//! (a client that reads slowly but steadily is not cut off in a long body).
//! Where the kernel refuses that transfer for a file (a file system without
//! splice support: `EINVAL`, `ENOSYS`, `EOPNOTSUPP` before any byte went), the
//! body is copied instead: positional reads of [`CHUNK`] bytes into the
//! connection's buffer, each followed by `write_all`.

use std::io;
use std::time::Duration;

use ringport::fs::File;
use ringport::net::TcpStream;

use super::{Waited, Watch};

/// Bytes per copy-free transfer operation.
pub const SEND_STEP: usize = 1 << 20;
/// Bytes read and sent per step of the copying fallback.
pub const CHUNK: usize = 256 * 1024;

/// Sends `len` bytes of `file` from `offset`. Each step may wait at most
/// `limit` for the client to read. `copy` asks for the copying path from the
/// start; `buf` is the connection's reusable buffer for that path.
///
/// A file that shrinks while it is sent fails with `UnexpectedEof`: the head
/// promised `len` bytes, so the connection must be closed.
pub async fn send_body(
    stream: &TcpStream,
    file: &File,
    (offset, len): (u64, u64),
    watch: &Watch,
    limit: Duration,
    copy: bool,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    if copy {
        return copy_body(stream, file, offset, len, watch, limit, buf).await;
    }
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let step = (end - pos).min(SEND_STEP as u64) as usize;
        let n = match watch
            .wait(stream.send_file(file, pos, step), limit, false)
            .await
        {
            Waited::Done(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Waited::Done(Ok(n)) => n,
            Waited::Done(Err(e)) if pos == offset && unsupported(&e) => {
                tracing::debug!("send_file refused ({e}); copying the body instead");
                return copy_body(stream, file, pos, end - pos, watch, limit, buf).await;
            }
            Waited::Done(Err(e)) => return Err(e),
            Waited::Elapsed | Waited::Stopped => return Err(io::ErrorKind::TimedOut.into()),
        };
        pos += n as u64;
    }
    Ok(())
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
    file: &File,
    offset: u64,
    len: u64,
    watch: &Watch,
    limit: Duration,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
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

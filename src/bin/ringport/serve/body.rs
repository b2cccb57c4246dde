//! A file's bytes onto a socket: the one place a response body leaves a file.
//!
//! Today: positional reads of up to [`CHUNK`] bytes into the connection's
//! buffer, each followed by `write_all` of that buffer (one copy through user
//! space). When the port's copy-free file → socket operation (`Op::send_file`:
//! io_uring splice, epoll `sendfile`) is available, [`send_body`] becomes that
//! operation per range and nothing else in the server changes.

use std::io;
use std::time::Duration;

use ringport::fs::File;
use ringport::net::TcpStream;

use super::{Waited, Watch};

/// Bytes read and sent per step.
pub const CHUNK: usize = 256 * 1024;

/// Sends `len` bytes of `file` from `offset`. Each send may wait at most `limit`
/// for the client to read. `buf` is the connection's reusable buffer.
///
/// A file that shrinks while it is sent fails with `UnexpectedEof`: the head
/// promised `len` bytes, so the connection must be closed.
pub async fn send_body(
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
        } else if want == CHUNK {
            Vec::with_capacity(CHUNK)
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

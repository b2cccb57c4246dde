//! `TcpStream::send_zc_all`: zero-copy sends on the async face.

use std::io;

use super::TcpStream;
use crate::op::Op;

impl TcpStream {
    /// Sends all of `buf` without copying it into the kernel
    /// ([`Op::send_zc`](crate::Op::send_zc), resubmitted after short sends),
    /// and hands the buffer back once the kernel has let go of it: each send
    /// completes only after the kernel's notification (for TCP, once the peer
    /// has acknowledged the bytes), so this returns later than
    /// [`write_all`](TcpStream::write_all) would. Worth it for large
    /// payloads. On epoll (and where the kernel cannot) it is a plain send.
    ///
    /// A dropped future cancels the send in progress; the buffer stays with
    /// the runtime until the kernel releases it.
    pub async fn send_zc_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut pos = 0;
        let mut buf = buf;
        // After what `AsyncWrite` left in flight, not ahead of it.
        if let Err(e) = crate::net::stream::behind_write_behind(&self.core).await {
            return (Err(e), buf);
        }
        while pos < buf.len() {
            let c = match self
                .core
                .run(Op::send_zc_from(&self.core.fd, buf, pos))
                .await
            {
                Ok(c) => c,
                Err(e) => return (Err(e), Vec::new()),
            };
            buf = c.buf.unwrap_or_default();
            match c.result {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => pos += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }
}

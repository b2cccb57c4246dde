//! `Op::send_zc`: sending without copying the bytes into the kernel.

use std::os::fd::AsFd;

use super::{raw, Op, OpBody};

impl Op {
    /// Sends all of `buf` on a connected socket without copying it: the
    /// kernel sends straight from `buf`'s pages (`IORING_OP_SEND_ZC`, Linux
    /// 6.0). Worth it for large payloads (tens of KiB and up); for small ones
    /// the page pinning and the second kernel event cost more than the copy.
    ///
    /// **One completion, after the kernel lets go of the buffer.** The kernel
    /// reports a zero-copy send twice: once when the bytes are queued (the
    /// result), and once more — the *notification* — when it no longer reads
    /// the buffer (for TCP, once the peer has acknowledged the data). The port
    /// delivers the operation's single completion only after the notification,
    /// with the result of the first report and the buffer in
    /// [`Completion::buf`](crate::Completion::buf): so the buffer can never be
    /// reused, or freed, while the kernel may still send from it.
    ///
    /// The rest is [`Op::send`]'s contract: a short send completes with the
    /// count sent (resubmit the rest with [`Op::send_zc_from`]); `MSG_NOSIGNAL`
    /// is always set, so a closed peer gives `EPIPE` (or `ECONNRESET`), never a
    /// `SIGPIPE`, and the buffer still comes back.
    ///
    /// **Cancel.** Before the first report, a cancel works as for a send
    /// (`ECANCELED`, nothing sent). Once the bytes are queued the send has
    /// happened and cannot be taken back: a cancel then loses, and the
    /// completion (still after the notification) carries the real count.
    /// Closing the port waits for the notifications like for any operation in
    /// flight; if one has not come a few seconds into the close (a peer that
    /// never reads keeps the data queued), the port gives up waiting and
    /// leaks that buffer rather than free memory the kernel may still read.
    ///
    /// **Where the kernel cannot.** On epoll, on a kernel without `SEND_ZC`,
    /// and on sockets the kernel cannot send from user pages (Unix sockets:
    /// `EOPNOTSUPP`, retried as a plain send at once), this is an ordinary
    /// copying send with the same single completion;
    /// [`PortStats::op_paths`](crate::PortStats::op_paths) and `ringport info`
    /// say which path `SendZc` takes. Over loopback the kernel copies anyway
    /// (at delivery), so 127.0.0.1 shows the mechanism, not the saving.
    ///
    /// Not run as a test: it needs a peer on 127.0.0.1:9000 that reads 8 MiB.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// let port = CompletionPort::new()?;
    /// let socket = std::net::TcpStream::connect("127.0.0.1:9000")?;
    /// port.associate(&socket, 1)?;
    /// let payload = vec![7u8; 8 << 20];
    /// let mut pos = 0;
    /// let mut buf = payload;
    /// while pos < buf.len() {
    ///     port.submit(Op::send_zc_from(&socket, buf, pos), 0)?;
    ///     let mut c = port.get(None)?;
    ///     buf = c.buf.take().expect("the buffer comes back");
    ///     pos += c.result?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_zc(socket: &impl AsFd, buf: Vec<u8>) -> Op {
        Op::send_zc_from(socket, buf, 0)
    }

    /// Sends `buf[pos..]` without copying it, as [`Op::send_zc`].
    pub fn send_zc_from(socket: &impl AsFd, buf: Vec<u8>, pos: usize) -> Op {
        let pos = pos.min(buf.len());
        Op::new(OpBody::SendZc {
            fd: raw(socket),
            buf,
            pos,
            flags: libc::MSG_NOSIGNAL,
        })
    }
}

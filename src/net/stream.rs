//! The API every byte stream shares (TCP and Unix), generated for each type by
//! `stream_api!`: owned-buffer `read`/`write`/`write_all`, `shutdown`, the
//! `futures-io` traits, and the drop rule (see `core.rs`).

use std::io;
use std::net::Shutdown;
use std::sync::Arc;

use super::core::Core;
use crate::op::Op;

/// Tries `buf` with one non-blocking `send(2)` on this thread (see "Writes"
/// in `core.rs`). `Some(Ok(n))`: `n` bytes went (possibly
/// fewer than asked); `Some(Err)`: the send's error; `None`: nothing was
/// tried or the socket's buffer is full: go through the port.
///
/// `owned`: the caller is an owned-buffer write, which is tried only while no
/// `AsyncWrite` send is in flight on the stream (one started by `poll_write`
/// may not have reached the kernel yet; an inline send would overtake it).
pub(crate) fn try_send_now(core: &Core, buf: &[u8], owned: bool) -> Option<io::Result<usize>> {
    if buf.is_empty()
        || !core.send_inline
        || (owned && !core.no_write_behind())
        || !crate::rt::op::inline_turn()
    {
        return None;
    }
    crate::sys::rawcall::send_now(std::os::fd::AsRawFd::as_raw_fd(&core.fd), buf, 0)
}

/// Waits until no `AsyncWrite` send is in flight on the stream (the rest of
/// a short one included), so an owned write does not overtake it; its error,
/// if it failed, is the owned write's.
pub(crate) async fn behind_write_behind(core: &Arc<Core>) -> io::Result<()> {
    if core.no_write_behind() {
        return Ok(());
    }
    std::future::poll_fn(|cx| core.poll_flush_writes(cx)).await
}

/// Writes all of `buf`, resubmitting after short sends.
pub(crate) async fn write_all(core: &Arc<Core>, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let mut pos = 0;
    let mut buf = buf;
    if let Err(e) = behind_write_behind(core).await {
        return (Err(e), buf);
    }
    match try_send_now(core, &buf, true) {
        Some(Ok(n)) => pos = n,
        Some(Err(e)) => return (Err(e), buf),
        None => {}
    }
    while pos < buf.len() {
        let c = match core.run(Op::send_from(&core.fd, buf, pos)).await {
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

/// Sends once from `buf[0..]`.
pub(crate) async fn write(core: &Arc<Core>, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    if let Err(e) = behind_write_behind(core).await {
        return (Err(e), buf);
    }
    if let Some(r) = try_send_now(core, &buf, true) {
        return (r, buf);
    }
    match core.run(Op::send(&core.fd, buf)).await {
        Ok(c) => (c.result, c.buf.unwrap_or_default()),
        Err(e) => (Err(e), Vec::new()),
    }
}

/// Shuts down a side. With an `AsyncWrite` send still in flight, the writing
/// side is shut once that send has gone out, by a task of the stream's
/// runtime: shut at once, the FIN overtook bytes `poll_write` had reported
/// written, and they never reached the peer (a review, session 17). A failed
/// send leaves the side open (the socket is broken anyway); `flush` says why.
pub(crate) fn shutdown(core: &Arc<Core>, how: Shutdown) -> io::Result<()> {
    if how == Shutdown::Read || core.no_write_behind() {
        return socket2::SockRef::from(&core.fd).shutdown(how);
    }
    if how == Shutdown::Both {
        socket2::SockRef::from(&core.fd).shutdown(Shutdown::Read)?;
    }
    let c = core.clone();
    drop(core.rt.spawn(async move {
        if behind_write_behind(&c).await.is_ok() {
            let _ = socket2::SockRef::from(&c.fd).shutdown(Shutdown::Write);
        }
    }));
    Ok(())
}

macro_rules! stream_api {
    ($t:ident) => {
        impl $t {
            /// Receives into `buf`'s capacity; returns the count (0 = the peer
            /// closed its side, or `buf` has no capacity) and the buffer, whose
            /// `len()` is the count. Bytes a dropped read had received come first.
            pub async fn read(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
                $crate::net::core::ReadFuture::new(self.core.clone(), buf).await
            }

            /// Sends once from `buf`; returns the count sent (possibly short).
            pub async fn write(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
                $crate::net::stream::write(&self.core, buf).await
            }

            /// Sends all of `buf`.
            ///
            /// Writes of several tasks to one stream at once are not kept
            /// whole: a send with room goes at once, the rest of a short one
            /// later, so another task's bytes may come between. Keep one
            /// writer per stream (or a lock around whole messages).
            pub async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
                $crate::net::stream::write_all(&self.core, buf).await
            }

            /// Shuts down the read side, the write side, or both. The write
            /// side is shut after any send `AsyncWrite::poll_write` left in
            /// flight has gone out.
            pub fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
                $crate::net::stream::shutdown(&self.core, how)
            }
        }

        impl std::os::fd::AsFd for $t {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(&self.core.fd)
            }
        }

        impl std::os::fd::AsRawFd for $t {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(&self.core.fd)
            }
        }

        impl Drop for $t {
            fn drop(&mut self) {
                self.core.release();
            }
        }

        impl futures_io::AsyncRead for $t {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.core.poll_read_into(cx, buf)
            }
        }

        impl futures_io::AsyncWrite for $t {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.core.poll_write_from(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.core.poll_flush_writes(cx)
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::ready!(self.core.poll_flush_writes(cx))?;
                match $crate::net::stream::shutdown(&self.core, std::net::Shutdown::Write) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotConnected => {
                        std::task::Poll::Ready(Err(e))
                    }
                    _ => std::task::Poll::Ready(Ok(())),
                }
            }
        }
    };
}

pub(crate) use stream_api;

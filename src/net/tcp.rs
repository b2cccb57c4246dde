//! TCP: [`TcpListener`] and [`TcpStream`].

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::core::{accept, Core};
use super::stream::stream_api;
use crate::op::Op;
use crate::rt::Handle;

/// Resolves `addr` (a name lookup may block: it is made under a blocking hint).
pub(crate) fn resolve(addr: impl ToSocketAddrs) -> io::Result<Vec<SocketAddr>> {
    let v: Vec<SocketAddr> = crate::blocking(|| addr.to_socket_addrs())?.collect();
    if v.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        ));
    }
    Ok(v)
}

/// A listening TCP socket.
pub struct TcpListener {
    core: Arc<Core>,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local", &self.local_addr().ok())
            .finish()
    }
}

impl TcpListener {
    /// Binds (with `SO_REUSEADDR`) and listens (backlog 1024) on the first address
    /// `addr` resolves to that works.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let rt = Handle::current()?;
        let mut last = None;
        for a in resolve(addr)? {
            let s = Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            match s.bind(&a.into()).and_then(|()| s.listen(1024)) {
                Ok(()) => return TcpListener::new(rt, OwnedFd::from(s)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address to bind")))
    }

    /// Takes over a listening socket made elsewhere (e.g. with `socket2`).
    /// It is switched to non-blocking mode (see [`accept`](Self::accept)); a
    /// duplicate of it elsewhere shares that mode.
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        TcpListener::new(Handle::current()?, OwnedFd::from(l))
    }

    /// The listener is non-blocking, so that `accept` can try `accept4` on
    /// the task's thread (io_uring still waits for a connection in the kernel:
    /// its accept arms a poll on `EAGAIN` whatever the socket's mode; the
    /// tests run it on both backends).
    fn new(rt: Handle, fd: OwnedFd) -> io::Result<TcpListener> {
        SockRef::from(&fd).set_nonblocking(true)?;
        Ok(TcpListener {
            core: Core::new(rt, fd)?,
        })
    }

    /// Waits for a connection. Dropping the future cancels the accept; a
    /// connection accepted anyway is closed, never leaked.
    ///
    /// A connection already waiting is taken at once, with one `accept4` on
    /// the task's thread: an accept through the port waits its turn behind
    /// every completion queued, and a busy server accepted only about 300
    /// connections a second that way (session 11). After 16 such accepts in a
    /// row (the budget inline sends use), one goes through the port, so an
    /// accept loop still yields.
    ///
    /// A connection its client reset before it was accepted has no peer
    /// address any more and nothing to read: it is closed and skipped, and
    /// the accept waits for the next one (an `accept().await?` loop must not
    /// end because a client gave up).
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let fd = accept(&self.core).await?;
            let peer = match SockRef::from(&fd).peer_addr() {
                Ok(a) => a,
                Err(e) if super::core::gone_before_accept(&e) => {
                    tracing::debug!("accept: skipping a connection reset before it was accepted");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let peer = peer
                .as_socket()
                .ok_or_else(|| io::Error::other("accepted a non-IP socket"))?;
            return Ok((TcpStream::from_fd(self.core.rt.clone(), fd)?, peer));
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(&self.core.fd).local_addr()?)
    }
}

impl std::os::fd::AsFd for TcpListener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.core.fd)
    }
}

pub(crate) fn sock_addr(a: SockAddr) -> io::Result<SocketAddr> {
    a.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP address"))
}

/// A connected TCP stream.
pub struct TcpStream {
    pub(super) core: Arc<Core>,
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}

stream_api!(TcpStream);

impl TcpStream {
    pub(crate) fn from_fd(rt: Handle, fd: OwnedFd) -> io::Result<TcpStream> {
        Ok(TcpStream {
            core: Core::new(rt, fd)?,
        })
    }

    /// Connects to the first address `addr` resolves to that accepts.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let rt = Handle::current()?;
        let mut last = None;
        for a in resolve(addr)? {
            match Self::connect_one(rt.clone(), a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
    }

    async fn connect_one(rt: Handle, a: SocketAddr) -> io::Result<TcpStream> {
        let s = Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP))?;
        let stream = TcpStream::from_fd(rt, OwnedFd::from(s))?;
        let c = stream.core.run(Op::connect(&stream.core.fd, a)).await?;
        c.result?;
        Ok(stream)
    }

    /// Takes over a connected socket made elsewhere.
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::from_fd(Handle::current()?, OwnedFd::from(s))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(&self.core.fd).local_addr()?)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(&self.core.fd).peer_addr()?)
    }

    /// Sends `len` bytes of `file` from `offset` without copying them through
    /// user space (io_uring: splice through a pipe; epoll: `sendfile`). Returns the
    /// count sent, which may be short (resubmit from `offset + n`); 0 means the
    /// file ends at `offset`. The file stays open until the kernel is done, even if
    /// this future is dropped (which cancels the transfer: some bytes may have gone).
    pub async fn send_file(
        &self,
        file: &crate::fs::File,
        offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        // After what `AsyncWrite` left in flight, not ahead of it.
        crate::net::stream::behind_write_behind(&self.core).await?;
        let op = Op::send_file(&self.core.fd, file, offset, len);
        let hold: crate::rt::op::Hold = Arc::new((self.core.clone(), file.core()));
        let c = crate::rt::op::OpFuture::new(self.core.rt.shared.clone(), op, Some(hold)).await?;
        c.result
    }

    /// Sends `file[offset .. offset + len]` whole (see [`send_file`](Self::send_file));
    /// `UnexpectedEof` if the file ends first.
    pub async fn send_file_all(
        &self,
        file: &crate::fs::File,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(1 << 30) as usize;
            match self.send_file(file, offset + done, chunk).await? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ended before the range did",
                    ))
                }
                n => done += n as u64,
            }
        }
        Ok(())
    }

    /// Waits until the socket can take more bytes (at once if it can now).
    /// For a program that also sends with non-blocking system calls of its
    /// own on this socket (made non-blocking) and waits here after `EAGAIN`,
    /// as an epoll server would; `Err` if the wait could not be made.
    /// Dropping the future cancels the wait.
    pub async fn writable(&self) -> io::Result<()> {
        let c = self.core.run(Op::writable(&self.core.fd)).await?;
        c.result.map(drop)
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        SockRef::from(&self.core.fd).set_tcp_nodelay(on)
    }
}

//! Unix-domain streams: [`UnixListener`] and [`UnixStream`].

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket, Type};

use super::core::{accept, Core};
use super::stream::stream_api;
use crate::op::Op;
use crate::rt::Handle;

/// A listening Unix-domain stream socket.
pub struct UnixListener {
    core: Arc<Core>,
}

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener")
            .field("fd", &self.core.fd)
            .finish()
    }
}

/// The address of the socket at `path`. A path with a NUL inside is
/// refused, as std refuses it (the kernel would read it as ending at the
/// NUL: another path); one that starts with a NUL is an abstract name.
fn unix_addr(path: &Path) -> io::Result<SockAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&0) && bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a Unix socket path may not contain a NUL byte (only an abstract name starts with one)",
        ));
    }
    SockAddr::unix(path)
}

impl UnixListener {
    /// Binds to `path` (which must not exist) and listens (backlog 1024).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let rt = Handle::current()?;
        let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        s.bind(&unix_addr(path.as_ref())?)?;
        s.listen(1024)?;
        // Non-blocking, so that `accept` can try `accept4` inline (as
        // `TcpListener` does).
        s.set_nonblocking(true)?;
        Ok(UnixListener {
            core: Core::new(rt, OwnedFd::from(s))?,
        })
    }

    /// Waits for a connection (dropping the future cancels it; a connection
    /// accepted anyway is closed). A connection already waiting is taken at
    /// once, on the task's thread, as by [`TcpListener::accept`](crate::net::TcpListener::accept).
    ///
    /// A connection whose peer is gone before it was accepted (no peer
    /// address) is closed and skipped, as by `TcpListener::accept`.
    pub async fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        loop {
            let fd = accept(&self.core).await?;
            // std's address type is only built by std: ask a duplicate.
            let peer = match std::os::unix::net::UnixStream::from(fd.try_clone()?).peer_addr() {
                Ok(a) => a,
                Err(e) if super::core::gone_before_accept(&e) => continue,
                Err(e) => return Err(e),
            };
            return Ok((UnixStream::from_fd(self.core.rt.clone(), fd)?, peer));
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        std::os::unix::net::UnixListener::from(self.core.fd.try_clone()?).local_addr()
    }
}

impl std::os::fd::AsFd for UnixListener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.core.fd)
    }
}

/// A connected Unix-domain stream.
pub struct UnixStream {
    core: Arc<Core>,
}

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixStream")
            .field("fd", &self.core.fd)
            .finish()
    }
}

stream_api!(UnixStream);

impl UnixStream {
    pub(crate) fn from_fd(rt: Handle, fd: OwnedFd) -> io::Result<UnixStream> {
        Ok(UnixStream {
            core: Core::new(rt, fd)?,
        })
    }

    /// Connects to the socket at `path`.
    ///
    /// When the listener's accept queue is full, io_uring waits for room;
    /// the epoll backend fails at once with `WouldBlock` (`EAGAIN`), as a
    /// non-blocking `connect` does (the kernel gives no readiness to wait
    /// for): retry later.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let rt = Handle::current()?;
        let addr = unix_addr(path.as_ref())?;
        let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        let stream = UnixStream::from_fd(rt, OwnedFd::from(s))?;
        let c = stream.core.run(Op::connect(&stream.core.fd, addr)).await?;
        c.result?;
        Ok(stream)
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let rt = Handle::current()?;
        let (a, b) = Socket::pair(Domain::UNIX, Type::STREAM, None)?;
        Ok((
            UnixStream::from_fd(rt.clone(), OwnedFd::from(a))?,
            UnixStream::from_fd(rt, OwnedFd::from(b))?,
        ))
    }

    /// Takes over a connected socket made elsewhere.
    pub fn from_std(s: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        UnixStream::from_fd(Handle::current()?, OwnedFd::from(s))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        std::os::unix::net::UnixStream::from(self.core.fd.try_clone()?).peer_addr()
    }
}

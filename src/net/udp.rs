//! UDP: [`UdpSocket`].

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::core::Core;
use super::tcp::{resolve, sock_addr};
use crate::op::Op;
use crate::rt::Handle;

/// A UDP socket.
pub struct UdpSocket {
    core: Arc<Core>,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local", &self.local_addr().ok())
            .finish()
    }
}

impl UdpSocket {
    /// Binds to the first address `addr` resolves to that works.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        let rt = Handle::current()?;
        let mut last = None;
        for a in resolve(addr)? {
            let s = Socket::new(Domain::for_address(a), Type::DGRAM, Some(Protocol::UDP))?;
            match s.bind(&a.into()) {
                Ok(()) => {
                    return Ok(UdpSocket {
                        core: Core::new(rt, OwnedFd::from(s))?,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address to bind")))
    }

    /// Sets the default peer (`send`/`recv` then talk to it only): the first
    /// address `addr` resolves to that the socket takes (an IPv6 one is
    /// skipped on an IPv4 socket, as with std). UDP's connect only records
    /// the address: it does not wait.
    pub fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<()> {
        let sock = SockRef::from(&self.core.fd);
        let mut last = None;
        for a in resolve(addr)? {
            match sock.connect(&a.into()) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
    }

    /// Sends one datagram to the connected peer.
    pub async fn send(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self.core.run(Op::send(&self.core.fd, buf)).await {
            Ok(c) => (c.result, c.buf.unwrap_or_default()),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Receives one datagram from the connected peer into `buf`'s capacity.
    /// A longer datagram is truncated to it and the rest is lost, as with
    /// `recv(2)`, std and tokio; a buffer of no capacity takes a datagram and
    /// returns 0. A capacity of 65,507 bytes takes any UDP datagram over IPv4.
    /// Dropping the future cancels it; a datagram received anyway is dropped
    /// (datagrams are independent: nothing is reordered).
    pub async fn recv(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self.core.run(Op::recv(&self.core.fd, buf)).await {
            Ok(c) => (c.result, c.buf.unwrap_or_default()),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Sends one datagram to `addr`.
    pub async fn send_to(&self, buf: Vec<u8>, addr: SocketAddr) -> (io::Result<usize>, Vec<u8>) {
        match self.core.run(Op::send_to(&self.core.fd, buf, addr)).await {
            Ok(c) => (c.result, c.buf.unwrap_or_default()),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Receives one datagram and its sender's address (truncated to `buf`'s
    /// capacity, as by [`recv`](Self::recv)).
    pub async fn recv_from(&self, buf: Vec<u8>) -> (io::Result<(usize, SocketAddr)>, Vec<u8>) {
        match self.core.run(Op::recv_from(&self.core.fd, buf)).await {
            Ok(mut c) => {
                let from = c.take_addr();
                let buf = c.buf.take().unwrap_or_default();
                let r = c.result.and_then(|n| {
                    let a = from.ok_or_else(|| io::Error::other("no source address"))?;
                    Ok((n, sock_addr(a)?))
                });
                (r, buf)
            }
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(&self.core.fd).local_addr()?)
    }

    /// The connected peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(&self.core.fd).peer_addr()?)
    }

    /// Sets `SO_BROADCAST`.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        SockRef::from(&self.core.fd).set_broadcast(on)
    }
}

impl std::os::fd::AsFd for UdpSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.core.fd)
    }
}

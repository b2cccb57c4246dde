//! A minimal raw-epoll thread-per-core echo server in plain `libc`: the practical
//! limit for a readiness-based server.
//!
//! One thread per CPU (`available_parallelism`, which follows the affinity mask,
//! so under `taskset -c 0` it is one thread), each with its own `SO_REUSEPORT`
//! listener on the same address and its own epoll instance. Sockets are
//! non-blocking and level-triggered. A readable connection is read once into a
//! 4096-byte buffer and written straight back; whatever the socket does not take
//! is kept for that connection, which then waits for `EPOLLOUT` (and is not read)
//! until the remainder is gone. The kernel spreads connections over the
//! listeners; a connection never moves to another thread.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::time::Duration;

use crate::{sig, spin, BUF};

/// Epoll token of a thread's listener.
const LISTENER: u64 = u64::MAX;
/// Epoll token of the shutdown eventfd (shared by all threads).
const STOP: u64 = u64::MAX - 1;

pub(crate) fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Closes `fd`, which the caller owns and no longer uses.
pub(crate) fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses the number again.
    unsafe { libc::close(fd) };
}

pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a c_int that lives across the call, and
    // its size is passed along.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A `sockaddr_in`/`sockaddr_in6` for `addr`, in a `sockaddr_storage`.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A non-blocking `SO_REUSEPORT` listener on `addr`.
fn listener(addr: SocketAddr) -> io::Result<RawFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    let r = (|| {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        let (ss, len) = sockaddr(addr);
        // SAFETY: `ss` holds a valid socket address of `len` bytes.
        cvt(unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) })?;
        // SAFETY: plain listen(2) on a socket we own.
        cvt(unsafe { libc::listen(fd, 4096) })?;
        Ok(())
    })();
    match r {
        Ok(()) => Ok(fd),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

fn epoll_add(ep: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    cvt(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
}

fn epoll_mod(ep: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    cvt(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev) }).map(drop)
}

/// The state of one descriptor number on a thread.
enum Conn {
    Closed,
    /// Waiting for data (EPOLLIN).
    Reading,
    /// Waiting for EPOLLOUT to send `buf[off..]`.
    Writing {
        buf: Vec<u8>,
        off: usize,
    },
}

struct Worker {
    ep: RawFd,
    listener: RawFd,
    spin: Duration,
    conns: Vec<Conn>,
    accepted: u64,
}

/// Binds `n` non-blocking `SO_REUSEPORT` listeners on `listen` and returns the
/// address they share (with port 0, the first listener picks the port and the
/// others join it) and their descriptors, which the caller owns.
pub(crate) fn listeners(listen: SocketAddr, n: usize) -> io::Result<(SocketAddr, Vec<RawFd>)> {
    let first = listener(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    // SAFETY: `first` is an open listening socket we own; it is taken back with
    // into_raw_fd right after asking for its address.
    let std_first = unsafe { TcpListener::from_raw_fd(first) };
    let local = std_first.local_addr();
    let first = std_first.into_raw_fd();
    let mut fds = vec![first];
    let r = local.and_then(|local| {
        for _ in 1..n {
            fds.push(listener(local)?);
        }
        Ok(local)
    });
    match r {
        Ok(local) => Ok((local, fds)),
        Err(e) => {
            fds.into_iter().for_each(close);
            Err(e)
        }
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(listen: SocketAddr, spin_for: Duration) -> io::Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Bind every listener before saying we listen.
    let (local, listeners) = listeners(listen, threads)?;
    // SAFETY: plain eventfd(2) call; the result is checked.
    let stop = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    let mut handles = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        // SAFETY: plain epoll_create1(2) call; the result is checked.
        let ep = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        epoll_add(ep, l, libc::EPOLLIN as u32, LISTENER)?;
        epoll_add(ep, stop, libc::EPOLLIN as u32, STOP)?;
        let mut w = Worker {
            ep,
            listener: l,
            spin: spin_for,
            conns: Vec::new(),
            accepted: 0,
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("epoll-{i}"))
                .spawn(move || w.run())?,
        );
    }
    println!("listening on {local} ({threads} threads)");
    let sig = sig::wait()?;
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one` to the eventfd we own.
    unsafe { libc::write(stop, (&one as *const u64).cast(), 8) };
    let mut accepted = 0;
    for h in handles {
        accepted += h
            .join()
            .map_err(|_| io::Error::other("a worker thread panicked"))??;
    }
    close(stop);
    eprintln!(
        "peer-echo: signal {sig}: stopped; {accepted} connections accepted on {threads} threads"
    );
    Ok(())
}

impl Worker {
    /// The event loop; returns the number of connections accepted.
    fn run(&mut self) -> io::Result<u64> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut buf = vec![0u8; BUF];
        'outer: loop {
            // SAFETY: `events` has room for the 256 entries epoll_wait may write.
            let n = unsafe {
                libc::epoll_wait(
                    self.ep,
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    -1,
                )
            };
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                return Err(io::Error::last_os_error());
            }
            for ev in &events[..n as usize] {
                // A copy: epoll_event is packed on x86_64.
                let token = ev.u64;
                match token {
                    STOP => break 'outer,
                    LISTENER => self.accept_all(),
                    // EPOLLHUP/EPOLLERR surface as a failing recv or send.
                    fd => self.on_conn(fd as RawFd, &mut buf),
                }
            }
        }
        for (fd, c) in self.conns.iter().enumerate() {
            if !matches!(c, Conn::Closed) {
                close(fd as RawFd);
            }
        }
        close(self.listener);
        close(self.ep);
        Ok(self.accepted)
    }

    fn accept_all(&mut self) {
        loop {
            // SAFETY: accept4 with null address pointers; the result is checked.
            let fd = unsafe {
                libc::accept4(
                    self.listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                match errno() {
                    libc::EINTR | libc::ECONNABORTED => continue,
                    libc::EAGAIN => return,
                    e => {
                        eprintln!("peer-echo: accept: {}", io::Error::from_raw_os_error(e));
                        if matches!(e, libc::EMFILE | libc::ENFILE) {
                            // Level-triggered: back off rather than spin on the error.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        return;
                    }
                }
            }
            self.accepted += 1;
            let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
            if let Err(e) = epoll_add(self.ep, fd, libc::EPOLLIN as u32, fd as u64) {
                eprintln!("peer-echo: epoll_ctl: {e}");
                close(fd);
                continue;
            }
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize_with(i + 1, || Conn::Closed);
            }
            self.conns[i] = Conn::Reading;
        }
    }

    fn close_conn(&mut self, fd: RawFd) {
        // Closing the last descriptor of a socket also removes it from the epoll set.
        close(fd);
        self.conns[fd as usize] = Conn::Closed;
    }

    fn on_conn(&mut self, fd: RawFd, buf: &mut [u8]) {
        let i = fd as usize;
        match &mut self.conns[i] {
            Conn::Closed => {}
            Conn::Writing { buf: pending, off } => match send_some(fd, &pending[*off..]) {
                Ok(n) if *off + n == pending.len() => {
                    self.conns[i] = Conn::Reading;
                    if epoll_mod(self.ep, fd, libc::EPOLLIN as u32, fd as u64).is_err() {
                        self.close_conn(fd);
                    }
                }
                Ok(n) => *off += n,
                Err(_) => self.close_conn(fd),
            },
            Conn::Reading => {
                // SAFETY: `buf` is writable for buf.len() bytes.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    if !matches!(errno(), libc::EAGAIN | libc::EINTR) {
                        self.close_conn(fd);
                    }
                    return;
                }
                if n == 0 {
                    return self.close_conn(fd);
                }
                let n = n as usize;
                if !self.spin.is_zero() && buf[0] == b'!' {
                    spin(self.spin);
                }
                match send_some(fd, &buf[..n]) {
                    Ok(sent) if sent == n => {}
                    Ok(sent) => {
                        self.conns[i] = Conn::Writing {
                            buf: buf[sent..n].to_vec(),
                            off: 0,
                        };
                        if epoll_mod(self.ep, fd, libc::EPOLLOUT as u32, fd as u64).is_err() {
                            self.close_conn(fd);
                        }
                    }
                    Err(_) => self.close_conn(fd),
                }
            }
        }
    }
}

/// Sends as much of `data` as the socket takes now; `Ok(n < data.len())` means
/// it would block.
fn send_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < data.len() {
        let rest = &data[sent..];
        // SAFETY: `rest` is readable for rest.len() bytes.
        let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => break,
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
        sent += n as usize;
    }
    Ok(sent)
}

//! Operations, described in plain Rust and independent of any backend.
//!
//! An [`Op`] owns everything the kernel will touch while it runs (its buffer, its
//! socket address, its timeout) and is handed to
//! [`CompletionPort::submit`](crate::CompletionPort::submit). Each backend
//! translates it in its own files (`sys/uring`, `sys/epoll`); what it owns in
//! flight, by kind, is its body (`body.rs`). Handles are borrowed only to
//! read their descriptor number: as with IOCP, the caller keeps the handle open
//! until the operation's completion has been dequeued.
//!
//! ```
//! use ringport::Op;
//! use std::time::Duration;
//! let op = Op::timeout(Duration::from_millis(5));
//! assert_eq!(op.kind(), ringport::OpKind::Timeout);
//! ```

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use socket2::SockAddr;

mod body;
mod fixed;
mod kind;
mod multishot;
mod prio;
mod zc;

pub(crate) use body::{OpBody, StatxBuf};
pub use kind::{OpKind, OpPath, OpPaths};

/// An operation's file offset as both backends take it. io_uring reads an
/// offset of -1 (`u64::MAX`) as "the file's current position, advanced",
/// where `pread` refuses it: every offset past `i64::MAX` becomes one the
/// kernel refuses with `EINVAL` on both (and `pread`, `splice` and
/// `sendfile` alike).
pub(crate) fn at(offset: u64) -> u64 {
    if offset > i64::MAX as u64 {
        1 << 63
    } else {
        offset
    }
}

/// The longest wait anything in ringport takes: 2^32 seconds, about 136 years.
/// Longer durations (`Duration::MAX`, say) are taken as this one — never, in
/// practice — so that no deadline overflows `Instant` or a kernel `timespec`.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(u32::MAX as u64);

/// An operation to submit to a [`CompletionPort`](crate::CompletionPort).
#[derive(Debug)]
pub struct Op {
    pub(crate) body: OpBody,
    pub(crate) key: Option<u64>,
    /// Set by [`Op::timeout_after`].
    pub(crate) link_timeout: Option<Duration>,
    /// Set by [`Op::priority`].
    pub(crate) prio: crate::Priority,
}

impl Op {
    fn new(body: OpBody) -> Op {
        Op {
            body,
            key: None,
            link_timeout: None,
            prio: crate::Priority::Normal,
        }
    }

    /// Does nothing; completes with `Ok(0)`. Useful to measure the port itself.
    pub fn nop() -> Op {
        Op::new(OpBody::Nop)
    }

    /// Reads from `file` at `offset` into `buf`'s whole capacity; the completion's
    /// buffer then holds exactly the bytes read (its old contents are replaced).
    ///
    /// For regular files and block devices: on epoll it is a `pread(2)` on a
    /// worker thread, which a pipe, FIFO or socket refuses (`ESPIPE`) —
    /// use [`Op::recv`] or a `read` of your own there. (io_uring instead
    /// reads a pipe as `read(2)` would, ignoring the offset and waiting for
    /// data: the backends differ, so do not rely on either.) An offset past
    /// `i64::MAX` fails with `EINVAL` on both backends.
    pub fn read_at(file: &impl AsFd, buf: Vec<u8>, offset: u64) -> Op {
        Op::new(OpBody::Read {
            fd: raw(file),
            buf,
            offset: at(offset),
        })
    }

    /// Writes all of `buf` to `file` at `offset`. A short write completes with the
    /// count written; resubmit the rest with [`Op::write_at_from`].
    pub fn write_at(file: &impl AsFd, buf: Vec<u8>, offset: u64) -> Op {
        Op::write_at_from(file, buf, 0, offset)
    }

    /// Writes `buf[pos..]` to `file` at `offset` (regular files and block
    /// devices, as [`Op::read_at`]).
    pub fn write_at_from(file: &impl AsFd, buf: Vec<u8>, pos: usize, offset: u64) -> Op {
        let pos = pos.min(buf.len());
        Op::new(OpBody::Write {
            fd: raw(file),
            buf,
            pos,
            offset: at(offset),
        })
    }

    /// Reads from `file` at `offset` into several buffers (`preadv(2)`): the
    /// first buffer's whole capacity is filled first, then the next one's, and
    /// so on. The result is the total read; a read that reaches the end of the
    /// file is short, and `Ok(0)` means `offset` is at or past it.
    ///
    /// [`Completion::take_bufs`](crate::Completion::take_bufs) hands the
    /// buffers back, in order, each with its length set to the bytes it
    /// received (their old contents are replaced; buffers past the end of what
    /// was read come back empty). At most 1,024 buffers (`IOV_MAX`): more fail
    /// with `EINVAL`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// use std::io::Write;
    /// let port = CompletionPort::new()?;
    /// let path = std::env::temp_dir().join(format!("ringport-readv-doc-{}", std::process::id()));
    /// std::fs::File::create(&path)?.write_all(b"headerbody")?;
    /// let file = std::fs::File::open(&path)?;
    /// port.associate(&file, 1)?;
    /// let bufs = vec![Vec::with_capacity(6), Vec::with_capacity(64)];
    /// port.submit(Op::readv_at(&file, bufs, 0), 0)?;
    /// let mut c = port.get(Some(std::time::Duration::from_secs(10)))?;
    /// assert_eq!(c.result.as_ref().ok(), Some(&10));
    /// let bufs = c.take_bufs().unwrap();
    /// assert_eq!(bufs, [b"header".to_vec(), b"body".to_vec()]);
    /// # std::fs::remove_file(&path)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn readv_at(file: &impl AsFd, bufs: Vec<Vec<u8>>, offset: u64) -> Op {
        Op::new(OpBody::ReadV {
            fd: raw(file),
            bufs,
            offset: at(offset),
        })
    }

    /// Writes every buffer of `bufs`, in order, to `file` at `offset`
    /// (`pwritev(2)`). The result is the total written; a short write is
    /// possible (a full disk), as with [`Op::write_at`]. The buffers come back
    /// unchanged through
    /// [`Completion::take_bufs`](crate::Completion::take_bufs). At most 1,024
    /// buffers (`IOV_MAX`).
    pub fn writev_at(file: &impl AsFd, bufs: Vec<Vec<u8>>, offset: u64) -> Op {
        Op::new(OpBody::WriteV {
            fd: raw(file),
            bufs,
            offset: at(offset),
        })
    }

    /// Receives from a connected socket into `buf`'s whole capacity; the completion's
    /// buffer holds exactly the bytes received. On a stream socket `Ok(0)`
    /// means the peer closed its side; on a datagram socket (UDP, Unix
    /// datagram) it is an empty datagram, and a datagram longer than the
    /// capacity is cut to it, the rest lost (as by [`Op::recv_from`]).
    ///
    /// # Several in flight on one socket
    ///
    /// As with IOCP's overlapped receives, several receives in flight on one
    /// stream socket are filled in the order they were submitted, and
    /// several sends go out in that order, on both backends. (On a datagram
    /// socket each receive takes one whole datagram; io_uring keeps no order
    /// among several waiting ones there, epoll does.) epoll keeps a queue per socket
    /// and direction; on io_uring (whose waiting receives would otherwise be
    /// served newest first) the driver keeps one per socket and direction in
    /// the kernel and the later ones back until it ends (a kept-back one goes
    /// to the kernel when a thread next reaps completions: a thread in
    /// [`get`](crate::CompletionPort::get), as the pool's workers always
    /// are). A kept-back one is still cancelled, timed out
    /// ([`Op::timeout_after`], counted from its submission) and ended by a
    /// close like any other; a close or `disassociate` first hands the kept-
    /// back ones to the kernel, in order, so a send the socket has room for
    /// still goes out. Their completions
    /// may still be dequeued by different threads in any order: number them
    /// (IOCP's advice) if several threads handle one socket.
    pub fn recv(socket: &impl AsFd, buf: Vec<u8>) -> Op {
        Op::new(OpBody::Recv {
            fd: raw(socket),
            buf,
            flags: 0,
        })
    }

    /// Sends all of `buf` on a connected socket (a short send completes with the count
    /// sent; resubmit the rest with [`Op::send_from`]). `MSG_NOSIGNAL` is always set: a
    /// closed peer gives `EPIPE`, never a `SIGPIPE`. Several sends in flight on
    /// one socket go out in submission order (see [`Op::recv`]); after a short
    /// one, the later ones' bytes follow what it sent.
    pub fn send(socket: &impl AsFd, buf: Vec<u8>) -> Op {
        Op::send_from(socket, buf, 0)
    }

    /// Sends `buf[pos..]` on a connected socket.
    pub fn send_from(socket: &impl AsFd, buf: Vec<u8>, pos: usize) -> Op {
        let pos = pos.min(buf.len());
        Op::new(OpBody::Send {
            fd: raw(socket),
            buf,
            pos,
            flags: libc::MSG_NOSIGNAL,
        })
    }

    /// Receives one datagram into `buf`'s whole capacity, and the address it came
    /// from: the completion's buffer holds exactly the bytes received and
    /// [`Completion::take_addr`](crate::Completion::take_addr) gives the sender.
    ///
    /// A datagram longer than the buffer's capacity is truncated, as by
    /// `recvfrom(2)`: the result is the number of bytes that fitted (the
    /// capacity), and the rest of that datagram is discarded. Size the buffer for
    /// the largest datagram expected (65,507 bytes for UDP over IPv4). `Ok(0)` is
    /// an empty datagram, not end of stream.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// let port = CompletionPort::new()?;
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// port.associate(&socket, 1)?;
    /// port.submit(Op::recv_from(&socket, Vec::with_capacity(1500)), 0)?;
    /// let peer = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// peer.send_to(b"hello", socket.local_addr()?)?;
    /// let mut c = port.get(Some(std::time::Duration::from_secs(10)))?;
    /// let from = c.take_addr().and_then(|a| a.as_socket());
    /// let n = c.result?;
    /// assert_eq!((n, from), (5, Some(peer.local_addr()?)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_from(socket: &impl AsFd, buf: Vec<u8>) -> Op {
        Op::new(OpBody::RecvFrom {
            fd: raw(socket),
            buf,
            flags: 0,
            from: None,
        })
    }

    /// Sends all of `buf` as one datagram to `addr`, from an unconnected (or a
    /// connected) datagram socket; the completion's result is the datagram's
    /// length and its buffer is handed back unchanged. A datagram is sent whole
    /// or not at all (`EMSGSIZE` if it is too long). `MSG_NOSIGNAL` is always set.
    ///
    /// A successful send says nothing about delivery: UDP to a port where nothing
    /// listens succeeds, and only a connected socket hears of the refusal later
    /// (`ECONNREFUSED` from a following receive or send).
    ///
    /// A Unix datagram socket whose receiver's queue is full: epoll waits
    /// for room; io_uring fails the send at once with `EAGAIN`
    /// (`WouldBlock`), nothing sent — try again later (the same for
    /// [`Op::send`], [`Op::send_zc`] and [`Op::write_fixed`] on one). The
    /// kernel gives io_uring nothing to wait for there: a non-blocking
    /// socket always failed so, and a blocking one, tried again by the
    /// kernel, sent an empty datagram.
    ///
    /// On a connected stream socket it is a send like [`Op::send`] (the address
    /// is ignored by the kernel), in submission order with the socket's other
    /// sends; `recv_from` likewise keeps its place among the socket's receives.
    pub fn send_to(socket: &impl AsFd, buf: Vec<u8>, addr: impl Into<SockAddr>) -> Op {
        Op::new(OpBody::SendTo {
            fd: raw(socket),
            buf,
            addr: Box::new(addr.into()),
            flags: libc::MSG_NOSIGNAL,
        })
    }

    /// Accepts one connection on a listening socket. The accepted socket (close-on-exec)
    /// comes back with [`Completion::take_fd`](crate::Completion::take_fd).
    pub fn accept(listener: &impl AsFd) -> Op {
        Op::new(OpBody::Accept { fd: raw(listener) })
    }

    /// Connects `socket` to `addr`.
    pub fn connect(socket: &impl AsFd, addr: impl Into<SockAddr>) -> Op {
        Op::new(OpBody::Connect {
            fd: raw(socket),
            addr: Box::new(addr.into()),
        })
    }

    /// Closes a descriptor, taking ownership of it. Its association with the port
    /// ends when this operation is submitted. On a socket, operations still in
    /// flight are cancelled first (they complete with `ECANCELED`, or with
    /// their result if they finished first), on both backends — as
    /// `CloseHandle` aborts a handle's pending I/O; a file's operations run to
    /// their end. (On io_uring the kernel finds them by the open socket, not
    /// by the number: closing one of two associated duplicates of a socket
    /// (`dup`) cancels the other's operations too.)
    pub fn close(fd: OwnedFd) -> Op {
        Op::new(OpBody::Close { fd })
    }

    /// Flushes a file's data and metadata to storage (`fsync`).
    pub fn fsync(file: &impl AsFd) -> Op {
        Op::new(OpBody::Fsync {
            fd: raw(file),
            datasync: false,
        })
    }

    /// Flushes a file's data to storage (`fdatasync`).
    pub fn fdatasync(file: &impl AsFd) -> Op {
        Op::new(OpBody::Fsync {
            fd: raw(file),
            datasync: true,
        })
    }

    /// A timer: completes with `Ok(0)` after `after`, or with `ECANCELED` if cancelled.
    /// A duration longer than about 136 years (`Duration::MAX`, say) is taken as
    /// 136 years: never, in practice, and no overflow of a clock or a kernel
    /// `timespec`.
    pub fn timeout(after: Duration) -> Op {
        Op::new(OpBody::Timeout {
            after: after.min(MAX_WAIT),
        })
    }

    /// Sends up to `len` bytes of `file`, starting at `offset`, on the connected
    /// stream socket `socket`, without passing them through a user-space buffer
    /// (`sendfile(2)`'s job; on io_uring, two linked `splice`s through a pipe).
    ///
    /// The completion's result is the number of bytes that reached the socket.
    /// It may be short — a transfer moves at most one pipe's worth (256 KiB
    /// where the system allows it) per operation, and stops early at the end of the
    /// file or when the socket takes only part of the data: resubmit from
    /// `offset + n` for the rest. `Ok(0)` means `offset` is at or past the end of
    /// the file (or `len` is 0). A peer that has gone away gives `EPIPE` or
    /// `ECONNRESET`, never a `SIGPIPE`. A cancelled transfer fails with
    /// `ECANCELED`, or reports the bytes it had already sent.
    ///
    /// The socket's association gives the completion its key; the file is only
    /// read (it needs no association, and must stay open until the completion is
    /// dequeued). `file` must be a regular file (or anything `splice` and
    /// `sendfile` read from at an offset). Otherwise, on both backends: a
    /// directory or a socket fails with `EINVAL`, a pipe with `ESPIPE`, a
    /// descriptor not open for reading with `EBADF`.
    ///
    /// The destination may also be a pipe (or anything `sendfile(2)` writes
    /// to); on epoll the transfer then runs on the backend's file threads,
    /// where it may wait for room without holding up the submitter (and,
    /// like any file operation there, cannot be interrupted once started).
    ///
    /// Not run as a test: it needs a server listening on 127.0.0.1:8080.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// let port = CompletionPort::new()?;
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// let len = file.metadata()?.len();
    /// let socket = std::net::TcpStream::connect("127.0.0.1:8080")?;
    /// port.associate(&socket, 1)?;
    /// let mut offset = 0;
    /// while offset < len {
    ///     port.submit(Op::send_file(&socket, &file, offset, (len - offset) as usize), 0)?;
    ///     match port.get(None)?.result? {
    ///         0 => break, // the file shrank
    ///         n => offset += n as u64,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_file(socket: &impl AsFd, file: &impl AsFd, offset: u64, len: usize) -> Op {
        Op::new(OpBody::SendFile {
            sock: raw(socket),
            file: raw(file),
            offset: at(offset),
            len,
        })
    }

    /// Opens `path` (`openat(2)`), relative to the directory `dir` if given and
    /// the path is relative, else to the current directory. `flags` and `mode`
    /// are `open(2)`'s (`libc::O_RDONLY`, `O_CREAT | O_WRONLY` with `0o644`, …);
    /// `O_CLOEXEC` is always added. The new descriptor comes back with
    /// [`Completion::take_fd`](crate::Completion::take_fd) (a completion dropped
    /// without taking it closes it). A path with a NUL byte fails with `EINVAL`.
    ///
    /// An open runs on no handle: its key is 0, or the one set with
    /// [`Op::key`]; `dir` needs no association.
    ///
    /// Unless it creates or truncates, the open is first tried with
    /// `O_NONBLOCK` (cleared again on the new descriptor unless asked for),
    /// as io_uring's `OPENAT` does, on both backends: a FIFO with no writer
    /// opens for reading at once, and one with no reader fails `ENXIO` for
    /// writing, where a plain `open(2)` waits for the other end.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// let port = CompletionPort::new()?;
    /// port.submit(Op::openat(None, "Cargo.toml", libc::O_RDONLY, 0), 0)?;
    /// let mut c = port.get(Some(std::time::Duration::from_secs(10)))?;
    /// let file = std::fs::File::from(c.take_fd().expect("Cargo.toml opens"));
    /// assert!(file.metadata()?.len() > 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn openat(
        dir: Option<BorrowedFd<'_>>,
        path: impl AsRef<Path>,
        flags: i32,
        mode: u32,
    ) -> Op {
        Op::new(OpBody::OpenAt {
            dir: dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd()),
            path: c_path(path.as_ref()),
            flags: flags | libc::O_CLOEXEC,
            mode,
        })
    }

    /// A file's metadata (`statx(2)`): `path` relative to `dir` as for
    /// [`Op::openat`]; `flags` are `AT_*` flags (`AT_SYMLINK_NOFOLLOW`; with
    /// `AT_EMPTY_PATH` and an empty path, `dir` itself — any open descriptor —
    /// is described), `mask` the `STATX_*` fields wanted (`STATX_BASIC_STATS`).
    /// The result is `Ok(0)` and
    /// [`Completion::statx`](crate::Completion::statx) gives the `statx`
    /// structure; its `stx_mask` says which fields the file system filled.
    ///
    /// Like an open, it runs on no handle (key 0, or [`Op::key`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// let port = CompletionPort::new()?;
    /// port.submit(Op::statx(None, "Cargo.toml", 0, libc::STATX_SIZE), 0)?;
    /// let c = port.get(Some(std::time::Duration::from_secs(10)))?;
    /// let st = c.statx().expect("Cargo.toml exists");
    /// assert_eq!(st.stx_size, std::fs::metadata("Cargo.toml")?.len());
    /// # Ok(())
    /// # }
    /// ```
    pub fn statx(dir: Option<BorrowedFd<'_>>, path: impl AsRef<Path>, flags: i32, mask: u32) -> Op {
        Op::new(OpBody::Statx {
            dir: dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd()),
            path: c_path(path.as_ref()),
            flags,
            mask,
            out: StatxBuf::new(),
        })
    }

    /// Allocates (`mode` 0: and extends the file to `offset + len` if it was
    /// shorter), or with `FALLOC_FL_*` flags in `mode` otherwise manipulates,
    /// the space of `file` from `offset` for `len` bytes (`fallocate(2)`).
    /// `Ok(0)` on success; `EOPNOTSUPP` where the file system cannot.
    pub fn fallocate(file: &impl AsFd, mode: i32, offset: u64, len: u64) -> Op {
        Op::new(OpBody::Fallocate {
            fd: raw(file),
            mode,
            offset: at(offset),
            len,
        })
    }

    /// Completes when `socket` can take more bytes (at once if it can now):
    /// for a program that sends with non-blocking calls of its own and waits
    /// here after `EAGAIN`. `Ok(events)` (the `poll(2)` bits, `POLLOUT` set;
    /// `POLLERR`/`POLLHUP` for a socket in error or shut down — the next send
    /// reports why; no other bit, on either backend).
    ///
    /// A socket: the epoll backend waits only on sockets. Given anything else
    /// (a pipe), it looks once and completes with `EAGAIN` if there is no
    /// room, where io_uring waits.
    pub fn writable(socket: &impl AsFd) -> Op {
        Op::new(OpBody::Writable { fd: raw(socket) })
    }

    /// Shuts down the reading side, the writing side, or both, of a connected
    /// socket (`shutdown(2)`): after `Shutdown::Write` the peer reads end of
    /// stream once it has everything sent before. `Ok(0)`, or `ENOTCONN` for a
    /// socket that is not connected.
    pub fn shutdown(socket: &impl AsFd, how: std::net::Shutdown) -> Op {
        Op::new(OpBody::Shutdown {
            fd: raw(socket),
            how: match how {
                std::net::Shutdown::Read => libc::SHUT_RD,
                std::net::Shutdown::Write => libc::SHUT_WR,
                std::net::Shutdown::Both => libc::SHUT_RDWR,
            },
        })
    }

    /// Sets the completion key for an operation on no handle (`nop`, `timeout`,
    /// `openat`, `statx`).
    /// For operations on a handle the associated key is used and this is ignored.
    pub fn key(mut self, key: u64) -> Op {
        self.key = Some(key);
        self
    }

    /// Bounds this operation in time (a *linked timeout*): if it has not
    /// finished `d` after it was submitted, it is cancelled.
    ///
    /// Exactly as with [`CompletionPort::cancel`](crate::CompletionPort::cancel),
    /// there is still one completion, and it says what happened:
    ///
    /// * the operation finished first: its own result, as without a timeout
    ///   (the timer is removed; it produces no completion of its own);
    /// * the timer fired while the operation was waiting (for data, for room,
    ///   for a connection, for a file worker): `ECANCELED`, and its buffer comes
    ///   back untouched;
    /// * the timer fired while the kernel was already carrying it out and could
    ///   not stop it (a file read on a worker thread): its real result; for a
    ///   transfer interrupted half-way (`send_file`), the count it had moved.
    ///
    /// On io_uring this is `IORING_OP_LINK_TIMEOUT` linked to the operation's
    /// SQE (for `send_file`, to each round's last SQE, with the time left); on
    /// epoll a timer that cancels the operation if it is still waiting.
    /// Calling it again replaces the duration.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// use std::time::Duration;
    /// let port = CompletionPort::new()?;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// port.associate(&a, 1)?;
    /// // Nothing is ever sent on `a`: the receive gives up after 10 ms.
    /// let op = Op::recv(&a, Vec::with_capacity(64)).timeout_after(Duration::from_millis(10));
    /// port.submit(op, 0)?;
    /// let c = port.get(Some(Duration::from_secs(10)))?;
    /// assert!(c.is_cancelled());
    /// # Ok(())
    /// # }
    /// ```
    pub fn timeout_after(mut self, d: Duration) -> Op {
        // Clamped like `Op::timeout`'s duration.
        self.link_timeout = Some(d.min(MAX_WAIT));
        self
    }

    /// The kind of this operation.
    pub fn kind(&self) -> OpKind {
        self.body.kind()
    }

    /// The descriptor this operation runs on, if any (the one whose key it reports).
    pub(crate) fn fd(&self) -> Option<RawFd> {
        match &self.body {
            OpBody::Nop | OpBody::Timeout { .. } | OpBody::OpenAt { .. } | OpBody::Statx { .. } => {
                None
            }
            OpBody::Read { fd, .. }
            | OpBody::Write { fd, .. }
            | OpBody::Recv { fd, .. }
            | OpBody::Send { fd, .. }
            | OpBody::RecvFrom { fd, .. }
            | OpBody::SendTo { fd, .. }
            | OpBody::Accept { fd }
            | OpBody::Connect { fd, .. }
            | OpBody::Fsync { fd, .. }
            | OpBody::ReadV { fd, .. }
            | OpBody::WriteV { fd, .. }
            | OpBody::Fallocate { fd, .. }
            | OpBody::Shutdown { fd, .. }
            | OpBody::AcceptMulti { fd }
            | OpBody::RecvMulti { fd, .. }
            | OpBody::SendZc { fd, .. }
            | OpBody::ReadFixed { fd, .. }
            | OpBody::WriteFixed { fd, .. }
            | OpBody::Writable { fd } => Some(*fd),
            OpBody::SendFile { sock, .. } => Some(*sock),
            OpBody::Close { fd } => Some(fd.as_raw_fd()),
        }
    }
}

/// A path as the kernel takes it; `None` if it has a NUL byte.
fn c_path(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

fn raw(h: &impl AsFd) -> RawFd {
    h.as_fd().as_raw_fd()
}

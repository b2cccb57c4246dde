//! `Completion`: one dequeued packet, and the single place where a raw kernel
//! result (`res >= 0` or `-errno`) becomes an `io::Result` — and where a socket
//! address the kernel wrote becomes a [`SockAddr`].

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use socket2::{socklen_t, SockAddr, SockAddrStorage};

use crate::fixed::FixedBuf;
use crate::op::{OpBody, OpKind};
use crate::sched::Priority;

/// Identifies one submitted operation, for [`CompletionPort::cancel`](crate::CompletionPort::cancel).
///
/// An id is never reused while its operation is in flight: it carries a generation,
/// so a stale id from a completed operation is answered with `NotFound` rather than
/// cancelling an unrelated newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(pub(crate) u64);

impl OpId {
    /// The raw 64-bit value, for logs (a backend's own numbering: an op-table
    /// slot and generation, or a tagged sequence number).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// One completion packet, as `GetQueuedCompletionStatus` returns it.
///
/// * `key`: the key given to [`associate`](crate::CompletionPort::associate) for the
///   handle the operation ran on (0 for operations on no handle, unless set), or the key
///   given to [`post`](crate::CompletionPort::post).
/// * `user_data`: the per-operation value given to `submit` (IOCP's `OVERLAPPED*`).
/// * `result`: bytes transferred, or the real errno as an `io::Error`. A cancelled
///   operation fails with `ECANCELED` (see [`Completion::is_cancelled`]).
/// * `buf`: the buffer the operation owned, handed back. For reads it holds exactly the
///   bytes read (`len() == n`); for writes it is returned as given.
///
/// A `recv_from` also carries the sender's address ([`Completion::take_addr`]),
/// an `accept` the accepted socket ([`Completion::take_fd`]), and a vectored
/// read or write its buffers ([`Completion::take_bufs`]).
pub struct Completion {
    /// The completion key of the handle (or of the posted packet).
    pub key: u64,
    /// The per-operation value given to `submit` or `post`.
    pub user_data: u64,
    /// Bytes transferred (for `accept`, the new descriptor's number), or the error.
    pub result: io::Result<usize>,
    /// The operation's buffer, handed back.
    pub buf: Option<Vec<u8>>,
    pub(crate) op: Option<OpId>,
    pub(crate) kind: OpKind,
    pub(crate) fd: Option<OwnedFd>,
    /// The lane it is queued in: its operation's or packet's priority.
    pub(crate) priority: Priority,
    /// What only some kinds hand back.
    extra: Extra,
    /// A multishot receive's buffer (`op/multishot.rs`).
    pub(crate) pooled: Option<crate::provided::PooledBuf>,
    /// More completions of the same multishot operation will follow.
    pub(crate) more: bool,
    /// Its place among its multishot operation's completions.
    pub(crate) seq: u32,
}

/// What a completion carries for a few kinds only. Each payload is boxed, so
/// every completion pays one pointer and a tag for them.
#[derive(Debug)]
enum Extra {
    None,
    /// A successful `recv_from`'s sender.
    Addr(Box<SockAddr>),
    /// A vectored read's or write's buffers. Boxed although a `Vec` is on the
    /// heap already: unboxed, its three words would make every completion
    /// carry two more words for this one kind.
    #[allow(clippy::box_collection)]
    Bufs(Box<Vec<Vec<u8>>>),
    /// A successful `statx`'s result.
    Statx(Box<libc::statx>),
    /// A fixed-buffer operation's lease.
    Fixed(FixedBuf),
}

impl Completion {
    /// A user packet from `post`.
    pub(crate) fn packet(key: u64, user_data: u64, bytes: usize) -> Self {
        Self::base(
            None,
            OpKind::Post,
            key,
            user_data,
            Ok(bytes),
            None,
            Priority::Normal,
        )
    }

    /// The fields every completion sets; nothing else (no descriptor, no
    /// extra, not multishot).
    #[inline]
    fn base(
        op: Option<OpId>,
        kind: OpKind,
        key: u64,
        user_data: u64,
        result: io::Result<usize>,
        buf: Option<Vec<u8>>,
        priority: Priority,
    ) -> Self {
        Completion {
            key,
            user_data,
            result,
            buf,
            op,
            kind,
            fd: None,
            priority,
            extra: Extra::None,
            pooled: None,
            more: false,
            seq: 0,
        }
    }

    /// The completion of an operation, from its raw result and its body:
    /// [`plain`](Self::plain) when the body hands back one plain buffer,
    /// [`from_raw`](Self::from_raw) otherwise.
    pub(crate) fn of_body(
        op: OpId,
        kind: OpKind,
        key: u64,
        user_data: u64,
        res: i32,
        body: OpBody,
        priority: Priority,
    ) -> Self {
        match body.plain_buf() {
            Ok(buf) => Self::plain(op, kind, key, user_data, res, buf, priority),
            Err(body) => Self::from_raw(op, kind, key, user_data, res, body.into_output())
                .with_priority(priority),
        }
    }

    /// The completion of an operation the port refused (closed, not
    /// associated, ...): `error`, with the body's buffers handed back. It
    /// never ran: its id is 0.
    pub(crate) fn refused(op: crate::op::Op, user_data: u64, error: std::io::Error) -> Self {
        let kind = op.kind();
        let mut c = Self::of_body(
            OpId(0),
            kind,
            op.key.unwrap_or(0),
            user_data,
            -libc::ECANCELED,
            op.body,
            op.prio,
        );
        c.result = Err(error);
        c
    }

    /// A completion for an operation, from the raw kernel result (`res < 0` is
    /// `-errno`), with the per-kind finishing every backend shares: a read's
    /// buffer gets the length read, a fired timer is success, an accepted
    /// descriptor becomes owned by the completion, a received datagram keeps its
    /// sender's address (`addr`, built by [`raw_addr`]; dropped unless this is a
    /// successful `recv_from`, so a backend may pass whatever its storage held).
    /// The kernel's internal restart codes, which an interrupted io_uring worker
    /// can leak, become `ECANCELED` (see [`interrupted_is_cancelled`]).
    ///
    /// A truncated datagram (`MSG_TRUNC` in `recvmsg`'s returned flags) needs
    /// nothing here: without `MSG_TRUNC` in the *request* flags, which ringport
    /// never sets, `res` is the count that fitted, not the datagram's length.
    pub(crate) fn from_raw(
        op: OpId,
        kind: OpKind,
        key: u64,
        user_data: u64,
        res: i32,
        out: Output,
    ) -> Self {
        let Output {
            mut buf,
            mut bufs,
            addr,
            statx,
            mut fixed,
        } = out;
        let mut res = interrupted_is_cancelled(res);
        match kind {
            OpKind::Read | OpKind::Recv | OpKind::RecvFrom if res >= 0 => {
                if let Some(b) = buf.as_mut() {
                    debug_assert!(res as usize <= b.capacity());
                    // Clamped all the same: a count past the capacity (no
                    // request ringport makes can return one) must not
                    // expose memory past the allocation.
                    let n = (res as usize).min(b.capacity());
                    // SAFETY: the kernel wrote `res` bytes at the start of the
                    // buffer, and `res <= capacity` because the capacity was the
                    // length the backend gave it; `n <= res`.
                    unsafe { b.set_len(n) };
                }
            }
            OpKind::ReadV if res >= 0 => {
                let mut left = res as usize;
                for b in bufs.iter_mut().flatten() {
                    let n = left.min(b.capacity());
                    // SAFETY: the kernel filled the buffers in order, each up to
                    // its capacity (the length the backend gave it), with `res`
                    // bytes in all: this one got its first `n`.
                    unsafe { b.set_len(n) };
                    left -= n;
                }
                debug_assert_eq!(left, 0, "a readv read more than its buffers hold");
            }
            OpKind::ReadFixed if res >= 0 => {
                if let Some(b) = fixed.as_mut() {
                    b.set_len(res as usize);
                }
            }
            OpKind::Timeout if res == -libc::ETIME => res = 0,
            _ => {}
        }
        let fd =
            if matches!(kind, OpKind::Accept | OpKind::AcceptMulti | OpKind::OpenAt) && res >= 0 {
                // SAFETY: a successful accept's or open's result is a new
                // descriptor that nobody else owns.
                Some(unsafe { OwnedFd::from_raw_fd(res) })
            } else {
                None
            };
        let extra = match (addr, bufs, statx, fixed) {
            (_, _, _, Some(f)) => Extra::Fixed(f),
            (Some(a), _, _, _) if kind == OpKind::RecvFrom && res >= 0 => Extra::Addr(a),
            (_, Some(b), _, _) => Extra::Bufs(Box::new(b)),
            (_, _, Some(s), _) if kind == OpKind::Statx && res >= 0 => Extra::Statx(s),
            _ => Extra::None,
        };
        Completion {
            fd,
            extra,
            ..Self::base(
                Some(op),
                kind,
                key,
                user_data,
                raw_result(res),
                buf,
                Priority::Normal,
            )
        }
    }

    /// The completion of an operation that hands back one plain buffer and
    /// nothing else (a receive, send, read or write: `OpBody::plain_buf`),
    /// for the hot path: what [`from_raw`](Self::from_raw) does for those
    /// kinds, without gathering an [`Output`] (~250 instructions a completion
    /// there against ~60 here, callgrind, epoll echo).
    #[inline]
    pub(crate) fn plain(
        op: OpId,
        kind: OpKind,
        key: u64,
        user_data: u64,
        res: i32,
        mut buf: Vec<u8>,
        priority: Priority,
    ) -> Self {
        let res = interrupted_is_cancelled(res);
        if res >= 0 && matches!(kind, OpKind::Read | OpKind::Recv) {
            debug_assert!(res as usize <= buf.capacity());
            let n = (res as usize).min(buf.capacity());
            // SAFETY: as in `from_raw`: the kernel wrote `res` bytes at the start
            // of the buffer, `res <= capacity`, and `n <= res`.
            unsafe { buf.set_len(n) };
        }
        Self::base(
            Some(op),
            kind,
            key,
            user_data,
            raw_result(res),
            Some(buf),
            priority,
        )
    }

    /// The id `submit` returned for this operation; `None` for a posted packet.
    pub fn op_id(&self) -> Option<OpId> {
        self.op
    }

    /// What kind of operation produced this packet.
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// True for packets from [`post`](crate::CompletionPort::post).
    pub fn is_packet(&self) -> bool {
        self.kind == OpKind::Post
    }

    /// True if the operation ended because it was cancelled (`ECANCELED`).
    /// A cancel that lost the race leaves the real result here instead.
    pub fn is_cancelled(&self) -> bool {
        matches!(&self.result, Err(e) if e.raw_os_error() == Some(libc::ECANCELED))
    }

    /// For a successful `accept`: the accepted socket; for a successful
    /// [`openat`](crate::Op::openat): the opened file. Taking it transfers
    /// ownership; a completion dropped without taking it closes the descriptor,
    /// so nothing leaks.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    /// For a successful [`recv_from`](crate::Op::recv_from): the address the
    /// datagram came from (`as_socket()` for UDP, `as_pathname()` for a Unix
    /// socket bound to a path). `None` for every other operation, for a failed
    /// or cancelled one, and once taken; also when the kernel reports no source
    /// address: a datagram from an unbound Unix socket, or a receive on a stream
    /// socket.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// use std::net::UdpSocket;
    /// let port = CompletionPort::new()?;
    /// let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// port.associate(&b, 1)?;
    /// port.submit(Op::recv_from(&b, Vec::with_capacity(64)), 0)?;
    /// a.send_to(b"hi", b.local_addr()?)?;
    /// let mut c = port.get(Some(std::time::Duration::from_secs(10)))?;
    /// let from = c.take_addr().and_then(|s| s.as_socket());
    /// assert!(c.take_addr().is_none(), "the address can be taken once");
    /// assert_eq!(c.result?, 2);
    /// assert_eq!(from, Some(a.local_addr()?));
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_addr(&mut self) -> Option<SockAddr> {
        match std::mem::replace(&mut self.extra, Extra::None) {
            Extra::Addr(a) => Some(*a),
            other => {
                self.extra = other;
                None
            }
        }
    }

    /// For a successful [`statx`](crate::Op::statx): the file's metadata
    /// (`stx_mask` says which fields were filled). `None` for every other
    /// operation and for a failed one.
    pub fn statx(&self) -> Option<&libc::statx> {
        match &self.extra {
            Extra::Statx(s) => Some(s),
            _ => None,
        }
    }

    /// For a [`readv_at`](crate::Op::readv_at) or
    /// [`writev_at`](crate::Op::writev_at): its buffers, in the order given —
    /// after a successful read each holds exactly the bytes it received. Also
    /// after a failure or a cancel (then as they were given). `None` for every
    /// other operation, and once taken.
    pub fn take_bufs(&mut self) -> Option<Vec<Vec<u8>>> {
        match std::mem::replace(&mut self.extra, Extra::None) {
            Extra::Bufs(b) => Some(*b),
            other => {
                self.extra = other;
                None
            }
        }
    }
}

impl Completion {
    /// For a [`read_fixed`](crate::Op::read_fixed) or
    /// [`write_fixed`](crate::Op::write_fixed): the lease of the registered
    /// buffer, handed back — after a successful read holding exactly the bytes
    /// read; otherwise as it was given. Also after a failure or a cancel.
    /// `None` for every other operation, and once taken. A completion dropped
    /// without taking it returns the buffer to its set.
    pub fn take_fixed(&mut self) -> Option<FixedBuf> {
        match std::mem::replace(&mut self.extra, Extra::None) {
            Extra::Fixed(b) => Some(b),
            other => {
                self.extra = other;
                None
            }
        }
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("key", &self.key)
            .field("user_data", &self.user_data)
            .field("kind", &self.kind)
            .field("priority", &self.priority)
            .field("result", &self.result)
            .field("buf_len", &self.buf.as_ref().map(Vec::len))
            .field("fd", &self.fd)
            .field("extra", &self.extra)
            .field("pooled", &self.pooled)
            .field("more", &self.more)
            .field("seq", &self.seq)
            .finish()
    }
}

/// What an operation hands back besides its result, as a backend gathered it.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// The operation's buffer.
    pub(crate) buf: Option<Vec<u8>>,
    /// A vectored read's or write's buffers.
    pub(crate) bufs: Option<Vec<Vec<u8>>>,
    /// A `statx`'s result.
    pub(crate) statx: Option<Box<libc::statx>>,
    /// A receive's source address.
    pub(crate) addr: Option<Box<SockAddr>>,
    /// A fixed-buffer operation's lease.
    pub(crate) fixed: Option<FixedBuf>,
}

/// `ERESTARTSYS`, `ERESTARTNOINTR`, `ERESTARTNOHAND` and `ERESTART_RESTARTBLOCK`
/// (512–514, 516) are the kernel's internal "interrupted, restart me" codes and
/// never mean anything to user space. io_uring leaks them when it interrupts one
/// of its worker threads in a blocking call (a `splice` into a full socket), and
/// it only interrupts a worker to cancel its request — so they mean `ECANCELED`.
pub(crate) fn interrupted_is_cancelled(res: i32) -> i32 {
    match res {
        -516 | -514 | -513 | -512 => -libc::ECANCELED,
        r => r,
    }
}

/// Converts a raw kernel result into an `io::Result`. This is the only place that
/// interprets negative results as errno values.
pub(crate) fn raw_result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// A socket address the kernel wrote into `storage` (zeroed beforehand) and
/// whose length it reported in `len` (`recvfrom`'s `addrlen`, `recvmsg`'s
/// `msg_namelen`). `None` if the socket reported none (`len == 0`).
pub(crate) fn raw_addr(storage: SockAddrStorage, len: socklen_t) -> Option<Box<SockAddr>> {
    if len == 0 {
        return None;
    }
    // The kernel reports the address's full length even when it had to cut it
    // to fit; never claim more bytes than the storage has.
    let len = len.min(storage.size_of());
    // SAFETY: the kernel wrote an address of family `ss_family` and length `len`
    // at the start of `storage` (a `sockaddr_storage`, large enough for every
    // family), and the rest of it is still zeroed, so the family, the length and
    // the bytes agree — `SockAddr::new`'s requirement.
    Some(Box::new(unsafe { SockAddr::new(storage, len) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_results_are_errno() {
        let e = raw_result(-libc::ECONNRESET).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET));
        assert_eq!(raw_result(17).unwrap(), 17);
        assert_eq!(raw_result(0).unwrap(), 0);
    }

    #[test]
    fn an_empty_address_is_none_and_a_long_one_is_clamped() {
        assert!(raw_addr(SockAddrStorage::zeroed(), 0).is_none());
        let storage = SockAddrStorage::zeroed();
        let size = storage.size_of();
        let a = raw_addr(storage, size + 100).unwrap();
        assert_eq!(a.len(), size);
    }

    #[test]
    fn only_a_successful_recv_from_keeps_its_address() {
        let sender: std::net::SocketAddr = ([127, 0, 0, 1], 9).into();
        let complete = |kind, res, buf| {
            let out = Output {
                buf: Some(buf),
                addr: Some(Box::new(SockAddr::from(sender))),
                ..Output::default()
            };
            Completion::from_raw(OpId(1), kind, 0, 0, res, out)
        };
        let mut ok = complete(OpKind::RecvFrom, 3, vec![1, 2, 3]);
        assert_eq!(ok.take_addr().and_then(|a| a.as_socket()), Some(sender));
        assert!(ok.take_addr().is_none(), "taken once");
        let mut failed = complete(OpKind::RecvFrom, -libc::ECANCELED, Vec::new());
        assert!(failed.take_addr().is_none());
        let mut recv = complete(OpKind::Recv, 0, Vec::new());
        assert!(recv.take_addr().is_none());
    }

    #[test]
    fn a_readv_fills_its_buffers_in_order() {
        let bufs = vec![
            Vec::with_capacity(4),
            Vec::with_capacity(0),
            Vec::with_capacity(8),
        ];
        let complete = |res, bufs| {
            let out = Output {
                bufs: Some(bufs),
                ..Output::default()
            };
            Completion::from_raw(OpId(1), OpKind::ReadV, 0, 0, res, out)
        };
        let mut c = complete(7, bufs);
        let lens: Vec<usize> = c.take_bufs().unwrap().iter().map(Vec::len).collect();
        assert_eq!(lens, [4, 0, 3]);
        assert!(c.take_bufs().is_none(), "taken once");
        let mut failed = complete(-libc::EBADF, vec![b"kept".to_vec()]);
        assert_eq!(failed.take_bufs().unwrap(), [b"kept".to_vec()]);
    }

    #[test]
    fn a_leaked_restart_code_is_a_cancel() {
        let c = Completion::from_raw(OpId(1), OpKind::SendFile, 0, 0, -512, Output::default());
        assert!(c.is_cancelled(), "{:?}", c.result);
        let c = Completion::from_raw(OpId(1), OpKind::Recv, 0, 0, -libc::EINTR, Output::default());
        assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::EINTR));
    }
}

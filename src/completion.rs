//! `Completion`: one dequeued packet, and the single place where a raw kernel
//! result (`res >= 0` or `-errno`) becomes an `io::Result`.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::op::OpKind;

/// Identifies one submitted operation, for [`CompletionPort::cancel`](crate::CompletionPort::cancel).
///
/// An id is never reused while its operation is in flight: it carries a generation,
/// so a stale id from a completed operation is answered with `NotFound` rather than
/// cancelling an unrelated newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(pub(crate) u64);

impl OpId {
    /// The raw 64-bit value (slot index and generation), for logs.
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
}

impl Completion {
    /// A user packet from `post`.
    pub(crate) fn packet(key: u64, user_data: u64, bytes: usize) -> Self {
        Completion {
            key,
            user_data,
            result: Ok(bytes),
            buf: None,
            op: None,
            kind: OpKind::Post,
            fd: None,
        }
    }

    /// A completion for an operation, from the raw kernel result (`res < 0` is
    /// `-errno`), with the per-kind finishing every backend shares: a read's
    /// buffer gets the length read, a fired timer is success, an accepted
    /// descriptor becomes owned by the completion.
    pub(crate) fn from_raw(
        op: OpId,
        kind: OpKind,
        key: u64,
        user_data: u64,
        res: i32,
        mut buf: Option<Vec<u8>>,
    ) -> Self {
        let mut res = res;
        match kind {
            OpKind::Read | OpKind::Recv if res >= 0 => {
                if let Some(b) = buf.as_mut() {
                    debug_assert!(res as usize <= b.capacity());
                    // SAFETY: the kernel wrote `res` bytes at the start of the
                    // buffer, and `res <= capacity` because the capacity was the
                    // length the backend gave it.
                    unsafe { b.set_len(res as usize) };
                }
            }
            OpKind::Timeout if res == -libc::ETIME => res = 0,
            _ => {}
        }
        let fd = if kind == OpKind::Accept && res >= 0 {
            // SAFETY: a successful accept's result is a new descriptor that
            // nobody else owns.
            Some(unsafe { OwnedFd::from_raw_fd(res) })
        } else {
            None
        };
        Completion {
            key,
            user_data,
            result: raw_result(res),
            buf,
            op: Some(op),
            kind,
            fd,
        }
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

    /// For a successful `accept`: the accepted socket. Taking it transfers ownership;
    /// a completion dropped without taking it closes the socket, so nothing leaks.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("key", &self.key)
            .field("user_data", &self.user_data)
            .field("kind", &self.kind)
            .field("result", &self.result)
            .field("buf_len", &self.buf.as_ref().map(Vec::len))
            .field("fd", &self.fd)
            .finish()
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
}

//! The kinds of operations, and how a backend carries out each kind.

/// How many kinds of operations there are (all but [`OpKind::Post`]).
const KINDS: usize = 25;

/// The kind of an operation, as reported in its [`Completion`](crate::Completion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// A packet from `post`.
    Post,
    /// No operation: completes at once with `Ok(0)`.
    Nop,
    /// Read at an offset.
    Read,
    /// Write at an offset.
    Write,
    /// Receive from a socket.
    Recv,
    /// Send on a socket.
    Send,
    /// Receive one datagram and its sender's address.
    RecvFrom,
    /// Send one datagram to an address.
    SendTo,
    /// Accept a connection.
    Accept,
    /// Connect a socket.
    Connect,
    /// Close a descriptor.
    Close,
    /// Flush a file to storage.
    Fsync,
    /// A timer.
    Timeout,
    /// File → socket transfer without a user-space copy.
    SendFile,
    /// Read at an offset into several buffers.
    ReadV,
    /// Write several buffers at an offset.
    WriteV,
    /// Open a file.
    OpenAt,
    /// A file's metadata.
    Statx,
    /// Allocate (or free) a file's space.
    Fallocate,
    /// Shut down one or both directions of a socket.
    Shutdown,
    /// Accept connections, one completion each, from one submission.
    AcceptMulti,
    /// Receive into a [`BufferPool`](crate::BufferPool), one completion per
    /// chunk received, from one submission.
    RecvMulti,
    /// Send on a socket without copying the bytes (`Op::send_zc`).
    SendZc,
    /// Read at an offset into a registered buffer (`Op::read_fixed`).
    ReadFixed,
    /// Write from a registered buffer at an offset (`Op::write_fixed`).
    WriteFixed,
    /// Wait until a socket can take more bytes.
    Writable,
}

impl OpKind {
    /// Every kind of operation an [`Op`](super::Op) can be (all but [`OpKind::Post`]),
    /// files first, then sockets, then the rest.
    pub const ALL: [OpKind; KINDS] = [
        OpKind::Nop,
        OpKind::Read,
        OpKind::Write,
        OpKind::ReadV,
        OpKind::WriteV,
        OpKind::Fsync,
        OpKind::OpenAt,
        OpKind::Statx,
        OpKind::Fallocate,
        OpKind::Close,
        OpKind::ReadFixed,
        OpKind::WriteFixed,
        OpKind::Recv,
        OpKind::Send,
        OpKind::SendZc,
        OpKind::RecvFrom,
        OpKind::SendTo,
        OpKind::Accept,
        OpKind::Connect,
        OpKind::Shutdown,
        OpKind::SendFile,
        OpKind::Timeout,
        OpKind::AcceptMulti,
        OpKind::RecvMulti,
        OpKind::Writable,
    ];

    /// This kind's place in [`OpKind::ALL`]; `None` for `Post`. An exhaustive
    /// match, so a new kind cannot be left out (a unit test checks the order).
    fn index(self) -> Option<usize> {
        Some(match self {
            OpKind::Post => return None,
            OpKind::Nop => 0,
            OpKind::Read => 1,
            OpKind::Write => 2,
            OpKind::ReadV => 3,
            OpKind::WriteV => 4,
            OpKind::Fsync => 5,
            OpKind::OpenAt => 6,
            OpKind::Statx => 7,
            OpKind::Fallocate => 8,
            OpKind::Close => 9,
            OpKind::ReadFixed => 10,
            OpKind::WriteFixed => 11,
            OpKind::Recv => 12,
            OpKind::Send => 13,
            OpKind::SendZc => 14,
            OpKind::RecvFrom => 15,
            OpKind::SendTo => 16,
            OpKind::Accept => 17,
            OpKind::Connect => 18,
            OpKind::Shutdown => 19,
            OpKind::SendFile => 20,
            OpKind::Timeout => 21,
            OpKind::AcceptMulti => 22,
            OpKind::RecvMulti => 23,
            OpKind::Writable => 24,
        })
    }
}

/// How a backend carries out one kind of operation, as
/// [`PortStats::op_paths`](crate::PortStats::op_paths) and `ringport info`
/// report it — so a fallback is never a silent surprise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpPath {
    /// The kernel does it asynchronously: one io_uring request (or a chain).
    Uring,
    /// A blocking system call on one of the backend's worker threads (epoll's
    /// file operations; on io_uring, an opcode this kernel lacks).
    Worker,
    /// Built from other mechanisms: readiness then a non-blocking system call
    /// (epoll's sockets), a call on the submitting thread, a timer, or other
    /// io_uring requests (`send_file` as read + send without `SPLICE`).
    Emulated,
}

impl std::fmt::Display for OpPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpPath::Uring => "io_uring",
            OpPath::Worker => "worker thread",
            OpPath::Emulated => "emulated",
        })
    }
}

/// The [`OpPath`] of every kind of operation on one port, and of the linked
/// timeout ([`Op::timeout_after`](super::Op::timeout_after)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OpPaths {
    paths: [OpPath; KINDS],
    link_timeout: OpPath,
}

impl OpPaths {
    pub(crate) fn new(mut path: impl FnMut(OpKind) -> OpPath, link_timeout: OpPath) -> OpPaths {
        let mut paths = [OpPath::Emulated; KINDS];
        for (p, k) in paths.iter_mut().zip(OpKind::ALL) {
            *p = path(k);
        }
        OpPaths {
            paths,
            link_timeout,
        }
    }

    /// How operations of `kind` run; `None` for [`OpKind::Post`] (a packet,
    /// not an operation).
    pub fn get(&self, kind: OpKind) -> Option<OpPath> {
        kind.index().map(|i| self.paths[i])
    }

    /// How a linked timeout ([`Op::timeout_after`](super::Op::timeout_after)) is carried out.
    pub fn link_timeout(&self) -> OpPath {
        self.link_timeout
    }

    /// Every kind of operation with its path, in [`OpKind::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (OpKind, OpPath)> + '_ {
        OpKind::ALL.iter().copied().zip(self.paths)
    }
}

impl std::fmt::Debug for OpPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        m.entries(self.iter().map(|(k, p)| (k, p.to_string())));
        m.entry(&"timeout_after", &self.link_timeout.to_string());
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_in_its_place() {
        for (i, k) in OpKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), Some(i), "{k:?}");
        }
        assert_eq!(OpKind::Post.index(), None);
        let paths = OpPaths::new(
            |k| {
                if k == OpKind::Read {
                    OpPath::Worker
                } else {
                    OpPath::Uring
                }
            },
            OpPath::Emulated,
        );
        assert_eq!(paths.get(OpKind::Read), Some(OpPath::Worker));
        assert_eq!(paths.get(OpKind::Timeout), Some(OpPath::Uring));
        assert_eq!(paths.get(OpKind::Post), None);
        assert_eq!(paths.iter().count(), OpKind::ALL.len());
        assert_eq!(paths.link_timeout().to_string(), "emulated");
    }
}

//! What an operation owns while it is in flight ([`OpBody`]), by kind, and
//! what it hands back in its completion.

use std::ffi::CString;
use std::os::fd::{OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

use socket2::SockAddr;

use super::OpKind;
use crate::completion::Output;
use crate::fixed::FixedBuf;

/// The backend-agnostic body of an operation.
#[derive(Debug)]
pub(crate) enum OpBody {
    Nop,
    Read {
        fd: RawFd,
        buf: Vec<u8>,
        offset: u64,
    },
    Write {
        fd: RawFd,
        buf: Vec<u8>,
        pos: usize,
        offset: u64,
    },
    Recv {
        fd: RawFd,
        buf: Vec<u8>,
        flags: i32,
    },
    Send {
        fd: RawFd,
        buf: Vec<u8>,
        pos: usize,
        flags: i32,
    },
    RecvFrom {
        fd: RawFd,
        buf: Vec<u8>,
        flags: i32,
        /// The sender's address, for a backend that receives in place (epoll)
        /// to carry to the completion; `None` until then.
        from: Option<Box<SockAddr>>,
    },
    SendTo {
        fd: RawFd,
        buf: Vec<u8>,
        addr: Box<SockAddr>,
        flags: i32,
    },
    Accept {
        fd: RawFd,
    },
    Connect {
        fd: RawFd,
        addr: Box<SockAddr>,
    },
    Close {
        fd: OwnedFd,
    },
    Fsync {
        fd: RawFd,
        datasync: bool,
    },
    Timeout {
        after: Duration,
    },
    SendFile {
        sock: RawFd,
        file: RawFd,
        offset: u64,
        len: usize,
    },
    Writable {
        fd: RawFd,
    },
    ReadV {
        fd: RawFd,
        bufs: Vec<Vec<u8>>,
        offset: u64,
    },
    WriteV {
        fd: RawFd,
        bufs: Vec<Vec<u8>>,
        offset: u64,
    },
    OpenAt {
        /// The directory a relative path starts from (`AT_FDCWD`: the current one).
        dir: RawFd,
        /// `None`: the path had a NUL byte, and the op fails with `EINVAL`.
        path: Option<CString>,
        /// `O_CLOEXEC` included.
        flags: i32,
        mode: u32,
    },
    Statx {
        dir: RawFd,
        path: Option<CString>,
        flags: i32,
        mask: u32,
        out: StatxBuf,
    },
    Fallocate {
        fd: RawFd,
        mode: i32,
        offset: u64,
        len: u64,
    },
    Shutdown {
        fd: RawFd,
        how: i32,
    },
    /// `Op::accept_multishot` (`multishot.rs`).
    AcceptMulti {
        fd: RawFd,
    },
    /// `Op::recv_multishot` (`multishot.rs`).
    RecvMulti {
        fd: RawFd,
        pool: std::sync::Arc<crate::provided::Shared>,
        flags: i32,
    },
    /// `Op::send_zc`: like `Send`, without copying the bytes (`zc.rs`).
    SendZc {
        fd: RawFd,
        buf: Vec<u8>,
        pos: usize,
        flags: i32,
    },
    /// `Op::read_fixed` (`fixed.rs`).
    ReadFixed {
        fd: RawFd,
        buf: FixedBuf,
        offset: u64,
    },
    /// `Op::write_fixed`: writes `buf[pos..]`.
    WriteFixed {
        fd: RawFd,
        buf: FixedBuf,
        pos: usize,
        offset: u64,
    },
}

/// Room for the kernel to write one `statx` result into: a heap allocation
/// held through a raw pointer rather than a `Box`, because the kernel writes
/// into it while the operation that owns it moves about (a `Box` asserts
/// exclusive access to its contents each time it moves). Read only through
/// [`StatxBuf::into_box`], once the operation has ended.
pub(crate) struct StatxBuf(NonNull<libc::statx>);

// SAFETY: a `StatxBuf` owns its allocation outright, like a `Box<libc::statx>`
// (plain integers, nothing tied to a thread).
unsafe impl Send for StatxBuf {}

impl StatxBuf {
    pub(super) fn new() -> StatxBuf {
        // SAFETY: `statx` is a plain C struct of integers; all zeroes is valid.
        let b: Box<libc::statx> = Box::new(unsafe { std::mem::zeroed() });
        StatxBuf(NonNull::from(Box::leak(b)))
    }

    /// Where the kernel writes the result.
    pub(crate) fn as_mut_ptr(&self) -> *mut libc::statx {
        self.0.as_ptr()
    }

    /// The result. Call only once the operation has ended (its CQE reaped, its
    /// worker done): nothing writes into it any more.
    pub(crate) fn into_box(self) -> Box<libc::statx> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the pointer came from `Box::leak` in `new`; `this` will not
        // be dropped, so ownership passes to the new box exactly once; nothing
        // else writes into it any more (the caller's promise).
        unsafe { Box::from_raw(this.0.as_ptr()) }
    }
}

impl Drop for StatxBuf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` in `new` and is freed only
        // here or in `into_box` (which skips this); the operation owning it is
        // dropped only once it has ended.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

impl std::fmt::Debug for StatxBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatxBuf").field("at", &self.0).finish()
    }
}

impl OpBody {
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            OpBody::Nop => OpKind::Nop,
            OpBody::Read { .. } => OpKind::Read,
            OpBody::Write { .. } => OpKind::Write,
            OpBody::Recv { .. } => OpKind::Recv,
            OpBody::Send { .. } => OpKind::Send,
            OpBody::RecvFrom { .. } => OpKind::RecvFrom,
            OpBody::SendTo { .. } => OpKind::SendTo,
            OpBody::Accept { .. } => OpKind::Accept,
            OpBody::Connect { .. } => OpKind::Connect,
            OpBody::Close { .. } => OpKind::Close,
            OpBody::Fsync { .. } => OpKind::Fsync,
            OpBody::Timeout { .. } => OpKind::Timeout,
            OpBody::SendFile { .. } => OpKind::SendFile,
            OpBody::ReadV { .. } => OpKind::ReadV,
            OpBody::WriteV { .. } => OpKind::WriteV,
            OpBody::OpenAt { .. } => OpKind::OpenAt,
            OpBody::Statx { .. } => OpKind::Statx,
            OpBody::Fallocate { .. } => OpKind::Fallocate,
            OpBody::Shutdown { .. } => OpKind::Shutdown,
            OpBody::AcceptMulti { .. } => OpKind::AcceptMulti,
            OpBody::RecvMulti { .. } => OpKind::RecvMulti,
            OpBody::SendZc { .. } => OpKind::SendZc,
            OpBody::ReadFixed { .. } => OpKind::ReadFixed,
            OpBody::WriteFixed { .. } => OpKind::WriteFixed,
            OpBody::Writable { .. } => OpKind::Writable,
        }
    }
}

impl OpBody {
    /// What the operation hands back in its completion: its buffer, and the
    /// source address a receive got.
    /// The buffer of an operation that hands back nothing else (see
    /// `Completion::plain`), or the body unchanged.
    #[inline]
    pub(crate) fn plain_buf(self) -> Result<Vec<u8>, OpBody> {
        match self {
            OpBody::Read { buf, .. }
            | OpBody::Write { buf, .. }
            | OpBody::Recv { buf, .. }
            | OpBody::Send { buf, .. }
            | OpBody::SendZc { buf, .. }
            | OpBody::SendTo { buf, .. } => Ok(buf),
            body => Err(body),
        }
    }

    pub(crate) fn into_output(self) -> Output {
        match self {
            OpBody::RecvFrom { buf, from, .. } => Output {
                buf: Some(buf),
                addr: from,
                ..Output::default()
            },
            OpBody::Read { buf, .. }
            | OpBody::Write { buf, .. }
            | OpBody::Recv { buf, .. }
            | OpBody::Send { buf, .. }
            | OpBody::SendZc { buf, .. }
            | OpBody::SendTo { buf, .. } => Output {
                buf: Some(buf),
                ..Output::default()
            },
            OpBody::ReadV { bufs, .. } | OpBody::WriteV { bufs, .. } => Output {
                bufs: Some(bufs),
                ..Output::default()
            },
            OpBody::ReadFixed { buf, .. } | OpBody::WriteFixed { buf, .. } => Output {
                fixed: Some(buf),
                ..Output::default()
            },
            OpBody::Statx { out, .. } => Output {
                statx: Some(out.into_box()),
                ..Output::default()
            },
            _ => Output::default(),
        }
    }
}

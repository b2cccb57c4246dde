//! Translating one operation into its SQE, and the auxiliary data the SQE
//! points into (kept alive in the operation's record until its CQE is reaped).
//!
//! The record keeps the [`OpBody`] itself, so everything the body owns — a
//! buffer's heap allocation, a socket address's box — stays at the address the
//! SQE holds however the record moves about the table. What the SQE needs
//! besides (a timer's `timespec`, a `msghdr`) is the [`Aux`] built here.

use std::os::fd::IntoRawFd;
use std::ptr::NonNull;

/// The most one read, write, receive or send moves (Linux's `MAX_RW_COUNT`,
/// `INT_MAX` rounded down to a page): the length an SQE is given at most.
pub(super) const MAX_IO: usize = 0x7fff_f000;

use io_uring::{opcode, squeue, types};
use socket2::{socklen_t, SockAddr, SockAddrStorage};

use crate::completion::raw_addr;
use crate::op::OpBody;
use crate::sched::Priority;

use super::bufs::ZeroCopy;
use super::transfer::Transfer;

/// What an SQE points into besides the op body, kept alive with the record.
#[derive(Debug)]
// The `Time` box is never read: it exists so the kernel's pointer stays valid
// until the record is dropped at reap time. (`Msg` is read: a receive's source
// address comes back in it.)
#[allow(dead_code)]
pub(super) enum Aux {
    None,
    Time(Box<types::Timespec>),
    Msg(MsgAux),
    /// A `send_file` in progress: its pipe (or buffer) and its state.
    Transfer(Box<Transfer>),
    /// A vectored read's or write's `iovec` array.
    Iov(IoVecs),
    /// The operation runs on a worker thread (`fallback.rs`); its body is there.
    Worker,
    /// A multishot operation (`multi.rs`).
    Multi(super::multi::Multi),
    /// A zero-copy send between its result and its notification (`bufs.rs`).
    ZeroCopy(ZeroCopy),
}

/// The `iovec` array of a `READV`/`WRITEV`, one entry per buffer of the op body.
pub(super) struct IoVecs(Box<[libc::iovec]>);

// SAFETY: the pointers in the array point into the heap allocations of the
// buffers in the same record's body, which move between threads together with
// it (under the driver's mutex); nothing in them is tied to a thread.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// One entry per buffer: its whole capacity for a read, its contents for a
    /// write. The buffers' heap allocations do not move while the record holds
    /// them, so the pointers stay valid until the record is dropped.
    fn new(bufs: &mut [Vec<u8>], read: bool) -> IoVecs {
        IoVecs(
            bufs.iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: if read { b.capacity() } else { b.len() },
                })
                .collect(),
        )
    }

    fn as_ptr(&self) -> *const libc::iovec {
        self.0.as_ptr()
    }

    fn len(&self) -> u32 {
        self.0.len().min(u32::MAX as usize) as u32
    }
}

impl std::fmt::Debug for IoVecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoVecs")
            .field("len", &self.0.len())
            .finish()
    }
}

/// A `recvmsg`/`sendmsg` header with everything it points to except the data
/// buffer (which the record's body holds): one `iovec`, and the socket address.
struct MsgHdr {
    hdr: libc::msghdr,
    iov: libc::iovec,
    /// `send_to`: the destination. `recv_from`: zeroed, for the kernel to write
    /// the source address into.
    name: SockAddrStorage,
}

/// Owns a heap-allocated [`MsgHdr`] at a fixed address, from `build` until the
/// record is dropped at reap time.
///
/// It is held through a raw pointer rather than a `Box` because the kernel
/// *writes* into it (a receive's `msg_namelen`, `msg_flags` and address) while
/// the record moves about the table; a `Box` asserts exclusive access to its
/// contents every time it is moved, which those writes would contradict. Only
/// `Drop` and [`MsgAux::source`] (after the CQE) touch the contents.
pub(super) struct MsgAux(NonNull<MsgHdr>);

// SAFETY: a `MsgAux` owns its allocation outright, like a `Box`. The raw pointers
// inside the header point only into that same allocation and into the record's
// data buffer, which moves between threads together with it (both are in the
// same record, under the driver's mutex); nothing in them is tied to a thread.
unsafe impl Send for MsgAux {}

impl MsgAux {
    /// A header for one buffer of `len` bytes at `data`, and the address `name`
    /// (`name_len` bytes of it are meaningful: the destination's length for a
    /// send, the whole storage for a receive).
    fn new(data: *mut u8, len: usize, name: SockAddrStorage, name_len: socklen_t) -> MsgAux {
        // SAFETY: msghdr and iovec are plain C structs of pointers and integers;
        // all zeroes (null pointers, zero lengths) is a valid value of each.
        let (hdr, iov) = unsafe { std::mem::zeroed() };
        let ptr = Box::into_raw(Box::new(MsgHdr { hdr, iov, name }));
        // SAFETY: `ptr` comes from `Box::into_raw` just above: valid, aligned,
        // and not yet seen by anyone else (the kernel sees it only once the SQE
        // built from it is pushed). The self-pointers are taken from `ptr`
        // itself, with no intermediate reference, so they stay valid for as
        // long as the allocation does.
        unsafe {
            (*ptr).iov.iov_base = data.cast();
            (*ptr).iov.iov_len = len;
            (*ptr).hdr.msg_iov = &raw mut (*ptr).iov;
            (*ptr).hdr.msg_iovlen = 1;
            (*ptr).hdr.msg_name = (&raw mut (*ptr).name).cast();
            (*ptr).hdr.msg_namelen = name_len;
        }
        // SAFETY: `Box::into_raw` never returns null.
        MsgAux(unsafe { NonNull::new_unchecked(ptr) })
    }

    fn hdr(&self) -> *mut libc::msghdr {
        // SAFETY: `hdr` is a field of the live allocation this owns; only its
        // address is computed, no reference is created and nothing is read.
        unsafe { &raw mut (*self.0.as_ptr()).hdr }
    }

    /// A completed receive's source address. Call only once the operation's CQE
    /// has been reaped: the kernel writes the address and its length until then.
    pub(super) fn source(&self) -> Option<Box<SockAddr>> {
        let p = self.0.as_ptr();
        // SAFETY: the CQE has been reaped (the caller's promise), so the kernel
        // has finished writing into the header and nobody else touches it. The
        // storage is plain bytes (no `Drop`, no ownership), so a bitwise copy
        // is an independent, valid value.
        let (name, len) = unsafe { (std::ptr::read(&raw const (*p).name), (*p).hdr.msg_namelen) };
        raw_addr(name, len)
    }
}

impl Drop for MsgAux {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::into_raw` in `new` and is freed only
        // here, once; the record (and so this) is dropped only after its CQE was
        // reaped, or never submitted.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

impl std::fmt::Debug for MsgAux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgAux").field("at", &self.0).finish()
    }
}

/// Translates an operation of one SQE into it. The SQE points into `body`'s heap
/// allocations and into the returned [`Aux`]; the caller keeps both in the
/// record. A `close` gives its descriptor to the kernel and leaves `Nop` behind.
/// `send_file` is not built here (see `transfer.rs`).
///
/// `Err(res)`: the operation needs no SQE, it has already ended with the raw
/// result `res` (a path with a NUL byte).
///
/// Reads and writes carry `prio`'s I/O priority in the SQE's `ioprio` field
/// (`sys/ioprio.rs`); no other opcode does (for socket opcodes that field holds
/// flags).
///
/// Buffer lengths are capped at [`MAX_IO`]: a longer one makes the kernel
/// refuse a receive or send (`EINVAL`), where `read(2)` and `recv(2)` (and
/// so the epoll backend) transfer that much and say so.
pub(super) fn build(body: &mut OpBody, prio: Priority) -> Result<(squeue::Entry, Aux), i32> {
    use types::Fd;
    let ioprio = crate::sys::ioprio::ioprio(prio);
    Ok(match body {
        OpBody::Nop | OpBody::SendFile { .. } => (opcode::Nop::new().build(), Aux::None),
        OpBody::Read { fd, buf, offset } => {
            let len = buf.capacity().min(MAX_IO) as u32;
            let sqe = opcode::Read::new(Fd(*fd), buf.as_mut_ptr(), len)
                .offset(*offset)
                .ioprio(ioprio)
                .build();
            (sqe, Aux::None)
        }
        OpBody::Write {
            fd,
            buf,
            pos,
            offset,
        } => {
            let len = (buf.len() - *pos).min(MAX_IO) as u32;
            // SAFETY: pos <= buf.len() (clamped when the op was built).
            let ptr = unsafe { buf.as_ptr().add(*pos) };
            let sqe = opcode::Write::new(Fd(*fd), ptr, len)
                .offset(*offset)
                .ioprio(ioprio)
                .build();
            (sqe, Aux::None)
        }
        OpBody::Recv { fd, buf, flags } => {
            let len = buf.capacity().min(MAX_IO) as u32;
            let sqe = opcode::Recv::new(Fd(*fd), buf.as_mut_ptr(), len)
                .flags(*flags)
                .build();
            (sqe, Aux::None)
        }
        OpBody::Send {
            fd,
            buf,
            pos,
            flags,
        } => {
            let len = (buf.len() - *pos).min(MAX_IO) as u32;
            // SAFETY: pos <= buf.len() (clamped when the op was built).
            let ptr = unsafe { buf.as_ptr().add(*pos) };
            let sqe = opcode::Send::new(Fd(*fd), ptr, len).flags(*flags).build();
            (sqe, Aux::None)
        }
        OpBody::RecvFrom { fd, buf, flags, .. } => {
            let name = SockAddrStorage::zeroed();
            let name_len = name.size_of();
            let msg = MsgAux::new(buf.as_mut_ptr(), buf.capacity(), name, name_len);
            let sqe = opcode::RecvMsg::new(Fd(*fd), msg.hdr())
                .flags(*flags as u32)
                .build();
            (sqe, Aux::Msg(msg))
        }
        OpBody::SendTo {
            fd,
            buf,
            addr,
            flags,
        } => {
            let name_len = addr.len();
            // The kernel only reads through the iovec of a send; the pointer is
            // `*mut` because `iovec` has one field for both directions.
            let storage = SockAddr::clone(addr).as_storage();
            let msg = MsgAux::new(buf.as_mut_ptr(), buf.len(), storage, name_len);
            let sqe = opcode::SendMsg::new(Fd(*fd), msg.hdr())
                .flags(*flags as u32)
                .build();
            (sqe, Aux::Msg(msg))
        }
        OpBody::Accept { fd } => {
            let sqe = opcode::Accept::new(Fd(*fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build();
            (sqe, Aux::None)
        }
        OpBody::Connect { fd, addr } => {
            let sqe =
                opcode::Connect::new(Fd(*fd), addr.as_ptr().cast::<libc::sockaddr>(), addr.len())
                    .build();
            (sqe, Aux::None)
        }
        OpBody::Close { .. } => {
            let OpBody::Close { fd } = std::mem::replace(body, OpBody::Nop) else {
                unreachable!("matched a close just above")
            };
            // The kernel closes it; ownership ends here.
            let sqe = opcode::Close::new(Fd(fd.into_raw_fd())).build();
            (sqe, Aux::None)
        }
        OpBody::Fsync { fd, datasync } => {
            let mut op = opcode::Fsync::new(Fd(*fd));
            if *datasync {
                op = op.flags(types::FsyncFlags::DATASYNC);
            }
            (op.build(), Aux::None)
        }
        OpBody::ReadV { fd, bufs, offset } => {
            let iov = IoVecs::new(bufs, true);
            let sqe = opcode::Readv::new(Fd(*fd), iov.as_ptr(), iov.len())
                .offset(*offset)
                .ioprio(ioprio)
                .build();
            (sqe, Aux::Iov(iov))
        }
        OpBody::WriteV { fd, bufs, offset } => {
            // The kernel only reads through the iovecs of a write; the pointers
            // are `*mut` because `iovec` has one field for both directions.
            let iov = IoVecs::new(bufs, false);
            let sqe = opcode::Writev::new(Fd(*fd), iov.as_ptr(), iov.len())
                .offset(*offset)
                .ioprio(ioprio)
                .build();
            (sqe, Aux::Iov(iov))
        }
        OpBody::Timeout { after } => {
            let ts = Box::new(types::Timespec::from(*after));
            let sqe = opcode::Timeout::new(&*ts as *const types::Timespec).build();
            (sqe, Aux::Time(ts))
        }
        OpBody::OpenAt {
            dir,
            path,
            flags,
            mode,
        } => {
            let path = path.as_ref().ok_or(-libc::EINVAL)?;
            let sqe = opcode::OpenAt::new(Fd(*dir), path.as_ptr())
                .flags(*flags)
                .mode(*mode)
                .build();
            (sqe, Aux::None)
        }
        OpBody::Statx {
            dir,
            path,
            flags,
            mask,
            out,
        } => {
            let path = path.as_ref().ok_or(-libc::EINVAL)?;
            // io_uring's `statx` is an opaque alias of the same C structure.
            let sqe = opcode::Statx::new(Fd(*dir), path.as_ptr(), out.as_mut_ptr().cast())
                .flags(*flags)
                .mask(*mask)
                .build();
            (sqe, Aux::None)
        }
        OpBody::Fallocate {
            fd,
            mode,
            offset,
            len,
        } => {
            let sqe = opcode::Fallocate::new(Fd(*fd), *len)
                .offset(*offset)
                .mode(*mode)
                .build();
            (sqe, Aux::None)
        }
        OpBody::Shutdown { fd, how } => (opcode::Shutdown::new(Fd(*fd), *how).build(), Aux::None),
        // Built by the driver (`multi.rs`), which knows what the kernel offers.
        OpBody::AcceptMulti { .. } | OpBody::RecvMulti { .. } => return Err(-libc::EINVAL),
        // Built by the driver (`bufs.rs`), which knows what the kernel offers;
        // a fixed-buffer operation it leaves runs on a worker thread.
        OpBody::SendZc { .. } | OpBody::ReadFixed { .. } | OpBody::WriteFixed { .. } => {
            return Err(-libc::EINVAL)
        }
        OpBody::Writable { fd } => (
            opcode::PollAdd::new(Fd(*fd), libc::POLLOUT as u32).build(),
            Aux::None,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `ioprio` field of an SQE (bytes 2–3 of `struct io_uring_sqe`).
    fn sqe_ioprio(sqe: &squeue::Entry) -> u16 {
        assert_eq!(std::mem::size_of::<squeue::Entry>(), 64);
        // SAFETY: `Entry` is `#[repr(C)]` around the kernel's 64-byte
        // `io_uring_sqe`, whose layout starts `u8 opcode, u8 flags, u16 ioprio`;
        // reading its first 4 bytes as plain bytes is valid.
        let head: [u8; 4] = unsafe { std::ptr::read((sqe as *const squeue::Entry).cast()) };
        u16::from_ne_bytes([head[2], head[3]])
    }

    #[test]
    fn only_reads_and_writes_carry_the_io_priority() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        let low = (2 << 13) | 7;
        for (mut body, want) in [
            (
                OpBody::Read {
                    fd,
                    buf: Vec::with_capacity(8),
                    offset: 0,
                },
                low,
            ),
            (
                OpBody::Write {
                    fd,
                    buf: vec![1],
                    pos: 0,
                    offset: 0,
                },
                low,
            ),
            (
                OpBody::ReadV {
                    fd,
                    bufs: vec![Vec::with_capacity(8)],
                    offset: 0,
                },
                low,
            ),
            (
                OpBody::Recv {
                    fd,
                    buf: Vec::with_capacity(8),
                    flags: 0,
                },
                0,
            ),
            (OpBody::Fsync { fd, datasync: true }, 0),
        ] {
            let (sqe, _aux) = build(&mut body, Priority::Low).unwrap();
            assert_eq!(sqe_ioprio(&sqe), want, "{body:?}");
            let (sqe, _aux) = build(&mut body, Priority::Normal).unwrap();
            assert_eq!(sqe_ioprio(&sqe), 0, "{body:?}");
        }
    }
}

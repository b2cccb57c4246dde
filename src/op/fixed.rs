//! Operations on registered (fixed) buffers: `Op::read_fixed`, `Op::write_fixed`.

use std::os::fd::AsFd;

use super::{raw, Op, OpBody};
use crate::fixed::FixedBuf;

impl Op {
    /// Reads from `file` at `offset` into the whole capacity of a registered
    /// buffer (`IORING_OP_READ_FIXED`); the completion hands the lease back
    /// ([`Completion::take_fixed`](crate::Completion::take_fixed)) holding
    /// exactly the bytes read (its old contents are replaced). A read that
    /// reaches the end of the file is short, and `Ok(0)` means `offset` is at
    /// or past it.
    ///
    /// On a connected socket it receives (`Ok(0)`: the peer closed its side);
    /// `offset` must then be 0, as for `read(2)` — anything else fails with
    /// `ESPIPE`. A lease from another port's set fails with `EINVAL` (and
    /// comes back too). On epoll (and where the kernel cannot register
    /// buffers) this is a plain `pread`/`recv` into the same memory.
    ///
    /// See [`FixedBuffers`](crate::FixedBuffers) for an example.
    pub fn read_fixed(file: &impl AsFd, buf: FixedBuf, offset: u64) -> Op {
        Op::new(OpBody::ReadFixed {
            fd: raw(file),
            buf,
            offset: super::at(offset),
        })
    }

    /// Writes the bytes of a registered buffer (`buf[..buf.len()]`) to `file`
    /// at `offset` (`IORING_OP_WRITE_FIXED`). A short write completes with the
    /// count written; resubmit the rest with [`Op::write_fixed_from`]. The
    /// lease comes back unchanged.
    ///
    /// On a connected socket it sends, with `MSG_NOSIGNAL` (a closed peer is
    /// `EPIPE`, never a `SIGPIPE`); `offset` must be 0 there (else `ESPIPE`).
    pub fn write_fixed(file: &impl AsFd, buf: FixedBuf, offset: u64) -> Op {
        Op::write_fixed_from(file, buf, 0, offset)
    }

    /// Writes `buf[pos..]` to `file` at `offset`, as [`Op::write_fixed`].
    pub fn write_fixed_from(file: &impl AsFd, buf: FixedBuf, pos: usize, offset: u64) -> Op {
        let pos = pos.min(buf.len());
        Op::new(OpBody::WriteFixed {
            fd: raw(file),
            buf,
            pos,
            offset: super::at(offset),
        })
    }
}

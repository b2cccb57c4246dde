//! Registered (fixed) buffers on epoll: plain memory, nothing registered.
//! On a file, `read_fixed`/`write_fixed` are `pread`/`pwrite` on the file
//! workers; on a registered socket, `recv`/`send` (`MSG_NOSIGNAL`) tried and
//! queued on readiness like any receive or send.

use std::io;
use std::os::fd::RawFd;

use crate::op::{Op, OpBody};

use super::sock::{attempt, Attempt};
use super::{Driver, SubmitResult, Wait};

impl Driver {
    pub(crate) fn fixed_owner(&self) -> u64 {
        self.fixed_owner
    }

    /// Takes `n` of the port's fixed-buffer slots (the same limit and the
    /// same error as io_uring's table); `Some(0)`: the set is counted, and
    /// its drop gives them back (`unregister_fixed`). No slot number means
    /// anything here.
    pub(crate) fn register_fixed(&self, n: usize) -> io::Result<Option<u32>> {
        let mut used = crate::sync::lock(&self.fixed_used);
        let table = crate::fixed::MAX_FIXED_BUFFERS;
        if *used + n > table {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "fixed buffers: {n} asked, but only {} of this port's {table} slots are free \
                     (drop a set first)",
                    table - *used
                ),
            ));
        }
        *used += n;
        Ok(Some(0))
    }

    /// A set of `n` buffers is gone: its slots are free again.
    pub(crate) fn unregister_fixed(&self, n: usize) {
        let mut used = crate::sync::lock(&self.fixed_used);
        *used = used.saturating_sub(n);
    }

    fn is_registered(&self, fd: RawFd) -> bool {
        self.shared.queue(fd).is_some()
    }

    /// A fixed-buffer operation that goes the socket way: a lease of this
    /// driver's sets, on a registered socket.
    pub(super) fn fixed_on_socket(&self, op: &Op) -> bool {
        match &op.body {
            OpBody::ReadFixed { fd, buf, .. } | OpBody::WriteFixed { fd, buf, .. } => {
                buf.belongs_to(self.fixed_owner) && self.is_registered(*fd)
            }
            _ => false,
        }
    }

    /// A fixed-buffer operation on a file (to the workers), or with a lease
    /// of another port's set (`EINVAL` at once, the lease handed back).
    pub(super) fn submit_fixed(&self, op: Op, key: u64, user_data: u64) -> SubmitResult {
        let foreign = match &op.body {
            OpBody::ReadFixed { buf, .. } | OpBody::WriteFixed { buf, .. } => {
                !buf.belongs_to(self.fixed_owner)
            }
            _ => true,
        };
        let (id, op) = self.admit(op, key, user_data, || Wait::File)?;
        if foreign {
            return self.done_now(id, -libc::EINVAL, op.body);
        }
        self.files.push(id, op.body, op.prio);
        Ok((id, None))
    }
}

/// One non-blocking attempt of a fixed-buffer operation on a socket (`Err`:
/// interrupted, try again). The offset must be 0, as for `read(2)` on a socket.
pub(super) fn try_fixed(body: &mut OpBody) -> Result<Attempt, ()> {
    match body {
        OpBody::ReadFixed { offset, .. } | OpBody::WriteFixed { offset, .. } if *offset != 0 => {
            Ok(Some(-libc::ESPIPE))
        }
        OpBody::ReadFixed { fd, buf, .. } => {
            // SAFETY: the kernel writes at most `capacity` bytes into the
            // leased buffer, which this operation owns.
            attempt(unsafe {
                crate::sys::rawcall::recv(
                    *fd,
                    buf.as_mut_ptr().cast(),
                    buf.capacity(),
                    libc::MSG_DONTWAIT,
                )
            })
        }
        OpBody::WriteFixed { fd, buf, pos, .. } => {
            let rest = &buf[*pos..];
            // SAFETY: reads `rest.len()` initialised bytes of the lease.
            attempt(unsafe {
                crate::sys::rawcall::send(
                    *fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            })
        }
        _ => Ok(Some(-libc::EINVAL)),
    }
}

//! Zero-copy send and registered (fixed) buffers on io_uring.
//!
//! # `SEND_ZC`: two CQEs, one completion
//!
//! The kernel posts a zero-copy send's result with `IORING_CQE_F_MORE` set
//! when a second CQE, the *notification* (`IORING_CQE_F_NOTIF`, same
//! `user_data`), will follow once it no longer reads the buffer. The record
//! (which owns the buffer) stays in the table until then, and the completion is
//! built from the first CQE's result only when the notification is in
//! ([`ZeroCopy`]). A cancel that arrives between the two finds no request to
//! cancel (its `ASYNC_CANCEL` says `ENOENT`, swallowed) and so loses, as a
//! cancel of a finished operation does.
//!
//! A socket the kernel cannot send from user pages for (`EOPNOTSUPP`: Unix
//! sockets) gets the same bytes through a plain `SEND` at once, still one
//! completion. A kernel without `SEND_ZC` sends them with `SEND` from the start.
//!
//! Closing the port waits for notifications like for any CQE; a peer that
//! never reads can hold one back for ever, so `shutdown` gives up on those
//! after [`NOTIF_PATIENCE`] and leaks their buffers (never frees them: the
//! kernel may still read them) — see [`Inner::abandon_notifs`].
//!
//! # Fixed buffers
//!
//! Each port reserves a *sparse* buffer table of [`MAX_FIXED_BUFFERS`] slots on
//! first use (`IORING_REGISTER_BUFFERS2` with `IORING_RSRC_REGISTER_SPARSE`,
//! Linux 5.19) and gives each set a range of it with
//! `IORING_REGISTER_BUFFERS_UPDATE`. Neither call quiesces the ring, so sets
//! come and go while other threads submit and wait. A set's slots are cleared
//! only when the set is dropped, which happens only once no lease — and so no
//! operation in flight — refers to it (`fixed.rs`); the kernel also keeps a
//! buffer it still uses alive by itself, so a slot cleared early could not
//! hurt memory safety, only the data.
//!
//! `READ_FIXED`/`WRITE_FIXED` serve files. On a socket they would go through
//! `sock_write_iter`, which has no `MSG_NOSIGNAL` (a closed peer would raise
//! `SIGPIPE` in whichever thread submitted): sockets get `RECV`/`SEND` with
//! `MSG_NOSIGNAL` on the same memory instead. Which descriptors are sockets is
//! found with one `fstat` per descriptor and remembered until it is
//! associated, disassociated or closed again.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types::Fd, IoUring};

use crate::fixed::MAX_FIXED_BUFFERS;
use crate::op::OpBody;
use crate::sync::lock;

use super::ops::Aux;
use super::records::Inner;
use super::Core;

/// How long `shutdown` waits for the notifications of zero-copy sends
/// before it abandons their buffers.
pub(super) const NOTIF_PATIENCE: Duration = Duration::from_secs(3);

/// Whether this kernel takes a sparse buffer table (found once per process,
/// on the first driver's ring, before it runs anything).
pub(super) fn sparse_tables(ring: &IoUring) -> bool {
    static SPARSE: OnceLock<bool> = OnceLock::new();
    *SPARSE.get_or_init(|| {
        let ok = ring.submitter().register_buffers_sparse(1).is_ok();
        if ok {
            let _ = ring.submitter().unregister_buffers();
        }
        ok
    })
}

/// The state of a zero-copy send between its two CQEs.
#[derive(Debug, Default)]
pub(super) struct ZeroCopy {
    /// The first CQE's result.
    res: Option<i32>,
    /// It said a notification follows.
    more: bool,
    notified: bool,
    /// The socket cannot do zero-copy (`EOPNOTSUPP`): send by copying.
    unsupported: bool,
    /// The plain `SEND` that replaced it is in flight.
    copying: bool,
}

/// What the driver does after a CQE of a zero-copy send.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ZcStep {
    Wait,
    Done(i32),
    /// Send the bytes with a plain `SEND` (tag it with the id).
    Resend,
}

impl ZeroCopy {
    pub(super) fn on_cqe(&mut self, res: i32, flags: u32, closing: bool) -> ZcStep {
        if self.copying {
            return ZcStep::Done(res);
        }
        if cqueue::notif(flags) {
            self.notified = true;
        } else {
            self.res = Some(res);
            self.more = cqueue::more(flags);
            self.unsupported = res == -libc::EOPNOTSUPP;
        }
        match self.res {
            Some(_) if self.more && !self.notified => ZcStep::Wait,
            Some(_) if self.unsupported && closing => ZcStep::Done(-libc::ECANCELED),
            Some(_) if self.unsupported => {
                self.copying = true;
                ZcStep::Resend
            }
            Some(r) => ZcStep::Done(r),
            None => ZcStep::Wait,
        }
    }

    /// Only the notification is missing: the send itself is over.
    fn awaits_notif(&self) -> bool {
        self.res.is_some() && self.more && !self.notified && !self.copying
    }
}

/// A plain `SEND` of the bytes a `send_zc` body holds (`MSG_NOSIGNAL` is in
/// its flags).
pub(super) fn plain_send(body: &OpBody) -> Option<squeue::Entry> {
    let OpBody::SendZc {
        fd,
        buf,
        pos,
        flags,
    } = body
    else {
        return None;
    };
    let len = (buf.len() - *pos).min(super::ops::MAX_IO) as u32;
    // SAFETY: pos <= buf.len() (clamped when the op was built).
    let ptr = unsafe { buf.as_ptr().add(*pos) };
    Some(opcode::Send::new(Fd(*fd), ptr, len).flags(*flags).build())
}

impl Inner {
    /// Port close, `started` when it began: once [`NOTIF_PATIENCE`] has
    /// passed with nothing but notifications left to wait for, stops waiting
    /// for them (`abandon_notifs`).
    pub(super) fn give_up_on_notifs(&mut self, started: std::time::Instant) {
        if started.elapsed() >= NOTIF_PATIENCE && self.only_notifs_left() {
            let n = self.abandon_notifs();
            tracing::warn!(
                "port close: {n} zero-copy sends still wait for the kernel to release their \
                 buffers (a peer that does not read?); leaking those buffers"
            );
        }
    }

    /// Ends the wait for notifications that have not come (port close): the
    /// records of zero-copy sends whose only missing CQE is the notification
    /// are dropped from the table, and their buffers leaked — the kernel may
    /// still read them, so they are never freed. Returns how many.
    fn abandon_notifs(&mut self) -> usize {
        let mut n = 0;
        for id in self.ops.ids() {
            let waiting = matches!(
                self.ops.get(id).map(|r| &r.aux),
                Some(Aux::ZeroCopy(z)) if z.awaits_notif()
            );
            if waiting {
                if let Some(rec) = self.ops.remove(id) {
                    std::mem::forget(rec.body);
                    n += 1;
                }
            }
        }
        n
    }

    /// Whether every operation left is a zero-copy send waiting only for its
    /// notification.
    fn only_notifs_left(&self) -> bool {
        self.ops
            .ids()
            .into_iter()
            .all(|id| matches!(self.ops.get(id).map(|r| &r.aux), Some(Aux::ZeroCopy(z)) if z.awaits_notif()))
    }
}

/// The ring's buffer table: which slots the sets of this port hold.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// The table's size; 0 until the first set registers it.
    table: u32,
    /// Free ranges `(start, len)`, sorted, never adjacent.
    free: Vec<(u32, u32)>,
}

impl Slots {
    /// Takes `n` consecutive slots (first fit).
    fn take(&mut self, n: u32) -> Option<u32> {
        let i = self.free.iter().position(|&(_, len)| len >= n)?;
        let (start, len) = self.free[i];
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (start + n, len - n);
        }
        Some(start)
    }

    /// Gives back `n` slots from `start`, merging neighbours.
    fn give(&mut self, start: u32, n: u32) {
        let i = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(i, (start, n));
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    fn free_slots(&self) -> u32 {
        self.free.iter().map(|&(_, n)| n).sum()
    }
}

/// `struct io_uring_rsrc_update2`.
#[repr(C)]
struct RsrcUpdate2 {
    offset: u32,
    resv: u32,
    data: u64,
    tags: u64,
    nr: u32,
    resv2: u32,
}

const IORING_REGISTER_BUFFERS_UPDATE: libc::c_uint = 16;

/// The file type (`st_mode & S_IFMT`) of descriptors: which are sockets (for
/// fixed-buffer operations and cancels) or pipes (for positional writes).
pub(super) type SocketCache = HashMap<RawFd, libc::mode_t>;

impl Core {
    /// Replaces slots `base..base + bufs.len()` with `bufs` (null iovecs clear
    /// them). Returns how many the kernel updated: all, or fewer if it failed
    /// part-way (then the error of the next one is lost; the caller undoes).
    ///
    /// # Safety
    ///
    /// Every non-null iovec must describe memory that stays mapped until its
    /// slot is cleared again.
    unsafe fn update_slots(&self, base: u32, bufs: &[libc::iovec]) -> io::Result<u32> {
        let up = RsrcUpdate2 {
            offset: base,
            resv: 0,
            data: bufs.as_ptr() as u64,
            tags: 0,
            nr: bufs.len() as u32,
            resv2: 0,
        };
        // SAFETY: IORING_REGISTER_BUFFERS_UPDATE on our ring with a valid
        // `io_uring_rsrc_update2` pointing at `bufs.len()` iovecs, alive for
        // the call; the memory they describe is the caller's promise.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring.as_raw_fd(),
                IORING_REGISTER_BUFFERS_UPDATE,
                &up as *const RsrcUpdate2,
                std::mem::size_of::<RsrcUpdate2>() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as u32)
    }

    /// Registers one set's buffers in a free range of the table (reserving
    /// the table on first use); `None` if this kernel cannot (the set then
    /// runs on the worker threads, as `op_paths` says).
    pub(crate) fn register_fixed(&self, bufs: &[libc::iovec]) -> io::Result<Option<u32>> {
        if !self.support.fixed {
            return Ok(None);
        }
        let mut slots = lock(&self.slots);
        if slots.table == 0 {
            let table = MAX_FIXED_BUFFERS as u32;
            self.ring.submitter().register_buffers_sparse(table)?;
            slots.table = table;
            slots.free = vec![(0, table)];
        }
        let n = bufs.len() as u32;
        let Some(base) = slots.take(n) else {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "fixed buffers: {n} asked, but only {} of this port's {} slots are free \
                     (drop a set first)",
                    slots.free_slots(),
                    slots.table
                ),
            ));
        };
        // SAFETY: the iovecs describe the set's mapping, which is unmapped
        // only after the set's drop has cleared these slots (`unregister_fixed`).
        match unsafe { self.update_slots(base, bufs) } {
            Ok(done) if done == n => Ok(Some(base)),
            res => {
                let done = *res.as_ref().unwrap_or(&0);
                self.clear_slots(base, done);
                slots.give(base, n);
                Err(match res {
                    Err(e) => e,
                    // The kernel stopped part-way: almost always the pinning
                    // limit.
                    Ok(_) => io::Error::from_raw_os_error(libc::ENOMEM),
                })
            }
        }
    }

    /// Clears `n` slots from `base`; returns whether the kernel did.
    fn clear_slots(&self, base: u32, n: u32) -> bool {
        if n == 0 {
            return true;
        }
        let empty = vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            n as usize
        ];
        // SAFETY: null iovecs register no memory: they only empty the slots.
        match unsafe { self.update_slots(base, &empty) } {
            Ok(done) if done == n => true,
            other => {
                tracing::error!("clearing fixed buffer slots {base}+{n}: {other:?}");
                false
            }
        }
    }

    /// A set is gone (no lease, no operation uses it): clears its slots and
    /// frees them for the next set. Slots the kernel refused to clear stay
    /// taken (the kernel still holds those pages itself).
    pub(crate) fn unregister_fixed(&self, base: u32, count: usize) {
        let mut slots = lock(&self.slots);
        if self.clear_slots(base, count as u32) {
            slots.give(base, count as u32);
        }
    }

    pub(crate) fn fixed_owner(&self) -> u64 {
        self.fixed_owner
    }

    /// Forgets what is known of descriptor `fd` (it was associated,
    /// disassociated or closed: the number may now be another file).
    pub(crate) fn forget_fd(&self, fd: RawFd) {
        let mut socks = lock(&self.sockets);
        if !socks.is_empty() {
            socks.remove(&fd);
        }
    }

    pub(super) fn is_socket(&self, fd: RawFd) -> bool {
        self.file_type(fd) == Some(libc::S_IFSOCK)
    }

    /// Whether `fd` is a socket or a pipe (FIFO): a file a positional write
    /// does not fit, and whose write raises `SIGPIPE` once the reader has gone
    /// (`Core::submit` refuses it `ESPIPE`, as epoll's `pwrite` does).
    pub(super) fn is_socket_or_pipe(&self, fd: RawFd) -> bool {
        matches!(self.file_type(fd), Some(libc::S_IFSOCK | libc::S_IFIFO))
    }

    /// `fd`'s file type (`st_mode & S_IFMT`), remembered until the
    /// descriptor is associated, disassociated or closed again; `None` (not
    /// remembered) if `fstat` fails: the operation itself reports the error.
    fn file_type(&self, fd: RawFd) -> Option<libc::mode_t> {
        if let Some(&t) = lock(&self.sockets).get(&fd) {
            return Some(t);
        }
        // SAFETY: fstat writes into a stat struct we own; a bad fd gives EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } < 0 {
            return None;
        }
        let t = st.st_mode & libc::S_IFMT;
        lock(&self.sockets).insert(fd, t);
        Some(t)
    }

    /// Builds the zero-copy and fixed-buffer operations; `None` for every
    /// other operation, and for a fixed one on a file when the kernel cannot
    /// register buffers (it goes to a worker thread). `Err(res)`: it ended
    /// before it started. `dontwait`: a fixed-buffer write to a socket is
    /// sent with `MSG_DONTWAIT` (a Unix datagram socket,
    /// `Lanes::unix_datagram`).
    pub(super) fn build_bufs(
        &self,
        body: &mut OpBody,
        dontwait: bool,
    ) -> Option<Result<(squeue::Entry, Aux), i32>> {
        match body {
            OpBody::SendZc {
                fd,
                buf,
                pos,
                flags,
            } => {
                if !self.support.send_zc {
                    return plain_send(body).map(|sqe| Ok((sqe, Aux::None)));
                }
                let len = (buf.len() - *pos).min(super::ops::MAX_IO) as u32;
                // SAFETY: pos <= buf.len() (clamped when the op was built).
                let ptr = unsafe { buf.as_ptr().add(*pos) };
                let sqe = opcode::SendZc::new(Fd(*fd), ptr, len).flags(*flags).build();
                Some(Ok((sqe, Aux::ZeroCopy(ZeroCopy::default()))))
            }
            OpBody::ReadFixed { fd, buf, offset } => {
                if !buf.belongs_to(self.fixed_owner) {
                    return Some(Err(-libc::EINVAL));
                }
                let len = buf.capacity().min(super::ops::MAX_IO) as u32;
                if self.is_socket(*fd) {
                    if *offset != 0 {
                        return Some(Err(-libc::ESPIPE));
                    }
                    let sqe = opcode::Recv::new(Fd(*fd), buf.as_mut_ptr(), len).build();
                    return Some(Ok((sqe, Aux::None)));
                }
                let slot = buf.slot()?;
                let sqe = opcode::ReadFixed::new(Fd(*fd), buf.as_mut_ptr(), len, slot)
                    .offset(*offset)
                    .build();
                Some(Ok((sqe, Aux::None)))
            }
            OpBody::WriteFixed {
                fd,
                buf,
                pos,
                offset,
            } => {
                if !buf.belongs_to(self.fixed_owner) {
                    return Some(Err(-libc::EINVAL));
                }
                let len = (buf.len() - *pos).min(super::ops::MAX_IO) as u32;
                // SAFETY: pos <= buf.len() <= capacity: inside the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(*pos) };
                if self.is_socket(*fd) {
                    if *offset != 0 {
                        return Some(Err(-libc::ESPIPE));
                    }
                    let dontwait = if dontwait { libc::MSG_DONTWAIT } else { 0 };
                    let sqe = opcode::Send::new(Fd(*fd), ptr, len)
                        .flags(libc::MSG_NOSIGNAL | dontwait)
                        .build();
                    return Some(Ok((sqe, Aux::None)));
                }
                if self.file_type(*fd) == Some(libc::S_IFIFO) {
                    // A pipe: `WRITE_FIXED` would raise `SIGPIPE` once its
                    // reader has gone (see `Core::submit`).
                    return Some(Err(-libc::ESPIPE));
                }
                let slot = buf.slot()?;
                let sqe = opcode::WriteFixed::new(Fd(*fd), ptr, len, slot)
                    .offset(*offset)
                    .build();
                Some(Ok((sqe, Aux::None)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MORE: u32 = 1 << 1;
    const NOTIF: u32 = 1 << 3;

    #[test]
    fn one_result_after_the_notification() {
        let mut z = ZeroCopy::default();
        assert_eq!(z.on_cqe(100, MORE, false), ZcStep::Wait);
        assert!(z.awaits_notif());
        assert_eq!(z.on_cqe(0, NOTIF, false), ZcStep::Done(100));
    }

    #[test]
    fn no_notification_promised_ends_at_once() {
        let mut z = ZeroCopy::default();
        assert_eq!(z.on_cqe(-libc::EBADF, 0, false), ZcStep::Done(-libc::EBADF));
    }

    #[test]
    fn an_unsupported_socket_is_sent_by_copying() {
        let mut z = ZeroCopy::default();
        assert_eq!(z.on_cqe(-libc::EOPNOTSUPP, MORE, false), ZcStep::Wait);
        assert_eq!(z.on_cqe(0, NOTIF, false), ZcStep::Resend);
        assert!(!z.awaits_notif());
        assert_eq!(z.on_cqe(5, 0, false), ZcStep::Done(5));

        let mut z = ZeroCopy::default();
        assert_eq!(
            z.on_cqe(-libc::EOPNOTSUPP, 0, true),
            ZcStep::Done(-libc::ECANCELED)
        );
    }

    #[test]
    fn slots_are_taken_and_merged_back() {
        let mut s = Slots {
            table: 10,
            free: vec![(0, 10)],
        };
        assert_eq!(s.take(4), Some(0));
        assert_eq!(s.take(4), Some(4));
        assert_eq!(s.take(4), None);
        s.give(0, 4);
        assert_eq!(s.take(3), Some(0));
        s.give(4, 4);
        s.give(0, 3);
        assert_eq!(s.free, vec![(0, 10)]);
        assert_eq!(s.free_slots(), 10);
    }
}

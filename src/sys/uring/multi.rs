//! Multishot accept and receive, and provided-buffer pools, on io_uring.
//!
//! * **Native** (Linux 5.19 for `ACCEPT`, 6.0 for `RECV` with a buffer
//!   ring): one SQE; every CQE with `IORING_CQE_F_MORE` is a completion with
//!   `more` set, and the record stays in the table until the CQE without it.
//! * **Emulated** (the kernel lacks it, or `RINGPORT_URING_OPS_OFF` names
//!   `ACCEPT_MULTISHOT` / `RECV_MULTISHOT`): a one-shot SQE, which the reaper
//!   resubmits (same id) after each productive CQE — an accepted socket, or
//!   data. A receive takes its buffer from the ring (`BUFFER_SELECT`) or,
//!   without `PBUF_RING`, from the pool's free list when it is submitted.
//!
//! A cancel marks the record (`Multi::cancelled`) as well as sending
//! `ASYNC_CANCEL`: an emulated operation whose one-shot CQE was already posted
//! when the cancel arrived is then not resubmitted, and ends with `ECANCELED`.
//!
//! Pools: a ring pool is registered with `IORING_REGISTER_PBUF_RING` under a
//! fresh buffer group id and kept in [`Pools`] until nothing else refers to it
//! (no handle, lease or operation: `Arc::strong_count == 1`), then
//! unregistered — checked whenever a pool is made — or until the driver is
//! dropped, after every operation has been reaped (see `provided.rs` for the
//! invariant this upholds).

use std::io;
use std::sync::{Arc, Mutex};

use io_uring::{cqueue, opcode, squeue, types::Fd};

use crate::completion::{Completion, OpId, Output};
use crate::error::Result;
use crate::op::{OpBody, OpKind};
use crate::provided::{new_owner_id, PooledBuf, Shared};
use crate::sync::lock;

use super::ops::Aux;
use super::records::Inner;
use super::Core;

/// What the kernel offers for multishot operations (found once, at start).
#[derive(Debug, Clone, Copy)]
pub(super) struct MultiSupport {
    /// `IORING_REGISTER_PBUF_RING` (5.19).
    pub(super) pbuf_ring: bool,
    /// Multishot `ACCEPT` (5.19).
    pub(super) accept: bool,
    /// Multishot `RECV` (6.0).
    pub(super) recv: bool,
}

/// The running kernel's version as (major, minor), from `uname`.
fn kernel_version() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Multishot support: by kernel version (the opcodes are the one-shot ones,
/// so `IORING_REGISTER_PROBE` cannot tell), minus what `off` (the value of
/// `RINGPORT_URING_OPS_OFF`) names.
pub(super) fn multishot_support(off: &str) -> MultiSupport {
    let v = kernel_version().unwrap_or((0, 0));
    let forced_off = |name: &str| {
        off.split(',').any(|o| {
            let o = o.trim();
            o.eq_ignore_ascii_case("all") || o.eq_ignore_ascii_case(name)
        })
    };
    MultiSupport {
        pbuf_ring: v >= (5, 19) && !forced_off("PBUF_RING"),
        accept: v >= (5, 19) && !forced_off("ACCEPT_MULTISHOT"),
        recv: v >= (6, 0) && !forced_off("RECV_MULTISHOT") && !forced_off("PBUF_RING"),
    }
}

/// A multishot operation's state in its record.
#[derive(Debug)]
pub(super) struct Multi {
    /// The kernel's multishot request; else one-shots resubmitted here.
    native: bool,
    /// Cancelled (or the port is closing): end at the next CQE.
    cancelled: bool,
    /// A free-list pool's buffer the one-shot receive in flight fills.
    bid: Option<u16>,
    /// Completions produced so far (the next one's `seq`).
    seq: u32,
}

impl Multi {
    pub(super) fn cancel(&mut self) {
        self.cancelled = true;
    }
}

/// The descriptor of an emulated multishot operation (one-shots the reaper
/// resubmits): what `Inner::emulated_multi` counts.
pub(super) fn emulated_fd(body: &OpBody, aux: &Aux) -> Option<std::os::fd::RawFd> {
    match (body, aux) {
        (OpBody::RecvMulti { fd, .. } | OpBody::AcceptMulti { fd }, Aux::Multi(m)) if !m.native => {
            Some(*fd)
        }
        _ => None,
    }
}

/// The association of `fd` ends (a close or a disassociate): its emulated
/// multishot operations resubmit no further one-shot. Their cancel, pushed
/// next, finds nothing when a one-shot's CQE is already posted and not yet
/// reaped; without the mark, the reaper then sent the next one-shot on the
/// descriptor number — by then maybe another socket's, whose bytes (or
/// connections) it took (a review, session 17). The caller holds `inner`.
pub(super) fn end_emulated_on(inner: &mut Inner, fd: std::os::fd::RawFd) {
    if !inner.emulated_multi.contains_key(&fd) {
        return;
    }
    for id in inner.ops.ids() {
        if let Some(rec) = inner.ops.get_mut(id) {
            if emulated_fd(&rec.body, &rec.aux) == Some(fd) {
                if let Aux::Multi(m) = &mut rec.aux {
                    m.cancel();
                }
            }
        }
    }
}

/// A multishot receive that ends without reaching the kernel (it was parked
/// behind its socket's receive lane, `lanes.rs`): the free-list buffer its
/// emulated one-shot was given goes back to the pool.
pub(super) fn end_unpushed(body: &OpBody, aux: &mut Aux) {
    if let (OpBody::RecvMulti { pool, .. }, Aux::Multi(m)) = (body, aux) {
        if let Some(bid) = m.bid.take() {
            drop(PooledBuf::new(pool.clone(), bid, 0));
        }
    }
}

/// The ring pools registered with one driver.
#[derive(Debug)]
pub(super) struct Pools {
    owner: u64,
    /// Registered ring pools, by buffer group id (the index).
    groups: Mutex<Vec<Option<Arc<Shared>>>>,
}

impl Pools {
    pub(super) fn new() -> Pools {
        Pools {
            owner: new_owner_id(),
            groups: Mutex::new(Vec::new()),
        }
    }
}

impl Core {
    /// A pool for this driver's multishot receives: a provided-buffer ring,
    /// or a free list where the kernel has none (or refuses to register one).
    pub(crate) fn buffer_pool(&self, count: usize, size: usize) -> Result<Arc<Shared>> {
        let owner = self.bufs.owner;
        if !self.multi.pbuf_ring {
            return Ok(Arc::new(Shared::list(count, size, owner)?));
        }
        let mut groups = lock(&self.bufs.groups);
        // Unregister pools nobody uses any more (no handle, lease or
        // operation: only this table refers to them).
        for (bgid, slot) in groups.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|p| Arc::strong_count(p) == 1) {
                if let Err(e) = self.ring.submitter().unregister_buf_ring(bgid as u16) {
                    tracing::error!("unregister buffer ring {bgid}: {e}");
                    continue; // keep its memory: the kernel may still use it
                }
                *slot = None;
            }
        }
        let bgid = match groups.iter().position(Option::is_none) {
            Some(i) => i,
            None if groups.len() < u16::MAX as usize => {
                groups.push(None);
                groups.len() - 1
            }
            None => {
                return Err(crate::Error::Io(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "65,535 buffer pools are registered with this port",
                )))
            }
        };
        let shared = Arc::new(Shared::ring(count, size, bgid as u16, owner)?);
        let (addr, entries, _) = shared.ring_addr().expect("a ring pool");
        // SAFETY: the ring's memory (page aligned, `entries` entries) and its
        // buffers stay alive while this table holds the `Arc`, which it drops
        // only after unregistering the group, or with the driver (the ring is
        // gone then, and every operation was reaped first).
        let r = unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(addr, entries, bgid as u16, 0)
        };
        match r {
            Ok(()) => {
                groups[bgid] = Some(shared.clone());
                Ok(shared)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                tracing::warn!("io_uring refused a provided-buffer ring ({e}); using a free list");
                drop(groups);
                Ok(Arc::new(Shared::list(count, size, owner)?))
            }
            Err(e) => Err(crate::Error::Io(e)),
        }
    }

    /// The SQE of a multishot operation (`Err(res)`: it ends at once), and
    /// the state its record keeps.
    pub(super) fn build_multi(
        &self,
        body: &OpBody,
        linked: bool,
    ) -> std::result::Result<(squeue::Entry, Aux), i32> {
        if linked {
            // A linked timeout would end a multishot operation at an
            // arbitrary completion: refused.
            return Err(-libc::EINVAL);
        }
        let native = match body {
            OpBody::AcceptMulti { .. } => self.multi.accept,
            OpBody::RecvMulti { pool, .. } => {
                if pool.owner != self.bufs.owner {
                    return Err(-libc::EINVAL);
                }
                self.multi.recv && pool.ring_addr().is_some()
            }
            _ => unreachable!("build_multi is called for multishot bodies only"),
        };
        let mut m = Multi {
            native,
            cancelled: false,
            bid: None,
            seq: 0,
        };
        let sqe = self.multi_sqe(body, &mut m)?;
        Ok((sqe, Aux::Multi(m)))
    }

    /// The next SQE of a multishot operation: the multishot request itself,
    /// or the next one-shot of an emulated one.
    fn multi_sqe(&self, body: &OpBody, m: &mut Multi) -> std::result::Result<squeue::Entry, i32> {
        Ok(match (body, m.native) {
            (OpBody::AcceptMulti { fd }, true) => opcode::AcceptMulti::new(Fd(*fd))
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            (OpBody::AcceptMulti { fd }, false) => {
                opcode::Accept::new(Fd(*fd), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            }
            (OpBody::RecvMulti { fd, pool, flags }, native) => match (pool.ring_addr(), native) {
                (Some((_, _, bgid)), true) => {
                    opcode::RecvMulti::new(Fd(*fd), bgid).flags(*flags).build()
                }
                (Some((_, _, bgid)), false) => {
                    let len = pool.size.min(u32::MAX as usize) as u32;
                    opcode::Recv::new(Fd(*fd), std::ptr::null_mut(), len)
                        .buf_group(bgid)
                        .flags(*flags)
                        .build()
                        .flags(squeue::Flags::BUFFER_SELECT)
                }
                (None, _) => {
                    let bid = pool.take().ok_or(-libc::ENOBUFS)?;
                    m.bid = Some(bid);
                    let len = pool.size.min(u32::MAX as usize) as u32;
                    opcode::Recv::new(Fd(*fd), pool.buf_ptr(bid), len)
                        .flags(*flags)
                        .build()
                }
            },
            _ => unreachable!("multi_sqe is called for multishot bodies only"),
        })
    }

    /// One CQE of multishot operation `id`: its completions go to `out` (a
    /// partial one, then the final one if it ended), the next one-shot of an
    /// emulated operation to `follow`.
    pub(super) fn on_multi_cqe(
        &self,
        inner: &mut Inner,
        id: OpId,
        res: i32,
        flags: u32,
        out: &mut Vec<Completion>,
        follow: &mut Vec<Vec<squeue::Entry>>,
    ) {
        let closing = inner.closed;
        let Some(rec) = inner.ops.get_mut(id) else {
            tracing::error!("CQE for unknown operation {:#x}", id.0);
            return;
        };
        let Aux::Multi(m) = &mut rec.aux else {
            unreachable!("on_multi_cqe is called for multishot records only")
        };
        // The buffer the kernel filled (named in the CQE), or the one the
        // emulated receive was given; back to the pool unless it holds data.
        let lease = match &rec.body {
            OpBody::RecvMulti { pool, .. } => cqueue::buffer_select(flags)
                .or(m.bid.take())
                .map(|bid| PooledBuf::new(pool.clone(), bid, res.max(0) as usize)),
            _ => None,
        };
        let lease = lease.filter(|_| res > 0);
        let seq = m.seq;
        m.seq += 1;
        let partial = |rec: &super::records::Record, lease| {
            Completion::from_raw(id, rec.kind, rec.key, rec.user_data, res, Output::default())
                .with_priority(rec.prio)
                .multishot(true, lease, seq)
        };
        if m.native {
            if cqueue::more(flags) {
                out.push(partial(rec, lease));
            } else {
                out.extend(
                    inner
                        .complete(id, res)
                        .map(|c| c.multishot(false, lease, seq)),
                );
            }
            return;
        }
        let productive = match rec.kind {
            OpKind::AcceptMulti => res >= 0,
            _ => res > 0,
        };
        if !productive {
            out.extend(
                inner
                    .complete(id, res)
                    .map(|c| c.multishot(false, lease, seq)),
            );
            return;
        }
        let stop = m.cancelled || closing;
        out.push(partial(rec, lease));
        let Aux::Multi(m) = &mut rec.aux else {
            unreachable!()
        };
        let next = if stop {
            Err(-libc::ECANCELED)
        } else {
            self.multi_sqe(&rec.body, m)
        };
        match next {
            Ok(sqe) => follow.push(vec![sqe.user_data(id.0)]),
            Err(res) => {
                let seq = m.seq;
                m.seq += 1;
                out.extend(
                    inner
                        .complete(id, res)
                        .map(|c| c.multishot(false, None, seq)),
                );
            }
        }
    }
}

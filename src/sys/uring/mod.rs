//! The io_uring backend: one ring shared by every thread of the port.
//!
//! # How many threads share one ring
//!
//! IOCP lets any thread submit and any thread dequeue; io_uring rings are built
//! for one thread. This backend shares one ring (see `docs/design.md` for the
//! designs measured and why this one won):
//!
//! * **Submission** — any thread pushes SQEs under `inner`'s mutex. The mutex also
//!   guards the table of operations in flight and every access to the CQ ring.
//!   Submitting to the kernel (`io_uring_enter`) happens outside the mutex: the
//!   kernel consumes SQEs under its own lock, and only published entries (the tail
//!   is written with release ordering when the `SubmissionQueue` is dropped) are
//!   ever visible to it.
//! * **Reaping** — the scheduler sends one idle thread at a time to `poll`; it waits
//!   in `io_uring_enter(GETEVENTS)` without holding the mutex, then reaps the CQ
//!   under it. A submitter waiting for room may reap too; both are serialised by
//!   the mutex, so every CQE is consumed exactly once.
//! * **No task-run flags.** `SINGLE_ISSUER`/`DEFER_TASKRUN` need one submitting and
//!   reaping thread, and `COOP_TASKRUN` lets a request's task work wait until its
//!   submitting thread next enters the kernel — which a thread asleep on the
//!   scheduler's condvar may never do. The default notification (a signal-style
//!   wake of the submitter) is the only mode that is correct with any thread
//!   submitting and any thread waiting.
//!
//! # Operation records
//!
//! Every operation in flight has a record in `Inner::ops`, indexed by the low 32
//! bits of its `user_data` (the `OpId`); the high bits are a generation so a stale
//! id cannot match a newer operation. The record owns the buffer and any
//! auxiliary data the SQE points to. Buffers are heap allocations whose address
//! does not change when the record (or the table) moves; auxiliary data is boxed
//! for the same reason. A record is removed only when its CQE is reaped, which is
//! the kernel's promise that it no longer touches that memory.
//!
//! Datagram operations (`recv_from`, `send_to`) are `RECVMSG`/`SENDMSG`: their
//! auxiliary data is a `msghdr` with its `iovec` and socket address ([`MsgAux`]),
//! which the kernel reads and — for a receive — writes back (`msg_namelen`,
//! `msg_flags`, the address) when the operation ends.

mod probe;

pub(crate) use probe::probe;

use std::io;
use std::os::fd::IntoRawFd;
use std::ptr::NonNull;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};
use socket2::{socklen_t, SockAddr, SockAddrStorage};

use crate::completion::{raw_addr, Completion, OpId};
use crate::error::{Error, Result};
use crate::op::{Op, OpBody, OpKind};
use std::sync::Mutex;

use crate::sync::lock;

use super::table::OpTable;
use super::{Config, PollMode, SubmitResult};

/// `user_data` of the NOPs `notify` submits; their CQEs are swallowed.
const WAKE_TAG: u64 = u64::MAX;
/// `user_data` of internal cancel requests; their CQEs are swallowed.
const CANCEL_TAG: u64 = u64::MAX - 1;

/// What an SQE points into, kept alive with the record.
#[derive(Debug)]
// The `Addr` and `Time` boxes are never read: they exist so the kernel's pointer
// stays valid until the record is dropped at reap time. (`Msg` is read: a
// receive's source address comes back in it.)
#[allow(dead_code)]
enum Aux {
    None,
    Addr(Box<SockAddr>),
    Time(Box<types::Timespec>),
    Msg(MsgAux),
}

/// A `recvmsg`/`sendmsg` header with everything it points to except the data
/// buffer (which the record holds): one `iovec`, and the socket address.
struct MsgHdr {
    hdr: libc::msghdr,
    iov: libc::iovec,
    /// `send_to`: the destination. `recv_from`: zeroed, for the kernel to write
    /// the source address into.
    name: SockAddrStorage,
}

/// Owns a heap-allocated [`MsgHdr`] at a fixed address, from `build_sqe` until
/// the record is dropped at reap time.
///
/// It is held through a raw pointer rather than a `Box` because the kernel
/// *writes* into it (a receive's `msg_namelen`, `msg_flags` and address) while
/// the record moves about the table; a `Box` asserts exclusive access to its
/// contents every time it is moved, which those writes would contradict. Only
/// `Drop` and [`MsgAux::source`] (after the CQE) touch the contents.
struct MsgAux(NonNull<MsgHdr>);

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
    fn source(&self) -> Option<Box<SockAddr>> {
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

#[derive(Debug)]
struct Record {
    kind: OpKind,
    key: u64,
    user_data: u64,
    buf: Option<Vec<u8>>,
    aux: Aux,
}

#[derive(Debug)]
struct Inner {
    ops: OpTable<Record>,
    closed: bool,
}

/// The io_uring driver. See the module docs for its threading rules.
pub(crate) struct Driver {
    ring: IoUring,
    inner: Mutex<Inner>,
    max_in_flight: usize,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Driver")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("cq_entries", &self.ring.params().cq_entries())
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl Driver {
    pub(crate) fn new(cfg: Config) -> io::Result<Driver> {
        let entries = cfg.entries.clamp(2, 32768).next_power_of_two();
        // The CQ must hold every operation in flight plus internal CQEs (wakes and
        // cancels), so it can never overflow: size it to twice max_in_flight.
        let cq = (cfg.max_in_flight.max(1) * 2)
            .next_power_of_two()
            .max(entries as usize * 2);
        let cq = cq.min(65536) as u32;
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_clamp()
            .build(entries)?;
        if !ring.params().is_feature_nodrop() || !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel lacks IORING_FEAT_NODROP or IORING_FEAT_EXT_ARG (needs Linux 5.11+)",
            ));
        }
        let cq_entries = ring.params().cq_entries() as usize;
        let max_in_flight = cfg.max_in_flight.clamp(1, cq_entries / 2);
        let d = Driver {
            ring,
            inner: Mutex::new(Inner {
                ops: OpTable::new(),
                closed: false,
            }),
            max_in_flight,
        };
        check_required_ops(&d.ring)?;
        // A full round trip proves the ring works (some sandboxes let setup succeed
        // and then fail every submission).
        d.probe_nop()?;
        Ok(d)
    }

    fn probe_nop(&self) -> io::Result<()> {
        let id = self
            .submit(Op::nop(), 0, 0, true)
            .map_err(|(e, _)| io::Error::from(e))?
            .0;
        let mut out = Vec::new();
        for _ in 0..100 {
            self.poll(Some(Duration::from_millis(10)), &mut out, PollMode::Poller)?;
            if out.iter().any(|c| c.op_id() == Some(id)) {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "io_uring NOP probe never completed",
        ))
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.inner).ops.len()
    }

    /// Starts `op`. On `QueueFull` the op is handed back untouched.
    pub(crate) fn submit(&self, op: Op, key: u64, user_data: u64, flush: bool) -> SubmitResult {
        {
            let mut inner = lock(&self.inner);
            if inner.closed {
                return Err((Error::Closed, None));
            }
            if inner.ops.len() >= self.max_in_flight {
                return Err((Error::QueueFull, Some(op)));
            }
            let kind = op.kind();
            let (sqe, buf, aux) = build_sqe(op.body);
            let id = inner.ops.insert(Record {
                kind,
                key,
                user_data,
                buf,
                aux,
            });
            self.push_locked(&sqe.user_data(id.0));
            drop(inner);
            if flush {
                self.flush();
            }
            Ok((id, None))
        }
    }

    /// Pushes an SQE; the caller holds `inner`. If the SQ is full, submits first.
    fn push_locked(&self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: the `inner` mutex is held by our caller, and every
            // SubmissionQueue in this driver is created under it, so no other exists.
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: every pointer in `sqe` points into the record that was just
            // stored in `inner.ops` (a heap buffer or a boxed aux value) and stays
            // valid until its CQE is reaped; the record is only removed then.
            if unsafe { sq.push(sqe) }.is_ok() {
                return;
            }
            drop(sq);
            // SQ full: hand what is there to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!("io_uring_enter failed while the SQ was full: {e}");
                }
            }
        }
    }

    pub(crate) fn has_unflushed(&self) -> bool {
        let inner = lock(&self.inner);
        // SAFETY: the inner mutex is held; SubmissionQueues are only created under it.
        let n = unsafe { self.ring.submission_shared() }.len();
        drop(inner);
        n > 0
    }

    /// Submits every pushed SQE (one `io_uring_enter`, only if there are any).
    pub(crate) fn flush(&self) {
        if self.has_unflushed() {
            if let Err(e) = self.ring.submit() {
                tracing::debug!("io_uring submit: {e}");
            }
        }
    }

    /// Wakes the poller and the backup: two NOPs, because the backup waits for
    /// two completions.
    pub(crate) fn notify(&self) {
        let inner = lock(&self.inner);
        self.push_locked(&opcode::Nop::new().build().user_data(WAKE_TAG));
        self.push_locked(&opcode::Nop::new().build().user_data(WAKE_TAG));
        drop(inner);
        let _ = self.ring.submit();
    }

    pub(crate) fn cancel(&self, id: OpId) -> Result<Option<Completion>> {
        let inner = lock(&self.inner);
        if inner.ops.get(id).is_none() {
            return Err(Error::NotFound);
        }
        self.push_locked(&opcode::AsyncCancel::new(id.0).build().user_data(CANCEL_TAG));
        drop(inner);
        let _ = self.ring.submit();
        Ok(None)
    }

    /// Waits for completions (see the contract in `sys/mod.rs`). Only the port's
    /// poller passes `poller = true`; any other thread that reaps (to make room, or
    /// instead of sleeping) may consume a wake-up meant for the poller, and then
    /// posts it again so the poller cannot sleep through it.
    pub(crate) fn poll(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
        mode: PollMode,
    ) -> io::Result<()> {
        let waker = mode != PollMode::Other;
        let (n, woken) = self.reap(out);
        if n > 0 || (woken && waker) {
            // Something is there already; still hand pending SQEs over.
            self.flush();
            return self.repost(woken && !waker);
        }
        // The backup asks the kernel for two completions: it then sleeps through
        // every other one, which the poller, back from its handler, takes itself.
        // (The kernel counts completions posted since the wait began, not ones
        // left unreaped, so this halves the backup's wake-ups rather than ending
        // them. The port does not use backups yet.)
        let want = if mode == PollMode::Backup { 2 } else { 1 };
        let res = match timeout {
            Some(t) if t.is_zero() => self.ring.submit(),
            None => self.ring.submit_and_wait(want),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
        };
        match res {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let (_, woken2) = self.reap(out);
        self.repost((woken || woken2) && !waker)
    }

    fn repost(&self, consumed_wake: bool) -> io::Result<()> {
        if consumed_wake {
            self.notify();
        }
        Ok(())
    }

    /// Moves every available CQE into `out`. Returns how many completions it added
    /// and whether it consumed a wake-up from `notify`.
    fn reap(&self, out: &mut Vec<Completion>) -> (usize, bool) {
        let before = out.len();
        let mut woken = false;
        let mut inner = lock(&self.inner);
        // SAFETY: the inner mutex is held, and CompletionQueues are only created
        // under it, so no other exists.
        let cq = unsafe { self.ring.completion_shared() };
        for cqe in cq {
            let ud = cqe.user_data();
            if ud == WAKE_TAG {
                woken = true;
                continue;
            }
            if ud == CANCEL_TAG {
                continue;
            }
            if let Some(c) = inner.complete(OpId(ud), cqe.result()) {
                out.push(c);
            }
        }
        (out.len() - before, woken)
    }

    /// Refuses new work, cancels everything in flight and waits until the kernel
    /// has released it all. Completions reaped here are dropped.
    pub(crate) fn shutdown(&self) {
        {
            let mut inner = lock(&self.inner);
            inner.closed = true;
            for id in inner.ops.ids() {
                self.push_locked(&opcode::AsyncCancel::new(id.0).build().user_data(CANCEL_TAG));
            }
        }
        let mut sink = Vec::new();
        let mut woken = false;
        loop {
            sink.clear();
            woken |= self.reap(&mut sink).1;
            if lock(&self.inner).ops.len() == 0 {
                break;
            }
            let ts = types::Timespec::from(Duration::from_millis(50));
            let args = types::SubmitArgs::new().timespec(&ts);
            // (shutdown waits like a poller)
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) {
                    tracing::error!("io_uring_enter during shutdown: {e}");
                    break;
                }
            }
        }
        // A poller may still be on its way into the kernel: give back the wake-up
        // this loop swallowed.
        if woken {
            self.notify();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The ring's memory and the records' buffers must outlive every request.
        if lock(&self.inner).ops.len() > 0 {
            self.shutdown();
        }
    }
}

impl Inner {
    /// Removes the record of `id` and builds its completion.
    fn complete(&mut self, id: OpId, res: i32) -> Option<Completion> {
        let Some(rec) = self.ops.remove(id) else {
            tracing::error!("CQE for unknown operation {:#x}", id.0);
            return None;
        };
        let addr = match &rec.aux {
            // The CQE is in hand: the kernel is done with the header.
            Aux::Msg(m) if rec.kind == OpKind::RecvFrom && res >= 0 => m.source(),
            _ => None,
        };
        Some(Completion::from_raw(
            id,
            rec.kind,
            rec.key,
            rec.user_data,
            res,
            rec.buf,
            addr,
        ))
    }
}

/// Fails if the kernel lacks an opcode ringport needs (then `auto` falls back).
///
/// `RECVMSG`/`SENDMSG` (Linux 5.3) are required rather than probed per
/// operation: every kernel with `IORING_FEAT_EXT_ARG` (5.11), which the driver
/// already requires, has them, so the check can only fail on a kernel built or
/// filtered to lack them — and then epoll serves datagrams too.
fn check_required_ops(ring: &IoUring) -> io::Result<()> {
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let required = [
        ("NOP", opcode::Nop::CODE),
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("FSYNC", opcode::Fsync::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("RECVMSG", opcode::RecvMsg::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("ACCEPT", opcode::Accept::CODE),
        ("CONNECT", opcode::Connect::CODE),
        ("CLOSE", opcode::Close::CODE),
        ("TIMEOUT", opcode::Timeout::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ];
    for (name, code) in required {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks IORING_OP_{name}"),
            ));
        }
    }
    Ok(())
}

/// Translates an operation into an SQE, returning what the SQE points into.
fn build_sqe(body: OpBody) -> (squeue::Entry, Option<Vec<u8>>, Aux) {
    use types::Fd;
    match body {
        OpBody::Nop => (opcode::Nop::new().build(), None, Aux::None),
        OpBody::Read {
            fd,
            mut buf,
            offset,
        } => {
            let len = buf.capacity().min(u32::MAX as usize) as u32;
            let sqe = opcode::Read::new(Fd(fd), buf.as_mut_ptr(), len)
                .offset(offset)
                .build();
            (sqe, Some(buf), Aux::None)
        }
        OpBody::Write {
            fd,
            buf,
            pos,
            offset,
        } => {
            let len = (buf.len() - pos).min(u32::MAX as usize) as u32;
            // SAFETY: pos <= buf.len() (clamped when the op was built).
            let ptr = unsafe { buf.as_ptr().add(pos) };
            let sqe = opcode::Write::new(Fd(fd), ptr, len).offset(offset).build();
            (sqe, Some(buf), Aux::None)
        }
        OpBody::Recv { fd, mut buf, flags } => {
            let len = buf.capacity().min(u32::MAX as usize) as u32;
            let sqe = opcode::Recv::new(Fd(fd), buf.as_mut_ptr(), len)
                .flags(flags)
                .build();
            (sqe, Some(buf), Aux::None)
        }
        OpBody::Send {
            fd,
            buf,
            pos,
            flags,
        } => {
            let len = (buf.len() - pos).min(u32::MAX as usize) as u32;
            // SAFETY: pos <= buf.len() (clamped when the op was built).
            let ptr = unsafe { buf.as_ptr().add(pos) };
            let sqe = opcode::Send::new(Fd(fd), ptr, len).flags(flags).build();
            (sqe, Some(buf), Aux::None)
        }
        OpBody::RecvFrom {
            fd, mut buf, flags, ..
        } => {
            let name = SockAddrStorage::zeroed();
            let name_len = name.size_of();
            let msg = MsgAux::new(buf.as_mut_ptr(), buf.capacity(), name, name_len);
            let sqe = opcode::RecvMsg::new(Fd(fd), msg.hdr())
                .flags(flags as u32)
                .build();
            (sqe, Some(buf), Aux::Msg(msg))
        }
        OpBody::SendTo {
            fd,
            mut buf,
            addr,
            flags,
        } => {
            let name_len = addr.len();
            // The kernel only reads through the iovec of a send; the pointer is
            // `*mut` because `iovec` has one field for both directions.
            let msg = MsgAux::new(buf.as_mut_ptr(), buf.len(), (*addr).as_storage(), name_len);
            let sqe = opcode::SendMsg::new(Fd(fd), msg.hdr())
                .flags(flags as u32)
                .build();
            (sqe, Some(buf), Aux::Msg(msg))
        }
        OpBody::Accept { fd } => {
            let sqe = opcode::Accept::new(Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build();
            (sqe, None, Aux::None)
        }
        OpBody::Connect { fd, addr } => {
            let sqe =
                opcode::Connect::new(Fd(fd), addr.as_ptr().cast::<libc::sockaddr>(), addr.len())
                    .build();
            (sqe, None, Aux::Addr(addr))
        }
        OpBody::Close { fd } => {
            // The kernel closes it; ownership ends here.
            let sqe = opcode::Close::new(Fd(fd.into_raw_fd())).build();
            (sqe, None, Aux::None)
        }
        OpBody::Fsync { fd, datasync } => {
            let mut op = opcode::Fsync::new(Fd(fd));
            if datasync {
                op = op.flags(types::FsyncFlags::DATASYNC);
            }
            (op.build(), None, Aux::None)
        }
        OpBody::Timeout { after } => {
            let ts = Box::new(types::Timespec::from(after));
            let sqe = opcode::Timeout::new(&*ts as *const types::Timespec).build();
            (sqe, None, Aux::Time(ts))
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// `notify` wakes a backup waiting with no timeout at all.
    #[test]
    fn notify_wakes_a_backup() {
        let d = std::sync::Arc::new(
            Driver::new(Config {
                entries: 8,
                max_in_flight: 8,
            })
            .expect("io_uring"),
        );
        let d2 = d.clone();
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            d2.poll(None, &mut out, PollMode::Backup).unwrap();
            out.len()
        });
        std::thread::sleep(Duration::from_millis(20));
        d.notify();
        assert_eq!(t.join().unwrap(), 0, "woken with nothing to hand out");
    }
}

//! Multishot accept and receive on epoll: the operation stays first in its
//! socket's read queue; whenever it is tried (at submit, unless the socket is
//! known drained, and on every readiness edge) it accepts or receives until
//! the call would block, each result a completion with `more` set. It ends —
//! leaves the queue, with its final completion — on EOF, an error, an empty
//! pool (`ENOBUFS`: a buffer is taken from the pool's free list only once
//! the socket is readable, so a waiting receive holds none; one submitted
//! with the pool empty ends at once, as on io_uring), or a cancel.
//!
//! While it stays armed, operations queued behind it on the same socket's
//! read side wait (one receiver per socket, as with io_uring's multishot).

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::completion::{Completion, OpId, Output};
use crate::error::Result;
use crate::op::{Op, OpBody};
use crate::provided::{PooledBuf, Shared};
use crate::sync::lock;

use super::sock::errno;
use super::{Driver, Inner, Pending, Wait};
use crate::sys::SubmitResult;

/// What one attempt of a multishot operation did.
pub(super) enum Step {
    /// It would block: wait for the next edge.
    Blocked,
    /// A connection or a chunk (`drained`: a short receive on a stream socket,
    /// so the next attempt would block).
    Part(i32, Option<PooledBuf>, bool),
    /// It ended with this result.
    End(i32),
}

/// True for the bodies this file handles.
pub(super) fn is_multi(body: &OpBody) -> bool {
    matches!(body, OpBody::AcceptMulti { .. } | OpBody::RecvMulti { .. })
}

/// One non-blocking attempt. `closed`: the peer's FIN was announced (a short
/// receive then says nothing about the queue being empty).
pub(super) fn attempt(p: &Pending, stream: bool, closed: bool) -> Step {
    match &p.body {
        OpBody::AcceptMulti { fd } => loop {
            // SAFETY: accept4 with no address buffers.
            let rc = unsafe {
                libc::accept4(
                    *fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if rc >= 0 {
                return Step::Part(rc, None, false);
            }
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => return Step::Blocked,
                e => return Step::End(-e),
            }
        },
        OpBody::RecvMulti { fd, pool, flags } => recv(*fd, pool, *flags, stream, closed),
        _ => Step::End(-libc::EINVAL),
    }
}

fn recv(fd: RawFd, pool: &Arc<Shared>, flags: i32, stream: bool, closed: bool) -> Step {
    let Some(bid) = pool.take() else {
        return Step::End(-libc::ENOBUFS);
    };
    loop {
        // SAFETY: buffer `bid` was just taken off the free list, so nothing
        // else reads or writes it; the kernel writes at most `size` bytes into
        // it, inside the pool's mapping (kept alive by the op body's `Arc`).
        let rc = unsafe {
            crate::sys::rawcall::recv(
                fd,
                pool.buf_ptr(bid).cast(),
                pool.size,
                flags | libc::MSG_DONTWAIT,
            )
        };
        if rc > 0 {
            let n = rc as usize;
            let drained = stream && !closed && n < pool.size;
            return Step::Part(
                rc as i32,
                Some(PooledBuf::new(pool.clone(), bid, n)),
                drained,
            );
        }
        let e = if rc == 0 { 0 } else { errno() };
        if e == libc::EINTR {
            continue;
        }
        pool.give_back(bid);
        return match e {
            0 => Step::End(0),
            libc::EAGAIN => Step::Blocked,
            e => Step::End(-e),
        };
    }
}

/// Tries `p` until it blocks or ends. Partial results go to `parts`; returns
/// the final result if it ended, and whether the socket is known drained.
pub(super) fn run(
    p: &Pending,
    stream: bool,
    closed: bool,
    parts: &mut Vec<(OpId, i32, Option<PooledBuf>)>,
) -> (Option<i32>, bool) {
    loop {
        match attempt(p, stream, closed) {
            Step::Blocked => return (None, true),
            Step::Part(res, lease, drained) => {
                parts.push((p.id, res, lease));
                if drained {
                    return (None, true);
                }
            }
            Step::End(res) => return (Some(res), false),
        }
    }
}

/// The completions of partial results (`more` set). One whose operation is
/// gone (it cannot be: partial results come before the end) is dropped,
/// closing its socket or giving its buffer back.
pub(super) fn part_completions(
    inner: &mut Inner,
    parts: Vec<(OpId, i32, Option<PooledBuf>)>,
    out: &mut Vec<Completion>,
) {
    for (id, res, lease) in parts {
        let Some(r) = inner.ops.get_mut(id) else {
            // (Cannot happen: partial results precede the end.) Close an
            // accepted socket rather than leak it; a lease gives its buffer back.
            if lease.is_none() && res >= 0 {
                // SAFETY: an accepted descriptor that nothing else owns.
                unsafe { libc::close(res) };
            }
            continue;
        };
        let seq = r.parts;
        r.parts += 1;
        let c = Completion::from_raw(id, r.kind, r.key, r.user_data, res, Output::default())
            .with_priority(r.prio);
        out.push(c.multishot(true, lease, seq));
    }
}

impl Driver {
    /// Cancels a multishot operation taken out of its queue: tried once more
    /// first if it was at the front (`tries`) — like any operation there, it
    /// may have ended already, and then the cancel loses.
    pub(super) fn cancel_multi(&self, p: Pending, tries: bool, stream: bool, closed: bool) {
        let mut parts = Vec::new();
        let end = if tries {
            run(&p, stream, closed, &mut parts).0
        } else {
            None
        };
        self.finish_multi(p.id, parts, end.unwrap_or(-libc::ECANCELED), p.body);
    }

    /// Ends multishot operation `id` with `res`, after its partial results
    /// `parts`; all go out, in order, through the next `poll`.
    pub(super) fn finish_multi(
        &self,
        id: OpId,
        parts: Vec<(OpId, i32, Option<PooledBuf>)>,
        res: i32,
        body: OpBody,
    ) {
        let mut inner = lock(&self.shared.inner);
        let mut out = Vec::new();
        part_completions(&mut inner, parts, &mut out);
        out.extend(super::finish(&mut inner, id, res, body));
        inner.done.append(&mut out);
        drop(inner);
        self.notify();
    }

    /// A pool for multishot receives: a free list in user space.
    pub(crate) fn buffer_pool(&self, count: usize, size: usize) -> Result<Arc<Shared>> {
        Ok(Arc::new(Shared::list(count, size, self.owner)?))
    }

    /// Starts a multishot operation: tried at once unless the socket is known
    /// drained; its completions go out through the next `poll`.
    pub(super) fn submit_multi(&self, op: Op, key: u64, user_data: u64) -> SubmitResult {
        let (fd, wrong_pool) = match &op.body {
            OpBody::AcceptMulti { fd } => (*fd, false),
            OpBody::RecvMulti { fd, pool, .. } => (*fd, pool.owner != self.owner),
            _ => unreachable!("submit_multi is called for multishot bodies only"),
        };
        let linked = op.link_timeout.is_some();
        let (id, op) = self.admit(op, key, user_data, || Wait::Fd(fd))?;
        let p = Pending {
            id,
            body: op.body,
            connecting: false,
            own: None,
        };
        if wrong_pool || linked {
            return self.done_now(id, -libc::EINVAL, p.body);
        }
        let Some(q) = self.shared.queue(fd) else {
            return self.done_now(id, -libc::ENOTSOCK, p.body);
        };
        let mut guard = lock(&q.q);
        if guard.dead {
            drop(guard);
            return self.done_now(id, -libc::ECANCELED, p.body);
        }
        let g = &mut *guard;
        let mut parts = Vec::new();
        let mut end = None;
        if g.read.is_empty() && !g.read_blocked {
            let (e, drained) = run(&p, q.stream(), g.read_closed, &mut parts);
            g.read_blocked |= drained;
            end = e;
        } else if g.read.is_empty() {
            // Not tried (the socket is known drained), but a receive with no
            // buffer to take ends now all the same, as it does when tried and
            // as io_uring's does (it picks the buffer before it looks for
            // data).
            if let OpBody::RecvMulti { pool, .. } = &p.body {
                if !pool.has_free() {
                    end = Some(-libc::ENOBUFS);
                }
            }
        }
        let body = match end {
            None => {
                g.read.push_back(p);
                if parts.is_empty() {
                    return Ok((id, None));
                }
                None
            }
            Some(_) => Some(p.body),
        };
        let mut inner = lock(&self.shared.inner);
        let mut out = Vec::new();
        part_completions(&mut inner, parts, &mut out);
        if let (Some(res), Some(body)) = (end, body) {
            out.extend(super::finish(&mut inner, id, res, body));
        }
        inner.done.append(&mut out);
        drop(inner);
        drop(guard);
        self.notify();
        Ok((id, None))
    }
}

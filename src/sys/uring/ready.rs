//! Completions that take no trip through the ring: an operation that finished
//! on the submitting thread (an inline read, `sys/inline_read.rs`; a send
//! `submit_inline` made at once, `send_now`), and the
//! CQ ring gathered without entering the kernel (for a priority dequeue,
//! `port/prio.rs`).

use crate::completion::OpId;
use crate::error::Error;
use crate::op::{Op, OpBody};
use crate::sync::lock;

use super::ops::{Aux, MAX_IO};
use super::records::Record;
use super::{Completion, Driver, Inner, SubmitResult};

impl Driver {
    /// `submit_inline`'s send on a stream socket, made at once on the
    /// calling thread (IOCP's skip-on-success): one `send(MSG_DONTWAIT)`
    /// when nothing is in the socket's send lane, so it overtakes nothing
    /// submitted before it. `Ok`: it was made, and this is the submit's
    /// result (`Done` with the count, a short one included, or the send's
    /// error; or the port's refusal, checked first as `submit` would).
    /// `Err(op)`: not tried, or the socket's buffer is full: submit it
    /// through the ring as usual.
    ///
    /// It saves the ring its request, its CQE and the completion's trip
    /// through the port; it costs a system call of its own, where the ring
    /// would have batched the send with others into the thread's next
    /// `io_uring_enter` (docs/design.md, "Sends now on io_uring").
    ///
    /// A send submitted meanwhile by another thread may go first: the two
    /// were concurrent, with no order between them to keep.
    pub(crate) fn send_now(
        &self,
        op: Op,
        key: u64,
        user_data: u64,
    ) -> std::result::Result<SubmitResult, Op> {
        let OpBody::Send {
            fd,
            ref buf,
            pos,
            flags,
        } = op.body
        else {
            return Err(op);
        };
        {
            let mut inner = lock(&self.inner);
            if inner.closed {
                return Ok(Err((Error::Closed, None)));
            }
            if inner.ops.len() >= self.max_in_flight {
                return Ok(Err((Error::QueueFull, Some(op))));
            }
            if !inner.lanes.send_idle(fd) {
                return Err(op);
            }
        }
        let rest = &buf[pos.min(buf.len())..];
        let res = match crate::sys::rawcall::send_now(fd, &rest[..rest.len().min(MAX_IO)], flags) {
            // (At most `MAX_IO`, which fits.)
            Some(Ok(n)) => n as i32,
            Some(Err(e)) => -e.raw_os_error().unwrap_or(libc::EIO),
            None => return Err(op),
        };
        Ok(Ok(finish_inline(
            &mut lock(&self.inner),
            op,
            key,
            user_data,
            res,
        )))
    }

    /// Records an operation that already finished (an inline read, see
    /// `sys/inline_read.rs`) and returns its completion.
    pub(crate) fn complete_inline(
        &self,
        op: Op,
        key: u64,
        user_data: u64,
        res: i32,
    ) -> SubmitResult {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Err((Error::Closed, None));
        }
        if inner.ops.len() >= self.max_in_flight {
            return Err((Error::QueueFull, Some(op)));
        }
        Ok(finish_inline(&mut inner, op, key, user_data, res))
    }

    /// The CQ ring's completions, without entering the kernel (see
    /// `Backend::reap_ready`); a wake-up consumed on the way is given back.
    pub(crate) fn reap_ready(&self, out: &mut Vec<Completion>) {
        let (_, woken) = self.reap(out);
        if woken {
            self.notify();
        }
    }
}

/// Records an operation that already finished and returns its id and
/// completion, whatever the port's state: it is done, and what it did (the
/// bytes it sent) is its result.
fn finish_inline(
    inner: &mut Inner,
    op: Op,
    key: u64,
    user_data: u64,
    res: i32,
) -> (OpId, Option<Completion>) {
    let id = inner.ops.insert(Record {
        kind: op.kind(),
        key,
        user_data,
        prio: op.prio,
        body: op.body,
        aux: Aux::None,
        link_ts: None,
        timer: false,
        lane: None,
        parked: None,
    });
    (id, inner.complete(id, res))
}

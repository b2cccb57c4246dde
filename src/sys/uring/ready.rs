//! Completions that take no trip through the ring: an operation that finished
//! on the submitting thread (an inline read, `sys/inline_read.rs`), and the
//! CQ ring gathered without entering the kernel (for a priority dequeue,
//! `port/prio.rs`).

use crate::error::Error;
use crate::op::Op;
use crate::sync::lock;

use super::ops::Aux;
use super::records::Record;
use super::{Completion, Driver, SubmitResult};

impl Driver {
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
        Ok((id, inner.complete(id, res)))
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

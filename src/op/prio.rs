//! Priority carried by an operation (SPEC §2, beyond IOCP): the lane its
//! completion is queued in, and for file reads and writes the I/O priority the
//! kernel gives the request (`ioprio`; see `sys/ioprio.rs` for the mapping).

use crate::completion::Completion;
use crate::sched::{Prioritized, Priority};

use super::Op;

impl Op {
    /// Queues this operation's completion in the `p` lane: a dequeue takes the
    /// highest-priority completion present, and a `Low` one waits at most
    /// [`AGE_LIMIT`](crate::AGE_LIMIT) dequeues once it is first in its lane
    /// (see [`Priority`]). The default is `Normal`.
    ///
    /// Whatever way the operation ends, its completion keeps the lane: finished
    /// by the kernel, at once on the submitting thread, on a worker thread,
    /// cancelled, or stopped by its [`timeout_after`](Op::timeout_after).
    ///
    /// For file reads and writes (`read_at`, `write_at`, `readv_at`,
    /// `writev_at`, and on epoll every file operation) the class also goes to
    /// the kernel as the request's I/O priority: `High` is best-effort level 0,
    /// `Low` best-effort level 7, and `Normal` leaves the thread's own (by
    /// default best-effort level 4, from its nice value). Only the `bfq` and
    /// `mq-deadline` disk schedulers act on it, and only for I/O that reaches
    /// the disk (not page-cache hits).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op, Priority};
    /// let port = CompletionPort::new()?;
    /// port.submit(Op::nop().priority(Priority::Low), 1)?;
    /// port.submit(Op::nop().priority(Priority::High), 2)?;
    /// // Both have completed by the time a thread looks: High is taken first.
    /// let c = port.get(None)?;
    /// assert_eq!((c.user_data, c.priority()), (2, Priority::High));
    /// assert_eq!(port.get(None)?.user_data, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn priority(mut self, p: Priority) -> Op {
        self.prio = p;
        self
    }

    /// The priority set with [`Op::priority`] (`Normal` by default).
    pub fn get_priority(&self) -> Priority {
        self.prio
    }
}

impl Completion {
    /// The lane this completion was queued in: the priority of its operation
    /// ([`Op::priority`]) or of its packet
    /// ([`post_with_priority`](crate::CompletionPort::post_with_priority)).
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Sets the lane (a backend, from the operation's record).
    pub(crate) fn with_priority(mut self, p: Priority) -> Completion {
        self.priority = p;
        self
    }
}

impl Prioritized for Completion {
    fn priority(&self) -> Priority {
        self.priority
    }
}

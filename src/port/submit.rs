//! Submitting operations: `submit` and its variants (IOCP's overlapped calls),
//! and `submit_inline`, IOCP's `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::completion::{Completion, OpId};
use crate::error::{Error, Result};
use crate::op::{Op, OpBody};
use crate::sys::PollMode;

use super::{CompletionPort, DEFER_SUBMIT, HOLDING, HOME};

/// What [`CompletionPort::submit_inline`] did with an operation.
#[derive(Debug)]
pub enum Submitted {
    /// In flight: its completion comes through the port, as after `submit`.
    Pending(OpId),
    /// Finished during the call, successfully or not: here is its completion,
    /// and no packet for it is queued.
    Done(Completion),
}

impl CompletionPort {
    fn key_for(&self, op: &Op) -> Result<u64> {
        match op.fd() {
            None => Ok(op.key.unwrap_or(0)),
            // A close ends the association as it is submitted — with the
            // backend's part of it (epoll's registration, its queued socket
            // operations), as `disassociate` does: a close refused for room
            // (`try_submit`'s `QueueFull`) drops its descriptor all the same,
            // and a registration left behind made the number's next socket
            // `AlreadyAssociated` and stranded the old one's receives.
            Some(fd) if matches!(op.body, OpBody::Close { .. }) => self
                .inner
                .assoc
                .remove(fd, || self.inner.backend.disassociate(fd, false)),
            Some(fd) => self.inner.assoc.get(fd),
        }
    }

    /// Starts an operation (IOCP's overlapped call). Never blocks unless
    /// `max_in_flight` operations are outstanding, in which case it waits for room
    /// (reaping completions into the port's queue meanwhile, so it cannot deadlock).
    /// The completion comes back through `get` with `user_data`.
    pub fn submit(&self, op: Op, user_data: u64) -> Result<OpId> {
        self.submit_waiting(op, user_data, None)
    }

    /// Starts an operation like [`submit`](Self::submit), but if it finishes
    /// during the call (successfully or with an error) returns its completion
    /// instead of queueing it: IOCP's `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`,
    /// chosen per call rather than per handle. The caller handles a `Done`
    /// completion itself, at once; it never comes through `get`.
    ///
    /// On the epoll backend a socket operation is attempted at once, so a send
    /// with room or a receive with data waiting is `Done` without touching the
    /// port's queue (its lock, its wake-ups, a `get`). On io_uring an
    /// operation is handed to the kernel and is `Pending`, except a send on a
    /// stream (or sequenced-packet) socket whose earlier sends' completions
    /// have all been reaped, made at once when the port is lightly loaded so
    /// no batch would carry it (the last look at the kernel gathered at most
    /// one completion, none is queued, and the calling thread holds no
    /// batched submissions; `RINGPORT_INLINE_SENDS`);
    /// and, on both backends, a small buffered read the page cache holds,
    /// which is read on the spot (`RINGPORT_INLINE_READS`). A send made at
    /// once may be short, as one through the kernel may: its count says what
    /// went. A multishot operation is always
    /// `Pending`: its completions come through the port.
    /// Like `submit`, it waits for room while `max_in_flight` operations are
    /// out, even for one that would finish at once (the cap means the same on
    /// both backends; room is looked at when the call starts, so operations
    /// other threads start meanwhile may fill it); a `Done` operation holds
    /// no slot once it is returned.
    ///
    /// A handler that chains operations this way should bound the chain (say,
    /// 16 in a row, then a plain `submit`), as a thread that keeps finding work
    /// done inline never returns to the port, and other handles wait.
    ///
    /// ```
    /// use ringport::{CompletionPort, Op, Submitted};
    /// use std::io::Write;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let port = CompletionPort::new()?;
    /// let (a, mut b) = UnixStream::pair()?;
    /// port.associate(&a, 1)?;
    /// b.write_all(b"ping")?;
    /// std::thread::sleep(std::time::Duration::from_millis(10));
    /// match port.submit_inline(Op::recv(&a, Vec::with_capacity(16)), 7)? {
    ///     // epoll: the bytes were waiting, so the receive finished in the call.
    ///     Submitted::Done(c) => assert_eq!(c.buf.as_deref(), Some(&b"ping"[..])),
    ///     // io_uring: the kernel has it; the completion comes through the port.
    ///     Submitted::Pending(_) => {
    ///         let c = port.get(Some(std::time::Duration::from_secs(5)))?;
    ///         assert_eq!(c.buf.as_deref(), Some(&b"ping"[..]));
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_inline(&self, op: Op, user_data: u64) -> Result<Submitted> {
        let mut done = None;
        let id = self.submit_waiting(op, user_data, Some(&mut done))?;
        Ok(match done {
            Some(c) => Submitted::Done(c),
            None => Submitted::Pending(id),
        })
    }

    /// `submit`, waiting for room while `max_in_flight` operations are out;
    /// with `inline`, an operation finished during the call is put there.
    fn submit_waiting(
        &self,
        op: Op,
        user_data: u64,
        mut inline: Option<&mut Option<Completion>>,
    ) -> Result<OpId> {
        let key = self.key_for(&op)?;
        let mut op = op;
        loop {
            let send_now = inline.is_some();
            match self.submit_inner(op, key, user_data, inline.as_deref_mut(), send_now) {
                Err((Error::QueueFull, Some(back))) => {
                    op = back;
                    self.reap_for_room();
                }
                Err((e, _)) => return Err(e),
                Ok(id) => return Ok(id),
            }
        }
    }

    /// Like [`submit`](Self::submit), but returns [`Error::QueueFull`] at once when
    /// `max_in_flight` operations are outstanding.
    ///
    /// A refused [`Op::close`] still closes its descriptor (the operation owns
    /// it and is dropped), after cancelling what is in flight on it, as the
    /// close would have. (On epoll that cancel comes first, before the cap is
    /// looked at: a close of a socket whose own operations fill the cap frees
    /// their slots and is taken, where io_uring says `QueueFull`.)
    pub fn try_submit(&self, op: Op, user_data: u64) -> Result<OpId> {
        let key = self.key_for(&op)?;
        self.submit_inner(op, key, user_data, None, false)
            .map_err(|(e, back)| {
                if let Some(OpBody::Close { fd }) = back.as_ref().map(|op| &op.body) {
                    // (The association already ended in `key_for`, without a
                    // cancel: the close's own SQEs were to do it.)
                    let fd = std::os::fd::AsRawFd::as_raw_fd(fd);
                    self.inner.backend.disassociate(fd, true);
                }
                e
            })
    }

    /// Like `try_submit`, but hands the operation back on `QueueFull` (and on any
    /// refusal that leaves it intact), so the caller can retry it later; with
    /// `inline`, `submit_inline`'s rule: an operation that finished during the
    /// call is put there, not queued. (Not its sends made at once on io_uring:
    /// its caller, the async face, tries a stream's send itself first, so a
    /// send that reaches here found the socket full, or was not to be tried.)
    pub(crate) fn try_submit_keep_inline(
        &self,
        op: Op,
        user_data: u64,
        inline: Option<&mut Option<Completion>>,
    ) -> std::result::Result<OpId, (Error, Option<Op>)> {
        let key = match self.key_for(&op) {
            Ok(k) => k,
            Err(e) => return Err((e, Some(op))),
        };
        self.submit_inner(op, key, user_data, inline, false)
    }

    /// Whether `submit_inline` should have io_uring make this send at once
    /// (`Backend::submit`'s `now`): only when the port is lightly loaded —
    /// the last look at the backend gathered at most one completion, no
    /// completion is queued, and this thread holds no batched submissions.
    /// Otherwise a trip into the kernel that gathers several completions is
    /// coming anyway, and the send rides in it with the others for a
    /// fraction of a system call (its own completion joins that batch);
    /// made at once, it costs a system call of its own. Under light load
    /// that trip would gather only this send's completion, and a second trip
    /// would wait for the next receive: made at once, one trip is saved.
    /// Measured (echo, paired, 5 rounds; docs/design.md, "Sends now on
    /// io_uring"): made
    /// at once every time, server CPU per message was 0.93 × the ring's at
    /// one connection, but 1.23 × at 64 and 1.19 × at 1000. epoll tries
    /// every socket operation at once regardless.
    fn send_now_pays(&self, op: &Op) -> bool {
        matches!(op.body, OpBody::Send { .. })
            && self.inner.backend.defers_submission()
            && crate::sys::inline_sends_enabled()
            && self.inner.last_reap.load(Ordering::Relaxed) <= 1
            && !HOLDING.with(Cell::get)
            && self.inner.sched.nothing_queued()
    }

    /// Hands `op` to the backend. An operation that finished at once is
    /// queued, or with `inline` (and unless more completions of it follow)
    /// put there instead. (An out-parameter: returning the completion would
    /// copy its 128 bytes through every caller, `submit`'s too.) `send_now`:
    /// io_uring may make a send at once (`submit_inline`, `send_now_pays`).
    fn submit_inner(
        &self,
        op: Op,
        key: u64,
        user_data: u64,
        inline: Option<&mut Option<Completion>>,
        send_now: bool,
    ) -> std::result::Result<OpId, (Error, Option<Op>)> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err((Error::Closed, Some(op)));
        }
        // Pool threads batch: their next `get` submits everything at once.
        // Only to the port they wait on: an operation for another port would
        // wait for a `get` that never comes to it (its own waiter sleeps in
        // the kernel with the SQE unsubmitted: session 16's review).
        let batching = DEFER_SUBMIT.with(Cell::get) && HOME.with(Cell::get) == self.inner.id;
        let now = send_now && inline.is_some() && self.send_now_pays(&op);
        let high = self.count_high(&op);
        let (id, done) = self
            .inner
            .backend
            .submit(op, key, user_data, !batching, now)
            .inspect_err(|_| self.uncount_high(high))?;
        if batching && done.is_none() && self.inner.backend.defers_submission() {
            HOLDING.with(|h| h.set(true));
        }
        if let Some(c) = done {
            if let Some(slot) = inline.filter(|_| !c.more) {
                self.dequeued(std::slice::from_ref(&c));
                *slot = Some(c);
                return Ok(id);
            }
            // The operation finished at once (epoll tried it inline). Its packet is
            // queued like any other; a batching thread keeps it for its own next
            // `get` instead of waking another thread, just as its io_uring
            // submissions wait for that `get`.
            if self.inner.sched.push_with(c, !batching) {
                self.inner.backend.notify();
            }
        }
        Ok(id)
    }

    /// The cap on operations in flight, as the backend applied it.
    pub fn max_in_flight(&self) -> usize {
        self.inner.backend.max_in_flight()
    }

    /// Waits briefly in the kernel for completions, queueing them in the port.
    fn reap_for_room(&self) {
        let mut got = Vec::new();
        if let Err(e) =
            self.inner
                .backend
                .poll(Some(Duration::from_millis(1)), &mut got, PollMode::Other)
        {
            tracing::error!("reaping while waiting for room: {e}");
        }
        for c in got {
            if self.inner.sched.push(c) {
                self.inner.backend.notify();
            }
        }
    }
}

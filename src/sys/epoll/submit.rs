//! Submitting a socket operation on the epoll backend: the inline attempt,
//! and the op table only for an operation that must wait (see the module docs
//! of `epoll`).

use super::*;

impl Driver {
    /// A socket operation: tried at once when nothing is queued before it in
    /// its direction and the socket has not said `EAGAIN` since its last edge;
    /// queued for readiness otherwise.
    ///
    /// One that finishes in that attempt never enters the op table: its id is
    /// numbered apart (`INLINE_BIT`) and its completion is built here, without
    /// the table's lock — the common case of a busy server (a send with room,
    /// a receive with data waiting) costs one socket lock and the system call.
    /// Admission is checked as `admit` would (closed, the in-flight cap, from
    /// their lock-free copies), so the port refuses what it would refuse
    /// anyway. One that must wait is entered in the table under the socket's
    /// lock (the lock order: a socket's queues, then `Inner`).
    pub(super) fn submit_socket(
        &self,
        op: Op,
        fd: RawFd,
        key: u64,
        user_data: u64,
    ) -> SubmitResult {
        let q = self.shared.queue(fd);
        let Some(q) = q else {
            // Not a registered socket: one attempt, whatever it gives.
            let (id, op) = self.admit(op, key, user_data, || Wait::Fd(fd))?;
            let mut p = Pending {
                id,
                body: op.body,
                connecting: false,
                own: None,
            };
            let res = try_op(&mut p).unwrap_or(-libc::EAGAIN);
            return self.done_now(id, res, p.body);
        };
        let mut g = lock(&q.q);
        if g.dead {
            drop(g);
            let (id, op) = self.admit(op, key, user_data, || Wait::Fd(fd))?;
            return self.done_now(id, -libc::ECANCELED, op.body);
        }
        let kind = op.kind();
        let is_read = matches!(
            op.body,
            OpBody::Recv { .. }
                | OpBody::RecvFrom { .. }
                | OpBody::Accept { .. }
                | OpBody::ReadFixed { .. }
        );
        // A connect must be started by its own system call.
        let must_try = matches!(op.body, OpBody::Connect { .. });
        // A shutdown never waits for room: with nothing queued before it, it
        // goes now even if the last send found the socket full.
        let never_waits = matches!(op.body, OpBody::Shutdown { .. });
        let g = &mut *g;
        let closed = g.read_closed;
        let (queue, blocked) = if is_read {
            (&mut g.read, &mut g.read_blocked)
        } else {
            (&mut g.write, &mut g.write_blocked)
        };
        let Op {
            body,
            key: op_key,
            link_timeout,
            prio,
        } = op;
        let give_back = |body| Op {
            body,
            key: op_key,
            link_timeout,
            prio,
        };
        let mut p = Pending {
            id: OpId(0),
            body,
            connecting: false,
            own: None,
        };
        // A connect's attempt starts the connection, so it is admitted first
        // (a refusal hands back an operation that has done nothing, as
        // io_uring's would); anything else is tried before it is admitted.
        if !must_try && queue.is_empty() && (!*blocked || never_waits) {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err((Error::Closed, None));
            }
            if self.shared.live.load(Ordering::Relaxed) >= self.max_in_flight {
                return Err((Error::QueueFull, Some(give_back(p.body))));
            }
            match try_op(&mut p) {
                Some(res) => {
                    if drained_after(&p, res, q.stream(), closed) {
                        *blocked = true;
                    }
                    let n = self.shared.inline_ids.fetch_add(1, Ordering::Relaxed);
                    let id = OpId(INLINE_BIT | (n & (INLINE_BIT - 1)));
                    let rec = Record {
                        kind,
                        key,
                        user_data,
                        prio,
                        wait: Wait::Fd(fd),
                        deadline: None,
                        parts: 0,
                    };
                    return Ok((id, Some(completion(id, &rec, res, p.body))));
                }
                None => *blocked = true,
            }
        }
        debug_assert!(
            !never_waits || !queue.is_empty(),
            "a shutdown is done at once"
        );
        match FdTable::<FdQueue>::index(fd) {
            // (A descriptor too large for an own id: its record goes in the table.)
            None => {
                p.id = match self
                    .admit_parts(kind, key, user_data, prio, link_timeout, || Wait::Fd(fd))
                {
                    Ok(id) => id,
                    Err(Error::QueueFull) => {
                        return Err((Error::QueueFull, Some(give_back(p.body))))
                    }
                    Err(e) => return Err((e, None)),
                };
            }
            // It waits with its own record, outside the op table (`Own`).
            Some(index) => {
                if self.shared.closed.load(Ordering::Acquire) {
                    return Err((Error::Closed, None));
                }
                if self.shared.live.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
                    self.shared.live.fetch_sub(1, Ordering::Relaxed);
                    return Err((Error::QueueFull, Some(give_back(p.body))));
                }
                let n = self.shared.inline_ids.fetch_add(1, Ordering::Relaxed);
                p.id = own_id(index, n);
                p.own = Some(Own {
                    kind,
                    key,
                    user_data,
                    prio,
                    deadline: link_timeout.map(|d| Instant::now() + d),
                });
            }
        }
        if must_try && queue.is_empty() {
            if let Some(res) = try_op(&mut p) {
                // (An own one's timer entry is not in yet: nothing to remove.)
                return match p.own {
                    Some(o) => Ok((p.id, Some(self.end_own(p.id, o, res, p.body)))),
                    None => self.done_now(p.id, res, p.body),
                };
            }
            *blocked = true;
        }
        let (id, deadline) = (p.id, p.own.and_then(|o| o.deadline));
        queue.push_back(p);
        if let Some(at) = deadline {
            // Under the socket's lock, after it is queued (see `Own`).
            self.add_deadline(lock(&self.shared.inner), at, id);
        }
        Ok((id, None))
    }
}

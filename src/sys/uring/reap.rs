//! Waiting for completions and reaping the CQ ring (see the contract in
//! `sys/mod.rs`), and passing on a wake-up a reaper consumed for the poller.

use super::*;

impl Core {
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
            Some(t) if t.is_zero() => self.enter(0, None),
            None => self.enter(want, None),
            Some(t) => self.enter(want, Some(t)),
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

    pub(super) fn repost(&self, consumed_wake: bool) -> io::Result<()> {
        if consumed_wake {
            self.notify();
        }
        Ok(())
    }

    /// Moves every available CQE into `out`. Returns how many completions it added
    /// and whether it consumed a wake-up from `notify`.
    pub(super) fn reap(&self, out: &mut Vec<Completion>) -> (usize, bool) {
        let before = out.len();
        let mut woken = false;
        let mut inner = lock(&self.inner);
        let mut follow = Vec::new();
        let mut expired = Vec::new();
        let mut mail = false;
        // SAFETY: the inner mutex is held, and CompletionQueues are only created
        // under it, so no other exists.
        let cq = unsafe { self.ring.completion_shared() };
        for cqe in cq {
            let ud = cqe.user_data();
            match ud {
                WAKE_TAG => woken = true,
                CANCEL_TAG | LINK_TIMEOUT_TAG => {}
                MAILBOX_TAG => mail = true,
                _ if ud & TIMER_BIT != 0 => {
                    let id = OpId(ud & !TIMER_BIT);
                    if inner.on_timer(id, cqe.result()) {
                        expired.push(id);
                    }
                }
                _ => {
                    let id = OpId(ud & !LEG_BIT);
                    let head = ud & LEG_BIT != 0;
                    let multi = inner
                        .ops
                        .get(id)
                        .is_some_and(|r| matches!(r.aux, Aux::Multi(_)));
                    if multi {
                        let (res, flags) = (cqe.result(), cqe.flags());
                        self.on_multi_cqe(&mut inner, id, res, flags, out, &mut follow);
                    } else {
                        out.extend(inner.on_cqe(id, head, cqe.result(), cqe.flags(), &mut follow));
                    }
                }
            }
        }
        if mail {
            inner.mailbox_armed = false;
            if let Some(fb) = self.fallback.get() {
                for (id, res, body) in fb.take() {
                    out.extend(inner.worker_done(id, res, body, &mut follow));
                }
                if inner.worker_ops > 0 {
                    inner.mailbox_armed = true;
                    follow.push(vec![fb.arm().user_data(MAILBOX_TAG)]);
                }
            }
        }
        // Further SQEs of multi-SQE operations (a transfer's next round, a cancel
        // repeated for a tail that started after the first one, the removal of
        // a timer, the re-armed mailbox).
        for chain in &follow {
            self.push_all_locked(chain.as_slice());
        }
        // Emulated linked timeouts that fired: cancel their operations —
        // after the follow-ups above, so a cancel also reaches an operation
        // started again in this batch (a zero-copy send sent again as a
        // plain SEND, a transfer's next round).
        let mut pushes = !expired.is_empty();
        for id in expired {
            out.extend(self.cancel_locked(&mut inner, id));
        }
        // Parked socket operations whose lanes passed to them (`lanes.rs`),
        // and what the driver ended outside a reap.
        pushes |= self.resume_locked(&mut inner);
        out.append(&mut inner.done);
        drop(inner);
        if !follow.is_empty() || pushes {
            if let Err(e) = self.submit_all() {
                tracing::debug!("io_uring submit: {e}");
            }
        }
        (out.len() - before, woken)
    }
}

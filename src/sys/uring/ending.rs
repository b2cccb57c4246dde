//! How operations end before their time: a cancel, the end of a socket's
//! association (its operations cancelled, its lanes forgotten), the lanes'
//! hand-over to a parked operation, and the driver's shutdown.

use super::*;

impl Core {
    /// A handle's association ended: what is still in flight on it, if it
    /// is a socket, is cancelled (each ends with `ECANCELED`, or its result
    /// if it won the race), as on epoll; operations parked in its lanes end
    /// here. `idle`: the caller knows nothing is in flight on it (no cancel).
    pub(crate) fn disassociate(&self, fd: RawFd, idle: bool) {
        let sock = !idle && self.is_socket(fd);
        self.forget_fd(fd);
        let mut inner = lock(&self.inner);
        self.forget_lanes_locked(&mut inner, fd);
        if !sock || inner.closed || inner.ops.len() == 0 {
            return;
        }
        drop(inner);
        // The kernel matches the descriptor when the cancel runs, so it must
        // run before this returns: the caller closes the descriptor next, and
        // a cancel pushed from a thread the port does not own would run
        // later, on the submitter thread, and find nothing (the requests
        // would wait on the closed socket for good). `REGISTER_SYNC_CANCEL`
        // (Linux 6.0) runs it in this call; with a zero timeout it does not
        // wait for a request already running, which is still told to stop.
        if !self
            .no_sync_cancel
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let builder = types::CancelBuilder::fd(types::Fd(fd)).all();
            match self
                .ring
                .submitter()
                .register_sync_cancel(Some(types::Timespec::new()), builder)
            {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.no_sync_cancel
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                // Done, nothing to cancel (`ENOENT`), or one still running
                // (`ETIME`, `EALREADY`): it has been told to stop.
                _ => return,
            }
        }
        let inner = lock(&self.inner);
        self.push_locked(&cancel_all_on(fd));
        drop(inner);
        self.flush();
    }

    /// Cancels operation `id`; the caller holds `inner`. An operation waiting
    /// for a worker thread ends here (its completion is returned); otherwise the
    /// kernel is asked to cancel every SQE of it that may still run.
    pub(super) fn cancel_locked(&self, inner: &mut Inner, id: OpId) -> Option<Completion> {
        let rec = inner.ops.get_mut(id)?;
        if rec.parked.is_some() {
            // Not in the kernel yet: it ends here.
            let mut timer = Vec::new();
            let c = inner.end_parked(id, -libc::ECANCELED, &mut timer);
            for sqe in &timer {
                self.push_locked(sqe);
            }
            return c;
        }
        if let Aux::Worker = rec.aux {
            // A job already running on a worker cannot be stopped: its result
            // comes through the mailbox.
            let body = self.fallback.get()?.workers.try_cancel(id)?;
            rec.body = body;
            if rec.timer {
                self.push_locked(&remove_timer(id));
            }
            inner.worker_ops -= 1;
            return inner.complete(id, -libc::ECANCELED);
        }
        for sqe in cancel_sqes(id, rec) {
            self.push_locked(&sqe);
        }
        None
    }

    /// A descriptor is being closed or disassociated: its lanes are
    /// forgotten, and the operations parked on them end with `ECANCELED`
    /// (handed out by the next reap, which the cancel of their lanes' busy
    /// operations brings).
    pub(super) fn forget_lanes_locked(&self, inner: &mut Inner, fd: RawFd) {
        let mut timers = Vec::new();
        for id in inner.lanes.forget(fd) {
            if let Some(c) = inner.end_parked(id, -libc::ECANCELED, &mut timers) {
                inner.done.push(c);
            }
        }
        for sqe in &timers {
            self.push_locked(sqe);
        }
    }

    /// Pushes the parked operations whose lanes passed to them (after the
    /// port closed, they end cancelled instead). Returns whether it pushed.
    pub(super) fn resume_locked(&self, inner: &mut Inner) -> bool {
        let mut pushed = false;
        while let Some(id) = inner.resume.pop() {
            let Some(rec) = inner.ops.get_mut(id) else {
                continue;
            };
            let Some(chain) = rec.parked.take() else {
                continue;
            };
            if inner.closed {
                // (Put back, so it ends like any parked one.)
                rec.parked = Some(chain);
                let mut timers = Vec::new();
                let c = inner.end_parked(id, -libc::ECANCELED, &mut timers);
                inner.done.extend(c);
                for sqe in &timers {
                    self.push_locked(sqe);
                }
                pushed = true;
                continue;
            }
            self.push_all_locked(&chain);
            pushed = true;
        }
        pushed
    }

    pub(crate) fn cancel(&self, id: OpId) -> Result<Option<Completion>> {
        let mut inner = lock(&self.inner);
        if inner.ops.get(id).is_none() {
            return Err(Error::NotFound);
        }
        let done = self.cancel_locked(&mut inner, id);
        drop(inner);
        let _ = self.submit_all();
        Ok(done)
    }

    /// Refuses new work, cancels everything in flight and waits until the kernel
    /// has released it all. Completions reaped here are dropped.
    pub(crate) fn shutdown(&self) {
        // This thread waits here until every request is done: it may submit.
        let _owned = OwnedScope::enter();
        lock(&self.inner).closed = true;
        // Queued worker jobs end as cancelled; running ones are waited for.
        // Their results come through the mailbox, which the loop below reaps.
        if let Some(fb) = self.fallback.get() {
            // Jobs still blocked in the kernel: forgotten (their late
            // results find no record), so the loop below does not wait.
            let left = fb.workers.shutdown();
            let mut inner = lock(&self.inner);
            for id in left {
                inner.ops.remove(id);
            }
        }
        let mut sink = Vec::new();
        let mut woken = false;
        let mut round = 0u32;
        let started = std::time::Instant::now();
        loop {
            // Cancel everything in flight, again every half second: a request
            // that was not yet visible to the kernel's cancel (the tail of a
            // chain whose head was still running) is caught the next time.
            if round % 10 == 0 {
                let mut inner = lock(&self.inner);
                for id in inner.ops.ids() {
                    // (dropped like the others, but after the lock: it may
                    // hold a set's last lease, whose drop calls this driver)
                    sink.extend(self.cancel_locked(&mut inner, id));
                }
                inner.give_up_on_notifs(started);
            }
            round += 1;
            sink.clear();
            woken |= self.reap(&mut sink).1;
            if lock(&self.inner).ops.len() == 0 {
                break;
            }
            // Cancelled socket operations complete as task work of the threads
            // that submitted them: release any a running thread holds (COOP).
            if round > 1 {
                self.kick_task_work(true);
            }
            // (shutdown waits like a poller)
            if let Err(e) = self.enter(1, Some(Duration::from_millis(50))) {
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

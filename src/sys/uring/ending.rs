//! How operations end before their time: a cancel, the end of a socket's
//! association (its operations cancelled, its lanes forgotten), the lanes'
//! hand-over to a parked operation, and the driver's shutdown.

use super::*;

impl Core {
    /// A handle's association ended: what is still in flight on it, if it
    /// is a socket, is cancelled (each ends with `ECANCELED`, or its result
    /// if it won the race), as on epoll. Operations parked in its lanes are
    /// pushed first, in order (so a send queued behind another still goes
    /// out if the socket has room, as on epoll; one that has to wait is
    /// cancelled with the rest). `cancel`: false when the caller knows
    /// nothing is in flight on it, or cancels it itself (a close's SQEs).
    ///
    /// When this returns, the kernel has taken everything pushed so far,
    /// the cancel included: the caller may close the descriptor next, and
    /// the cancel matches requests by the file the descriptor names when it
    /// runs (a cancel left for the submitter thread would find the number
    /// closed, or another socket's).
    pub(crate) fn disassociate(&self, fd: RawFd, cancel: bool) {
        let sock = cancel && self.is_socket(fd);
        self.forget_fd(fd);
        let mut inner = lock(&self.inner);
        let pushed = self.forget_lanes_locked(&mut inner, fd);
        let cancel = sock && !inner.closed && inner.ops.len() > 0;
        if cancel {
            self.push_locked(&cancel_all_on(fd));
        }
        drop(inner);
        if cancel || pushed {
            self.submit_before_return();
        }
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

    /// A descriptor is being associated: what its lanes knew of an earlier
    /// socket of the same number (its type) is forgotten.
    pub(crate) fn associate(&self, fd: RawFd) {
        self.forget_fd(fd);
        lock(&self.inner).lanes.reset(fd);
    }

    /// A descriptor is being closed or disassociated: its emulated multishot
    /// operations resubmit no more, its lanes are forgotten, and the
    /// operations parked on them are pushed, oldest first
    /// (after the port closed, they end cancelled instead). Returns whether
    /// it pushed anything.
    pub(super) fn forget_lanes_locked(&self, inner: &mut Inner, fd: RawFd) -> bool {
        super::multi::end_emulated_on(inner, fd);
        let parked = inner.lanes.forget(fd);
        let any = !parked.is_empty();
        for id in parked {
            self.push_parked_locked(inner, id);
        }
        any
    }

    /// Pushes parked operation `id`, which no longer waits for its lane;
    /// after the port closed it ends cancelled instead.
    fn push_parked_locked(&self, inner: &mut Inner, id: OpId) {
        let Some(rec) = inner.ops.get_mut(id) else {
            return;
        };
        if inner.closed {
            let mut timers = Vec::new();
            let c = inner.end_parked(id, -libc::ECANCELED, &mut timers);
            inner.done.extend(c);
            for sqe in &timers {
                self.push_locked(sqe);
            }
            return;
        }
        if let Some(chain) = rec.parked.take() {
            self.push_all_locked(&chain);
        }
    }

    /// Pushes the parked operations whose lanes passed to them (after the
    /// port closed, they end cancelled instead). Returns whether it pushed.
    pub(super) fn resume_locked(&self, inner: &mut Inner) -> bool {
        let mut pushed = false;
        while let Some(id) = inner.resume.pop() {
            self.push_parked_locked(inner, id);
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
                // (Its linked timeout's `timespec` stays alive: `remove_record`.)
                inner.remove_record(id);
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A parked receive with a deadline, cancelled before its TIMEOUT SQE
    /// reached the kernel: the kernel still reads the TIMEOUT's timespec
    /// when it takes the SQE, so it must outlive the record (a review found
    /// it freed: the timer read a reused allocation and failed `EINVAL`).
    #[test]
    fn a_parked_timers_timespec_outlives_its_operation_until_the_timer_ends() {
        let d = Driver::new(Config {
            entries: 8,
            max_in_flight: 8,
        })
        .expect("io_uring");
        let _owned = OwnedScope::enter();
        let (_c, s) = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            (c, l.accept().unwrap().0)
        };
        let mut seen = Vec::new();
        for _ in 0..5 {
            let a = d
                .submit(Op::recv(&s, Vec::with_capacity(4)), 0, 0, false)
                .unwrap()
                .0;
            let b = d
                .submit(
                    Op::recv(&s, Vec::with_capacity(4)).timeout_after(Duration::from_secs(30)),
                    0,
                    1,
                    false,
                )
                .unwrap()
                .0;
            // (nothing flushed yet: batching, as a pool thread does)
            let mut inner = lock(&d.inner);
            let c = d.cancel_locked(&mut inner, b);
            assert!(c.is_some(), "a parked op ends at once");
            drop(inner);
            // Reuse the freed 16-byte chunk (among the next few of its size): an
            // invalid timespec.
            let junk: Vec<Box<[i64; 2]>> = (0..64).map(|_| Box::new([0, -1])).collect();
            d.flush();
            std::thread::sleep(Duration::from_millis(20));
            // Look at the timer's CQE before the driver swallows it.
            let inner = lock(&d.inner);
            // SAFETY: under inner, as `reap`.
            for cqe in unsafe { d.ring.completion_shared() } {
                if cqe.user_data() == b.0 | TIMER_BIT {
                    seen.push(cqe.result());
                }
            }
            drop(inner);
            drop(junk);
            let mut out = Vec::new();
            d.cancel(a).unwrap();
            for _ in 0..50 {
                d.poll(Some(Duration::from_millis(10)), &mut out, PollMode::Poller)
                    .unwrap();
                if d.in_flight() == 0 {
                    break;
                }
            }
        }
        // Read before the free it would be a 30 s timer, removed: ECANCELED.
        assert!(
            seen.iter().all(|&r| r == -libc::ECANCELED),
            "the TIMEOUT read a freed timespec: results {seen:?} (EINVAL = -22)"
        );
    }
}

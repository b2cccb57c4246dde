//! `cancel` on the epoll backend: an operation still queued (on a socket, in
//! the timer set, on a file worker) loses nothing and wins; one already
//! attempted loses the race and reports its real result.

use super::*;

impl Driver {
    /// Cancels a queued operation. As on io_uring, an operation that could already
    /// have finished loses the race and reports its real result: a timer already
    /// due has fired, and a socket operation first in its queue is attempted once
    /// more (if its data arrived but no thread has polled yet, it completes).
    pub(crate) fn cancel(&self, id: OpId) -> crate::Result<Option<Completion>> {
        if let Some(fd) = own_fd(id) {
            return self.cancel_own(id, fd);
        }
        let mut inner = lock(&self.shared.inner);
        let wait = match inner.ops.get(id) {
            None => return Err(Error::NotFound),
            Some(r) => match r.wait {
                Wait::Fd(fd) => Some(fd),
                Wait::Timer(at) => {
                    inner.timers.remove(&(at, id.0));
                    let res = if at <= Instant::now() {
                        0
                    } else {
                        -libc::ECANCELED
                    };
                    return Ok(finish(&mut inner, id, res, OpBody::Nop));
                }
                Wait::File => None,
            },
        };
        drop(inner);
        let mut next = None;
        let taken = match wait {
            Some(fd) => {
                let Some(q) = self.shared.queue(fd) else {
                    return Ok(None);
                };
                let mut g = lock(&q.q);
                let g = &mut *g;
                let mut found = None;
                let (closed, blocked, gen) = (g.read_closed, g.read_blocked, g.gen);
                for (dir, queue) in [(0, &mut g.read), (1, &mut g.write)] {
                    if let Some(i) = queue.iter().position(|p| p.id == id) {
                        let mut p = queue.remove(i).expect("position is in range");
                        if multi::is_multi(&p.body) {
                            let tries = i == 0 && !blocked;
                            self.cancel_multi(p, tries, q.stream(), closed);
                            return Ok(None);
                        }
                        let res = if i == 0 {
                            try_op(&mut p).unwrap_or(-libc::ECANCELED)
                        } else {
                            -libc::ECANCELED
                        };
                        if i == 0 && !queue.is_empty() {
                            next = Some((fd, gen, dir));
                        }
                        found = Some((p.body, res));
                        break;
                    }
                }
                found
            }
            None => self.files.try_cancel(id).map(|b| (b, -libc::ECANCELED)),
        };
        // Not found in its queue: it has already been attempted and completed (or is
        // running on a file worker). The cancel lost the race; its completion comes.
        let c = taken.and_then(|(b, res)| finish(&mut lock(&self.shared.inner), id, res, b));
        if let Some((fd, gen, dir)) = next {
            self.try_new_front(fd, gen, dir);
        }
        Ok(c)
    }

    /// The front of a socket's queue was cancelled: the one behind it is
    /// tried now, as io_uring pushes the next operation of a lane when its
    /// busy one ends. A shutdown there never waits for room (it had waited
    /// for an edge the peer might never give: a review, session 17); a send
    /// or receive that would block goes back to waiting.
    fn try_new_front(&self, fd: RawFd, gen: u32, dir: u8) {
        let Some(q) = self.shared.queue(fd) else {
            return;
        };
        let mut out = Vec::new();
        self.retry(&q, gen, dir == 0, dir == 1, false, &mut out);
        if !out.is_empty() {
            lock(&self.shared.inner).done.append(&mut out);
            self.notify();
        }
    }

    /// `cancel` of an own operation: found in its socket's queue, or it has
    /// ended (or is ending: its completion comes either way) — `NotFound`.
    fn cancel_own(&self, id: OpId, fd: RawFd) -> crate::Result<Option<Completion>> {
        let Some(q) = self.shared.queue(fd) else {
            return Err(Error::NotFound);
        };
        let mut guard = lock(&q.q);
        let gen = guard.gen;
        let mut ended = None;
        let g = &mut *guard;
        for (dir, queue) in [(0, &mut g.read), (1, &mut g.write)] {
            if let Some(i) = queue.iter().position(|p| p.id == id) {
                let mut p = queue.remove(i).expect("position is in range");
                // First in its queue, it may have finished already: the
                // cancel then loses and its real result stands.
                let res = if i == 0 {
                    try_op(&mut p).unwrap_or(-libc::ECANCELED)
                } else {
                    -libc::ECANCELED
                };
                let next = (i == 0 && !queue.is_empty()).then_some(dir);
                let c = if p.needs_inner() {
                    self.end(&mut lock(&self.shared.inner), p, res)
                } else {
                    let o = p.own.expect("an own operation");
                    Some(self.end_own(p.id, o, res, p.body))
                };
                ended = Some((c, next));
                break;
            }
        }
        drop(guard);
        let Some((c, next)) = ended else {
            return Err(Error::NotFound);
        };
        if let Some(dir) = next {
            self.try_new_front(fd, gen, dir);
        }
        Ok(c)
    }
}

//! Waiting: `epoll_wait` with the next timer as its timeout, retrying each
//! ready socket's queued operations in order, and collecting worker
//! completions and due timers (see the module docs of `epoll`).

use super::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

use super::ready::{Edge, CHUNK, WAIT_EVENTS};
use crate::sync::give_back;

thread_local! {
    /// The poller's list of operations a readiness edge finished, kept
    /// between edges (an allocation and a free per edge otherwise).
    static FINISHED: Cell<Vec<(Pending, i32)>> = const { Cell::new(Vec::new()) };
}

/// Room kept in the poller's `FINISHED` list between edges.
const FINISHED_KEEP: usize = 64;

impl Driver {
    /// Waits for readiness, timers, or worker completions (see `sys/mod.rs`).
    pub(crate) fn poll(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
        mode: PollMode,
    ) -> io::Result<()> {
        let before = out.len();
        let next_timer = self.collect_next(out);
        if out.len() > before {
            return Ok(());
        }
        // Edges kept from an earlier wait come first: taken until they finish
        // something (`CHUNK` completions at most), and then there is no wait.
        while out.len() - before < CHUNK && !self.shared.stash.is_empty() {
            let mut edges = [Edge::default(); CHUNK];
            let n = self
                .shared
                .stash
                .take(&mut edges[..CHUNK - (out.len() - before)]);
            for e in &edges[..n] {
                self.edge(*e, out, mode);
            }
        }
        if out.len() > before {
            return Ok(());
        }
        let next_timer = next_timer.map(|at| at.saturating_duration_since(Instant::now()));
        let wait = match (timeout, next_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ms: i32 = match wait {
            None => -1,
            // Round up so a timer is never polled for just before it is due.
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        // Not zeroed first (768 bytes per wait): only the entries the kernel
        // filled are read.
        let mut events = [const { MaybeUninit::<libc::epoll_event>::uninit() }; WAIT_EVENTS];
        // SAFETY: epfd is open; `events` is a writable array of WAIT_EVENTS
        // entries (`MaybeUninit<T>` has `T`'s layout).
        let n = unsafe {
            libc::epoll_wait(
                self.shared.epfd.as_raw_fd(),
                events.as_mut_ptr().cast(),
                WAIT_EVENTS as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        let edges = events.iter().take(n.max(0) as usize).map(|ev| {
            // SAFETY: epoll_wait wrote the first `n` entries.
            let ev = unsafe { ev.assume_init_ref() };
            Edge {
                token: ev.u64,
                bits: ev.events,
            }
        });
        if mode == PollMode::Poller {
            // Act on sockets until `CHUNK` completions are out (or the edges
            // run out), and keep the rest (`ready.rs`).
            let mut edges = edges.peekable();
            while out.len() - before < CHUNK {
                let Some(e) = edges.next() else { break };
                self.edge(e, out, mode);
            }
            if edges.peek().is_some() {
                self.shared.stash.keep(edges);
            }
        } else {
            for e in edges {
                self.edge(e, out, mode);
            }
        }
        self.collect(out);
        Ok(())
    }

    /// Acts on one readiness edge; false for the wake-up's or a stale one.
    pub(super) fn edge(
        &self,
        Edge { token, bits }: Edge,
        out: &mut Vec<Completion>,
        mode: PollMode,
    ) -> bool {
        if token == WAKE_TOKEN {
            let mut buf = 0u64;
            // SAFETY: reads 8 bytes into a u64 we own from our eventfd.
            unsafe {
                libc::read(
                    self.shared.wake.as_raw_fd(),
                    (&mut buf as *mut u64).cast(),
                    8,
                )
            };
            // A reaper that is not the poller must not swallow the poller's
            // wake-up: give it back.
            if mode == PollMode::Other {
                self.notify();
            }
            return false;
        }
        let Some(q) = self.shared.queue(token as u32 as RawFd) else {
            return false;
        };
        let readable = bits
            & (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP)
                as u32
            != 0;
        let writable = bits & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        // Urgent data (`EPOLLPRI`) counts as a close for the drained rule: a
        // receive stops short at TCP's urgent mark with data behind it, so a
        // short receive no longer means an empty queue (the next receive
        // waited for an edge that had come already: a review, session 17).
        let closed = bits
            & (libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP | libc::EPOLLPRI) as u32
            != 0;
        self.retry(&q, (token >> 32) as u32, readable, writable, closed, out)
    }

    /// Retries a socket's queued operations after readiness, in order, until one
    /// would block. False, doing nothing, for an edge of another registration
    /// than `gen` (`ready.rs`).
    pub(super) fn retry(
        &self,
        q: &FdQueue,
        gen: u32,
        readable: bool,
        writable: bool,
        closed: bool,
        out: &mut Vec<Completion>,
    ) -> bool {
        let mut g = lock(&q.q);
        let g = &mut *g;
        if g.gen != gen {
            return false;
        }
        g.read_closed |= closed;
        let read_closed = g.read_closed;
        let mut finished = FINISHED.take();
        let mut parts = Vec::new();
        for (ready, queue, blocked) in [
            (readable, &mut g.read, &mut g.read_blocked),
            (writable, &mut g.write, &mut g.write_blocked),
        ] {
            if !ready {
                continue;
            }
            *blocked = false;
            while let Some(front) = queue.front_mut() {
                if multi::is_multi(&front.body) {
                    // Until it would block (or is drained), or it ends.
                    let Some(res) = multi::run(front, q.stream(), read_closed, &mut parts).0 else {
                        *blocked = true;
                        break;
                    };
                    finished.extend(queue.pop_front().map(|p| (p, res)));
                    continue;
                }
                match try_op(front) {
                    None => {
                        *blocked = true;
                        break;
                    }
                    Some(res) => {
                        let p = queue.pop_front().expect("front exists");
                        let drained = drained_after(&p, res, q.stream(), read_closed);
                        match p.own {
                            // Its completion needs no other lock (and none
                            // before it waits for one: completions keep
                            // their order).
                            Some(o)
                                if o.deadline.is_none()
                                    && finished.is_empty()
                                    && parts.is_empty() =>
                            {
                                out.push(self.end_own(p.id, o, res, p.body))
                            }
                            _ => finished.push((p, res)),
                        }
                        if drained {
                            // Drained: the rest of the queue waits for an edge.
                            *blocked = true;
                            break;
                        }
                    }
                }
            }
        }
        if finished.is_empty() && parts.is_empty() {
            give_back(&FINISHED, finished, FINISHED_KEEP);
            return true;
        }
        let mut inner = lock(&self.shared.inner);
        // A multishot operation's partial results come before its end.
        if !parts.is_empty() {
            multi::part_completions(&mut inner, parts, out);
        }
        for (p, res) in finished.drain(..) {
            out.extend(self.end(&mut inner, p, res));
        }
        drop(inner);
        give_back(&FINISHED, finished, FINISHED_KEEP);
        true
    }

    /// Worker completions and due timers, without `epoll_wait` (see
    /// `Backend::reap_ready`; the eventfd's wake-up stays for the poller).
    pub(crate) fn reap_ready(&self, out: &mut Vec<Completion>) {
        self.collect(out);
    }

    /// Moves worker completions and due timers into `out`.
    pub(super) fn collect(&self, out: &mut Vec<Completion>) {
        self.collect_next(out);
    }

    /// `collect`, returning when the next timer is due (read under the same
    /// lock; the clock is read only when there are timers).
    fn collect_next(&self, out: &mut Vec<Completion>) -> Option<Instant> {
        let mut inner = lock(&self.shared.inner);
        out.append(&mut inner.done);
        if inner.timers.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(&(at, raw)) = inner.timers.first() {
            if at > now {
                break;
            }
            inner.timers.pop_first();
            if raw & DEADLINE_BIT != 0 {
                expired.push(OpId(raw & !DEADLINE_BIT));
            } else {
                out.extend(finish(&mut inner, OpId(raw), 0, OpBody::Nop));
            }
        }
        let mut next = inner.timers.first().map(|&(at, _)| at);
        drop(inner);
        // Linked timeouts that fired: cancel their operations (a cancel takes
        // the socket's queue lock, which comes before `inner`). One that has
        // finished meanwhile is not found, or loses the race: its own result
        // stands.
        for id in expired {
            match self.cancel(id) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {
                    // Not in its socket's queue. Either it is finishing (its
                    // result stands), or `submit` has admitted it but not queued
                    // it yet — then the deadline must not be lost: look again
                    // shortly, while the operation still waits on a socket.
                    let mut inner = lock(&self.shared.inner);
                    if let Some(r) = inner.ops.get_mut(id) {
                        if matches!(r.wait, Wait::Fd(_)) {
                            let again = Instant::now() + Duration::from_micros(100);
                            r.deadline = Some(again);
                            inner.timers.insert((again, id.0 | DEADLINE_BIT));
                            next = Some(next.map_or(again, |n| n.min(again)));
                        }
                    }
                }
                Err(_) => {}
            }
        }
        next
    }
}

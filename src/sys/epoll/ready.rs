//! Readiness edges taken from `epoll_wait`, acted on a few sockets at a time.
//!
//! `epoll_wait` hands the poller up to [`WAIT_EVENTS`] edges at once. Acting on
//! all of them before any handler runs (64 receives, then 64 handlers and their
//! sends) puts 63 other sockets' state, buffers and packets between a socket's
//! receive and its handler's send, which then finds them out of the cache: at
//! 1000 connections × 64 B, `perf` showed the send's copy from the user buffer
//! at 2.7 % of the server's CPU against tokio's 0.3 % (tokio's task receives
//! and sends back to back). So the poller keeps the edges in a stash and acts
//! on them per `poll` only until [`CHUNK`] completions are out; their handlers
//! run before the next chunk's receives. Unlike a smaller `maxevents` (the
//! kernel's ready list as the stash), this costs no system call per chunk.
//!
//! Invariants:
//! * Only the port's poller (`PollMode::Poller`) puts edges in the stash; a
//!   backup or other reaper that calls `epoll_wait` acts on all it gets. Every
//!   `poll`, in any mode, takes from a non-empty stash before it would call
//!   `epoll_wait`, and then does not wait. The poll role is the port's one at a
//!   time, and the thread that takes it next polls before it sleeps: an edge in
//!   the stash is never left behind a sleeping poller.
//! * `len` is written under the stash's lock and read without it, only to skip
//!   the lock when the stash is empty; it is exact for the thread that holds
//!   the poll role (the role's hand-over orders it).
//! * An edge names its socket's registration (`Queues::gen`, in the token's
//!   high half), and `retry` compares the two under the socket's lock: an
//!   edge for a descriptor that was unregistered, or closed and registered
//!   again, since `epoll_wait` returned it is dropped, so a stale hang-up never
//!   marks the new socket's receive side closed.
//! * A poll acts on edges until `CHUNK` completions are out or its edges run
//!   out: one that finishes nothing (a socket with nothing queued) does not
//!   count, so a poll never returns empty-handed while a kept edge could
//!   finish something — a zero-wait `get` still sees every ready completion.
//! * The poll role is never taken from a poller inside `epoll_wait` on this
//!   backend (the scheduler's take-over serves only threads holding batched
//!   submissions, `Backend::defers_submission`, which epoll never does). If it
//!   were, a deposed poller's kept edges could wait behind the new poller's
//!   sleep.

use super::*;

/// Edges one `epoll_wait` returns at most.
pub(super) const WAIT_EVENTS: usize = 64;

/// Completions a poll makes from readiness before it keeps the remaining
/// edges (see the module docs).
///
/// 16 since session 20 (4 before). Small chunks keep a socket's receive and
/// its handler's send close together (session 8, on an AMD EPYC VM, echo at
/// 1000 × 64 B: chunk 4 0.94 × tokio's CPU, 16 1.03 ×, 64 1.17 ×), but they
/// run a broadcast's writers between the readers that feed them, so no
/// writer ever carries more than one line: `ringport chat` at 64 members × 8
/// rooms made a `send` per delivery and cost 3.2 µs of server CPU per
/// delivery with chunk 4, 1.58 with 16, 1.54 with 64 (tokio-chat: ~1.5). On
/// session 20's Intel VM the echo matrix showed no difference between 4 and
/// 64 (paired CPU 1.02, 0.97, 1.02 at 64 × 64, 1000 × 64, 1000 × 4096 B).
pub(super) const CHUNK: usize = 16;

/// One readiness edge: the epoll token (descriptor | registration << 32) and
/// its event bits.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Edge {
    pub(super) token: u64,
    pub(super) bits: u32,
}

/// The epoll token for a socket's registration number `gen`.
pub(super) fn token(fd: RawFd, gen: u32) -> u64 {
    (fd as u32 as u64) | ((gen as u64) << 32)
}

/// Edges waiting to be acted on, oldest first.
#[derive(Debug, Default)]
pub(super) struct Stash {
    edges: Mutex<VecDeque<Edge>>,
    len: AtomicUsize,
}

impl Stash {
    /// Whether it may hold edges (see the invariants).
    pub(super) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Takes up to `out.len()` edges into `out`, oldest first; returns how many.
    pub(super) fn take(&self, out: &mut [Edge]) -> usize {
        let mut g = lock(&self.edges);
        let n = g.len().min(out.len());
        for (slot, e) in out.iter_mut().zip(g.drain(..n)) {
            *slot = e;
        }
        self.len.store(g.len(), Ordering::Release);
        n
    }

    /// Drops every kept edge (at shutdown).
    pub(super) fn clear(&self) {
        let mut g = lock(&self.edges);
        g.clear();
        self.len.store(0, Ordering::Release);
    }

    /// Keeps `edges` (after any already kept).
    pub(super) fn keep(&self, edges: impl IntoIterator<Item = Edge>) {
        let mut g = lock(&self.edges);
        g.extend(edges);
        self.len.store(g.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn driver() -> Driver {
        Driver::new(Config {
            entries: 64,
            max_in_flight: 1024,
        })
        .expect("an epoll driver")
    }

    #[test]
    fn token_keeps_descriptor_and_registration_apart() {
        let t = token(7, 3);
        assert_eq!((t as u32 as RawFd, (t >> 32) as u32), (7, 3));
        assert_ne!(token(i32::MAX, u32::MAX), WAKE_TOKEN);
    }

    #[test]
    fn an_edge_of_an_earlier_registration_is_dropped() {
        let d = driver();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let fd = a.as_raw_fd();
        d.associate(fd).unwrap();
        let gen = |d: &Driver| lock(&d.shared.queue(fd).expect("registered").q).gen;
        let first = gen(&d);
        d.disassociate(fd);
        d.associate(fd).unwrap();
        let second = gen(&d);
        assert_ne!(first, second, "a new registration gets a new number");
        let bits = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        let mut out = Vec::new();
        let stale = Edge {
            token: token(fd, first),
            bits,
        };
        assert!(
            !d.edge(stale, &mut out, PollMode::Poller),
            "the stale edge is dropped"
        );
        assert!(
            !lock(&d.shared.queue(fd).unwrap().q).read_closed,
            "a stale hang-up did not mark the new registration closed"
        );
        let fresh = Edge {
            token: token(fd, second),
            bits,
        };
        assert!(
            d.edge(fresh, &mut out, PollMode::Poller),
            "the current edge is acted on"
        );
        assert!(lock(&d.shared.queue(fd).unwrap().q).read_closed);
        assert!(out.is_empty(), "no operation was queued");
        d.disassociate(fd);
    }

    #[test]
    fn the_stash_gives_back_edges_oldest_first_a_chunk_at_a_time() {
        let s = Stash::default();
        assert!(s.is_empty());
        s.keep((0..10).map(|i| Edge { token: i, bits: 0 }));
        assert!(!s.is_empty());
        let mut got = Vec::new();
        while !s.is_empty() {
            let mut buf = [Edge::default(); CHUNK];
            let n = s.take(&mut buf);
            assert!(n > 0 && n <= CHUNK);
            got.extend(buf[..n].iter().map(|e| e.token));
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}

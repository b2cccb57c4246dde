//! Stream reads done inline, on the epoll backend: before a read on a stream
//! submits a receive to the port, it tries one `recv(MSG_DONTWAIT)` itself.
//! When the bytes are there already — under load they usually are: by the
//! time a task comes back to read, its peer has answered — the read returns
//! them at once, with no operation, no completion through the port and no
//! wake-up of the task. (epoll's submit would make the same `recv` inline,
//! then still deliver its result as a completion through the port's queue and
//! the task's waker: callgrind, async echo at 64 × 64 B, 6,691 → 3,493 user
//! instructions per message.)
//!
//! Not on io_uring: there the queued receive rides in the thread's next
//! `io_uring_enter` together with its other submissions, and a `recv` of its
//! own measured no cheaper (async echo, 1000 × 64 B: 15.0 against 14.2 and
//! 16.4 against 15.4 µs of server CPU per message, paired).
//!
//! # The rule
//!
//! A read tries inline only when nothing a dropped read left is waiting (its
//! orphaned receives drained, its stash empty), so stream order is kept, and:
//!
//! * **Back-off.** A miss (`EAGAIN`) costs one system call before the queued
//!   receive. After [`MISS_STREAK`] misses in a row (a peer that answers
//!   slowly: the read always comes first) the next [`SKIP`] reads go straight
//!   to the port, then one probes again; a hit resets the streak.
//! * **Budget.** After [`RUN_MAX`] inline hits in a row one read goes
//!   through the port, which yields the task: a stream whose data never
//!   runs out cannot keep its task from yielding to the others.
//!
//! Any other error, and end-of-stream, is the read's result, as the queued
//! receive would have reported it. `RINGPORT_INLINE_READS=off` turns inline
//! reads off (files and streams), for measurements.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Misses in a row that start a back-off.
const MISS_STREAK: u32 = 8;
/// Reads that go to the port without a try during a back-off.
const SKIP: u32 = 64;
/// Inline hits in a row before one read goes through the port.
const RUN_MAX: u32 = 16;

/// One stream's inline-read state: `misses` counts misses in a row (above
/// `MISS_STREAK`: backing off, counting down); `run` counts hits in a row.
/// Updated racily by concurrent readers of one stream: a lost update only
/// moves a guess.
#[derive(Debug, Default)]
pub(crate) struct InlineReads {
    /// Reads are tried inline at all (the epoll backend).
    on: bool,
    misses: AtomicU32,
    run: AtomicU32,
}

impl InlineReads {
    /// The state of a new stream; `on`: its port runs on epoll.
    pub(crate) fn new(on: bool) -> InlineReads {
        InlineReads {
            on,
            ..InlineReads::default()
        }
    }

    /// Tries to receive into `dst` without waiting. `Some`: the read's result
    /// (bytes, 0 at end-of-stream, or its error); `None`: submit a receive.
    pub(crate) fn try_recv(&self, fd: BorrowedFd<'_>, dst: &mut [u8]) -> Option<io::Result<usize>> {
        // SAFETY: `dst` is borrowed mutably for the call: valid for writes of
        // its length.
        unsafe { self.try_recv_raw(fd, dst.as_mut_ptr(), dst.len()) }
    }

    /// `try_recv` into `len` bytes at `dst`, which may be uninitialised (no
    /// `&mut [u8]` is made over them: that would assert they are initialised).
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `len` bytes for the whole call, and
    /// nothing else may access them meanwhile.
    unsafe fn try_recv_raw(
        &self,
        fd: BorrowedFd<'_>,
        dst: *mut u8,
        len: usize,
    ) -> Option<io::Result<usize>> {
        if !self.on || len == 0 || !crate::sys::inline_read::enabled() {
            return None;
        }
        let misses = self.misses.load(Ordering::Relaxed);
        if misses > MISS_STREAK {
            self.misses.store(misses - 1, Ordering::Relaxed);
            return None;
        }
        let run = self.run.load(Ordering::Relaxed);
        if run >= RUN_MAX {
            self.run.store(0, Ordering::Relaxed);
            return None;
        }
        // SAFETY: recv writes at most `len` bytes at `dst`, valid for writes
        // for the call (this function's contract); the descriptor is
        // borrowed, so open.
        let n = unsafe {
            crate::sys::rawcall::recv(fd.as_raw_fd(), dst.cast(), len, libc::MSG_DONTWAIT)
        };
        if n >= 0 {
            self.misses.store(0, Ordering::Relaxed);
            self.run.store(run + 1, Ordering::Relaxed);
            return Some(Ok(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => {
                let next = if misses >= MISS_STREAK {
                    MISS_STREAK + SKIP
                } else {
                    misses + 1
                };
                self.misses.store(next, Ordering::Relaxed);
                self.run.store(0, Ordering::Relaxed);
                None
            }
            Some(libc::EINTR) => None,
            _ => Some(Err(e)),
        }
    }

    /// `try_recv` into the spare capacity of `buf` (its length set to the
    /// count on success).
    pub(crate) fn try_recv_vec(
        &self,
        fd: BorrowedFd<'_>,
        buf: &mut Vec<u8>,
    ) -> Option<io::Result<usize>> {
        buf.clear();
        // The spare capacity is uninitialised: it is handed to `recv` as a raw
        // pointer, never as a `&mut [u8]`.
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` is the Vec's own allocation past its length, valid
        // for writes of `spare.len()` bytes and borrowed mutably for the call.
        let r = unsafe { self.try_recv_raw(fd, spare.as_mut_ptr().cast(), spare.len()) };
        if let Some(Ok(n)) = r {
            // SAFETY: recv initialised the first `n` bytes, at most the spare
            // capacity it was given.
            unsafe { buf.set_len(n) };
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn hits_misses_back_off_and_budget() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut buf = Vec::with_capacity(16);
        let (mut c, d) = std::os::unix::net::UnixStream::pair().unwrap();
        c.write_all(b"waiting").unwrap();
        assert!(
            InlineReads::default()
                .try_recv_vec(d.as_fd(), &mut buf)
                .is_none(),
            "off: never inline"
        );
        let s = InlineReads::new(true);
        // Nothing there: misses, then a back-off with no system call.
        for _ in 0..=MISS_STREAK {
            assert!(s.try_recv_vec(b.as_fd(), &mut buf).is_none());
        }
        a.write_all(b"hello").unwrap();
        for _ in 0..SKIP {
            assert!(s.try_recv_vec(b.as_fd(), &mut buf).is_none(), "backing off");
        }
        // The probe finds the data; the streak resets.
        assert_eq!(s.try_recv_vec(b.as_fd(), &mut buf).unwrap().unwrap(), 5);
        assert_eq!(buf, b"hello");
        // Hits in a row up to the budget, then one goes to the port.
        for _ in 1..RUN_MAX {
            a.write_all(b"x").unwrap();
            assert_eq!(s.try_recv_vec(b.as_fd(), &mut buf).unwrap().unwrap(), 1);
        }
        a.write_all(b"y").unwrap();
        assert!(
            s.try_recv_vec(b.as_fd(), &mut buf).is_none(),
            "the budget is spent"
        );
        assert_eq!(s.try_recv_vec(b.as_fd(), &mut buf).unwrap().unwrap(), 1);
        assert_eq!(buf, b"y");
        // End of stream is a result.
        drop(a);
        assert_eq!(s.try_recv_vec(b.as_fd(), &mut buf).unwrap().unwrap(), 0);
        // So is an error (not a socket).
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(s.try_recv_vec(f.as_fd(), &mut buf).unwrap().is_err());
    }
}

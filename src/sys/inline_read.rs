//! Inline file reads: a buffered read whose data is in the page cache is done
//! on the submitting thread, and its completion queued at once, instead of
//! taking the queued path (a worker thread on epoll, a ring round trip on
//! io_uring).
//!
//! # The rule (how ringport decides between inline and queued file reads)
//!
//! A `read_at` or `readv_at` is tried inline, with one
//! `preadv2(…, RWF_NOWAIT)`, when all of these hold:
//!
//! 1. its descriptor was associated with the port as a **regular file opened
//!    without `O_DIRECT`** (checked once, at `associate`: `fstat` + `F_GETFL`).
//!    A direct read always goes to the device, and a synchronous
//!    `RWF_NOWAIT` direct read would wait for it on the submitting thread;
//! 2. it asks for at most [`INLINE_MAX`] bytes (a larger copy is left to the
//!    queued path, where it does not hold up the submitter);
//! 3. recent inline tries on it have not all missed (below);
//! 4. on io_uring, for a thread that batches its submissions (pool workers,
//!    `batch_submissions(true)`): it is among the first [`BURST_INLINE`] reads
//!    the thread submits before it next calls `get`. The rest of a burst go
//!    to the ring, which takes them all in one `io_uring_enter` — cheaper per
//!    read than a `preadv2` each once there are several (docs/design.md). A
//!    thread that does not batch pays an `io_uring_enter` per queued read, so
//!    its reads are always tried inline; so are epoll's, whose queued path is a
//!    worker hand-off.
//!
//! `RWF_NOWAIT` makes the kernel return `EAGAIN` instead of starting disk I/O
//! or waiting for a page lock. So the outcome is one of:
//!
//! * **all the bytes asked for** (or fewer, at the end of the file): done; the
//!   completion is queued on the submitting thread;
//! * **`EAGAIN`, or part of the data**: a miss. The read takes the queued path
//!   in full (the bytes already copied are read again — a partial result is
//!   never reported, so an inline read returns what a queued one would);
//! * **`EOPNOTSUPP`** (a file system without `RWF_NOWAIT`): the descriptor is
//!   marked not eligible, and every later read on it is queued.
//!
//! **Back-off.** A miss costs one system call on top of the queued read. After
//! [`MISS_STREAK`] misses in a row (a cold file, random reads larger than the
//! cache) the next [`SKIP`] reads go straight to the queued path, then the
//! inline try is probed again; a hit resets the streak. The counts are kept
//! per descriptor and updated racily (a lost update only moves a guess).
//!
//! `RINGPORT_INLINE_READS=off` turns it off (for measurements).
//!
//! # Why
//!
//! A page-cache hit is a copy of a few microseconds at most. On epoll the queued
//! path costs a hand-off to a worker and back (two wake-ups); on io_uring an
//! SQE, its share of an `io_uring_enter`, and a CQE through the shared ring's
//! lock. On this machine fio's plain `pread` loop beats its io_uring engine by
//! about 1.5 × for buffered 4 KiB random reads (shared/reference/measured.md);
//! `ringport bench file` measured the two paths (docs/design.md, "Op priority
//! and inline reads").
//!
//! # The descriptor table
//!
//! One state word per descriptor number below [`MAX_FD`] (128 KiB, zeroed,
//! process-wide: a descriptor's file and flags are the process's, not a
//! port's): made eligible at `associate` when the descriptor qualifies, not
//! eligible when it does not, at `disassociate`, and at an `Op::close` of it.
//! Since every `associate` recomputes it, a number that
//! is reused for another file or a socket gets the right answer when it is
//! associated. (A file closed by the caller without `disassociate` and reused
//! for an `O_DIRECT` file on the same port keeps a stale state: its reads are
//! still correct, but a miss-free direct read then waits on the submitting
//! thread. The port's rule is already to disassociate before closing.)

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;

use crate::op::OpBody;

/// Descriptor numbers at or above this are never read inline.
pub(crate) const MAX_FD: usize = 1 << 16;
/// The largest read tried inline.
pub(crate) const INLINE_MAX: usize = 64 * 1024;
/// Misses in a row that start a back-off.
pub(crate) const MISS_STREAK: u16 = 8;
/// On io_uring, with batched submissions: reads of one burst tried inline.
pub(crate) const BURST_INLINE: u32 = 4;
/// Reads queued without a try during a back-off.
pub(crate) const SKIP: u16 = 256;

/// Each descriptor's state, one word per descriptor number:
///
/// * `0`: not eligible (never associated as a buffered regular file, or no
///   longer);
/// * `1..=MISS_STREAK`: eligible, tried inline; `state - 1` misses in a row;
/// * above `MISS_STREAK`: eligible, backing off: each read is queued without
///   a try and counts the state down; at `MISS_STREAK` the next read probes
///   again (one more miss starts another back-off, a hit resets to 1).
///
/// Invariant: only `associate` turns a `0` into anything else (after checking
/// the file); every other change is a compare-and-swap from a non-zero value,
/// so a `forget` (a store of 0) is never undone by a read racing with it.
static STATE: [AtomicU16; MAX_FD] = [const { AtomicU16::new(0) }; MAX_FD];

pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !super::switched_off("RINGPORT_INLINE_READS"))
}

fn slot(fd: RawFd) -> Option<&'static AtomicU16> {
    usize::try_from(fd).ok().and_then(|i| STATE.get(i))
}

fn set(fd: RawFd, on: bool) {
    if let Some(s) = slot(fd) {
        s.store(u16::from(on), Ordering::Relaxed);
    }
}

/// Moves `fd`'s state from `from` to `to`, unless it changed meanwhile.
fn step(s: &AtomicU16, from: u16, to: u16) {
    let _ = s.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
}

/// A descriptor was associated with a port: records whether its reads may be
/// tried inline.
pub(crate) fn on_associate(fd: RawFd) {
    // SAFETY: `stat` is a plain C struct of integers; all zeroes is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the stat struct we own; a bad fd gives an error.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    let regular = ok && st.st_mode & libc::S_IFMT == libc::S_IFREG;
    let flags = if regular {
        // SAFETY: F_GETFL on a descriptor reads its flags; no memory is passed.
        unsafe { libc::fcntl(fd, libc::F_GETFL) }
    } else {
        -1
    };
    set(fd, regular && flags >= 0 && flags & libc::O_DIRECT == 0);
}

/// A descriptor's association ended, or it is being closed.
pub(crate) fn forget(fd: RawFd) {
    set(fd, false);
}

thread_local! {
    /// Reads this thread tried inline since it last came back for completions.
    static BURST: Cell<u32> = const { Cell::new(0) };
}

/// The calling thread is back for completions (`get`): its next reads start
/// a new burst.
pub(crate) fn new_burst() {
    BURST.with(|b| b.set(0));
}

/// Tries `body` inline if the rule allows (see the module docs). `Some(res)`:
/// it is done with the raw result `res`; `None`: take the queued path (the
/// body is as it was, its buffers' contents aside). `ring_batches`: the
/// queued path would hand this read to an io_uring together with the thread's
/// other submissions (rule 4).
pub(crate) fn try_read(body: &mut OpBody, ring_batches: bool) -> Option<i32> {
    let (fd, offset, mut iov): (RawFd, u64, Vec<libc::iovec>) = match body {
        OpBody::Read { fd, buf, offset } => (
            *fd,
            *offset,
            vec![libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.capacity(),
            }],
        ),
        OpBody::ReadV { fd, bufs, offset } if bufs.len() <= 8 => (
            *fd,
            *offset,
            bufs.iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.capacity(),
                })
                .collect(),
        ),
        _ => return None,
    };
    let want: usize = iov.iter().map(|v| v.iov_len).sum();
    if want == 0 || want > INLINE_MAX || !enabled() {
        return None;
    }
    let st = slot(fd)?;
    let state = st.load(Ordering::Relaxed);
    if state == 0 {
        return None;
    }
    if state > MISS_STREAK {
        step(st, state, state - 1);
        return None;
    }
    let Ok(off) = libc::off_t::try_from(offset) else {
        return None;
    };
    if ring_batches {
        let n = BURST.with(Cell::get);
        if n >= BURST_INLINE {
            return None;
        }
        BURST.with(|b| b.set(n + 1));
    }
    // SAFETY: each iovec covers one buffer's allocation up to its capacity;
    // the op owns the buffers and nothing else touches them during the call.
    let rc = unsafe {
        libc::preadv2(
            fd,
            iov.as_mut_ptr(),
            iov.len() as libc::c_int,
            off,
            libc::RWF_NOWAIT,
        )
    };
    if rc >= 0 && (rc as usize == want || rc == 0 || short_at_eof(fd, offset, rc as usize)) {
        step(st, state, 1);
        return Some(rc.min(i32::MAX as isize) as i32);
    }
    if rc < 0 {
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => {}
            Some(libc::EOPNOTSUPP) => {
                step(st, state, 0);
                return None;
            }
            // Any other error is the read's own (EBADF, EINVAL, EISDIR, EIO…):
            // the queued path would give the same.
            Some(e) if e != libc::EINTR => return Some(-e),
            _ => return None,
        }
    }
    // A miss (EAGAIN, or only part of the data was cached).
    let next = if state >= MISS_STREAK {
        MISS_STREAK + SKIP
    } else {
        state + 1
    };
    step(st, state, next);
    None
}

/// Whether a short read of `n` bytes at `offset` ended at the end of the file
/// (then it is the whole answer, as a queued read would give it).
fn short_at_eof(fd: RawFd, offset: u64, n: usize) -> bool {
    // SAFETY: `stat` is a plain C struct of integers; all zeroes is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the stat struct we own; a bad fd gives an error.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    offset.saturating_add(n as u64) >= st.st_size as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// An unlinked temporary file holding `len` bytes of `byte`.
    fn temp(byte: u8, len: usize) -> std::fs::File {
        let p = std::env::temp_dir().join(format!(
            "ringport-inline-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f.write_all(&vec![byte; len]).unwrap();
        f
    }

    #[test]
    fn a_cached_buffered_read_is_done_inline_and_sockets_never() {
        let f = temp(5, 10_000);
        let fd = f.as_raw_fd();
        let mut body = OpBody::Read {
            fd,
            buf: Vec::with_capacity(4096),
            offset: 0,
        };
        assert_eq!(
            try_read(&mut body, false),
            None,
            "not associated: never inline"
        );
        on_associate(fd);
        assert_eq!(try_read(&mut body, false), Some(4096));
        // At the end of the file: the short read is the whole answer.
        let mut tail = OpBody::Read {
            fd,
            buf: Vec::with_capacity(4096),
            offset: 8192,
        };
        assert_eq!(try_read(&mut tail, false), Some(10_000 - 8192));
        // Too big for inline.
        let mut big = OpBody::Read {
            fd,
            buf: Vec::with_capacity(INLINE_MAX + 1),
            offset: 0,
        };
        assert_eq!(try_read(&mut big, false), None);
        // A batching thread on io_uring: the first reads of a burst only.
        new_burst();
        for _ in 0..BURST_INLINE {
            assert_eq!(try_read(&mut body, true), Some(4096));
        }
        assert_eq!(try_read(&mut body, true), None, "the rest go to the ring");
        assert_eq!(try_read(&mut body, false), Some(4096), "unbatched: inline");
        new_burst();
        assert_eq!(try_read(&mut body, true), Some(4096), "a new burst");
        forget(fd);
        assert_eq!(try_read(&mut body, false), None);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        on_associate(a.as_raw_fd());
        assert_eq!(
            slot(a.as_raw_fd()).unwrap().load(Ordering::Relaxed),
            0,
            "a socket is not a file"
        );
    }

    #[test]
    fn misses_in_a_row_back_off_then_probe_again() {
        let f = temp(1, 32 << 20);
        f.sync_all().unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: advice on a descriptor we own; no memory is passed.
        unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
        on_associate(fd);
        let st = slot(fd).unwrap();
        let mut tried = 0;
        for k in 0..u64::from(MISS_STREAK) {
            let mut body = OpBody::Read {
                fd,
                buf: Vec::with_capacity(4096),
                offset: k * (2 << 20),
            };
            if try_read(&mut body, false).is_some() {
                eprintln!("skipped: the page cache kept the file (no cold reads here)");
                return;
            }
            tried += 1;
        }
        assert_eq!(tried, MISS_STREAK);
        assert_eq!(
            st.load(Ordering::Relaxed),
            MISS_STREAK + SKIP,
            "backing off"
        );
        for _ in 0..SKIP {
            let mut body = OpBody::Read {
                fd,
                buf: Vec::with_capacity(4096),
                offset: 0,
            };
            assert_eq!(try_read(&mut body, false), None, "queued without a try");
        }
        assert_eq!(st.load(Ordering::Relaxed), MISS_STREAK, "probing again");
        // A hit (a page read into the cache just now) resets the streak.
        let mut page = vec![0u8; 4096];
        // SAFETY: reads into a buffer we own, at most its length.
        let n = unsafe { libc::pread(fd, page.as_mut_ptr().cast(), 4096, 0) };
        assert_eq!(n, 4096);
        let mut body = OpBody::Read {
            fd,
            buf: Vec::with_capacity(4096),
            offset: 0,
        };
        assert_eq!(try_read(&mut body, false), Some(4096));
        assert_eq!(st.load(Ordering::Relaxed), 1);
        forget(fd);
    }
}

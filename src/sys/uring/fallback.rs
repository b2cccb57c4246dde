//! Operations this kernel's io_uring lacks the opcode for (`READV`, `WRITEV`,
//! `OPENAT`, `STATX`, `FALLOCATE`; see `probe.rs`), on worker threads.
//!
//! A worker (`sys/workers.rs`, the threads epoll uses for files) runs the
//! blocking system call, leaves the result in the [`Mailbox`] and writes to the
//! mailbox's eventfd. While any such operation is in flight the driver keeps a
//! one-shot `POLL_ADD` on that eventfd in the ring (its CQE tagged
//! `MAILBOX_TAG`), so the write wakes whoever waits in `io_uring_enter`; the
//! reaper then takes every result in the mailbox and re-arms the poll if
//! operations remain on the workers.
//!
//! Cost, against the native opcode: a thread handoff each way, and an eventfd
//! write plus a poll CQE per batch of results. Nothing of it exists until the
//! first such operation is submitted.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use io_uring::{opcode, squeue, types::Fd};

use crate::completion::OpId;
use crate::op::OpBody;
use crate::sync::lock;

use crate::sys::workers::{Sink, Workers};

/// Results the workers left for the driver, and the eventfd that says so.
#[derive(Debug)]
pub(super) struct Mailbox {
    done: Mutex<Vec<(OpId, i32, OpBody)>>,
    efd: OwnedFd,
}

impl Sink for Mailbox {
    fn done(&self, id: OpId, res: i32, body: OpBody) {
        lock(&self.done).push((id, res, body));
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 we own to our eventfd (non-blocking;
        // a full counter means a wake-up is pending anyway).
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// The worker threads of one io_uring driver, and their mailbox.
#[derive(Debug)]
pub(super) struct Fallback {
    pub(super) workers: Workers<Mailbox>,
    mailbox: Arc<Mailbox>,
}

impl Fallback {
    pub(super) fn new() -> io::Result<Fallback> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let mailbox = Arc::new(Mailbox {
            done: Mutex::new(Vec::new()),
            efd,
        });
        let workers = Workers::new(mailbox.clone(), (2 * crate::port::num_cpus()).clamp(2, 16));
        Ok(Fallback { workers, mailbox })
    }

    /// The `POLL_ADD` that fires when a worker leaves a result (tag it).
    pub(super) fn arm(&self) -> squeue::Entry {
        opcode::PollAdd::new(Fd(self.mailbox.efd.as_raw_fd()), libc::POLLIN as u32).build()
    }

    /// Every result in the mailbox. Resets the eventfd first, so a result left
    /// after it is taken makes the eventfd readable again (and a re-armed poll
    /// fire) rather than being missed.
    pub(super) fn take(&self) -> Vec<(OpId, i32, OpBody)> {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a u64 we own from our non-blocking eventfd
        // (EAGAIN when it is already zero).
        unsafe { libc::read(self.mailbox.efd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        std::mem::take(&mut *lock(&self.mailbox.done))
    }
}

//! An operation's [`Priority`] as the kernel's I/O priority (`ioprio`).
//!
//! # The mapping
//!
//! | `Priority` | ioprio | why |
//! |---|---|---|
//! | `High` | best-effort, level 0 | the best a process may ask for without privileges |
//! | `Normal` | none (0) | the thread's own: best-effort, level from its nice value (4 at nice 0) |
//! | `Low` | best-effort, level 7 | the lowest best-effort level |
//!
//! The real-time class needs `CAP_SYS_ADMIN` (or `CAP_SYS_NICE`) and can starve
//! every other process's I/O; the idle class gets the disk only when nobody
//! else wants it, so a `Low` read could wait without bound. Neither matches
//! what the port's lanes promise (`Low` is served late, never starved), so
//! neither is used. Only the `bfq` and `mq-deadline` schedulers act on the
//! value (mq-deadline on the class alone), and only for I/O that reaches the
//! device: a page-cache hit costs the same at every level.
//!
//! # How it reaches the kernel
//!
//! * io_uring: the SQE's `ioprio` field, for `READ`/`WRITE`/`READV`/`WRITEV`
//!   only. For socket opcodes the same field carries flags
//!   (`IORING_RECVSEND_POLL_FIRST`, `IORING_RECV_MULTISHOT`), and other
//!   opcodes reject a non-zero value, so nothing else gets it.
//! * Worker threads (epoll's file operations, io_uring's missing opcodes): the
//!   worker sets its own thread's ioprio (`ioprio_set(IOPRIO_WHO_PROCESS, 0)`,
//!   which names the calling thread) before an operation whose class differs
//!   from the last one it ran, and leaves it set afterwards. Measured on the
//!   2-vCPU VM: `ioprio_set` costs 0.8–1.1 µs (a bare `getppid` 0.5–0.6 µs),
//!   against several µs for the worker hand-off each file operation pays
//!   anyway — so a worker pays it only when the class changes, and one
//!   priority's stream of reads pays it once. (Per-lane workers would avoid
//!   even that, at the price of three pools of threads; not worth it.)

use crate::sched::Priority;

const IOPRIO_CLASS_SHIFT: u16 = 13;
const IOPRIO_CLASS_BE: u16 = 2;
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// The ioprio value for `p` (0: leave the thread's own).
pub(crate) fn ioprio(p: Priority) -> u16 {
    let be = |level: u16| (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | level;
    match p {
        Priority::High => be(0),
        Priority::Normal => 0,
        Priority::Low => be(7),
    }
}

/// The calling thread's ioprio as last set by [`ThreadIoprio::apply`].
#[derive(Debug, Default)]
pub(crate) struct ThreadIoprio {
    current: u16,
}

impl ThreadIoprio {
    /// Gives the calling thread the ioprio of `p`, unless it has it already.
    /// A failure (a kernel without `ioprio_set`, a seccomp filter) is logged
    /// once and otherwise ignored: the operation runs at the thread's own.
    pub(crate) fn apply(&mut self, p: Priority) {
        let want = ioprio(p);
        if want == self.current {
            return;
        }
        // SAFETY: a plain system call with integer arguments; `who` 0 with
        // IOPRIO_WHO_PROCESS names the calling thread.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                libc::c_int::from(want),
            )
        };
        if rc < 0 {
            static LOGGED: std::sync::Once = std::sync::Once::new();
            let e = std::io::Error::last_os_error();
            LOGGED.call_once(|| tracing::warn!("ioprio_set failed, I/O priority not applied: {e}"));
            return;
        }
        self.current = want;
    }
}

/// The ioprio of thread `tid` of this process (`ioprio_get`), for tests.
#[cfg(test)]
pub(crate) fn thread_ioprio(tid: libc::pid_t) -> std::io::Result<u16> {
    // SAFETY: a plain system call with integer arguments.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_best_effort_only() {
        assert_eq!(ioprio(Priority::High), 2 << 13);
        assert_eq!(ioprio(Priority::Normal), 0);
        assert_eq!(ioprio(Priority::Low), (2 << 13) | 7);
    }

    #[test]
    fn a_thread_gets_the_class_and_gives_it_back() {
        std::thread::spawn(|| {
            // SAFETY: gettid takes no arguments.
            let me = unsafe { libc::gettid() };
            let mut t = ThreadIoprio::default();
            t.apply(Priority::Low);
            assert_eq!(thread_ioprio(me).unwrap(), (2 << 13) | 7);
            t.apply(Priority::High);
            assert_eq!(thread_ioprio(me).unwrap(), 2 << 13);
            t.apply(Priority::Normal);
            // Class "none": the kernel reports the nice-derived best-effort level
            // (or 0 on kernels that report the raw value).
            let back = thread_ioprio(me).unwrap();
            assert!(back == 0 || back >> 13 == 2, "{back:#x}");
        })
        .join()
        .unwrap();
    }
}

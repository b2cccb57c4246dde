//! How a request's completion work reaches a thread: io_uring's task-run modes.
//!
//! When a network request's data arrives, io_uring does not post its CQE at
//! once: it queues *task work* to the thread that submitted the request, and the
//! CQE appears when that thread runs it. How the thread is told decides the cost:
//!
//! * **Default** (no flag): the kernel wakes the submitter if it sleeps, and if it
//!   is running user code it interrupts it with a reschedule IPI. Completions are
//!   prompt wherever the submitter is, at the price of an interrupt for every
//!   batch of completions that finds it busy — measured here (perf, 64 echo
//!   connections) as ~6 % of the server's CPU in `irqentry_exit_to_user_mode`.
//! * **`COOP_TASKRUN`** (5.19): the same, minus the IPI (`TWA_SIGNAL_NO_IPI`): a
//!   sleeping submitter is still woken — a pool thread asleep on its condvar
//!   (`futex`, an interruptible sleep) wakes, runs the work, and sleeps again — but
//!   one running user code runs it only at its next kernel entry: a system call,
//!   or an interrupt such as the scheduler tick (4 ms at `HZ=250`). In a busy
//!   server that entry is the thread's next `io_uring_enter`, so the work is
//!   batched for free. Measured (echo matrix, paired A/B): 3–23 % less server CPU per
//!   message at 64 and 1000 connections.
//! * `DEFER_TASKRUN` needs one thread that both submits and reaps; this ring is
//!   shared (see `mod.rs`), so it is not an option.
//!
//! **What COOP costs, and how the port pays it back.** A thread that runs a long
//! handler holds the completion work of the requests it submitted earlier until
//! it next enters the kernel, so another thread waiting for completions could
//! wait up to a tick for them — the head-of-line blocking IOCP exists to avoid.
//! So the poller, while other threads of the port run handlers, waits at most
//! [`KICK_AFTER`] at a time; when such a wait ends with nothing and the ring says
//! task work is pending (`IORING_SQ_TASKRUN`, from `TASKRUN_FLAG`, read before
//! and after the wait), it forces every running thread of the process through a
//! kernel entry with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` — an IPI
//! only to the CPUs that run our threads. On the way back to user mode each
//! thread runs its task work, the CQEs appear, and the poller wakes. While
//! slices end with nothing pending the slice doubles, up to a tick, so a port
//! whose handlers run long without holding anything wakes its poller rarely; an
//! idle port never slices at all. `close` kicks too, between its waits for
//! cancelled operations.
//!
//! What this does not cover (bounded by the scheduler tick, 4 ms here; on a
//! `nohz_full` CPU by the thread's next system call): the flag is one per ring
//! and cleared whenever *any* thread runs its work, so work held by a busy
//! thread can hide behind a clear flag; a slice that ends with other
//! completions does not kick; threads that submit outside a handler — a
//! `Runtime::block_on` thread running a future that computes, a
//! `long_lived_thread()` — are not seen as running handlers; and a poller that
//! began an unsliced wait (no handler out) keeps it when a handler starts.
//! Waking that poller from the thread that starts a handler closes the last
//! case, and was tried (session 5): it made the skewed load's p99 1.27 ×
//! tokio's instead of 1.00 × (paired A/B, 6 rounds each), the extra wake-ups
//! and slices landing on the two CPUs the handlers and the client share. It
//! is not done; a monitor that slices a wait only after handlers have run
//! 250 µs under it would be the cheaper form.
//!
//! COOP is used when the kernel has it and `membarrier` can be registered
//! (seccomp profiles may forbid it); otherwise the default mode, with the reason
//! in `PortStats::task_run`. `RINGPORT_URING_COOP=off` forces the default (for
//! A/B measurements).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long the poller waits, while other threads run handlers, before it looks
/// for completion work held by a running thread (the pool's poll hand-off delay
/// is the same order: completions behind a long handler wait about this long).
pub(crate) const KICK_AFTER: Duration = Duration::from_micros(250);

// membarrier(2) commands (linux/membarrier.h); the libc crate does not name them.
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// The task-run mode of one ring and what it did.
#[derive(Debug)]
pub(crate) struct TaskRun {
    /// `COOP_TASKRUN | TASKRUN_FLAG` is set on the ring.
    pub(crate) coop: bool,
    /// Why this mode (for `PortStats` and `ringport info`).
    pub(crate) why: &'static str,
    /// membarrier kicks sent to release held completion work.
    pub(crate) kicks: AtomicU64,
}

impl TaskRun {
    pub(crate) fn new(coop: bool, why: &'static str) -> TaskRun {
        TaskRun {
            coop,
            why,
            kicks: AtomicU64::new(0),
        }
    }
}

/// Whether to ask for COOP on a new ring: `Ok(())` to try it, or why not.
pub(crate) fn want_coop() -> Result<(), &'static str> {
    match std::env::var("RINGPORT_URING_COOP").as_deref() {
        Ok("off" | "0" | "no") => return Err("RINGPORT_URING_COOP=off"),
        Ok("on" | "1" | "yes") | Err(_) => {}
        Ok(_) => return Err("RINGPORT_URING_COOP not one of on/off; default mode"),
    }
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
        .map_err(|_| "membarrier(REGISTER_PRIVATE_EXPEDITED) refused")?;
    // A filter may allow the registration and refuse the command: try it once.
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
        .map_err(|_| "membarrier(PRIVATE_EXPEDITED) refused")
}

/// One `membarrier(cmd, 0, 0)`.
fn membarrier(cmd: libc::c_int) -> io::Result<()> {
    // SAFETY: membarrier takes plain integers and touches no user memory;
    // registering twice is harmless (the kernel keeps one registration).
    if unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes every thread of this process that runs on another CPU enter the
/// kernel once (an IPI), which runs its pending task work on the way back.
pub(crate) fn kick(tr: &TaskRun) {
    // The process registered for this command before the ring was built with
    // COOP (`want_coop`).
    match membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) {
        Ok(()) => {
            tr.kicks.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!("membarrier: {e}"),
    }
}

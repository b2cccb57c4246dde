//! Handing SQEs to the kernel: pushing under `inner`, the exact-count
//! submit, the one enter that submits and waits, and the submitter thread
//! that submits for threads the port does not own (`sys/thread.rs`). The
//! rules are in the module docs of `uring` ("How many threads share one
//! ring", "Operations of several SQEs").

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, Weak};
use std::time::Duration;

use io_uring::{squeue, types};

use super::Core;
use crate::sync::lock;
use crate::sys::thread_owned;

/// The submitter thread: hands the kernel what threads the port does not own
/// published (see `sys/thread.rs`). Made on first use.
#[derive(Debug, Default)]
pub(crate) struct Kicker {
    /// `pending`: published SQEs wait for the submitter; `stop`: the driver is
    /// going away; `started`: the thread exists (its handle is in `thread`).
    state: Mutex<KickState>,
    cv: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
pub(super) struct KickState {
    pending: bool,
    stop: bool,
    started: bool,
}

impl Kicker {
    pub(super) fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// `Driver::combined` when no submit-and-wait enter is in progress.
pub(super) const NO_COMBINED: u64 = u64::MAX;

/// The submitter thread's loop (see [`Kicker`]).
pub(super) fn submitter(core: Weak<Core>) {
    crate::sys::own_thread();
    loop {
        let Some(strong) = core.upgrade() else { return };
        let k = &strong.kicker;
        let mut st = lock(&k.state);
        while !st.pending && !st.stop {
            // Waiting holds a strong reference only while `pending` is checked;
            // `Driver::drop` sets `stop` and joins, so the wait ends.
            st = k.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.stop {
            return;
        }
        st.pending = false;
        drop(st);
        if let Err(e) = strong.submit_all_here() {
            if !matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) {
                tracing::debug!("io_uring submit (submitter thread): {e}");
            }
        }
    }
}

impl Core {
    /// Asks the submitter thread to hand the kernel what is published (starting
    /// it the first time). Returns false if it cannot: the driver is going away,
    /// or no thread could be made; the caller then submits itself.
    pub(super) fn kick(&self) -> bool {
        let k = &self.kicker;
        let mut st = lock(&k.state);
        if st.stop {
            return false;
        }
        if st.pending {
            return true;
        }
        st.pending = true;
        if st.started {
            drop(st);
            k.cv.notify_one();
            return true;
        }
        let me = self.me.clone();
        let state = std::thread::Builder::new()
            .name("ringport-submit".into())
            .spawn(move || submitter(me));
        match state {
            Ok(t) => {
                st.started = true;
                *lock(&k.thread) = Some(t);
                true
            }
            Err(e) => {
                st.pending = false;
                tracing::warn!("cannot start the io_uring submitter thread: {e}");
                false
            }
        }
    }

    /// Pushes an SQE; the caller holds `inner` (see `push_all_locked`).
    pub(super) fn push_locked(&self, sqe: &squeue::Entry) {
        self.push_all_locked(std::slice::from_ref(sqe));
    }

    /// Pushes the SQEs of one chain together, so the kernel never sees a linked
    /// SQE without the ones it links to; the caller holds `inner`.
    ///
    /// When the SQ is full, a thread the port owns submits to make room; any
    /// other thread must not (the requests would be tied to it, see
    /// `sys/thread.rs`), so it parks the chain in `backlog` and wakes the
    /// submitter. Once anything is parked, every push goes behind it, so SQEs
    /// reach the kernel in the order they were pushed (a cancel never overtakes
    /// the request it cancels).
    pub(super) fn push_all_locked(&self, sqes: &[squeue::Entry]) {
        // (A longer chain could never fit: the SQ holds `MAX_CHAIN` at least.)
        debug_assert!(sqes.len() <= super::MAX_CHAIN as usize);
        loop {
            if self.backlogged.load(Ordering::Relaxed) == 0 {
                // SAFETY: the `inner` mutex is held by our caller, and every
                // SubmissionQueue in this driver is created under it, so no
                // other exists.
                let mut sq = unsafe { self.ring.submission_shared() };
                // SAFETY: every pointer in the entries points into the record
                // stored in `inner.ops` (a heap buffer or a boxed aux value) and
                // stays valid until its CQE is reaped; the record is only
                // removed then.
                if unsafe { sq.push_multiple(sqes) }.is_ok() {
                    self.pushed.fetch_add(sqes.len() as u64, Ordering::Relaxed);
                    return;
                }
            }
            if !thread_owned() {
                lock(&self.backlog).push_back(sqes.to_vec());
                self.backlogged.fetch_add(1, Ordering::Relaxed);
                if !self.kick() {
                    // No submitter (the driver is going away): submit here.
                    let _ = self.submit_locked();
                }
                return;
            }
            // SQ full (or a backlog ahead): hand what is there to the kernel.
            if let Err(e) = self.submit_locked() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!("io_uring_enter failed while the SQ was full: {e}");
                }
            }
        }
    }

    /// Moves parked chains into the SQ while they fit; the caller holds
    /// `inner`. Returns true if none is left parked.
    pub(super) fn drain_backlog_locked(&self) -> bool {
        if self.backlogged.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let mut bl = lock(&self.backlog);
        // SAFETY: as in `push_all_locked`.
        let mut sq = unsafe { self.ring.submission_shared() };
        while let Some(chain) = bl.front() {
            // SAFETY: as in `push_all_locked`: the records the entries point
            // into are in `inner.ops` until their CQEs are reaped.
            if unsafe { sq.push_multiple(chain) }.is_err() {
                break;
            }
            self.pushed.fetch_add(chain.len() as u64, Ordering::Relaxed);
            bl.pop_front();
            self.backlogged.fetch_sub(1, Ordering::Relaxed);
        }
        bl.is_empty()
    }

    /// Hands every published SQE to the kernel (`io_uring_enter` without a
    /// wait) — through the submitter thread if the port does not own this one.
    pub(super) fn submit_all(&self) -> io::Result<usize> {
        if !thread_owned() && self.kick() {
            return Ok(0);
        }
        self.submit_all_here()
    }

    /// Hands the kernel every SQE pushed so far and returns once it has
    /// taken them all (for `disassociate`, whose caller closes the descriptor
    /// next). A thread the port does not own waits for the submitter thread,
    /// at most a second (an `EBUSY` ring can hold SQEs back longer; then it
    /// returns all the same).
    pub(super) fn submit_before_return(&self) {
        if thread_owned() {
            if let Err(e) = self.submit_all_here() {
                tracing::debug!("io_uring submit: {e}");
            }
            return;
        }
        let ticket = {
            let _inner = lock(&self.inner);
            // (What waits in the backlog is pushed, in order, before anything
            // pushed after it.)
            let waiting: usize = match self.backlogged.load(Ordering::Relaxed) {
                0 => 0,
                _ => lock(&self.backlog).iter().map(Vec::len).sum(),
            };
            self.pushed.load(Ordering::Relaxed) + waiting as u64
        };
        if !self.kick() {
            if let Err(e) = self.submit_all_here() {
                tracing::debug!("io_uring submit: {e}");
            }
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            {
                let _inner = lock(&self.inner);
                // SAFETY: the inner mutex is held; SubmissionQueues are only created under it.
                let len = unsafe { self.ring.submission_shared() }.len() as u64;
                if self.pushed.load(Ordering::Relaxed) - len >= ticket {
                    return;
                }
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!("io_uring: the submitter thread has not submitted in 1 s");
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// `submit_all` from this thread, whatever it is.
    pub(super) fn submit_all_here(&self) -> io::Result<usize> {
        let inner = lock(&self.inner);
        let r = self.submit_locked();
        drop(inner);
        r
    }

    /// Submits exactly the SQEs published now; the caller holds `inner`.
    ///
    /// The count must be exact. Too small (a count read earlier, after which
    /// another thread consumed SQEs and more were published) can stop the kernel
    /// in the middle of a chain of linked SQEs, whose head then runs unlinked. Too
    /// large (the SQ's capacity) makes the kernel skip the wait of an enter with
    /// `GETEVENTS`: it returns at once when it submitted fewer than asked, so a
    /// poller would spin (found: one `io_uring_enter` per echoed message). So every
    /// enter that submits does so here, under `inner`, which also guards every
    /// push: the count is exact and covers only whole chains — provided no
    /// other enter moves the SQ head between the count and the kernel, which is
    /// why this first waits for a submit-and-wait `enter` that took its count
    /// but has not reached the kernel yet (a window of a few instructions,
    /// unless that thread was preempted; see `enter`).
    pub(super) fn submit_locked(&self) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let drained = self.drain_backlog_locked();
            total += self.submit_published_locked()?;
            if drained {
                return Ok(total);
            }
        }
    }

    /// One enter submitting exactly the SQEs published now (see `submit_locked`).
    pub(super) fn submit_published_locked(&self) -> io::Result<usize> {
        let mut spins = 0u32;
        let n = loop {
            // SAFETY: the caller holds `inner`; SubmissionQueues are only created under it.
            let len = unsafe { self.ring.submission_shared() }.len() as u64;
            let pending = self.combined.load(Ordering::Acquire);
            // `pushed` is stable: it only changes under `inner`, which we hold.
            let consumed = self.pushed.load(Ordering::Relaxed) - len;
            if pending == NO_COMBINED || consumed >= pending {
                break len as u32;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        };
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: io_uring_enter on our ring with no argument; the SQEs it submits
        // were pushed under `inner` with every pointer they hold kept alive by
        // their records (see `push_locked`).
        unsafe { self.ring.submitter().enter::<libc::sigset_t>(n, 0, 0, None) }
    }

    /// Submits what is published, then waits (with an optional timeout) until
    /// `want` completions are there — in one `io_uring_enter` when it can.
    ///
    /// The count it submits is taken under `inner` and the call made after
    /// releasing it (it may sleep). The kernel returns at once, without waiting,
    /// when it submits fewer SQEs than asked, and a count that another thread's
    /// enter made stale could end inside a chain; so while this call is between
    /// its count and the kernel, `combined` holds it and `submit_locked` lets no
    /// other thread submit. Nobody else moves the SQ head meanwhile: the kernel
    /// finds at least the counted SQEs, starting at the same head, and takes
    /// exactly those (whole chains). Only one thread at a time does this; any
    /// other submits with `submit_locked` and waits submitting nothing.
    ///
    /// `GETEVENTS` is always set: with `want == 0` it does not wait, but it
    /// makes the kernel move CQEs it kept aside when the CQ was full (`NODROP`)
    /// back into the CQ, so a non-blocking poll sees them too.
    pub(super) fn enter(&self, want: u32, timeout: Option<Duration>) -> io::Result<usize> {
        let inner = lock(&self.inner);
        let owned = thread_owned();
        if owned && !self.drain_backlog_locked() {
            // More parked than fits: submit in rounds first.
            if let Err(e) = self.submit_locked() {
                if !matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) {
                    return Err(e);
                }
            }
        }
        // SAFETY: `inner` is held; SubmissionQueues are only created under it.
        let n = unsafe { self.ring.submission_shared() }.len() as u32;
        let backlog = self.backlogged.load(Ordering::Relaxed) > 0;
        let combine = owned && n > 0 && self.combined.load(Ordering::Acquire) == NO_COMBINED;
        let to_submit = if combine {
            self.combined
                .store(self.pushed.load(Ordering::Relaxed), Ordering::Release);
            n
        } else if (n > 0 || backlog) && (owned || !self.kick()) {
            match self.submit_locked() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
            0
        } else {
            0
        };
        drop(inner);
        let r = self.enter_raw(to_submit, want, timeout);
        if combine {
            self.combined.store(NO_COMBINED, Ordering::Release);
        }
        r
    }

    /// One `io_uring_enter(to_submit, want, GETEVENTS)`, with a timeout if given.
    pub(super) fn enter_raw(
        &self,
        to_submit: u32,
        want: u32,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let getevents = io_uring::EnterFlags::GETEVENTS.bits();
        match timeout {
            // SAFETY: io_uring_enter on our ring; the SQEs it may submit were
            // pushed under `inner` with every pointer they hold kept alive by
            // their records (see `push_locked`), and `to_submit` is exact (`enter`).
            None => unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(to_submit, want, getevents, None)
            },
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                // SAFETY: as above; `args` (and the timespec it points to) is
                // the `io_uring_getevents_arg` EXT_ARG expects, alive for the call.
                unsafe {
                    self.ring.submitter().enter(
                        to_submit,
                        want,
                        getevents | io_uring::EnterFlags::EXT_ARG.bits(),
                        Some(&args),
                    )
                }
            }
        }
    }

    pub(crate) fn has_unflushed(&self) -> bool {
        let inner = lock(&self.inner);
        // SAFETY: the inner mutex is held; SubmissionQueues are only created under it.
        let n = unsafe { self.ring.submission_shared() }.len();
        let parked = self.backlogged.load(Ordering::Relaxed);
        drop(inner);
        n > 0 || parked > 0
    }

    /// Submits every pushed SQE (one `io_uring_enter`, only if there are any).
    pub(crate) fn flush(&self) {
        if self.has_unflushed() {
            if let Err(e) = self.submit_all() {
                tracing::debug!("io_uring submit: {e}");
            }
        }
    }
}

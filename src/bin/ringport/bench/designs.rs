//! The alternative multi-thread design, measured against the shipped one
//! (`docs/design.md`): a dedicated reactor thread owns the ring, set up with
//! `SINGLE_ISSUER | DEFER_TASKRUN`; worker threads hand it submissions through a
//! locked queue plus an eventfd doorbell, and take completions from a locked
//! queue plus a condvar. Only what the NOP benchmark needs is built.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

use super::nop::{measure, Sample};

const DOORBELL: u64 = u64::MAX;

struct Shared {
    subs: Mutex<Vec<u64>>,
    reactor_sleeping: AtomicBool,
    doorbell: OwnedFd,
    done: Mutex<VecDeque<u64>>,
    done_cv: Condvar,
    stop: AtomicBool,
    count: AtomicU64,
}

impl Shared {
    fn submit(&self, ud: u64) {
        self.subs.lock().unwrap().push(ud);
        if self.reactor_sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe { libc::write(self.doorbell.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

pub fn reactor_nop(
    depth: usize,
    duration: f64,
    workers: usize,
) -> Result<Sample, Box<dyn std::error::Error>> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let shared = Arc::new(Shared {
        subs: Mutex::new(Vec::new()),
        reactor_sleeping: AtomicBool::new(false),
        // SAFETY: efd is a fresh descriptor nobody else owns.
        doorbell: unsafe { OwnedFd::from_raw_fd(efd) },
        done: Mutex::new(VecDeque::new()),
        done_cv: Condvar::new(),
        stop: AtomicBool::new(false),
        count: AtomicU64::new(0),
    });
    let sh = shared.clone();
    let reactor = thread::spawn(move || reactor_loop(&sh));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let sh = shared.clone();
        handles.push(thread::spawn(move || loop {
            let ud = {
                let mut q = sh.done.lock().unwrap();
                loop {
                    if sh.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(ud) = q.pop_front() {
                        break ud;
                    }
                    q = sh.done_cv.wait(q).unwrap();
                }
            };
            sh.count.fetch_add(1, Ordering::Relaxed);
            sh.submit(ud);
        }));
    }
    let s = measure(duration, |deadline| {
        for i in 0..depth {
            shared.submit(i as u64);
        }
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
        shared.count.load(Ordering::Relaxed)
    });
    shared.stop.store(true, Ordering::SeqCst);
    shared.done_cv.notify_all();
    shared.submit(u64::MAX - 1);
    for h in handles {
        let _ = h.join();
    }
    let _ = reactor.join();
    Ok(s)
}

fn reactor_loop(sh: &Shared) {
    let mut ring = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(256)
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reactor ring: {e}");
            return;
        }
    };
    let mut efd_buf = [0u8; 8];
    let arm = |ring: &mut IoUring, buf: &mut [u8; 8]| {
        let sqe = opcode::Read::new(types::Fd(sh.doorbell.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .user_data(DOORBELL);
        // SAFETY: `buf` lives on this thread's stack for the whole loop, which only
        // ends after the ring (and so the request) is dropped.
        unsafe { ring.submission().push(&sqe).expect("sq room") };
    };
    arm(&mut ring, &mut efd_buf);
    let mut batch = Vec::new();
    while !sh.stop.load(Ordering::SeqCst) {
        std::mem::swap(&mut batch, &mut *sh.subs.lock().unwrap());
        if batch.is_empty() {
            sh.reactor_sleeping.store(true, Ordering::SeqCst);
            if sh.subs.lock().unwrap().is_empty() {
                let _ = ring.submit_and_wait(1);
            }
            sh.reactor_sleeping.store(false, Ordering::SeqCst);
        } else {
            for ud in batch.drain(..) {
                let sqe = opcode::Nop::new().build().user_data(ud);
                // SAFETY: a NOP points at no memory.
                while unsafe { ring.submission().push(&sqe) }.is_err() {
                    let _ = ring.submit();
                }
            }
            let _ = ring.submit_and_wait(0);
        }
        let mut rearm = false;
        let mut done = Vec::new();
        for cqe in ring.completion() {
            if cqe.user_data() == DOORBELL {
                rearm = true;
            } else {
                done.push(cqe.user_data());
            }
        }
        if rearm {
            arm(&mut ring, &mut efd_buf);
        }
        if !done.is_empty() {
            let n = done.len();
            sh.done.lock().unwrap().extend(done);
            for _ in 0..n {
                sh.done_cv.notify_one();
            }
        }
    }
    drop(ring);
}

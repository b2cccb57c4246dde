//! Blocking worker threads for operations a backend cannot wait for: file
//! operations on epoll (which cannot wait on regular files), and on io_uring
//! the operations a kernel lacks the opcode for. Workers start on demand, up to
//! a fixed number; each runs one `pread`/`pwrite`/`preadv`/`pwritev`/`fsync`/
//! `openat`/`statx`/`fallocate` at a time and hands the result to the backend's
//! [`Sink`], which queues the completion and wakes the poller. A worker runs
//! each operation at its priority's I/O class (`ioprio.rs`).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};

use crate::completion::OpId;
use crate::op::OpBody;
use crate::sched::Priority;
use crate::sync::lock;

use super::ioprio::ThreadIoprio;

/// Where a backend takes the results of its worker threads.
pub(crate) trait Sink: Send + Sync + std::fmt::Debug + 'static {
    /// Operation `id` ended with the raw result `res` (`-errno` on failure);
    /// `body` is handed back with its buffers. Called on a worker thread (or by
    /// `push`/`shutdown` for a job that never ran), with no lock of the pool held.
    fn done(&self, id: OpId, res: i32, body: OpBody);
}

/// Workers kept however long they idle; the others leave after [`IDLE_EXIT`].
const KEEP: usize = 2;
/// How long a worker beyond the first [`KEEP`] waits for work before it leaves.
const IDLE_EXIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<(OpId, OpBody, Priority)>,
    threads: usize,
    idle: usize,
    stop: bool,
}

#[derive(Debug)]
struct Pool {
    st: Mutex<State>,
    cv: Condvar,
}

/// The worker threads of one driver, handing results to `S`.
#[derive(Debug)]
pub(crate) struct Workers<S: Sink> {
    pool: Arc<Pool>,
    shared: Arc<S>,
    max: usize,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl<S: Sink> Workers<S> {
    pub(crate) fn new(shared: Arc<S>, max: usize) -> Workers<S> {
        let pool = Arc::new(Pool {
            st: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        Workers {
            pool,
            shared,
            max,
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Queues a file operation; starts a worker if none is idle.
    pub(crate) fn push(&self, id: OpId, body: OpBody, prio: Priority) {
        let mut st = lock(&self.pool.st);
        if st.stop {
            drop(st);
            self.shared.done(id, -libc::ECANCELED, body);
            return;
        }
        st.jobs.push_back((id, body, prio));
        if st.idle == 0 && st.threads < self.max {
            st.threads += 1;
            let (pool, shared) = (self.pool.clone(), self.shared.clone());
            match thread::Builder::new()
                .name("ringport-worker".into())
                .spawn(move || work(&pool, &*shared))
            {
                Ok(h) => {
                    let mut handles = lock(&self.handles);
                    // (workers that left on their own: nothing to join)
                    handles.retain(|h| !h.is_finished());
                    handles.push(h);
                }
                Err(e) => {
                    st.threads -= 1;
                    tracing::error!("cannot start a file worker: {e}");
                }
            }
        }
        drop(st);
        self.pool.cv.notify_one();
    }

    /// Takes back a queued (not yet started) operation's body.
    pub(crate) fn try_cancel(&self, id: OpId) -> Option<OpBody> {
        let mut st = lock(&self.pool.st);
        let i = st.jobs.iter().position(|(j, _, _)| *j == id)?;
        st.jobs.remove(i).map(|(_, b, _)| b)
    }

    /// Cancels queued jobs (completing them with `ECANCELED`), lets running ones
    /// finish, and joins the workers.
    pub(crate) fn shutdown(&self) {
        let jobs: Vec<(OpId, OpBody, Priority)> = {
            let mut st = lock(&self.pool.st);
            st.stop = true;
            st.jobs.drain(..).collect()
        };
        for (id, body, _) in jobs {
            self.shared.done(id, -libc::ECANCELED, body);
        }
        self.pool.cv.notify_all();
        for h in lock(&self.handles).drain(..) {
            let _ = h.join();
        }
    }
}

fn work<S: Sink>(pool: &Pool, shared: &S) {
    let mut ioprio = ThreadIoprio::default();
    loop {
        let (id, mut body, prio) = {
            let mut st = lock(&pool.st);
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    break job;
                }
                if st.stop {
                    return;
                }
                st.idle += 1;
                let (g, waited) = pool
                    .cv
                    .wait_timeout(st, IDLE_EXIT)
                    .unwrap_or_else(|p| p.into_inner());
                st = g;
                st.idle -= 1;
                // A burst may have started many workers: the ones beyond the
                // first KEEP leave after IDLE_EXIT without work.
                if waited.timed_out() && st.jobs.is_empty() && !st.stop && st.threads > KEEP {
                    st.threads -= 1;
                    return;
                }
            }
        };
        ioprio.apply(prio);
        let res = run(&mut body);
        shared.done(id, res, body);
    }
}

/// `pread(2)` of up to `cap` bytes into `ptr`.
///
/// # Safety
/// `ptr` must be valid for writes of `cap` bytes for the whole call.
unsafe fn pread_into(fd: i32, ptr: *mut u8, cap: usize, offset: u64) -> isize {
    // SAFETY: the caller promises `ptr..ptr + cap` is writable memory it owns.
    unsafe { libc::pread(fd, ptr.cast(), cap, offset as libc::off_t) }
}

/// `pwrite(2)` of all of `bytes`.
fn pwrite_from(fd: i32, bytes: &[u8], offset: u64) -> isize {
    // SAFETY: reads `bytes.len()` initialised bytes of a live slice.
    unsafe {
        libc::pwrite(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            offset as libc::off_t,
        )
    }
}

/// Runs one operation to completion, blocking; returns the raw result.
fn run(body: &mut OpBody) -> i32 {
    loop {
        let rc: isize = match body {
            OpBody::Read { fd, buf, offset } => {
                // SAFETY: the buffer's allocation holds `capacity` bytes and
                // this job owns it.
                unsafe { pread_into(*fd, buf.as_mut_ptr(), buf.capacity(), *offset) }
            }
            OpBody::Write {
                fd,
                buf,
                pos,
                offset,
            } => pwrite_from(*fd, &buf[*pos..], *offset),
            OpBody::ReadFixed { fd, buf, offset } => {
                // SAFETY: the leased buffer holds `capacity` bytes and this job
                // owns the lease.
                unsafe { pread_into(*fd, buf.as_mut_ptr(), buf.capacity(), *offset) }
            }
            OpBody::WriteFixed {
                fd,
                buf,
                pos,
                offset,
            } => pwrite_from(*fd, &buf[*pos..], *offset),
            OpBody::ReadV { fd, bufs, offset } => {
                let iov: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.capacity(),
                    })
                    .collect();
                // SAFETY: each iovec covers one buffer's allocation, up to its
                // capacity; the kernel writes at most that into each, and this
                // job owns the buffers.
                unsafe {
                    libc::preadv(
                        *fd,
                        iov.as_ptr(),
                        iov.len().min(i32::MAX as usize) as i32,
                        *offset as libc::off_t,
                    )
                }
            }
            OpBody::WriteV { fd, bufs, offset } => {
                // `*mut` only because `iovec` serves both directions: the
                // kernel reads through these.
                let iov: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    })
                    .collect();
                // SAFETY: each iovec covers one buffer's initialised bytes,
                // which this job owns; the kernel only reads them.
                unsafe {
                    libc::pwritev(
                        *fd,
                        iov.as_ptr(),
                        iov.len().min(i32::MAX as usize) as i32,
                        *offset as libc::off_t,
                    )
                }
            }
            OpBody::OpenAt {
                dir,
                path,
                flags,
                mode,
            } => {
                let Some(path) = path else {
                    return -libc::EINVAL;
                };
                // SAFETY: `path` is a NUL-terminated string this job owns; the
                // new descriptor (the result) is owned by the completion.
                (unsafe { libc::openat(*dir, path.as_ptr(), *flags, *mode) }) as isize
            }
            OpBody::Statx {
                dir,
                path,
                flags,
                mask,
                out,
            } => {
                let Some(path) = path else {
                    return -libc::EINVAL;
                };
                // SAFETY: `path` is a NUL-terminated string and `out` room for
                // one `statx`, both owned by this job; the kernel writes only
                // into `out`.
                (unsafe { libc::statx(*dir, path.as_ptr(), *flags, *mask, out.as_mut_ptr()) })
                    as isize
            }
            OpBody::Fallocate {
                fd,
                mode,
                offset,
                len,
            } => {
                let (Ok(offset), Ok(len)) = (i64::try_from(*offset), i64::try_from(*len)) else {
                    return -libc::EINVAL;
                };
                // SAFETY: a plain system call on a descriptor; no memory is passed.
                (unsafe { libc::fallocate(*fd, *mode, offset, len) }) as isize
            }
            OpBody::Fsync { fd, datasync } => {
                let sync = if *datasync {
                    libc::fdatasync
                } else {
                    libc::fsync
                };
                // SAFETY: a plain syscall on a descriptor; no memory is passed.
                (unsafe { sync(*fd) }) as isize
            }
            _ => return -libc::EINVAL,
        };
        if rc >= 0 {
            return rc.min(i32::MAX as isize) as i32;
        }
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if e != libc::EINTR {
            return -e;
        }
    }
}

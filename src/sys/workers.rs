//! Blocking worker threads for operations a backend cannot wait for: file
//! operations on epoll (which cannot wait on regular files), and on io_uring
//! the operations a kernel lacks the opcode for. Workers start on demand, up to
//! a fixed number; each runs one `pread`/`pwrite`/`preadv`/`pwritev`/`fsync`/
//! `openat`/`statx`/`fallocate` at a time and hands the result to the backend's
//! [`Sink`], which queues the completion and wakes the poller. A worker runs
//! each operation at its priority's I/O class (`ioprio.rs`).

use std::collections::VecDeque;
use std::os::fd::RawFd;
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

/// How long `shutdown` waits for running jobs before it leaves them behind.
const JOIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Workers kept however long they idle; the others leave after [`IDLE_EXIT`].
const KEEP: usize = 2;
/// How long a worker beyond the first [`KEEP`] waits for work before it leaves.
const IDLE_EXIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A job: the operation, its priority, and the caller's descriptor number
/// its body held before `push` put a duplicate in its place (`own_fd`).
type Job = (OpId, OpBody, Priority, Option<RawFd>);

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Jobs a worker is running now.
    running: Vec<OpId>,
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

    /// Queues a file operation; starts a worker if the idle ones are too
    /// few for the jobs waiting.
    ///
    /// The job runs on a duplicate of the operation's descriptor, made here
    /// (`own_fd`): the caller may close its own — `Op::close` does at once on
    /// epoll — and the number go to another file while the job waits for a
    /// worker, and a `pwrite` on the number would then land in that file.
    /// (io_uring holds a reference to the file from the submit on.)
    pub(crate) fn push(&self, id: OpId, body: OpBody, prio: Priority) {
        let mut body = body;
        let orig = match own_fd(&mut body) {
            Ok(orig) => orig,
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EMFILE);
                self.shared.done(id, -errno, body);
                return;
            }
        };
        let mut st = lock(&self.pool.st);
        if st.stop {
            drop(st);
            give_back_fd(&mut body, orig);
            self.shared.done(id, -libc::ECANCELED, body);
            return;
        }
        st.jobs.push_back((id, body, prio, orig));
        // More jobs waiting than idle workers to take them (an idle worker
        // that was woken counts as idle until it takes the lock again, so
        // `idle == 0` alone left a job behind blocked ones while threads
        // could still start: a review, session 17).
        if st.jobs.len() > st.idle && st.threads < self.max {
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
                    if st.threads == 0 {
                        // Nobody would ever run it: it fails instead.
                        if let Some((id, mut body, _, orig)) = st.jobs.pop_back() {
                            drop(st);
                            give_back_fd(&mut body, orig);
                            let errno = e.raw_os_error().unwrap_or(libc::EAGAIN);
                            self.shared.done(id, -errno, body);
                            return;
                        }
                    }
                }
            }
        }
        drop(st);
        self.pool.cv.notify_one();
    }

    /// Takes back a queued (not yet started) operation's body.
    pub(crate) fn try_cancel(&self, id: OpId) -> Option<OpBody> {
        let mut st = lock(&self.pool.st);
        let i = st.jobs.iter().position(|(j, ..)| *j == id)?;
        let (_, mut body, _, orig) = st.jobs.remove(i)?;
        drop(st);
        give_back_fd(&mut body, orig);
        Some(body)
    }

    /// Cancels queued jobs (completing them with `ECANCELED`), lets running ones
    /// finish, and joins the workers — for at most [`JOIN_LIMIT`]: a job
    /// blocked in the kernel (an `open` of a FIFO nobody writes to, a file on
    /// a hung network mount) cannot be interrupted, and must not hang the
    /// port's close. Its worker is left to finish on its own: it owns the
    /// job's buffers and descriptor, and its result goes to a sink nobody
    /// reads any more.
    ///
    /// Returns the jobs left running: their driver forgets them (so its close
    /// does not wait for them), and their late results find no record.
    pub(crate) fn shutdown(&self) -> Vec<OpId> {
        let jobs: Vec<Job> = {
            let mut st = lock(&self.pool.st);
            st.stop = true;
            st.jobs.drain(..).collect()
        };
        for (id, mut body, _, orig) in jobs {
            give_back_fd(&mut body, orig);
            self.shared.done(id, -libc::ECANCELED, body);
        }
        self.pool.cv.notify_all();
        let deadline = std::time::Instant::now() + JOIN_LIMIT;
        for h in lock(&self.handles).drain(..) {
            while !h.is_finished() && std::time::Instant::now() < deadline {
                thread::sleep(std::time::Duration::from_millis(1));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!(
                    "ringport: a file operation is still blocked in the kernel at close; \
                     its worker thread is left to finish it"
                );
            }
        }
        lock(&self.pool.st).running.clone()
    }
}

fn work<S: Sink>(pool: &Pool, shared: &S) {
    let mut ioprio = ThreadIoprio::default();
    loop {
        let (id, mut body, prio, orig) = {
            let mut st = lock(&pool.st);
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    st.running.push(job.0);
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
        give_back_fd(&mut body, orig);
        shared.done(id, res, body);
        let mut st = lock(&pool.st);
        if let Some(i) = st.running.iter().position(|&r| r == id) {
            st.running.swap_remove(i);
        }
    }
}

/// `openat` as io_uring's `OPENAT` makes it, so both backends agree: unless
/// it creates, truncates, makes a temporary file or opens a path only
/// (`O_PATH`), a first attempt with
/// `O_NONBLOCK` (then a FIFO opens for reading at once and fails `ENXIO` for
/// writing with no reader, where a plain open would wait for the other end
/// for ever), again without it if that says `EAGAIN`; the flag is cleared
/// on the new descriptor unless the caller asked for it. Returns the
/// descriptor or `-errno`.
fn open_like_io_uring(dir: RawFd, path: &std::ffi::CStr, flags: i32, mode: u32) -> i32 {
    let open = |flags| {
        // SAFETY: `path` is a NUL-terminated string the job owns; the new
        // descriptor (the result) is owned by the completion.
        let fd = unsafe { libc::openat(dir, path.as_ptr(), flags, mode) };
        match fd {
            fd if fd >= 0 => fd,
            _ => -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        }
    };
    // (`O_TMPFILE` holds `O_DIRECTORY`'s bit: only all of it is a temporary
    // file. An `O_PATH` descriptor opens nothing that could block, and takes
    // no `F_SETFL`.)
    let blocking_only = flags & (libc::O_CREAT | libc::O_TRUNC) != 0
        || flags & libc::O_TMPFILE == libc::O_TMPFILE
        || flags & libc::O_PATH != 0;
    if blocking_only || flags & libc::O_NONBLOCK != 0 {
        return open(flags);
    }
    match open(flags | libc::O_NONBLOCK) {
        fd if fd == -libc::EAGAIN => open(flags),
        fd if fd >= 0 => {
            if let Err(e) = crate::sys::set_nonblocking_fd(fd, false) {
                // SAFETY: closes the descriptor just opened, which no one
                // else has seen.
                unsafe { libc::close(fd) };
                return -e.raw_os_error().unwrap_or(libc::EIO);
            }
            fd
        }
        e => e,
    }
}

/// The descriptor a worker job acts on, if it names one (`OpenAt` and
/// `Statx` name a directory, `AT_FDCWD` for none).
fn job_fd(body: &mut OpBody) -> Option<&mut RawFd> {
    match body {
        OpBody::Read { fd, .. }
        | OpBody::Write { fd, .. }
        | OpBody::ReadFixed { fd, .. }
        | OpBody::WriteFixed { fd, .. }
        | OpBody::ReadV { fd, .. }
        | OpBody::WriteV { fd, .. }
        | OpBody::Fsync { fd, .. }
        | OpBody::Fallocate { fd, .. }
        | OpBody::SendFile { sock: fd, .. } => Some(fd),
        OpBody::OpenAt { dir, .. } | OpBody::Statx { dir, .. } if *dir != libc::AT_FDCWD => {
            Some(dir)
        }
        _ => None,
    }
}

/// Puts a duplicate of the job's descriptor (close-on-exec) in its body;
/// returns the caller's number, for `give_back_fd`.
fn own_fd(body: &mut OpBody) -> std::io::Result<Option<RawFd>> {
    let Some(fd) = job_fd(body) else {
        return Ok(None);
    };
    if *fd < 0 {
        return Ok(None); // not a descriptor: the call itself says EBADF
    }
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor (or fails); nothing
    // else is touched. A number the caller does not hold open fails EBADF.
    let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        let e = std::io::Error::last_os_error();
        // Out of descriptors: the job runs on the caller's number, as it
        // did before duplicates (exposed again to a close racing it) —
        // failing file operations exactly when a server is short of
        // descriptors would be worse.
        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(std::mem::replace(fd, dup)))
}

/// Closes the job's duplicate and puts the caller's number back.
fn give_back_fd(body: &mut OpBody, orig: Option<RawFd>) {
    if let (Some(orig), Some(fd)) = (orig, job_fd(body)) {
        // SAFETY: `*fd` is the duplicate `own_fd` made, owned by this job
        // alone and closed once, here.
        unsafe { libc::close(*fd) };
        *fd = orig;
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
                open_like_io_uring(*dir, path, *flags, *mode) as isize
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
            // (epoll: into anything but a registered socket; it may block.)
            OpBody::SendFile {
                sock,
                file,
                offset,
                len,
            } => crate::sys::epoll::send_file_once(*sock, *file, *offset, *len),
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

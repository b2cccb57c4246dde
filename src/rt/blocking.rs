//! The threads `spawn_blocking` runs closures on: started on demand up to a cap,
//! kept 10 s after their last job, never counted by the port's concurrency limit.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::sync::lock;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why [`BlockingPool::spawn`] did not take a job.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The runtime has shut down.
    Stopped,
    /// No thread runs jobs and none could be started.
    NoThread(io::Error),
}

const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub(crate) struct BlockingPool {
    inner: Arc<Inner>,
}

struct Inner {
    st: Mutex<St>,
    cv: Condvar,
    max: usize,
}

/// Invariant: `threads` counts live workers, `idle` those waiting on `cv`; every
/// queued job is taken by a worker before that worker waits or exits (a worker
/// only waits, or times out, with the queue empty). The one gap: a thread that
/// could not be started leaves the jobs other callers queued for it (their
/// `spawn` said yes, counting on it) to the next thread a `spawn` starts.
struct St {
    /// Jobs with their numbers (`next` is the next one's), so a job whose
    /// thread could not start is taken back, not another caller's.
    queue: VecDeque<(u64, Job)>,
    next: u64,
    threads: usize,
    idle: usize,
    stop: bool,
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner.st);
        f.debug_struct("BlockingPool")
            .field("threads", &st.threads)
            .field("idle", &st.idle)
            .field("queued", &st.queue.len())
            .finish()
    }
}

impl BlockingPool {
    pub(crate) fn new(max: usize) -> Self {
        BlockingPool {
            inner: Arc::new(Inner {
                st: Mutex::new(St {
                    queue: VecDeque::new(),
                    next: 0,
                    threads: 0,
                    idle: 0,
                    stop: false,
                }),
                cv: Condvar::new(),
                max: max.max(1),
            }),
        }
    }

    /// Queues `job`; starts a thread if none is idle and the cap allows.
    pub(crate) fn spawn(&self, job: Job) -> Result<(), Refused> {
        let mut st = lock(&self.inner.st);
        if st.stop {
            return Err(Refused::Stopped);
        }
        let seq = st.next;
        st.next += 1;
        st.queue.push_back((seq, job));
        if st.idle >= st.queue.len() {
            drop(st);
            self.inner.cv.notify_one();
            return Ok(());
        }
        if st.threads >= self.inner.max {
            return Ok(()); // a busy thread takes it when free
        }
        st.threads += 1;
        drop(st);
        let inner = self.inner.clone();
        let started = thread::Builder::new()
            .name("ringport-blocking".into())
            .spawn(move || work(&inner));
        if let Err(e) = started {
            let mut st = lock(&self.inner.st);
            st.threads -= 1;
            if st.threads == 0 {
                // Nobody will run it (unless a thread took it meanwhile and
                // has exited since): take it back, by its number — others may
                // have been queued after it.
                if let Some(i) = st.queue.iter().position(|(n, _)| *n == seq) {
                    drop(st.queue.remove(i));
                    return Err(Refused::NoThread(e));
                }
            }
        }
        Ok(())
    }

    /// Lets idle threads exit; queued jobs still run (a running closure cannot be
    /// interrupted, and is not waited for).
    pub(crate) fn stop(&self) {
        lock(&self.inner.st).stop = true;
        self.inner.cv.notify_all();
    }
}

fn work(inner: &Inner) {
    let mut st = lock(&inner.st);
    loop {
        if let Some((_, job)) = st.queue.pop_front() {
            drop(st);
            job();
            st = lock(&inner.st);
            continue;
        }
        if st.stop {
            break;
        }
        st.idle += 1;
        let (g, to) = inner
            .cv
            .wait_timeout(st, KEEP_ALIVE)
            .unwrap_or_else(|p| p.into_inner());
        st = g;
        st.idle -= 1;
        if to.timed_out() && st.queue.is_empty() {
            break;
        }
    }
    st.threads -= 1;
}

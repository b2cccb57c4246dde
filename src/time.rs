//! Timers on the port: [`sleep`], [`sleep_until`], [`timeout`], [`interval`].
//!
//! A sleep is one port timeout operation (io_uring `IORING_OP_TIMEOUT`; on epoll,
//! the backend's sorted timer set), submitted when the future is first polled and
//! cancelled when it is dropped. A duration is measured from when the timer
//! reaches the kernel: at once from a non-worker thread; from a worker, when it
//! next hands its batched submissions over (normally as soon as the task yields),
//! so a sleep never ends early but may end that much late. While the runtime is
//! at `max_in_flight`, a timer waits for room like any other operation.
//!
//! ```
//! use std::time::{Duration, Instant};
//! let rt = ringport::Runtime::new()?;
//! rt.block_on(async {
//!     let t0 = Instant::now();
//!     ringport::time::sleep(Duration::from_millis(5)).await;
//!     assert!(t0.elapsed() >= Duration::from_millis(5));
//!     let slow = ringport::time::sleep(Duration::from_secs(60));
//!     let r = ringport::time::timeout(Duration::from_millis(5), slow).await;
//!     assert!(r.is_err(), "the sleep is cancelled when the timeout fires");
//! });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::op::Op;
use crate::rt::op::OpFuture;
use crate::rt::{current_or_panic, Handle};

/// Waits until `after` has passed.
///
/// Once its runtime has shut down, a sleep cannot be armed: it ends at once
/// (so a [`timeout`] then reports [`Elapsed`] at once, and an [`interval`]
/// ticks without waiting).
///
/// # Panics
///
/// Outside a runtime.
pub fn sleep(after: Duration) -> Sleep {
    Sleep::new(
        current_or_panic("ringport::time::sleep"),
        Deadline::After(after),
    )
}

/// Waits until `deadline` (at once if it has passed).
///
/// # Panics
///
/// Outside a runtime.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::new(
        current_or_panic("ringport::time::sleep_until"),
        Deadline::At(deadline),
    )
}

enum Deadline {
    After(Duration),
    At(Instant),
}

/// The future [`sleep`] returns.
pub struct Sleep {
    handle: Handle,
    deadline: Option<Deadline>,
    op: Option<OpFuture>,
    failed: bool,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("armed", &self.op.is_some())
            .finish()
    }
}

impl Sleep {
    fn new(handle: Handle, d: Deadline) -> Sleep {
        Sleep {
            handle,
            deadline: Some(d),
            op: None,
            failed: false,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(());
        }
        if let Some(d) = this.deadline.take() {
            let after = match d {
                Deadline::After(a) => a,
                Deadline::At(t) => t.saturating_duration_since(Instant::now()),
            };
            if after.is_zero() {
                this.failed = true;
                return Poll::Ready(());
            }
            this.op = Some(OpFuture::new(
                this.handle.shared.clone(),
                Op::timeout(after),
                None,
            ));
        }
        let Some(op) = this.op.as_mut() else {
            return Poll::Ready(());
        };
        match op.poll_op(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                this.op = None;
                if let Err(e) = r {
                    // The port refused the timer (it is shutting down): waiting
                    // forever would hang the caller, so the sleep ends.
                    tracing::debug!("sleep ends early: {e}");
                }
                this.failed = true;
                Poll::Ready(())
            }
        }
    }
}

/// The error [`timeout`] returns when time ran out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(_: Elapsed) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, Elapsed)
    }
}

/// Runs `fut` for at most `limit`: its output, or `Err(Elapsed)` — in which case
/// `fut` is dropped, which cancels the operation it was waiting on. After the
/// runtime has shut down its timer cannot be armed: unless `fut` is ready at
/// its first poll, the answer is `Err(Elapsed)` at once (see [`sleep`]).
///
/// # Panics
///
/// Outside a runtime.
pub fn timeout<F: Future>(limit: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut: Box::pin(fut),
        sleep: sleep(limit),
    }
}

/// The future [`timeout`] returns.
pub struct Timeout<F> {
    fut: Pin<Box<F>>,
    sleep: Sleep,
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("sleep", &self.sleep)
            .finish()
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(v) = this.fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Ticks every `period`, the first tick at once.
///
/// A tick that comes late (the task was busy) does not cause a burst of catch-up
/// ticks: the next one is scheduled a whole period after the late one. After
/// the runtime has shut down, [`tick`](Interval::tick) returns at once (see
/// [`sleep`]): a loop on it outside the runtime (in `Handle::block_on`) must
/// check for itself that there is still work to do.
///
/// # Panics
///
/// Outside a runtime, or if `period` is zero.
pub fn interval(period: Duration) -> Interval {
    assert!(!period.is_zero(), "ringport::time::interval: zero period");
    // A period past about 136 years is taken as that (see `Op::timeout`).
    let period = period.min(crate::op::MAX_WAIT);
    Interval {
        handle: current_or_panic("ringport::time::interval"),
        next: Instant::now(),
        period,
    }
}

/// A periodic timer (see [`interval`]).
#[derive(Debug)]
pub struct Interval {
    handle: Handle,
    next: Instant,
    period: Duration,
}

impl Interval {
    /// Waits for the next tick and returns when it was due.
    pub async fn tick(&mut self) -> Instant {
        let due = self.next;
        Sleep::new(self.handle.clone(), Deadline::At(due)).await;
        let now = Instant::now();
        self.next = if now >= due + self.period {
            now + self.period
        } else {
            due + self.period
        };
        due
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}

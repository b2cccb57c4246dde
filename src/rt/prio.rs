//! Priority for async code: [`with_priority`] runs a future so that every port
//! operation it starts ([`net`](crate::net), [`fs`](crate::fs),
//! [`time`](crate::time)) carries that [`Priority`] — its completion is queued
//! in that lane, and a file read or write goes to the kernel at that I/O
//! class (see [`Op::priority`](crate::Op::priority)). The task is then resumed
//! as soon as the worker that dequeues the completion finishes its handler, so
//! a `High` task's reads overtake queued `Low` work.
//!
//! The priority is a property of the polls, not of the task: it holds while
//! the wrapped future is being polled (nested `with_priority` calls take the
//! innermost), and operations created outside it keep `Normal`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::sched::Priority;

thread_local! {
    /// The priority of the future being polled on this thread.
    static CURRENT: Cell<Priority> = const { Cell::new(Priority::Normal) };
}

/// The priority operations started now get (`Normal` outside [`with_priority`]).
pub(crate) fn current() -> Priority {
    CURRENT.with(Cell::get)
}

/// Runs `fut` with every port operation it starts at priority `p`.
///
/// ```
/// use ringport::{rt::with_priority, Priority, Runtime};
/// let rt = Runtime::new()?;
/// let n = rt.block_on(with_priority(Priority::High, async {
///     let f = ringport::fs::File::open("Cargo.toml").await?;
///     let (r, _buf) = f.read_at(Vec::with_capacity(64), 0).await;
///     r
/// }))?;
/// assert!(n > 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn with_priority<F: Future>(p: Priority, fut: F) -> WithPriority<F> {
    WithPriority { p, fut }
}

/// The future [`with_priority`] returns.
#[derive(Debug)]
pub struct WithPriority<F> {
    p: Priority,
    fut: F,
}

impl<F: Future> Future for WithPriority<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of
        // `self` (no method hands it out by value or by `&mut`), and
        // `WithPriority` has no `Drop` impl of its own.
        let (p, fut) = unsafe {
            let this = self.get_unchecked_mut();
            (this.p, Pin::new_unchecked(&mut this.fut))
        };
        /// Restores the outer priority, also if the inner poll panics.
        struct Restore(Priority);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(p)));
        fut.poll(cx)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        std::pin::pin!(f).poll(&mut cx)
    }

    #[test]
    fn the_innermost_priority_holds_during_polls_only() {
        assert_eq!(current(), Priority::Normal);
        let seen = poll_once(with_priority(Priority::Low, async {
            let outer = current();
            let inner = with_priority(Priority::High, async { current() }).await;
            (outer, inner, current())
        }));
        assert_eq!(
            seen,
            Poll::Ready((Priority::Low, Priority::High, Priority::Low))
        );
        assert_eq!(current(), Priority::Normal, "restored after the poll");
    }
}

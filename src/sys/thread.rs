//! Which threads may hand operations to the kernel themselves.
//!
//! io_uring ties a request to the thread that submitted it (the one whose
//! `io_uring_enter` carried it): when that thread exits, the kernel stops
//! serving its requests that are still waiting — a receive then ends with
//! `ECANCELED` at the socket's next event instead of taking the data, and a
//! linked timeout never fires (both found on 6.18). IOCP promises the
//! opposite: I/O on a handle associated with a completion port is not
//! cancelled when the thread that issued it exits.
//!
//! So a thread enters the kernel with requests only if it is *owned* by a
//! port: a pool worker or monitor (for the pool's life), a thread inside
//! `Runtime::block_on` (for its duration; futures dropped when it returns
//! cancel their operations), or the backend's own submitter thread. Any other
//! thread publishes its requests and wakes the submitter, which hands them to
//! the kernel (see `uring::Driver`). The epoll backend makes no such
//! distinction: readiness is not tied to a thread.

use std::cell::Cell;

thread_local! {
    /// Nesting depth of `OwnedScope`s, or `u32::MAX` for a thread owned for good.
    static OWNED: Cell<u32> = const { Cell::new(0) };
}

/// Whether the calling thread may submit to the kernel itself.
pub(crate) fn thread_owned() -> bool {
    OWNED.with(|o| o.get() > 0)
}

/// Marks the calling thread as owned until it exits (pool threads, the
/// submitter).
pub(crate) fn own_thread() {
    OWNED.with(|o| o.set(u32::MAX));
}

/// Marks the calling thread as owned while the value lives.
#[derive(Debug)]
pub(crate) struct OwnedScope(());

impl OwnedScope {
    pub(crate) fn enter() -> OwnedScope {
        OWNED.with(|o| o.set(o.get().saturating_add(1)));
        OwnedScope(())
    }
}

impl Drop for OwnedScope {
    fn drop(&mut self) {
        OWNED.with(|o| {
            if o.get() != u32::MAX {
                o.set(o.get() - 1);
            }
        });
    }
}

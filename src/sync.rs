//! Synchronisation helpers. The scheduler core uses the `model` primitives, which
//! are loom's under `cfg(loom)` so it can be model-checked
//! (`RUSTFLAGS="--cfg loom" cargo test --lib loom_`); everything else uses std's.

use std::sync::{Mutex, MutexGuard};

/// The primitives the scheduler core is model-checked with.
pub(crate) mod model {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicU64, AtomicU8};
    #[cfg(loom)]
    pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{AtomicU64, AtomicU8};
    #[cfg(not(loom))]
    pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

    /// Locks a model mutex, ignoring poisoning (see [`super::lock`]).
    pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        match m.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// Locks a mutex, ignoring poisoning: state behind ringport's mutexes is only
/// mutated by code that cannot panic half-way (user handlers run outside them).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Puts a thread's reusable buffer back in its thread-local (taken with
/// `LocalKey::take`, so a nested taker gets a fresh one), emptied; one that grew
/// past `keep` items' room is let go instead, so a burst does not pin its memory
/// for the thread's life. For hot loops that would otherwise allocate and free
/// a `Vec` each time.
pub(crate) fn give_back<T: 'static>(
    key: &'static std::thread::LocalKey<std::cell::Cell<Vec<T>>>,
    mut v: Vec<T>,
    keep: usize,
) {
    v.clear();
    if v.capacity() <= keep {
        key.set(v);
    }
}

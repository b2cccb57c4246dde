//! Synchronisation primitives, swapped for loom's under `cfg(loom)` so the
//! scheduler core can be model-checked (`RUSTFLAGS="--cfg loom" cargo test --lib sched`).

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: the scheduler's state is only mutated by
/// code that cannot panic half-way (handlers run outside the lock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

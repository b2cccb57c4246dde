//! A table indexed by descriptor number, read without a lock: the port's
//! associations (`port/assoc.rs`) and the epoll backend's per-socket queues
//! (`epoll/mod.rs`) are looked up on every submit, and a global mutex plus a
//! hash per look-up cost ~90 user instructions each (callgrind, epoll echo).
//!
//! Descriptors are small integers, so the table is a two-level array: a
//! first level of [`CHUNKS`] pointers, each to a chunk of [`CHUNK`] entries
//! made (with `T::default()`) on first use. Descriptors at or above [`DIRECT`]
//! are not in it: callers keep those in a locked map of their own.
//!
//! # Invariants
//!
//! * A chunk pointer is set once (Release), by [`FdTable::get_or_make`], whose
//!   callers serialise it with a lock of their own (only they create chunks),
//!   and stays valid until the table drops (`&mut self`): readers dereference it
//!   without a lock. An entry therefore lives as long as the table; what it
//!   means (present, registered) is the entry's own business, in its atomics or
//!   its own lock.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Entries per chunk.
pub(crate) const CHUNK: usize = 1024;
/// Chunks in the first level.
pub(crate) const CHUNKS: usize = 1024;
/// Descriptors below this are in the table (~1 M: past most `RLIMIT_NOFILE`
/// settings).
pub(crate) const DIRECT: usize = CHUNK * CHUNKS;

/// Descriptor → `T`, for descriptors below [`DIRECT`].
pub(crate) struct FdTable<T> {
    /// Each null, or the first of `CHUNK` entries from a leaked `Box<[T]>`.
    chunks: Box<[AtomicPtr<T>]>,
    /// The table owns its entries and hands out `&T` to any thread: it is
    /// `Send`/`Sync` only when `T` is (an `AtomicPtr` alone would make it so
    /// for any `T`).
    _owns: std::marker::PhantomData<Box<[T]>>,
}

impl<T> std::fmt::Debug for FdTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdTable").finish_non_exhaustive()
    }
}

impl<T: Default> Default for FdTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Default> FdTable<T> {
    pub(crate) fn new() -> Self {
        FdTable {
            chunks: (0..CHUNKS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            _owns: std::marker::PhantomData,
        }
    }

    /// `fd`'s index, if it is in the table's range.
    pub(crate) fn index(fd: RawFd) -> Option<usize> {
        usize::try_from(fd).ok().filter(|&i| i < DIRECT)
    }

    /// The entry of `fd` (below `DIRECT`), if its chunk has been made.
    pub(crate) fn get(&self, fd: usize) -> Option<&T> {
        let p = self.chunks.get(fd / CHUNK)?.load(Ordering::Acquire);
        // SAFETY: a non-null chunk pointer points at `CHUNK` initialised
        // entries from a leaked `Box<[T]>` (`get_or_make`), freed only in
        // `drop`, which has `&mut self`: valid for as long as `&self`.
        // `fd % CHUNK < CHUNK`.
        (!p.is_null()).then(|| unsafe { &*p.add(fd % CHUNK) })
    }

    /// The entry of `fd` (below `DIRECT`), making its chunk. Callers must
    /// serialise calls (hold a lock of their own): two racing calls could each
    /// make the chunk.
    pub(crate) fn get_or_make(&self, fd: usize) -> &T {
        let slot = &self.chunks[fd / CHUNK];
        let mut p = slot.load(Ordering::Acquire);
        if p.is_null() {
            let chunk: Box<[T]> = (0..CHUNK).map(|_| T::default()).collect();
            p = Box::into_raw(chunk).cast::<T>();
            slot.store(p, Ordering::Release);
        }
        // SAFETY: as in `get`: non-null, `CHUNK` entries, freed only in `drop`.
        unsafe { &*p.add(fd % CHUNK) }
    }

    /// Every entry made so far, with its descriptor.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (RawFd, &T)> {
        (0..CHUNKS).flat_map(move |c| {
            let base = c * CHUNK;
            let chunk = self.get(base).is_some();
            (base..base + if chunk { CHUNK } else { 0 })
                .filter_map(move |i| self.get(i).map(|e| (i as RawFd, e)))
        })
    }
}

impl<T> Drop for FdTable<T> {
    fn drop(&mut self) {
        for slot in self.chunks.iter_mut() {
            let p = *slot.get_mut();
            if !p.is_null() {
                // SAFETY: from `Box::into_raw` of a `Box<[T]>` of `CHUNK`
                // entries in `get_or_make`, freed only here, once; `&mut self`
                // means no reader holds an entry.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, CHUNK)) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn entries_are_made_by_chunk_and_stay() {
        let t: FdTable<AtomicU64> = FdTable::new();
        assert!(t.get(5).is_none());
        t.get_or_make(5).store(9, Ordering::Relaxed);
        assert_eq!(t.get(5).unwrap().load(Ordering::Relaxed), 9);
        assert_eq!(t.get(6).unwrap().load(Ordering::Relaxed), 0, "same chunk");
        assert!(t.get(CHUNK).is_none(), "next chunk not made");
        t.get_or_make(DIRECT - 1).store(1, Ordering::Relaxed);
        assert_eq!(t.get(DIRECT - 1).unwrap().load(Ordering::Relaxed), 1);
        assert!(t.get(DIRECT).is_none());
        assert_eq!(t.iter().count(), 2 * CHUNK);
        assert_eq!(FdTable::<AtomicU64>::index(-1), None);
        assert_eq!(FdTable::<AtomicU64>::index(DIRECT as RawFd), None);
        assert_eq!(FdTable::<AtomicU64>::index(7), Some(7));
    }
}

//! The port's associations (IOCP's `CreateIoCompletionPort(handle, port, key)`):
//! descriptor → completion key, read by every `submit` and changed rarely.
//!
//! Reads take no lock: descriptors below `DIRECT` are in an `FdTable`
//! (`sys/fdtab.rs`); those past it go to a locked map.
//!
//! # Invariants
//!
//! * Every change (associate, disassociate, the removal by a `close` op) runs
//!   under `write`, so changes are totally ordered and check-then-set is atomic.
//! * An entry's `key` is written before its `present` flag is set (Release),
//!   and a reader loads `present` (Acquire) before `key`: a reader that sees an
//!   association sees its key (or a later association's, if the caller raced
//!   `associate` against `submit` on the same descriptor — either is a valid
//!   outcome of that race).
//! * Chunks of the table are made under `write` (`FdTable::get_or_make`).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::sync::lock;
use crate::sys::fdtab::FdTable;
#[cfg(test)]
use crate::sys::fdtab::DIRECT;

#[derive(Default)]
struct Entry {
    key: AtomicU64,
    present: AtomicBool,
}

/// Descriptor → key.
pub(crate) struct Assoc {
    table: FdTable<Entry>,
    /// Serializes changes; holds the descriptors at or above `DIRECT`.
    write: Mutex<HashMap<RawFd, u64>>,
}

impl std::fmt::Debug for Assoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assoc").finish_non_exhaustive()
    }
}

impl Assoc {
    pub(crate) fn new() -> Assoc {
        Assoc {
            table: FdTable::new(),
            write: Mutex::new(HashMap::new()),
        }
    }

    fn index(fd: RawFd) -> Option<usize> {
        FdTable::<Entry>::index(fd)
    }

    /// The key of `fd`, without a lock for descriptors below `DIRECT`.
    pub(crate) fn get(&self, fd: RawFd) -> Result<u64> {
        match Self::index(fd) {
            Some(i) => match self.table.get(i) {
                Some(e) if e.present.load(Ordering::Acquire) => Ok(e.key.load(Ordering::Relaxed)),
                _ => Err(Error::Unassociated(fd)),
            },
            None => lock(&self.write)
                .get(&fd)
                .copied()
                .ok_or(Error::Unassociated(fd)),
        }
    }

    /// Associates `fd` with `key` after `attach` (the backend's part) succeeds.
    pub(crate) fn insert(
        &self,
        fd: RawFd,
        key: u64,
        attach: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut big = lock(&self.write);
        match Self::index(fd) {
            Some(i) => {
                let e = self.table.get_or_make(i);
                if e.present.load(Ordering::Relaxed) {
                    return Err(Error::AlreadyAssociated(fd));
                }
                attach()?;
                e.key.store(key, Ordering::Relaxed);
                e.present.store(true, Ordering::Release);
            }
            None => {
                if big.contains_key(&fd) {
                    return Err(Error::AlreadyAssociated(fd));
                }
                attach()?;
                big.insert(fd, key);
            }
        }
        Ok(())
    }

    /// Ends `fd`'s association, then runs `detach` (the backend's part) before
    /// any other change can begin — an `associate` of the same number must not
    /// slip in between; returns the key.
    pub(crate) fn remove(&self, fd: RawFd, detach: impl FnOnce()) -> Result<u64> {
        let mut big = lock(&self.write);
        let key = match Self::index(fd) {
            Some(i) => match self.table.get(i) {
                Some(e) if e.present.swap(false, Ordering::AcqRel) => e.key.load(Ordering::Relaxed),
                _ => return Err(Error::Unassociated(fd)),
            },
            None => big.remove(&fd).ok_or(Error::Unassociated(fd))?,
        };
        detach();
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associate_look_up_and_remove_across_the_range() {
        let a = Assoc::new();
        for fd in [
            0,
            1,
            1023,
            1024,
            5000,
            DIRECT as RawFd - 1,
            DIRECT as RawFd,
            i32::MAX,
        ] {
            assert!(matches!(a.get(fd), Err(Error::Unassociated(f)) if f == fd));
            a.insert(fd, fd as u64 * 3, || Ok(())).unwrap();
            assert_eq!(a.get(fd).unwrap(), fd as u64 * 3);
            assert!(matches!(
                a.insert(fd, 1, || Ok(())),
                Err(Error::AlreadyAssociated(f)) if f == fd
            ));
            let mut detached = false;
            assert_eq!(a.remove(fd, || detached = true).unwrap(), fd as u64 * 3);
            assert!(detached, "the backend's part ran");
            assert!(matches!(
                a.remove(fd, || panic!("not associated")),
                Err(Error::Unassociated(_))
            ));
            assert!(a.get(fd).is_err());
        }
        assert!(
            a.get(-1).is_err(),
            "a negative descriptor is never associated"
        );
    }

    #[test]
    fn a_failed_attach_leaves_no_association() {
        let a = Assoc::new();
        let r = a.insert(7, 1, || Err(Error::Closed));
        assert!(matches!(r, Err(Error::Closed)));
        assert!(a.get(7).is_err());
        a.insert(7, 2, || Ok(())).unwrap();
        assert_eq!(a.get(7).unwrap(), 2);
    }

    #[test]
    fn readers_on_other_threads_see_every_association() {
        let a = std::sync::Arc::new(Assoc::new());
        let b = a.clone();
        let t = std::thread::spawn(move || {
            for fd in 0..4096 {
                while b.get(fd).is_err() {
                    std::hint::spin_loop();
                }
                assert_eq!(b.get(fd).unwrap(), fd as u64 + 1);
            }
        });
        for fd in 0..4096 {
            a.insert(fd, fd as u64 + 1, || Ok(())).unwrap();
        }
        t.join().unwrap();
    }
}

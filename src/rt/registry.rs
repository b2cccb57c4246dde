//! A sharded slab: the runtime's table of things the kernel (or the port's queue)
//! refers to by a 64-bit `user_data`.
//!
//! Why a table and not `Arc::into_raw` in `user_data`: when a port closes it drops
//! the packets still queued and the completions it reaps while cancelling; a raw
//! owning pointer in any of them would leak. Entries here are owned by the table,
//! so whatever the port drops, the runtime frees everything when it shuts down.
//!
//! Keys are `generation << 32 | index << SHARD_BITS | shard`; a stale key (its slot
//! reused since) finds nothing. Each shard is a plain mutex-protected vector: an
//! insert and a remove per operation, on the same shard, rarely contended on the
//! machines this targets (inserts spread by thread).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;

#[derive(Debug)]
struct Slot<T> {
    gen: u32,
    val: Option<T>,
}

#[derive(Debug)]
struct Shard<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

/// The table. Invariant: a key returned by `insert` names its value until `remove`
/// (or `drain`) takes it out; afterwards it names nothing, forever (generations
/// only grow; a slot whose generation would wrap is retired, never reused).
#[derive(Debug)]
pub(crate) struct Registry<T> {
    shards: Box<[Mutex<Shard<T>>]>,
    len: AtomicUsize,
}

thread_local! {
    static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_HOME: AtomicUsize = AtomicUsize::new(0);

fn home() -> usize {
    HOME.with(|h| {
        if h.get() == usize::MAX {
            h.set(NEXT_HOME.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        h.get()
    })
}

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        Registry {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        slots: Vec::new(),
                        free: Vec::new(),
                    })
                })
                .collect(),
            len: AtomicUsize::new(0),
        }
    }

    /// Stores `val`; the key finds it again.
    pub(crate) fn insert(&self, val: T) -> u64 {
        let s = home();
        let mut sh = lock(&self.shards[s]);
        let idx = match sh.free.pop() {
            Some(i) => i,
            None => {
                sh.slots.push(Slot { gen: 0, val: None });
                (sh.slots.len() - 1) as u32
            }
        };
        let slot = &mut sh.slots[idx as usize];
        debug_assert!(slot.val.is_none());
        slot.val = Some(val);
        let gen = slot.gen;
        drop(sh);
        self.len.fetch_add(1, Ordering::Relaxed);
        (u64::from(gen) << 32) | (u64::from(idx) << SHARD_BITS) | s as u64
    }

    /// Takes the value a key names, if it is still there.
    pub(crate) fn remove(&self, key: u64) -> Option<T> {
        let (s, idx, gen) = split(key);
        let mut sh = lock(self.shards.get(s)?);
        let slot = sh.slots.get_mut(idx)?;
        if slot.gen != gen || slot.val.is_none() {
            return None;
        }
        let val = slot.val.take();
        if slot.gen == u32::MAX {
            // Retired: reusing it would let an old key name a new value.
        } else {
            slot.gen += 1;
            sh.free.push(idx as u32);
        }
        drop(sh);
        self.len.fetch_sub(1, Ordering::Relaxed);
        val
    }

    /// Runs `f` on the value a key names, if it is still there.
    pub(crate) fn with<R>(&self, key: u64, f: impl FnOnce(&T) -> R) -> Option<R> {
        let (s, idx, gen) = split(key);
        let sh = lock(self.shards.get(s)?);
        let slot = sh.slots.get(idx)?;
        if slot.gen != gen {
            return None;
        }
        slot.val.as_ref().map(f)
    }

    /// Runs `f` on the value a key names, if it is still there; `f` also says
    /// whether to remove it. A removed value is dropped here, in its slot and
    /// under the shard's lock (not moved out: these values are large, and the
    /// move was most of this call's cost), so `f` must first take out of it
    /// anything whose drop could run foreign code — a waker, a closure, an
    /// `Arc` of something else — and hand it back in `R` to be dropped after
    /// the lock is released.
    pub(crate) fn update<R>(&self, key: u64, f: impl FnOnce(&mut T) -> (R, bool)) -> Option<R> {
        let (s, idx, gen) = split(key);
        let mut sh = lock(self.shards.get(s)?);
        let sh = &mut *sh;
        let slot = sh.slots.get_mut(idx)?;
        if slot.gen != gen {
            return None;
        }
        let (r, remove) = f(slot.val.as_mut()?);
        if remove {
            slot.val = None;
            if slot.gen != u32::MAX {
                slot.gen += 1;
                sh.free.push(idx as u32);
            }
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        Some(r)
    }

    /// Takes every value out (at shutdown).
    pub(crate) fn drain(&self) -> Vec<T> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut sh = lock(shard);
            let sh = &mut *sh;
            for (i, slot) in sh.slots.iter_mut().enumerate() {
                if let Some(v) = slot.val.take() {
                    if slot.gen != u32::MAX {
                        slot.gen += 1;
                        sh.free.push(i as u32);
                    }
                    out.push(v);
                }
            }
        }
        self.len.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }

    /// Values stored now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

fn split(key: u64) -> (usize, usize, u32) {
    let s = (key as usize) & (SHARDS - 1);
    let idx = ((key & 0xffff_ffff) >> SHARD_BITS) as usize;
    (s, idx, (key >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_find_nothing() {
        let r = Registry::new();
        let a = r.insert("a");
        assert_eq!(r.with(a, |v| *v), Some("a"));
        assert_eq!(r.remove(a), Some("a"));
        let b = r.insert("b");
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert_eq!(r.remove(a), None);
        assert_eq!(r.with(a, |v| *v), None);
        assert_eq!(r.len(), 1);
        assert_eq!(r.drain(), vec!["b"]);
        assert_eq!(r.remove(b), None);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn garbage_keys_find_nothing() {
        let r: Registry<u8> = Registry::new();
        assert_eq!(r.remove(u64::MAX), None);
        assert_eq!(r.with(12345, |v| *v), None);
    }
}

//! The table of operations in flight, shared by every backend: a slab indexed by
//! the low 32 bits of an [`OpId`], with a generation in the high bits so a stale
//! id never matches a newer operation in the same slot.

use crate::completion::OpId;

/// Generations stay below 2^30, so the top two bits of an `OpId` are always
/// clear: backends use them to tag their own CQEs and timers.
const GEN_MASK: u32 = 0x3fff_ffff;

#[derive(Debug)]
struct Entry<R> {
    gen: u32,
    rec: Option<R>,
}

/// Records of operations in flight, keyed by `OpId`.
#[derive(Debug)]
pub(crate) struct OpTable<R> {
    entries: Vec<Entry<R>>,
    free: Vec<u32>,
    live: usize,
    /// The generation a new slot starts at: each table (each port) its own,
    /// spread over the 2^30 generations, so an id handed to another port's
    /// `cancel` names no operation there (`NotFound`) instead of one of its
    /// own in the same slot. (With every table starting at 1, the first
    /// operation of any two ports had the same id.)
    first_gen: u32,
}

impl<R> OpTable<R> {
    pub(crate) fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static TABLES: AtomicU32 = AtomicU32::new(0);
        // A golden-ratio step: successive tables' starts lie far apart.
        let n = TABLES.fetch_add(1, Ordering::Relaxed);
        let first_gen = (n.wrapping_mul(0x9E37_79B9) & GEN_MASK).max(1);
        OpTable {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            first_gen,
        }
    }

    /// Operations in flight.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Stores a record; returns its id.
    pub(crate) fn insert(&mut self, rec: R) -> OpId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    gen: self.first_gen,
                    rec: None,
                });
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[index as usize];
        e.rec = Some(rec);
        self.live += 1;
        OpId((u64::from(e.gen) << 32) | u64::from(index))
    }

    fn entry(&self, id: OpId) -> Option<&Entry<R>> {
        let e = self.entries.get((id.0 & 0xffff_ffff) as usize)?;
        (e.gen == (id.0 >> 32) as u32 && e.rec.is_some()).then_some(e)
    }

    /// The record of a live operation.
    pub(crate) fn get(&self, id: OpId) -> Option<&R> {
        self.entry(id).and_then(|e| e.rec.as_ref())
    }

    /// The record of a live operation, to update it.
    pub(crate) fn get_mut(&mut self, id: OpId) -> Option<&mut R> {
        let e = self.entries.get_mut((id.0 & 0xffff_ffff) as usize)?;
        if e.gen == (id.0 >> 32) as u32 {
            e.rec.as_mut()
        } else {
            None
        }
    }

    /// Removes a live operation's record; its slot gets a new generation.
    pub(crate) fn remove(&mut self, id: OpId) -> Option<R> {
        self.entry(id)?;
        let index = (id.0 & 0xffff_ffff) as usize;
        let e = &mut self.entries[index];
        let rec = e.rec.take();
        e.gen = (e.gen + 1) & GEN_MASK;
        if e.gen == 0 {
            e.gen = 1;
        }
        self.free.push(index as u32);
        self.live -= 1;
        rec
    }

    /// The ids of every operation in flight.
    pub(crate) fn ids(&self) -> Vec<OpId> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.rec.is_some())
            .map(|(i, e)| OpId((u64::from(e.gen) << 32) | i as u64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_do_not_match_reused_slots() {
        let mut t = OpTable::new();
        let a = t.insert("a");
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b");
        assert_ne!(a, b, "same slot, new generation");
        assert!(t.get(a).is_none());
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.ids(), vec![b]);
    }
}

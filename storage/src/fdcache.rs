//! The process-wide cap on open torrent files.
//!
//! A daemon holding thousands of torrents would otherwise keep a descriptor
//! open for every file of every torrent and run into `ulimit -n`. Each
//! file target ([`crate::fs::Target`]) keeps its descriptor in a slot that
//! this cache may empty: the cache remembers the open slots in the order
//! they were last used and, when more than `capacity` are open, closes the
//! least recently used one. A closed target reopens on its next read or
//! write (without creating anything: a file that vanished meanwhile is an
//! error naming it, not a new empty file).
//!
//! Closing only drops the slot's reference: a read or write in progress
//! holds its own `Arc<File>`, so the descriptor closes when that call ends.
//! Raw targets (a block device, an image) and part files stay open and are
//! not counted: a torrent has at most one of each.
//!
//! Locking: the cache's mutex and a slot's mutex are never held together
//! by a caller of [`FdCache::touch`]; eviction takes the cache's, then the
//! victim's slot (never the other order), so there is no lock cycle.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::{Arc, Mutex, Weak};

/// A target's descriptor, or `None` while it is closed.
pub(crate) type Slot = Mutex<Option<Arc<File>>>;

/// Counters of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdCacheStats {
    /// Targets open now (counted ones).
    pub open: usize,
    /// The cap.
    pub capacity: usize,
    /// Times a closed target was opened again.
    pub reopened: u64,
    /// Times a descriptor was closed to make room.
    pub evicted: u64,
}

#[derive(Default)]
struct Lru {
    tick: u64,
    /// Target id -> (last use, its slot).
    open: HashMap<u64, (u64, Weak<Slot>)>,
    /// Last use -> target id; the first entry is the next to close.
    order: BTreeMap<u64, u64>,
    reopened: u64,
    evicted: u64,
}

/// The cache; shared by every storage of a [`crate::DiskIo`].
pub(crate) struct FdCache {
    capacity: usize,
    lru: Mutex<Lru>,
}

impl FdCache {
    /// A cache that keeps at most `capacity` (at least 1) targets open.
    pub fn new(capacity: usize) -> FdCache {
        FdCache {
            capacity: capacity.max(1),
            lru: Mutex::new(Lru::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks target `id` (whose descriptor is in `slot`) as just used,
    /// `reopened` if the caller had to open it again; closes the least
    /// recently used targets beyond the cap. The caller holds no slot lock.
    pub fn touch(&self, id: u64, slot: &Arc<Slot>, reopened: bool) {
        let mut victims = Vec::new();
        {
            let mut lru = self.lock();
            lru.tick += 1;
            let tick = lru.tick;
            if reopened {
                lru.reopened += 1;
            }
            if let Some((old, _)) = lru.open.insert(id, (tick, Arc::downgrade(slot))) {
                lru.order.remove(&old);
            }
            lru.order.insert(tick, id);
            while lru.open.len() > self.capacity {
                let Some((_, victim)) = lru.order.pop_first() else {
                    break;
                };
                if let Some((_, weak)) = lru.open.remove(&victim) {
                    if let Some(s) = weak.upgrade() {
                        victims.push(s);
                    }
                    lru.evicted += 1;
                }
            }
        }
        // Closed outside the cache's lock: dropping a descriptor can take a
        // while (a close that flushes on some file systems).
        for s in victims {
            let file = s.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(file);
        }
    }

    /// Forgets target `id` (dropped, or its slot closed by its owner).
    pub fn forget(&self, id: u64) {
        let mut lru = self.lock();
        if let Some((tick, _)) = lru.open.remove(&id) {
            lru.order.remove(&tick);
        }
    }

    pub fn stats(&self) -> FdCacheStats {
        let lru = self.lock();
        FdCacheStats {
            open: lru.open.len(),
            capacity: self.capacity,
            reopened: lru.reopened,
            evicted: lru.evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Arc<Slot> {
        Arc::new(Mutex::new(Some(Arc::new(tempfile::tempfile().unwrap()))))
    }

    #[test]
    fn the_least_recently_used_slot_is_closed_beyond_the_cap() {
        let cache = FdCache::new(2);
        let (a, b, c) = (slot(), slot(), slot());
        cache.touch(1, &a, false);
        cache.touch(2, &b, false);
        cache.touch(1, &a, false); // a is now more recent than b
        cache.touch(3, &c, false);
        assert!(a.lock().unwrap().is_some());
        assert!(b.lock().unwrap().is_none(), "b was least recently used");
        assert!(c.lock().unwrap().is_some());
        let s = cache.stats();
        assert_eq!((s.open, s.evicted), (2, 1));
        cache.forget(1);
        assert_eq!(cache.stats().open, 1);
    }

    #[test]
    fn a_file_in_use_outlives_its_eviction() {
        let cache = FdCache::new(1);
        let (a, b) = (slot(), slot());
        cache.touch(1, &a, false);
        let in_use = a.lock().unwrap().clone().unwrap();
        cache.touch(2, &b, false);
        assert!(a.lock().unwrap().is_none());
        // The caller's reference keeps the descriptor usable.
        assert!(in_use.metadata().is_ok());
    }
}

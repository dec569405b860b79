//! A bounded pool of reusable byte buffers: the seed's piece reads take
//! their buffer from it and give it back when the last [`Bytes`] sliced
//! from it is dropped (after the socket write), so a steady upload reads
//! into memory that is already mapped instead of faulting in fresh pages
//! per piece and unmapping them again on another thread.
//!
//! Buffers are kept by size class (powers of two, [`MIN_POOLED`] bytes
//! and up): a request for `n` bytes gets a buffer of the class of
//! `n.next_power_of_two()`, so its capacity is at least `n` and less than
//! `2n` (exactly `n` for the usual power-of-two piece). What the pool keeps
//! idle is bounded twice, whatever the input: at most `max_bytes` of
//! capacity in all, and at most a fixed count per class (the queues are
//! allocated once). A buffer coming back to a full pool is freed; a request
//! the pool cannot meet allocates. Smaller or larger requests than the
//! classes are plain allocations that are never kept.
//!
//! The pool is lock-free (one `ArrayQueue` per class) and cheap to clone:
//! the disk reader threads take, the tokio workers that drop the last
//! slice give back, and nobody waits on anybody.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;

/// Smallest request served from the pool; below it malloc's free lists are
/// as cheap and need no page faults.
pub const MIN_POOLED: usize = 1 << MIN_SHIFT;
/// Largest request served from the pool (a 64 MiB piece).
pub const MAX_POOLED: usize = 1 << MAX_SHIFT;
/// Most idle buffers one class keeps, however large `max_bytes` is.
pub const MAX_PER_CLASS: usize = 256;

const MIN_SHIFT: u32 = 12;
const MAX_SHIFT: u32 = 26;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;

/// A pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufPoolStats {
    /// Requests met with an idle buffer.
    pub hits: u64,
    /// Requests of a pooled size that found none idle and allocated.
    pub misses: u64,
    /// Requests outside the pooled sizes (always allocated, never kept).
    pub unpooled: u64,
    /// Buffers given back and kept.
    pub returned: u64,
    /// Buffers given back to a full pool, and freed.
    pub freed: u64,
    /// Capacity of the buffers idle in the pool now.
    pub idle_bytes: u64,
}

#[derive(Debug)]
struct Inner {
    /// `classes[k]` holds buffers of capacity at least `MIN_POOLED << k`;
    /// `None` where `max_bytes` allows not even one.
    classes: Vec<Option<ArrayQueue<Vec<u8>>>>,
    max_bytes: usize,
    idle_bytes: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    unpooled: AtomicU64,
    returned: AtomicU64,
    freed: AtomicU64,
}

/// The pool. Cheap to clone; clones share the buffers.
#[derive(Clone, Debug)]
pub struct BufPool {
    inner: Arc<Inner>,
}

/// The class of a request of `len` bytes, if pooled.
fn class_of_request(len: usize) -> Option<usize> {
    if !(MIN_POOLED..=MAX_POOLED).contains(&len) {
        return None;
    }
    Some((len.next_power_of_two().trailing_zeros() - MIN_SHIFT) as usize)
}

/// The class a buffer of `capacity` bytes can serve (the largest whose
/// size it holds), if any.
fn class_of_capacity(capacity: usize) -> Option<usize> {
    if capacity < MIN_POOLED {
        return None;
    }
    let k = (usize::BITS - 1 - capacity.leading_zeros()).min(MAX_SHIFT);
    Some((k - MIN_SHIFT) as usize)
}

impl BufPool {
    /// A pool keeping at most `max_bytes` of idle capacity; `0` keeps
    /// nothing (every request allocates, every buffer is freed).
    pub fn new(max_bytes: usize) -> BufPool {
        let classes = (0..CLASSES)
            .map(|k| {
                let n = (max_bytes >> (MIN_SHIFT as usize + k)).min(MAX_PER_CLASS);
                (n > 0).then(|| ArrayQueue::new(n))
            })
            .collect();
        BufPool {
            inner: Arc::new(Inner {
                classes,
                max_bytes,
                idle_bytes: AtomicUsize::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                unpooled: AtomicU64::new(0),
                returned: AtomicU64::new(0),
                freed: AtomicU64::new(0),
            }),
        }
    }

    /// An empty buffer with room for at least `len` bytes, idle from the
    /// pool when one is there. Its spare capacity holds whatever an earlier
    /// user left (it is not zeroed): fill it before exposing it.
    pub fn take(&self, len: usize) -> PooledBuf {
        let inner = &self.inner;
        let Some(k) = class_of_request(len) else {
            inner.unpooled.fetch_add(1, Ordering::Relaxed);
            return PooledBuf {
                buf: Vec::with_capacity(len),
                home: None,
            };
        };
        if let Some(buf) = inner.classes[k].as_ref().and_then(|q| q.pop()) {
            inner
                .idle_bytes
                .fetch_sub(buf.capacity(), Ordering::Relaxed);
            inner.hits.fetch_add(1, Ordering::Relaxed);
            return PooledBuf {
                buf,
                home: Some(inner.clone()),
            };
        }
        inner.misses.fetch_add(1, Ordering::Relaxed);
        PooledBuf {
            buf: Vec::with_capacity(MIN_POOLED << k),
            home: Some(inner.clone()),
        }
    }

    /// The counters and what is idle now.
    pub fn stats(&self) -> BufPoolStats {
        let i = &self.inner;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BufPoolStats {
            hits: load(&i.hits),
            misses: load(&i.misses),
            unpooled: load(&i.unpooled),
            returned: load(&i.returned),
            freed: load(&i.freed),
            idle_bytes: i.idle_bytes.load(Ordering::Relaxed) as u64,
        }
    }

    /// The most idle capacity the pool keeps.
    pub fn max_bytes(&self) -> usize {
        self.inner.max_bytes
    }
}

impl Inner {
    fn give_back(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        let Some(q) = class_of_capacity(cap).and_then(|k| self.classes[k].as_ref()) else {
            self.freed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // Reserve the bytes first, so racing returns cannot overshoot.
        if self.idle_bytes.fetch_add(cap, Ordering::Relaxed) + cap > self.max_bytes {
            self.idle_bytes.fetch_sub(cap, Ordering::Relaxed);
            self.freed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buf.clear();
        match q.push(buf) {
            Ok(()) => {
                self.returned.fetch_add(1, Ordering::Relaxed);
            }
            Err(_full) => {
                self.idle_bytes.fetch_sub(cap, Ordering::Relaxed);
                self.freed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A buffer taken from a [`BufPool`]: a `Vec<u8>` that goes back to its
/// pool when dropped. Used as a `Vec` (it derefs to one); growing it past
/// its capacity is allowed (it then goes back to the class its new
/// capacity serves).
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    /// The pool to go back to; `None` for a size the pool does not keep.
    home: Option<Arc<Inner>>,
}

impl PooledBuf {
    /// The bytes as a [`Bytes`] whose slices share this buffer; it goes
    /// back to the pool when the last of them is dropped.
    pub fn freeze(mut self) -> Bytes {
        if self.home.is_none() {
            return Bytes::from(std::mem::take(&mut self.buf));
        }
        Bytes::from_owner(self)
    }
}

impl Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            home.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_hold_the_request() {
        assert_eq!(class_of_request(MIN_POOLED - 1), None);
        assert_eq!(class_of_request(MIN_POOLED), Some(0));
        assert_eq!(class_of_request(MIN_POOLED + 1), Some(1));
        assert_eq!(class_of_request(256 << 10), Some(6));
        assert_eq!(class_of_request(MAX_POOLED), Some(CLASSES - 1));
        assert_eq!(class_of_request(MAX_POOLED + 1), None);
        assert_eq!(class_of_capacity(MIN_POOLED - 1), None);
        assert_eq!(class_of_capacity(256 << 10), Some(6));
        assert_eq!(class_of_capacity((512 << 10) - 1), Some(6));
        assert_eq!(class_of_capacity(usize::MAX), Some(CLASSES - 1));
        for len in [MIN_POOLED, 5000, 16_384, 100_000, 256 << 10, MAX_POOLED] {
            let k = class_of_request(len).unwrap();
            let cap = MIN_POOLED << k;
            assert!(cap >= len && cap < 2 * len.max(2), "{len}");
            assert_eq!(class_of_capacity(cap), Some(k));
        }
    }

    #[test]
    fn a_frozen_buffer_comes_back_when_its_last_slice_drops() {
        let pool = BufPool::new(1 << 20);
        let mut b = pool.take(256 << 10);
        let ptr = b.as_ptr();
        assert!(b.is_empty() && b.capacity() == 256 << 10);
        b.extend_from_slice(&[7u8; 256 << 10]);
        let bytes = b.freeze();
        let tail = bytes.slice(200_000..);
        drop(bytes);
        assert_eq!(pool.stats().returned, 0, "a live slice keeps it");
        assert!(tail.iter().all(|&x| x == 7));
        drop(tail);
        let s = pool.stats();
        assert_eq!((s.returned, s.idle_bytes), (1, 256 << 10));
        // The short last piece of a torrent uses the same class.
        let again = pool.take(200_000);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty(), "handed out empty");
        let s = pool.stats();
        assert_eq!((s.hits, s.misses, s.idle_bytes), (1, 1, 0));
    }

    #[test]
    fn idle_memory_is_bounded_by_bytes_and_count() {
        let pool = BufPool::new(1 << 20);
        let bufs: Vec<_> = (0..10).map(|_| pool.take(256 << 10)).collect();
        drop(bufs);
        let s = pool.stats();
        assert_eq!((s.returned, s.freed, s.idle_bytes), (4, 6, 1 << 20));
        // Small buffers are capped by the per-class count too.
        let pool = BufPool::new(usize::MAX);
        let bufs: Vec<_> = (0..MAX_PER_CLASS + 3)
            .map(|_| pool.take(MIN_POOLED))
            .collect();
        drop(bufs);
        let s = pool.stats();
        assert_eq!((s.returned, s.freed), (MAX_PER_CLASS as u64, 3));
    }

    #[test]
    fn sizes_outside_the_classes_and_a_zero_pool_keep_nothing() {
        let pool = BufPool::new(1 << 30);
        drop(pool.take(100).freeze());
        drop(pool.take(MAX_POOLED + 1));
        let s = pool.stats();
        assert_eq!((s.unpooled, s.returned, s.idle_bytes), (2, 0, 0));
        let off = BufPool::new(0);
        drop(off.take(256 << 10));
        let s = off.stats();
        assert_eq!((s.misses, s.returned, s.freed), (1, 0, 1));
    }

    #[test]
    fn a_grown_buffer_goes_back_to_the_class_it_now_serves() {
        let pool = BufPool::new(1 << 22);
        let mut b = pool.take(MIN_POOLED);
        b.extend_from_slice(&vec![1u8; 3 * MIN_POOLED]);
        let cap = b.capacity();
        drop(b);
        assert_eq!(pool.stats().idle_bytes, cap as u64);
        let again = pool.take(cap.next_power_of_two() >> 1);
        assert!(again.capacity() >= cap.next_power_of_two() >> 1);
        assert_eq!(pool.stats().hits, 1);
    }

    #[test]
    fn buffers_cross_threads() {
        let pool = BufPool::new(8 << 20);
        let bytes: Vec<Bytes> = std::thread::scope(|s| {
            s.spawn(|| {
                (0..16)
                    .map(|i| {
                        let mut b = pool.take(64 << 10);
                        b.resize(64 << 10, i as u8);
                        b.freeze()
                    })
                    .collect()
            })
            .join()
            .unwrap()
        });
        std::thread::scope(|s| {
            s.spawn(move || {
                for (i, b) in bytes.into_iter().enumerate() {
                    assert!(b.iter().all(|&x| x == i as u8));
                }
            });
        });
        let s = pool.stats();
        assert_eq!((s.returned, s.idle_bytes), (16, 16 * (64 << 10)));
    }
}

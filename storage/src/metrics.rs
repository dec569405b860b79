//! Process-wide histograms of the storage threads (hash latency, disk write
//! latency, blocks per `pwritev`), and the histogram types the actor layer
//! uses for its own.
//!
//! A histogram is a fixed array of atomic buckets: recording is one bucket
//! search and three relaxed `fetch_add`s, no lock and no allocation, so the
//! hash and writer threads record per piece or per write run. Where even that
//! is too much (per block on a peer connection), a [`LocalHistogram`] owned
//! by one task collects plain counts and is flushed into the shared one on a
//! timer. They are statics rather than values threaded through every
//! constructor because, like the buffer budget, they describe the whole
//! process; the metrics endpoint reads them with [`Histogram::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Most bucket bounds a histogram may have.
pub const MAX_BUCKETS: usize = 40;

/// Latency bounds in microseconds: 50 µs to 10 s, seven per decade (1,
/// 1.5, 2, 3, 4, 5, 7), so no step is more than 1.5x and a quantile read
/// off the buckets (a bucket's upper bound) is within 50 % of the true
/// value; the 1-2.5-5 series before put a p50 of 11 ms and one of 24 ms in
/// one bucket.
pub const LATENCY_US_BOUNDS: &[u64] = &[
    50, 70, //
    100, 150, 200, 300, 400, 500, 700, //
    1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_000, //
    10_000, 15_000, 20_000, 30_000, 40_000, 50_000, 70_000, //
    100_000, 150_000, 200_000, 300_000, 400_000, 500_000, 700_000, //
    1_000_000, 1_500_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000, 7_000_000, //
    10_000_000,
];

/// Count bounds in powers of two, 1 to 1024.
pub const COUNT_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Time to hash one piece, in microseconds.
pub static HASH_LATENCY_US: Histogram = Histogram::new(LATENCY_US_BOUNDS);
/// Time of one `pwritev` run (adjacent blocks of one file), in microseconds.
pub static WRITE_LATENCY_US: Histogram = Histogram::new(LATENCY_US_BOUNDS);
/// Blocks (buffers) written per `pwritev` run; a run longer than the iovec
/// limit takes several calls.
pub static BLOCKS_PER_PWRITEV: Histogram = Histogram::new(COUNT_BOUNDS);

/// Index of the bucket `value` falls in (`bounds.len()` is the overflow).
fn bucket(bounds: &[u64], value: u64) -> usize {
    bounds.partition_point(|&b| b < value)
}

/// A histogram shared between threads.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Non-cumulative counts; `buckets[bounds.len()]` counts values above
    /// the last bound.
    buckets: [AtomicU64; MAX_BUCKETS + 1],
    count: AtomicU64,
    sum: AtomicU64,
}

/// A copy of a histogram's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets (inclusive).
    pub bounds: &'static [u64],
    /// Non-cumulative counts, one per bound plus the overflow bucket.
    pub buckets: Vec<u64>,
    /// Values recorded.
    pub count: u64,
    /// Sum of the values recorded.
    pub sum: u64,
}

impl Histogram {
    /// An empty histogram. Panics (at compile time for statics) if there
    /// are more than [`MAX_BUCKETS`] bounds.
    pub const fn new(bounds: &'static [u64]) -> Self {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: u64) {
        self.buckets[bucket(self.bounds, value)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Reads every bucket (not atomically as a whole: a scrape racing a
    /// recording may see the count one ahead of the buckets).
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: self.buckets[..=self.bounds.len()]
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A histogram owned by one task, flushed into a shared [`Histogram`].
#[derive(Clone, Debug)]
pub struct LocalHistogram {
    bounds: &'static [u64],
    buckets: [u64; MAX_BUCKETS + 1],
    count: u64,
    sum: u64,
}

impl LocalHistogram {
    /// An empty histogram with the same bounds as `like`.
    pub fn like(like: &Histogram) -> Self {
        LocalHistogram {
            bounds: like.bounds,
            buckets: [0; MAX_BUCKETS + 1],
            count: 0,
            sum: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, value: u64) {
        self.buckets[bucket(self.bounds, value)] += 1;
        self.count += 1;
        self.sum = self.sum.wrapping_add(value);
    }

    /// Adds the counts to `into` and empties this one. Does nothing if the
    /// bounds differ (a programming error that must not crash a peer).
    pub fn flush_into(&mut self, into: &Histogram) {
        if self.count == 0 || !std::ptr::eq(self.bounds, into.bounds) {
            return;
        }
        for (i, n) in self.buckets.iter_mut().enumerate() {
            if *n > 0 {
                into.buckets[i].fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
        into.count.fetch_add(self.count, Ordering::Relaxed);
        into.sum.fetch_add(self.sum, Ordering::Relaxed);
        self.count = 0;
        self.sum = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::new(&[1, 10, 100]);
        for v in [0, 1, 2, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![2, 2, 2, 2]);
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, 5225);
    }

    #[test]
    fn latency_bounds_rise_by_at_most_half_and_fit() {
        assert!(LATENCY_US_BOUNDS.len() <= MAX_BUCKETS);
        assert_eq!(LATENCY_US_BOUNDS.first(), Some(&50));
        assert_eq!(LATENCY_US_BOUNDS.last(), Some(&10_000_000));
        for w in LATENCY_US_BOUNDS.windows(2) {
            assert!(w[0] < w[1] && w[1] * 2 <= w[0] * 3, "{w:?}");
        }
        let h = Histogram::new(LATENCY_US_BOUNDS);
        for v in [11_000, 24_000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets.iter().filter(|&&n| n > 0).count(), 2);
    }

    #[test]
    fn a_local_histogram_flushes_its_counts_once() {
        static H: Histogram = Histogram::new(COUNT_BOUNDS);
        let mut l = LocalHistogram::like(&H);
        l.observe(3);
        l.observe(3);
        l.observe(2000);
        l.flush_into(&H);
        l.flush_into(&H);
        let s = H.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.sum, 2006);
        assert_eq!(s.buckets[2], 2);
        assert_eq!(s.buckets[COUNT_BOUNDS.len()], 1);
    }
}

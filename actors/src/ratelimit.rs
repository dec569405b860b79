//! Byte-rate limits (governor token buckets) for upload and download, per
//! process and per torrent. A limiter is shared by reference between the
//! peers it governs: it is a lock-free atomic cell, not a lock, so waiting on
//! it never blocks another actor.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{Quota, RateLimiter};

/// A shared byte-rate limiter.
pub type Limiter = governor::DefaultDirectRateLimiter;

/// The largest single take: a socket read or a whole-piece send is split
/// into chunks of at most this many bytes, and the burst is at least this,
/// so no take can exceed the bucket.
const CHUNK: u32 = 256 * 1024;

/// A limiter of `bytes_per_sec` (at least 1), with a burst of one second's
/// worth or `CHUNK`, whichever is larger.
pub fn limiter(bytes_per_sec: u64) -> Arc<Limiter> {
    let rate = NonZeroU32::new(bytes_per_sec.clamp(1, u64::from(u32::MAX)) as u32)
        .unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.get().max(CHUNK)).unwrap_or(rate);
    Arc::new(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// Waits until every limiter in `limits` grants `bytes`.
pub async fn take(limits: &[Arc<Limiter>], bytes: usize) {
    if limits.is_empty() {
        return;
    }
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as usize);
        left -= n;
        let Some(n) = NonZeroU32::new(n as u32) else {
            return;
        };
        for l in limits {
            // Cannot fail: n <= CHUNK <= burst.
            let _ = l.until_n_ready(n).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn take_never_exceeds_the_rate() {
        // The 4 MiB burst is spent first; 2 MiB more at 4 MiB/s cannot be
        // granted in less than half a second, however fast the machine.
        let l = limiter(4 << 20);
        take(std::slice::from_ref(&l), 4 << 20).await;
        let t1 = Instant::now();
        take(std::slice::from_ref(&l), 2 << 20).await;
        assert!(t1.elapsed().as_millis() >= 450, "refill paces the rest");
    }
}

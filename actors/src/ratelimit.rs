//! Byte-rate limits (governor token buckets) for upload and download, per
//! process and per torrent. A limiter is shared by reference between the
//! peers it governs: it is a lock-free atomic cell, not a lock, so waiting on
//! it never blocks another actor. Peers hold each limit as a [`LimitCell`],
//! a watch of the current limiter, so the process-wide ones can change while
//! the peers run (the daemon's `session-set`).

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{Quota, RateLimiter};
use tokio::sync::watch;

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

/// A limit as peers hold it: the current limiter (`None`: unlimited).
/// Whoever holds the sender can replace it; a peer waiting on the old one
/// moves to the new one at once.
pub type LimitCell = watch::Receiver<Option<Arc<Limiter>>>;

/// A limit that never changes.
pub fn fixed(bytes_per_sec: u64) -> LimitCell {
    watch::channel(Some(limiter(bytes_per_sec))).1
}

/// A changeable limit of `bytes_per_sec` (`None`: unlimited) and its
/// sender.
pub fn cell(bytes_per_sec: Option<u64>) -> (watch::Sender<Option<Arc<Limiter>>>, LimitCell) {
    watch::channel(bytes_per_sec.map(limiter))
}

/// Waits until `cell`'s current limiter grants `n` bytes.
async fn take_one(cell: &LimitCell, n: NonZeroU32) {
    let mut rx = cell.clone();
    loop {
        let Some(l) = rx.borrow_and_update().clone() else {
            return;
        };
        tokio::select! {
            // Cannot fail: n <= CHUNK <= burst.
            _ = l.until_n_ready(n) => return,
            changed = rx.changed() => {
                if changed.is_err() {
                    // Nobody can change it any more.
                    let _ = l.until_n_ready(n).await;
                    return;
                }
            }
        }
    }
}

/// Waits until every limit in `limits` grants `bytes`.
pub async fn take(limits: &[LimitCell], bytes: usize) {
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
            take_one(l, n).await;
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
        let l = fixed(4 << 20);
        take(std::slice::from_ref(&l), 4 << 20).await;
        let t1 = Instant::now();
        take(std::slice::from_ref(&l), 2 << 20).await;
        assert!(t1.elapsed().as_millis() >= 450, "refill paces the rest");
    }

    #[tokio::test]
    async fn a_waiter_moves_to_a_new_limit() {
        // 1 byte/s: the second CHUNK would take days; lifting the limit
        // releases it.
        let (tx, rx) = cell(Some(1));
        take(std::slice::from_ref(&rx), CHUNK as usize).await;
        let waiter =
            tokio::spawn(async move { take(std::slice::from_ref(&rx), CHUNK as usize).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "held by the 1 byte/s limit");
        tx.send_replace(None);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("released by the new limit")
            .unwrap();
    }
}

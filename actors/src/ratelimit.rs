//! Byte-rate limits (governor token buckets) for upload and download, per
//! process and per torrent. A limiter is shared by reference between the
//! peers it governs: it is a lock-free atomic cell, not a lock, so waiting on
//! it never blocks another actor. Peers hold each limit as a [`LimitCell`],
//! a watch of the current limiter, so the process-wide ones can change while
//! the peers run (the daemon's `session-set`).

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

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

/// A grant still being waited for: the peer loop polls it as one branch of
/// its `select!`, beside reads, writes and its tick, so a limited direction
/// does not stop the other or the tick (which reports the rate the choker
/// ranks by).
pub type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Whether every limit in `limits` is currently unlimited.
pub fn unlimited(limits: &[LimitCell]) -> bool {
    limits.iter().all(|c| c.borrow().is_none())
}

/// Takes `bytes` from every limit in `limits`: `None` when granted at once
/// (always, when unlimited: no allocation then), else the wait for the rest.
pub fn grant(limits: &[LimitCell], bytes: usize) -> Option<Wait> {
    if unlimited(limits) {
        return None;
    }
    let limits = limits.to_vec();
    let mut wait: Wait = Box::pin(async move { take(&limits, bytes).await });
    // One poll takes what is there now; the loop's poll registers its waker.
    match wait.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(()) => None,
        Poll::Pending => Some(wait),
    }
}

/// Completes when `wait` does; never when it is `None`.
pub async fn granted(wait: Option<&mut Wait>) {
    match wait {
        Some(w) => w.as_mut().await,
        None => std::future::pending().await,
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

    #[tokio::test]
    async fn grant_is_immediate_within_the_burst_and_a_wait_beyond_it() {
        let (_tx, none) = cell(None);
        assert!(
            grant(std::slice::from_ref(&none), 1 << 30).is_none(),
            "unlimited"
        );
        let (tx, rx) = cell(Some(1));
        let limits = std::slice::from_ref(&rx);
        assert!(
            grant(limits, CHUNK as usize).is_none(),
            "the burst is there"
        );
        let mut wait = grant(limits, CHUNK as usize);
        assert!(wait.is_some(), "1 byte/s cannot refill a chunk at once");
        tx.send_replace(None);
        tokio::time::timeout(std::time::Duration::from_secs(10), granted(wait.as_mut()))
            .await
            .expect("a lifted limit releases the wait");
    }
}

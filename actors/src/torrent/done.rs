//! The torrent's completion mailbox: results from the hash workers and the
//! disk writers, which run on their own threads.
//!
//! Bounded like every mailbox (a slot per hash and write permit plus the
//! sync, and each result carries its permit, so a push cannot find it
//! full). What it adds over a channel: a result that only informs the
//! torrent (a piece written; its buffer budget was already returned by the
//! thread that wrote it) does not wake the torrent. The torrent drains the
//! mailbox every time it runs (a peer's exchange, every socket read while
//! downloading) and polls it on a short timer while writes are out, so a
//! written piece costs no cross-thread wake-up. Results the torrent must
//! act on (a hash result coming back, a failed write, a sync) wake it at
//! once, as does a mailbox filling up.

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

use super::pieces::Done;

/// Results waiting unseen at which a quiet one wakes the torrent anyway,
/// so HAVEs and permits do not lag far behind the disk.
const QUIET_LIMIT: usize = 16;

pub(super) struct DoneBox {
    queue: ArrayQueue<Done>,
    wake: Notify,
}

impl DoneBox {
    pub fn new(capacity: usize) -> DoneBox {
        DoneBox {
            queue: ArrayQueue::new(capacity.max(1)),
            wake: Notify::new(),
        }
    }

    /// From any thread; `urgent` wakes the torrent now.
    pub fn push(&self, done: Done, urgent: bool) {
        if let Err(done) = self.queue.push(done) {
            // Cannot happen (a slot per permit); were it to, waiting for
            // room here would stall a storage thread on the torrent, so
            // the result is handed over through a task instead of lost.
            debug_assert!(false, "completion mailbox full");
            self.spill(done);
            return;
        }
        if urgent || self.queue.len() >= QUIET_LIMIT {
            self.wake.notify_one();
        }
    }

    #[cold]
    fn spill(&self, done: Done) {
        // Keeps the result: the mailbox is drained in a loop, so a retry
        // from the storage thread after a short sleep finds room.
        let mut done = done;
        loop {
            self.wake.notify_one();
            std::thread::sleep(std::time::Duration::from_millis(1));
            match self.queue.push(done) {
                Ok(()) => return,
                Err(d) => done = d,
            }
        }
    }

    /// Wakes the torrent's next wait (it left results for later).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn pop(&self) -> Option<Done> {
        self.queue.pop()
    }

    /// Resolves after an urgent push (or one made while none waited).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use storage::StorageError;

    fn sync_done() -> Done {
        Done::Sync(Ok(()))
    }

    fn failed_sync() -> Done {
        Done::Sync(Err(StorageError::Closed))
    }

    #[tokio::test]
    async fn quiet_results_do_not_wake_urgent_ones_do_nothing_lost() {
        let b = Arc::new(DoneBox::new(64));
        // Quiet pushes from another thread: no wake-up pending.
        let b2 = b.clone();
        std::thread::spawn(move || {
            for _ in 0..QUIET_LIMIT - 1 {
                b2.push(sync_done(), false);
            }
        })
        .join()
        .unwrap();
        let woke = tokio::time::timeout(Duration::from_millis(50), b.woken()).await;
        assert!(woke.is_err(), "a quiet result woke the torrent");
        // One urgent push wakes, and every result is there.
        let b3 = b.clone();
        std::thread::spawn(move || b3.push(failed_sync(), true))
            .join()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), b.woken())
            .await
            .expect("urgent result did not wake");
        let mut n = 0;
        let mut errors = 0;
        while let Some(d) = b.pop() {
            n += 1;
            if matches!(d, Done::Sync(Err(_))) {
                errors += 1;
            }
        }
        assert_eq!((n, errors), (QUIET_LIMIT, 1));
    }

    #[tokio::test]
    async fn many_quiet_results_wake_once_the_limit_is_reached() {
        let b = Arc::new(DoneBox::new(64));
        let b2 = b.clone();
        std::thread::spawn(move || {
            for _ in 0..QUIET_LIMIT {
                b2.push(sync_done(), false);
            }
        })
        .join()
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), b.woken())
            .await
            .expect("a full batch of quiet results did not wake");
        assert_eq!(std::iter::from_fn(|| b.pop()).count(), QUIET_LIMIT);
    }
}

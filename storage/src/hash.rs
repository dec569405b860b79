//! The hash worker pool: OS threads that SHA-1 complete pieces held in
//! memory.
//!
//! A [`HashJob`] is a whole piece (its blocks as `Bytes`, exactly as they came
//! off the socket) and the expected digest. Workers take jobs from one bounded
//! `WorkQueue` (the crate's `queue` module) and park when it is empty. The
//! result goes back through the job's own reply closure, so the caller picks
//! the channel (a tokio `mpsc::Sender::try_send`, a std `SyncSender` in
//! tests).
//!
//! A successful check yields a [`VerifiedPiece`], the only type the disk
//! writers accept: nothing unverified can be written.
//!
//! Async use: `try_submit` never blocks. The actor layer holds a semaphore of
//! [`HashHandle::capacity`] permits, takes one before `try_submit` and
//! returns it when the reply arrives; then `try_submit` never sees a full
//! queue and no runtime thread ever blocks or spins.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::queue::{SubmitError, WorkQueue};

/// Where a result goes: called exactly once, on the worker's thread. It must
/// not block for long (use `try_send` into a bounded channel sized for the
/// jobs in flight).
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// A piece whose bytes matched the expected SHA-1. Only the hash pool,
/// [`VerifiedPiece::verify`] and the recheck can make one.
#[derive(Debug, Clone)]
pub struct VerifiedPiece {
    piece: u32,
    blocks: Vec<Bytes>,
}

/// SHA-1 over a piece's blocks in order.
pub fn sha1_of(blocks: &[Bytes]) -> [u8; 20] {
    let mut h = Sha1::new();
    for b in blocks {
        h.update(b);
    }
    h.finalize().into()
}

impl VerifiedPiece {
    /// Hashes on the calling thread; gives the blocks back on a mismatch.
    pub fn verify(
        piece: u32,
        blocks: Vec<Bytes>,
        expected: &[u8; 20],
    ) -> Result<VerifiedPiece, Vec<Bytes>> {
        if sha1_of(&blocks) == *expected {
            Ok(VerifiedPiece { piece, blocks })
        } else {
            Err(blocks)
        }
    }

    /// Piece index.
    pub fn piece(&self) -> u32 {
        self.piece
    }

    /// The blocks, in piece order.
    pub fn blocks(&self) -> &[Bytes] {
        &self.blocks
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.blocks.iter().map(|b| b.len() as u64).sum()
    }

    /// True if it carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives the buffers back (for reuse).
    pub fn into_blocks(self) -> Vec<Bytes> {
        self.blocks
    }
}

/// A piece to check.
pub struct HashJob {
    /// Piece index.
    pub piece: u32,
    /// Its blocks in order.
    pub blocks: Vec<Bytes>,
    /// Expected SHA-1 from the metainfo.
    pub expected: [u8; 20],
    /// Receives the outcome.
    pub reply: Reply<HashDone>,
}

impl std::fmt::Debug for HashJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashJob")
            .field("piece", &self.piece)
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

/// The outcome of a hash job.
#[derive(Debug)]
pub enum HashDone {
    /// The piece is good and may be written.
    Verified(VerifiedPiece),
    /// The digest differs; the blocks come back for reuse.
    Mismatch {
        /// Piece index.
        piece: u32,
        /// The blocks.
        blocks: Vec<Bytes>,
    },
}

impl HashDone {
    /// Piece index.
    pub fn piece(&self) -> u32 {
        match self {
            HashDone::Verified(v) => v.piece,
            HashDone::Mismatch { piece, .. } => *piece,
        }
    }

    /// True if verified.
    pub fn is_ok(&self) -> bool {
        matches!(self, HashDone::Verified(_))
    }
}

/// Pool size and queue bound.
#[derive(Clone, Debug)]
pub struct HashPoolConfig {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Jobs (pieces) that may wait in the queue.
    pub queue_capacity: usize,
}

impl Default for HashPoolConfig {
    fn default() -> Self {
        HashPoolConfig {
            workers: 0,
            queue_capacity: 64,
        }
    }
}

/// Counters of the pool, readable at any time.
#[derive(Debug, Default)]
pub struct HashCounters {
    /// Pieces hashed.
    pub pieces: AtomicU64,
    /// Bytes hashed.
    pub bytes: AtomicU64,
    /// Pieces that did not match.
    pub mismatches: AtomicU64,
}

struct Shared {
    queue: WorkQueue<HashJob>,
    counters: HashCounters,
}

/// The pool; dropping it finishes the queued jobs and joins the threads.
pub struct HashPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A cloneable submitter.
#[derive(Clone)]
pub struct HashHandle {
    shared: Arc<Shared>,
}

impl HashPool {
    /// Starts the workers.
    pub fn new(config: HashPoolConfig) -> std::io::Result<HashPool> {
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let shared = Arc::new(Shared {
            queue: WorkQueue::new(config.queue_capacity, workers),
            counters: HashCounters::default(),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || worker(&s, i));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.queue.close();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(HashPool { shared, threads })
    }

    /// A submitter.
    pub fn handle(&self) -> HashHandle {
        HashHandle {
            shared: self.shared.clone(),
        }
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// The pool's counters.
    pub fn counters(&self) -> &HashCounters {
        &self.shared.counters
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.shared.queue.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl HashHandle {
    /// Queues without blocking; gives the job back if the queue is full or
    /// the pool is gone.
    pub fn try_submit(&self, job: HashJob) -> Result<(), SubmitError<HashJob>> {
        self.shared.queue.try_push(job)
    }

    /// Queues, waiting for room (for threads and tests, not async code).
    pub fn submit(&self, job: HashJob) -> Result<(), HashJob> {
        self.shared.queue.push(job)
    }

    /// The pool's counters.
    pub fn counters(&self) -> &HashCounters {
        &self.shared.counters
    }

    /// Jobs waiting for a worker now.
    pub fn queue_depth(&self) -> usize {
        self.shared.queue.len()
    }

    /// Queue capacity: the number of permits an async caller should hold.
    pub fn capacity(&self) -> usize {
        self.shared.queue.capacity()
    }
}

fn worker(s: &Shared, idx: usize) {
    s.queue.register(idx);
    while let Some(job) = s.queue.pop_or_park(idx) {
        let HashJob {
            piece,
            blocks,
            expected,
            reply,
        } = job;
        let bytes: u64 = blocks.iter().map(|b| b.len() as u64).sum();
        let began = std::time::Instant::now();
        let done = match VerifiedPiece::verify(piece, blocks, &expected) {
            Ok(v) => HashDone::Verified(v),
            Err(blocks) => {
                s.counters.mismatches.fetch_add(1, Ordering::Relaxed);
                HashDone::Mismatch { piece, blocks }
            }
        };
        crate::metrics::HASH_LATENCY_US
            .observe(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX));
        s.counters.pieces.fetch_add(1, Ordering::Relaxed);
        s.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        // A panicking reply must not take the worker (and every later job)
        // down with it.
        let _ = catch_unwind(AssertUnwindSafe(move || reply(done)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn pool_verifies_and_rejects() {
        let pool = HashPool::new(HashPoolConfig {
            workers: 2,
            queue_capacity: 4,
        })
        .unwrap();
        let h = pool.handle();
        let (tx, rx) = sync_channel(100);
        for i in 0..100u32 {
            let blocks = vec![
                Bytes::from(vec![i as u8; 1000]),
                Bytes::from_static(b"tail"),
            ];
            let mut expected = sha1_of(&blocks);
            if i % 7 == 0 {
                expected[0] ^= 1;
            }
            let tx = tx.clone();
            h.submit(HashJob {
                piece: i,
                blocks,
                expected,
                reply: Box::new(move |d| {
                    let _ = tx.try_send(d);
                }),
            })
            .unwrap();
        }
        let mut ok = [None; 100];
        for _ in 0..100 {
            let d = rx.recv().unwrap();
            ok[d.piece() as usize] = Some(d.is_ok());
        }
        for (i, o) in ok.iter().enumerate() {
            assert_eq!(*o, Some(i % 7 != 0), "piece {i}");
        }
        assert_eq!(pool.counters().mismatches.load(Ordering::Relaxed), 15);
        assert_eq!(pool.counters().pieces.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn try_submit_reports_full() {
        let pool = HashPool::new(HashPoolConfig {
            workers: 1,
            queue_capacity: 1,
        })
        .unwrap();
        let h = pool.handle();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let mk = |g: Option<Arc<std::sync::Barrier>>| HashJob {
            piece: 0,
            blocks: vec![],
            expected: [0; 20],
            reply: Box::new(move |_| {
                if let Some(g) = g {
                    g.wait();
                }
            }),
        };
        // First job occupies the worker (its reply waits on the barrier).
        h.submit(mk(Some(gate.clone()))).unwrap();
        // Fill the single slot, eventually: the worker may not have popped yet.
        let mut full_seen = false;
        for _ in 0..1000 {
            match h.try_submit(mk(None)) {
                Ok(()) => {}
                Err(SubmitError::Full(_)) => {
                    full_seen = true;
                    break;
                }
                Err(SubmitError::Closed(_)) => panic!("closed"),
            }
        }
        assert!(full_seen);
        gate.wait();
    }
}

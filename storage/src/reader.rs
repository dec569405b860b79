//! Readers for seeding: a small pool of OS threads per device that `pread`
//! blocks for upload, with the same bounded mailbox and parking as the
//! writers.
//!
//! A read item carries the targets it touches (not the storage), so a reader
//! thread never holds the last reference to a device and never has to join
//! itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::error::StorageError;
use crate::fs::Target;
use crate::hash::Reply;
use crate::queue::WorkQueue;

/// A block to read for a peer.
pub struct ReadJob {
    /// Piece index.
    pub piece: u32,
    /// Offset inside the piece.
    pub begin: u32,
    /// Bytes to read.
    pub length: u32,
    /// Receives the data or the error.
    pub reply: Reply<ReadDone>,
}

impl std::fmt::Debug for ReadJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadJob")
            .field("piece", &self.piece)
            .field("begin", &self.begin)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// The outcome of a read.
#[derive(Debug)]
pub struct ReadDone {
    /// Piece index.
    pub piece: u32,
    /// Offset inside the piece.
    pub begin: u32,
    /// The bytes, or why not.
    pub result: Result<Bytes, StorageError>,
}

/// Where one part of a block lives; `None` target means padding (zeros).
pub(crate) struct ReadPart {
    pub target: Option<Arc<Target>>,
    pub offset: u64,
    pub length: u64,
}

pub(crate) struct ReadItem {
    pub piece: u32,
    pub begin: u32,
    pub parts: Vec<ReadPart>,
    pub reply: Reply<ReadDone>,
}

/// Reads the parts into one buffer on the calling thread. The buffer is
/// not zero-filled first: every byte is either read or padding (zeroed
/// here), and it is exposed only once all of it is written.
pub(crate) fn read_parts(parts: &[ReadPart]) -> Result<Bytes, StorageError> {
    // A read is at most a piece (u32 lengths): it fits in usize.
    let total = parts.iter().map(|p| p.length).sum::<u64>() as usize;
    let mut buf: Vec<u8> = Vec::with_capacity(total);
    let spare = &mut buf.spare_capacity_mut()[..total];
    let mut at = 0usize;
    for p in parts {
        let n = p.length as usize;
        let dst = &mut spare[at..at + n];
        match &p.target {
            Some(t) => t
                .read_at(p.offset, dst)
                .map_err(|e| StorageError::from_io(&t.path, p.offset, e))?,
            None => dst.fill(std::mem::MaybeUninit::new(0)),
        }
        at += n;
    }
    // SAFETY: the loop above initialised all `total` bytes (the parts'
    // lengths sum to `total`; a failed read returned early).
    unsafe { buf.set_len(total) };
    Ok(Bytes::from(buf))
}

/// Counters of a reader pool.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    /// Blocks read.
    pub reads: AtomicU64,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Failed reads.
    pub errors: AtomicU64,
}

pub(crate) struct ReaderShared {
    pub queue: WorkQueue<ReadItem>,
    pub counters: ReaderCounters,
}

/// One device's reader threads.
pub(crate) struct ReaderPool {
    pub shared: Arc<ReaderShared>,
    threads: Vec<JoinHandle<()>>,
}

impl ReaderPool {
    pub fn start(device: u64, threads: usize, capacity: usize) -> std::io::Result<ReaderPool> {
        let threads_n = threads.max(1);
        let shared = Arc::new(ReaderShared {
            queue: WorkQueue::new(capacity, threads_n),
            counters: ReaderCounters::default(),
        });
        let mut pool = ReaderPool {
            shared: shared.clone(),
            threads: Vec::with_capacity(threads_n),
        };
        for i in 0..threads_n {
            let s = shared.clone();
            // On failure `pool` is dropped, which closes and joins the rest.
            let t = std::thread::Builder::new()
                .name(format!("disk-reader-{device:x}-{i}"))
                .spawn(move || reader_loop(&s, i))?;
            pool.threads.push(t);
        }
        Ok(pool)
    }
}

impl Drop for ReaderPool {
    fn drop(&mut self) {
        self.shared.queue.close();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

fn reader_loop(s: &ReaderShared, idx: usize) {
    s.queue.register(idx);
    while let Some(item) = s.queue.pop_or_park(idx) {
        let result = read_parts(&item.parts);
        match &result {
            Ok(b) => {
                s.counters.reads.fetch_add(1, Ordering::Relaxed);
                s.counters
                    .bytes
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                s.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ReadItem {
            piece,
            begin,
            reply,
            ..
        } = item;
        let _ = catch_unwind(AssertUnwindSafe(move || {
            reply(ReadDone {
                piece,
                begin,
                result,
            })
        }));
    }
}

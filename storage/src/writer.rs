//! The disk writer: one OS thread per storage device, batching verified
//! pieces into as few `pwritev` calls as possible.
//!
//! Anatomy of a wake-up: the writer parks on its bounded mailbox; when woken
//! it drains what is waiting (up to `batch_limit` items), flattens them into
//! chunks (target, offset, bytes), sorts the chunks by (target, offset),
//! merges chunks that touch end-to-start into runs, and writes each run with
//! `pwritev` (split at `max_iovecs`, resumed after short writes, EINTR
//! retried). Sync requests in the batch are handed, after its writes, to
//! the device's sync thread, so a sync covers every write queued before it
//! and the writes queued after it go on while `fdatasync` waits on the
//! disk (on a real disk a checkpoint's sync stalled the writer for tens of
//! milliseconds, and every piece of the device behind it). Write
//! completions are sent after the batch's writes: a job succeeds only if
//! every run holding one of its chunks succeeded, and a failed run fails
//! all its jobs with the OS error, the file and the offset.
//!
//! A thread that verified a piece (a hash worker) may write it itself
//! while the writer thread is parked with nothing queued
//! (`WriterShared::write_here`): the same batch code, under the device's
//! `busy` flag, so the device still has one writer at a time and no
//! wake-up is spent on the hand-over.
//!
//! Why one writer per device: writes to one disk from two threads only
//! interleave seeks; two disks should write in parallel. Grouping is by the
//! device id of each target (see `fs::Target`).

use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::error::StorageError;
use crate::fs::{Target, datasync};
use crate::hash::Reply;
use crate::queue::WorkQueue;

/// Writer sizing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Pieces (or piece parts) that may wait in a writer's mailbox.
    pub queue_capacity: usize,
    /// Most items taken in one wake-up.
    pub batch_limit: usize,
    /// Most buffers per `pwritev` call (the kernel's IOV_MAX is 1024).
    pub max_iovecs: usize,
    /// Writes at most this many bytes per second, sleeping after each batch
    /// as a disk of that speed would take. `None` (the default) writes as
    /// fast as the device goes. Models a slow disk in tests and benchmarks,
    /// and caps the I/O a background download takes from a shared disk.
    #[serde(with = "crate::serde_fmt::zero_is_none")]
    pub max_bytes_per_sec: Option<u64>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_capacity: 64,
            batch_limit: 64,
            max_iovecs: 1024,
            max_bytes_per_sec: None,
        }
    }
}

/// Live counters of one writer (all monotonic except `max_blocks_per_run`,
/// which only grows).
#[derive(Debug, Default)]
pub struct WriterCounters {
    /// Write jobs (piece parts) completed successfully.
    pub jobs_written: AtomicU64,
    /// Runs of adjacent bytes written successfully.
    pub runs_written: AtomicU64,
    /// `pwritev` calls made (including retries and failures).
    pub pwritev_calls: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// Buffers (blocks, or parts of blocks at file edges) written.
    pub blocks_written: AtomicU64,
    /// Largest number of buffers in one run.
    pub max_blocks_per_run: AtomicU64,
    /// Jobs (writes or syncs) that failed.
    pub errors: AtomicU64,
    /// Wake-ups that found work.
    pub batches: AtomicU64,
    /// Sync requests served.
    pub syncs: AtomicU64,
    /// Batches (of one piece) written by the thread that verified them
    /// because this writer was idle (counted in `batches` too).
    pub inline_batches: AtomicU64,
}

/// A snapshot of [`WriterCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// See [`WriterCounters::jobs_written`].
    pub jobs_written: u64,
    /// See [`WriterCounters::runs_written`].
    pub runs_written: u64,
    /// See [`WriterCounters::pwritev_calls`].
    pub pwritev_calls: u64,
    /// See [`WriterCounters::bytes_written`].
    pub bytes_written: u64,
    /// See [`WriterCounters::blocks_written`].
    pub blocks_written: u64,
    /// See [`WriterCounters::max_blocks_per_run`].
    pub max_blocks_per_run: u64,
    /// See [`WriterCounters::errors`].
    pub errors: u64,
    /// See [`WriterCounters::batches`].
    pub batches: u64,
    /// See [`WriterCounters::syncs`].
    pub syncs: u64,
    /// See [`WriterCounters::inline_batches`].
    pub inline_batches: u64,
}

impl WriterCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> WriterStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            jobs_written: r(&self.jobs_written),
            runs_written: r(&self.runs_written),
            pwritev_calls: r(&self.pwritev_calls),
            bytes_written: r(&self.bytes_written),
            blocks_written: r(&self.blocks_written),
            max_blocks_per_run: r(&self.max_blocks_per_run),
            errors: r(&self.errors),
            batches: r(&self.batches),
            syncs: r(&self.syncs),
            inline_batches: r(&self.inline_batches),
        }
    }
}

/// The result of writing one verified piece.
#[derive(Debug)]
pub struct WriteDone {
    /// Piece index.
    pub piece: u32,
    /// `Ok` once every byte of the piece is written (not yet synced).
    pub result: Result<(), StorageError>,
}

pub(crate) enum Completion {
    Write { piece: u32, reply: Reply<WriteDone> },
    Sync(Reply<Result<(), StorageError>>),
}

/// Joins the parts of a job split over several writers: the reply fires
/// once, after the last part, with the first error.
pub(crate) struct Countdown {
    remaining: AtomicUsize,
    error: Mutex<Option<StorageError>>,
    completion: Mutex<Option<Completion>>,
}

impl Countdown {
    pub fn new(parts: usize, completion: Completion) -> Arc<Countdown> {
        Arc::new(Countdown {
            remaining: AtomicUsize::new(parts),
            error: Mutex::new(None),
            completion: Mutex::new(Some(completion)),
        })
    }

    /// Takes the completion back (the job was not queued).
    pub fn take(&self) -> Option<Completion> {
        self.completion
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub fn finish(&self, result: Result<(), StorageError>) {
        if let Err(e) = result {
            let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(e);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let result = match self.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        if let Some(c) = self.take() {
            // A panicking reply must not kill the writer thread.
            let _ = catch_unwind(AssertUnwindSafe(move || match c {
                Completion::Write { piece, reply } => reply(WriteDone { piece, result }),
                Completion::Sync(reply) => reply(result),
            }));
        }
    }
}

/// Bytes for one place on one target.
pub(crate) struct Chunk {
    pub target: Arc<Target>,
    pub offset: u64,
    pub data: Bytes,
}

pub(crate) enum WriterItem {
    Write {
        chunks: Vec<Chunk>,
        done: Arc<Countdown>,
    },
    Sync {
        targets: Vec<Arc<Target>>,
        done: Arc<Countdown>,
    },
}

pub(crate) struct WriterShared {
    pub queue: WorkQueue<WriterItem>,
    pub counters: WriterCounters,
    config: WriterConfig,
    /// Held by whichever thread writes for the device now: the writer
    /// thread, or a thread writing its own job in [`WriterShared::write_here`].
    /// So the device still has one writer at a time.
    busy: AtomicBool,
    /// Syncs handed over by the writer thread, for the sync thread.
    syncs: WorkQueue<(Vec<Arc<Target>>, Arc<Countdown>)>,
}

/// Syncs that may wait for the sync thread (each covers its device's
/// targets; a writer with more waits for room).
const SYNC_QUEUE: usize = 8;

impl WriterShared {
    /// Writes `item` on the calling thread when the writer thread is parked
    /// with nothing queued and no rate limit applies: handing it over would
    /// cost a wake-up of the writer (and its completion another thread
    /// switch) for work the caller can do at once. Gives the item back
    /// otherwise (queue it then). For threads that may block on a write
    /// (the hash workers), never a runtime thread.
    pub(crate) fn write_here(&self, item: WriterItem) -> Result<(), WriterItem> {
        let limited = self.config.max_bytes_per_sec.is_some_and(|r| r > 0);
        if limited || !self.queue.consumer_parked(0) {
            return Err(item);
        }
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(item);
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.inline_batches.fetch_add(1, Ordering::Relaxed);
        let mut batch = vec![item];
        process_batch(self, &mut batch);
        self.busy.store(false, Ordering::Release);
        Ok(())
    }

    /// Waits until no other thread writes for the device, then holds it.
    /// Contended only while a hash worker writes one piece of its own.
    fn claim(&self) {
        while self
            .busy
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
}

/// One device's writer thread; dropping it finishes queued jobs and joins.
pub(crate) struct DiskWriter {
    pub shared: Arc<WriterShared>,
    thread: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
}

impl DiskWriter {
    pub fn start(device: u64, config: WriterConfig) -> std::io::Result<DiskWriter> {
        let shared = Arc::new(WriterShared {
            queue: WorkQueue::new(config.queue_capacity, 1),
            counters: WriterCounters::default(),
            config,
            busy: AtomicBool::new(false),
            syncs: WorkQueue::new(SYNC_QUEUE, 1),
        });
        let s = shared.clone();
        let syncer = std::thread::Builder::new()
            .name(format!("disk-sync-{device:x}"))
            .spawn(move || sync_loop(&s))?;
        let s = shared.clone();
        let thread = match std::thread::Builder::new()
            .name(format!("disk-writer-{device:x}"))
            .spawn(move || writer_loop(&s))
        {
            Ok(t) => t,
            Err(e) => {
                shared.syncs.close();
                let _ = syncer.join();
                return Err(e);
            }
        };
        Ok(DiskWriter {
            shared,
            thread: Some(thread),
            syncer: Some(syncer),
        })
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        self.shared.queue.close();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
        // After the writer: the syncs it handed over still run.
        self.shared.syncs.close();
        if let Some(t) = self.syncer.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

fn writer_loop(s: &WriterShared) {
    s.queue.register(0);
    let limit = s.config.batch_limit.max(1);
    let mut batch = Vec::with_capacity(limit);
    while let Some(first) = s.queue.pop_or_park(0) {
        batch.push(first);
        while batch.len() < limit {
            match s.queue.pop() {
                Some(x) => batch.push(x),
                None => break,
            }
        }
        s.counters.batches.fetch_add(1, Ordering::Relaxed);
        let bytes = batch_bytes(&batch);
        let started = std::time::Instant::now();
        s.claim();
        process_batch(s, &mut batch);
        s.busy.store(false, Ordering::Release);
        if let Some(rate) = s.config.max_bytes_per_sec.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
            if let Some(rest) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
}

fn sync_loop(s: &WriterShared) {
    s.syncs.register(0);
    while let Some((targets, done)) = s.syncs.pop_or_park(0) {
        s.counters.syncs.fetch_add(1, Ordering::Relaxed);
        let mut result = Ok(());
        for t in &targets {
            if let Err(e) = t.file().and_then(|f| datasync(f.as_raw_fd())) {
                result = Err(StorageError::from_io(&t.path, 0, e));
                break;
            }
        }
        if result.is_err() {
            s.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        drop(targets);
        done.finish(result);
    }
}

fn batch_bytes(batch: &[WriterItem]) -> u64 {
    batch
        .iter()
        .map(|item| match item {
            WriterItem::Write { chunks, .. } => chunks.iter().map(|c| c.data.len() as u64).sum(),
            WriterItem::Sync { .. } => 0,
        })
        .sum()
}

/// A chunk's place in the batch: sort key and where it came from.
#[derive(Clone, Copy)]
struct Key {
    target: u64,
    offset: u64,
    item: u32,
    chunk: u32,
}

fn process_batch(s: &WriterShared, batch: &mut Vec<WriterItem>) {
    let mut keys = Vec::new();
    for (i, item) in batch.iter().enumerate() {
        if let WriterItem::Write { chunks, .. } = item {
            for (c, ch) in chunks.iter().enumerate() {
                if !ch.data.is_empty() {
                    keys.push(Key {
                        target: ch.target.id,
                        offset: ch.offset,
                        item: i as u32,
                        chunk: c as u32,
                    });
                }
            }
        }
    }
    keys.sort_unstable_by_key(|k| (k.target, k.offset));
    let mut failed: Vec<Option<StorageError>> = (0..batch.len()).map(|_| None).collect();
    let chunk_of = |k: &Key| -> &Chunk {
        match &batch[k.item as usize] {
            WriterItem::Write { chunks, .. } => &chunks[k.chunk as usize],
            // Keys are only made for write items.
            WriterItem::Sync { .. } => unreachable!("sync items have no chunks"),
        }
    };
    let mut bufs: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    while start < keys.len() {
        let first = chunk_of(&keys[start]);
        let mut end_off = first.offset + first.data.len() as u64;
        let mut end = start + 1;
        while end < keys.len() && keys[end].target == keys[start].target {
            let c = chunk_of(&keys[end]);
            if c.offset != end_off {
                break;
            }
            end_off += c.data.len() as u64;
            end += 1;
        }
        bufs.clear();
        bufs.extend(keys[start..end].iter().map(|k| &chunk_of(k).data[..]));
        let target = &first.target;
        let began = std::time::Instant::now();
        // Through O_DIRECT for a raw target with `disk.direct_io`.
        let written = target.write_run(first.offset, &bufs, s.config.max_iovecs);
        match written {
            Ok(calls) => {
                let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                crate::metrics::WRITE_LATENCY_US.observe(us);
                crate::metrics::BLOCKS_PER_PWRITEV.observe((end - start) as u64);
                let c = &s.counters;
                c.pwritev_calls.fetch_add(calls, Ordering::Relaxed);
                c.runs_written.fetch_add(1, Ordering::Relaxed);
                c.bytes_written
                    .fetch_add(end_off - first.offset, Ordering::Relaxed);
                let n = (end - start) as u64;
                c.blocks_written.fetch_add(n, Ordering::Relaxed);
                c.max_blocks_per_run.fetch_max(n, Ordering::Relaxed);
            }
            Err((e, at)) => {
                s.counters.pwritev_calls.fetch_add(1, Ordering::Relaxed);
                let err = StorageError::from_io(&target.path, at, e);
                // The run's chunks wholly before `at` are on disk: a piece
                // written in full before the disk filled is not failed.
                for k in &keys[start..end] {
                    let c = chunk_of(k);
                    if c.offset + c.data.len() as u64 <= at {
                        continue;
                    }
                    let slot = &mut failed[k.item as usize];
                    if slot.is_none() {
                        *slot = Some(err.duplicate());
                    }
                }
            }
        }
        start = end;
    }
    drop(bufs);
    for (item, err) in batch.drain(..).zip(failed) {
        let done = match item {
            // The chunks (and their targets) go before the reply: once a
            // caller hears back, the writer holds nothing of its storage.
            WriterItem::Write { chunks, done } => {
                drop(chunks);
                if err.is_none() {
                    s.counters.jobs_written.fetch_add(1, Ordering::Relaxed);
                }
                done
            }
            // After the batch's writes: the sync covers everything queued
            // before it. Waiting for room here is rare (8 syncs behind).
            WriterItem::Sync { targets, done } => {
                if let Err((targets, done)) = s.syncs.push((targets, done)) {
                    drop(targets);
                    s.counters.errors.fetch_add(1, Ordering::Relaxed);
                    done.finish(Err(StorageError::Closed));
                }
                continue;
            }
        };
        match err {
            Some(e) => {
                s.counters.errors.fetch_add(1, Ordering::Relaxed);
                done.finish(Err(e));
            }
            None => done.finish(Ok(())),
        }
    }
}

//! Piece hashing for `create`: this thread reads the payload in large
//! sequential reads, the storage crate's hash pool computes the SHA-1s.
//!
//! The payload is cut into batches of whole pieces (about 1 MiB, or one
//! piece when pieces are larger) so that each read is large and each hash
//! job wakes a worker once for many pieces. At most `in_flight` batches
//! (32 to 256 MiB in all) exist at a time; their buffers come back with the
//! digests and are reused, so memory stays bounded however large the
//! payload is.
//!
//! The pool's jobs verify a piece against an expected digest and report
//! only match or mismatch; creating a torrent needs the digest itself. So a
//! job here carries no blocks to verify (its expected digest is that of no
//! bytes, so it "verifies" at no cost) and its reply, which the pool runs on
//! the worker thread, hashes the batch. The pool still supplies what matters:
//! one thread per core, the bounded queue and parking when idle.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc::sync_channel;

use anyhow::{Context, anyhow};
use indicatif::ProgressBar;
use sha1::{Digest, Sha1};
use storage::{HashJob, HashPool, HashPoolConfig, sha1_of};

use super::source::{Segment, Source, read_full_at};

/// Read buffers start on a page boundary: the kernel copies from the page
/// cache several times faster into page-aligned memory than into a
/// malloc'd block 16 bytes past one (measured on the development machine:
/// about 0.15 s instead of 0.6-0.8 s of system time per GiB read).
const PAGE: usize = 4096;

/// Where the page-aligned part of `buf` starts.
fn page_offset(buf: &[u8]) -> usize {
    buf.as_ptr().align_offset(PAGE).min(PAGE)
}

/// Target bytes per hash job and per read.
const BATCH: u64 = 1024 * 1024;
/// Bytes of batches kept in flight, at least.
const MIN_IN_FLIGHT_BYTES: u64 = 32 * 1024 * 1024;
/// Upper bound on the bytes held by batches in flight.
const MAX_IN_FLIGHT_BYTES: u64 = 256 * 1024 * 1024;

/// A hashed batch coming back from a worker.
struct Done {
    first_piece: usize,
    digests: Vec<[u8; 20]>,
    buf: Vec<u8>,
    len: usize,
}

/// Reads the concatenation of `segments` in order, opening each source once.
struct Reader<'a> {
    sources: &'a [Source],
    segments: &'a [Segment],
    seg: usize,
    seg_pos: u64,
    open: Option<(usize, File)>,
}

impl Reader<'_> {
    fn fill(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let seg = *self
                .segments
                .get(self.seg)
                .ok_or_else(|| anyhow!("payload ended before its listed size"))?;
            if self.seg_pos == seg.length {
                self.seg += 1;
                self.seg_pos = 0;
                continue;
            }
            let path = &self.sources[seg.source].path;
            let file = match &mut self.open {
                Some((open, f)) if *open == seg.source => &*f,
                slot => {
                    let f = File::open(path).with_context(|| path.display().to_string())?;
                    advise_sequential(&f);
                    &slot.insert((seg.source, f)).1
                }
            };
            let want = (seg.length - self.seg_pos).min((buf.len() - filled) as u64) as usize;
            read_full_at(
                file,
                &mut buf[filled..filled + want],
                seg.offset + self.seg_pos,
            )
            .with_context(|| path.display().to_string())?;
            filled += want;
            self.seg_pos += want as u64;
        }
        Ok(())
    }
}

/// Tells the kernel to read ahead aggressively; only a hint, so failure is
/// ignored.
fn advise_sequential(f: &File) {
    // SAFETY: a hint on a descriptor we own; it touches no memory.
    let _ = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
}

/// The SHA-1 of every piece of the byte space `segments` describes.
/// `workers` 0 means one per core.
pub fn hash_pieces(
    sources: &[Source],
    segments: &[Segment],
    piece_length: u32,
    workers: usize,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<Vec<[u8; 20]>> {
    let total: u64 = segments.iter().map(|s| s.length).sum();
    let piece = u64::from(piece_length);
    let piece_count = usize::try_from(total.div_ceil(piece))?;
    let batch = if piece >= BATCH {
        piece
    } else {
        BATCH / piece * piece
    };
    let cores = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers
    };
    // Enough batches queued that the workers keep hashing while this thread
    // waits to be scheduled again (on a loaded machine that takes
    // milliseconds): at least two per worker and 32 MiB, at most 256 MiB.
    let in_flight = (2 * cores)
        .max((MIN_IN_FLIGHT_BYTES / batch) as usize)
        .min((MAX_IN_FLIGHT_BYTES / batch) as usize)
        .max(2);
    let pool = HashPool::new(HashPoolConfig {
        workers: cores,
        queue_capacity: in_flight,
    })
    .context("starting hash workers")?;
    let handle = pool.handle();
    let empty_digest = sha1_of(&[]);
    // Room for every batch in flight, so a worker's send never waits.
    let (tx, rx) = sync_channel::<Done>(in_flight);
    let mut digests = vec![[0u8; 20]; piece_count];
    let mut free: Vec<Vec<u8>> = Vec::new();
    let mut outstanding = 0usize;
    let mut reader = Reader {
        sources,
        segments,
        seg: 0,
        seg_pos: 0,
        open: None,
    };

    let mut store = |done: Done, free: &mut Vec<Vec<u8>>| {
        let n = done.digests.len();
        digests[done.first_piece..done.first_piece + n].copy_from_slice(&done.digests);
        if let Some(bar) = bar {
            bar.inc(done.len as u64);
        }
        free.push(done.buf);
    };

    let mut start = 0u64;
    while start < total {
        if outstanding == in_flight {
            let done = rx.recv().context("a hash worker stopped")?;
            outstanding -= 1;
            store(done, &mut free);
        }
        let len = (total - start).min(batch) as usize;
        let mut buf = free
            .pop()
            .unwrap_or_else(|| vec![0u8; batch as usize + PAGE]);
        let at = page_offset(&buf);
        reader.fill(&mut buf[at..at + len])?;
        let first_piece = (start / piece) as usize;
        let tx = tx.clone();
        let piece_len = piece_length as usize;
        let job = HashJob {
            piece: first_piece as u32,
            blocks: Vec::new(),
            expected: empty_digest,
            reply: Box::new(move |_| {
                let digests = buf[at..at + len]
                    .chunks(piece_len)
                    .map(|p| Sha1::digest(p).into())
                    .collect();
                let _ = tx.send(Done {
                    first_piece,
                    digests,
                    buf,
                    len,
                });
            }),
        };
        handle
            .submit(job)
            .map_err(|_| anyhow!("the hash pool shut down"))?;
        outstanding += 1;
        start += len as u64;
    }
    for _ in 0..outstanding {
        let done = rx.recv().context("a hash worker stopped")?;
        store(done, &mut free);
    }
    Ok(digests)
}

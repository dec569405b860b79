//! Recheck: hash the data already on disk to find which pieces are good.
//!
//! The calling thread reads the wanted pieces in torrent order with large
//! sequential reads (several pieces per `pread`, `POSIX_FADV_SEQUENTIAL`),
//! slices each read buffer into pieces without copying, and hands them to
//! the hash pool, so reading and hashing overlap and the hashing spreads over
//! every worker. Bytes in flight are bounded; a read that fails is retried
//! piece by piece so one bad sector marks only its own pieces bad.

use std::sync::mpsc::sync_channel;

use bytes::Bytes;

use crate::error::StorageError;
use crate::hash::{HashDone, HashHandle, HashJob};
use crate::storage::Storage;

/// Read sizes and the memory bound.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecheckConfig {
    /// Bytes per read (rounded to whole pieces, at least one piece).
    pub read_size: usize,
    /// Bytes read but not yet hashed, at most (plus one read).
    pub max_in_flight: usize,
}

impl Default for RecheckConfig {
    fn default() -> Self {
        RecheckConfig {
            read_size: 8 << 20,
            max_in_flight: 64 << 20,
        }
    }
}

/// The outcome of a recheck.
#[derive(Debug)]
pub struct RecheckReport {
    /// One entry per piece of the torrent; `true` where the piece was
    /// checked and matched (pieces not asked for are `false`).
    pub good: Vec<bool>,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Pieces that could not be read, with why (short files read as bad
    /// pieces without an entry here).
    pub read_errors: Vec<(u32, StorageError)>,
}

/// Rechecks `pieces` (all of them if `None`) against `hashes` (one per
/// piece) using the hash pool behind `pool`.
pub fn recheck(
    storage: &Storage,
    hashes: &[[u8; 20]],
    pieces: Option<&[u32]>,
    pool: &HashHandle,
    config: &RecheckConfig,
) -> Result<RecheckReport, StorageError> {
    let layout = storage.layout();
    let count = layout.piece_count();
    if hashes.len() != count as usize {
        return Err(StorageError::InvalidLayout(format!(
            "{} piece hashes for {count} pieces",
            hashes.len()
        )));
    }
    let mut wanted: Vec<u32> = match pieces {
        Some(p) => p.to_vec(),
        None => (0..count).collect(),
    };
    wanted.sort_unstable();
    wanted.dedup();
    if let Some(&p) = wanted.iter().find(|&&p| p >= count) {
        return Err(StorageError::PieceOutOfRange { piece: p, count });
    }
    storage.advise_sequential();

    let pl = layout.piece_length() as usize;
    let per_read = (config.read_size / pl).max(1);
    let max_in_flight = config.max_in_flight.max(pl);
    // Every piece in flight but the last is a full piece, so this bounds the
    // results that can be waiting; replies never block a hash worker.
    let cap = (max_in_flight / pl + per_read + 2).min(wanted.len().max(1));
    let (tx, rx) = sync_channel::<HashDone>(cap);

    let mut report = RecheckReport {
        good: vec![false; count as usize],
        bytes_read: 0,
        read_errors: Vec::new(),
    };
    let mut in_flight_bytes = 0usize;
    let mut in_flight = 0usize;
    let receive = |report: &mut RecheckReport, in_flight_bytes: &mut usize| -> bool {
        match rx.recv() {
            Ok(d) => {
                let p = d.piece();
                *in_flight_bytes -= layout.piece_len(p).unwrap_or(0) as usize;
                report.good[p as usize] = d.is_ok();
                true
            }
            Err(_) => false,
        }
    };

    let submit = |piece: u32, data: Bytes| -> Result<(), StorageError> {
        let tx = tx.clone();
        pool.submit(HashJob {
            piece,
            blocks: vec![data],
            expected: hashes[piece as usize],
            reply: Box::new(move |d| {
                let _ = tx.send(d);
            }),
        })
        .map_err(|_| StorageError::Closed)
    };

    let mut i = 0;
    while i < wanted.len() {
        // A run of consecutive pieces, at most `per_read` long.
        let mut j = i + 1;
        while j < wanted.len() && j - i < per_read && wanted[j] == wanted[j - 1] + 1 {
            j += 1;
        }
        let first = wanted[i];
        let start = layout.piece_offset(first);
        let end = layout.piece_offset(wanted[j - 1]) + layout.piece_len(wanted[j - 1])?;
        let len = (end - start) as usize;
        while in_flight > 0 && in_flight_bytes + len > max_in_flight {
            if !receive(&mut report, &mut in_flight_bytes) {
                return Err(StorageError::Closed);
            }
            in_flight -= 1;
        }
        let mut buf = vec![0u8; len];
        let whole = storage.read_range_into(start, &mut buf);
        report.bytes_read += len as u64;
        let buf = Bytes::from(buf);
        for &p in &wanted[i..j] {
            let at = (layout.piece_offset(p) - start) as usize;
            let plen = layout.piece_len(p)? as usize;
            let data = match &whole {
                Ok(()) => buf.slice(at..at + plen),
                // Isolate the failure: read each piece on its own.
                Err(_) => match storage.read_blocking(p, 0, plen as u64) {
                    Ok(d) => d,
                    Err(e) => {
                        if !matches!(&e, StorageError::Io { source, .. }
                            if source.kind() == std::io::ErrorKind::UnexpectedEof)
                        {
                            report.read_errors.push((p, e));
                        }
                        continue;
                    }
                },
            };
            submit(p, data)?;
            in_flight_bytes += plen;
            in_flight += 1;
        }
        i = j;
    }
    while in_flight > 0 {
        if !receive(&mut report, &mut in_flight_bytes) {
            return Err(StorageError::Closed);
        }
        in_flight -= 1;
    }
    Ok(report)
}

//! Resume data: which pieces are verified, written and fsynced, plus each
//! target's size and modification time when that was recorded.
//!
//! File format (version 1, little-endian), small and self-checking:
//!
//! ```text
//! magic      8 bytes  "ACTRRSM\0"
//! version    u32      1
//! info_hash  20 bytes
//! pieces     u32      piece count
//! targets    u32      number of targets (files, or 1 for raw mode)
//! per target: size u64, mtime_sec i64, mtime_nsec u32
//! have       ceil(pieces / 8) bytes, piece 0 in the high bit of byte 0
//! checksum   20 bytes SHA-1 of everything above
//! ```
//!
//! The file is untrusted on load: its size is bounded before it is read,
//! every count is checked against the bytes actually present before
//! anything is allocated, and any defect means "ignore it and recheck",
//! with the reason reported. Saving writes `<path>.tmp`, fsyncs it, renames
//! it over `<path>` and fsyncs the directory, so a crash leaves either the
//! old file or the new one; a leftover `.tmp` is never read.
//!
//! In raw-disk mode the one stamp is that of the target. For an image file
//! that works as for any file; for a block device the size reads as 0 and
//! the device node's mtime does not follow writes, so there the stamps only
//! catch a different device node, not foreign writes to the disk.
//!
//! [`ResumeTracker`] is the plain state machine that decides what a save may
//! claim: a piece is claimed only after a sync that was requested after its
//! write completed has succeeded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use crate::error::StorageError;
use crate::storage::Storage;

const MAGIC: &[u8; 8] = b"ACTRRSM\0";
const VERSION: u32 = 1;
/// Largest resume file read (1 M targets and 100 M pieces fit easily).
const MAX_FILE: u64 = 64 << 20;
const STAMP_LEN: usize = 8 + 8 + 4;
const HEADER_LEN: usize = 8 + 4 + 20 + 4 + 4;

/// Size and modification time of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part.
    pub mtime_nsec: u32,
}

/// What a resume file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeData {
    /// The torrent it belongs to.
    pub info_hash: [u8; 20],
    /// One stamp per target, in layout order.
    pub stamps: Vec<FileStamp>,
    /// Verified, written and synced pieces.
    pub have: Vec<bool>,
}

/// Why a resume file was not used.
#[derive(thiserror::Error, Debug)]
pub enum ResumeError {
    /// Reading it failed.
    #[error("reading resume file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Larger than any real resume file.
    #[error("resume file is {0} bytes, more than the limit")]
    TooLarge(u64),
    /// Does not start with the magic bytes.
    #[error("not a resume file (bad magic)")]
    BadMagic,
    /// Written by an incompatible version.
    #[error("unsupported resume file version {0}")]
    Version(u32),
    /// Its length disagrees with its own counts (truncated or padded).
    #[error("resume file length {got} does not match its header ({expected})")]
    Length {
        /// Bytes present.
        got: u64,
        /// Bytes the header implies.
        expected: u64,
    },
    /// The checksum does not match (corrupted).
    #[error("resume file checksum mismatch")]
    Checksum,
    /// It belongs to another torrent or another shape of it.
    #[error("resume file does not match this torrent: {0}")]
    Mismatch(&'static str),
}

impl ResumeData {
    /// Serialises to the version-1 format.
    pub fn encode(&self) -> Vec<u8> {
        let pieces = self.have.len();
        let mut out = Vec::with_capacity(
            HEADER_LEN + self.stamps.len() * STAMP_LEN + pieces.div_ceil(8) + 20,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.info_hash);
        out.extend_from_slice(&(pieces as u32).to_le_bytes());
        out.extend_from_slice(&(self.stamps.len() as u32).to_le_bytes());
        for s in &self.stamps {
            out.extend_from_slice(&s.size.to_le_bytes());
            out.extend_from_slice(&s.mtime_sec.to_le_bytes());
            out.extend_from_slice(&s.mtime_nsec.to_le_bytes());
        }
        let mut bits = vec![0u8; pieces.div_ceil(8)];
        for (i, h) in self.have.iter().enumerate() {
            if *h {
                bits[i / 8] |= 0x80 >> (i % 8);
            }
        }
        out.extend_from_slice(&bits);
        let sum: [u8; 20] = Sha1::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }

    /// Parses untrusted bytes; never panics.
    pub fn decode(b: &[u8]) -> Result<ResumeData, ResumeError> {
        if b.len() < HEADER_LEN + 20 {
            if b.len() < 8 || &b[..8] != MAGIC {
                return Err(ResumeError::BadMagic);
            }
            return Err(ResumeError::Length {
                got: b.len() as u64,
                expected: (HEADER_LEN + 20) as u64,
            });
        }
        if &b[..8] != MAGIC {
            return Err(ResumeError::BadMagic);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u32_at(8);
        if version != VERSION {
            return Err(ResumeError::Version(version));
        }
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&b[12..32]);
        let pieces = u32_at(32) as u64;
        let targets = u32_at(36) as u64;
        let expected = HEADER_LEN as u64 + targets * STAMP_LEN as u64 + pieces.div_ceil(8) + 20;
        if expected != b.len() as u64 {
            return Err(ResumeError::Length {
                got: b.len() as u64,
                expected,
            });
        }
        let (body, sum) = b.split_at(b.len() - 20);
        if Sha1::digest(body).as_slice() != sum {
            return Err(ResumeError::Checksum);
        }
        // Counts are now known to fit in the bytes present.
        let mut stamps = Vec::with_capacity(targets as usize);
        let mut o = HEADER_LEN;
        for _ in 0..targets {
            let mut u64b = [0u8; 8];
            u64b.copy_from_slice(&b[o..o + 8]);
            let size = u64::from_le_bytes(u64b);
            u64b.copy_from_slice(&b[o + 8..o + 16]);
            let mtime_sec = i64::from_le_bytes(u64b);
            let mtime_nsec = u32_at(o + 16);
            stamps.push(FileStamp {
                size,
                mtime_sec,
                mtime_nsec,
            });
            o += STAMP_LEN;
        }
        let have = (0..pieces as usize)
            .map(|i| b[o + i / 8] & (0x80 >> (i % 8)) != 0)
            .collect();
        Ok(ResumeData {
            info_hash,
            stamps,
            have,
        })
    }
}

/// Saves atomically: temp file, fsync, rename, fsync of the directory.
pub fn save(path: &Path, data: &ResumeData) -> Result<(), StorageError> {
    crate::fs::write_atomic(path, &data.encode()).map_err(|(p, e)| StorageError::from_io(&p, 0, e))
}

/// Reads a resume file. `Ok(None)` if there is none; a leftover `.tmp`
/// from an interrupted save is ignored.
pub fn load(path: &Path) -> Result<Option<ResumeData>, ResumeError> {
    let io = |source| ResumeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = f.metadata().map_err(io)?.len();
    if len > MAX_FILE {
        return Err(ResumeError::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE + 1), &mut buf).map_err(io)?;
    ResumeData::decode(&buf).map(Some)
}

/// What to trust after loading resume data.
#[derive(Debug)]
pub struct ResumeCheck {
    /// Pieces that may be treated as present without hashing.
    pub have: Vec<bool>,
    /// Pieces to recheck (their files changed, or no usable resume data).
    pub recheck: Vec<u32>,
    /// Why the file was (partly) distrusted, for the log.
    pub reason: Option<String>,
}

/// Compares loaded resume data with the files as they are now. Pieces are
/// trusted only if every target they touch matches in size and mtime; pieces
/// touching a changed target are all rechecked. Without usable data every
/// piece is rechecked.
pub fn validate(
    storage: &Storage,
    info_hash: &[u8; 20],
    loaded: Result<Option<ResumeData>, ResumeError>,
) -> Result<ResumeCheck, StorageError> {
    let layout = storage.layout();
    let n = layout.piece_count() as usize;
    let all = |reason: String| ResumeCheck {
        have: vec![false; n],
        recheck: (0..n as u32).collect(),
        reason: Some(reason),
    };
    let data = match loaded {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(all("no resume data".into())),
        Err(e) => return Ok(all(format!("resume data ignored: {e}"))),
    };
    let now = storage.stamps()?;
    let mismatch = if data.info_hash != *info_hash {
        Some(ResumeError::Mismatch("info hash"))
    } else if data.have.len() != n {
        Some(ResumeError::Mismatch("piece count"))
    } else if data.stamps.len() != now.len() {
        Some(ResumeError::Mismatch("file count"))
    } else {
        None
    };
    if let Some(e) = mismatch {
        return Ok(all(format!("resume data ignored: {e}")));
    }
    let mut suspect = vec![false; n];
    let mut changed = Vec::new();
    for (t, (old, new)) in data.stamps.iter().zip(&now).enumerate() {
        if old != new {
            changed.push(t);
            for f in layout.files_of_target(t) {
                for p in layout.pieces_of_file(f) {
                    suspect[p as usize] = true;
                }
            }
        }
    }
    let have = data
        .have
        .iter()
        .zip(&suspect)
        .map(|(h, s)| *h && !*s)
        .collect();
    let recheck = (0..n as u32).filter(|&p| suspect[p as usize]).collect();
    let reason = (!changed.is_empty()).then(|| {
        format!(
            "{} file(s) changed size or modification time since the resume data was saved",
            changed.len()
        )
    });
    Ok(ResumeCheck {
        have,
        recheck,
        reason,
    })
}

/// When to save.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResumePolicy {
    /// Save after this many newly written pieces...
    pub every_pieces: usize,
    /// ...or this long after the last save, whichever comes first.
    #[serde(rename = "every_ms", with = "crate::serde_fmt::duration_ms")]
    pub every: Duration,
}

impl Default for ResumePolicy {
    fn default() -> Self {
        ResumePolicy {
            every_pieces: 64,
            every: Duration::from_secs(30),
        }
    }
}

/// Pieces covered by one sync; hand it back to `commit` or `abort`.
#[derive(Debug)]
#[must_use]
pub struct Checkpoint {
    pieces: Vec<u32>,
}

impl Checkpoint {
    /// The pieces this checkpoint will claim once synced.
    pub fn pieces(&self) -> &[u32] {
        &self.pieces
    }
}

/// Decides what a resume save may claim. Time is passed in.
///
/// Flow: `written(p)` when a write completes; when `due(now)`, `begin(now)`
/// takes the written-but-unsynced pieces, the owner asks the storage to sync
/// and on success calls `commit` (then saves [`ResumeTracker::have`]), on
/// failure `abort` (those pieces must be fetched again).
#[derive(Debug)]
pub struct ResumeTracker {
    durable: Vec<bool>,
    pending: Vec<u32>,
    syncing: bool,
    last_save: Instant,
    policy: ResumePolicy,
}

impl ResumeTracker {
    /// Starts from the pieces already trusted on disk.
    pub fn new(durable: Vec<bool>, policy: ResumePolicy, now: Instant) -> Self {
        ResumeTracker {
            durable,
            pending: Vec::new(),
            syncing: false,
            last_save: now,
            policy,
        }
    }

    /// A verified piece has been written (not yet synced).
    pub fn written(&mut self, piece: u32) {
        self.pending.push(piece);
    }

    /// True when a checkpoint should start now.
    pub fn due(&self, now: Instant) -> bool {
        !self.syncing
            && !self.pending.is_empty()
            && (self.pending.len() >= self.policy.every_pieces
                || now.duration_since(self.last_save) >= self.policy.every)
    }

    /// Takes every written piece into a checkpoint; request a sync next.
    /// Pieces written after this call wait for the next checkpoint.
    pub fn begin(&mut self) -> Checkpoint {
        self.syncing = true;
        Checkpoint {
            pieces: std::mem::take(&mut self.pending),
        }
    }

    /// The sync succeeded: the checkpoint's pieces may be claimed.
    pub fn commit(&mut self, cp: Checkpoint, now: Instant) {
        for p in cp.pieces {
            if let Some(d) = self.durable.get_mut(p as usize) {
                *d = true;
            }
        }
        self.syncing = false;
        self.last_save = now;
    }

    /// The sync failed: nothing is claimed; the pieces are returned so the
    /// owner can fetch them again.
    pub fn abort(&mut self, cp: Checkpoint) -> Vec<u32> {
        self.syncing = false;
        cp.pieces
    }

    /// Pieces that a save may claim.
    pub fn have(&self) -> &[bool] {
        &self.durable
    }

    /// Pieces written but not yet claimable.
    pub fn unsynced(&self) -> usize {
        self.pending.len()
    }

    /// Runs a whole checkpoint on the calling thread: sync, commit, save.
    /// On a sync failure nothing new is claimed and the pieces come back in
    /// the error's company.
    pub fn checkpoint_blocking(
        &mut self,
        storage: &Storage,
        info_hash: &[u8; 20],
        path: &Path,
        now: Instant,
    ) -> Result<(), (StorageError, Vec<u32>)> {
        let cp = self.begin();
        if let Err(e) = storage.sync_blocking() {
            let lost = self.abort(cp);
            return Err((e, lost));
        }
        self.commit(cp, now);
        let data = ResumeData {
            info_hash: *info_hash,
            stamps: storage.stamps().map_err(|e| (e, Vec::new()))?,
            have: self.durable.clone(),
        };
        save(path, &data).map_err(|e| (e, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ResumeData {
        ResumeData {
            info_hash: [7; 20],
            stamps: vec![
                FileStamp {
                    size: 10,
                    mtime_sec: -3,
                    mtime_nsec: 999,
                },
                FileStamp {
                    size: 1 << 40,
                    mtime_sec: 1_700_000_000,
                    mtime_nsec: 0,
                },
            ],
            have: (0..13).map(|i| i % 3 == 0).collect(),
        }
    }

    #[test]
    fn roundtrip_and_defects() {
        let d = sample();
        let b = d.encode();
        assert_eq!(ResumeData::decode(&b).unwrap(), d);
        assert!(matches!(
            ResumeData::decode(&b[..b.len() - 1]),
            Err(ResumeError::Length { .. })
        ));
        let mut c = b.clone();
        c[HEADER_LEN + 3] ^= 1;
        assert!(matches!(ResumeData::decode(&c), Err(ResumeError::Checksum)));
        let mut c = b.clone();
        c[8] = 9;
        assert!(matches!(
            ResumeData::decode(&c),
            Err(ResumeError::Version(9))
        ));
        // A huge count with few bytes must not allocate.
        let mut c = b.clone();
        c[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        c[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ResumeData::decode(&c),
            Err(ResumeError::Length { .. })
        ));
        assert!(matches!(
            ResumeData::decode(b"short"),
            Err(ResumeError::BadMagic)
        ));
    }

    #[test]
    fn tracker_claims_only_after_commit() {
        let t0 = Instant::now();
        let policy = ResumePolicy {
            every_pieces: 2,
            every: Duration::from_secs(10),
        };
        let mut t = ResumeTracker::new(vec![false; 4], policy, t0);
        assert!(!t.due(t0));
        t.written(1);
        assert!(!t.due(t0));
        assert!(t.due(t0 + Duration::from_secs(10)));
        t.written(2);
        assert!(t.due(t0));
        let cp = t.begin();
        t.written(3); // after the sync was requested: not covered
        assert!(!t.due(t0), "one checkpoint at a time");
        assert_eq!(t.have(), &[false; 4]);
        t.commit(cp, t0);
        assert_eq!(t.have(), &[false, true, true, false]);
        assert_eq!(t.unsynced(), 1);
        let cp = t.begin();
        assert_eq!(t.abort(cp), vec![3]);
        assert_eq!(t.have(), &[false, true, true, false]);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = ResumeData::decode(&bytes);
        }
    }
}

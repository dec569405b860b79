//! Resume data: which pieces are verified, written and fsynced, plus each
//! target's size and modification time when that was recorded.
//!
//! File format (version 2, little-endian), small and self-checking:
//!
//! ```text
//! magic      8 bytes  "ACTRRSM\0"
//! version    u32      2
//! info_hash  20 bytes
//! pieces     u32      piece count
//! targets    u32      number of targets (files, or 1 for raw mode)
//! files      u32      number of files (0: no selection recorded)
//! slots      u32      part-file slots in use
//! refs       u32      file indices named by all slots together
//! per target: present u8, size u64, mtime_sec i64, mtime_nsec u32
//! part file:  present u8, size u64, mtime_sec i64, mtime_nsec u32
//! per file:   priority u8 (0 skip, 1 low, 2 normal, 3 high)
//! per slot:   piece u32, slot u32, count u32, then count file indices u32
//! have       ceil(pieces / 8) bytes, piece 0 in the high bit of byte 0
//! checksum   20 bytes SHA-1 of everything above
//! ```
//!
//! Version 1 (no selection, no part file, every target present: the header
//! without `files`, `slots` and `refs`, stamps without the `present` byte)
//! still loads, as "every file selected, nothing parked".
//!
//! The file is untrusted on load: its size is bounded before it is read,
//! every count is checked against the bytes actually present before
//! anything is allocated, and any defect means "ignore it and recheck",
//! with the reason reported. Saving writes `<path>.tmp`, fsyncs it, renames
//! it over `<path>` and fsyncs the directory, so a crash leaves either the
//! old file or the new one; a leftover `.tmp` is never read. A spare file
//! beside it (`.spare`, allocated zeros) takes the save when the disk is
//! full; see [`save`].
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
use crate::parts::SlotRecord;
use crate::storage::{Source, Stamps, Storage};

const MAGIC: &[u8; 8] = b"ACTRRSM\0";
const VERSION: u32 = 2;
/// Largest resume file read (1 M targets and 100 M pieces fit easily).
const MAX_FILE: u64 = 64 << 20;
const STAMP_LEN: usize = 8 + 8 + 4;
const HEADER_LEN: usize = 8 + 4 + 20 + 4 + 4;
const HEADER2_LEN: usize = HEADER_LEN + 4 + 4 + 4;
const OPT_STAMP_LEN: usize = 1 + STAMP_LEN;
const SLOT_LEN: usize = 4 + 4 + 4;

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
    /// One stamp per target, in layout order, and the part file's.
    pub stamps: Stamps,
    /// Verified, written and synced pieces.
    pub have: Vec<bool>,
    /// The selection: one priority per file (0 skip, 1 low, 2 normal,
    /// 3 high); empty when none was recorded (every file normal).
    pub priorities: Vec<u8>,
    /// What the part file holds.
    pub slots: Vec<SlotRecord>,
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
    /// What `storage` holds now, with `have` and the file priorities.
    pub fn of(
        storage: &Storage,
        info_hash: [u8; 20],
        have: Vec<bool>,
        priorities: Vec<u8>,
    ) -> Result<ResumeData, StorageError> {
        Ok(ResumeData {
            info_hash,
            stamps: storage.stamps()?,
            have,
            priorities,
            slots: storage.slot_records(),
        })
    }

    /// Serialises to the version-2 format.
    pub fn encode(&self) -> Vec<u8> {
        let pieces = self.have.len();
        let refs: usize = self.slots.iter().map(|s| s.files.len()).sum();
        let mut out = Vec::with_capacity(
            HEADER2_LEN
                + (self.stamps.targets.len() + 1) * OPT_STAMP_LEN
                + self.priorities.len()
                + self.slots.len() * SLOT_LEN
                + refs * 4
                + pieces.div_ceil(8)
                + 20,
        );
        let u32s = |out: &mut Vec<u8>, v: usize| out.extend_from_slice(&(v as u32).to_le_bytes());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.info_hash);
        u32s(&mut out, pieces);
        u32s(&mut out, self.stamps.targets.len());
        u32s(&mut out, self.priorities.len());
        u32s(&mut out, self.slots.len());
        u32s(&mut out, refs);
        let stamp = |out: &mut Vec<u8>, s: &Option<FileStamp>| {
            let s = s.unwrap_or(FileStamp {
                size: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
            });
            out.extend_from_slice(&s.size.to_le_bytes());
            out.extend_from_slice(&s.mtime_sec.to_le_bytes());
            out.extend_from_slice(&s.mtime_nsec.to_le_bytes());
        };
        for s in self
            .stamps
            .targets
            .iter()
            .chain(std::iter::once(&self.stamps.part))
        {
            out.push(u8::from(s.is_some()));
            stamp(&mut out, s);
        }
        out.extend_from_slice(&self.priorities);
        for s in &self.slots {
            out.extend_from_slice(&s.piece.to_le_bytes());
            out.extend_from_slice(&s.slot.to_le_bytes());
            u32s(&mut out, s.files.len());
            for f in &s.files {
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        seal(out, &self.have)
    }

    /// Parses untrusted bytes (version 1 or 2); never panics, and allocates
    /// nothing before the counts are checked against the bytes present.
    pub fn decode(b: &[u8]) -> Result<ResumeData, ResumeError> {
        if b.len() < 8 || &b[..8] != MAGIC {
            return Err(ResumeError::BadMagic);
        }
        if b.len() < HEADER_LEN + 20 {
            return Err(ResumeError::Length {
                got: b.len() as u64,
                expected: (HEADER_LEN + 20) as u64,
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u32_at(8);
        if version != 1 && version != VERSION {
            return Err(ResumeError::Version(version));
        }
        let v2 = version == 2;
        let header = if v2 { HEADER2_LEN } else { HEADER_LEN };
        if b.len() < header + 20 {
            return Err(ResumeError::Length {
                got: b.len() as u64,
                expected: (header + 20) as u64,
            });
        }
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&b[12..32]);
        let pieces = u64::from(u32_at(32));
        let targets = u64::from(u32_at(36));
        let (files, slots, refs) = if v2 {
            (
                u64::from(u32_at(40)),
                u64::from(u32_at(44)),
                u64::from(u32_at(48)),
            )
        } else {
            (0, 0, 0)
        };
        let stamp_len = if v2 { OPT_STAMP_LEN } else { STAMP_LEN } as u64;
        let part_len = if v2 { OPT_STAMP_LEN as u64 } else { 0 };
        let expected = header as u64
            + targets * stamp_len
            + part_len
            + files
            + slots * SLOT_LEN as u64
            + refs * 4
            + pieces.div_ceil(8)
            + 20;
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
        let mut o = header;
        let read_stamp = |o: &mut usize, optional: bool| -> Option<FileStamp> {
            let present = !optional || b[*o] != 0;
            if optional {
                *o += 1;
            }
            let mut u64b = [0u8; 8];
            u64b.copy_from_slice(&b[*o..*o + 8]);
            let size = u64::from_le_bytes(u64b);
            u64b.copy_from_slice(&b[*o + 8..*o + 16]);
            let mtime_sec = i64::from_le_bytes(u64b);
            let mtime_nsec = u32_at(*o + 16);
            *o += STAMP_LEN;
            present.then_some(FileStamp {
                size,
                mtime_sec,
                mtime_nsec,
            })
        };
        let target_stamps = (0..targets).map(|_| read_stamp(&mut o, v2)).collect();
        let part = if v2 { read_stamp(&mut o, true) } else { None };
        let priorities = b[o..o + files as usize].to_vec();
        o += files as usize;
        if priorities.iter().any(|p| *p > 3) {
            return Err(ResumeError::Mismatch("file priority out of range"));
        }
        let mut records = Vec::with_capacity(slots as usize);
        let mut refs_left = refs;
        for _ in 0..slots {
            let (piece, slot, count) = (u32_at(o), u32_at(o + 4), u64::from(u32_at(o + 8)));
            o += SLOT_LEN;
            if count > refs_left {
                return Err(ResumeError::Mismatch("part-file slot counts"));
            }
            refs_left -= count;
            let files = (0..count as usize).map(|i| u32_at(o + 4 * i)).collect();
            o += 4 * count as usize;
            records.push(SlotRecord { piece, slot, files });
        }
        if refs_left != 0 {
            return Err(ResumeError::Mismatch("part-file slot counts"));
        }
        let have = (0..pieces as usize)
            .map(|i| b[o + i / 8] & (0x80 >> (i % 8)) != 0)
            .collect();
        Ok(ResumeData {
            info_hash,
            stamps: Stamps {
                targets: target_stamps,
                part,
            },
            have,
            priorities,
            slots: records,
        })
    }
}

/// Appends the have bits (piece 0 in the high bit of byte 0) and the
/// SHA-1 of everything.
fn seal(mut out: Vec<u8>, have: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; have.len().div_ceil(8)];
    for (i, h) in have.iter().enumerate() {
        if *h {
            bits[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out.extend_from_slice(&bits);
    let sum: [u8; 20] = Sha1::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

/// Saves atomically: temp file, fsync, rename, fsync of the directory.
///
/// The save that matters most comes when the disk is full (a torrent
/// stopped by a failed write records its last verified pieces), and then
/// the temp file cannot be written. So every successful save also keeps a
/// *spare* (`<path>.spare`), a file of real (allocated) zero bytes somewhat
/// larger than the data; when the temp file fails, the data is written
/// into the spare's blocks in place, fsynced and renamed over `<path>`,
/// which needs no new blocks. Either way a crash leaves the old file or the
/// new one. The next successful save makes a new spare.
pub fn save(path: &Path, data: &ResumeData) -> Result<(), StorageError> {
    let bytes = data.encode();
    match crate::fs::write_atomic(path, &bytes) {
        Ok(()) => {
            // Best effort: without room for a spare the next save may still
            // find room for its temp file.
            let _ = reserve_spare(path, bytes.len());
            Ok(())
        }
        Err((p, e)) => {
            // What a failed temp file holds is of no use and takes space.
            let _ = std::fs::remove_file(with_suffix(path, ".tmp"));
            save_into_spare(path, &bytes).map_err(|_| StorageError::from_io(&p, 0, e))
        }
    }
}

/// [`save`], unless `<path>` already holds exactly these bytes and its
/// spare is in place: then nothing is written and `Ok(false)` returned.
/// A torrent restarted from valid resume data with nothing changed would
/// otherwise rewrite (and fsync) the same record at every start. Equal
/// bytes mean equal stamps, pieces, priorities and slots, so the record on
/// disk already says what a save would.
pub fn save_if_changed(path: &Path, data: &ResumeData) -> Result<bool, StorageError> {
    use std::io::Read as _;
    let bytes = data.encode();
    let spare_ok =
        std::fs::metadata(with_suffix(path, ".spare")).is_ok_and(|m| m.len() >= bytes.len() as u64);
    // Read only as many bytes as the new record has, plus one to see a
    // longer file: the old record is not trusted for its length.
    let same = spare_ok
        && File::open(path).is_ok_and(|f| {
            let mut old = Vec::with_capacity(bytes.len() + 1);
            f.take(bytes.len() as u64 + 1).read_to_end(&mut old).is_ok() && old == bytes
        });
    if same {
        return Ok(false);
    }
    save(path, data).map(|()| true)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The spare's size for data of `len` bytes: room for growth (more part
/// file slots) without being rewritten at every save.
fn spare_len(len: usize) -> u64 {
    (len + len / 4 + 4096) as u64
}

/// Makes sure `<path>.spare` exists with room for `len` bytes, its blocks
/// allocated (written, not a sparse hole: a hole needs blocks when written).
fn reserve_spare(path: &Path, len: usize) -> std::io::Result<()> {
    use std::io::Write;
    let spare = with_suffix(path, ".spare");
    if std::fs::metadata(&spare).is_ok_and(|m| m.len() >= len as u64) {
        return Ok(());
    }
    let want = spare_len(len);
    let result = (|| {
        let mut f = File::create(&spare)?;
        let zeros = vec![0u8; 64 << 10];
        let mut left = want;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    })();
    if result.is_err() {
        // A short spare would fail when needed; none is clearer.
        let _ = std::fs::remove_file(&spare);
    }
    result
}

/// Writes `bytes` over the start of the spare (blocks it already holds),
/// trims it, fsyncs and renames it over `path`.
fn save_into_spare(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let spare = with_suffix(path, ".spare");
    let f = std::fs::OpenOptions::new().write(true).open(&spare)?;
    if f.metadata()?.len() < bytes.len() as u64 {
        return Err(std::io::Error::other("resume spare too small"));
    }
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&spare, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all())
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
/// trusted only if every target they touch matches in size and mtime (the
/// part file too, for their parked bytes); pieces touching a changed target
/// are all rechecked. A piece with bytes that are on disk nowhere (of an
/// unselected file, not in the part file) is neither trusted nor rechecked.
/// Without usable data every readable piece is rechecked.
pub fn validate(
    storage: &Storage,
    info_hash: &[u8; 20],
    loaded: Result<Option<ResumeData>, ResumeError>,
) -> Result<ResumeCheck, StorageError> {
    validate_with_journal(storage, info_hash, loaded, None)
}

/// [`validate`], knowing the [`WriteJournal`] a run that did not stop
/// cleanly left (`journal`: the pieces it may have written since its last
/// save). Then a target whose size is unchanged but whose mtime moved was
/// changed by those writes, not by someone else: its pieces listed in
/// `have` (verified and synced before that save) stay trusted, and only the
/// journal's pieces are rechecked (a crash may have cut their writes
/// short; the whole ones are kept). A target whose size changed is rechecked
/// whole as before, and so is everything when the part file is in use
/// (parked bytes move between files outside the journal).
pub fn validate_with_journal(
    storage: &Storage,
    info_hash: &[u8; 20],
    loaded: Result<Option<ResumeData>, ResumeError>,
    journal: Option<&[u32]>,
) -> Result<ResumeCheck, StorageError> {
    let layout = storage.layout();
    let n = layout.piece_count() as usize;
    let sources: Vec<Vec<Source>> = (0..n as u32)
        .map(|p| storage.piece_sources(p))
        .collect::<Result<_, _>>()?;
    let readable: Vec<bool> = sources
        .iter()
        .map(|s| !s.contains(&Source::Missing))
        .collect();
    let all = |reason: String| ResumeCheck {
        have: vec![false; n],
        recheck: (0..n as u32).filter(|&p| readable[p as usize]).collect(),
        reason: Some(reason),
    };
    let data = match loaded {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(all("no resume data".into())),
        Err(e) => return Ok(all(format!("resume data ignored: {e}"))),
    };
    let now = storage.stamps()?;
    let files = layout.files().len();
    let mismatch = if data.info_hash != *info_hash {
        Some(ResumeError::Mismatch("info hash"))
    } else if data.have.len() != n {
        Some(ResumeError::Mismatch("piece count"))
    } else if data.stamps.targets.len() != now.targets.len()
        || (!data.priorities.is_empty() && data.priorities.len() != files)
    {
        Some(ResumeError::Mismatch("file count"))
    } else {
        None
    };
    if let Some(e) = mismatch {
        return Ok(all(format!("resume data ignored: {e}")));
    }
    let part_changed = data.stamps.part != now.part;
    let lenient = journal.is_some() && data.slots.is_empty() && !part_changed;
    let changed: Vec<bool> = data
        .stamps
        .targets
        .iter()
        .zip(&now.targets)
        .map(|(old, new)| match (old, new) {
            // Our own writes since the save moved the mtime: the journal
            // says which pieces they were.
            (Some(o), Some(n)) if lenient => o.size != n.size,
            _ => old != new,
        })
        .collect();
    let suspect: Vec<bool> = sources
        .iter()
        .map(|s| {
            s.iter().any(|src| match src {
                Source::Target(t) => changed[*t],
                Source::Part => part_changed,
                Source::Padding | Source::Missing => false,
            })
        })
        .collect();
    let have: Vec<bool> = (0..n)
        .map(|p| data.have[p] && readable[p] && !suspect[p])
        .collect();
    let mut recheck: Vec<bool> = (0..n).map(|p| readable[p] && suspect[p]).collect();
    let mut from_journal = 0usize;
    for &p in journal.unwrap_or(&[]) {
        let p = p as usize;
        if p < n && readable[p] && !have[p] && !recheck[p] {
            recheck[p] = true;
            from_journal += 1;
        }
    }
    let recheck: Vec<u32> = (0..n as u32).filter(|&p| recheck[p as usize]).collect();
    let n_changed = changed.iter().filter(|c| **c).count() + usize::from(part_changed);
    let reason = if n_changed > 0 {
        Some(format!(
            "{n_changed} file(s) changed size or modification time since the resume data was saved"
        ))
    } else if journal.is_some() {
        Some(format!(
            "unclean stop: {} verified piece(s) trusted, {from_journal} written since the last save rechecked",
            have.iter().filter(|h| **h).count()
        ))
    } else {
        None
    };
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
        let data = ResumeData::of(storage, *info_hash, self.durable.clone(), Vec::new())
            .map_err(|e| (e, Vec::new()))?;
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
            stamps: Stamps {
                targets: vec![
                    Some(FileStamp {
                        size: 10,
                        mtime_sec: -3,
                        mtime_nsec: 999,
                    }),
                    None,
                    Some(FileStamp {
                        size: 1 << 40,
                        mtime_sec: 1_700_000_000,
                        mtime_nsec: 0,
                    }),
                ],
                part: Some(FileStamp {
                    size: 4096,
                    mtime_sec: 5,
                    mtime_nsec: 6,
                }),
            },
            have: (0..13).map(|i| i % 3 == 0).collect(),
            priorities: vec![2, 0, 3],
            slots: vec![
                SlotRecord {
                    piece: 4,
                    slot: 0,
                    files: vec![1],
                },
                SlotRecord {
                    piece: 9,
                    slot: 1,
                    files: vec![0, 1],
                },
            ],
        }
    }

    /// A version-1 file, as the previous release wrote it.
    fn encode_v1(d: &ResumeData) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&d.info_hash);
        out.extend_from_slice(&(d.have.len() as u32).to_le_bytes());
        out.extend_from_slice(&(d.stamps.targets.len() as u32).to_le_bytes());
        for s in d.stamps.targets.iter().flatten() {
            out.extend_from_slice(&s.size.to_le_bytes());
            out.extend_from_slice(&s.mtime_sec.to_le_bytes());
            out.extend_from_slice(&s.mtime_nsec.to_le_bytes());
        }
        seal(out, &d.have)
    }

    #[test]
    fn version_1_still_loads() {
        let mut d = sample();
        d.stamps.targets.retain(Option::is_some);
        d.stamps.part = None;
        d.priorities.clear();
        d.slots.clear();
        assert_eq!(ResumeData::decode(&encode_v1(&d)).unwrap(), d);
    }

    #[test]
    fn hostile_slot_counts_are_refused() {
        let d = sample();
        let b = d.encode();
        // Say the first slot names 2 files instead of 1: the totals no
        // longer add up, whatever the checksum says.
        let at = HEADER2_LEN + 4 * OPT_STAMP_LEN + 3 + 8;
        let mut c = b.clone();
        c[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
        let body = c.len() - 20;
        let sum: [u8; 20] = Sha1::digest(&c[..body]).into();
        c[body..].copy_from_slice(&sum);
        assert!(matches!(
            ResumeData::decode(&c),
            Err(ResumeError::Mismatch(_))
        ));
        // A huge file count with few bytes.
        let mut c = b.clone();
        c[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ResumeData::decode(&c),
            Err(ResumeError::Length { .. })
        ));
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
        c[HEADER2_LEN + 3] ^= 1;
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
    fn an_unchanged_record_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.resume");
        let mut d = sample();
        assert!(save_if_changed(&path, &d).unwrap(), "no file yet");
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let first = ino(&path);
        assert!(!save_if_changed(&path, &d).unwrap());
        assert_eq!(ino(&path), first, "the same file, not a rewrite");
        // A changed record is written.
        d.have[1] = !d.have[1];
        assert!(save_if_changed(&path, &d).unwrap());
        assert_eq!(load(&path).unwrap().unwrap(), d);
        // Without its spare the record is saved again (the save makes one).
        std::fs::remove_file(dir.path().join("x.resume.spare")).unwrap();
        assert!(save_if_changed(&path, &d).unwrap());
        assert!(dir.path().join("x.resume.spare").exists());
        // Same bytes followed by more: not the same record.
        let mut longer = d.encode();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(save_if_changed(&path, &d).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), d.encode());
    }

    #[test]
    fn a_save_the_temp_file_cannot_take_goes_into_the_spare() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.resume");
        let mut d = sample();
        save(&path, &d).unwrap();
        let spare = dir.path().join("x.resume.spare");
        let len = std::fs::metadata(&spare).unwrap().len();
        assert!(len >= d.encode().len() as u64, "spare of {len} bytes");
        // A directory where the temp file goes: creating it fails, as on a
        // full disk.
        std::fs::create_dir(dir.path().join("x.resume.tmp")).unwrap();
        d.have[1] = true;
        save(&path, &d).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), d);
        assert!(!spare.exists(), "the spare became the resume file");
        // No spare left and no temp file: the error names the temp file.
        d.have[0] = false;
        let e = save(&path, &d).unwrap_err().to_string();
        assert!(e.contains("x.resume.tmp"), "{e}");
        assert!(load(&path).unwrap().unwrap().have[0], "old file kept");
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

/// The write journal beside a resume file (`<resume>.writing`): every piece
/// whose write was started since the resume data was last saved, appended
/// before the write is handed to the disk writer. It exists only while a
/// run may have unsaved writes; a clean stop removes it after its last
/// save. Left behind by a crash (kill -9), it lets the next run trust the
/// saved pieces and recheck only these (see [`validate_with_journal`]).
///
/// Format: the 20-byte info hash, then one little-endian u32 per piece.
/// Not fsynced: it guards against a process crash, where the page cache
/// keeps the order of our writes. After a power loss a write may have
/// landed without its entry; that piece is then neither trusted nor
/// rechecked, only downloaded again, so nothing unverified is trusted.
#[derive(Debug)]
pub struct WriteJournal {
    path: PathBuf,
    info_hash: [u8; 20],
    file: Option<File>,
    /// Pieces already in the file (each is written once).
    noted: Vec<bool>,
}

impl WriteJournal {
    /// The journal of the resume file `resume` (nothing is touched yet).
    pub fn new(resume: &Path, info_hash: [u8; 20], pieces: u32) -> Self {
        WriteJournal {
            path: with_suffix(resume, ".writing"),
            info_hash,
            file: None,
            noted: vec![false; pieces as usize],
        }
    }

    /// Records that `piece` is about to be written (once per piece until
    /// [`clear`](Self::clear)); creates the file at the first one.
    pub fn note(&mut self, piece: u32) -> std::io::Result<()> {
        use std::io::Write;
        let Some(seen) = self.noted.get_mut(piece as usize) else {
            return Ok(());
        };
        if *seen {
            return Ok(());
        }
        if self.file.is_none() {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            if f.metadata()?.len() == 0 {
                f.write_all(&self.info_hash)?;
            }
            self.file = Some(f);
        }
        if let Some(f) = &mut self.file {
            f.write_all(&piece.to_le_bytes())?;
        }
        *seen = true;
        Ok(())
    }

    /// Whether the file exists (this run or a crashed one left entries).
    pub fn exists(&self) -> bool {
        self.file.is_some() || self.path.exists()
    }

    /// Removes the file: every write it listed is settled (saved in the
    /// resume data, or known lost).
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file = None;
        self.noted.iter_mut().for_each(|n| *n = false);
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Reads the journal beside `resume`: `None` when there is none or it is
/// not usable (another torrent's, a piece out of range, too large), which
/// means "no unclean stop known" and so the usual checks. Untrusted: its
/// size is bounded by the piece count before it is read.
pub fn load_journal(resume: &Path, info_hash: &[u8; 20], pieces: u32) -> Option<Vec<u32>> {
    let path = with_suffix(resume, ".writing");
    let f = File::open(&path).ok()?;
    let max = 20 + 4 * u64::from(pieces);
    if f.metadata().ok()?.len() > max {
        return None;
    }
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, max), &mut buf).ok()?;
    parse_journal(&buf, info_hash, pieces)
}

/// Parses a journal's bytes (see [`load_journal`]); never panics.
pub fn parse_journal(buf: &[u8], info_hash: &[u8; 20], pieces: u32) -> Option<Vec<u32>> {
    if buf.len() < 20 || &buf[..20] != info_hash || buf.len() as u64 > 20 + 4 * u64::from(pieces) {
        return None;
    }
    // A crash may cut the last entry short: it is ignored (its write had
    // not been handed to the writer).
    let mut out = Vec::with_capacity((buf.len() - 20) / 4);
    for c in buf[20..].chunks_exact(4) {
        let p = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if p >= pieces {
            return None;
        }
        out.push(p);
    }
    Some(out)
}

//! The part file: where the bytes of files the user did not select are kept.
//!
//! A piece that spans a selected file and an unselected one is downloaded
//! and verified whole; its bytes that belong to the selected file go to that
//! file, the others go here, so a file the user did not ask for is never
//! created (libtorrent's `.parts` file does the same). A piece of unselected
//! files only (a stream read ahead into a skipped file) lands here whole.
//!
//! Format: `<state dir>/<info-hash>.parts` is a plain array of *slots*, one
//! piece length each; slot `k` starts at byte `k * piece_length`. A piece's
//! parked bytes sit in its slot at their offset inside the piece (the bytes
//! of selected files leave holes). The file has no header: which slot holds
//! which piece, and the bytes of which files, is the [`SlotTable`], saved in
//! the resume data after the part file is synced, so the table on disk never
//! claims more than the part file holds.
//!
//! Lifecycle:
//!
//! - Opened (created) with the storage when some file is unselected; the
//!   table comes from the resume data.
//! - A verified piece with bytes of unselected files gets a slot (a reused
//!   one if the piece had one) and its table entry names those files.
//! - When a file is selected later, its bytes move into place: the pieces
//!   holding them are read (from the slot), verified again and rewritten
//!   through the new placement ([`relocate_blocking`]). The entry keeps
//!   naming the file, and reads keep coming from the slot, until that write
//!   is synced; only then does [`crate::Storage::settle`] drop it, freeing
//!   the slot once it holds nothing. So at every moment the bytes a reader is
//!   sent, and the table a resume file records, are backed by synced data.
//! - A slot freed in this run is not reused before the next run: the resume
//!   data on disk may still name it, and its bytes are what a crash would
//!   fall back to. Slots free in the loaded table are reused at once.

use std::collections::{BTreeMap, BTreeSet};

/// One slot of the part file: which piece it holds, and the bytes of which
/// files (indices into the layout's files) are valid in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRecord {
    /// The piece.
    pub piece: u32,
    /// Its slot in the part file.
    pub slot: u32,
    /// Files whose bytes of this piece are in the slot, ascending.
    pub files: Vec<u32>,
}

/// Which piece is in which slot of the part file. A plain struct; the
/// storage keeps it behind its placement lock.
#[derive(Clone, Debug, Default)]
pub struct SlotTable {
    by_piece: BTreeMap<u32, (u32, Vec<u32>)>,
    /// Slots of the loaded table that held nothing: reusable now.
    free: BTreeSet<u32>,
    /// First slot never used.
    next: u32,
}

impl SlotTable {
    /// A table from records of resume data. Records for pieces past
    /// `pieces`, naming files past `files`, sharing a slot, or naming a
    /// slot past `pieces` (a table never needs more slots than pieces) are
    /// dropped as hostile or stale input: a slot is never handed to two
    /// pieces, and the free list stays below the piece count.
    pub fn from_records(records: &[SlotRecord], pieces: u32, files: usize) -> SlotTable {
        let mut t = SlotTable::default();
        let mut used = BTreeSet::new();
        for r in records {
            let files_ok = r.files.iter().all(|&f| (f as usize) < files);
            if r.piece >= pieces
                || !files_ok
                || r.slot >= pieces
                || t.by_piece.contains_key(&r.piece)
                || !used.insert(r.slot)
            {
                continue;
            }
            let mut f = r.files.clone();
            f.sort_unstable();
            f.dedup();
            t.by_piece.insert(r.piece, (r.slot, f));
        }
        t.next = used.last().map_or(0, |s| s + 1);
        t.free = (0..t.next).filter(|s| !used.contains(s)).collect();
        t
    }

    /// The records to save, by piece.
    pub fn records(&self) -> Vec<SlotRecord> {
        self.by_piece
            .iter()
            .map(|(&piece, (slot, files))| SlotRecord {
                piece,
                slot: *slot,
                files: files.clone(),
            })
            .collect()
    }

    /// The slot of `piece` and the files it holds.
    pub fn get(&self, piece: u32) -> Option<(u32, &[u32])> {
        self.by_piece.get(&piece).map(|(s, f)| (*s, &f[..]))
    }

    /// Whether the slot of `piece` holds the bytes of `file`.
    pub fn holds(&self, piece: u32, file: u32) -> Option<u32> {
        let (slot, files) = self.by_piece.get(&piece)?;
        files.binary_search(&file).is_ok().then_some(*slot)
    }

    /// A fresh copy of `piece` is being written with the bytes of `files`
    /// parked: its slot (reused, or a new one) now holds exactly those.
    /// The piece is not ours yet, so nothing reads the old entry.
    pub fn assign(&mut self, piece: u32, mut files: Vec<u32>) -> u32 {
        files.sort_unstable();
        files.dedup();
        if let Some((slot, held)) = self.by_piece.get_mut(&piece) {
            *held = files;
            return *slot;
        }
        let slot = match self.free.pop_first() {
            Some(s) => s,
            None => {
                self.next += 1;
                self.next - 1
            }
        };
        self.by_piece.insert(piece, (slot, files));
        slot
    }

    /// After a synced relocation: the slot of `piece` stops holding the
    /// files for which `keep` is false. An emptied slot is dropped and not
    /// reused in this run. Returns whether anything changed.
    pub fn settle(&mut self, piece: u32, keep: impl Fn(u32) -> bool) -> bool {
        let Some((_, held)) = self.by_piece.get_mut(&piece) else {
            return false;
        };
        let before = held.len();
        held.retain(|&f| keep(f));
        let changed = held.len() != before;
        if held.is_empty() {
            self.by_piece.remove(&piece);
        }
        changed
    }

    /// Pieces whose slot holds a byte of a file for which `pred` is true.
    pub fn pieces_holding(&self, pred: impl Fn(u32) -> bool) -> Vec<u32> {
        self.by_piece
            .iter()
            .filter(|(_, (_, files))| files.iter().any(|&f| pred(f)))
            .map(|(&p, _)| p)
            .collect()
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.by_piece.len()
    }

    /// True when no slot is in use.
    pub fn is_empty(&self) -> bool {
        self.by_piece.is_empty()
    }
}

/// Re-homes the parked bytes of `pieces` after their files were selected:
/// each piece is read through the current placement (its parked bytes from
/// the part file), verified against `hashes` and written again, which puts
/// the bytes of selected files into those files. Then everything is synced
/// and the table settled. Runs on the calling thread (a blocking task).
/// Returns the pieces that failed verification (a damaged part file): they
/// are not ours any more, and the caller must treat them as missing.
pub fn relocate_blocking(
    storage: &crate::Storage,
    hashes: &[[u8; 20]],
    pieces: &[u32],
) -> Result<Vec<u32>, crate::StorageError> {
    let layout = storage.layout();
    let mut bad = Vec::new();
    let mut moved = Vec::new();
    for &p in pieces {
        let len = layout.piece_len(p)?;
        let Some(expected) = hashes.get(p as usize) else {
            continue;
        };
        let data = match storage.read_blocking(p, 0, len) {
            Ok(d) => d,
            Err(_) => {
                bad.push(p);
                continue;
            }
        };
        match crate::VerifiedPiece::verify(p, vec![data], expected) {
            Ok(v) => {
                storage.relocate_write_blocking(v)?;
                moved.push(p);
            }
            Err(_) => bad.push(p),
        }
    }
    if !moved.is_empty() {
        storage.sync_blocking()?;
        storage.settle(&moved);
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(piece: u32, slot: u32, files: &[u32]) -> SlotRecord {
        SlotRecord {
            piece,
            slot,
            files: files.to_vec(),
        }
    }

    #[test]
    fn loaded_table_drops_bad_records_and_reuses_gaps() {
        let t = SlotTable::from_records(
            &[
                rec(1, 0, &[2]),
                rec(9, 1, &[0]),    // piece out of range
                rec(2, 0, &[3]),    // slot taken
                rec(3, 4, &[7]),    // file out of range
                rec(4, 3, &[1, 1]), // duplicate file index: deduplicated
                rec(1, 5, &[1]),    // piece repeated
                rec(5, 8, &[0]),    // slot past the piece count
            ],
            8,
            4,
        );
        assert_eq!(t.records(), vec![rec(1, 0, &[2]), rec(4, 3, &[1])]);
        let mut t = t;
        // Gaps 1 and 2 first, then past the end.
        assert_eq!(t.assign(6, vec![0]), 1);
        assert_eq!(t.assign(7, vec![0]), 2);
        assert_eq!(t.assign(0, vec![0]), 4);
        // A piece written again keeps its slot; the held set is replaced.
        assert_eq!(t.assign(1, vec![3, 0]), 0);
        assert_eq!(t.get(1), Some((0, &[0, 3][..])));
        assert_eq!(t.holds(1, 3), Some(0));
        assert_eq!(t.holds(1, 2), None);
    }

    #[test]
    fn settled_slots_are_not_reused_in_the_same_run() {
        let mut t = SlotTable::default();
        assert_eq!(t.assign(3, vec![1, 2]), 0);
        assert_eq!(t.pieces_holding(|f| f == 2), vec![3]);
        assert!(t.settle(3, |f| f != 2));
        assert_eq!(t.get(3), Some((0, &[1][..])));
        assert!(t.settle(3, |_| false));
        assert_eq!(t.get(3), None);
        assert!(!t.settle(3, |_| false));
        assert_eq!(t.assign(4, vec![1]), 1, "slot 0 may still be named on disk");
    }
}

//! A torrent's file selection: one [`Priority`] per file as the user numbers
//! them (`info` lists them, padding files left out), and what follows from
//! it: each piece's level for the picker, which layout files are wanted,
//! and the byte counts `wanted_bytes` / `done_bytes`. A plain struct; the
//! torrent actor owns it and changes it on
//! [`TorrentMsg::SetFilePriorities`](super::msg::TorrentMsg).

use storage::Layout;
use storage::layout::Placement;

use crate::picker::priority::piece_priorities;
use crate::picker::{Bitfield, Priority};

/// Why a selection cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// Not one priority per file.
    #[error("{got} priorities for a torrent of {expected} files")]
    Count {
        /// Priorities given.
        got: usize,
        /// Files in the torrent.
        expected: usize,
    },
}

/// The selection of one torrent.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Layout index of each user-visible file.
    files: Vec<usize>,
    /// Priority of each user-visible file.
    priorities: Vec<Priority>,
}

impl Selection {
    /// Every non-padding file of `layout` at `priority`.
    pub fn uniform(layout: &Layout, priority: Priority) -> Selection {
        let files: Vec<usize> = user_files(layout);
        Selection {
            priorities: vec![priority; files.len()],
            files,
        }
    }

    /// The selection `priorities` gives (one per user-visible file).
    pub fn new(layout: &Layout, priorities: Vec<Priority>) -> Result<Selection, SelectionError> {
        let files = user_files(layout);
        if priorities.len() != files.len() {
            return Err(SelectionError::Count {
                got: priorities.len(),
                expected: files.len(),
            });
        }
        Ok(Selection { files, priorities })
    }

    /// The selection recorded in resume data (one level per layout file),
    /// if it fits this layout.
    pub fn from_levels(layout: &Layout, levels: &[u8]) -> Option<Selection> {
        if levels.len() != layout.files().len() {
            return None;
        }
        let files = user_files(layout);
        let priorities = files
            .iter()
            .map(|&f| Priority::from_level(levels[f]))
            .collect::<Option<Vec<_>>>()?;
        Some(Selection { files, priorities })
    }

    /// Replaces the priorities; returns the user-visible files that went
    /// from skipped to wanted.
    pub fn set(&mut self, priorities: Vec<Priority>) -> Result<Vec<usize>, SelectionError> {
        if priorities.len() != self.files.len() {
            return Err(SelectionError::Count {
                got: priorities.len(),
                expected: self.files.len(),
            });
        }
        let newly = (0..self.files.len())
            .filter(|&i| self.priorities[i] == Priority::Skip && priorities[i] != Priority::Skip)
            .collect();
        self.priorities = priorities;
        Ok(newly)
    }

    /// The priorities, one per user-visible file.
    pub fn priorities(&self) -> &[Priority] {
        &self.priorities
    }

    /// Number of user-visible files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True for a torrent without user-visible files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Layout index of user-visible file `i`.
    pub fn layout_index(&self, i: usize) -> Option<usize> {
        self.files.get(i).copied()
    }

    /// One level per layout file (padding 0), for the resume data.
    pub fn levels(&self, layout_files: usize) -> Vec<u8> {
        let mut out = vec![0u8; layout_files];
        for (&f, p) in self.files.iter().zip(&self.priorities) {
            if let Some(slot) = out.get_mut(f) {
                *slot = *p as u8;
            }
        }
        out
    }

    /// Per layout file: wanted (not skipped). Padding files are not.
    pub fn wanted_files(&self, layout_files: usize) -> Vec<bool> {
        self.levels(layout_files).iter().map(|l| *l > 0).collect()
    }

    /// Each piece's level: the highest priority of the files in it.
    pub fn piece_levels(&self, layout: &Layout) -> Vec<Priority> {
        piece_priorities(
            layout.piece_count(),
            self.files
                .iter()
                .zip(&self.priorities)
                .map(|(&f, p)| (layout.pieces_of_file(f), *p)),
        )
    }

    /// Bytes of the wanted files.
    pub fn wanted_bytes(&self, layout: &Layout) -> u64 {
        self.wanted(layout).map(|f| f.length).sum()
    }

    /// Bytes of the wanted files that lie in pieces of `have`.
    pub fn done_bytes(&self, layout: &Layout, have: &Bitfield) -> u64 {
        self.wanted(layout)
            .map(|f| file_done(layout, f, have))
            .sum()
    }

    /// Bytes of each user-visible file (wanted or not) that lie in pieces
    /// of `have`, in the user's numbering.
    pub fn file_done_bytes(&self, layout: &Layout, have: &Bitfield) -> Vec<u64> {
        self.files
            .iter()
            .map(|&f| file_done(layout, &layout.files()[f], have))
            .collect()
    }

    fn wanted<'a>(&'a self, layout: &'a Layout) -> impl Iterator<Item = &'a storage::FileEntry> {
        self.files
            .iter()
            .zip(&self.priorities)
            .filter(|(_, p)| **p != Priority::Skip)
            .map(|(&f, _)| &layout.files()[f])
    }
}

/// Bytes of file `f` that lie in pieces of `have`.
fn file_done(layout: &Layout, f: &storage::FileEntry, have: &Bitfield) -> u64 {
    let pl = u64::from(layout.piece_length());
    let (start, end) = (f.torrent_offset, f.torrent_offset + f.length);
    let mut done = 0;
    for p in start / pl..end.div_ceil(pl) {
        if have.get(p as u32) {
            let (ps, pe) = (p * pl, (p + 1) * pl);
            done += pe.min(end) - ps.max(start);
        }
    }
    done
}

/// Layout indices of the files a user sees: every file but padding.
fn user_files(layout: &Layout) -> Vec<usize> {
    layout
        .files()
        .iter()
        .enumerate()
        .filter(|(_, f)| !matches!(f.placement, Placement::Padding))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::FileSpec;

    #[test]
    fn levels_wanted_and_bytes_skip_padding() {
        let mut pad = FileSpec::new(["t", "pad"], 6);
        pad.padding = true;
        let layout = Layout::new_files(
            vec![
                FileSpec::new(["t", "a"], 10),
                pad,
                FileSpec::new(["t", "b"], 16),
                FileSpec::new(["t", "c"], 8),
            ],
            8,
        )
        .unwrap();
        use Priority::*;
        let mut s = Selection::new(&layout, vec![Skip, High, Low]).unwrap();
        assert_eq!(s.levels(4), vec![0, 0, 3, 1]);
        assert_eq!(s.wanted_files(4), vec![false, false, true, true]);
        // Pieces of 8: a [0,10) pad [10,16) b [16,32) c [32,40).
        assert_eq!(s.piece_levels(&layout), vec![Skip, Skip, High, High, Low]);
        assert_eq!(s.wanted_bytes(&layout), 24);
        let mut have = Bitfield::new(5);
        have.set(2, true);
        have.set(4, true);
        assert_eq!(s.done_bytes(&layout, &have), 16);
        assert_eq!(s.set(vec![Normal, High, Skip]), Ok(vec![0]));
        assert_eq!(s.done_bytes(&layout, &have), 8);
        assert!(s.set(vec![Normal]).is_err());
        let back = Selection::from_levels(&layout, &s.levels(4)).unwrap();
        assert_eq!(back.priorities(), s.priorities());
        assert!(Selection::from_levels(&layout, &[0, 0, 9, 0]).is_none());
        assert!(Selection::from_levels(&layout, &[0]).is_none());
    }
}

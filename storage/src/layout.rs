//! Piece layout: where each byte of the torrent lives on disk.
//!
//! A torrent is one contiguous byte space cut into pieces; its files are
//! consecutive ranges of that space. [`Layout`] maps any range of it (a
//! piece, a block inside a piece) to [`Slice`]s: (file, target, offset on the
//! target, length). A *target* is something opened for writing: in normal
//! mode each file is its own target at offset 0; in raw-disk mode every file
//! goes into the single target (a block device or an image file) at the byte
//! offset named by its last path component. The same slicing code serves both
//! modes; only the placement of files differs.
//!
//! Everything here is pure: no I/O, so every edge case (pieces spanning
//! files, zero-length files, padding files, the short last piece, raw-extent
//! overlaps) is unit- and property-tested without touching a disk. File names
//! are untrusted and are checked here component by component.

use std::collections::HashSet;

use crate::error::{Result, StorageError};

/// One file of a torrent, as the layout needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Path components, relative to the download directory (for a
    /// multi-file torrent this includes the torrent's name as the first
    /// component; for a single-file torrent it is just the name).
    pub path: Vec<String>,
    /// Length in bytes (may be zero).
    pub length: u64,
    /// A BEP 47 padding file: its bytes are zeros, counted in the piece
    /// space but never written or created.
    pub padding: bool,
}

impl FileSpec {
    /// A regular (non-padding) file.
    pub fn new<S: Into<String>>(path: impl IntoIterator<Item = S>, length: u64) -> Self {
        FileSpec {
            path: path.into_iter().map(Into::into).collect(),
            length,
            padding: false,
        }
    }
}

/// Where a file's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Into target `target`, starting at byte `offset` of it.
    Target {
        /// Index into [`Layout::targets`].
        target: usize,
        /// Offset of the file's first byte on the target.
        offset: u64,
    },
    /// A padding file: zeros, nowhere on disk.
    Padding,
}

/// A file of the torrent placed in the torrent's byte space and on a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components as given.
    pub path: Vec<String>,
    /// Length in bytes.
    pub length: u64,
    /// Offset of its first byte in the torrent's byte space.
    pub torrent_offset: u64,
    /// Where its bytes go.
    pub placement: Placement,
}

/// Something the storage layer opens: one file of a normal torrent, or the
/// single device or image of a raw-disk torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// A file at these components below the download directory; it is
    /// created and sized to `length`.
    File {
        /// Validated relative path components.
        path: Vec<String>,
        /// Its size.
        length: u64,
    },
    /// The raw target given by the user; it must hold at least `min_size`
    /// bytes (the end of the last extent).
    Raw {
        /// End of the furthest extent.
        min_size: u64,
    },
}

/// A contiguous part of a byte range that lives in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Index into [`Layout::files`].
    pub file: usize,
    /// Index into [`Layout::targets`]; `None` for padding (zeros).
    pub target: Option<usize>,
    /// Offset on the target (or in the padding file).
    pub target_offset: u64,
    /// Offset of this slice from the start of the range that was asked for.
    pub range_offset: u64,
    /// Length in bytes (never zero).
    pub length: u64,
}

/// Maps the torrent's byte space to files and targets.
#[derive(Clone, Debug)]
pub struct Layout {
    piece_length: u32,
    piece_count: u32,
    total_length: u64,
    files: Vec<FileEntry>,
    targets: Vec<TargetSpec>,
    raw: bool,
}

/// Longest file name component accepted (Linux NAME_MAX).
const NAME_MAX: usize = 255;

/// Checks one path component taken from a torrent. Returns why it is unsafe.
pub fn check_component(c: &str) -> std::result::Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty component");
    }
    if c == "." || c == ".." {
        return Err("relative directory reference");
    }
    if c.contains('/') || c.contains('\\') {
        return Err("contains a path separator");
    }
    if c.contains('\0') {
        return Err("contains NUL");
    }
    let b = c.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return Err("drive prefix");
    }
    if b.len() > NAME_MAX {
        return Err("longer than 255 bytes");
    }
    Ok(())
}

fn check_path(path: &[String]) -> Result<()> {
    if path.is_empty() {
        return Err(StorageError::EmptyPath);
    }
    for c in path {
        check_component(c).map_err(|reason| StorageError::UnsafePath {
            path: path.to_vec(),
            component: c.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Parses an EZIO-style raw offset: `0x` followed by hex digits.
pub fn parse_raw_offset(name: &str) -> Result<u64> {
    let bad = || StorageError::BadRawOffset {
        name: name.to_string(),
    };
    let hex = name
        .strip_prefix("0x")
        .or_else(|| name.strip_prefix("0X"))
        .ok_or_else(bad)?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(hex, 16).map_err(|_| bad())
}

/// The files of a parsed torrent for normal mode: a multi-file torrent's
/// files go under a directory named after the torrent, a single-file
/// torrent's file is named after it.
pub fn specs_from_info(info: &protocol::metainfo::Info) -> Vec<FileSpec> {
    info.files
        .iter()
        .map(|f| FileSpec {
            path: if info.multi_file {
                std::iter::once(info.name.clone())
                    .chain(f.path.iter().cloned())
                    .collect()
            } else {
                f.path.clone()
            },
            length: f.length,
            padding: f.padding,
        })
        .collect()
}

/// The files of a parsed torrent for raw-disk mode: paths as given, the
/// last component of each being its hex offset.
pub fn raw_specs_from_info(info: &protocol::metainfo::Info) -> Vec<FileSpec> {
    info.files
        .iter()
        .map(|f| FileSpec {
            path: f.path.clone(),
            length: f.length,
            padding: f.padding,
        })
        .collect()
}

/// Checks that the metainfo's piece count agrees with its files.
pub fn check_info(info: &protocol::metainfo::Info) -> Result<()> {
    let total = info
        .files
        .iter()
        .try_fold(0u64, |a, f| a.checked_add(f.length));
    let count = piece_count_for(total.unwrap_or(u64::MAX), info.piece_length)?;
    if count != info.piece_count() || total != Some(info.total_length) {
        return Err(StorageError::InvalidLayout(format!(
            "{} piece hashes for {count} pieces of data",
            info.piece_count()
        )));
    }
    Ok(())
}

fn piece_count_for(total: u64, piece_length: u32) -> Result<u32> {
    if piece_length == 0 {
        return Err(StorageError::InvalidLayout("piece length is zero".into()));
    }
    if total == 0 {
        return Err(StorageError::InvalidLayout(
            "the torrent holds no data".into(),
        ));
    }
    let count = total.div_ceil(u64::from(piece_length));
    u32::try_from(count)
        .map_err(|_| StorageError::InvalidLayout(format!("{count} pieces is too many")))
}

fn total_of(files: &[FileSpec]) -> Result<u64> {
    files.iter().try_fold(0u64, |acc, f| {
        acc.checked_add(f.length)
            .ok_or_else(|| StorageError::InvalidLayout("total length overflows".into()))
    })
}

impl Layout {
    /// Normal mode: every non-padding file is created at its own path below
    /// the download directory. Paths are checked; duplicates and file/dir
    /// conflicts are refused.
    pub fn new_files(files: Vec<FileSpec>, piece_length: u32) -> Result<Layout> {
        let total_length = total_of(&files)?;
        let piece_count = piece_count_for(total_length, piece_length)?;
        let mut seen_files: HashSet<&[String]> = HashSet::new();
        let mut seen_dirs: HashSet<&[String]> = HashSet::new();
        for f in files.iter().filter(|f| !f.padding) {
            check_path(&f.path)?;
            if !seen_files.insert(&f.path) {
                return Err(StorageError::DuplicatePath(f.path.join("/")));
            }
            for i in 1..f.path.len() {
                seen_dirs.insert(&f.path[..i]);
            }
        }
        if let Some(p) = seen_files.iter().find(|p| seen_dirs.contains(*p)) {
            return Err(StorageError::PathConflict(p.join("/")));
        }
        let mut entries = Vec::with_capacity(files.len());
        let mut targets = Vec::new();
        let mut offset = 0u64;
        for f in files {
            let placement = if f.padding {
                Placement::Padding
            } else {
                targets.push(TargetSpec::File {
                    path: f.path.clone(),
                    length: f.length,
                });
                Placement::Target {
                    target: targets.len() - 1,
                    offset: 0,
                }
            };
            entries.push(FileEntry {
                path: f.path,
                length: f.length,
                torrent_offset: offset,
                placement,
            });
            offset += f.length;
        }
        Ok(Layout {
            piece_length,
            piece_count,
            total_length,
            files: entries,
            targets,
            raw: false,
        })
    }

    /// Raw-disk mode: the last path component of every non-padding file is
    /// its byte offset on the single target. Overlapping extents, and (when
    /// `capacity` is known, as for a block device) extents past its end, are
    /// refused before anything is opened for writing.
    pub fn new_raw(
        files: Vec<FileSpec>,
        piece_length: u32,
        capacity: Option<u64>,
    ) -> Result<Layout> {
        let total_length = total_of(&files)?;
        let piece_count = piece_count_for(total_length, piece_length)?;
        let mut extents: Vec<(u64, u64, usize)> = Vec::new(); // (start, end, file index)
        let mut entries = Vec::with_capacity(files.len());
        let mut offset = 0u64;
        for (i, f) in files.into_iter().enumerate() {
            let placement = if f.padding {
                Placement::Padding
            } else {
                let name = f.path.last().ok_or(StorageError::EmptyPath)?;
                let start = parse_raw_offset(name)?;
                let out_of_range = |cap| StorageError::RawOutOfRange {
                    name: name.clone(),
                    start,
                    length: f.length,
                    capacity: cap,
                };
                let end = start
                    .checked_add(f.length)
                    .ok_or_else(|| out_of_range(capacity.unwrap_or(u64::MAX)))?;
                if let Some(cap) = capacity
                    && end > cap
                {
                    return Err(out_of_range(cap));
                }
                if f.length > 0 {
                    extents.push((start, end, i));
                }
                Placement::Target {
                    target: 0,
                    offset: start,
                }
            };
            entries.push(FileEntry {
                path: f.path,
                length: f.length,
                torrent_offset: offset,
                placement,
            });
            offset += f.length;
        }
        extents.sort_unstable();
        for w in extents.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.0 < a.1 {
                let name = |i: usize| entries[i].path.join("/");
                return Err(StorageError::RawOverlap {
                    first: name(a.2),
                    first_start: a.0,
                    first_end: a.1,
                    second: name(b.2),
                    second_start: b.0,
                    second_end: b.1,
                });
            }
        }
        let min_size = extents.iter().map(|e| e.1).max().unwrap_or(0);
        Ok(Layout {
            piece_length,
            piece_count,
            total_length,
            files: entries,
            targets: vec![TargetSpec::Raw { min_size }],
            raw: true,
        })
    }

    /// Nominal piece length.
    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// Total bytes of the torrent (including padding files).
    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// True in raw-disk mode.
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// The files, in torrent order.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// The targets to open.
    pub fn targets(&self) -> &[TargetSpec] {
        &self.targets
    }

    /// Length of piece `piece` (the last one may be short).
    pub fn piece_len(&self, piece: u32) -> Result<u64> {
        if piece >= self.piece_count {
            return Err(StorageError::PieceOutOfRange {
                piece,
                count: self.piece_count,
            });
        }
        let start = u64::from(piece) * u64::from(self.piece_length);
        Ok((self.total_length - start).min(u64::from(self.piece_length)))
    }

    /// Offset of the piece's first byte in the torrent's byte space.
    pub fn piece_offset(&self, piece: u32) -> u64 {
        u64::from(piece) * u64::from(self.piece_length)
    }

    /// Slices of a whole piece.
    pub fn piece_slices(&self, piece: u32) -> Result<Vec<Slice>> {
        let len = self.piece_len(piece)?;
        Ok(self.range_slices(self.piece_offset(piece), len))
    }

    /// Slices of `length` bytes at `begin` inside piece `piece` (a block).
    pub fn block_slices(&self, piece: u32, begin: u64, length: u64) -> Result<Vec<Slice>> {
        let piece_length = self.piece_len(piece)?;
        if begin
            .checked_add(length)
            .is_none_or(|end| end > piece_length)
        {
            return Err(StorageError::RangeOutOfPiece {
                piece,
                begin,
                length,
                piece_length,
            });
        }
        Ok(self.range_slices(self.piece_offset(piece) + begin, length))
    }

    /// Slices of an arbitrary range of the torrent's byte space, clipped to
    /// its end. Zero-length files yield nothing.
    pub fn range_slices(&self, offset: u64, length: u64) -> Vec<Slice> {
        let end = offset.saturating_add(length).min(self.total_length);
        let mut out = Vec::new();
        // First file whose end lies past `offset`; zero-length files sitting
        // at `offset` end at it and are skipped.
        let first = self
            .files
            .partition_point(|f| f.torrent_offset + f.length <= offset);
        let mut pos = offset;
        for (i, f) in self.files.iter().enumerate().skip(first) {
            if pos >= end {
                break;
            }
            if f.length == 0 {
                continue;
            }
            let in_file = pos - f.torrent_offset;
            let len = (f.length - in_file).min(end - pos);
            let (target, target_offset) = match f.placement {
                Placement::Target { target, offset } => (Some(target), offset + in_file),
                Placement::Padding => (None, in_file),
            };
            out.push(Slice {
                file: i,
                target,
                target_offset,
                range_offset: pos - offset,
                length: len,
            });
            pos += len;
        }
        out
    }

    /// The pieces that hold at least one byte of file `file` (empty for a
    /// zero-length file).
    pub fn pieces_of_file(&self, file: usize) -> std::ops::Range<u32> {
        let Some(f) = self.files.get(file) else {
            return 0..0;
        };
        if f.length == 0 {
            return 0..0;
        }
        let pl = u64::from(self.piece_length);
        let first = f.torrent_offset / pl;
        let last = (f.torrent_offset + f.length - 1) / pl;
        // Both fit in u32: they are below piece_count.
        first as u32..last as u32 + 1
    }

    /// Indices of the files placed on target `target`.
    pub fn files_of_target(&self, target: usize) -> impl Iterator<Item = usize> + '_ {
        self.files.iter().enumerate().filter_map(move |(i, f)| {
            matches!(f.placement, Placement::Target { target: t, .. } if t == target).then_some(i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(name: &str, len: u64) -> FileSpec {
        FileSpec::new(["t", name], len)
    }

    #[test]
    fn single_file_short_last_piece() {
        let l = Layout::new_files(vec![FileSpec::new(["a"], 10)], 4).unwrap();
        assert_eq!(l.piece_count(), 3);
        assert_eq!(l.piece_len(2).unwrap(), 2);
        assert!(l.piece_len(3).is_err());
        let s = l.piece_slices(2).unwrap();
        assert_eq!(
            s,
            vec![Slice {
                file: 0,
                target: Some(0),
                target_offset: 8,
                range_offset: 0,
                length: 2
            }]
        );
    }

    #[test]
    fn piece_spanning_three_files_with_zero_length_between() {
        let l = Layout::new_files(
            vec![
                spec("a", 3),
                spec("empty", 0),
                spec("b", 2),
                spec("c", 5),
                spec("z", 0),
            ],
            8,
        )
        .unwrap();
        assert_eq!(l.piece_count(), 2);
        // Zero-length files are still targets (they get created).
        assert_eq!(l.targets().len(), 5);
        let s = l.piece_slices(0).unwrap();
        let got: Vec<_> = s
            .iter()
            .map(|s| (s.file, s.target_offset, s.range_offset, s.length))
            .collect();
        assert_eq!(got, vec![(0, 0, 0, 3), (2, 0, 3, 2), (3, 0, 5, 3)]);
        let s = l.piece_slices(1).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].file, s[0].target_offset, s[0].length), (3, 3, 2));
        assert_eq!(l.pieces_of_file(1), 0..0);
        assert_eq!(l.pieces_of_file(3), 0..2);
        assert_eq!(l.pieces_of_file(0), 0..1);
    }

    #[test]
    fn zero_length_file_at_piece_boundary_and_start() {
        let l = Layout::new_files(
            vec![spec("e0", 0), spec("a", 4), spec("e1", 0), spec("b", 4)],
            4,
        )
        .unwrap();
        let s = l.piece_slices(1).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].file, 3);
        let s = l.piece_slices(0).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].file, 1);
    }

    #[test]
    fn block_inside_piece() {
        let l = Layout::new_files(vec![spec("a", 5), spec("b", 11)], 8).unwrap();
        let s = l.block_slices(0, 4, 4).unwrap();
        let got: Vec<_> = s
            .iter()
            .map(|s| (s.file, s.target_offset, s.range_offset, s.length))
            .collect();
        assert_eq!(got, vec![(0, 4, 0, 1), (1, 0, 1, 3)]);
        assert!(l.block_slices(0, 6, 4).is_err());
        assert!(l.block_slices(1, 0, 8).is_ok());
        assert!(l.block_slices(0, u64::MAX, 2).is_err());
    }

    #[test]
    fn padding_files_have_no_target() {
        let mut pad = spec("pad", 3);
        pad.padding = true;
        let l = Layout::new_files(vec![spec("a", 5), pad, spec("b", 8)], 8).unwrap();
        assert_eq!(l.targets().len(), 2);
        let s = l.piece_slices(0).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].target, None);
        assert_eq!(l.piece_slices(1).unwrap()[0].target, Some(1));
    }

    #[test]
    fn unsafe_paths_rejected() {
        for bad in ["..", ".", "", "a/b", "a\\b", "C:", "c:evil", "x\0y"] {
            let r = Layout::new_files(vec![FileSpec::new(["t", bad], 1)], 4);
            assert!(
                matches!(r, Err(StorageError::UnsafePath { .. })),
                "{bad:?} accepted"
            );
        }
        let long = "x".repeat(256);
        assert!(Layout::new_files(vec![FileSpec::new([long], 1)], 4).is_err());
        assert!(matches!(
            Layout::new_files(vec![FileSpec::new(Vec::<String>::new(), 1)], 4),
            Err(StorageError::EmptyPath)
        ));
        assert!(matches!(
            Layout::new_files(vec![spec("a", 1), spec("a", 1)], 4),
            Err(StorageError::DuplicatePath(_))
        ));
        assert!(matches!(
            Layout::new_files(vec![spec("a", 1), FileSpec::new(["t", "a", "b"], 1)], 4),
            Err(StorageError::PathConflict(_))
        ));
        assert!(Layout::new_files(vec![spec("a", 0)], 4).is_err()); // no data
        assert!(Layout::new_files(vec![spec("a", 1)], 0).is_err());
    }

    #[test]
    fn raw_offsets_and_errors() {
        assert_eq!(parse_raw_offset("0x0000000000100000").unwrap(), 0x100000);
        for bad in ["100000", "0x", "0xg1", "0x1 ", "0x10000000000000000"] {
            assert!(parse_raw_offset(bad).is_err(), "{bad}");
        }
        let l = Layout::new_raw(
            vec![
                FileSpec::new(["img", "0x0000000000001000"], 0x800),
                FileSpec::new(["img", "0x0000000000000000"], 0x200),
            ],
            0x400,
            Some(0x2000),
        )
        .unwrap();
        assert_eq!(l.targets(), &[TargetSpec::Raw { min_size: 0x1800 }]);
        let s = l.piece_slices(2).unwrap();
        // Piece 2 = torrent bytes [0x800, 0xa00): file 1's bytes [0, 0x0), no:
        // file 0 is 0x800 long so piece 2 starts file 1 at target offset 0.
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].file, s[0].target, s[0].target_offset),
            (1, Some(0), 0)
        );
        let s = l.piece_slices(1).unwrap();
        assert_eq!(s[0].target_offset, 0x1400);

        let overlap = Layout::new_raw(
            vec![
                FileSpec::new(["0x0"], 0x200),
                FileSpec::new(["0x100"], 0x200),
            ],
            0x400,
            None,
        );
        assert!(matches!(overlap, Err(StorageError::RawOverlap { .. })));
        let oor = Layout::new_raw(vec![FileSpec::new(["0x1000"], 0x200)], 0x400, Some(0x1100));
        assert!(matches!(oor, Err(StorageError::RawOutOfRange { .. })));
        let wrap = Layout::new_raw(vec![FileSpec::new(["0xffffffffffffffff"], 2)], 0x400, None);
        assert!(matches!(wrap, Err(StorageError::RawOutOfRange { .. })));
        // Touching extents are fine.
        assert!(
            Layout::new_raw(
                vec![
                    FileSpec::new(["0x0"], 0x200),
                    FileSpec::new(["0x200"], 0x200)
                ],
                0x400,
                Some(0x400)
            )
            .is_ok()
        );
    }

    fn arb_files() -> impl Strategy<Value = (Vec<(u64, bool)>, u32)> {
        (
            prop::collection::vec((0u64..200, prop::bool::weighted(0.1)), 1..12),
            1u32..64,
        )
            .prop_filter("needs data", |(f, _)| {
                f.iter().map(|x| x.0).sum::<u64>() > 0
            })
    }

    proptest! {
        /// The slices of all pieces, in order, tile the torrent's bytes
        /// exactly once, and each slice lies inside its file.
        #[test]
        fn pieces_cover_every_byte_once((files, pl) in arb_files(), raw in any::<bool>()) {
            let specs: Vec<FileSpec> = files.iter().enumerate().map(|(i, &(len, pad))| {
                let mut f = if raw {
                    // Spread extents apart so they never overlap.
                    FileSpec::new([format!("{:#x}", i as u64 * 1000)], len)
                } else {
                    FileSpec::new(["t".to_string(), format!("f{i}")], len)
                };
                f.padding = pad;
                f
            }).collect();
            let l = if raw { Layout::new_raw(specs, pl, None) } else { Layout::new_files(specs, pl) }.unwrap();
            let mut expect_pos = 0u64;
            let mut per_file = vec![0u64; files.len()];
            for p in 0..l.piece_count() {
                let len = l.piece_len(p).unwrap();
                let mut in_piece = 0u64;
                for s in l.piece_slices(p).unwrap() {
                    prop_assert!(s.length > 0);
                    prop_assert_eq!(s.range_offset, in_piece);
                    let f = &l.files()[s.file];
                    prop_assert_eq!(f.torrent_offset + per_file[s.file], expect_pos);
                    let base = match f.placement {
                        Placement::Target { offset, .. } => offset,
                        Placement::Padding => 0,
                    };
                    prop_assert_eq!(s.target_offset, base + per_file[s.file]);
                    per_file[s.file] += s.length;
                    prop_assert!(per_file[s.file] <= f.length);
                    in_piece += s.length;
                    expect_pos += s.length;
                }
                prop_assert_eq!(in_piece, len);
            }
            prop_assert_eq!(expect_pos, l.total_length());
            for (i, f) in l.files().iter().enumerate() {
                prop_assert_eq!(per_file[i], f.length);
            }
        }
    }
}

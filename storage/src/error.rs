//! Every way the storage layer can fail, as one `thiserror` enum.
//!
//! Layout errors (unsafe names, overlapping raw extents) are found up front,
//! before a file is created. I/O errors carry the file and the offset of the
//! failing call; the errno values an operator must act on (disk full, read-only
//! file system, EIO) get their own variants so they are reported by name.

use std::io;
use std::path::PathBuf;

/// A failure of the storage layer.
#[derive(thiserror::Error, Debug)]
pub enum StorageError {
    /// A path component from the torrent could leave the download directory
    /// or is not a plain file name (`..`, `.`, empty, a separator, a drive
    /// prefix, NUL, longer than 255 bytes).
    #[error("unsafe path component {component:?} in {path:?}: {reason}")]
    UnsafePath {
        /// The whole path as given by the torrent.
        path: Vec<String>,
        /// The offending component.
        component: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A file has no path components at all.
    #[error("a file in the torrent has an empty path")]
    EmptyPath,

    /// Two files of the torrent have the same path.
    #[error("two files in the torrent have the same path {0}")]
    DuplicatePath(String),

    /// One file's path is a directory on the way to another file.
    #[error("{0} is both a file and a directory in the torrent")]
    PathConflict(String),

    /// The storage layer refused to open a path outside its root: a directory
    /// on the way is a symbolic link or not a directory, or the final
    /// component is a symbolic link.
    #[error("refusing to open {path}: a component is a symbolic link or not a directory")]
    Escape {
        /// The path that was refused.
        path: PathBuf,
    },

    /// In raw-disk mode, the last path component of a file must name its
    /// byte offset on the target as hexadecimal (`0x0000000000100000`).
    #[error("raw-disk file name {name:?} is not a hexadecimal offset like 0x0000000000100000")]
    BadRawOffset {
        /// The file name as found in the torrent.
        name: String,
    },

    /// Two raw-disk extents overlap on the target.
    #[error(
        "raw-disk extents overlap: {first} [{first_start:#x}, {first_end:#x}) and {second} [{second_start:#x}, {second_end:#x})"
    )]
    RawOverlap {
        /// Name of the extent that starts first.
        first: String,
        /// Its start offset.
        first_start: u64,
        /// Its end offset (exclusive).
        first_end: u64,
        /// Name of the extent it overlaps.
        second: String,
        /// Its start offset.
        second_start: u64,
        /// Its end offset (exclusive).
        second_end: u64,
    },

    /// A raw-disk extent ends past the end of the target (or past `u64::MAX`).
    #[error(
        "raw-disk extent {name} [{start:#x}, +{length}) is beyond the end of the target ({capacity} bytes)"
    )]
    RawOutOfRange {
        /// Name of the extent.
        name: String,
        /// Its start offset.
        start: u64,
        /// Its length.
        length: u64,
        /// Size of the target in bytes.
        capacity: u64,
    },

    /// The torrent's shape is not usable (zero piece length, no data, a
    /// piece count or total length that disagrees with the files).
    #[error("invalid torrent layout: {0}")]
    InvalidLayout(String),

    /// A piece index past the end of the torrent.
    #[error("piece {piece} out of range (the torrent has {count} pieces)")]
    PieceOutOfRange {
        /// The index asked for.
        piece: u32,
        /// Number of pieces.
        count: u32,
    },

    /// A byte range that does not fit inside its piece.
    #[error("range {begin}+{length} does not fit piece {piece} of {piece_length} bytes")]
    RangeOutOfPiece {
        /// The piece.
        piece: u32,
        /// Offset inside the piece.
        begin: u64,
        /// Length asked for.
        length: u64,
        /// Length of that piece.
        piece_length: u64,
    },

    /// The blocks of a piece do not add up to the piece's length.
    #[error("piece {piece} carries {got} bytes, expected {expected}")]
    PieceLength {
        /// The piece.
        piece: u32,
        /// Bytes carried.
        got: u64,
        /// Bytes expected.
        expected: u64,
    },

    /// The file system has no space left (ENOSPC or EDQUOT).
    #[error("disk full writing {path} at offset {offset}")]
    DiskFull {
        /// File or device being written.
        path: PathBuf,
        /// Offset of the failing call.
        offset: u64,
    },

    /// The file system is mounted read-only (EROFS).
    #[error("read-only file system: {path} (offset {offset})")]
    ReadOnly {
        /// File or device being written.
        path: PathBuf,
        /// Offset of the failing call.
        offset: u64,
    },

    /// The device reported an I/O error (EIO): a failing disk.
    #[error("device I/O error (EIO) on {path} at offset {offset}")]
    Eio {
        /// File or device.
        path: PathBuf,
        /// Offset of the failing call.
        offset: u64,
    },

    /// Any other operating-system error, with the file and the offset.
    #[error("I/O error on {path} at offset {offset}: {source}")]
    Io {
        /// File or device.
        path: PathBuf,
        /// Offset of the failing call (0 for open, stat, sync).
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The worker threads were shut down before the job could run.
    #[error("storage threads are shut down")]
    Closed,

    /// A read needs bytes of a file that is not selected and whose bytes
    /// for this piece are not in the part file.
    #[error(
        "piece {piece} has bytes of file {file}, which is neither on disk nor in the part file"
    )]
    NotStored {
        /// The piece read.
        piece: u32,
        /// Index of the unselected file.
        file: usize,
    },
}

pub(crate) type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Classifies an OS error from a call on `path` at `offset`: the errno
    /// values that need an operator get their own variant.
    pub fn from_io(path: impl Into<PathBuf>, offset: u64, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::DiskFull { path, offset },
            Some(libc::EROFS) => StorageError::ReadOnly { path, offset },
            Some(libc::EIO) => StorageError::Eio { path, offset },
            _ => StorageError::Io {
                path,
                offset,
                source,
            },
        }
    }

    /// True for the "disk full" condition.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::DiskFull { .. })
    }

    /// A copy of this error, for failing every job of a failed write run with
    /// the same cause. `io::Error` is not `Clone`; it is rebuilt from its
    /// errno (or kind and message).
    pub fn duplicate(&self) -> Self {
        use StorageError::*;
        match self {
            UnsafePath {
                path,
                component,
                reason,
            } => UnsafePath {
                path: path.clone(),
                component: component.clone(),
                reason,
            },
            EmptyPath => EmptyPath,
            NotStored { piece, file } => NotStored {
                piece: *piece,
                file: *file,
            },
            DuplicatePath(p) => DuplicatePath(p.clone()),
            PathConflict(p) => PathConflict(p.clone()),
            Escape { path } => Escape { path: path.clone() },
            BadRawOffset { name } => BadRawOffset { name: name.clone() },
            RawOverlap {
                first,
                first_start,
                first_end,
                second,
                second_start,
                second_end,
            } => RawOverlap {
                first: first.clone(),
                first_start: *first_start,
                first_end: *first_end,
                second: second.clone(),
                second_start: *second_start,
                second_end: *second_end,
            },
            RawOutOfRange {
                name,
                start,
                length,
                capacity,
            } => RawOutOfRange {
                name: name.clone(),
                start: *start,
                length: *length,
                capacity: *capacity,
            },
            InvalidLayout(s) => InvalidLayout(s.clone()),
            PieceOutOfRange { piece, count } => PieceOutOfRange {
                piece: *piece,
                count: *count,
            },
            RangeOutOfPiece {
                piece,
                begin,
                length,
                piece_length,
            } => RangeOutOfPiece {
                piece: *piece,
                begin: *begin,
                length: *length,
                piece_length: *piece_length,
            },
            PieceLength {
                piece,
                got,
                expected,
            } => PieceLength {
                piece: *piece,
                got: *got,
                expected: *expected,
            },
            DiskFull { path, offset } => DiskFull {
                path: path.clone(),
                offset: *offset,
            },
            ReadOnly { path, offset } => ReadOnly {
                path: path.clone(),
                offset: *offset,
            },
            Eio { path, offset } => Eio {
                path: path.clone(),
                offset: *offset,
            },
            Io {
                path,
                offset,
                source,
            } => Io {
                path: path.clone(),
                offset: *offset,
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            Closed => Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_get_named_variants() {
        let e = |code| StorageError::from_io("/x", 7, io::Error::from_raw_os_error(code));
        assert!(matches!(
            e(libc::ENOSPC),
            StorageError::DiskFull { offset: 7, .. }
        ));
        assert!(matches!(e(libc::EDQUOT), StorageError::DiskFull { .. }));
        assert!(matches!(e(libc::EROFS), StorageError::ReadOnly { .. }));
        assert!(matches!(e(libc::EIO), StorageError::Eio { .. }));
        let other = e(libc::EBADF);
        assert!(matches!(other, StorageError::Io { .. }));
        let d = other.duplicate();
        assert_eq!(d.to_string(), other.to_string());
        assert!(
            e(libc::ENOSPC)
                .to_string()
                .starts_with("disk full writing /x")
        );
        assert!(e(libc::EIO).to_string().contains("EIO"));
    }
}

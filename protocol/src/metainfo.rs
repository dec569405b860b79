//! Torrent metainfo (`.torrent` files): BEP 3 v1 info dictionaries, BEP 12
//! tracker tiers, BEP 19 web seeds (`url-list`, kept for later) and BEP 47
//! padding files.
//!
//! This module turns untrusted bytes into a validated [`Metainfo`] whose
//! every field the rest of the client can rely on without re-checking:
//!
//! - **The info-hash** is the SHA-1 of the info dictionary's exact original
//!   bytes ([`crate::bencode::Value::raw`]), never of a re-encoding, so an
//!   oddly encoded (e.g. unsorted) info dictionary still gets the hash every
//!   other client computes.
//! - **Geometry is consistent**: piece length in `1..=256 MiB`, one 20-byte
//!   hash per piece, and exactly `ceil(total_length / piece_length)` pieces.
//!   An empty torrent (total length 0) is refused: it has no pieces to hash.
//! - **File names are safe to join under a download directory.** The name
//!   and every path component must be non-empty, valid UTF-8 (`name.utf-8` /
//!   `path.utf-8` are preferred when present, as libtorrent does; a torrent
//!   whose names are not UTF-8 is refused rather than guessed at), free of
//!   `/`, `\` and NUL, not `.` or `..` or made only of dots and spaces, not
//!   starting with a drive prefix such as `C:`, and not a Windows reserved
//!   device name (`CON`, `PRN`, `AUX`, `NUL`, `COM1`-`COM9`, `LPT1`-`LPT9`,
//!   with or without an extension, any case). Two files may not share a
//!   path, nor may a file's path be another file's directory.
//!   Names merely *ending* in a dot or space (`Vol. 1...`) are accepted: real
//!   torrents have them and the POSIX filesystems this client writes to store
//!   them faithfully.
//!
//! Fields the client depends on (`info`, `announce`, `announce-list`) are
//! strict: a wrong type is an error. Purely informational ones (`comment`,
//! `created by`, `creation date`) and the optional web seeds (`url-list`) are
//! dropped when malformed instead, so a bad comment never makes a torrent
//! unusable. Inside `announce-list`, entries that are not strings are skipped
//! (common in the wild) and tiers left empty are dropped.

use std::collections::HashSet;
use std::fmt;

use sha1::{Digest, Sha1};

use crate::bencode::{self, DecodeError, Value};

/// Largest accepted piece length: 256 MiB. Real torrents stay well below
/// (libtorrent caps at 128 MiB by default); a larger value is hostile or
/// broken, and bounds the memory a single piece can demand.
pub const MAX_PIECE_LENGTH: u32 = 256 * 1024 * 1024;

/// A v1 info-hash: the SHA-1 of the bencoded info dictionary. Shown as
/// lowercase hex by both `Display` and `Debug`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// The SHA-1 of `info_dict`, the raw bytes of an info dictionary.
    pub fn of(info_dict: &[u8]) -> InfoHash {
        InfoHash(Sha1::digest(info_dict).into())
    }

    /// 40 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// Parses exactly 40 hex characters, either case.
    pub fn from_hex(hex: &str) -> Option<InfoHash> {
        let hex = hex.as_bytes();
        if hex.len() != 40 {
            return None;
        }
        let mut out = [0u8; 20];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Some(InfoHash(out))
    }

    /// The 20 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a torrent file or info dictionary was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MetainfoError {
    /// The bytes are not valid bencode.
    #[error("invalid bencode: {0}")]
    Bencode(#[from] DecodeError),
    /// A required key is absent. `key` names it with its location, e.g.
    /// `info.piece length` or `info.files[3].path`.
    #[error("missing key `{key}`")]
    MissingKey {
        /// Where the key should have been.
        key: String,
    },
    /// A key holds the wrong kind of value.
    #[error("`{key}` should be {expected}")]
    WrongType {
        /// The key, with its location (`(root)` for the top level).
        key: String,
        /// What it should have been, e.g. "a dictionary".
        expected: &'static str,
    },
    /// The torrent name or a file path is unsafe or unusable as a file name.
    #[error("invalid file path \"{file}\": {reason}")]
    InvalidPath {
        /// The offending path, components joined with `/` (non-UTF-8 bytes
        /// shown as U+FFFD).
        file: String,
        /// What is wrong with it.
        reason: PathError,
    },
    /// Two files with the same path, or a file whose path is also used as a
    /// directory by another file.
    #[error("duplicate or conflicting file path \"{file}\"")]
    DuplicatePath {
        /// The second file to claim the path, components joined with `/`.
        file: String,
    },
    /// Both `length` (single-file) and `files` (multi-file) are present, so
    /// the layout is ambiguous.
    #[error("info has both `length` and `files`")]
    BothLengthAndFiles,
    /// A multi-file torrent whose `files` list is empty.
    #[error("multi-file torrent has no files")]
    NoFiles,
    /// A file length below zero.
    #[error("file \"{file}\" has negative length {length}")]
    NegativeLength {
        /// The file, components joined with `/`.
        file: String,
        /// The length given.
        length: i64,
    },
    /// The file lengths add up to more than `u64::MAX`.
    #[error("total length of the files overflows 64 bits")]
    TotalLengthOverflow,
    /// The files add up to zero bytes: nothing to download or hash.
    #[error("torrent has no data (total length 0)")]
    EmptyTorrent,
    /// `piece length` is zero, negative or above [`MAX_PIECE_LENGTH`].
    #[error("bad piece length {got}: must be between 1 and {MAX_PIECE_LENGTH}")]
    BadPieceLength {
        /// The value given.
        got: i64,
    },
    /// A BEP 47 symlink entry (`attr` contains `l`): not supported.
    #[error("file \"{file}\" is a symbolic link (BEP 47 attr `l`), which is not supported")]
    Symlink {
        /// The entry's path, components joined with `/`.
        file: String,
    },
    /// A BitTorrent v2-only torrent (BEP 52): no v1 `pieces`, which is
    /// all this client reads (hybrid torrents work through their v1 half).
    #[error(
        "a v2-only torrent (BEP 52: `file tree` without v1 `pieces`), which is not supported; a hybrid v1+v2 torrent works"
    )]
    V2Only,
    /// `pieces` is not a whole number of 20-byte SHA-1 hashes.
    #[error("`pieces` is {len} bytes, not a multiple of 20")]
    PiecesNotMultipleOf20 {
        /// Its length in bytes.
        len: usize,
    },
    /// `pieces` holds a different number of hashes than the total length
    /// and piece length imply.
    #[error("expected {expected} piece hashes for the total length, got {got}")]
    PieceCountMismatch {
        /// `ceil(total_length / piece_length)`.
        expected: u64,
        /// Hashes present in `pieces`.
        got: u64,
    },
}

/// What is wrong with a file name or path ([`MetainfoError::InvalidPath`]).
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A file's `path` list has no components.
    #[error("path has no components")]
    NoComponents,
    /// A component is the empty string.
    #[error("empty component")]
    Empty,
    /// A component is `.`.
    #[error("component `.` (current directory)")]
    CurrentDir,
    /// A component is `..`, which would climb out of the download directory.
    #[error("component `..` (parent directory)")]
    ParentDir,
    /// A component made only of dots and spaces (`...`, `. .`): Windows
    /// strips trailing dots and spaces, turning these into `..`, `.` or empty.
    #[error("component made only of dots and spaces")]
    OnlyDotsAndSpaces,
    /// A component starts with `/` or `\`: an absolute path.
    #[error("absolute path")]
    Absolute,
    /// A component contains `/` or `\` elsewhere, smuggling in extra levels.
    #[error("component contains a path separator")]
    ContainsSeparator,
    /// A component contains a NUL byte, which truncates paths in C APIs.
    #[error("component contains a NUL byte")]
    ContainsNul,
    /// A component starts with a Windows drive prefix such as `C:`.
    #[error("component starts with a drive prefix")]
    DrivePrefix,
    /// A Windows reserved device name (`CON`, `NUL`, `COM1`, `lpt2.txt`...).
    #[error("Windows reserved device name")]
    ReservedName,
    /// The name or component is not valid UTF-8.
    #[error("not valid UTF-8")]
    NotUtf8,
}

/// A parsed, validated `.torrent` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// SHA-1 of [`Metainfo::info_bytes`].
    pub info_hash: InfoHash,
    /// The validated info dictionary.
    pub info: Info,
    /// The info dictionary exactly as it appeared in the file: what BEP 9
    /// serves to peers fetching metadata, and what the info-hash covers.
    pub info_bytes: Vec<u8>,
    /// The `announce` URL, if any.
    pub announce: Option<String>,
    /// Tracker tiers (BEP 12): `announce-list` if present and non-empty after
    /// dropping non-string entries and empty tiers, else `[[announce]]`;
    /// empty for a trackerless torrent.
    pub trackers: Vec<Vec<String>>,
    /// BEP 19 web seed URLs (`url-list`, a string or a list of strings).
    pub url_list: Vec<String>,
    /// `comment` (`comment.utf-8` preferred), if present and valid UTF-8.
    pub comment: Option<String>,
    /// `created by`, if present and valid UTF-8.
    pub created_by: Option<String>,
    /// `creation date`, seconds since the Unix epoch, if present.
    pub creation_date: Option<i64>,
}

impl Metainfo {
    /// Parses and validates a `.torrent` file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        let root = bencode::decode(bytes)?;
        if root.as_dict().is_none() {
            return Err(wrong_type("(root)", "a dictionary"));
        }
        let info_value = root.get(b"info").ok_or_else(|| missing("info"))?;
        let info = Info::from_value(info_value)?;
        let info_bytes = info_value.raw().to_vec();

        let announce = match root.get(b"announce") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| wrong_type("announce", "a UTF-8 string"))?
                    .to_owned(),
            )
            .filter(|s| !s.is_empty()),
        };
        let mut trackers = match root.get(b"announce-list") {
            None => Vec::new(),
            Some(v) => announce_list(v)?,
        };
        if trackers.is_empty() {
            trackers.extend(announce.iter().map(|a| vec![a.clone()]));
        }

        let url_list = match root.get(b"url-list") {
            Some(v) => match (v.as_str(), v.as_list()) {
                (Some(s), _) => vec![s.to_owned()],
                (_, Some(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            },
            None => Vec::new(),
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();

        let text = |key: &[u8]| root.get(key).and_then(Value::as_str).map(str::to_owned);
        Ok(Metainfo {
            info_hash: InfoHash::of(&info_bytes),
            info,
            info_bytes,
            announce,
            trackers,
            url_list,
            comment: text(b"comment.utf-8").or_else(|| text(b"comment")),
            created_by: text(b"created by"),
            creation_date: root.get(b"creation date").and_then(Value::as_int),
        })
    }
}

/// BEP 12 tiers: a list of lists of URLs. Non-string URLs, non-list tiers
/// and empty strings are skipped; empty tiers are dropped.
fn announce_list(v: &Value<'_>) -> Result<Vec<Vec<String>>, MetainfoError> {
    let tiers = v
        .as_list()
        .ok_or_else(|| wrong_type("announce-list", "a list of lists"))?;
    Ok(tiers
        .iter()
        .filter_map(Value::as_list)
        .map(|tier| {
            tier.iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|tier| !tier.is_empty())
        .collect())
}

/// A validated BEP 3 info dictionary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Suggested name: the file name of a single-file torrent, the root
    /// directory of a multi-file one. Validated like a path component.
    pub name: String,
    /// Bytes per piece (the last piece may be shorter); `1..=256 MiB`.
    pub piece_length: u32,
    /// SHA-1 of each piece, in order; exactly `piece_count()` of them.
    pub pieces: Vec<[u8; 20]>,
    /// The files in torrent order, with offsets into the concatenated data.
    /// A single-file torrent has one entry whose path is `[name]`.
    pub files: Vec<FileEntry>,
    /// Sum of all file lengths (padding files included); greater than zero.
    pub total_length: u64,
    /// BEP 27: `private` is 1, so peers come only from the trackers.
    pub private: bool,
    /// Whether the torrent used the multi-file layout (`files`), even if it
    /// lists a single file: the data then lives under a `name` directory.
    pub multi_file: bool,
}

/// One file of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Validated path components under the torrent root (the `name`
    /// directory for multi-file torrents); `[name]` for single-file ones.
    pub path: Vec<String>,
    /// Length in bytes; may be zero.
    pub length: u64,
    /// Where the file starts in the torrent's concatenated data.
    pub offset: u64,
    /// BEP 47 padding file (`attr` contains `p`): its bytes are zeros that
    /// exist only to align the next file to a piece boundary.
    pub padding: bool,
}

impl Info {
    /// Parses and validates a bare bencoded info dictionary (for example one
    /// fetched from peers with BEP 9, after checking its hash).
    pub fn from_bytes(info_dict: &[u8]) -> Result<Info, MetainfoError> {
        Info::from_value(&bencode::decode(info_dict)?)
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        // Validated at parse time: at most input-size / 20 pieces.
        u32::try_from(self.pieces.len()).unwrap_or(u32::MAX)
    }

    /// Length of piece `index`: `piece_length` for all but the last piece,
    /// which holds the remainder. Zero for an index out of range.
    pub fn piece_len(&self, index: u32) -> u32 {
        let start = u64::from(index) * u64::from(self.piece_length);
        if index >= self.piece_count() || start >= self.total_length {
            return 0;
        }
        // Bounded by piece_length, so the cast is lossless.
        (self.total_length - start).min(u64::from(self.piece_length)) as u32
    }

    /// The SHA-1 of piece `index`, or `None` if out of range.
    pub fn piece_hash(&self, index: u32) -> Option<&[u8; 20]> {
        self.pieces.get(usize::try_from(index).ok()?)
    }

    fn from_value(info: &Value<'_>) -> Result<Info, MetainfoError> {
        if info.as_dict().is_none() {
            return Err(wrong_type("info", "a dictionary"));
        }
        let name_value = info
            .get(b"name.utf-8")
            .filter(|v| v.as_bytes().is_some())
            .or_else(|| info.get(b"name"))
            .ok_or_else(|| missing("info.name"))?;
        let name_bytes = name_value
            .as_bytes()
            .ok_or_else(|| wrong_type("info.name", "a string"))?;
        let name = component(name_bytes, &[name_bytes])?;

        let piece_length = {
            let v = info
                .get(b"piece length")
                .ok_or_else(|| missing("info.piece length"))?;
            let got = v
                .as_int()
                .ok_or_else(|| wrong_type("info.piece length", "an integer"))?;
            match u32::try_from(got) {
                Ok(n) if n > 0 && n <= MAX_PIECE_LENGTH => n,
                _ => return Err(MetainfoError::BadPieceLength { got }),
            }
        };

        let pieces_bytes = info
            .get(b"pieces")
            .ok_or_else(|| {
                // BEP 52: a v2-only torrent has a `file tree` and no v1
                // hashes; say so rather than only "missing key".
                if info.get(b"file tree").is_some() || info.get(b"meta version").is_some() {
                    MetainfoError::V2Only
                } else {
                    missing("info.pieces")
                }
            })?
            .as_bytes()
            .ok_or_else(|| wrong_type("info.pieces", "a string"))?;
        if pieces_bytes.len() % 20 != 0 {
            return Err(MetainfoError::PiecesNotMultipleOf20 {
                len: pieces_bytes.len(),
            });
        }

        let (files, multi_file) = match (info.get(b"length"), info.get(b"files")) {
            (Some(_), Some(_)) => return Err(MetainfoError::BothLengthAndFiles),
            (None, None) => return Err(missing("info.length or info.files")),
            (Some(length), None) => {
                let length = file_length(length, "info.length", &name)?;
                let file = FileEntry {
                    path: vec![name.clone()],
                    length,
                    offset: 0,
                    padding: false,
                };
                (vec![file], false)
            }
            (None, Some(files)) => (file_list(files)?, true),
        };
        let total_length = match files.last() {
            Some(last) => last
                .offset
                .checked_add(last.length)
                .ok_or(MetainfoError::TotalLengthOverflow)?,
            None => 0,
        };
        if total_length == 0 {
            return Err(MetainfoError::EmptyTorrent);
        }

        let expected = total_length.div_ceil(u64::from(piece_length));
        let got = (pieces_bytes.len() / 20) as u64;
        if expected != got {
            return Err(MetainfoError::PieceCountMismatch { expected, got });
        }

        Ok(Info {
            name,
            piece_length,
            pieces: pieces_bytes
                .chunks_exact(20)
                .filter_map(|h| <[u8; 20]>::try_from(h).ok())
                .collect(),
            files,
            total_length,
            private: info.get(b"private").and_then(Value::as_int) == Some(1),
            multi_file,
        })
    }
}

/// Parses a multi-file `files` list, assigning offsets and rejecting unsafe
/// or conflicting paths.
fn file_list(files: &Value<'_>) -> Result<Vec<FileEntry>, MetainfoError> {
    let list = files
        .as_list()
        .ok_or_else(|| wrong_type("info.files", "a list"))?;
    if list.is_empty() {
        return Err(MetainfoError::NoFiles);
    }
    let mut out = Vec::new();
    let mut offset: u64 = 0;
    // Full paths of real files, and every directory they imply.
    let mut file_paths: HashSet<Vec<String>> = HashSet::new();
    let mut dirs: HashSet<Vec<String>> = HashSet::new();
    for (i, entry) in list.iter().enumerate() {
        if entry.as_dict().is_none() {
            return Err(wrong_type(&format!("info.files[{i}]"), "a dictionary"));
        }
        let path_value = entry
            .get(b"path.utf-8")
            .filter(|v| v.as_list().is_some())
            .or_else(|| entry.get(b"path"))
            .ok_or_else(|| missing(&format!("info.files[{i}].path")))?;
        let raw_components: Vec<&[u8]> = path_value
            .as_list()
            .and_then(|items| items.iter().map(Value::as_bytes).collect())
            .ok_or_else(|| wrong_type(&format!("info.files[{i}].path"), "a list of strings"))?;
        if raw_components.is_empty() {
            return Err(MetainfoError::InvalidPath {
                file: String::new(),
                reason: PathError::NoComponents,
            });
        }
        let path = raw_components
            .iter()
            .map(|c| component(c, &raw_components))
            .collect::<Result<Vec<String>, _>>()?;
        let attr = entry.get(b"attr").and_then(Value::as_bytes).unwrap_or(b"");
        if attr.contains(&b'l') {
            // BEP 47 symlink: its bytes are not in the torrent's data (its
            // `length`, if any, must not count), and we create no links.
            return Err(MetainfoError::Symlink {
                file: path.join("/"),
            });
        }
        let length_value = entry
            .get(b"length")
            .ok_or_else(|| missing(&format!("info.files[{i}].length")))?;
        let length = file_length(
            length_value,
            &format!("info.files[{i}].length"),
            &path.join("/"),
        )?;
        let padding = attr.contains(&b'p');

        // BEP 47 padding files are never written and several may share a
        // name (`.pad/N`), so only real files claim paths.
        if !padding {
            let conflict = file_paths.contains(&path)
                || dirs.contains(&path)
                || (1..path.len()).any(|n| file_paths.contains(&path[..n]));
            if conflict {
                return Err(MetainfoError::DuplicatePath {
                    file: path.join("/"),
                });
            }
            for n in 1..path.len() {
                dirs.insert(path[..n].to_vec());
            }
            file_paths.insert(path.clone());
        }

        out.push(FileEntry {
            path,
            length,
            offset,
            padding,
        });
        offset = offset
            .checked_add(length)
            .ok_or(MetainfoError::TotalLengthOverflow)?;
    }
    Ok(out)
}

/// A file length: a non-negative integer.
fn file_length(v: &Value<'_>, key: &str, file: &str) -> Result<u64, MetainfoError> {
    let length = v.as_int().ok_or_else(|| wrong_type(key, "an integer"))?;
    u64::try_from(length).map_err(|_| MetainfoError::NegativeLength {
        file: file.to_owned(),
        length,
    })
}

/// Validates one path component (or the torrent name). `path` is the whole
/// path it belongs to, for the error message.
fn component(raw: &[u8], path: &[&[u8]]) -> Result<String, MetainfoError> {
    let fail = |reason| MetainfoError::InvalidPath {
        file: path
            .iter()
            .map(|c| String::from_utf8_lossy(c))
            .collect::<Vec<_>>()
            .join("/"),
        reason,
    };
    let s = std::str::from_utf8(raw).map_err(|_| fail(PathError::NotUtf8))?;
    check_component(s).map_err(fail)?;
    Ok(s.to_owned())
}

/// The component rules from the module docs.
fn check_component(s: &str) -> Result<(), PathError> {
    let bytes = s.as_bytes();
    match s {
        "" => return Err(PathError::Empty),
        "." => return Err(PathError::CurrentDir),
        ".." => return Err(PathError::ParentDir),
        _ => {}
    }
    if bytes[0] == b'/' || bytes[0] == b'\\' {
        return Err(PathError::Absolute);
    }
    if bytes.contains(&b'/') || bytes.contains(&b'\\') {
        return Err(PathError::ContainsSeparator);
    }
    if bytes.contains(&0) {
        return Err(PathError::ContainsNul);
    }
    if bytes.iter().all(|&b| b == b'.' || b == b' ') {
        return Err(PathError::OnlyDotsAndSpaces);
    }
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(PathError::DrivePrefix);
    }
    if is_reserved_windows_name(s) {
        return Err(PathError::ReservedName);
    }
    Ok(())
}

/// `CON`, `PRN`, `AUX`, `NUL`, `COM0-9`, `LPT0-9` (and the superscript-digit
/// forms Windows also reserves), any case, with any extension, ignoring
/// trailing spaces before the extension (`con .txt`), as Windows does.
fn is_reserved_windows_name(s: &str) -> bool {
    let stem = s.split('.').next().unwrap_or(s).trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        _ => {
            let Some(rest) = upper
                .strip_prefix("COM")
                .or_else(|| upper.strip_prefix("LPT"))
            else {
                return false;
            };
            let mut chars = rest.chars();
            matches!(
                (chars.next(), chars.next()),
                (Some('0'..='9' | '\u{b9}' | '\u{b2}' | '\u{b3}'), None)
            )
        }
    }
}

fn missing(key: &str) -> MetainfoError {
    MetainfoError::MissingKey {
        key: key.to_owned(),
    }
}

fn wrong_type(key: &str, expected: &'static str) -> MetainfoError {
    MetainfoError::WrongType {
        key: key.to_owned(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names() {
        for name in [
            "CON",
            "con",
            "Con.txt",
            "nul",
            "NUL.tar.gz",
            "aux",
            "prn.x",
            "COM1",
            "com9.log",
            "LPT1",
            "lpt9",
            "con .txt",
            "COM\u{b9}",
        ] {
            assert!(is_reserved_windows_name(name), "{name}");
        }
        for name in [
            "CONSOLE",
            "context.txt",
            "COM",
            "COM10",
            "LPT",
            "nul_",
            "xcon",
            "aux1",
            "COMA",
        ] {
            assert!(!is_reserved_windows_name(name), "{name}");
        }
    }

    #[test]
    fn component_rules() {
        assert_eq!(check_component(""), Err(PathError::Empty));
        assert_eq!(check_component("."), Err(PathError::CurrentDir));
        assert_eq!(check_component(".."), Err(PathError::ParentDir));
        assert_eq!(check_component("..."), Err(PathError::OnlyDotsAndSpaces));
        assert_eq!(check_component(" "), Err(PathError::OnlyDotsAndSpaces));
        assert_eq!(check_component("/etc"), Err(PathError::Absolute));
        assert_eq!(check_component("\\x"), Err(PathError::Absolute));
        assert_eq!(check_component("a/b"), Err(PathError::ContainsSeparator));
        assert_eq!(check_component("a\\b"), Err(PathError::ContainsSeparator));
        assert_eq!(check_component("a\0b"), Err(PathError::ContainsNul));
        assert_eq!(check_component("C:"), Err(PathError::DrivePrefix));
        assert_eq!(check_component("c:evil"), Err(PathError::DrivePrefix));
        assert_eq!(check_component("lpt3.doc"), Err(PathError::ReservedName));
        for ok in [
            ".pad",
            "Vol. 1...",
            "a b ",
            "0x0000000000100000",
            "日本語",
            ".hidden",
        ] {
            assert_eq!(check_component(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn hex_round_trip() {
        let h = InfoHash([0xab; 20]);
        assert_eq!(h.to_hex(), "ab".repeat(20));
        assert_eq!(format!("{h:?}"), "ab".repeat(20));
        assert_eq!(InfoHash::from_hex(&"AB".repeat(20)), Some(h));
        assert_eq!(InfoHash::from_hex(&"ab".repeat(19)), None);
        assert_eq!(InfoHash::from_hex(&format!("{}zz", "ab".repeat(19))), None);
        // Multi-byte UTF-8 must not be split mid-character into a panic.
        assert_eq!(InfoHash::from_hex(&"é".repeat(20)), None);
    }
}

//! What a new torrent holds and where its bytes are read from.
//!
//! File mode walks a file or a directory into a list of files sorted by path
//! (component by component, byte-wise), so the same tree always gives the
//! same info-hash. Raw mode scans a disk image or block device for the
//! granules that hold a non-zero byte and makes each run of them a file
//! named by its hex offset (`0x%016x`), the names `Storage::open_info_raw`
//! parses back into offsets on the downloader's target.
//!
//! Either way the result is a [`Payload`]: the torrent's files in torrent
//! order, and the [`Segment`]s (source, offset, length) whose concatenation
//! is the torrent's byte space, which the hasher reads in order.
//!
//! Nothing is skipped silently. Symlinks inside a directory are refused (see
//! [`walk`] for why), as are FIFOs, sockets and device nodes; empty
//! directories cannot be expressed in a torrent and get a warning on stderr.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::anyhow;
use indicatif::ProgressBar;

use crate::Failure;

/// A file of the torrent being made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// Path components below the torrent's name (for a single-file torrent,
    /// just the name).
    pub path: Vec<String>,
    /// Length in bytes; may be zero in file mode.
    pub length: u64,
}

/// A byte range of a source file; the torrent is these ranges in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index into [`Payload::sources`].
    pub source: usize,
    /// First byte in the source.
    pub offset: u64,
    /// Bytes (never zero).
    pub length: u64,
}

/// A file read while hashing, with what it looked like when it was listed,
/// so a change during hashing is caught instead of baked into the torrent.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path to open.
    pub path: PathBuf,
    /// Size and modification time at listing time; `None` for a block
    /// device, whose mtime says nothing about its contents.
    pub stamp: Option<(u64, SystemTime)>,
}

/// Everything the torrent will describe, before hashing.
#[derive(Debug)]
pub struct Payload {
    /// The torrent's `name`.
    pub name: String,
    /// True if the info dictionary gets a `files` list (always in raw mode).
    pub multi_file: bool,
    /// The torrent's files, in torrent order.
    pub files: Vec<PayloadFile>,
    /// Files read while hashing.
    pub sources: Vec<Source>,
    /// The torrent's byte space, in order.
    pub segments: Vec<Segment>,
    /// Raw mode: bytes of the image left out because they are zero.
    pub zero_bytes_left_out: u64,
    /// Raw mode: size of the image or device.
    pub image_size: Option<u64>,
}

impl Payload {
    /// Total bytes of the torrent.
    pub fn total(&self) -> u64 {
        self.segments.iter().map(|s| s.length).sum()
    }
}

fn bad(e: anyhow::Error) -> Failure {
    Failure::BadInput(e)
}

/// The torrent name for `path`: its last component, or for `.` and the like
/// the last component of the directory it resolves to.
fn name_of(path: &Path) -> Result<String, Failure> {
    let last = match path.file_name() {
        Some(n) => n.to_os_string(),
        None => std::fs::canonicalize(path)
            .map_err(|e| bad(anyhow!("{}: {e}", path.display())))?
            .file_name()
            .ok_or_else(|| {
                bad(anyhow!(
                    "{}: has no name to give the torrent",
                    path.display()
                ))
            })?
            .to_os_string(),
    };
    last.into_string()
        .map_err(|_| bad(anyhow!("{}: name is not valid UTF-8", path.display())))
}

fn stamp(meta: &std::fs::Metadata) -> Option<(u64, SystemTime)> {
    meta.modified().ok().map(|m| (meta.len(), m))
}

/// Lists a file or a directory. `path` itself is followed if it is a
/// symlink (the user named it). Symlinks *inside* a directory are refused:
/// following them can loop, can pull in data from outside the directory the
/// user meant to share, and can make one file appear twice; refusing with
/// the link's name lets the user replace it with a copy or remove it.
pub fn walk(path: &Path) -> Result<Payload, Failure> {
    let meta = std::fs::metadata(path).map_err(|e| bad(anyhow!("{}: {e}", path.display())))?;
    let name = name_of(path)?;
    if meta.is_file() {
        if meta.len() == 0 {
            return Err(bad(anyhow!(
                "{}: the file is empty; a torrent needs at least one byte of data",
                path.display()
            )));
        }
        return Ok(Payload {
            name: name.clone(),
            multi_file: false,
            files: vec![PayloadFile {
                path: vec![name],
                length: meta.len(),
            }],
            sources: vec![Source {
                path: path.to_path_buf(),
                stamp: stamp(&meta),
            }],
            segments: vec![Segment {
                source: 0,
                offset: 0,
                length: meta.len(),
            }],
            zero_bytes_left_out: 0,
            image_size: None,
        });
    }
    if !meta.is_dir() {
        return Err(bad(anyhow!(
            "{}: not a regular file or a directory{}",
            path.display(),
            if meta.file_type().is_block_device() {
                " (use --raw for a block device)"
            } else {
                ""
            }
        )));
    }

    // (components below the root, path on disk, metadata)
    let mut found: Vec<(Vec<String>, PathBuf, std::fs::Metadata)> = Vec::new();
    let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(path.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| bad(anyhow!("{}: {e}", dir.display())))?;
        let mut empty = true;
        for entry in entries {
            empty = false;
            let entry = entry.map_err(|e| bad(anyhow!("{}: {e}", dir.display())))?;
            let on_disk = entry.path();
            let component = entry.file_name().into_string().map_err(|_| {
                bad(anyhow!(
                    "{}: name is not valid UTF-8; torrent paths are UTF-8",
                    on_disk.display()
                ))
            })?;
            let ft = entry
                .file_type()
                .map_err(|e| bad(anyhow!("{}: {e}", on_disk.display())))?;
            let mut child = rel.clone();
            child.push(component);
            if ft.is_symlink() {
                return Err(bad(anyhow!(
                    "{}: is a symbolic link; create does not follow links inside the \
                     payload (they can loop or leave it); replace it with a copy or remove it",
                    on_disk.display()
                )));
            } else if ft.is_dir() {
                stack.push((on_disk, child));
            } else if ft.is_file() {
                let meta = entry
                    .metadata()
                    .map_err(|e| bad(anyhow!("{}: {e}", on_disk.display())))?;
                found.push((child, on_disk, meta));
            } else {
                return Err(bad(anyhow!(
                    "{}: is not a regular file or a directory (a FIFO, socket or device \
                     node); remove it from the payload",
                    on_disk.display()
                )));
            }
        }
        if empty && !rel.is_empty() {
            eprintln!(
                "actorrent: warning: {}: empty directory left out (a torrent holds only files)",
                dir.display()
            );
        }
    }
    // Vec<String> orders component by component, each byte-wise.
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let total: u64 = found.iter().map(|f| f.2.len()).sum();
    if total == 0 {
        return Err(bad(anyhow!(
            "{}: nothing to share: {} holds no data ({} files, all empty)",
            path.display(),
            path.display(),
            found.len()
        )));
    }
    let mut payload = Payload {
        name,
        multi_file: true,
        files: Vec::with_capacity(found.len()),
        sources: Vec::with_capacity(found.len()),
        segments: Vec::with_capacity(found.len()),
        zero_bytes_left_out: 0,
        image_size: None,
    };
    for (rel, on_disk, meta) in found {
        let length = meta.len();
        payload.files.push(PayloadFile { path: rel, length });
        if length > 0 {
            payload.segments.push(Segment {
                source: payload.sources.len(),
                offset: 0,
                length,
            });
            payload.sources.push(Source {
                path: on_disk,
                stamp: stamp(&meta),
            });
        }
    }
    Ok(payload)
}

/// Bytes read per scan call: large sequential reads, a whole number of
/// granules.
const SCAN_CHUNK: u64 = 8 * 1024 * 1024;

/// Scans a raw image or block device for its non-zero extents at
/// `granularity` and describes them as a raw-disk torrent.
///
/// An image that is all zeros is refused: a torrent must hold at least one
/// byte, and a downloader's fresh target (a new sparse image, or a device
/// it overwrites) would gain nothing from it.
pub fn scan_raw(
    path: &Path,
    granularity: u64,
    bar: Option<&ProgressBar>,
) -> Result<Payload, Failure> {
    let mut file = File::open(path).map_err(|e| bad(anyhow!("{}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| bad(anyhow!("{}: {e}", path.display())))?;
    let ft = meta.file_type();
    let (size, stamp) = if ft.is_file() {
        (meta.len(), stamp(&meta))
    } else if ft.is_block_device() {
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| bad(anyhow!("{}: cannot find its size: {e}", path.display())))?;
        (size, None)
    } else {
        return Err(bad(anyhow!(
            "{}: --raw needs a disk image file or a block device",
            path.display()
        )));
    };
    if size == 0 {
        return Err(bad(anyhow!("{}: the image is empty", path.display())));
    }
    if let Some(bar) = bar {
        bar.set_length(size);
        bar.set_message("scanning");
    }
    let extents = nonzero_extents(&file, size, granularity, bar)
        .map_err(|e| Failure::Runtime(anyhow!("{}: {e}", path.display())))?;
    if extents.is_empty() {
        return Err(bad(anyhow!(
            "{}: nothing to transfer: all {size} bytes are zero at {granularity}-byte \
             granularity",
            path.display()
        )));
    }
    let name = name_of(path)?;
    let mut payload = Payload {
        name,
        multi_file: true,
        files: Vec::with_capacity(extents.len()),
        sources: vec![Source {
            path: path.to_path_buf(),
            stamp,
        }],
        segments: Vec::with_capacity(extents.len()),
        zero_bytes_left_out: 0,
        image_size: Some(size),
    };
    for (start, end) in extents {
        payload.files.push(PayloadFile {
            path: vec![raw_name(start)],
            length: end - start,
        });
        payload.segments.push(Segment {
            source: 0,
            offset: start,
            length: end - start,
        });
    }
    payload.zero_bytes_left_out = size - payload.total();
    Ok(payload)
}

/// The EZIO-style name of an extent starting at `offset`.
pub fn raw_name(offset: u64) -> String {
    format!("0x{offset:016x}")
}

/// The next region at or after `pos` that may hold data, as
/// `(start, end)`, or `None` past the last one. Sparse image files skip
/// their holes this way without reading them; filesystems and devices that
/// do not track holes report everything as data.
fn next_data(file: &File, pos: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let Ok(at) = libc::off_t::try_from(pos) else {
        return Ok(None);
    };
    // SAFETY: lseek on a descriptor we own; it only moves the file offset,
    // which nothing here uses (reads are positional).
    let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
    if data < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((pos, size))),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    let data = data as u64;
    let hole = if hole < 0 { size } else { hole as u64 };
    Ok((data < size).then_some((data, hole.clamp(data, size))))
}

/// True if every byte is zero. Folds 4 KiB at a time so the loop
/// vectorises, and stops at the first non-zero page.
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Runs of granules (aligned to `granularity` from byte 0; the last may be
/// short) holding a non-zero byte, merged when adjacent, in offset order.
pub fn nonzero_extents(
    file: &File,
    size: u64,
    granularity: u64,
    bar: Option<&ProgressBar>,
) -> std::io::Result<Vec<(u64, u64)>> {
    let g = granularity;
    let chunk = (SCAN_CHUNK / g).max(1) * g;
    let mut buf = vec![0u8; usize::try_from(chunk).unwrap_or(usize::MAX)];
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let Some((data, hole)) = next_data(file, pos, size)? else {
            break;
        };
        // Whole granules around the data region; a granule partly in a hole
        // reads zeros there, so reading it whole is exact.
        let start = data / g * g;
        let end = hole.div_ceil(g).saturating_mul(g).max(start + g).min(size);
        let mut at = start.max(pos);
        while at < end {
            let n = (end - at).min(chunk) as usize;
            read_full_at(file, &mut buf[..n], at)?;
            for (i, granule) in buf[..n].chunks(g as usize).enumerate() {
                if is_zero(granule) {
                    continue;
                }
                let s = at + i as u64 * g;
                let e = s + granule.len() as u64;
                match extents.last_mut() {
                    Some(last) if last.1 == s => last.1 = e,
                    _ => extents.push((s, e)),
                }
            }
            at += n as u64;
            if let Some(bar) = bar {
                bar.set_position(at);
            }
        }
        pos = end;
    }
    Ok(extents)
}

/// Fills `buf` from `offset`, or fails if the file ends first (it shrank
/// since it was listed).
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "ended at byte {} while {} were expected; it changed while being read",
                        offset + done as u64,
                        offset + buf.len() as u64
                    ),
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_check() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 10_000]));
        let mut v = vec![0u8; 10_000];
        v[9_999] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn raw_names_parse_back() {
        for off in [0u64, 0x10_0000, u64::MAX] {
            let name = raw_name(off);
            assert_eq!(name.len(), 18);
            assert_eq!(storage::layout::parse_raw_offset(&name).unwrap(), off);
        }
    }

    #[test]
    fn extents_merge_and_short_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let g = 4096u64;
        let size = 10 * g + 100;
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        // Granules 1 and 2 (adjacent, merged), 5, and the short tail.
        f.write_at(&[1], g + 7).unwrap();
        f.write_at(&[1], 3 * g - 1).unwrap();
        f.write_at(&[1], 5 * g).unwrap();
        f.write_at(&[1], 10 * g + 99).unwrap();
        drop(f);
        let f = File::open(&p).unwrap();
        let e = nonzero_extents(&f, size, g, None).unwrap();
        assert_eq!(e, vec![(g, 3 * g), (5 * g, 6 * g), (10 * g, size)]);
    }
}

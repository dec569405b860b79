//! `actorrent create`: make a .torrent from a file or a directory, or with
//! `--raw` from a disk image or block device (only its non-zero extents).
//!
//! [`source`] decides which bytes the torrent holds and in which order,
//! [`hasher`] reads and hashes them on the storage crate's hash pool, and
//! this module parses the options, builds the metainfo with the protocol
//! crate's bencode encoder, checks that the result parses exactly as any
//! downloaded torrent would, and writes it without clobbering an existing
//! file unless `--force` is given.

mod hasher;
mod source;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::bencode::Bencode;
use protocol::metainfo::{Info, Metainfo};

use crate::Failure;
use source::Payload;

/// Smallest piece: one request block.
const MIN_PIECE: u64 = 16 * 1024;
/// Largest piece `auto` picks.
const AUTO_MAX_PIECE: u64 = 16 * 1024 * 1024;
/// Largest piece accepted on the command line; bigger pieces make every
/// hash failure and every seeding read needlessly expensive.
const MAX_PIECE: u64 = 64 * 1024 * 1024;
/// `auto` picks the smallest piece giving at most this many pieces, so the
/// count lands between half of it and it (unless a size bound is hit).
const AUTO_MAX_PIECES: u64 = 2048;
/// Most pieces accepted: 40 MB of hashes, so the torrent stays under the
/// 64 MiB that our own parser (and `info`) read.
const MAX_PIECES: u64 = 2_000_000;
/// Largest info dictionary written, for the same reason.
const MAX_INFO_BYTES: usize = 60 * 1024 * 1024;
/// Default raw-mode granularity.
const DEFAULT_GRANULARITY: u64 = 1024 * 1024;
/// Bounds of `--granularity`: a 4 KiB page up to 64 MiB (one scan read
/// buffer holds at least one granule).
const MIN_GRANULARITY: u64 = 4 * 1024;
const MAX_GRANULARITY: u64 = 64 * 1024 * 1024;

/// `--piece-size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceSize {
    /// Chosen from the total size.
    Auto,
    /// Exactly this many bytes.
    Bytes(u64),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The file or directory to share; with --raw, a disk image file or a
    /// block device.
    pub path: PathBuf,
    /// Where to write the .torrent file.
    #[arg(long, short = 'o', value_name = "FILE.torrent")]
    pub output: PathBuf,
    /// Tracker announce URL (http, https or udp). Repeat for more trackers;
    /// each becomes its own tier, tried in the order given.
    #[arg(long = "tracker", value_name = "URL", value_parser = parse_tracker)]
    pub trackers: Vec<String>,
    /// Piece size in bytes, a power of two from 16 KiB to 64 MiB (suffixes
    /// K and M mean KiB and MiB), or `auto`: 1-2 thousand pieces, between
    /// 16 KiB and 16 MiB.
    #[arg(long, value_name = "BYTES|auto", default_value = "auto", value_parser = parse_piece_size)]
    pub piece_size: PieceSize,
    /// Mark the torrent private (BEP 27): peers only from its trackers.
    #[arg(long)]
    pub private: bool,
    /// A free-text comment stored in the torrent.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// PATH is a disk image or block device: the torrent holds only its
    /// non-zero extents, as files named by their hex offsets.
    #[arg(long)]
    pub raw: bool,
    /// With --raw: size of the all-zero regions left out, a power of two
    /// from 4 KiB to 64 MiB (default 1 MiB).
    #[arg(long, value_name = "BYTES", requires = "raw", value_parser = parse_granularity)]
    pub granularity: Option<u64>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Hash worker threads, 0 to 256 (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    pub hash_workers: u16,
}

/// Parses a byte count with an optional binary suffix (K, KiB, M, MiB, G,
/// GiB; case-insensitive).
fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    let n: u64 = num.parse().ok()?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

fn parse_piece_size(s: &str) -> Result<PieceSize, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(PieceSize::Auto);
    }
    match parse_bytes(s) {
        Some(n) if n.is_power_of_two() && (MIN_PIECE..=MAX_PIECE).contains(&n) => {
            Ok(PieceSize::Bytes(n))
        }
        _ => Err(format!(
            "piece size {s:?} must be `auto` or a power of two from 16384 (16K) to \
             67108864 (64M) bytes"
        )),
    }
}

fn parse_granularity(s: &str) -> Result<u64, String> {
    match parse_bytes(s) {
        Some(n) if n.is_power_of_two() && (MIN_GRANULARITY..=MAX_GRANULARITY).contains(&n) => Ok(n),
        _ => Err(format!(
            "granularity {s:?} must be a power of two from 4096 (4K) to 67108864 (64M) bytes"
        )),
    }
}

fn parse_tracker(s: &str) -> Result<String, String> {
    let rest = ["http://", "https://", "udp://"]
        .iter()
        .find_map(|scheme| {
            s.get(..scheme.len())
                .filter(|p| p.eq_ignore_ascii_case(scheme))
                .map(|_| &s[scheme.len()..])
        })
        .ok_or_else(|| format!("tracker {s:?} must be an http://, https:// or udp:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || s.chars().any(|c| c.is_whitespace()) {
        return Err(format!("tracker {s:?} has no host or contains whitespace"));
    }
    Ok(s.to_string())
}

/// The `auto` piece size for `total` bytes: the smallest power of two from
/// 16 KiB that gives at most 2048 pieces, capped at 16 MiB.
pub fn auto_piece_size(total: u64) -> u64 {
    let mut p = MIN_PIECE;
    while p < AUTO_MAX_PIECE && total.div_ceil(p) > AUTO_MAX_PIECES {
        p *= 2;
    }
    p
}

pub fn run(args: &CreateArgs) -> Result<(), Failure> {
    // Fail before hashing what may be terabytes, not after.
    if let Ok(m) = std::fs::symlink_metadata(&args.output) {
        if m.is_dir() {
            return Err(Failure::BadInput(anyhow!(
                "{}: is a directory; --output names the .torrent file to write",
                args.output.display()
            )));
        }
        if !args.force {
            return Err(Failure::BadInput(anyhow!(
                "{}: already exists; use --force to overwrite it",
                args.output.display()
            )));
        }
    }
    let show_progress = std::io::stderr().is_terminal();
    let bar = show_progress.then(|| {
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });

    let payload = if args.raw {
        let g = args.granularity.unwrap_or(DEFAULT_GRANULARITY);
        source::scan_raw(&args.path, g, bar.as_ref())?
    } else {
        source::walk(&args.path)?
    };
    refuse_output_inside(&payload, &args.output)?;
    let total = payload.total();
    let piece_length = match args.piece_size {
        PieceSize::Auto => auto_piece_size(total),
        PieceSize::Bytes(n) => n,
    };
    let piece_count = total.div_ceil(piece_length);
    if piece_count > MAX_PIECES {
        return Err(Failure::BadInput(anyhow!(
            "{total} bytes in {piece_length}-byte pieces is {piece_count} pieces, more than \
             {MAX_PIECES}; choose a larger --piece-size"
        )));
    }
    let piece_length = piece_length as u32; // <= MAX_PIECE

    // Check names and structure with placeholder hashes before hashing, so a
    // name our own parser refuses (e.g. a reserved Windows name) is reported
    // now and the torrent we write is one every actorrent accepts.
    let probe = info_dict(
        &payload,
        piece_length,
        &vec![[0; 20]; piece_count as usize],
        args.private,
    );
    let probe = probe.encode();
    if probe.len() > MAX_INFO_BYTES {
        return Err(Failure::BadInput(anyhow!(
            "{}: the torrent would be over {} MiB ({} files); use a larger --piece-size{}",
            args.path.display(),
            MAX_INFO_BYTES >> 20,
            payload.files.len(),
            if args.raw { " or --granularity" } else { "" }
        )));
    }
    Info::from_bytes(&probe).map_err(|e| {
        Failure::BadInput(anyhow!(
            "{}: cannot be described by a torrent: {e}",
            args.path.display()
        ))
    })?;

    if let Some(bar) = &bar {
        bar.reset();
        bar.set_length(total);
        bar.set_position(0);
        bar.set_message("hashing");
    }
    let pieces = hasher::hash_pieces(
        &payload.sources,
        &payload.segments,
        piece_length,
        usize::from(args.hash_workers),
        bar.as_ref(),
    )
    .map_err(Failure::Runtime)?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    check_unchanged(&payload)?;

    let bytes = torrent(args, &payload, piece_length, &pieces).encode();
    let meta = Metainfo::from_bytes(&bytes)
        .map_err(|e| Failure::Runtime(anyhow!("the torrent built does not parse back: {e}")))?;
    write_output(&args.output, &bytes, args.force)?;

    println!("created:      {}", args.output.display());
    println!("name:         {}", meta.info.name);
    println!("info hash:    {}", meta.info_hash.to_hex());
    println!("piece length: {}", meta.info.piece_length);
    println!("pieces:       {}", meta.info.piece_count());
    println!("total length: {}", meta.info.total_length);
    println!("files:        {}", meta.info.files.len());
    if let Some(size) = payload.image_size {
        println!("image size:   {size}");
        println!("left out:     {} zero bytes", payload.zero_bytes_left_out);
    }
    Ok(())
}

/// With `--force`, the old output may be one of the files being hashed
/// (`create . -o ./x.torrent`); replacing it would invalidate the torrent
/// being made.
fn refuse_output_inside(payload: &Payload, output: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = std::fs::metadata(output) else {
        return Ok(());
    };
    for s in &payload.sources {
        if let Ok(m) = std::fs::metadata(&s.path)
            && (m.dev(), m.ino()) == (out.dev(), out.ino())
        {
            return Err(Failure::BadInput(anyhow!(
                "{}: the output is part of the payload; write it somewhere else",
                output.display()
            )));
        }
    }
    Ok(())
}

/// Fails if a source changed size or modification time while it was read:
/// the digests would then describe data that no longer exists.
fn check_unchanged(payload: &Payload) -> Result<(), Failure> {
    for s in &payload.sources {
        let Some((len, mtime)) = s.stamp else {
            continue;
        };
        let now = std::fs::metadata(&s.path)
            .map_err(|e| Failure::Runtime(anyhow!("{}: {e}", s.path.display())))?;
        if now.len() != len || now.modified().ok() != Some(mtime) {
            return Err(Failure::Runtime(anyhow!(
                "{}: changed while it was being hashed; run create again once it is stable",
                s.path.display()
            )));
        }
    }
    Ok(())
}

fn bstr(s: &str) -> Bencode {
    Bencode::from(s)
}

fn dict(entries: impl IntoIterator<Item = (&'static str, Bencode)>) -> Bencode {
    Bencode::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn int(n: u64) -> Bencode {
    // Lengths come from file sizes and fit i64 on every real filesystem.
    Bencode::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The info dictionary: the part the info-hash covers.
fn info_dict(payload: &Payload, piece_length: u32, pieces: &[[u8; 20]], private: bool) -> Bencode {
    let mut entries = vec![
        ("name", bstr(&payload.name)),
        ("piece length", int(u64::from(piece_length))),
        ("pieces", Bencode::Bytes(pieces.concat())),
    ];
    if payload.multi_file {
        let files = payload
            .files
            .iter()
            .map(|f| {
                dict([
                    ("length", int(f.length)),
                    (
                        "path",
                        Bencode::List(f.path.iter().map(|c| bstr(c)).collect()),
                    ),
                ])
            })
            .collect();
        entries.push(("files", Bencode::List(files)));
    } else {
        entries.push(("length", int(payload.total())));
    }
    if private {
        entries.push(("private", Bencode::Int(1)));
    }
    dict(entries)
}

/// The whole metainfo. The first tracker is `announce`; with more than one,
/// `announce-list` (BEP 12) puts each in its own tier.
fn torrent(
    args: &CreateArgs,
    payload: &Payload,
    piece_length: u32,
    pieces: &[[u8; 20]],
) -> Bencode {
    let mut entries = vec![
        (
            "info",
            info_dict(payload, piece_length, pieces, args.private),
        ),
        (
            "created by",
            bstr(concat!("actorrent ", env!("CARGO_PKG_VERSION"))),
        ),
    ];
    if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
        entries.push(("creation date", int(now.as_secs())));
    }
    if let Some(first) = args.trackers.first() {
        entries.push(("announce", bstr(first)));
    }
    if args.trackers.len() > 1 {
        let tiers = args
            .trackers
            .iter()
            .map(|t| Bencode::List(vec![bstr(t)]))
            .collect();
        entries.push(("announce-list", Bencode::List(tiers)));
    }
    if let Some(c) = &args.comment {
        entries.push(("comment", bstr(c)));
    }
    dict(entries)
}

/// Writes the torrent. Without `force` the file is created exclusively, so
/// a file that appeared while hashing is not clobbered either; with `force`
/// it is written beside the target and renamed over it, so a failure leaves
/// the old file intact. No fsync: a torrent file is cheap to make again, and
/// on a busy disk an fsync can cost more than hashing a gigabyte.
fn write_output(out: &Path, bytes: &[u8], force: bool) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::Runtime(anyhow!("{}: {e}", out.display()));
    if !force {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Failure::BadInput(anyhow!(
                        "{}: already exists; use --force to overwrite it",
                        out.display()
                    ))
                } else {
                    fail(e)
                }
            })?;
        return f.write_all(bytes).map_err(|e| {
            let _ = std::fs::remove_file(out);
            fail(e)
        });
    }
    let name = out
        .file_name()
        .ok_or_else(|| Failure::BadInput(anyhow!("{}: not a file name", out.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, out));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_sizes() {
        assert_eq!(auto_piece_size(1), MIN_PIECE);
        assert_eq!(auto_piece_size(2048 * MIN_PIECE), MIN_PIECE);
        assert_eq!(auto_piece_size(2048 * MIN_PIECE + 1), 2 * MIN_PIECE);
        assert_eq!(auto_piece_size(1 << 30), 512 * 1024);
        assert_eq!(auto_piece_size(1 << 50), AUTO_MAX_PIECE);
        for total in [1u64 << 25, 3 << 28, 3 << 33] {
            let n = total.div_ceil(auto_piece_size(total));
            assert!((1024..=2048).contains(&n), "{total}: {n} pieces");
        }
    }

    #[test]
    fn piece_size_values() {
        assert_eq!(parse_piece_size("auto"), Ok(PieceSize::Auto));
        assert_eq!(parse_piece_size("16384"), Ok(PieceSize::Bytes(16384)));
        assert_eq!(parse_piece_size("256K"), Ok(PieceSize::Bytes(256 << 10)));
        assert_eq!(parse_piece_size("4MiB"), Ok(PieceSize::Bytes(4 << 20)));
        for bad in [
            "",
            "0",
            "1000",
            "8K",
            "128M",
            "-16384",
            "16 KiB",
            "x",
            "99999999999999999999",
        ] {
            let e = parse_piece_size(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn tracker_values() {
        assert!(parse_tracker("http://t.example/announce").is_ok());
        assert!(parse_tracker("UDP://t.example:6969").is_ok());
        for bad in ["t.example", "ftp://x", "http://", "http:///x", "http://a b"] {
            assert!(parse_tracker(bad).is_err(), "{bad}");
        }
    }
}

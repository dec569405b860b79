//! libtorrent's own test torrents (`test/test_torrents/` of its source,
//! libtorrent 2.0.8 from Debian's `libtorrent-rasterbar` source package,
//! BSD licence in `tests/data/libtorrent/LICENSE`): 99 files, 38 of them
//! malformed on purpose. Each goes through our metainfo parser and through
//! libtorrent itself (python3-libtorrent, in this run), and the verdicts
//! are compared: a torrent both accept must read the same (files, sizes,
//! pieces, info-hash); one libtorrent rejects we must reject with an error
//! that says what is wrong; where we differ from libtorrent, the reason is
//! listed below and the error we give is checked. Nothing may panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::metainfo::Metainfo;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/libtorrent/test_torrents");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
        .collect();
    v.sort();
    v
}

/// libtorrent's verdict on each file, by file name.
fn libtorrent_verdicts(files: &[PathBuf]) -> HashMap<String, serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lt_torrent_info.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .args(files)
        .output()
        .expect("python3 with libtorrent (scripts/test.sh installs python3-libtorrent)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["file"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// Where we part from libtorrent, and why: (file, what our parser says,
/// the reason). An empty second field means we accept it (libtorrent does
/// not).
const STATED: &[(&str, &str, &str)] = &[
    // Hybrid v1+v2 torrents whose v2 half is broken: we read the v1 half
    // only (a v1 client), and it is consistent.
    (
        "v2_invalid_file.torrent",
        "",
        "v1 client: the v2 file tree is not read",
    ),
    (
        "v2_mismatching_metadata.torrent",
        "",
        "v1 client: the v2 file tree is not read",
    ),
    // Names libtorrent repairs (drops `..`, empty and leading separators,
    // splits on `/`, replaces bad bytes, renames duplicates); we refuse
    // them by name instead of writing somewhere the author did not say.
    (
        "duplicate_files.torrent",
        "duplicate or conflicting file path",
        "libtorrent renames the second copy",
    ),
    (
        "empty_path.torrent",
        "empty component",
        "libtorrent drops empty components",
    ),
    (
        "empty_path_multi.torrent",
        "empty component",
        "libtorrent drops empty components",
    ),
    (
        "invalid_name2.torrent",
        "parent directory",
        "libtorrent drops `..`",
    ),
    (
        "parent_path.torrent",
        "parent directory",
        "libtorrent drops `..`",
    ),
    (
        "slash_path.torrent",
        "absolute path",
        "libtorrent strips leading separators",
    ),
    (
        "absolute_filename.torrent",
        "absolute path",
        "libtorrent strips leading separators",
    ),
    (
        "backslash_path.torrent",
        "absolute path",
        "libtorrent strips leading separators",
    ),
    (
        "invalid_filename.torrent",
        "absolute path",
        "libtorrent strips leading separators",
    ),
    (
        "invalid_filename2.torrent",
        "absolute path",
        "libtorrent strips leading separators",
    ),
    (
        "slash_path2.torrent",
        "path separator",
        "libtorrent splits components on `/`",
    ),
    (
        "slash_path3.torrent",
        "path separator",
        "libtorrent splits components on `/`",
    ),
    (
        "hidden_parent_path.torrent",
        "path separator",
        "libtorrent splits components on `/`",
    ),
    (
        "v2_invalid_filename.torrent",
        "not valid UTF-8",
        "libtorrent replaces invalid bytes",
    ),
    // BEP 47 extensions we do not read.
    (
        "symlink_zero_size.torrent",
        "symbolic link",
        "symlink entries are not supported",
    ),
    (
        "symlink1.torrent",
        "symbolic link",
        "symlink entries are not supported",
    ),
    (
        "symlink2.torrent",
        "symbolic link",
        "symlink entries are not supported",
    ),
    (
        "overlapping_symlinks.torrent",
        "symbolic link",
        "symlink entries are not supported",
    ),
    (
        "pad_file_no_path.torrent",
        "missing key `info.files[1].path`",
        "a pad file needs a path here",
    ),
    // BEP 52 v2-only torrents: this client speaks v1 (hybrids work).
    (
        "v2_incomplete_piece_layer.torrent",
        "v2-only torrent",
        "v2 only",
    ),
    ("v2_invalid_root_hash.torrent", "v2-only torrent", "v2 only"),
    ("v2_multiple_files.torrent", "v2-only torrent", "v2 only"),
    ("v2_no_piece_layers.torrent", "v2-only torrent", "v2 only"),
    ("v2_only.torrent", "v2-only torrent", "v2 only"),
    ("v2_symlinks.torrent", "v2-only torrent", "v2 only"),
];

#[test]
fn libtorrents_test_torrents_get_libtorrents_verdict_or_a_stated_one() {
    let files = corpus();
    assert_eq!(files.len(), 99, "the corpus is libtorrent 2.0.8's 99 files");
    let lt = libtorrent_verdicts(&files);
    let stated: HashMap<&str, (&str, &str)> = STATED
        .iter()
        .map(|&(f, ours, why)| (f, (ours, why)))
        .collect();
    let mut wrong = Vec::new();
    let (mut agreed, mut rejected) = (0, 0);
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(path).unwrap();
        let ours = std::panic::catch_unwind(|| Metainfo::from_bytes(&bytes))
            .unwrap_or_else(|_| panic!("{name}: the parser panicked"));
        let theirs = &lt[&name];
        let lt_ok = theirs["ok"].as_bool().unwrap();
        match (stated.get(name.as_str()), &ours, lt_ok) {
            (Some(("", why)), Ok(_), false) => {
                eprintln!("{name}: accepted, libtorrent rejects ({why})");
            }
            (Some((fragment, why)), Err(e), _) if !fragment.is_empty() => {
                let msg = e.to_string();
                if msg.contains(fragment) {
                    eprintln!("{name}: rejected ({msg}); libtorrent accepts: {why}");
                } else {
                    wrong.push(format!("{name}: error {msg:?} lacks {fragment:?}"));
                }
            }
            (Some(_), _, _) => wrong.push(format!(
                "{name}: a stated difference no longer holds: ours {:?}, libtorrent {theirs}",
                ours.as_ref().map(|m| m.info_hash.to_hex())
            )),
            (None, Ok(m), true) => {
                let read = serde_json::json!({
                    "total_size": m.info.total_length,
                    "num_pieces": m.info.piece_count(),
                    "piece_length": m.info.piece_length,
                    "num_files": m.info.files.len(),
                    "info_hash": m.info_hash.to_hex(),
                });
                let same = [
                    "total_size",
                    "num_pieces",
                    "piece_length",
                    "num_files",
                    "info_hash",
                ]
                .iter()
                .all(|k| read[k] == theirs[k]);
                if same {
                    agreed += 1;
                } else {
                    wrong.push(format!("{name}: we read {read}, libtorrent {theirs}"));
                }
            }
            (None, Err(e), false) => {
                // A clear error: it names what is wrong, not just "invalid".
                let msg = e.to_string();
                if msg.len() < 12 {
                    wrong.push(format!("{name}: unclear error {msg:?}"));
                }
                rejected += 1;
            }
            (None, Ok(_), false) => wrong.push(format!(
                "{name}: we accept, libtorrent rejects: {}",
                theirs["error"]
            )),
            (None, Err(e), true) => {
                wrong.push(format!("{name}: we reject ({e}), libtorrent accepts"))
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // 99 = read alike + rejected by both + the stated differences.
    assert_eq!(agreed + rejected + STATED.len(), files.len());
    assert_eq!(
        rejected, 36,
        "libtorrent's 38 malformed files, less the 2 stated"
    );
}

//! `actorrent info` against torrents made by other tools: mktorrent,
//! transmission-create and libtorrent must agree with us on the info-hash,
//! and malformed input must exit 2 with one clear line on stderr.
//!
//! These tests need the tools that `scripts/test.sh` installs; a missing tool
//! is a test failure, not a skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::payload::payload;

fn actorrent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_actorrent"))
        .args(args)
        .output()
        .expect("run actorrent")
}

fn info_json(torrent: &Path) -> Value {
    let out = actorrent(&["info", "--json", torrent.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "actorrent info failed on {}: {}",
        torrent.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --json prints one JSON object")
}

fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} ({e}); scripts/test.sh installs the interop tools")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A multi-file tree: a file spanning pieces, an empty file, a nested one.
fn make_tree(root: &Path) -> PathBuf {
    let dir = root.join("payload");
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("a.bin"), payload(300_000, 1)).unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    std::fs::write(dir.join("sub/b.bin"), payload(70_001, 2)).unwrap();
    std::fs::write(dir.join("sub/deeper/c.txt"), payload(5, 3)).unwrap();
    dir
}

/// The info-hash as libtorrent computes it.
fn libtorrent_hash(torrent: &Path) -> String {
    run_tool(Command::new("/usr/bin/python3").args([
        "-c",
        "import sys, libtorrent as lt; print(str(lt.torrent_info(sys.argv[1]).info_hash()))",
        torrent.to_str().unwrap(),
    ]))
    .trim()
    .to_string()
}

/// The info-hash as transmission-show reports it ("  Hash: <hex>").
fn transmission_hash(torrent: &Path) -> String {
    let text = run_tool(Command::new("transmission-show").arg(torrent));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Hash: "))
        .unwrap_or_else(|| panic!("no Hash line in transmission-show output:\n{text}"))
        .trim()
        .to_lowercase()
}

#[test]
fn mktorrent_multi_file_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_tree(tmp.path());
    let torrent = tmp.path().join("mk.torrent");
    run_tool(Command::new("mktorrent").args([
        "-l",
        "15", // 32 KiB pieces: a.bin spans many, the last piece is short
        "-a",
        "http://tracker.example/announce,http://backup.example/announce",
        "-a",
        "udp://tier2.example:6969/announce",
        "-o",
        torrent.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]));
    let v = info_json(&torrent);
    assert_eq!(v["info_hash"], transmission_hash(&torrent));
    assert_eq!(v["info_hash"], libtorrent_hash(&torrent));
    assert_eq!(v["name"], "payload");
    assert_eq!(v["piece_length"], 32768);
    let total: u64 = 300_000 + 70_001 + 5;
    assert_eq!(v["total_length"], total);
    assert_eq!(v["pieces"], total.div_ceil(32768));
    let mut files: Vec<(String, u64)> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let p: Vec<&str> = f["path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            (p.join("/"), f["length"].as_u64().unwrap())
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            ("a.bin".to_string(), 300_000),
            ("empty.txt".to_string(), 0),
            ("sub/b.bin".to_string(), 70_001),
            ("sub/deeper/c.txt".to_string(), 5),
        ]
    );
    assert_eq!(
        v["trackers"],
        serde_json::json!([
            [
                "http://tracker.example/announce",
                "http://backup.example/announce"
            ],
            ["udp://tier2.example:6969/announce"]
        ])
    );
}

#[test]
fn transmission_create_single_file_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("single.img");
    std::fs::write(&file, payload(1_000_003, 4)).unwrap();
    let torrent = tmp.path().join("tr.torrent");
    run_tool(Command::new("transmission-create").args([
        "-o",
        torrent.to_str().unwrap(),
        "-t",
        "http://tracker.example/announce",
        file.to_str().unwrap(),
    ]));
    let v = info_json(&torrent);
    assert_eq!(v["info_hash"], transmission_hash(&torrent));
    assert_eq!(v["info_hash"], libtorrent_hash(&torrent));
    assert_eq!(v["name"], "single.img");
    assert_eq!(v["total_length"], 1_000_003);
    assert_eq!(
        v["files"],
        serde_json::json!([{ "index": 0, "path": ["single.img"], "length": 1_000_003 }])
    );
    assert_eq!(
        v["trackers"],
        serde_json::json!([["http://tracker.example/announce"]])
    );
}

#[test]
fn libtorrent_created_private_torrent_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_tree(tmp.path());
    let torrent = tmp.path().join("lt.torrent");
    // libtorrent 2.0 writes hybrid v1+v2 torrents by default; v1_only keeps
    // this a BEP 3 torrent, which is what actorrent speaks.
    let script = r#"
import sys, libtorrent as lt
fs = lt.file_storage()
lt.add_files(fs, sys.argv[1])
t = lt.create_torrent(fs, 65536, flags=lt.create_torrent.v1_only)
t.add_tracker("http://a.example/announce", 0)
t.add_tracker("http://b.example/announce", 1)
t.add_url_seed("http://seed.example/files/")
t.set_priv(True)
lt.set_piece_hashes(t, sys.argv[2])
open(sys.argv[3], "wb").write(lt.bencode(t.generate()))
"#;
    run_tool(Command::new("/usr/bin/python3").args([
        "-c",
        script,
        dir.to_str().unwrap(),
        tmp.path().to_str().unwrap(),
        torrent.to_str().unwrap(),
    ]));
    let v = info_json(&torrent);
    assert_eq!(v["info_hash"], libtorrent_hash(&torrent));
    assert_eq!(v["info_hash"], transmission_hash(&torrent));
    assert_eq!(v["private"], true);
    assert_eq!(v["piece_length"], 65536);
    assert_eq!(
        v["trackers"],
        serde_json::json!([["http://a.example/announce"], ["http://b.example/announce"]])
    );
    assert_eq!(
        v["url_list"],
        serde_json::json!(["http://seed.example/files/"])
    );
}

#[test]
fn magnet_prints_known_fields_and_nulls() {
    let out = actorrent(&[
        "info",
        "--json",
        "magnet:?xt=urn:btih:C12FE1C06BBA254A9DC9F519B335AA7C1367A88A&dn=Some+Name&tr=udp%3A%2F%2Ft.example%3A80",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info_hash"], "c12fe1c06bba254a9dc9f519b335aa7c1367a88a");
    assert_eq!(v["name"], "Some Name");
    assert_eq!(v["trackers"], serde_json::json!([["udp://t.example:80"]]));
    for unknown in ["piece_length", "pieces", "total_length", "files"] {
        assert!(
            v[unknown].is_null(),
            "{unknown} should be null for a magnet"
        );
    }
}

#[test]
fn text_output_names_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_tree(tmp.path());
    let torrent = tmp.path().join("mk.torrent");
    run_tool(Command::new("mktorrent").args([
        "-a",
        "http://tracker.example/announce",
        "-o",
        torrent.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]));
    let out = actorrent(&["info", torrent.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "payload",
        "sub/deeper/c.txt",
        "tier 0: http://tracker.example/announce",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// Every malformed input exits 2 with exactly one line on stderr, and never
/// a panic.
#[test]
fn malformed_inputs_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let pieces20 = "x".repeat(20);
    let cases: Vec<(String, &str)> = vec![
        (tmp.path().join("missing.torrent").to_str().unwrap().into(), "No such file"),
        (tmp.path().to_str().unwrap().into(), "not a regular file"),
        (write("empty.torrent", b""), ""),
        (write("garbage.torrent", b"this is not bencode"), ""),
        (write("truncated.torrent", b"d8:announce3:abc4:infod6:lengthi5e"), ""),
        (write("leading_zero.torrent", b"d4:infod6:lengthi05eee"), ""),
        (
            write(
                "traversal.torrent",
                format!(
                    "d4:infod5:filesld6:lengthi1e4:pathl2:..6:passwdeee4:name1:x12:piece lengthi16384e6:pieces20:{pieces20}ee"
                )
                .as_bytes(),
            ),
            "..",
        ),
        (
            write(
                "piece_mismatch.torrent",
                format!(
                    "d4:infod6:lengthi40000e4:name1:x12:piece lengthi16384e6:pieces20:{pieces20}ee"
                )
                .as_bytes(),
            ),
            "",
        ),
        ("magnet:?dn=no-hash".into(), "magnet"),
        ("magnet:?xt=urn:btih:1234".into(), "magnet"),
        ("magnet:?xt=urn:btih:ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ".into(), "magnet"),
    ];
    for (arg, needle) in cases {
        for json in [false, true] {
            let mut args = vec!["info", arg.as_str()];
            if json {
                args.push("--json");
            }
            let out = actorrent(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{arg}: stderr {stderr}");
            assert!(out.stdout.is_empty(), "{arg}: printed to stdout");
            assert_eq!(stderr.lines().count(), 1, "{arg}: stderr {stderr:?}");
            assert!(!stderr.contains("panicked"), "{arg}: {stderr}");
            assert!(
                stderr.contains(needle),
                "{arg}: {stderr:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn help_works_on_every_command() {
    for args in [vec!["--help"], vec!["info", "--help"]] {
        let out = actorrent(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

//! `actorrent create` against the tools everyone else uses: libtorrent and
//! transmission-show must load what we write, report the same info-hash and
//! file list, and libtorrent's own recheck must find every piece hash right.
//! Raw images: the torrent lists exactly the non-zero extents, the storage
//! crate's raw writer rebuilds the image from it byte for byte, and so does
//! the real `seed --raw-target` / `download --raw-target` pair over loopback.
//!
//! These tests need the tools that `scripts/test.sh` installs; a missing tool
//! is a test failure, not a skip.

mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use protocol::metainfo::Metainfo;
use serde_json::Value;
use storage::{DiskIo, DiskIoConfig, Storage, StorageConfig, VerifiedPiece};
use support::payload::payload;

const MIB: u64 = 1024 * 1024;

fn actorrent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_actorrent"))
        .args(args)
        .output()
        .expect("run actorrent")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `actorrent create ARGS`, asserting success.
fn create(args: &[&str]) -> Output {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let out = actorrent(&all);
    assert!(
        out.status.success(),
        "create {args:?} failed: {}",
        stderr(&out)
    );
    out
}

/// Runs `actorrent create ARGS`, asserting exit status 2 and returning stderr.
fn create_fails(args: &[&str]) -> String {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let out = actorrent(&all);
    assert_eq!(
        out.status.code(),
        Some(2),
        "create {args:?} should exit 2; stderr: {}",
        stderr(&out)
    );
    stderr(&out)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn info_json(torrent: &Path) -> Value {
    let out = actorrent(&["info", "--json", s(torrent)]);
    assert!(out.status.success(), "info failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("info --json prints one JSON object")
}

/// File paths as `info --json` lists them, joined with `/`, prefixed with
/// the torrent name for a multi-file torrent (as libtorrent shows them).
fn our_files(v: &Value, multi: bool) -> Vec<(String, u64)> {
    v["files"]
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
            let p = p.join("/");
            let p = if multi {
                format!("{}/{p}", v["name"].as_str().unwrap())
            } else {
                p
            };
            (p, f["length"].as_u64().unwrap())
        })
        .collect()
}

fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} ({e}); scripts/test.sh installs the interop tools")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What libtorrent reads from a torrent file, as JSON.
const LT_INFO: &str = r#"
import sys, json, libtorrent as lt
ti = lt.torrent_info(sys.argv[1])
fs = ti.files()
print(json.dumps({
    "info_hash": str(ti.info_hash()),
    "files": [[fs.file_path(i), fs.file_size(i)] for i in range(fs.num_files())],
    "piece_length": ti.piece_length(),
    "num_pieces": ti.num_pieces(),
    "private": ti.priv(),
    "trackers": [[t.url, t.tier] for t in ti.trackers()],
    "comment": ti.comment(),
}))
"#;

fn libtorrent_info(torrent: &Path) -> Value {
    let text = run_tool(Command::new("/usr/bin/python3").args(["-c", LT_INFO, s(torrent)]));
    serde_json::from_str(&text).expect("libtorrent script prints JSON")
}

/// libtorrent checks the data under `save_path` against the torrent
/// (a force_recheck after the check on adding, at most 60 s in all) and
/// prints how many pieces it found good. The session listens on loopback
/// only and has DHT, LSD, UPnP and NAT-PMP off.
const LT_RECHECK: &str = r#"
import sys, time, json, libtorrent as lt
ses = lt.session({
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False, "enable_lsd": False,
    "enable_upnp": False, "enable_natpmp": False,
    "alert_mask": lt.alert.category_t.status_notification
        | lt.alert.category_t.error_notification,
})
p = lt.add_torrent_params()
p.ti = lt.torrent_info(sys.argv[1])
p.save_path = sys.argv[2]
# Not paused: a paused torrent never finishes its check.
p.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
h = ses.add_torrent(p)
# Adding checks the files once; force_recheck then checks them again, and
# only the status after the second torrent_checked_alert is read, so an
# early alert from the first pass cannot be mistaken for the result.
deadline = time.time() + 60
checks = 0
while time.time() < deadline and checks < 2:
    ses.wait_for_alert(500)
    for a in ses.pop_alerts():
        if isinstance(a, lt.torrent_checked_alert):
            checks += 1
            if checks == 1:
                h.force_recheck()
        elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
            sys.exit("libtorrent error: " + a.message())
if checks < 2:
    sys.exit("libtorrent did not finish checking within 60 s")
st = h.status()
print(json.dumps({"have": st.num_pieces, "total": p.ti.num_pieces(),
                  "seeding": st.is_seeding}))
"#;

/// (pieces libtorrent found good, pieces in the torrent, seeding?).
fn libtorrent_recheck(torrent: &Path, save_path: &Path) -> (u64, u64, bool) {
    let text = run_tool(Command::new("/usr/bin/python3").args([
        "-c",
        LT_RECHECK,
        s(torrent),
        s(save_path),
    ]));
    let v: Value = serde_json::from_str(&text).expect("recheck script prints JSON");
    (
        v["have"].as_u64().unwrap(),
        v["total"].as_u64().unwrap(),
        v["seeding"].as_bool().unwrap(),
    )
}

/// transmission-show's info-hash and file paths (sorted: it may reorder).
fn transmission(torrent: &Path) -> (String, Vec<String>, String) {
    let text = run_tool(Command::new("transmission-show").arg(torrent));
    let hash = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Hash: "))
        .unwrap_or_else(|| panic!("no Hash line in transmission-show output:\n{text}"))
        .trim()
        .to_lowercase();
    let files_at = text.find("\nFILES").expect("FILES section");
    let mut files: Vec<String> = text[files_at + 6..]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            // "path (size)"
            l.rsplit_once(" (").map_or(l, |(p, _)| p).to_string()
        })
        .collect();
    files.sort();
    (hash, files, text)
}

/// Checks that libtorrent and transmission-show agree with `info --json`
/// on the info-hash and the file list; returns our JSON.
fn assert_tools_agree(torrent: &Path) -> Value {
    let v = info_json(torrent);
    let lt = libtorrent_info(torrent);
    assert_eq!(v["info_hash"], lt["info_hash"], "libtorrent info-hash");
    let multi = v["files"].as_array().unwrap().len() > 1
        || lt["files"][0][0].as_str().unwrap().contains('/');
    let ours = our_files(&v, multi);
    let theirs: Vec<(String, u64)> = lt["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f[0].as_str().unwrap().to_string(), f[1].as_u64().unwrap()))
        .collect();
    assert_eq!(ours, theirs, "libtorrent file list, in order");
    assert_eq!(v["piece_length"], lt["piece_length"]);
    assert_eq!(v["pieces"], lt["num_pieces"]);
    let (hash, files, _) = transmission(torrent);
    assert_eq!(v["info_hash"], hash, "transmission-show info-hash");
    let mut ours_sorted: Vec<String> = ours.into_iter().map(|f| f.0).collect();
    ours_sorted.sort();
    assert_eq!(ours_sorted, files, "transmission-show file list");
    v
}

fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

#[test]
fn single_file_is_accepted_and_hashed_right() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("movie.bin");
    std::fs::write(&data, payload(300_001, 1)).unwrap();
    let torrent = tmp.path().join("movie.torrent");
    let out = create(&[s(&data), "--output", s(&torrent), "--piece-size", "16K"]);
    let text = String::from_utf8_lossy(&out.stdout);

    let v = assert_tools_agree(&torrent);
    assert!(text.contains(v["info_hash"].as_str().unwrap()), "{text}");
    assert_eq!(v["name"], "movie.bin");
    assert_eq!(v["piece_length"], 16384);
    assert_eq!(v["total_length"], 300_001);
    assert_eq!(v["pieces"], 300_001u64.div_ceil(16384));
    assert_eq!(v["private"], false);
    assert_eq!(
        v["created_by"],
        concat!("actorrent ", env!("CARGO_PKG_VERSION"))
    );

    let (have, total, seeding) = libtorrent_recheck(&torrent, tmp.path());
    assert_eq!((have, total, seeding), (total, 19, true));

    // The check is not vacuous: one flipped byte costs exactly one piece.
    flip_byte(&data, 200_000);
    let (have, total, seeding) = libtorrent_recheck(&torrent, tmp.path());
    assert_eq!((have, seeding), (total - 1, false));
}

/// A tree whose sorted order is not the order a directory listing gives:
/// upper case before lower case, `sub/...` before `sub.txt`, a zero-length
/// file, nested directories, an empty directory.
fn make_tree(root: &Path) -> PathBuf {
    let dir = root.join("payload");
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(dir.join("emptydir")).unwrap();
    std::fs::write(dir.join("b.bin"), payload(300_000, 1)).unwrap();
    std::fs::write(dir.join("A.bin"), payload(40_000, 2)).unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    std::fs::write(dir.join("sub.txt"), payload(17, 3)).unwrap();
    std::fs::write(dir.join("sub/x"), payload(70_001, 4)).unwrap();
    std::fs::write(dir.join("sub/deeper/c.txt"), payload(5, 5)).unwrap();
    dir
}

#[test]
fn directory_tree_in_sorted_order_with_empty_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_tree(tmp.path());
    let torrent = tmp.path().join("tree.torrent");
    let out = create(&[s(&dir), "-o", s(&torrent), "--piece-size", "32768"]);
    assert!(
        stderr(&out).contains("emptydir") && stderr(&out).contains("empty directory"),
        "an empty directory is reported, not skipped silently: {}",
        stderr(&out)
    );

    let v = assert_tools_agree(&torrent);
    assert_eq!(v["name"], "payload");
    let files: Vec<(String, u64)> = our_files(&v, true);
    let expect: Vec<(String, u64)> = [
        ("A.bin", 40_000),
        ("b.bin", 300_000),
        ("empty.txt", 0),
        ("sub/deeper/c.txt", 5),
        ("sub/x", 70_001),
        ("sub.txt", 17),
    ]
    .iter()
    .map(|(p, l)| (format!("payload/{p}"), *l))
    .collect();
    assert_eq!(files, expect);

    let (have, total, seeding) = libtorrent_recheck(&torrent, tmp.path());
    assert_eq!((have, seeding), (total, true));

    // Deterministic: the same tree gives the same info-hash.
    let again = tmp.path().join("again.torrent");
    create(&[s(&dir), "-o", s(&again), "--piece-size", "32768"]);
    assert_eq!(info_json(&again)["info_hash"], v["info_hash"]);

    // A flipped byte in a file that shares its piece with others is caught.
    flip_byte(&dir.join("sub/deeper/c.txt"), 2);
    let (have, total, _) = libtorrent_recheck(&torrent, tmp.path());
    assert_eq!(have, total - 1);
}

#[test]
fn piece_size_auto_and_explicit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("big.img");
    // 40 MiB, mostly a hole so the test stays cheap, with data in places.
    let f = File::create(&data).unwrap();
    f.set_len(40 * MIB).unwrap();
    for i in 0..8u64 {
        f.write_all_at(&payload(100_000, i), i * 5 * MIB + 12_345)
            .unwrap();
    }
    drop(f);

    let auto = tmp.path().join("auto.torrent");
    create(&[s(&data), "-o", s(&auto)]);
    let v = assert_tools_agree(&auto);
    // 40 MiB: 16 KiB would be 2560 pieces, so auto doubles to 32 KiB.
    assert_eq!(v["piece_length"], 32 * 1024);
    assert_eq!(v["pieces"], 1280);

    let explicit = tmp.path().join("1m.torrent");
    create(&[s(&data), "-o", s(&explicit), "--piece-size", "1M"]);
    let v1 = assert_tools_agree(&explicit);
    assert_eq!(v1["piece_length"], MIB);
    assert_eq!(v1["pieces"], 40);
    assert_ne!(v1["info_hash"], v["info_hash"]);
    let (have, total, seeding) = libtorrent_recheck(&explicit, tmp.path());
    assert_eq!((have, total, seeding), (40, 40, true));

    let small = tmp.path().join("small.bin");
    std::fs::write(&small, payload(1000, 9)).unwrap();
    let small_t = tmp.path().join("small.torrent");
    create(&[s(&small), "-o", s(&small_t), "--piece-size", "auto"]);
    let vs = info_json(&small_t);
    assert_eq!(
        (vs["piece_length"].as_u64(), vs["pieces"].as_u64()),
        (Some(16384), Some(1))
    );
}

#[test]
fn bad_piece_sizes_exit_2_naming_the_value() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("f");
    std::fs::write(&data, b"some bytes").unwrap();
    let torrent = tmp.path().join("f.torrent");
    for bad in ["1000", "12K", "8192", "128M", "0", "abc", "-16384", "1.5M"] {
        let arg = format!("--piece-size={bad}");
        let err = create_fails(&[s(&data), "-o", s(&torrent), &arg]);
        assert!(err.contains(bad), "stderr names {bad:?}: {err}");
        assert!(!torrent.exists(), "no torrent written for {bad:?}");
    }
    // Too many pieces is refused before any hashing (the file is a hole).
    let huge = tmp.path().join("huge");
    File::create(&huge).unwrap().set_len(40 << 30).unwrap();
    let err = create_fails(&[s(&huge), "-o", s(&torrent), "--piece-size", "16K"]);
    assert!(err.contains("larger --piece-size"), "{err}");
    assert!(!torrent.exists());

    let err = create_fails(&[s(&data), "-o", s(&torrent), "--hash-workers", "100000"]);
    assert!(err.contains("100000"), "{err}");

    let err = create_fails(&[s(&data), "-o", s(&torrent), "--tracker", "ftp://x/announce"]);
    assert!(err.contains("ftp://x/announce"), "{err}");
}

#[test]
fn private_trackers_and_comment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_tree(tmp.path());
    let torrent = tmp.path().join("p.torrent");
    let trackers = [
        "http://tracker.example/announce",
        "udp://tracker2.example:6969/announce",
        "https://tracker3.example/a?x=1",
    ];
    let comment = "made by a test, ünïcode ✓";
    create(&[
        s(&dir),
        "-o",
        s(&torrent),
        "--private",
        "--tracker",
        trackers[0],
        "--tracker",
        trackers[1],
        "--tracker",
        trackers[2],
        "--comment",
        comment,
    ]);
    let v = assert_tools_agree(&torrent);
    assert_eq!(v["private"], true);
    assert_eq!(v["comment"], comment);
    let tiers: Vec<Vec<String>> = trackers.iter().map(|t| vec![t.to_string()]).collect();
    assert_eq!(v["trackers"], serde_json::json!(tiers));

    let lt = libtorrent_info(&torrent);
    assert_eq!(lt["private"], true);
    assert_eq!(lt["comment"], comment);
    assert_eq!(
        lt["trackers"],
        serde_json::json!([[trackers[0], 0], [trackers[1], 1], [trackers[2], 2]])
    );

    let (_, _, text) = transmission(&torrent);
    assert!(text.contains("Private torrent"), "{text}");
    assert!(text.contains(comment), "{text}");
    for t in trackers {
        assert!(text.contains(t), "{t} in {text}");
    }

    // Not private: no `private` key, so a different info-hash.
    let public = tmp.path().join("pub.torrent");
    create(&[s(&dir), "-o", s(&public)]);
    let vp = info_json(&public);
    assert_eq!(vp["private"], false);
    assert_eq!(vp["trackers"], serde_json::json!([]));
    assert_ne!(vp["info_hash"], v["info_hash"]);
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("f");
    std::fs::write(&data, payload(50_000, 3)).unwrap();
    let torrent = tmp.path().join("f.torrent");
    create(&[s(&data), "-o", s(&torrent)]);
    let before = std::fs::read(&torrent).unwrap();
    let err = create_fails(&[s(&data), "-o", s(&torrent), "--comment", "second"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&torrent).unwrap(), before);
    create(&[
        s(&data),
        "-o",
        s(&torrent),
        "--comment",
        "second",
        "--force",
    ]);
    assert_eq!(info_json(&torrent)["comment"], "second");
}

#[test]
fn refuses_empty_payloads() {
    let tmp = tempfile::tempdir().unwrap();
    let torrent = tmp.path().join("e.torrent");
    let empty_file = tmp.path().join("empty");
    std::fs::write(&empty_file, b"").unwrap();
    let err = create_fails(&[s(&empty_file), "-o", s(&torrent)]);
    assert!(err.contains("empty"), "{err}");

    let only_empty = tmp.path().join("only-empty");
    std::fs::create_dir_all(only_empty.join("d")).unwrap();
    std::fs::write(only_empty.join("a"), b"").unwrap();
    std::fs::write(only_empty.join("d/b"), b"").unwrap();
    let err = create_fails(&[s(&only_empty), "-o", s(&torrent)]);
    assert!(err.contains("nothing to share"), "{err}");

    let empty_dir = tmp.path().join("empty-dir");
    std::fs::create_dir(&empty_dir).unwrap();
    let err = create_fails(&[s(&empty_dir), "-o", s(&torrent)]);
    assert!(err.contains("nothing to share"), "{err}");

    let err = create_fails(&[s(&tmp.path().join("missing")), "-o", s(&torrent)]);
    assert!(err.contains("missing"), "{err}");
    assert!(!torrent.exists());
}

#[test]
fn symlinks_inside_are_refused_but_a_named_link_is_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("real"), payload(1000, 1)).unwrap();
    std::os::unix::fs::symlink("real", dir.join("link")).unwrap();
    let torrent = tmp.path().join("d.torrent");
    let err = create_fails(&[s(&dir), "-o", s(&torrent)]);
    assert!(
        err.contains("link") && err.contains("symbolic link"),
        "{err}"
    );

    let named = tmp.path().join("named");
    std::os::unix::fs::symlink(dir.join("real"), &named).unwrap();
    create(&[s(&named), "-o", s(&torrent)]);
    let v = info_json(&torrent);
    assert_eq!(
        (v["name"].as_str(), v["total_length"].as_u64()),
        (Some("named"), Some(1000))
    );
}

/// An image of `size` bytes made sparse (a hole) except for `regions`.
fn sparse_image(path: &Path, size: u64, regions: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (at, bytes) in regions {
        f.write_all_at(bytes, *at).unwrap();
    }
}

fn hex(offset: u64) -> String {
    format!("0x{offset:016x}")
}

/// (name, length) of each file of a raw torrent, as `info --json` lists them.
fn raw_files(v: &Value) -> Vec<(String, u64)> {
    our_files(v, false)
}

#[test]
fn raw_image_lists_exactly_the_nonzero_extents() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("disk.img");
    let size = 20 * MIB + 123;
    sparse_image(
        &image,
        size,
        &[
            // One byte in granule 1.
            (MIB + 5, vec![7]),
            // 2.5 MiB of data from 4 MiB: granules 4, 5 and 6, merged.
            (4 * MIB, payload((2 * MIB + MIB / 2) as usize, 1)),
            // Zeros actually written (not a hole): still left out.
            (10 * MIB, vec![0; 2 * MIB as usize]),
            // The last, short granule.
            (20 * MIB + 100, vec![1, 2, 3]),
        ],
    );
    let torrent = tmp.path().join("disk.torrent");
    let out = create(&["--raw", s(&image), "-o", s(&torrent), "--piece-size", "64K"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let kept = MIB + 3 * MIB + 123;
    assert!(
        text.contains(&format!("left out:     {} zero bytes", size - kept)),
        "{text}"
    );

    let v = assert_tools_agree(&torrent);
    assert_eq!(v["name"], "disk.img");
    assert_eq!(
        raw_files(&v),
        vec![
            (hex(MIB), MIB),
            (hex(4 * MIB), 3 * MIB),
            (hex(20 * MIB), 123)
        ]
    );
    assert_eq!(v["total_length"], kept);

    // libtorrent checks our hashes against the extents as separate files.
    let extents = tmp.path().join("extents");
    let named = extents.join("disk.img");
    std::fs::create_dir_all(&named).unwrap();
    let img = std::fs::read(&image).unwrap();
    for (name, len) in raw_files(&v) {
        let at = u64::from_str_radix(&name[2..], 16).unwrap() as usize;
        std::fs::write(named.join(&name), &img[at..at + len as usize]).unwrap();
    }
    let (have, total, seeding) = libtorrent_recheck(&torrent, &extents);
    assert_eq!((have, seeding), (total, true));

    // The downloader's raw storage accepts it and rebuilds the image.
    let rebuilt = tmp.path().join("rebuilt.img");
    File::create(&rebuilt).unwrap().set_len(size).unwrap();
    let meta = Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap();
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_info_raw(&io, &meta.info, &rebuilt, &StorageConfig::default())
        .expect("the raw layout accepts the torrent");
    let space: Vec<u8> = raw_files(&v)
        .iter()
        .flat_map(|(name, len)| {
            let at = u64::from_str_radix(&name[2..], 16).unwrap() as usize;
            img[at..at + *len as usize].to_vec()
        })
        .collect();
    let space = Bytes::from(space);
    let plen = meta.info.piece_length as usize;
    for p in 0..meta.info.piece_count() {
        let start = p as usize * plen;
        let block = space.slice(start..(start + plen).min(space.len()));
        let piece = VerifiedPiece::verify(p, vec![block], meta.info.piece_hash(p).unwrap())
            .unwrap_or_else(|_| panic!("piece {p} hash"));
        st.write_blocking(piece).unwrap();
    }
    st.sync_blocking().unwrap();
    drop(st);
    assert!(
        std::fs::read(&rebuilt).unwrap() == img,
        "rebuilt image differs"
    );
}

/// A child process killed (and reaped) when the test ends, pass or fail.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The disk-cloning workflow end to end: `create --raw` on a sparse image,
/// `seed --raw-target` from it, `download --raw-target` into a fresh image
/// of the same size; the copy equals the original byte for byte, holes
/// included.
#[test]
fn raw_image_round_trips_through_seed_and_download() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("src.img");
    let size = 12 * MIB + 4321;
    sparse_image(
        &image,
        size,
        &[
            (7, payload(1000, 1)),
            (3 * MIB, payload((MIB + 77) as usize, 2)),
            (9 * MIB, vec![0; MIB as usize]),
            (12 * MIB + 4000, payload(321, 3)),
        ],
    );
    let torrent = tmp.path().join("src.torrent");
    create(&["--raw", s(&image), "-o", s(&torrent), "--piece-size", "32K"]);
    let v = info_json(&torrent);
    assert_eq!(
        raw_files(&v),
        vec![
            (hex(0), MIB),
            (hex(3 * MIB), 2 * MIB),
            (hex(12 * MIB), 4321)
        ]
    );

    let port = free_port();
    let seed_log = tmp.path().join("seed.stderr");
    let _seed = Reaped(
        Command::new(env!("CARGO_BIN_EXE_actorrent"))
            .args(["seed", s(&torrent), "--raw-target", s(&image), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(File::create(&seed_log).unwrap())
            .spawn()
            .expect("run actorrent seed"),
    );

    let copy = tmp.path().join("copy.img");
    File::create(&copy).unwrap().set_len(size).unwrap();
    let mut download = Reaped(
        Command::new(env!("CARGO_BIN_EXE_actorrent"))
            .args(["download", s(&torrent), "--raw-target", s(&copy), "--peer"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run actorrent download"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = download.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "download did not finish within 120 s; seed stderr:\n{}",
            std::fs::read_to_string(&seed_log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = download.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.success(),
        "download failed: {err}\nseed stderr:\n{}",
        std::fs::read_to_string(&seed_log).unwrap_or_default()
    );
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), size);
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(&image).unwrap(),
        "the copy differs from the source image"
    );
}

#[test]
fn raw_granularity_is_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("g.img");
    sparse_image(
        &image,
        8 * MIB,
        &[(MIB + 5, vec![7]), (3 * MIB + 70_000, vec![1; 100_000])],
    );
    let torrent = tmp.path().join("g.torrent");
    create(&[
        "--raw",
        s(&image),
        "-o",
        s(&torrent),
        "--granularity",
        "64K",
    ]);
    let v = assert_tools_agree(&torrent);
    let k64 = 64 * 1024;
    // 3 MiB + 70_000 .. + 170_000 touches 64 KiB granules 1 and 2 past 3 MiB.
    assert_eq!(
        raw_files(&v),
        vec![(hex(MIB), k64), (hex(3 * MIB + k64), 2 * k64)]
    );

    for bad in ["1000", "2K", "128M", "x"] {
        let err = create_fails(&[
            "--raw",
            s(&image),
            "-o",
            s(&torrent),
            "--force",
            "--granularity",
            bad,
        ]);
        assert!(err.contains(bad), "stderr names {bad:?}: {err}");
    }
    // --granularity only means something with --raw.
    create_fails(&[
        s(&image),
        "-o",
        s(&torrent),
        "--force",
        "--granularity",
        "64K",
    ]);
}

#[test]
fn raw_all_zero_image_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("zero.img");
    sparse_image(&image, 6 * MIB, &[(2 * MIB, vec![0; 4096])]);
    let torrent = tmp.path().join("zero.torrent");
    let err = create_fails(&["--raw", s(&image), "-o", s(&torrent)]);
    assert!(err.contains("nothing to transfer"), "{err}");
    assert!(!torrent.exists());

    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let err = create_fails(&["--raw", s(&dir), "-o", s(&torrent)]);
    assert!(err.contains("--raw needs"), "{err}");
}

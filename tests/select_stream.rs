//! Choosing what to download, and streaming while it downloads, through the
//! real binary: `--only` against a libtorrent seed (the part file, a wider
//! second run), priorities against a scripted seed that logs request order,
//! `--stream` read from the middle and from the start while a rate-limited
//! seed serves, `ffprobe` reading a generated video over the stream URL,
//! and the bad inputs of `--only`, `--skip` and the Range header.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use storage::Layout;
use support::client::{Client, DOWNLOAD_TIMEOUT};
use support::lt::LtPeer;
use support::process::Actorrent;
use support::scripted::{Script, Seed};
use support::torrent::TestTorrent;

const PIECE: u32 = 32 * 1024;

/// Five files whose boundaries fall inside pieces.
fn five_files(dir: &Path) -> TestTorrent {
    TestTorrent::multi(
        dir,
        "five",
        PIECE,
        &[
            ("a.bin", 100_000),
            ("b.bin", 150_001),
            ("sub/c.bin", 90_000),
            ("d.bin", 200_003),
            ("e.nfo", 50_000),
        ],
        17,
    )
}

/// The layout the client uses, for piece arithmetic in assertions.
fn layout_of(t: &TestTorrent) -> Layout {
    let meta = protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&t.path).unwrap()).unwrap();
    Layout::new_files(
        storage::layout::specs_from_info(&meta.info),
        meta.info.piece_length,
    )
    .unwrap()
}

fn pieces_of(layout: &Layout, files: &[usize]) -> std::collections::BTreeSet<u32> {
    files
        .iter()
        .flat_map(|&f| layout.pieces_of_file(f))
        .collect()
}

fn file_path(t: &TestTorrent, out: &Path, i: usize) -> std::path::PathBuf {
    t.files[i]
        .0
        .iter()
        .fold(t.output_root(out), |p, c| p.join(c))
}

#[test]
fn two_of_five_files_from_libtorrent_then_a_third_without_refetching() {
    let dir = tempfile::tempdir().unwrap();
    let t = five_files(dir.path());
    let data = dir.path().join("seed");
    t.write_payload(&data);
    let (_lt, port) = LtPeer::seed(&t.path, &data);
    let peer: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let out = dir.path().join("out");
    let layout = layout_of(&t);

    let first = Client::download(&t.path, &out, &[peer], &["--only", "1,3"]).wait(DOWNLOAD_TIMEOUT);
    first.assert_success();
    let last = first.final_stats();
    let wanted = (t.files[1].1.len() + t.files[3].1.len()) as u64;
    assert_eq!(last["wanted_bytes"], wanted);
    assert_eq!(last["done_bytes"], wanted);
    assert_eq!(last["state"], "complete");
    // Exactly the two selected files exist, byte-identical.
    for i in 0..5 {
        let p = file_path(&t, &out, i);
        if i == 1 || i == 3 {
            assert_eq!(std::fs::read(&p).unwrap(), t.files[i].1, "file {i}");
        } else {
            assert!(!p.exists(), "unselected file {i} was created");
        }
    }
    assert!(
        !t.output_root(&out).join("sub").exists(),
        "a directory of unselected files"
    );
    // The boundary pieces' bytes of other files are in the part file, at
    // the slots the resume data names, and nowhere else.
    let hex: String = t.info_hash.iter().map(|b| format!("{b:02x}")).collect();
    let state = out.join(".actorrent");
    let resume = storage::resume::load(&state.join(format!("{hex}.resume")))
        .unwrap()
        .unwrap();
    let parts = std::fs::read(state.join(format!("{hex}.parts"))).unwrap();
    let wanted_pieces = pieces_of(&layout, &[1, 3]);
    let boundary: Vec<u32> = wanted_pieces
        .iter()
        .copied()
        .filter(|&p| {
            layout
                .piece_slices(p)
                .unwrap()
                .iter()
                .any(|s| s.file != 1 && s.file != 3)
        })
        .collect();
    assert_eq!(
        boundary.len(),
        4,
        "each selected file starts and ends mid-piece"
    );
    assert_eq!(
        resume.slots.iter().map(|s| s.piece).collect::<Vec<_>>(),
        boundary
    );
    for slot in &resume.slots {
        for s in layout.piece_slices(slot.piece).unwrap() {
            if s.file == 1 || s.file == 3 {
                continue;
            }
            let at = (u64::from(slot.slot) * u64::from(PIECE) + s.range_offset) as usize;
            let src = (layout.piece_offset(slot.piece) + s.range_offset) as usize;
            assert_eq!(
                &parts[at..at + s.length as usize],
                &t.payload[src..src + s.length as usize],
                "parked bytes of piece {}",
                slot.piece
            );
        }
    }

    // A wider selection later: c completes, the pieces it shares with b
    // and d come out of the part file instead of the network.
    let second =
        Client::download(&t.path, &out, &[peer], &["--only", "1-3"]).wait(DOWNLOAD_TIMEOUT);
    second.assert_success();
    let last = second.final_stats();
    assert_eq!(std::fs::read(file_path(&t, &out, 2)).unwrap(), t.files[2].1);
    assert_eq!(std::fs::read(file_path(&t, &out, 1)).unwrap(), t.files[1].1);
    let fresh: u64 = pieces_of(&layout, &[2])
        .difference(&wanted_pieces)
        .map(|&p| layout.piece_len(p).unwrap())
        .sum();
    assert_eq!(last["bytes_down"], fresh, "only c's own pieces are fetched");
    assert!(!file_path(&t, &out, 0).exists() && !file_path(&t, &out, 4).exists());
}

/// One HTTP/1.1 exchange over a plain socket: status, headers (lowercase
/// names), body, and when the first body byte arrived.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    first_byte: Option<Instant>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, range: Option<&str>) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect to the stream server");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(r) = range {
        req.push_str(&format!("Range: {r}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_lowercase(), v.trim().to_string()));
    }
    let mut body = Vec::new();
    let mut first_byte = None;
    if method != "HEAD" {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).expect("read the body");
            if n == 0 {
                break;
            }
            first_byte.get_or_insert_with(Instant::now);
            body.extend_from_slice(&buf[..n]);
        }
    }
    Answer {
        status,
        headers,
        body,
        first_byte,
    }
}

/// The stream server's address and the path of file `i`, from the first
/// stats line's `stream_urls`.
fn stream_url(client: &mut Actorrent, i: usize) -> (SocketAddr, String) {
    let first = client.wait_stats(Duration::from_secs(30), "first stats line", |_| true);
    let url = first["stream_urls"][i]
        .as_str()
        .unwrap_or_else(|| client.fail(&format!("no stream_urls in {first}")))
        .to_string();
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    (host.parse().unwrap(), path.to_string())
}

fn download_args<'a>(t: &'a TestTorrent, out: &'a Path, peer: &'a str) -> Vec<&'a std::ffi::OsStr> {
    vec![
        "download".as_ref(),
        t.path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--peer".as_ref(),
        peer.as_ref(),
    ]
}

#[test]
fn stream_from_the_middle_then_from_the_start_while_downloading() {
    const LEN: usize = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::single(dir.path(), "movie.mkv", 256 * 1024, LEN, 5);
    let data = dir.path().join("seed");
    t.write_payload(&data);
    // A seed at 8 MiB/s: the whole file takes about 8 s.
    let mut seeder = Actorrent::seed("seed", &t.path, &data, &["--upload-limit", "8388608"]);
    let port = seeder.listen_port(Duration::from_secs(60));
    let out = dir.path().join("out");
    let peer = format!("127.0.0.1:{port}");
    let mut args = download_args(&t, &out, &peer);
    args.extend([
        std::ffi::OsStr::new("--stream"),
        std::ffi::OsStr::new("127.0.0.1:0"),
    ]);
    let mut client = Actorrent::spawn("streamer", &args);
    let (addr, path) = stream_url(&mut client, 0);
    assert!(path.ends_with("/0"));

    let mid = LEN / 2;
    let middle = http(addr, "GET", &path, Some(&format!("bytes={mid}-")));
    let first = middle.first_byte.expect("a body");
    assert_eq!(middle.status, 206);
    assert_eq!(
        middle.header("content-range"),
        Some(format!("bytes {mid}-{}/{LEN}", LEN - 1).as_str())
    );
    assert_eq!(middle.header("accept-ranges"), Some("bytes"));
    assert_eq!(middle.header("content-type"), Some("video/x-matroska"));
    assert_eq!(
        middle.header("content-length"),
        Some((LEN - mid).to_string().as_str())
    );
    assert!(
        middle.body == t.payload[mid..],
        "the middle-to-end bytes differ"
    );
    // Order of events: the first stats line written after the middle's
    // first byte arrived still shows most of the file missing.
    let pieces_total = 256u64;
    let done_then = client
        .stats_with_times()
        .into_iter()
        .find(|(at, _)| *at > first)
        .map(|(_, v)| v["pieces_done"].as_u64().unwrap())
        .expect("stats lines go on while the stream is read");
    assert!(
        done_then < pieces_total / 2,
        "the middle's first byte came after {done_then} of {pieces_total} pieces"
    );

    let whole = http(addr, "GET", &path, None);
    assert_eq!(whole.status, 200);
    assert_eq!(
        whole.header("content-length"),
        Some(LEN.to_string().as_str())
    );
    assert!(whole.body == t.payload[..], "the whole-file bytes differ");
    let done = client.wait_stats(DOWNLOAD_TIMEOUT, "completion", |v| v["event"] == "complete");
    assert_eq!(done["done_bytes"], LEN as u64);
    client.interrupt();
    assert!(client.wait_exit(Duration::from_secs(30)).success());
    seeder.interrupt();
    let _ = seeder.wait_exit(Duration::from_secs(30));
}

#[test]
fn bad_ranges_and_paths_get_http_answers() {
    let dir = tempfile::tempdir().unwrap();
    let t = five_files(dir.path());
    let seed = Seed::start(&t, Script::new());
    let out = dir.path().join("out");
    let peer = seed.addr().to_string();
    let mut args = download_args(&t, &out, &peer);
    args.extend([
        std::ffi::OsStr::new("--stream"),
        std::ffi::OsStr::new("127.0.0.1:0"),
    ]);
    let mut client = Actorrent::spawn("ranges", &args);
    let (addr, path) = stream_url(&mut client, 3);
    client.wait_stats(DOWNLOAD_TIMEOUT, "completion", |v| v["event"] == "complete");
    let len = t.files[3].1.len();
    let get = |range: Option<&str>| http(addr, "GET", &path, range);
    // A single satisfiable range.
    let a = get(Some("bytes=10-19"));
    assert_eq!((a.status, &a.body[..]), (206, &t.files[3].1[10..20]));
    let a = get(Some("bytes=-5"));
    assert_eq!((a.status, &a.body[..]), (206, &t.files[3].1[len - 5..]));
    // Malformed, reversed, past the end: 416 with the length.
    for bad in [
        "bytes=20-10",
        "bytes=abc",
        "bytes=-0",
        &format!("bytes={len}-"),
        "bytes=",
    ] {
        let a = get(Some(bad));
        assert_eq!(a.status, 416, "{bad}");
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes */{len}").as_str()),
            "{bad}"
        );
        assert!(a.body.is_empty());
    }
    // Several ranges or another unit: the whole file.
    for whole in ["bytes=0-1,5-9", "items=0-4"] {
        let a = get(Some(whole));
        assert_eq!((a.status, a.body.len()), (200, len), "{whole}");
    }
    // HEAD: the headers, no body.
    let h = http(addr, "HEAD", &path, None);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some(len.to_string().as_str()));
    assert!(h.body.is_empty());
    // Paths that name no file.
    let base = path.rsplit_once('/').unwrap().0.to_string();
    for p in [
        format!("{base}/5"),
        format!("{base}/01"),
        format!("{base}/-1"),
        format!("{base}/x"),
        "/stream/0000000000000000000000000000000000000000/0".to_string(),
        "/stream/short/0".to_string(),
        "/other".to_string(),
    ] {
        assert_eq!(http(addr, "GET", &p, None).status, 404, "{p}");
    }
    // Only GET and HEAD.
    assert_eq!(http(addr, "DELETE", &path, None).status, 405);
    client.interrupt();
    assert!(client.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn ffprobe_reads_a_generated_video_over_the_stream_url() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("seed");
    std::fs::create_dir_all(&src).unwrap();
    let video = src.join("clip.mp4");
    // moov at the end (no faststart): the player has to seek with Range.
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=3:size=320x240:rate=25",
        ])
        .args(["-c:v", "mpeg4", "-q:v", "3"])
        .arg(&video)
        .status()
        .expect("run ffmpeg (scripts/test.sh installs it)");
    assert!(made.success());
    let torrent = dir.path().join("clip.torrent");
    let bin = env!("CARGO_BIN_EXE_actorrent");
    let created = Command::new(bin)
        .args(["create", "--piece-size", "16K", "--output"])
        .arg(&torrent)
        .arg(&video)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let mut seeder = Actorrent::seed("seed", &torrent, &src, &["--upload-limit", "262144"]);
    let port = seeder.listen_port(Duration::from_secs(30));
    let out = dir.path().join("out");
    let peer = format!("127.0.0.1:{port}");
    let args: Vec<&std::ffi::OsStr> = vec![
        "download".as_ref(),
        torrent.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--peer".as_ref(),
        peer.as_ref(),
        "--stream".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    let mut client = Actorrent::spawn("player", &args);
    let (addr, path) = stream_url(&mut client, 0);
    let url = format!("http://{addr}{path}");
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(&url)
        .output()
        .expect("run ffprobe (scripts/test.sh installs ffmpeg)");
    assert!(
        probe.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let v: Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(v["streams"][0]["codec_name"], "mpeg4");
    assert_eq!(v["streams"][0]["width"], 320);
    let duration: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 3.0).abs() < 0.2, "duration {duration}");
    assert_eq!(
        http(addr, "HEAD", &path, None).header("content-type"),
        Some("video/mp4")
    );
    client.interrupt();
    assert!(client.wait_exit(Duration::from_secs(30)).success());
    seeder.interrupt();
    let _ = seeder.wait_exit(Duration::from_secs(30));
}

#[test]
fn a_high_priority_file_is_fetched_before_a_low_one() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        "prio",
        PIECE,
        &[
            ("low.bin", 400_000),
            ("high.bin", 400_000),
            ("normal.bin", 100_000),
        ],
        3,
    );
    let layout = layout_of(&t);
    let script = Script {
        block_delay: Duration::from_millis(1),
        ..Script::new()
    };
    let seed = Seed::start(&t, script);
    let out = dir.path().join("out");
    let done = Client::download(
        &t.path,
        &out,
        &[seed.addr()],
        &["--low", "0", "--high", "1"],
    )
    .wait(DOWNLOAD_TIMEOUT);
    done.assert_success();
    t.assert_downloaded(&out);
    // In the seed's request log, every piece holding high bytes is asked
    // for before any piece that holds only low bytes (a piece shared by
    // both takes the higher priority).
    let high = pieces_of(&layout, &[1]);
    let low: std::collections::BTreeSet<u32> = pieces_of(&layout, &[0])
        .difference(&high)
        .copied()
        .collect();
    let logs = seed.logs();
    let requests: Vec<u32> = logs
        .iter()
        .flat_map(|l| l.requests())
        .map(|(_, b)| b.index)
        .collect();
    let first_at = |p: u32| requests.iter().position(|&r| r == p).unwrap();
    let last_high_start = high.iter().map(|&p| first_at(p)).max().unwrap();
    let first_low_start = low.iter().map(|&p| first_at(p)).min().unwrap();
    assert!(
        last_high_start < first_low_start,
        "a low piece was requested (at {first_low_start}) before the last high piece \
         (at {last_high_start})"
    );
    // And the normal file sits between them.
    let normal: Vec<u32> = pieces_of(&layout, &[2])
        .difference(&high)
        .copied()
        .collect();
    assert!(normal.iter().all(|&p| first_at(p) < first_low_start));
}

#[test]
fn selections_that_name_no_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = five_files(dir.path());
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_actorrent"))
            .env("ACTORRENT_DHT_ENABLED", "false")
            .arg("download")
            .arg(&t.path)
            .arg("--output")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for (extra, names) in [
        (&["--only", "7"][..], "7"),
        (&["--only", "1-9"][..], "9"),
        (&["--only", "3-1"][..], "reversed"),
        (&["--only", "x"][..], "x"),
        (&["--skip", "*.mkv"][..], "*.mkv"),
        (&["--skip", "[z"][..], "[z"),
        (&["--only", "4", "--skip", "*.nfo"][..], "no file"),
        (&["--only", "1", "--high", "2"][..], "skipped"),
    ] {
        let (code, err) = run(extra);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(names), "{extra:?} should name {names}: {err}");
    }
    assert!(!out.exists(), "nothing is created for bad input");
    // `info` numbers the files the way --only takes them.
    let o = Command::new(env!("CARGO_BIN_EXE_actorrent"))
        .args(["info", "--json"])
        .arg(&t.path)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"][4]["index"], 4);
    assert_eq!(v["files"][4]["path"], serde_json::json!(["e.nfo"]));
}

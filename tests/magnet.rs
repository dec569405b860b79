//! Magnet links (issue 11) with real peers on 127.0.0.1: libtorrent fetches
//! the info dictionary from `actorrent seed` by BEP 9 and completes; `actorrent
//! download 'magnet:...'` fetches it from a libtorrent seed and from
//! `actorrent seed`, and refuses a corrupt copy from a scripted peer.
//!
//! Needs `/usr/bin/python3` with python3-libtorrent (see
//! `support/lt_peer.py`); a missing module fails the test.

mod support;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use protocol::ut_metadata::{self, MetadataMsg};
use protocol::wire::{self, Decoded, ExtendedHandshake, Handshake, Message};
use support::lt::LtPeer;
use support::process::Actorrent;
use support::torrent::TestTorrent;
use support::tracker::{Tracker, seeds_known};

/// Bound on the seed checking its data and binding its listener.
const START: Duration = Duration::from_secs(60);
/// Bound on a few MiB crossing loopback on a shared machine.
const DOWNLOAD: Duration = Duration::from_secs(120);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Several metadata pieces (many files make a long info dictionary) so
/// the request/data exchange runs more than once.
fn many_files(dir: &std::path::Path, name: &str) -> TestTorrent {
    let names: Vec<String> = (0..300)
        .map(|i| format!("dir{}/a-file-with-a-long-name-{i:04}.bin", i % 7))
        .collect();
    let files: Vec<(&str, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), 1000 + i * 37))
        .collect();
    TestTorrent::multi(dir, name, 32 * 1024, &files, 11)
}

#[test]
fn libtorrent_fetches_the_metadata_from_actorrent_seed() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "lt-magnet");
    let info_len = protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&t.path).unwrap())
        .unwrap()
        .info_bytes
        .len();
    assert!(
        info_len > 16 * 1024,
        "want several metadata pieces, have {info_len} bytes"
    );
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    let out = dir.path().join("lt-out");
    let saved = dir.path().join("lt.torrent");
    let magnet = format!("magnet:?xt=urn:btih:{}&dn=lt-magnet", hex(&t.info_hash));
    let extra = vec![
        "--timeout".to_owned(),
        DOWNLOAD.as_secs().to_string(),
        "--peer".into(),
        format!("127.0.0.1:{port}"),
        "--save-torrent".into(),
        saved.display().to_string(),
    ];
    let mut lt = LtPeer::spawn_magnet(&magnet, &out, &extra);
    lt.expect_line("METADATA", DOWNLOAD);
    lt.expect_line("DONE ", DOWNLOAD);
    lt.wait_success(Duration::from_secs(30));
    t.assert_downloaded(&out);
    let got = protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(got.info_hash.0, t.info_hash);
    seed.stop(Duration::from_secs(30));
}

fn info_len(t: &TestTorrent) -> usize {
    protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&t.path).unwrap())
        .unwrap()
        .info_bytes
        .len()
}

/// `actorrent download <magnet> --output <out> --save-torrent <saved>
/// <extra>`, waited for; asserts exit 0, the files, the saved torrent's
/// info-hash and the `metadata` state in the stats.
fn magnet_download(t: &TestTorrent, dir: &Path, magnet: &str, extra: &[&str]) -> Actorrent {
    let out = dir.join("out");
    let saved = dir.join("saved.torrent");
    let mut args: Vec<&OsStr> = vec![
        "download".as_ref(),
        magnet.as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
        "--save-torrent".as_ref(),
        saved.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let mut dl = Actorrent::spawn("magnet download", &args);
    let status = dl.wait_exit(DOWNLOAD);
    if !status.success() {
        dl.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(&out);
    let got = protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(got.info_hash.0, t.info_hash);
    let stats = dl.stats();
    let meta_line = stats
        .iter()
        .find(|v| v["state"] == "metadata" && v["event"] == "metadata")
        .unwrap_or_else(|| dl.fail("no `metadata` stats line"));
    assert!(
        meta_line["metadata_pieces_total"].as_u64().unwrap() >= 1,
        "{meta_line}"
    );
    assert_eq!(stats.last().unwrap()["event"], "complete");
    // `download` listens by default, from the metadata phase on: the port
    // announced then is the one the session accepts on.
    let port = meta_line["listen_port"].as_u64().unwrap();
    assert_ne!(port, 0, "{meta_line}");
    assert_eq!(stats.last().unwrap()["listen_port"], port);
    dl
}

/// Without `--listen`, `download` accepts connections on the port its
/// stats name (6881-6889 when free, else any), the same port in the
/// metadata phase and after it.
#[test]
fn download_listens_by_default_on_the_port_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "listens");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let (mut seed, port) = LtPeer::seed(&t.path, &data);
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{port}",
        hex(&t.info_hash)
    );
    let out = dir.path().join("out");
    let args: Vec<&OsStr> = vec![
        "download".as_ref(),
        magnet.as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
        "--seed-after".as_ref(),
    ];
    let mut dl = Actorrent::spawn("listening download", &args);
    let first = dl.wait_stats(START, "a metadata line", |v| v["state"] == "metadata");
    let listen = first["listen_port"].as_u64().unwrap();
    assert_ne!(listen, 0, "{first}");
    let done = dl.wait_stats(DOWNLOAD, "completion", |v| v["event"] == "complete");
    assert_eq!(done["listen_port"], listen);
    t.assert_downloaded(&out);
    // Something accepts there, and it speaks BitTorrent: our handshake for
    // this torrent is answered with one for the same info-hash.
    let mut s = TcpStream::connect(("127.0.0.1", listen as u16))
        .unwrap_or_else(|e| dl.fail(&format!("nothing listens on {listen}: {e}")));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let hs = Handshake::new([0; 8], t.info_hash, *b"-TT0001-000000000000");
    s.write_all(&hs.to_bytes()).unwrap();
    let mut reply = [0u8; 68];
    s.read_exact(&mut reply)
        .unwrap_or_else(|e| dl.fail(&format!("no handshake back on {listen}: {e}")));
    assert_eq!(&reply[28..48], &t.info_hash);
    dl.stop(Duration::from_secs(30));
    seed.finish(Duration::from_secs(30));
}

#[test]
fn actorrent_fetches_a_magnet_from_a_libtorrent_seed() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "from-lt");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let (mut seed, port) = LtPeer::seed(&t.path, &data);
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn=from-lt&x.pe=127.0.0.1:{port}",
        hex(&t.info_hash)
    );
    magnet_download(&t, dir.path(), &magnet, &[]);
    seed.finish(Duration::from_secs(30));
}

/// The metadata phase dials like every other connection: against a
/// libtorrent seed that refuses plaintext, `--encryption require` fetches
/// the metadata (and then the files) over RC4.
#[test]
fn the_metadata_phase_speaks_mse_to_a_seed_that_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "forced");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let args: Vec<String> = [
        "--timeout",
        "300",
        "--encryption",
        "forced",
        "--enc-level",
        "rc4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut seed = LtPeer::spawn("seed", &t.path, &data, &args);
    let port: u16 = seed
        .expect_line("PORT ", Duration::from_secs(60))
        .parse()
        .expect("PORT line");
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn=forced&x.pe=127.0.0.1:{port}",
        hex(&t.info_hash)
    );
    let dl = magnet_download(&t, dir.path(), &magnet, &["--encryption", "require"]);
    let last = dl.last_stats().unwrap();
    assert!(
        last["connections"]["outgoing"]["rc4"].as_u64().unwrap_or(0) >= 1,
        "{last}"
    );
    seed.finish(Duration::from_secs(30));
}

#[test]
fn actorrent_fetches_a_magnet_from_actorrent_seed_given_by_peer() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "from-us");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    let magnet = format!("magnet:?xt=urn:btih:{}", hex(&t.info_hash));
    let peer = format!("127.0.0.1:{port}");
    magnet_download(&t, dir.path(), &magnet, &["--peer", &peer]);
    seed.stop(Duration::from_secs(30));
}

/// A scripted peer that advertises `ut_metadata` with the right size and
/// answers every request with bytes of the right length but wrong content.
/// Returns its port and the count of pieces it served.
fn corrupt_metadata_peer(
    info_hash: [u8; 20],
    size: usize,
    stop: Arc<AtomicBool>,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    let (count, stop) = (count.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let _ = serve_corrupt(s, info_hash, size, &count, &stop);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (port, served)
}

fn serve_corrupt(
    mut s: TcpStream,
    info_hash: [u8; 20],
    size: usize,
    served: &AtomicUsize,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut hs = [0u8; Handshake::LEN];
    let mut got = 0;
    while got < hs.len() {
        match s.read(&mut hs[got..]) {
            Ok(0) => return Ok(()),
            Ok(n) => got += n,
            Err(_) if !stop.load(Ordering::Relaxed) => continue,
            Err(e) => return Err(e),
        }
    }
    let mut ours = Handshake::new([0; 8], info_hash, *b"-SC0001-corruptpeer0");
    ours.set_extended(true);
    let mut out = BytesMut::new();
    ours.encode(&mut out);
    let mut m = std::collections::BTreeMap::new();
    m.insert("ut_metadata".to_string(), 3u8);
    ExtendedHandshake {
        m,
        metadata_size: Some(size as u64),
        ..Default::default()
    }
    .to_message()
    .encode(&mut out);
    s.write_all(&out)?;
    let mut buf = BytesMut::new();
    let mut their_id = None;
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        while let Ok(Decoded::Complete(msg)) =
            wire::decode_message(&mut buf, &wire::Limits::default())
        {
            match msg {
                Message::Extended { id: 0, payload } => {
                    their_id = ExtendedHandshake::decode(&payload)
                        .ok()
                        .and_then(|h| h.m.get("ut_metadata").copied());
                }
                Message::Extended { id: 3, payload } => {
                    let Ok(MetadataMsg::Request { piece }) =
                        MetadataMsg::decode(&payload, &ut_metadata::Limits::default())
                    else {
                        continue;
                    };
                    let len = ut_metadata::piece_len(size as u32, piece).unwrap_or(0) as usize;
                    let answer = MetadataMsg::Data {
                        piece,
                        total_size: size as u32,
                        data: Bytes::from(vec![0x5a; len]),
                    };
                    let mut o = BytesMut::new();
                    Message::Extended {
                        id: their_id.unwrap_or(1),
                        payload: Bytes::from(answer.encode()),
                    }
                    .encode(&mut o);
                    s.write_all(&o)?;
                    served.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The bad peers are dialled first (one metadata connection at a time,
/// `--peer` before the rest): one advertises a `metadata_size` over the
/// limit and is left at once, the other sends a copy that fails the SHA-1
/// and is banned; the metadata then comes from the honest `actorrent seed`.
#[test]
fn a_corrupt_metadata_copy_is_refused_and_the_honest_peer_completes() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "corrupt");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (bad_port, served) = corrupt_metadata_peer(t.info_hash, info_len(&t), stop.clone());
    // And one that claims an info dictionary of 100 MiB: never asked.
    let (huge_port, huge_served) = corrupt_metadata_peer(t.info_hash, 100 << 20, stop.clone());
    let config = dir.path().join("one-at-a-time.toml");
    std::fs::write(&config, "[metadata]\nmax_peers = 1\n").unwrap();
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{port}",
        hex(&t.info_hash)
    );
    let bad = format!("127.0.0.1:{bad_port}");
    let huge = format!("127.0.0.1:{huge_port}");
    let dl = magnet_download(
        &t,
        dir.path(),
        &magnet,
        &[
            "--peer",
            &huge,
            "--peer",
            &bad,
            "--config",
            config.to_str().unwrap(),
        ],
    );
    stop.store(true, Ordering::Relaxed);
    assert!(
        served.load(Ordering::Relaxed) >= 1,
        "the corrupt peer served nothing"
    );
    assert_eq!(
        huge_served.load(Ordering::Relaxed),
        0,
        "a 100 MiB size was used"
    );
    assert!(
        dl.log().contains("metadata_size not used"),
        "no log line about the oversized metadata_size"
    );
    let meta_line = dl
        .stats()
        .into_iter()
        .find(|v| v["event"] == "metadata")
        .unwrap();
    assert_eq!(meta_line["metadata_hash_failures"], 1, "{meta_line}");
    assert_eq!(meta_line["metadata_banned"], 1, "{meta_line}");
    assert!(
        dl.log().contains("metadata does not match the info-hash"),
        "no log line about the bad copy"
    );
    seed.stop(Duration::from_secs(30));
}

/// A magnet link with one `tr` and nothing else: opentracker lists the
/// libtorrent seed, which gives the metadata and the data.
#[test]
fn a_magnet_with_only_a_tracker_completes() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "tr-only");
    let tracker = Tracker::start(&[t.info_hash]);
    let url = tracker.http_url();
    t.set_announce(&url);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let (mut seed, _port) = LtPeer::seed(&t.path, &data);
    // Wait until the tracker lists the seed, or our announce may find nobody.
    let listed = support::wait_until(Duration::from_secs(30), || {
        seeds_known(&tracker, &t.info_hash) >= 1
    });
    assert!(listed, "opentracker never heard of the libtorrent seed");
    let enc: String = url
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let magnet = format!("magnet:?xt=urn:btih:{}&tr={enc}", hex(&t.info_hash));
    magnet_download(&t, dir.path(), &magnet, &[]);
    seed.finish(Duration::from_secs(30));
}

/// The pids whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // `pid (comm) state ppid ...`: comm may hold spaces.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// GET /metrics as text (the body).
fn scrape_text(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// While the info dictionary is unknown (the magnet's only peer accepts
/// and never answers), the state `metadata` is in `--stats-json`, in the
/// metrics (`actorrent_torrents{state="metadata"} 1`, served from the
/// metadata phase on) and on the progress bar (stderr a terminal: the
/// client runs under `script`, which gives it a pty).
#[test]
fn the_metadata_state_shows_in_stats_metrics_and_the_bar() {
    let dir = tempfile::tempdir().unwrap();
    let stall = TcpListener::bind("127.0.0.1:0").unwrap();
    let stall_addr = stall.local_addr().unwrap();
    // Accepts and holds the connections, never a byte back.
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in stall.incoming().take(64).flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let magnet = format!("magnet:?xt=urn:btih:{}&x.pe={stall_addr}", "ab".repeat(20));
    let out = dir.path().join("out");
    let stats = dir.path().join("stats.jsonl");
    let q = |p: &Path| format!("'{}'", p.display());
    let cmd = format!(
        "{} download '{magnet}' --output {} --listen 127.0.0.1:0 --metrics 127.0.0.1:0 \
         --stats-json {} --encryption disable",
        q(Path::new(&support::process::bin())),
        q(&out),
        q(&stats),
    );
    let pty_out = dir.path().join("pty.out");
    let mut script = std::process::Command::new("script")
        .args(["-qfec", &cmd])
        .arg(&pty_out)
        .env("ACTORRENT_DHT_ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run script(1) from util-linux");
    let text = || std::fs::read_to_string(&pty_out).unwrap_or_default();
    let mut metrics_addr = String::new();
    let found = support::wait_until(START, || {
        let t = text();
        let addr = t
            .lines()
            .find_map(|l| l.split("metrics on http://").nth(1))
            .map(|a| a.trim().trim_end_matches("/metrics").to_owned());
        match addr {
            Some(a) if t.contains(" pieces") => {
                metrics_addr = a;
                true
            }
            _ => false,
        }
    });
    let stop = |script: &mut std::process::Child| {
        for pid in children_of(script.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        let ok = support::wait_until(Duration::from_secs(30), || {
            matches!(script.try_wait(), Ok(Some(_)))
        });
        if !ok {
            for pid in children_of(script.id()) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = script.kill();
            let _ = script.wait();
        }
    };
    if !found {
        stop(&mut script);
        panic!(
            "no metrics address or metadata bar on the terminal:\n{}",
            text()
        );
    }
    let body = scrape_text(&metrics_addr);
    stop(&mut script);
    assert!(
        body.lines()
            .any(|l| l == "actorrent_torrents{state=\"metadata\"} 1"),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == "actorrent_torrents{state=\"downloading\"} 0"),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == "actorrent_metadata_pieces_total 0"),
        "{body}"
    );
    assert!(body.contains("actorrent_listen_port "), "{body}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&stats)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|v| v["state"] == "metadata"),
        "{lines:?}"
    );
    // `⠁ metadata 1p 0/0 pieces`: the state, the connection to the
    // silent peer, no size known.
    assert!(
        text().lines().any(|l| l.contains("metadata 1p 0/0 pieces")),
        "the bar names the state:\n{}",
        text()
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

/// A scripted peer with no metadata that advertises only `ut_pex`, and
/// once the remote's extended handshake names its `ut_pex` id, sends one
/// PEX message naming `tell`. Returns its port and whether it sent it.
fn pex_go_between(info_hash: [u8; 20], tell: std::net::SocketAddr) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let told = Arc::new(AtomicBool::new(false));
    let t = told.clone();
    std::thread::spawn(move || {
        // The leecher may come back after the go-between leaves it: a few.
        for s in listener.incoming().take(8).flatten() {
            let t = t.clone();
            std::thread::spawn(move || {
                let _ = serve_pex(s, info_hash, tell, &t);
            });
        }
    });
    (port, told)
}

fn serve_pex(
    mut s: TcpStream,
    info_hash: [u8; 20],
    tell: std::net::SocketAddr,
    told: &AtomicBool,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut hs = [0u8; Handshake::LEN];
    s.read_exact(&mut hs)?;
    let mut ours = Handshake::new([0; 8], info_hash, *b"-SC0001-pexgobetween");
    ours.set_extended(true);
    let mut out = BytesMut::new();
    ours.encode(&mut out);
    let mut m = std::collections::BTreeMap::new();
    m.insert("ut_pex".to_string(), 7u8);
    ExtendedHandshake {
        m,
        ..Default::default()
    }
    .to_message()
    .encode(&mut out);
    s.write_all(&out)?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Decoded::Complete(msg)) =
            wire::decode_message(&mut buf, &wire::Limits::default())
        {
            let Message::Extended { id: 0, payload } = msg else {
                continue;
            };
            let Some(id) = ExtendedHandshake::decode(&payload)
                .ok()
                .and_then(|h| h.m.get("ut_pex").copied())
            else {
                continue;
            };
            let pex = protocol::ut_pex::Pex {
                added: vec![(tell, protocol::ut_pex::flags::SEED)],
                ..Default::default()
            };
            let mut o = BytesMut::new();
            Message::Extended {
                id,
                payload: Bytes::from(pex.encode()),
            }
            .encode(&mut o);
            s.write_all(&o)?;
            told.store(true, Ordering::Relaxed);
        }
    }
}

/// The magnet's only peer has no metadata but knows, and tells by PEX, who
/// has it: the metadata phase advertises `ut_pex`, stays for that message,
/// dials the seed it names, fetches the info dictionary from it and the
/// download completes.
#[test]
fn peers_learned_by_pex_during_the_metadata_phase_give_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "pex-metadata");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    let (gb_port, told) = pex_go_between(t.info_hash, ([127, 0, 0, 1], port).into());
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{gb_port}",
        hex(&t.info_hash)
    );
    // Plaintext: the scripted go-between speaks no MSE.
    let dl = magnet_download(&t, dir.path(), &magnet, &["--encryption", "disable"]);
    assert!(told.load(Ordering::Relaxed), "the go-between never told");
    assert!(
        dl.log().contains("metadata peers learned by PEX"),
        "no log line about PEX in the metadata phase"
    );
    seed.stop(Duration::from_secs(30));
}

/// `--no-pex`: the metadata phase advertises no `ut_pex`, so the
/// go-between never tells and the seed stays unknown.
#[test]
fn no_pex_leaves_the_metadata_phase_without_pex() {
    let dir = tempfile::tempdir().unwrap();
    let tell: std::net::SocketAddr = ([127, 0, 0, 1], 9).into();
    let info_hash = [0xcd; 20];
    let (gb_port, told) = pex_go_between(info_hash, tell);
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{gb_port}",
        hex(&info_hash)
    );
    let out = dir.path().join("out");
    let args: Vec<&OsStr> = vec![
        "download".as_ref(),
        magnet.as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--no-pex".as_ref(),
        "--encryption".as_ref(),
        "disable".as_ref(),
    ];
    let mut dl = Actorrent::spawn("magnet download --no-pex", &args);
    // The go-between is dialled and left ("no ut_metadata"), again and again.
    let left = support::wait_until(START, || {
        dl.log()
            .contains("no ut_metadata or metadata_size advertised")
    });
    dl.interrupt();
    let _ = dl.wait_exit(Duration::from_secs(30));
    assert!(left, "the go-between was never dialled and left");
    assert!(
        !told.load(Ordering::Relaxed),
        "ut_pex advertised with --no-pex"
    );
}

//! A real peer: libtorrent seeds a 64 MiB multi-file torrent on 127.0.0.1
//! and `actorrent download --peer` fetches it; the files must come out
//! byte-identical. A second test has another libtorrent session download
//! from the same seeder, so a failure of the first can be told apart from a
//! broken seeder.
//!
//! libtorrent runs through `tests/support/lt_peer.py` under
//! `/usr/bin/python3` (the distribution's interpreter, which can import
//! python3-libtorrent). A missing libtorrent is a failure, not a skip:
//! `scripts/test.sh` installs it.
//!
//! Self-contained on purpose: tests/support/mod.rs belongs to the scripted
//! peer tests, so the helpers live here.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";
const PIECE_SIZE: u64 = 256 * 1024;
/// Generous for a debug build sharing two cores with other builds; the wall
/// limit exists so a hang fails the test instead of stalling CI.
const DOWNLOAD_WALL_LIMIT: Duration = Duration::from_secs(300);
/// libtorrent rechecks the payload before it announces its port.
const SEED_READY_LIMIT: Duration = Duration::from_secs(120);

fn seed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lt_peer.py")
}

/// The torrent's files: a large file whose end is not piece-aligned, a tiny
/// one and an empty one in a subdirectory, and files two levels deep, so
/// pieces span file boundaries. 64 MiB plus a little, so the last piece
/// (and its last block) is short.
const FILES: &[(&str, u64)] = &[
    ("disk.img", 40 * 1024 * 1024 + 12_345),
    ("docs/readme.txt", 1_000),
    ("docs/empty.dat", 0),
    ("media/a/clip.bin", 16 * 1024 * 1024 - 7),
    ("media/b.bin", 8_375_270 + 1_234),
];

/// xorshift64*: a seeded generator, so every run sees the same bytes and
/// every piece differs from every other.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Writes FILES under `<root>/payload` and returns that directory.
fn write_payload(root: &Path, seed: u64) -> PathBuf {
    let dir = root.join("payload");
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 1 << 20];
    for (name, len) in FILES {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = fs::File::create(&path).unwrap();
        let mut left = *len as usize;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).unwrap();
            left -= n;
        }
    }
    dir
}

fn total_size() -> u64 {
    FILES.iter().map(|(_, len)| len).sum()
}

/// Runs `make` and returns the piece count libtorrent reports.
fn make_torrent(data: &Path, torrent: &Path) -> u64 {
    let out = Command::new(PYTHON)
        .arg(seed_script())
        .args(["make", "--piece-size", &PIECE_SIZE.to_string(), "--data"])
        .arg(data)
        .arg("--out")
        .arg(torrent)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} ({e}); scripts/test.sh installs it"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "making the torrent failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // "MADE <info-hash> <pieces> <total size>"
    let fields: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MADE "))
        .unwrap_or_else(|| panic!("no MADE line in {stdout:?}"))
        .split_whitespace()
        .collect();
    assert_eq!(fields[2].parse::<u64>().unwrap(), total_size());
    fields[1].parse().unwrap()
}

/// A child process that is killed and reaped when dropped, so a failing
/// assertion never leaves a process behind.
struct Reaped(Option<Child>);

impl Reaped {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already taken")
    }

    /// Waits until `limit`; kills the child if it is still running then.
    /// Returns None on expiry.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child().kill();
                let _ = self.child().wait();
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads a pipe to its end on a thread, so the child never blocks on a full
/// pipe, and hands each line to `on_line` as it arrives.
fn collect_lines<R: Read + Send + 'static>(
    pipe: R,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            on_line(&line);
            lines.push(line);
        }
        lines
    })
}

/// A libtorrent seed on 127.0.0.1 that stops when its stdin closes.
struct Seeder {
    proc: Reaped,
    stdin: Option<ChildStdin>,
    port: u16,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr_log: PathBuf,
}

impl Seeder {
    fn start(torrent: &Path, save_path: &Path, log_dir: &Path) -> Seeder {
        let stderr_log = log_dir.join("seeder.stderr");
        let mut child = Command::new(PYTHON)
            .arg(seed_script())
            .arg("seed")
            .arg("--torrent")
            .arg(torrent)
            .arg("--save-path")
            .arg(save_path)
            .arg("--verbose")
            // The seeder's own backstop, should this test die without
            // closing its stdin.
            .args(["--timeout", "900"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr_log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PYTHON} ({e}); scripts/test.sh installs it"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let proc = Reaped(Some(child));
        let (tx, rx) = mpsc::channel();
        let stdout = collect_lines(stdout, move |line| {
            if let Some(port) = line.strip_prefix("PORT ") {
                let _ = tx.send(port.trim().parse::<u16>());
            }
        });
        let port = match rx.recv_timeout(SEED_READY_LIMIT) {
            Ok(Ok(port)) => port,
            other => {
                drop(proc); // kill it before reading what it logged
                panic!(
                    "libtorrent seeder did not report a port ({other:?}); stderr:\n{}",
                    fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        Seeder {
            proc,
            stdin,
            port,
            stdout: Some(stdout),
            stderr_log,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Closes stdin (the seeder's signal to stop) and returns the payload
    /// bytes it reports having uploaded.
    fn stop(mut self) -> u64 {
        drop(self.stdin.take());
        let status = self.proc.wait_for(Duration::from_secs(30));
        let lines = self.stdout.take().unwrap().join().unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "seeder did not exit cleanly ({status:?}); stderr:\n{}",
            self.stderr()
        );
        lines
            .iter()
            .find_map(|l| l.strip_prefix("UPLOADED "))
            .unwrap_or_else(|| panic!("no UPLOADED line in {lines:?}"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// Asserts every file of FILES under `got` equals the one under `want`,
/// naming the first differing byte.
fn assert_same_files(want: &Path, got: &Path) {
    for (name, len) in FILES {
        let a = fs::read(want.join(name)).unwrap();
        let b = fs::read(got.join(name)).unwrap_or_else(|e| {
            panic!(
                "{} missing from the download: {e}",
                got.join(name).display()
            )
        });
        assert_eq!(b.len() as u64, *len, "{name}: wrong length");
        if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
            panic!("{name}: first differing byte at offset {at}");
        }
    }
}

/// A seeded payload, its torrent and a running seeder, in one tempdir.
struct Fixture {
    tmp: tempfile::TempDir,
    data: PathBuf,
    torrent: PathBuf,
    pieces: u64,
}

fn fixture(seed: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let data = write_payload(&src, seed);
    let torrent = tmp.path().join("payload.torrent");
    let pieces = make_torrent(&data, &torrent);
    assert_eq!(pieces, total_size().div_ceil(PIECE_SIZE));
    Fixture {
        tmp,
        data,
        torrent,
        pieces,
    }
}

#[test]
fn actorrent_downloads_multi_file_torrent_from_libtorrent() {
    let fx = fixture(0x5eed_0001);
    let seeder = Seeder::start(&fx.torrent, fx.data.parent().unwrap(), fx.tmp.path());
    let out_dir = fx.tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap();

    let stderr_log = fx.tmp.path().join("actorrent.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_actorrent"))
        .env("ACTORRENT_DHT_ENABLED", "false")
        .arg("download")
        .arg(&fx.torrent)
        .arg("--output")
        .arg(&out_dir)
        .arg("--peer")
        .arg(format!("127.0.0.1:{}", seeder.port))
        .args(["--stats-json", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr_log).unwrap())
        .spawn()
        .expect("run actorrent");
    let stdout = collect_lines(child.stdout.take().unwrap(), |_| {});
    let mut proc = Reaped(Some(child));
    let status = proc.wait_for(DOWNLOAD_WALL_LIMIT);
    let lines = stdout.join().unwrap();
    let stderr = fs::read_to_string(&stderr_log).unwrap_or_default();
    let context = || {
        format!(
            "\nactorrent stderr (tail):\n{}\nstats lines: {}\nlast: {:?}\nseeder stderr:\n{}",
            tail(&stderr, 40),
            lines.len(),
            lines.last(),
            seeder.stderr()
        )
    };
    let status = status.unwrap_or_else(|| {
        panic!(
            "download still running after {DOWNLOAD_WALL_LIMIT:?}; killed{}",
            context()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "actorrent download failed{}",
        context()
    );
    assert!(
        !stderr.contains("panicked"),
        "actorrent panicked{}",
        context()
    );

    // Every stats line is one JSON object; the last one says complete.
    let stats: Vec<Value> = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stats line {l:?} is not JSON: {e}"))
        })
        .collect();
    for s in &stats {
        assert!(
            s["event"] == "progress" || s["event"] == "complete",
            "unexpected event in {s}"
        );
    }
    let last = stats
        .last()
        .unwrap_or_else(|| panic!("no stats lines{}", context()));
    assert_eq!(last["event"], "complete", "last stats line: {last}");
    assert_eq!(last["pieces_total"], fx.pieces, "last stats line: {last}");
    assert_eq!(last["pieces_done"], fx.pieces, "last stats line: {last}");
    assert_eq!(last["hash_failures"], 0, "last stats line: {last}");
    assert!(
        last["bytes_down"]
            .as_u64()
            .is_some_and(|b| b >= total_size()),
        "bytes_down short of the payload: {last}"
    );

    assert_same_files(&fx.data, &out_dir.join("payload"));
    let uploaded = seeder.stop();
    assert!(
        uploaded >= total_size(),
        "libtorrent uploaded {uploaded} bytes, less than the {} byte payload",
        total_size()
    );
}

/// The seeder itself, checked against a second libtorrent session: if this
/// passes and the test above fails, the fault is actorrent's.
#[test]
fn libtorrent_seeder_serves_a_libtorrent_leech() {
    let fx = fixture(0x5eed_0002);
    let seeder = Seeder::start(&fx.torrent, fx.data.parent().unwrap(), fx.tmp.path());
    let out_dir = fx.tmp.path().join("lt-out");
    fs::create_dir(&out_dir).unwrap();
    let child = Command::new(PYTHON)
        .arg(seed_script())
        .arg("leech")
        .arg("--torrent")
        .arg(&fx.torrent)
        .arg("--save-path")
        .arg(&out_dir)
        .arg("--peer")
        .arg(format!("127.0.0.1:{}", seeder.port))
        .args(["--timeout", "240"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run libtorrent leech");
    let mut proc = Reaped(Some(child));
    let stdout = collect_lines(proc.child().stdout.take().unwrap(), |_| {});
    let stderr = collect_lines(proc.child().stderr.take().unwrap(), |_| {});
    let status = proc.wait_for(DOWNLOAD_WALL_LIMIT);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.is_some_and(|s| s.success()),
        "libtorrent leech failed ({status:?}):\n{}\nseeder:\n{}",
        stderr.join("\n"),
        seeder.stderr()
    );
    // "DONE <bytes> <seconds> <wall start> <wall end>", after its "PORT <n>".
    let done = stdout
        .iter()
        .find_map(|l| l.strip_prefix("DONE "))
        .unwrap_or_else(|| panic!("no DONE line in {stdout:?}"));
    assert_eq!(
        done.split_whitespace().next(),
        Some(total_size().to_string().as_str()),
        "{done}"
    );
    assert_same_files(&fx.data, &out_dir.join("payload"));
    let uploaded = seeder.stop();
    assert!(
        uploaded >= total_size(),
        "seeder uploaded only {uploaded} bytes"
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

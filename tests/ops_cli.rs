//! Operator-facing behaviour of the real binary: the config file and its
//! environment overrides, the Prometheus endpoint scraped during a download,
//! SIGTERM during a download followed by a resuming restart, JSON logs, and
//! `actorrent demo`. Seeds are `actorrent seed` processes on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::torrent::TestTorrent;
use support::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_actorrent");
const LIMIT: Duration = Duration::from_secs(90);

/// A child process with stdout and stderr in files, killed when dropped.
struct Proc {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn start(dir: &Path, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let stdout = dir.join(format!("{tag}.stdout"));
        let stderr = dir.join(format!("{tag}.stderr"));
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("RUST_LOG")
            // No DHT: its default routers are on the internet.
            .env("ACTORRENT_DHT_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn actorrent");
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits for the exit, killing the process and failing on timeout.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "actorrent did not exit within {limit:?}; stderr:\n{}",
                    support::client::tail(&self.stderr(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to completion.
fn run(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run actorrent");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stats JSON lines written so far to `path`.
fn stats_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A multi-file torrent of about 8 MiB in `dir`, its payload written under
/// `dir/seed/<name>`, and an `actorrent seed` serving it. Returns the seed's
/// port.
fn seeded_torrent(dir: &Path, seed_tag: &str) -> (TestTorrent, Proc, u16) {
    let t = TestTorrent::multi(
        dir,
        "payload",
        64 * 1024,
        &[("a.bin", 5 << 20), ("sub/b.bin", (3 << 20) + 777)],
        7,
    );
    let root = dir.join("seed").join(&t.name);
    for (path, data) in &t.files {
        let file = path.iter().fold(root.clone(), |p, c| p.join(c));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, data).unwrap();
    }
    let stats = dir.join(format!("{seed_tag}.json"));
    let mut seed = Proc::start(
        dir,
        seed_tag,
        &[
            "seed",
            t.path.to_str().unwrap(),
            "--data",
            dir.join("seed").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &[],
    );
    let mut port = 0;
    wait_until(LIMIT, || {
        port = stats_lines(&stats)
            .iter()
            .filter(|s| s["state"] == "seeding")
            .find_map(|s| s["listen_port"].as_u64())
            .unwrap_or(0) as u16;
        port != 0 || !seed.running()
    });
    assert!(
        port != 0,
        "the seed did not start; stderr:\n{}",
        seed.stderr()
    );
    (t, seed, port)
}

/// GET /metrics, parsed into sample name (with labels) -> value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_owned(), v.parse::<f64>().expect("a number"))
        })
        .collect()
}

#[test]
fn default_config_round_trips_through_a_file_and_bad_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (st, defaults, _) = run(&["config", "--print-default"], &[]);
    assert!(st.success());
    assert!(defaults.contains("[disk.writer]") && defaults.contains("queue_time_ms = 3000"));
    let file = dir.path().join("c.toml");
    std::fs::write(&file, &defaults).unwrap();
    let (st, effective, err) = run(
        &["--config", file.to_str().unwrap(), "config", "--print"],
        &[],
    );
    assert!(st.success(), "{err}");
    assert_eq!(effective, defaults);

    // A file value, then an environment override of it.
    std::fs::write(&file, "[pipeline]\nmax_pipeline = 100\n").unwrap();
    let f = file.to_str().unwrap();
    let (st, out, _) = run(&["--config", f, "config", "--print"], &[]);
    assert!(st.success() && out.contains("max_pipeline = 100"));
    let env = [("ACTORRENT_PIPELINE_MAX_PIPELINE", "64")];
    let (st, out, _) = run(&["--config", f, "config", "--print"], &env);
    assert!(st.success() && out.contains("max_pipeline = 64"), "{out}");

    // Unknown keys and bad values: exit 2, the key named.
    std::fs::write(&file, "[disk.writer]\nbatch_limt = 4\n").unwrap();
    let (st, _, err) = run(&["--config", f, "config", "--print"], &[]);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("disk.writer.batch_limt"), "{err}");
    std::fs::write(&file, "[choker]\ninterval_ms = \"soon\"\n").unwrap();
    let (st, _, err) = run(&["--config", f, "config", "--print"], &[]);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("choker.interval_ms"), "{err}");
    std::fs::write(&file, "[disk]\npreallocation = \"lazy\"\n").unwrap();
    let (st, _, err) = run(&["--config", f, "config", "--print"], &[]);
    assert_eq!(st.code(), Some(2));
    assert!(
        err.contains("disk.preallocation") && err.contains("`sparse`"),
        "{err}"
    );
    let env = [("ACTORRENT_BUDGET_CAPACITY", "-1")];
    let (st, _, err) = run(&["config", "--print"], &env);
    assert_eq!(st.code(), Some(2));
    assert!(
        err.contains("budget.capacity") && err.contains("ACTORRENT_BUDGET_CAPACITY"),
        "{err}"
    );
    // A log level that is not one is refused too.
    let (st, _, err) = run(&["--log-level", "verbose", "config", "--print"], &[]);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("verbose"), "{err}");
    // The download command refuses the same way before doing anything.
    std::fs::write(&file, "peer_mailbox = 0\n").unwrap();
    let (st, _, err) = run(&["--config", f, "download", f, "-o", "."], &[]);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("peer_mailbox"), "{err}");
}

#[test]
fn metrics_endpoint_scraped_during_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _seed, port) = seeded_torrent(dir.path(), "seed");
    let out = dir.path().join("out");
    let peer = format!("127.0.0.1:{port}");
    // A download limit keeps it running long enough to scrape mid-way.
    let mut leech = Proc::start(
        dir.path(),
        "leech",
        &[
            "download",
            t.path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--peer",
            &peer,
            "--download-limit",
            "1500000",
            "--metrics",
            "127.0.0.1:0",
            "--log-level",
            "info",
            "--log-format",
            "json",
        ],
        &[],
    );
    let mut addr: Option<SocketAddr> = None;
    assert!(
        wait_until(LIMIT, || {
            addr = leech
                .stderr()
                .lines()
                .find_map(|l| l.strip_prefix("actorrent: metrics on http://"))
                .and_then(|a| a.trim().trim_end_matches("/metrics").parse().ok());
            addr.is_some()
        }),
        "no metrics address on stderr:\n{}",
        leech.stderr()
    );
    let addr = addr.unwrap();
    let mut scrapes = Vec::new();
    let grew = wait_until(LIMIT, || {
        if !leech.running() {
            return false;
        }
        scrapes.push(scrape(addr));
        std::thread::sleep(Duration::from_millis(300));
        let down: Vec<f64> = scrapes
            .iter()
            .map(|m| m["actorrent_bytes_down_total"])
            .collect();
        down.iter().any(|&d| d > 0.0) && down.windows(2).any(|w| w[1] > w[0] && w[0] > 0.0)
    });
    assert!(grew, "bytes_down did not grow between scrapes: {scrapes:?}");
    let last = scrapes.last().unwrap();
    for name in [
        "actorrent_bytes_up_total",
        "actorrent_pieces_verified_total",
        "actorrent_hash_failures_total",
        "actorrent_write_syscalls_total",
        "actorrent_blocks_written_total",
        "actorrent_budget_in_use_bytes",
        "actorrent_mailbox_depth{actor=\"session\"}",
        "actorrent_mailbox_depth{actor=\"torrent\"}",
        "actorrent_mailbox_depth{actor=\"peer\"}",
        "actorrent_mailbox_capacity{actor=\"peer\"}",
        "actorrent_mailbox_depth{actor=\"hash\"}",
        "actorrent_mailbox_depth{actor=\"writer\"}",
        "actorrent_hash_latency_seconds_count",
        "actorrent_disk_write_latency_seconds_bucket{le=\"+Inf\"}",
        "actorrent_blocks_per_pwritev_sum",
        "actorrent_announces_total{outcome=\"sent\"}",
    ] {
        assert!(last.contains_key(name), "{name} missing: {last:?}");
    }
    assert_eq!(last["actorrent_hash_failures_total"], 0.0);
    assert!(scrapes.iter().any(|m| m["actorrent_peers"] >= 1.0));
    // One torrent, downloading while bytes flowed; no magnet, so never in
    // `metadata`.
    assert!(
        scrapes
            .iter()
            .any(|m| m["actorrent_torrents{state=\"downloading\"}"] == 1.0),
        "{scrapes:?}"
    );
    assert!(
        scrapes
            .iter()
            .all(|m| m["actorrent_torrents{state=\"metadata\"}"] == 0.0)
    );
    // Without --listen a download listens anyway (6881-6889 or any port),
    // and says where.
    assert!(last["actorrent_listen_port"] >= 1.0, "{last:?}");
    assert!(
        last.keys().any(
            |k| k.starts_with("actorrent_network_info{listen=\"") && !k.contains("listen=\"\"")
        ),
        "{last:?}"
    );
    // Mid-download these have samples; checked on the scrape that saw the
    // most data.
    let most = scrapes
        .iter()
        .max_by(|a, b| a["actorrent_bytes_down_total"].total_cmp(&b["actorrent_bytes_down_total"]))
        .unwrap();
    assert!(most["actorrent_pipeline_depth_count"] > 0.0, "{most:?}");
    assert!(
        most["actorrent_request_rtt_seconds_count"] > 0.0,
        "{most:?}"
    );
    assert_eq!(
        most["actorrent_request_rtt_seconds_count"],
        most["actorrent_request_rtt_seconds_bucket{le=\"+Inf\"}"]
    );
    assert!(most["actorrent_bytes_down_total"] <= t.payload.len() as f64);
    assert_eq!(most["actorrent_mailbox_capacity{actor=\"peer\"}"], 512.0);

    let status = leech.wait(LIMIT);
    assert!(status.success(), "stderr:\n{}", leech.stderr());
    t.assert_downloaded(&out);
    // `--log-format json`: the log lines are JSON objects.
    let json_logs: Vec<Value> = leech
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        json_logs
            .iter()
            .any(|v| v["level"] == "INFO" && v["fields"].is_object()),
        "no JSON log lines:\n{}",
        leech.stderr()
    );
    // Nothing leaked the other way: a text line would not parse.
    assert!(leech.stdout().is_empty());
}

#[test]
fn sigterm_stops_cleanly_and_the_restart_fetches_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _seed, port) = seeded_torrent(dir.path(), "seed");
    let out = dir.path().join("out");
    let peer = format!("127.0.0.1:{port}");
    let total = t.payload.len() as u64;
    let pieces = u64::from(t.piece_count());
    let download = |tag: &str, extra: &[&str]| {
        let stats = dir.path().join(format!("{tag}.json"));
        let mut args = vec![
            "download",
            t.path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--peer",
            &peer,
            "--stats-json",
            stats.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (Proc::start(dir.path(), tag, &args, &[]), stats)
    };

    let (mut first, stats1) = download("first", &["--download-limit", "1500000"]);
    let started = wait_until(LIMIT, || {
        stats_lines(&stats1)
            .iter()
            .any(|s| s["pieces_done"].as_u64().unwrap_or(0) >= pieces / 4)
    });
    assert!(started, "no progress; stderr:\n{}", first.stderr());
    first.signal("-TERM");
    let status = first.wait(LIMIT);
    assert!(
        status.success(),
        "SIGTERM exit: {status}; stderr:\n{}",
        first.stderr()
    );
    let stopped = stats_lines(&stats1).pop().expect("stats lines");
    assert_eq!(stopped["event"], "stopped", "{stopped}");
    let done1 = stopped["pieces_done"].as_u64().unwrap();
    let down1 = stopped["bytes_down"].as_u64().unwrap();
    assert!(done1 >= pieces / 4 && done1 < pieces, "{stopped}");

    let (mut second, stats2) = download("second", &[]);
    let status = second.wait(LIMIT);
    assert!(status.success(), "stderr:\n{}", second.stderr());
    let last = stats_lines(&stats2).pop().expect("stats lines");
    assert_eq!(last["event"], "complete", "{last}");
    assert_eq!(last["pieces_done"].as_u64(), Some(pieces));
    let down2 = last["bytes_down"].as_u64().unwrap();
    // The pieces verified before the stop are not fetched again: at most
    // the rest (the last piece may be short, hence one piece of slack).
    let piece = u64::from(t.piece_length);
    assert!(
        down2 <= total - (done1 - 1) * piece,
        "second run fetched {down2} bytes of {total}; {done1} pieces were verified before (first run fetched {down1})"
    );
    assert!(down2 > 0 && down2 < total);
    t.assert_downloaded(&out);
}

#[test]
fn demo_exits_0_having_verified_every_byte_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, out, err) = run(
        &["demo", "--size", "64"],
        &[("TMPDIR", tmp.path().to_str().unwrap())],
    );
    assert!(st.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.matches("every byte verified").count(), 2, "{out}");
    assert!(out.contains("CPU s/GiB"), "{out}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "demo left files behind"
    );
}

#[test]
fn configuration_doc_shows_the_current_defaults() {
    let (st, defaults, _) = run(&["config", "--print-default"], &[]);
    assert!(st.success());
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    assert!(
        doc.contains(&format!("```toml\n{defaults}```")),
        "docs/configuration.md's defaults block differs from `actorrent config --print-default`; paste it again"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _seed, port) = seeded_torrent(dir.path(), "seed");
    // A disk that writes 64 KiB/s makes the clean stop (which flushes every
    // verified piece first) last long enough to interrupt it.
    let config = dir.path().join("slow-disk.toml");
    std::fs::write(&config, "[disk.writer]\nmax_bytes_per_sec = 65536\n").unwrap();
    let out = dir.path().join("out");
    let stats = dir.path().join("stats.json");
    let peer = format!("127.0.0.1:{port}");
    let mut leech = Proc::start(
        dir.path(),
        "leech",
        &[
            "--config",
            config.to_str().unwrap(),
            "--log-level",
            "info",
            "download",
            t.path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--peer",
            &peer,
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &[],
    );
    let total = t.payload.len() as u64;
    // Wait until more has arrived than the slow disk can write in a moment.
    let ahead = wait_until(LIMIT, || {
        stats_lines(&stats)
            .iter()
            .any(|s| s["bytes_down"].as_u64().unwrap_or(0) >= total / 4)
    });
    assert!(ahead, "no progress; stderr:\n{}", leech.stderr());
    leech.signal("-TERM");
    let stopping = wait_until(LIMIT, || {
        leech.stderr().contains("signal received; stopping")
    });
    assert!(stopping, "stderr:\n{}", leech.stderr());
    assert!(
        leech.running(),
        "the clean stop ended before the second signal; the slow disk is too fast"
    );
    leech.signal("-TERM");
    let status = leech.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "stderr:\n{}", leech.stderr());
    assert!(
        leech.stderr().contains("second signal"),
        "{}",
        leech.stderr()
    );
}

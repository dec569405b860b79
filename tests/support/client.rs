//! Runs the real `actorrent download` as a child process. The guard kills the
//! process when dropped, so a failing assertion never leaks a client; stdout
//! and stderr are drained by threads so a chatty client cannot block on a
//! full pipe.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Wall-clock limit for one download in these tests: far above what the
/// small torrents need, low enough that a hung client fails the test.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `actorrent download`.
pub struct Client {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// How a finished download ended.
#[derive(Debug)]
pub struct Finished {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything written to stdout (the stats JSON lines).
    pub stdout: String,
    /// Everything written to stderr (the logs).
    pub stderr: String,
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl Client {
    /// Starts `actorrent download <torrent> --output <out> --peer <p>...
    /// --stats-json -` with `extra` arguments appended.
    pub fn download(torrent: &Path, out: &Path, peers: &[SocketAddr], extra: &[&str]) -> Client {
        // ACTORRENT_TEST_BIN runs these tests against another client with
        // the same command line (for telling a harness fault from a client
        // fault); by default they run the binary this package builds.
        let bin = std::env::var_os("ACTORRENT_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_actorrent").into());
        let mut cmd = Command::new(bin);
        // No DHT: its default routers are on the internet.
        cmd.env("ACTORRENT_DHT_ENABLED", "false");
        cmd.arg("download")
            .arg(torrent)
            .arg("--output")
            .arg(out)
            .args(["--stats-json", "-"]);
        for p in peers {
            cmd.arg("--peer").arg(p.to_string());
        }
        cmd.args(extra);
        if std::env::var_os("RUST_LOG").is_none() {
            // Peer disconnect reasons are logged at debug or info; keep them
            // so a failing test shows why.
            cmd.env("RUST_LOG", "debug");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn actorrent");
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        Client {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit; on timeout kills it and
    /// panics with its logs.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for actorrent") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let f = self.collect(None);
                panic!(
                    "actorrent did not finish within {timeout:?}; killed.\nstdout tail:\n{}\nstderr tail:\n{}",
                    tail(&f.stdout, 20),
                    tail(&f.stderr, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.collect(Some(status))
    }

    fn collect(&mut self, status: Option<ExitStatus>) -> Finished {
        let text = |h: Option<JoinHandle<Vec<u8>>>| {
            h.map(|h| String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned())
                .unwrap_or_default()
        };
        let stdout = text(self.stdout.take());
        let stderr = text(self.stderr.take());
        let status = status.unwrap_or_else(|| self.child.wait().expect("reap actorrent"));
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Finished {
    /// Asserts exit status 0, showing the logs otherwise.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "actorrent exited with {}\nstdout tail:\n{}\nstderr tail:\n{}",
            self.status,
            tail(&self.stdout, 20),
            tail(&self.stderr, 80)
        );
    }

    /// Every stats line printed by `--stats-json -`, parsed.
    pub fn stats(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stats line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// The final `"event":"complete"` stats object; panics if there is none
    /// or it is not the last line.
    pub fn final_stats(&self) -> Value {
        let stats = self.stats();
        let last = stats.last().cloned().unwrap_or_else(|| {
            panic!(
                "no stats lines on stdout; stderr:\n{}",
                tail(&self.stderr, 40)
            )
        });
        assert_eq!(
            last["event"], "complete",
            "the last stats line is not the completion event: {last}"
        );
        last
    }

    /// Asserts the log mentions `needle` (case-insensitive), to tie a
    /// disconnect to its logged reason.
    pub fn stderr_mentions(&self, needle: &str) -> bool {
        self.stderr.to_lowercase().contains(&needle.to_lowercase())
    }
}

//! Runs the real `actorrent` binary for tests that talk to it while it runs
//! (`seed`, `download --seed-after`): stdout is read line by line as it is
//! written, so a test can take the listen port from the first
//! `--stats-json -` object and watch the state change; stderr is kept for
//! failure messages. The guard kills the process when dropped, so a failing
//! assertion never leaks a client.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::tail;

/// A running `actorrent` with `--stats-json -`.
pub struct Actorrent {
    /// What the test calls it in failure messages.
    pub name: String,
    child: Child,
    /// Stdout lines so far, with when each was read (a Mutex is fine in
    /// test scaffolding).
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

pub fn bin() -> std::ffi::OsString {
    // As in `client.rs`: ACTORRENT_TEST_BIN runs these tests against
    // another build with the same command line.
    std::env::var_os("ACTORRENT_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_actorrent").into())
}

impl Actorrent {
    /// Starts `actorrent <args> --stats-json -`.
    pub fn spawn(name: &str, args: &[&std::ffi::OsStr]) -> Actorrent {
        Self::spawn_env(name, args, &[])
    }

    /// [`Actorrent::spawn`] with environment variables. The DHT is off
    /// (`ACTORRENT_DHT_ENABLED=false`: tests stay on 127.0.0.1 and its
    /// default bootstrap routers are on the internet) unless `env` turns it
    /// on.
    pub fn spawn_env(name: &str, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Actorrent {
        Self::spawn_cmd(name, Command::new(bin()), args, env)
    }

    /// As [`spawn`](Self::spawn), inside network namespace `netns` (`ip
    /// netns exec` execs the client, so the guard's process is the client).
    pub fn spawn_in(netns: &str, name: &str, args: &[&std::ffi::OsStr]) -> Actorrent {
        Self::spawn_in_env(netns, name, args, &[])
    }

    /// [`spawn_in`](Self::spawn_in) with environment variables.
    pub fn spawn_in_env(
        netns: &str,
        name: &str,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Actorrent {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(bin());
        Self::spawn_cmd(name, cmd, args, env)
    }

    fn spawn_cmd(
        name: &str,
        mut cmd: Command,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Actorrent {
        cmd.args(args).args(["--stats-json", "-"]);
        cmd.env("ACTORRENT_DHT_ENABLED", "false");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            // Disconnect reasons are logged at debug or info; keep them so a
            // failing test shows why (and a test can match on them).
            cmd.env("RUST_LOG", "debug");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn actorrent");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = Arc::clone(&lines);
        let r1 = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push((Instant::now(), line));
            }
        });
        let mut err = child.stderr.take().unwrap();
        let e = Arc::clone(&stderr);
        let r2 = std::thread::spawn(move || {
            let mut chunk = [0u8; 16 * 1024];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut e = e.lock().unwrap();
                // Keep the last 4 MiB: a debug log of a long run is large,
                // and only its end explains a failure.
                if e.len() > 8 << 20 {
                    e.drain(..4 << 20);
                }
                e.extend_from_slice(&chunk[..n]);
            }
        });
        Actorrent {
            name: name.to_owned(),
            child,
            lines,
            stderr,
            readers: vec![r1, r2],
        }
    }

    /// `actorrent seed <torrent> --data <dir> --listen 127.0.0.1:0
    /// <extra>...`.
    pub fn seed(name: &str, torrent: &Path, data: &Path, extra: &[&str]) -> Actorrent {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "seed".as_ref(),
            torrent.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        Actorrent::spawn(name, &args)
    }

    /// `actorrent download <torrent> --output <out> --listen 127.0.0.1:0`,
    /// a `--peer` for each of `peers`, then `<extra>...`.
    pub fn download(
        name: &str,
        torrent: &Path,
        out: &Path,
        peers: &[SocketAddr],
        extra: &[&str],
    ) -> Actorrent {
        Self::download_env(name, torrent, out, peers, extra, &[])
    }

    /// [`Actorrent::download`] with `env` added to its environment.
    pub fn download_env(
        name: &str,
        torrent: &Path,
        out: &Path,
        peers: &[SocketAddr],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Actorrent {
        let peers: Vec<String> = peers.iter().map(SocketAddr::to_string).collect();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "download".as_ref(),
            torrent.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ];
        for p in &peers {
            args.push("--peer".as_ref());
            args.push(p.as_ref());
        }
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        Actorrent::spawn_env(name, &args, env)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every stats object printed so far.
    pub fn stats(&self) -> Vec<Value> {
        self.stats_with_times()
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Every stats object printed so far, with when the test read it (for
    /// ordering against the test's own events).
    pub fn stats_with_times(&self) -> Vec<(Instant, Value)> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(at, l)| {
                let v = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stats line is not JSON ({e}): {l}"));
                (*at, v)
            })
            .collect()
    }

    /// The latest stats object, if any.
    pub fn last_stats(&self) -> Option<Value> {
        self.stats().pop()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(
            &String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())),
            n,
        )
    }

    /// The whole log kept so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The log lines that mention 127.0.0.1:`port` (one connection's
    /// story, colour codes removed), for failure messages.
    pub fn log_about(&self, port: u16) -> String {
        let needle = format!("127.0.0.1:{port}");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(strip_ansi)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics with the process's output.
    pub fn fail(&self, why: &str) -> ! {
        // Copy out first: panicking while holding the lock would poison it
        // for the other threads of the test.
        let out = tail(
            &self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            10,
        );
        let err = self.log_tail(60);
        panic!(
            "{}: {why}\nstdout tail:\n{out}\nstderr tail:\n{err}",
            self.name
        )
    }

    /// Waits until a stats object satisfies `cond` and returns it; panics
    /// with the logs if the process exits or `timeout` passes first.
    pub fn wait_stats(
        &mut self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            let stats = self.stats();
            if let Some(v) = stats[seen..].iter().find(|v| cond(v)) {
                return v.clone();
            }
            seen = stats.len();
            if !self.running() {
                // Read what was written before the exit.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(v) = self.stats()[seen..].iter().find(|v| cond(v)) {
                    return v.clone();
                }
                self.fail(&format!("exited before {what}"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no {what} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port from the first stats object (written once the listener is
    /// bound).
    pub fn listen_port(&mut self, timeout: Duration) -> u16 {
        let first = self.wait_stats(timeout, "first stats line", |_| true);
        let port = first["listen_port"]
            .as_u64()
            .unwrap_or_else(|| self.fail(&format!("no listen_port in {first}")));
        if port == 0 {
            self.fail(&format!("listen_port 0 in the first stats line: {first}"));
        }
        port as u16
    }

    /// Peak resident set (VmHWM) from /proc, in bytes.
    pub fn vm_hwm(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Asserts the peak resident set (VmHWM) was read and is under `bound`
    /// bytes.
    pub fn assert_peak_rss_under(&self, bound: u64) {
        let peak = self.vm_hwm();
        assert!(peak > 0, "no VmHWM read for pid {}", self.pid());
        assert!(
            peak < bound,
            "peak RSS {} MiB exceeds {} MiB",
            peak >> 20,
            bound >> 20
        );
    }

    /// User + system CPU time so far, in clock ticks (from /proc/<pid>/stat).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/<pid>/stat");
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let rest = &stat[stat.rfind(')').expect("stat has a comm") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// Sends SIGINT (what Ctrl-C does).
    pub fn interrupt(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -INT {}", self.pid());
    }

    /// Waits up to `timeout` for the exit; kills the process and panics with
    /// its logs on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for actorrent") {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.fail(&format!("did not exit within {timeout:?}; killed"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Interrupts the process and asserts it exits 0 within `timeout`.
    pub fn stop(&mut self, timeout: Duration) {
        self.interrupt();
        let status = self.wait_exit(timeout);
        if !status.success() {
            self.fail(&format!("exited with {status} after SIGINT"));
        }
    }
}

impl Drop for Actorrent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `s` without ANSI colour sequences (tracing colours its output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `kB` field of /proc/<pid>/status (0 if absent).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Asserts a stats object has every field the CLI spec lists.
pub fn assert_stats_fields(v: &Value) {
    for field in [
        "event",
        "state",
        "error",
        "bytes_down",
        "bytes_up",
        "rate_down",
        "rate_up",
        "peers",
        "pieces_done",
        "pieces_total",
        "hash_failures",
        "banned_peers",
        "protocol_errors",
        "protocol_oddities",
        "bytes_wasted",
        "listen_port",
    ] {
        assert!(v.get(field).is_some(), "stats object lacks {field}: {v}");
    }
}

//! libtorrent on loopback through `lt_peer.py` (run with /usr/bin/python3,
//! whose python3-libtorrent the tests need): a seed that reports its port,
//! and leechers that report when they are done. Guards kill the Python
//! process when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The helper script, next to this file. Found from the including crate's
/// directory upwards, so member crates can include this module by `#[path]`.
pub fn script() -> std::path::PathBuf {
    let rel = "tests/support/lt_peer.py";
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join(rel))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{rel} not found above {}", env!("CARGO_MANIFEST_DIR")))
}

/// A running `lt_peer.py`: its stdout lines arrive on a channel, its
/// stderr is kept for failure messages.
pub struct LtPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl LtPeer {
    /// Starts `lt_peer.py <mode> --torrent <t> --save-path <dir> <extra>`.
    pub fn spawn(mode: &str, torrent: &Path, save: &Path, extra: &[String]) -> LtPeer {
        let mut args: Vec<std::ffi::OsString> =
            vec![mode.into(), "--torrent".into(), torrent.into()];
        args.extend(["--save-path".into(), save.into()]);
        args.extend(extra.iter().map(Into::into));
        Self::start(&args)
    }

    /// Starts `lt_peer.py leech --magnet <uri> --save-path <dir> <extra>`:
    /// libtorrent fetches the metadata from its peers (BEP 9) first.
    pub fn spawn_magnet(magnet: &str, save: &Path, extra: &[String]) -> LtPeer {
        let mut args: Vec<std::ffi::OsString> =
            vec!["leech".into(), "--magnet".into(), magnet.into()];
        args.extend(["--save-path".into(), save.into()]);
        args.extend(extra.iter().map(Into::into));
        Self::start(&args)
    }

    fn start(args: &[std::ffi::OsString]) -> LtPeer {
        let mut child = Command::new("/usr/bin/python3")
            .arg(script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/python3 (python3-libtorrent)");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        LtPeer {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest.
    /// Panics with libtorrent's stderr if it exits or `timeout` passes.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "libtorrent exited ({status:?}) before `{prefix}`:\n{}",
                        self.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "libtorrent printed no `{prefix}` within {timeout:?}:\n{}",
                    self.stderr_text()
                );
            }
        }
    }

    /// Starts a libtorrent seed of `torrent` (payload under `save`) and
    /// returns it with its port, once it has rechecked the payload.
    pub fn seed(torrent: &Path, save: &Path) -> (LtPeer, u16) {
        let mut p = LtPeer::spawn("seed", torrent, save, &["--timeout".into(), "300".into()]);
        let port = p
            .expect_line("PORT ", Duration::from_secs(120))
            .parse()
            .expect("PORT line");
        (p, port)
    }

    /// Closes stdin (the polite stop) and waits for the exit.
    pub fn finish(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// Waits for the process to exit on its own; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }

    /// [`LtPeer::wait`], then a panic with libtorrent's stderr unless it
    /// exited with 0.
    pub fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait(timeout);
        assert!(
            status.is_some_and(|s| s.success()),
            "libtorrent exited with {status:?}:\n{}",
            self.stderr_text()
        );
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// libtorrent's stderr (waits for the process to have exited).
    pub fn stderr_text(&mut self) -> String {
        self.kill();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for LtPeer {
    fn drop(&mut self) {
        self.kill();
    }
}

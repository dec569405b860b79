//! A real opentracker on 127.0.0.1 for tests and benchmarks, killed on
//! drop. One file shared by the actors tracker tests, the whole-client tests
//! (`tests/support/tracker.rs`) and the tracker benchmark, through
//! `#[path]`: it needs only std and tempfile.
//!
//! The Debian build serves whitelisted info-hashes only, and it chroots into
//! its `-d` directory before reading the list, so the list lives there under
//! a relative name and is loaded by a thread after the sockets open: the
//! guard is returned only once opentracker answers for the first hash.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running opentracker; HTTP (TCP) and UDP share one port number.
pub struct OpenTracker {
    /// The port of both its HTTP and UDP sides.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OpenTracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpenTracker {
    /// Starts opentracker serving `hashes` (at least one).
    pub fn start(hashes: &[[u8; 20]]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let list: String = hashes
            .iter()
            .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
            .collect();
        std::fs::write(dir.path().join("whitelist"), list).unwrap();
        let first = hashes.first().copied().unwrap_or([0; 20]);
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new("opentracker")
                .args(["-i", "127.0.0.1", "-p", &port.to_string()])
                .args(["-P", &port.to_string(), "-w", "whitelist", "-d"])
                .arg(dir.path())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("opentracker is installed (scripts/test.sh installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile; try another
                }
                // `stopped` is answered even for unlisted torrents, so the
                // probe peer (port 1) starts, and then leaves at once so it
                // is never handed out.
                let started = announce(port, &first, "started");
                let _ = announce(port, &first, "stopped");
                if started.contains("interval") && !started.contains("failure") {
                    return OpenTracker {
                        port,
                        child,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("opentracker did not start");
    }

    /// The HTTP announce URL.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// The UDP announce URL.
    pub fn udp_url(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.port)
    }
}

/// A port free on both TCP and UDP just now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for opentracker");
}

/// An HTTP announce for `ih` as a peer on port 1; the answer as text.
fn announce(port: u16, ih: &[u8; 20], event: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let ih: String = ih.iter().map(|b| format!("%{b:02X}")).collect();
    let req = format!(
        "GET /announce?info_hash={ih}&peer_id=-PROBE-0000000000000&port=1&uploaded=0&downloaded=0&left=0&compact=1&event={event} HTTP/1.0\r\n\r\n"
    );
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp).into_owned()
}

//! Our DHT against a real one: libtorrent's (python3-libtorrent, run by
//! `dht_support/lt_dht.py`) joins a DHT of 64 of our nodes on 127.0.0.1 through
//! one of them. Our nodes find the peer libtorrent announces; libtorrent
//! accepts the announce of ours (a token it issued, bound to our address)
//! and its `dht_get_peers` finds the peer our nodes store.

mod dht_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use actors::dht::NodeId;
use dht_support::{announce, swarm, wait_stats};
use protocol::metainfo::InfoHash;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);

/// The libtorrent node: commands go to its stdin, its stdout lines come
/// back on a channel; killed when dropped.
struct LtDht {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std_mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl LtDht {
    fn start(bootstrap: SocketAddr, save: &Path) -> LtDht {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dht_support/lt_dht.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg("--bootstrap")
            .arg(bootstrap.to_string())
            .arg("--timeout")
            .arg("120")
            .arg("--save-path")
            .arg(save)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/python3 (python3-libtorrent)");
        let (tx, lines) = std_mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        LtDht {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").expect("libtorrent reads commands");
        stdin.flush().expect("flush");
    }

    /// The next line starting with `prefix` (its rest), within `limit`.
    fn line(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        self.line_where(prefix, limit, |_| true)
    }

    /// The next line starting with `prefix` whose rest satisfies `pred`.
    fn line_where(
        &mut self,
        prefix: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix).map(str::trim) {
                        if pred(rest) {
                            return Some(rest.to_owned());
                        }
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => return None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("libtorrent exited:\n{}", self.stderr_text())
                }
            }
        }
    }

    fn stderr_text(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for LtDht {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(b: &[u8; 20]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_and_our_dht_find_each_others_peers() {
    let dir = tempfile::tempdir().unwrap();
    let members = swarm(64, dir.path(), |_| {}).await;
    for m in &members {
        wait_stats(&m.handle, LIMIT, "joined", |s| {
            s.nodes >= 8 && s.lookups_running == 0
        })
        .await;
    }

    let lt_dir = tempfile::tempdir().unwrap();
    let mut lt = LtDht::start(members[0].addr(), lt_dir.path());
    let lt_port: u16 = lt.line("PORT ", LIMIT).expect("PORT").parse().unwrap();
    let lt_id = unhex(&lt.line("ID ", LIMIT).expect("ID"));
    let lt_addr = SocketAddrV4::new([127, 0, 0, 1].into(), lt_port);

    // libtorrent's routing table fills from ours.
    let deadline = Instant::now() + LIMIT;
    loop {
        lt.send("nodes");
        let n: usize = lt
            .line("NODES ", Duration::from_secs(5))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if n >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "libtorrent's table has {n} nodes"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // 1. libtorrent announces a torrent (on its listen port); our nodes
    // find it.
    let ih1 = [0x31; 20];
    lt.send(&format!("add {}", hex(&ih1)));
    let want = lt_addr;
    let deadline = Instant::now() + LIMIT;
    loop {
        let s = members[3].handle.get_peers(InfoHash(ih1)).await.unwrap();
        if s.peers.contains(&want) {
            break;
        }
        if Instant::now() >= deadline {
            for m in &members {
                eprintln!("{:?}", m.handle.stats().await.unwrap());
            }
            panic!(
                "our get_peers never found libtorrent's peer: {s:?}\n{}",
                lt.stderr_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut stored = 0;
    for m in &members {
        stored += m.handle.stats().await.unwrap().announces_stored;
    }
    assert!(
        stored >= 1,
        "libtorrent's announce_peer was taken by our nodes"
    );

    // libtorrent is in our tables (it answered our pings and queries).
    let s = members[0].handle.find_node(NodeId(lt_id)).await.unwrap();
    assert_eq!(
        s.closest.first().map(|a| (a.id, a.addr)),
        Some((NodeId(lt_id), lt_addr)),
        "a find_node of libtorrent's id ends at libtorrent: {s:?}"
    );

    // 2. Our node announces under libtorrent's own id (so libtorrent is the
    // closest node and must receive the announce) and under another
    // info-hash; libtorrent accepts the first and finds the second.
    let (tx, _rx) = mpsc::channel(8);
    members[4]
        .handle
        .register(InfoHash(lt_id), Some(7777), tx)
        .await
        .unwrap();
    // (libtorrent also reports its own announce of its torrent to itself.)
    let announced = lt
        .line_where("ANNOUNCED ", LIMIT, |l| l.starts_with(&hex(&lt_id)))
        .expect("libtorrent took our announce");
    assert_eq!(announced, format!("{} 127.0.0.1 7777", hex(&lt_id)));

    let ih3 = [0x33; 20];
    let _rx3 = announce(&members[4].handle, InfoHash(ih3), 7777, 8).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        lt.send(&format!("get {}", hex(&ih3)));
        if let Some(peers) = lt.line("PEERS ", Duration::from_secs(10)) {
            if peers.starts_with(&hex(&ih3)) && peers.contains("127.0.0.1:7777") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "libtorrent never found our peer");
    }
    // Nothing libtorrent sent was malformed by our codec's rules.
    for m in &members {
        let s = m.handle.stats().await.unwrap();
        let bad: u64 = s
            .dropped
            .iter()
            .filter(|(k, _)| **k != "unexpected_response")
            .map(|(_, v)| *v)
            .sum();
        assert_eq!(bad, 0, "{:?}", s.dropped);
    }
}

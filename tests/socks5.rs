//! `--proxy socks5://...` (issue 15): every peer connection and HTTP
//! announce goes through a real SOCKS5 server (Debian's `microsocks`, with
//! a username and password), UDP trackers and the DHT are refused rather
//! than leaked, and a wrong password is a clear, counted connect failure.
//!
//! Two network namespaces this test creates and removes, addresses from
//! 198.18.0.0/15 only:
//!
//! ```text
//!   client ns: c 198.18.7.1/24 ──veth── p 198.18.7.2/24 :proxy ns
//!                                        microsocks on 198.18.7.2:1080
//!                                        opentracker on 127.0.0.1:6969
//!                                        actorrent seed on 127.0.0.1:6881
//! ```
//!
//! The tracker and the seed listen on the proxy namespace's loopback, so
//! the client, whose own 127.0.0.1 has neither, reaches them only by
//! asking the proxy for "127.0.0.1": a completed download is proof that
//! every connection went through it, and microsocks' log names each one.
//!
//! It needs root and `ip netns`; where a namespace cannot be created it
//! prints why and passes (as `tests/bind_netns.rs`).

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::netns::{self, in_ns, ip};
use support::process::Actorrent;
use support::torrent::TestTorrent;

const START: Duration = Duration::from_secs(60);
const DONE: Duration = Duration::from_secs(120);
const HTTP_TRACKER: &str = "http://127.0.0.1:6969/announce";
const UDP_TRACKER: &str = "udp://127.0.0.1:6969/announce";
const PROXY: &str = "198.18.7.2:1080";

/// The two namespaces and the servers in the proxy's; all removed when
/// dropped.
struct Net {
    client: String,
    proxy: String,
    servers: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Net {
    fn create() -> Option<Net> {
        let pid = std::process::id();
        let net = Net {
            client: format!("ars{pid}c"),
            proxy: format!("ars{pid}p"),
            servers: Vec::new(),
            _dir: tempfile::tempdir().unwrap(),
        };
        for ns in [&net.client, &net.proxy] {
            // A half-made pair is removed by `Drop`.
            if !netns::add(ns) {
                return None;
            }
        }
        let (c, p) = (net.client.as_str(), net.proxy.as_str());
        ip(&[
            "link", "add", "c", "netns", c, "type", "veth", "peer", "name", "p", "netns", p,
        ]);
        in_ns(c, &["ip", "addr", "add", "198.18.7.1/24", "dev", "c"]);
        in_ns(p, &["ip", "addr", "add", "198.18.7.2/24", "dev", "p"]);
        in_ns(c, &["ip", "link", "set", "c", "up"]);
        in_ns(p, &["ip", "link", "set", "p", "up"]);
        Some(net)
    }

    /// Starts `cmd` in the proxy namespace; its stdout and stderr go to
    /// `log` in the test's directory.
    fn serve(&mut self, cmd: &[&str], log: &str) -> std::path::PathBuf {
        let path = self._dir.path().join(log);
        let file = std::fs::File::create(&path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.proxy])
            .args(cmd)
            .current_dir(self._dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} (scripts/test.sh installs it)", cmd[0]));
        self.servers.push(child);
        path
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client, &self.proxy] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn read(path: &std::path::Path) -> String {
    let mut s = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    s
}

#[test]
fn every_connection_goes_through_the_proxy_and_udp_is_refused() {
    let Some(mut net) = Net::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        "socks",
        64 * 1024,
        &[("a.bin", 2 << 20), ("b.bin", 55_555)],
        1928,
    );
    // The seed announces to the HTTP tracker only; the client's copy also
    // lists the UDP one, which the proxy must not let it use.
    t.set_announce(HTTP_TRACKER);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let whitelist: String = t.info_hash.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(net._dir.path().join("whitelist"), whitelist + "\n").unwrap();
    let proxy_log = net.serve(
        &[
            "microsocks",
            "-i",
            "198.18.7.2",
            "-p",
            "1080",
            "-u",
            "alice",
            "-P",
            "s3cret",
        ],
        "microsocks.log",
    );
    let tracker_dir = net._dir.path().to_str().unwrap().to_owned();
    net.serve(
        &[
            "opentracker",
            "-i",
            "127.0.0.1",
            "-p",
            "6969",
            "-P",
            "6969",
            "-w",
            "whitelist",
            "-d",
            &tracker_dir,
        ],
        "opentracker.log",
    );
    let seed_args: Vec<&std::ffi::OsStr> = vec![
        "seed".as_ref(),
        t.path.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:6881".as_ref(),
    ];
    let mut seed = Actorrent::spawn_in(&net.proxy, "seed", &seed_args);
    seed.wait_stats(START, "the seed announced", |v| {
        v["state"] == "seeding"
            && v["trackers"][HTTP_TRACKER]["announces_sent"]
                .as_u64()
                .is_some_and(|n| n >= 1)
            && v["trackers"][HTTP_TRACKER]["announces_failed"] == 0
    });

    let client_torrent = dir.path().join("client.torrent");
    std::fs::copy(&t.path, &client_torrent).unwrap();
    let ct = TestTorrent {
        path: client_torrent.clone(),
        ..t.clone()
    };
    // The UDP tracker first: it is refused (counted as a failure naming the
    // proxy) and the walk goes on to the HTTP one.
    ct.set_announce_list(&[&[UDP_TRACKER], &[HTTP_TRACKER]]);

    // A wrong password: the proxy refuses, the failure says so, nothing
    // arrives and nothing goes around the proxy.
    let out = dir.path().join("out-wrong");
    let wrong = format!("socks5://alice:wrong@{PROXY}");
    let args: Vec<&std::ffi::OsStr> = vec![
        "download".as_ref(),
        client_torrent.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--peer".as_ref(),
        "127.0.0.1:6881".as_ref(),
        "--proxy".as_ref(),
        wrong.as_ref(),
    ];
    let mut d = Actorrent::spawn_in(&net.client, "wrong password", &args);
    let s = d.wait_stats(START, "a refused connect", |v| {
        v["connections"]["connect_failures"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    assert_eq!(s["bytes_down"], 0, "{s}");
    assert!(
        d.log().contains("SOCKS5 proxy socks5://198.18.7.2:1080"),
        "the failure does not name the proxy:\n{}",
        d.log_tail(30)
    );
    assert!(
        !d.log().contains("wrong"),
        "the password reached the log:\n{}",
        d.log_tail(30)
    );
    d.stop(Duration::from_secs(30));

    // The right password: the tracker and the seed, both only on the proxy
    // namespace's loopback, are reached through the proxy.
    let out = dir.path().join("out");
    let good = format!("socks5://alice:s3cret@{PROXY}");
    let args: Vec<&std::ffi::OsStr> = vec![
        "download".as_ref(),
        client_torrent.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--proxy".as_ref(),
        good.as_ref(),
        // Not the seed's port: both announce from the proxy's 127.0.0.1,
        // and one address:port is one peer to the tracker.
        "--listen".as_ref(),
        "0.0.0.0:7777".as_ref(),
        // Bound to the link the proxy is on: the proxied connections
        // (reqwest's to the proxy included) leave by it.
        "--bind-interface".as_ref(),
        "c".as_ref(),
    ];
    // The DHT on, to see it refused.
    let mut d = Actorrent::spawn_in_env(
        &net.client,
        "through the proxy",
        &args,
        &[("ACTORRENT_DHT_ENABLED", "true")],
    );
    let status = d.wait_exit(DONE);
    if !status.success() {
        d.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(&out);
    let last = d.last_stats().expect("stats lines");
    assert_eq!(
        last["network"]["proxy"], "socks5://198.18.7.2:1080",
        "{last}"
    );
    assert_eq!(last["network"]["dht"], serde_json::Value::Null, "{last}");
    let trackers = &last["trackers"];
    assert!(
        trackers[HTTP_TRACKER]["announces_sent"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{trackers}"
    );
    assert_eq!(trackers[HTTP_TRACKER]["announces_failed"], 0, "{trackers}");
    let udp_error = trackers[UDP_TRACKER]["last_error"].as_str().unwrap_or("");
    assert!(
        udp_error.contains("a SOCKS5 proxy (socks5://198.18.7.2:1080) is set"),
        "the UDP tracker was not refused: {trackers}"
    );
    assert!(
        d.log().contains("DHT off: a SOCKS5 proxy is set"),
        "the DHT was not refused:\n{}",
        d.log_tail(30)
    );
    let log = read(&proxy_log);
    for target in ["127.0.0.1:6969", "127.0.0.1:6881"] {
        assert!(
            log.contains(&format!("connected to {target}")),
            "microsocks never connected to {target}:\n{log}"
        );
    }

    // Bound to an interface the proxy is not reachable by: the HTTP
    // announce fails too (reqwest's socket to the proxy is bound as well),
    // and the proxy hears nothing more.
    let before = read(&proxy_log).lines().count();
    let out = dir.path().join("out-lo");
    let args: Vec<&std::ffi::OsStr> = vec![
        "download".as_ref(),
        t.path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--proxy".as_ref(),
        good.as_ref(),
        "--bind-interface".as_ref(),
        "lo".as_ref(),
        "--listen".as_ref(),
        "0.0.0.0:7778".as_ref(),
    ];
    let mut d = Actorrent::spawn_in(&net.client, "proxied, bound to lo", &args);
    let s = d.wait_stats(START, "a failed HTTP announce", |v| {
        v["trackers"][HTTP_TRACKER]["announces_failed"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    assert_eq!(s["bytes_down"], 0, "{s}");
    d.stop(Duration::from_secs(30));
    assert_eq!(
        read(&proxy_log).lines().count(),
        before,
        "the proxy was reached from a client bound to lo:\n{}",
        read(&proxy_log)
    );
    seed.stop(Duration::from_secs(30));
}

//! `--bind-interface` and its kill switch (issue 15), in two network
//! namespaces this test creates and removes, with addresses from
//! 198.18.0.0/15 only:
//!
//! ```text
//!   client ns: c1 198.18.1.1/24 ──veth── s1 198.18.1.2/24 :seed ns
//!              c2 198.18.2.1/24 ──veth── s2 198.18.2.2/24
//!   seed on 198.19.0.1 (lo of the seed ns); in the client ns the route to
//!   it via c2 has metric 10, via c1 metric 100.
//! ```
//!
//! An unbound download takes the preferred route (c2: the control). Bound
//! to c1 it leaves only through c1 (c2's transmit counter does not move).
//! With c1 down, the bound client sends nothing through c2 and downloads
//! nothing (its connects fail and are counted); once c1 is up again with
//! its route, it finishes. `--bind-address` with a secondary address of
//! c2 makes the seed see connections from that address. IPv6 is off in both namespaces, so no neighbour
//! discovery moves the counters.
//!
//! It needs root and `ip netns`; where a namespace cannot be created it
//! prints why and passes (as `tests/lab.rs`).

mod support;

use std::process::Command;
use std::time::Duration;

use support::netns::{self, in_ns, ip};
use support::process::Actorrent;
use support::torrent::TestTorrent;

const START: Duration = Duration::from_secs(60);
const DONE: Duration = Duration::from_secs(120);
const SEED_IP: &str = "198.19.0.1";

/// The two namespaces; removed (with their veths) when dropped.
struct Net {
    client: String,
    seed: String,
}

impl Net {
    /// `tag` keeps the namespaces of tests running side by side apart.
    fn create(tag: &str) -> Option<Net> {
        let pid = std::process::id();
        let net = Net {
            client: format!("arb{pid}{tag}c"),
            seed: format!("arb{pid}{tag}s"),
        };
        for ns in [&net.client, &net.seed] {
            // A half-made pair is removed by `Drop`.
            if !netns::add(ns) {
                return None;
            }
            in_ns(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            );
        }
        let (c, s) = (net.client.as_str(), net.seed.as_str());
        for (i, (cdev, sdev)) in [("c1", "s1"), ("c2", "s2")].into_iter().enumerate() {
            ip(&[
                "link", "add", cdev, "netns", c, "type", "veth", "peer", "name", sdev, "netns", s,
            ]);
            let n = i + 1;
            in_ns(
                c,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("198.18.{n}.1/24"),
                    "dev",
                    cdev,
                ],
            );
            in_ns(
                s,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("198.18.{n}.2/24"),
                    "dev",
                    sdev,
                ],
            );
            in_ns(c, &["ip", "link", "set", cdev, "up"]);
            in_ns(s, &["ip", "link", "set", sdev, "up"]);
        }
        in_ns(
            s,
            &["ip", "addr", "add", &format!("{SEED_IP}/32"), "dev", "lo"],
        );
        in_ns(
            c,
            &[
                "ip",
                "route",
                "add",
                SEED_IP,
                "via",
                "198.18.2.2",
                "dev",
                "c2",
                "metric",
                "10",
            ],
        );
        net.route_c1();
        Some(net)
    }

    /// The route to the seed through c1 (the kernel drops it when c1 goes
    /// down, as a VPN's routes go with its tunnel).
    fn route_c1(&self) {
        in_ns(
            &self.client,
            &[
                "ip",
                "route",
                "add",
                SEED_IP,
                "via",
                "198.18.1.2",
                "dev",
                "c1",
                "metric",
                "100",
            ],
        );
    }

    fn link(&self, dev: &str, state: &str) {
        in_ns(&self.client, &["ip", "link", "set", dev, state]);
    }

    /// Packets the client namespace sent through `dev`.
    fn tx_packets(&self, dev: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client, "cat"])
            .arg(format!("/sys/class/net/{dev}/statistics/tx_packets"))
            .output()
            .expect("read tx_packets");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("tx_packets of {dev}: {out:?}"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.client, &self.seed] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn download_args<'a>(
    t: &'a TestTorrent,
    out: &'a std::path::Path,
    extra: &'a [&'a str],
) -> Vec<&'a std::ffi::OsStr> {
    let mut a: Vec<&std::ffi::OsStr> = vec![
        "download".as_ref(),
        t.path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--peer".as_ref(),
        "198.19.0.1:6881".as_ref(),
    ];
    a.extend(extra.iter().map(std::ffi::OsStr::new));
    a
}

/// Runs a download in the client namespace to completion.
fn download(net: &Net, t: &TestTorrent, out: &std::path::Path, extra: &[&str]) {
    let mut d = Actorrent::spawn_in(&net.client, "leecher", &download_args(t, out, extra));
    let status = d.wait_exit(DONE);
    if !status.success() {
        d.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(out);
}

/// `actorrent seed` of `t` from `data` on the seed namespace's 198.19.0.1.
fn start_seed(net: &Net, t: &TestTorrent, data: &std::path::Path) -> Actorrent {
    let args: Vec<&std::ffi::OsStr> = vec![
        "seed".as_ref(),
        t.path.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "198.19.0.1:6881".as_ref(),
    ];
    Actorrent::spawn_in(&net.seed, "seed", &args)
}

#[test]
fn bound_traffic_leaves_only_through_the_interface_and_stops_when_it_is_down() {
    let Some(net) = Net::create("p") else { return };
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        "bind",
        64 * 1024,
        &[("a.bin", 3 << 20), ("b.bin", 77_777)],
        171,
    );
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = start_seed(&net, &t, &data);
    seed.listen_port(START);
    seed.wait_stats(START, "seeding", |v| v["state"] == "seeding");

    // Control: unbound, the preferred route is c2.
    let (c1, c2) = (net.tx_packets("c1"), net.tx_packets("c2"));
    download(&net, &t, &dir.path().join("out-unbound"), &[]);
    assert!(
        net.tx_packets("c2") > c2 + 50,
        "the unbound download did not use c2"
    );
    assert_eq!(net.tx_packets("c1"), c1, "the unbound download used c1");

    // Bound to c1: only c1.
    let (c1, c2) = (net.tx_packets("c1"), net.tx_packets("c2"));
    download(
        &net,
        &t,
        &dir.path().join("out-bound"),
        &["--bind-interface", "c1"],
    );
    assert!(
        net.tx_packets("c1") > c1 + 50,
        "the bound download did not use c1"
    );
    assert_eq!(
        net.tx_packets("c2"),
        c2,
        "the bound download leaked through c2"
    );

    // --bind-address: a second address on c2, which the OS would not pick
    // (the first one is primary); the seed sees connections from it.
    in_ns(
        &net.client,
        &["ip", "addr", "add", "198.18.2.3/24", "dev", "c2"],
    );
    assert!(
        !seed.log().contains("198.18.2.3:"),
        "198.18.2.3 was used before it was bound"
    );
    download(
        &net,
        &t,
        &dir.path().join("out-bound-address"),
        &["--bind-address", "198.18.2.3"],
    );
    assert!(
        seed.log().contains("198.18.2.3:"),
        "the seed saw no connection from the bound address:\n{}",
        seed.log_tail(40)
    );

    // Kill switch: c1 down, nothing leaves by c2 and nothing arrives.
    let config = dir.path().join("retry.toml");
    std::fs::write(
        &config,
        "reconnect_backoff_ms = 200\nreconnect_attempts = 50\n",
    )
    .unwrap();
    net.link("c1", "down");
    let c2 = net.tx_packets("c2");
    let out = dir.path().join("out-killswitch");
    let cfg = config.to_str().unwrap();
    let mut d = Actorrent::spawn_in(
        &net.client,
        "bound leecher, c1 down",
        &download_args(&t, &out, &["--bind-interface", "c1", "--config", cfg]),
    );
    let s = d.wait_stats(START, "two failed connects", |v| {
        v["connections"]["connect_failures"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    });
    assert_eq!(s["bytes_down"], 0, "{s}");
    assert_eq!(
        net.tx_packets("c2"),
        c2,
        "traffic left through c2 while c1 was down"
    );
    assert!(
        d.log().contains("bound to interface c1"),
        "the failed connects do not name the interface:\n{}",
        d.log_tail(30)
    );
    // c1 comes back: the retries get through.
    net.link("c1", "up");
    net.route_c1();
    let status = d.wait_exit(DONE);
    if !status.success() {
        d.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(&out);
    assert_eq!(
        net.tx_packets("c2"),
        c2,
        "the resumed download leaked through c2"
    );
    seed.stop(Duration::from_secs(30));
}

/// A DNS server for the lab: answers every A query with `198.19.0.1`
/// (AAAA and the rest with no records) and logs each name asked.
const DNS_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.19.0.1", 53))
log = open(sys.argv[1], "a", buffering=1)
while True:
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while i < len(q) and q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
        i += q[i] + 1
    if i + 5 > len(q):
        continue
    qtype = q[i + 1:i + 3]
    a = qtype == b"\x00\x01"
    log.write("%s %s %s\n" % (".".join(labels), "A" if a else "other", peer[0]))
    head = q[:2] + b"\x81\x80" + q[4:6] + (b"\x00\x01" if a else b"\x00\x00") + b"\x00\x00\x00\x00"
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc6\x13\x00\x01" if a else b""
    s.sendto(head + q[12:i + 5] + answer, peer)
"#;

const TRACKER_HOST: &str = "tracker.arlab";

/// Each namespace's `/etc/resolv.conf` (which `ip netns exec` mounts from
/// `/etc/netns/NS/`), removed when dropped.
struct Resolv(Vec<std::path::PathBuf>);

impl Resolv {
    fn point_at_the_lab(net: &Net) -> Resolv {
        let dirs: Vec<_> = [&net.client, &net.seed]
            .into_iter()
            .map(|ns| std::path::Path::new("/etc/netns").join(ns))
            .collect();
        for d in &dirs {
            std::fs::create_dir_all(d).expect("create /etc/netns/NS");
            std::fs::write(
                d.join("resolv.conf"),
                "nameserver 198.19.0.1\noptions timeout:1 attempts:2\n",
            )
            .unwrap();
        }
        Resolv(dirs)
    }
}

impl Drop for Resolv {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A child process in a namespace, killed when dropped.
struct NsChild(std::process::Child);

impl NsChild {
    fn spawn(ns: &str, program: &str, args: &[&str], cwd: &std::path::Path) -> NsChild {
        NsChild(
            Command::new("ip")
                .args(["netns", "exec", ns, program])
                .args(args)
                .current_dir(cwd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{program}: {e}")),
        )
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tracker-only download (no `--peer`) bound to c1.
fn bound_to_c1<'a>(t: &'a TestTorrent, out: &'a std::path::Path) -> Vec<&'a std::ffi::OsStr> {
    vec![
        "download".as_ref(),
        t.path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--bind-interface".as_ref(),
        "c1".as_ref(),
    ]
}

/// Tracker host names are resolved through the bound interface too: the
/// DNS query is a socket like any other, and with the interface down no
/// query leaves by the other route.
#[test]
fn tracker_names_resolve_through_the_bound_interface() {
    let Some(net) = Net::create("d") else { return };
    let _resolv = Resolv::point_at_the_lab(&net);
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::single(dir.path(), "dns", 64 * 1024, 2 << 20, 191);
    let announce = format!("http://{TRACKER_HOST}:6969/announce");
    t.set_announce(&announce);
    let data = dir.path().join("data");
    t.write_payload(&data);

    let dns_log = dir.path().join("dns.log");
    let _dns = NsChild::spawn(
        &net.seed,
        "python3",
        &["-c", DNS_SERVER, dns_log.to_str().unwrap()],
        dir.path(),
    );
    let hex: String = t.info_hash.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.path().join("whitelist"), hex + "\n").unwrap();
    let _tracker = NsChild::spawn(
        &net.seed,
        "opentracker",
        &[
            "-i",
            SEED_IP,
            "-p",
            "6969",
            "-P",
            "6969",
            "-w",
            "whitelist",
            "-d",
            dir.path().to_str().unwrap(),
        ],
        dir.path(),
    );

    let mut seed = start_seed(&net, &t, &data);
    seed.wait_stats(START, "announced to the tracker by name", |v| {
        v["state"] == "seeding"
            && v["trackers"][announce.as_str()]["announces_sent"]
                .as_u64()
                .is_some_and(|n| n >= 1)
            && v["trackers"][announce.as_str()]["announces_failed"] == 0
    });
    let asked_from = |ip: &str| {
        std::fs::read_to_string(&dns_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(TRACKER_HOST) && l.ends_with(ip))
            .count()
    };

    // Bound to c1, which is not the preferred route: the lookup, the
    // announce and the peer connection all leave through c1.
    let c2 = net.tx_packets("c2");
    let out = dir.path().join("out-bound");
    let mut d = Actorrent::spawn_in(&net.client, "bound leecher", &bound_to_c1(&t, &out));
    let status = d.wait_exit(DONE);
    if !status.success() {
        d.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(&out);
    assert!(
        asked_from("198.18.1.1") >= 1,
        "the tracker's name was not asked from c1's address:\n{}",
        std::fs::read_to_string(&dns_log).unwrap_or_default()
    );
    assert_eq!(
        net.tx_packets("c2"),
        c2,
        "the bound download (its DNS lookup included) leaked through c2"
    );

    // Kill switch: c1 down, the lookup fails and nothing leaves by c2.
    net.link("c1", "down");
    let c2 = net.tx_packets("c2");
    let asked = asked_from("198.18.2.1");
    let out = dir.path().join("out-down");
    let mut d = Actorrent::spawn_in(
        &net.client,
        "bound leecher, c1 down",
        &bound_to_c1(&t, &out),
    );
    let s = d.wait_stats(START, "a failed announce", |v| {
        v["trackers"][announce.as_str()]["announces_failed"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    assert_eq!(s["bytes_down"], 0, "{s}");
    d.stop(Duration::from_secs(30));
    assert_eq!(
        net.tx_packets("c2"),
        c2,
        "a lookup left through c2 while c1 was down"
    );
    assert_eq!(
        asked_from("198.18.2.1"),
        asked,
        "c2's address asked the DNS server"
    );
    seed.stop(Duration::from_secs(30));
}

//! IPv6 on ::1 (issue 15): a libtorrent seed listening on `[::1]` only and
//! actorrent fetching from it, given the address or through an HTTP
//! tracker that lists it in `peers6` alone; and an actorrent seed on `[::]`
//! (one dual-stack socket) serving a libtorrent leecher over IPv6 and
//! another over IPv4.
//!
//! Needs `/usr/bin/python3` with python3-libtorrent (see
//! `support/lt_peer.py`); a missing module fails the test.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::client::{Client, DOWNLOAD_TIMEOUT};
use support::lt::LtPeer;
use support::process::Actorrent;
use support::torrent::TestTorrent;

const START: Duration = Duration::from_secs(60);
const LT_DONE: Duration = Duration::from_secs(120);

fn small_torrent(dir: &Path, name: &str, seed: u64) -> TestTorrent {
    TestTorrent::multi(
        dir,
        name,
        64 * 1024,
        &[("a.bin", (2 << 20) + 999), ("b.bin", 123_457)],
        seed,
    )
}

/// A libtorrent seed of `t` listening on `[::1]` only.
fn lt_seed_v6(dir: &Path, t: &TestTorrent) -> (LtPeer, SocketAddr) {
    let data = dir.join("lt-data");
    t.write_payload(&data);
    let args: Vec<String> = ["--timeout", "300", "--listen", "[::1]:0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut lt = LtPeer::spawn("seed", &t.path, &data, &args);
    let port: u16 = lt.expect_line("PORT ", START).parse().expect("PORT line");
    (lt, SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
}

#[test]
fn download_from_a_libtorrent_seed_on_ipv6_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let t = small_torrent(dir.path(), "v6-direct", 161);
    let (_lt, addr) = lt_seed_v6(dir.path(), &t);
    let out = dir.path().join("out");
    let f = Client::download(&t.path, &out, &[addr], &[]).wait(DOWNLOAD_TIMEOUT);
    f.assert_success();
    t.assert_downloaded(&out);
    let s = f.final_stats();
    let c = &s["connections"]["outgoing"];
    let n: u64 = ["plaintext", "mse_plaintext", "rc4"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum();
    assert!(n >= 1, "{s}");
}

/// A one-shot HTTP tracker on 127.0.0.1 whose every answer lists `peer`
/// in `peers6` and nothing in `peers`; counts the announces.
fn peers6_tracker(peer: SocketAddr) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/announce", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let SocketAddr::V6(v6) = peer else {
        panic!("not IPv6: {peer}")
    };
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            // The request head: the announce line, then headers to a blank.
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            c.fetch_add(1, Ordering::SeqCst);
            let mut compact = v6.ip().octets().to_vec();
            compact.extend_from_slice(&v6.port().to_be_bytes());
            let mut body = b"d8:intervali1800e5:peers0:6:peers618:".to_vec();
            body.extend_from_slice(&compact);
            body.push(b'e');
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (url, count)
}

#[test]
fn a_peers6_only_tracker_answer_is_dialled_over_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let t = small_torrent(dir.path(), "v6-tracker", 162);
    let (_lt, addr) = lt_seed_v6(dir.path(), &t);
    let (url, announces) = peers6_tracker(addr);
    t.set_announce(&url);
    let out = dir.path().join("out");
    let f = Client::download(&t.path, &out, &[], &[]).wait(DOWNLOAD_TIMEOUT);
    f.assert_success();
    t.assert_downloaded(&out);
    assert!(announces.load(Ordering::SeqCst) >= 1);
}

#[test]
fn a_dual_stack_seed_serves_ipv6_and_ipv4_leechers() {
    let dir = tempfile::tempdir().unwrap();
    let t = small_torrent(dir.path(), "v6-seed", 163);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let args: Vec<&std::ffi::OsStr> = vec![
        "seed".as_ref(),
        t.path.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "[::]:0".as_ref(),
    ];
    let mut seed = Actorrent::spawn("dual-stack seed", &args);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding", |v| v["state"] == "seeding");
    for (i, (listen, peer)) in [
        ("[::1]:0", format!("[::1]:{port}")),
        ("127.0.0.1:0", format!("127.0.0.1:{port}")),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("lt-out-{i}"));
        let args: Vec<String> = vec![
            "--timeout".into(),
            LT_DONE.as_secs().to_string(),
            "--listen".into(),
            listen.into(),
            "--peer".into(),
            peer.clone(),
        ];
        let mut lt = LtPeer::spawn("leech", &t.path, &out, &args);
        lt.expect_line("DONE ", LT_DONE + Duration::from_secs(30));
        t.assert_downloaded(&out);
        let want = i as u64 + 1;
        seed.wait_stats(
            Duration::from_secs(30),
            "one more incoming connection",
            |v| {
                let c = &v["connections"]["incoming"];
                let n: u64 = ["plaintext", "mse_plaintext", "rc4"]
                    .iter()
                    .map(|k| c[k].as_u64().unwrap_or(0))
                    .sum();
                n >= want
            },
        );
        let log = seed.log();
        let host = if i == 0 { "[::1]:" } else { "127.0.0.1:" };
        assert!(
            log.contains(host),
            "no connection from {host} in the seed's log (peer {peer})"
        );
    }
    seed.stop(Duration::from_secs(30));
}

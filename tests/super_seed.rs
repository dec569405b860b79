//! Super-seeding (BEP 16) with real peers on 127.0.0.1: one `actorrent
//! seed --super-seed` and four leechers, `actorrent download --seed-after`
//! processes in one test and libtorrent (python3-libtorrent) in the other.
//! What must hold: every leecher completes with identical files, and the
//! seed sends the payload about once (at most 1.2 times its size), the
//! leechers trading the rest; each test prints the multiple it saw.
//!
//! The seed's upload is capped so that it is the bottleneck (the case
//! super-seeding is for); the cap shapes the swarm, it is not asserted.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::process::Actorrent;
use support::torrent::TestTorrent;

/// Bound on one process checking its data and binding its listener.
const START: Duration = Duration::from_secs(120);
/// Bound on the whole swarm completing.
const SWARM: Duration = Duration::from_secs(300);
/// The seed's cap: 8 MiB a second, 2 s for one copy of the payload.
const SEED_UPLOAD_LIMIT: &str = "8388608";
const LEECHERS: usize = 4;

fn leecher(name: &str, t: &TestTorrent, out: &Path, ports: &[u16]) -> Actorrent {
    let peers: Vec<SocketAddr> = ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
    Actorrent::download(name, &t.path, out, &peers, &["--seed-after"])
}

/// Runs the swarm with the seed started with `seed_args`; returns the
/// seed's `bytes_up` once every leecher has completed and checked out.
fn swarm(dir: &Path, t: &TestTorrent, seed_args: &[&str]) -> u64 {
    let data = dir.join("seed");
    t.write_payload(&data);
    let mut args = vec!["--upload-limit", SEED_UPLOAD_LIMIT];
    args.extend_from_slice(seed_args);
    let mut seed = Actorrent::seed("seed", &t.path, &data, &args);
    let mut known = vec![seed.listen_port(START)];
    let mut leechers: Vec<(Actorrent, PathBuf)> = Vec::new();
    for i in 0..LEECHERS {
        let out = dir.join(format!("leecher{i}"));
        let mut l = leecher(&format!("leecher {i}"), t, &out, &known);
        known.push(l.listen_port(START));
        leechers.push((l, out));
    }
    let deadline = Instant::now() + SWARM;
    let n = t.piece_count();
    for (l, out) in leechers.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = l.wait_stats(left, "every piece", |v| v["pieces_done"] == n);
        assert_eq!(s["hash_failures"], 0, "{}: {s}", l.name);
        t.assert_downloaded(out);
    }
    // The seed reports each second; wait for a report after the last
    // leecher completed so every byte it sent is counted.
    let since = Instant::now();
    support::wait_until(Duration::from_secs(10), || {
        seed.stats_with_times().iter().any(|(at, _)| *at > since)
    });
    let up = seed
        .last_stats()
        .and_then(|v| v["bytes_up"].as_u64())
        .unwrap_or_else(|| seed.fail("no stats from the seed"));
    let ups: Vec<u64> = leechers
        .iter()
        .map(|(l, _)| {
            l.last_stats()
                .and_then(|v| v["bytes_up"].as_u64())
                .unwrap_or(0)
        })
        .collect();
    eprintln!(
        "seed {seed_args:?}: bytes_up {up} ({:.2}x payload); leechers' bytes_up {ups:?}",
        up as f64 / t.payload.len() as f64
    );
    for (l, _) in leechers.iter_mut() {
        l.stop(Duration::from_secs(30));
    }
    seed.stop(Duration::from_secs(30));
    up
}

fn torrent(dir: &Path, name: &str) -> TestTorrent {
    // 16 MiB in 128 pieces: enough pieces to spread over four leechers.
    TestTorrent::single(dir, name, 128 * 1024, 16 << 20, 1616)
}

#[test]
fn super_seed_sends_each_piece_about_once_and_every_leecher_completes() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "superseed");
    let up = swarm(dir.path(), &t, &["--super-seed"]);
    let payload = t.payload.len() as u64;
    assert!(up >= payload, "the seed sent less than one copy ({up})");
    assert!(
        up * 10 <= payload * 12,
        "super-seed uploaded {up} bytes for a {payload}-byte payload ({:.2}x, more than 1.2x)",
        up as f64 / payload as f64
    );
}

#[test]
fn super_seed_to_libtorrent_leechers_sends_each_piece_about_once() {
    use support::lt::LtPeer;
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "superseed-lt");
    let data = dir.path().join("seed");
    t.write_payload(&data);
    let mut seed = Actorrent::seed(
        "seed",
        &t.path,
        &data,
        &["--upload-limit", SEED_UPLOAD_LIMIT, "--super-seed"],
    );
    let mut known = vec![seed.listen_port(START)];
    let mut leechers: Vec<(LtPeer, PathBuf)> = Vec::new();
    for i in 0..LEECHERS {
        let save = dir.path().join(format!("lt{i}"));
        // Each dials the seed and the leechers before it (no PEX between
        // libtorrent leechers here), and seeds on once done.
        let mut extra = vec!["--stay".to_string(), "--timeout".into(), "300".into()];
        for p in &known {
            extra.extend(["--peer".into(), format!("127.0.0.1:{p}")]);
        }
        let mut l = LtPeer::spawn("leech", &t.path, &save, &extra);
        let port: u16 = l.expect_line("PORT ", START).parse().expect("PORT line");
        known.push(port);
        leechers.push((l, save));
    }
    for (l, save) in leechers.iter_mut() {
        l.expect_line("DONE ", SWARM);
        t.assert_downloaded(save);
    }
    let since = Instant::now();
    support::wait_until(Duration::from_secs(10), || {
        seed.stats_with_times().iter().any(|(at, _)| *at > since)
    });
    let up = seed
        .last_stats()
        .and_then(|v| v["bytes_up"].as_u64())
        .unwrap_or_else(|| seed.fail("no stats from the seed"));
    let payload = t.payload.len() as u64;
    eprintln!(
        "super-seed to libtorrent: bytes_up {up} ({:.2}x payload)",
        up as f64 / payload as f64
    );
    for (l, _) in leechers.iter_mut() {
        l.finish(Duration::from_secs(30));
    }
    seed.stop(Duration::from_secs(30));
    assert!(up >= payload, "the seed sent less than one copy ({up})");
    assert!(
        up * 10 <= payload * 12,
        "super-seed uploaded {up} bytes for a {payload}-byte payload ({:.2}x, more than 1.2x)",
        up as f64 / payload as f64
    );
}

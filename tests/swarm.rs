//! A swarm of actorrent processes on 127.0.0.1 (issue 6, "Swarm of
//! actorrent only"): one `actorrent seed` and four `actorrent download
//! --seed-after` leechers. Every leecher must end with identical files, and
//! leechers must upload to each other, not only take from the seed. The
//! swarm is wired twice: by `--peer` lists (each leecher dials the seed and
//! the leechers before it), and through opentracker with no addresses.
//!
//! The seed's upload is capped (`--upload-limit`) so that it alone would
//! need several seconds for four copies: leechers then hold pieces the
//! others lack while the download is under way, which is what makes them
//! trade. The cap sets how the work is shared, not what the test asserts.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::process::{Actorrent, assert_stats_fields};
use support::torrent::TestTorrent;
use support::tracker::Tracker;

/// Bound on one process checking its data and binding its listener.
const START: Duration = Duration::from_secs(120);
/// Bound on the whole swarm completing.
const SWARM: Duration = Duration::from_secs(240);
/// The seed's upload cap in bytes per second: 16 MiB x 4 leechers takes it
/// 8 s alone.
const SEED_UPLOAD_LIMIT: &str = "8388608";

fn torrent(dir: &Path, name: &str) -> TestTorrent {
    TestTorrent::multi(
        dir,
        name,
        128 * 1024,
        &[
            ("a.bin", 10 << 20),
            ("b/c.bin", (6 << 20) - 4321),
            ("b/empty", 0),
            ("d.txt", 4321 - 17),
        ],
        2024,
    )
}

/// Starts a leecher downloading into `out`, listening on a free port and
/// dialling `peers`.
fn leecher(name: &str, t: &TestTorrent, out: &Path, ports: &[u16]) -> Actorrent {
    let peers: Vec<SocketAddr> = ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
    Actorrent::download(name, &t.path, out, &peers, &["--seed-after"])
}

/// Waits for every leecher to finish, checks the files and that leechers
/// uploaded, then stops everything.
fn assert_swarm_completes(
    t: &TestTorrent,
    seed: &mut Actorrent,
    leechers: &mut [(Actorrent, PathBuf)],
) {
    let deadline = Instant::now() + SWARM;
    let n = t.piece_count();
    for (l, out) in leechers.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = l.wait_stats(left, "every piece", |v| v["pieces_done"] == n);
        assert_stats_fields(&s);
        t.assert_downloaded(out);
    }
    // With --seed-after each one stays up and reports seeding.
    for (l, _) in leechers.iter_mut() {
        let s = l.wait_stats(Duration::from_secs(30), "state seeding", |v| {
            v["state"] == "seeding"
        });
        assert_eq!(s["hash_failures"], 0, "{}: {s}", l.name);
    }
    // Counters are reported each second; give the last ones a few to land.
    let uploaded = |ls: &[(Actorrent, PathBuf)]| -> Vec<u64> {
        ls.iter()
            .map(|(l, _)| {
                l.last_stats()
                    .and_then(|v| v["bytes_up"].as_u64())
                    .unwrap_or(0)
            })
            .collect()
    };
    let shared = support::wait_until(Duration::from_secs(15), || {
        uploaded(leechers).iter().any(|&b| b > 0)
    });
    let ups = uploaded(leechers);
    assert!(
        shared,
        "no leecher uploaded anything (bytes_up {ups:?}); seed: {}",
        seed.last_stats().unwrap_or_default()
    );
    eprintln!(
        "leechers' bytes_up: {ups:?}; seed: {}",
        seed.last_stats().unwrap_or_default()
    );
    for (l, _) in leechers.iter_mut() {
        l.stop(Duration::from_secs(30));
    }
    seed.stop(Duration::from_secs(30));
}

#[test]
fn four_leechers_complete_and_trade_with_peer_lists() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "swarm-peers");
    let data = dir.path().join("seed");
    t.write_payload(&data);
    let mut seed = Actorrent::seed(
        "seed",
        &t.path,
        &data,
        &["--upload-limit", SEED_UPLOAD_LIMIT],
    );
    let mut known = vec![seed.listen_port(START)];
    let mut leechers = Vec::new();
    for i in 0..4 {
        let out = dir.path().join(format!("leecher{i}"));
        // Each leecher dials the seed and every leecher started before it;
        // the earlier ones learn of it when it connects.
        let mut l = leecher(&format!("leecher {i}"), &t, &out, &known);
        known.push(l.listen_port(START));
        leechers.push((l, out));
    }
    assert_swarm_completes(&t, &mut seed, &mut leechers);
}

#[test]
fn four_leechers_complete_and_trade_through_opentracker() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "swarm-tracker");
    let tracker = Tracker::start(&[t.info_hash]);
    t.set_announce(&tracker.http_url());
    let data = dir.path().join("seed");
    t.write_payload(&data);
    let mut seed = Actorrent::seed(
        "seed",
        &t.path,
        &data,
        &["--upload-limit", SEED_UPLOAD_LIMIT],
    );
    seed.listen_port(START);
    let mut leechers = Vec::new();
    for i in 0..4 {
        let out = dir.path().join(format!("leecher{i}"));
        // No addresses: every process learns the others from the tracker.
        let mut l = leecher(&format!("leecher {i}"), &t, &out, &[]);
        l.listen_port(START);
        leechers.push((l, out));
    }
    assert_swarm_completes(&t, &mut seed, &mut leechers);
}

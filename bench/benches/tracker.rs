//! Tracker session throughput against a real opentracker on 127.0.0.1:
//! N torrents registered at once (default 2000), time until every
//! `started` has been answered, over HTTP and over UDP, with the rate limit
//! lifted so the session itself is measured. Also reports the DNS cache
//! counters (the tracker is named `localhost`, so every announce resolves
//! through it).
//!
//! `ACTORRENT_BENCH_TORRENTS` changes N. Under `cargo test` (no `--bench`
//! argument) it runs with 20 torrents as a smoke test.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use actors::tracker::{AnnounceProgress, TorrentRegistration, TrackerConfig, spawn};
use protocol::metainfo::InfoHash;
use tokio_util::sync::CancellationToken;

// The benchmark builds its URLs with `localhost` (to go through the DNS
// cache), so the guard's URL helpers go unused here.
#[allow(dead_code)]
#[path = "../../actors/tests/tracker_support/opentracker.rs"]
mod opentracker;
use opentracker::OpenTracker;

fn hash(i: u32) -> InfoHash {
    let mut h = [0xab; 20];
    h[..4].copy_from_slice(&i.to_be_bytes());
    InfoHash(h)
}

fn start_opentracker(n: u32) -> OpenTracker {
    let hashes: Vec<[u8; 20]> = (0..n).map(|i| hash(i).0).collect();
    OpenTracker::start(&hashes)
}

async fn run(url: &str, n: u32) {
    let config = TrackerConfig {
        announces_per_second: NonZeroU32::new(1_000_000).expect("non-zero"),
        announce_burst: NonZeroU32::new(1_000_000).expect("non-zero"),
        ..TrackerConfig::default()
    };
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let mut keep = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let (_p, progress) = tokio::sync::watch::channel(AnnounceProgress {
            uploaded: 0,
            downloaded: 0,
            left: 1,
        });
        let (peers, rx) = tokio::sync::mpsc::channel(4);
        h.add_torrent(TorrentRegistration {
            info_hash: hash(i),
            tiers: vec![vec![url.to_owned()]],
            peer_id: *b"-AT0001-benchbenchbb",
            port: 6881,
            progress,
            peers,
        })
        .await
        .expect("add");
        keep.push((_p, rx));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let stats = loop {
        let s = h.stats().await.expect("stats");
        let t = s.trackers.get(url).cloned().unwrap_or_default();
        if t.announces_succeeded + t.announces_failed >= u64::from(n) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = start.elapsed();
    let t = stats.trackers.get(url).cloned().unwrap_or_default();
    println!(
        "{:<5} {n} torrents: all started in {:.3} s = {:.0} announces/s; ok {}, failed {}, DNS hits {} misses {}",
        url.split(':').next().unwrap_or(""),
        elapsed.as_secs_f64(),
        f64::from(n) / elapsed.as_secs_f64(),
        t.announces_succeeded,
        t.announces_failed,
        stats.dns.hits,
        stats.dns.misses,
    );
    if let Some(e) = t.last_error {
        println!("      last error: {e}");
    }
    let stop = Instant::now();
    cancel.cancel();
    join.await.expect("join");
    println!(
        "      shutdown with {n} `stopped` (bounded by stop_timeout): {:.3} s",
        stop.elapsed().as_secs_f64()
    );
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: u32 = std::env::var("ACTORRENT_BENCH_TORRENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 2000 } else { 20 });
    let tracker = start_opentracker(n);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        run(&format!("http://localhost:{}/announce", tracker.port), n).await;
        run(&format!("udp://localhost:{}/announce", tracker.port), n).await;
    });
}

//! The tracker session against a real opentracker on 127.0.0.1, over HTTP
//! and over UDP: two clients announcing one torrent receive each other, and
//! `stopped` takes a client out of the swarm.

mod tracker_support;

use std::net::SocketAddr;
use std::time::Duration;

use actors::tracker::{TrackerHandle, spawn};
use protocol::metainfo::InfoHash;
use tokio_util::sync::CancellationToken;
use tracker_support::{OpenTracker, Registered, fast_config, info_hash, registration, wait_stats};

const LIMIT: Duration = Duration::from_secs(20);

fn me(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Registers `ih` on `client` with our port `port`, waits for its `started`
/// to succeed, and returns every peer it was given.
async fn join_swarm(
    client: &TrackerHandle,
    url: &str,
    ih: InfoHash,
    port: u16,
) -> (Registered, Vec<SocketAddr>) {
    let before = client.stats().await.unwrap();
    let ok_before = before
        .trackers
        .get(url)
        .map_or(0, |s| s.announces_succeeded);
    let (reg, mut r) = registration(ih, vec![vec![url.to_owned()]], port);
    client.add_torrent(reg).await.unwrap();
    let s = wait_stats(client, LIMIT, "started to succeed", |s| {
        s.trackers
            .get(url)
            .is_some_and(|t| t.announces_succeeded > ok_before || t.announces_failed > 0)
    })
    .await;
    assert_eq!(s.trackers[url].announces_failed, 0, "{s:#?}");
    let mut peers = Vec::new();
    while let Ok(batch) = r.peers.try_recv() {
        peers.extend(batch);
    }
    (r, peers)
}

async fn two_clients_see_each_other(url: impl Fn(&OpenTracker) -> String, ih: InfoHash) {
    let tracker = OpenTracker::start(&[ih.0]);
    let url = url(&tracker);
    let cancel = CancellationToken::new();
    let (a, a_join) = spawn(fast_config(), cancel.clone());
    let (b, b_join) = spawn(fast_config(), cancel.clone());
    let (c, c_join) = spawn(fast_config(), cancel.clone());

    let (_ra, _) = join_swarm(&a, &url, ih, 6881).await;
    let (_rb, peers_b) = join_swarm(&b, &url, ih, 6882).await;
    assert!(peers_b.contains(&me(6881)), "B should see A: {peers_b:?}");

    // opentracker's min interval is many minutes, so A meets B by leaving
    // (which also exercises `stopped`) and joining again.
    a.remove_torrent(ih).await.unwrap();
    let (_ra, peers_a) = join_swarm(&a, &url, ih, 6881).await;
    assert!(peers_a.contains(&me(6882)), "A should see B: {peers_a:?}");

    // B leaves with `stopped`: a newcomer sees A but no longer B.
    b.remove_torrent(ih).await.unwrap();
    let s = b.stats().await.unwrap();
    assert_eq!(s.torrents, 0);
    assert_eq!(s.trackers[&url].announces_failed, 0, "{s:#?}");
    // started + stopped.
    assert_eq!(s.trackers[&url].announces_succeeded, 2, "{s:#?}");
    let (_rc, peers_c) = join_swarm(&c, &url, ih, 6883).await;
    assert!(peers_c.contains(&me(6881)), "C should see A: {peers_c:?}");
    assert!(!peers_c.contains(&me(6882)), "B sent stopped: {peers_c:?}");

    cancel.cancel();
    for j in [a_join, b_join, c_join] {
        tokio::time::timeout(LIMIT, j).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_announces_to_opentracker() {
    two_clients_see_each_other(OpenTracker::http_url, info_hash(0x11)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_announces_to_opentracker() {
    two_clients_see_each_other(OpenTracker::udp_url, info_hash(0x22)).await;
}

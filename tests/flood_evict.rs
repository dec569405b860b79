//! A full seed makes room for a real leecher (issue 14, the flood-first
//! fault): idle peers that came first hold every slot of the torrent
//! (`max_peers_per_torrent` = 3 here); a newcomer arriving while they are
//! all young is turned away (eviction waits until a peer had time to be
//! useful, so a burst cannot evict itself), and once they have been idle a
//! while a real `actorrent download` dialling in evicts one of them and
//! completes. The seed never holds more peers than its limit.

mod support;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::Duration;

use support::client::Client;
use support::leecher::{LeechError, Leecher};
use support::process::Actorrent;
use support::torrent::TestTorrent;

const STEP: Duration = Duration::from_secs(60);
const LIMIT: u64 = 3;

#[test]
fn idle_peers_that_fill_the_seed_give_way_to_a_real_leecher() {
    let tmp = tempfile::tempdir().unwrap();
    let t = TestTorrent::single(tmp.path(), "flooded.bin", 32 * 1024, 1 << 20, 77);
    let data = tmp.path().join("data");
    t.write_payload(&data);
    let cfg = tmp.path().join("limits.toml");
    std::fs::write(&cfg, format!("max_peers_per_torrent = {LIMIT}\n")).unwrap();
    let args: Vec<&OsStr> = vec![
        "--config".as_ref(),
        cfg.as_os_str(),
        "seed".as_ref(),
        t.path.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    let mut seed = Actorrent::spawn("actorrent seed", &args);
    let port = seed.listen_port(STEP);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    seed.wait_stats(STEP, "seeding", |v| v["state"] == "seeding");

    // Idle peers: handshake, have none, nothing else.
    let mut idle: Vec<Leecher> = (0..LIMIT)
        .map(|i| {
            Leecher::connect(addr, &t, true, STEP)
                .unwrap_or_else(|e| seed.fail(&format!("idle peer {i}: {e:?}")))
        })
        .collect();
    seed.wait_stats(STEP, "the idle peers", |v| v["peers"] == LIMIT);
    // A newcomer while every peer is young: refused, nobody evicted.
    match Leecher::connect(addr, &t, true, STEP) {
        Err(LeechError::Closed) => {}
        Ok(_) => seed.fail("a full seed took a newcomer by evicting a peer that just came"),
        Err(e) => seed.fail(&format!("the refused newcomer: {e:?}")),
    }

    // A real leecher; it redials until an idle peer is old enough to go.
    let out = tmp.path().join("out");
    let done = Client::download(&t.path, &out, &[addr], &[]).wait(STEP);
    done.assert_success();
    t.assert_downloaded(&out);

    let mut evicted = 0;
    for l in &mut idle {
        if l.wait_closed(Duration::from_millis(200)).is_ok() {
            evicted += 1;
        }
    }
    assert!(evicted >= 1, "no idle peer was evicted");
    let most = seed
        .stats()
        .iter()
        .filter_map(|v| v["peers"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(most <= LIMIT, "the seed held {most} peers, over its limit");
}

//! Trackerless magnet links (issue 11) with real peers on 127.0.0.1: no
//! tracker, no `x.pe`, no `--peer`; the only way to the other side is the
//! DHT. A small in-process router node (actors' DHT) is the one address
//! every node starts from; `actorrent seed` and `actorrent download` run
//! their own DHT node, libtorrent its own (python3-libtorrent through
//! `support/lt_peer.py --dht`, one-node-per-address rules off since every
//! node shares 127.0.0.1).
//!
//! - libtorrent, with a magnet link and its DHT bootstrapped from
//!   `actorrent seed`'s node, finds the seed by `get_peers`, fetches the
//!   metadata from it (BEP 9) and completes, bytes verified;
//! - `actorrent download` finds a libtorrent seed the same way;
//! - `actorrent download` finds `actorrent seed`.

mod support;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::dht::{Router, loopback_dht_config};
use support::lt::LtPeer;
use support::process::Actorrent;
use support::torrent::TestTorrent;

/// Bound on the seed checking its data and binding its listener.
const START: Duration = Duration::from_secs(60);
/// Bound on DHT lookups, the metadata and a few MiB crossing loopback on a
/// shared machine.
const DOWNLOAD: Duration = Duration::from_secs(180);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Several metadata pieces (many files make a long info dictionary) so
/// the request/data exchange runs more than once.
fn many_files(dir: &Path, name: &str) -> TestTorrent {
    let names: Vec<String> = (0..300)
        .map(|i| format!("dir{}/a-file-with-a-long-name-{i:04}.bin", i % 7))
        .collect();
    let files: Vec<(&str, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), 1000 + i * 37))
        .collect();
    TestTorrent::multi(dir, name, 32 * 1024, &files, 11)
}

/// The test harness turns the DHT off for every process (its default
/// routers are on the internet); these tests turn it back on, with the
/// loopback config.
const DHT_ON: [(&str, &str); 1] = [("ACTORRENT_DHT_ENABLED", "true")];

/// `actorrent seed` with its DHT bootstrapped from `router`; returns once it
/// has announced itself to the router.
fn dht_seed(t: &TestTorrent, data: &Path, config: &Path, router: &Router) -> Actorrent {
    let seed_args: Vec<&OsStr> = vec![
        "seed".as_ref(),
        t.path.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    let mut seed = Actorrent::spawn_env("actorrent seed", &seed_args, &DHT_ON);
    seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    if !router.wait_announced(START) {
        seed.fail("the seed never announced itself to the router");
    }
    seed
}

/// `actorrent download <magnet>` with only the DHT to find peers; asserts
/// exit 0, the bytes, and that it went through the metadata state.
fn dht_download(t: &TestTorrent, dir: &Path, config: &Path) -> Actorrent {
    let magnet = format!("magnet:?xt=urn:btih:{}", hex(&t.info_hash));
    let out = dir.join("out");
    let dl_args: Vec<&OsStr> = vec![
        "download".as_ref(),
        magnet.as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    let mut dl = Actorrent::spawn_env("magnet download via the DHT", &dl_args, &DHT_ON);
    let status = dl.wait_exit(DOWNLOAD);
    if !status.success() {
        dl.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(&out);
    assert!(
        dl.stats()
            .iter()
            .any(|v| v["state"] == "metadata" && v["event"] == "metadata"),
        "no metadata phase"
    );
    dl
}

/// No tracker, no `x.pe`, no `--peer`: `actorrent seed` announces itself in
/// a loopback DHT (the router, plus the two processes' own nodes) and
/// `actorrent download` finds it there with `get_peers`, fetches the
/// metadata and completes.
#[test]
fn a_trackerless_magnet_is_found_through_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "dht-only");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let router = Router::start();
    let config = loopback_dht_config(dir.path(), router.addr());
    let mut seed = dht_seed(&t, &data, &config, &router);
    dht_download(&t, dir.path(), &config);
    seed.stop(Duration::from_secs(30));
}

/// The reverse of interop: a libtorrent leecher with a bare magnet link
/// (no `tr`, no `x.pe`) whose DHT is bootstrapped from `actorrent seed`'s
/// DHT node only. It learns the rest of the DHT (the router) from our node,
/// finds the seed with `get_peers`, fetches the metadata from it by BEP 9
/// and downloads the payload, bytes verified.
#[test]
fn libtorrent_finds_actorrent_seed_through_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "lt-dht");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let router = Router::start();
    let config = loopback_dht_config(dir.path(), router.addr());
    let mut seed = dht_seed(&t, &data, &config, &router);
    let seed_dht: SocketAddr = seed.stats().last().unwrap()["network"]["dht"]
        .as_str()
        .unwrap_or_else(|| seed.fail("no DHT node in the seed's stats"))
        .parse()
        .unwrap();
    assert!(seed_dht.ip().is_loopback(), "{seed_dht}");
    let out = dir.path().join("lt-out");
    let saved = dir.path().join("lt.torrent");
    let magnet = format!("magnet:?xt=urn:btih:{}&dn=lt-dht", hex(&t.info_hash));
    let extra = vec![
        "--timeout".to_owned(),
        DOWNLOAD.as_secs().to_string(),
        "--dht".into(),
        seed_dht.to_string(),
        "--save-torrent".into(),
        saved.display().to_string(),
    ];
    let mut lt = LtPeer::spawn_magnet(&magnet, &out, &extra);
    lt.expect_line("METADATA", DOWNLOAD);
    lt.expect_line("DONE ", DOWNLOAD);
    lt.wait_success(Duration::from_secs(30));
    t.assert_downloaded(&out);
    let got = protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(got.info_hash.0, t.info_hash);
    // The payload came from the seed (libtorrent had no other peer).
    let up = seed.wait_stats(START, "the upload counted", |v| {
        v["bytes_up"].as_u64().unwrap_or(0) >= t.payload.len() as u64
    });
    assert!(up["bytes_up"].as_u64().unwrap() >= t.payload.len() as u64);
    seed.stop(Duration::from_secs(30));
}

/// `actorrent download` of a bare magnet link whose DHT is bootstrapped from
/// the router only finds a libtorrent seed that announced itself there
/// (libtorrent's own `announce_peer`, its token and port), fetches the
/// metadata from it and completes.
#[test]
fn actorrent_finds_a_libtorrent_seed_through_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "dht-lt-seed");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let router = Router::start();
    let extra = vec![
        "--timeout".to_owned(),
        "300".into(),
        "--dht".into(),
        router.addr().to_string(),
    ];
    let mut lt = LtPeer::spawn("seed", &t.path, &data, &extra);
    lt.expect_line("PORT ", START);
    if !router.wait_announced(DOWNLOAD) {
        panic!(
            "libtorrent never announced the seed to the router:\n{}",
            lt.stderr_text()
        );
    }
    let config = loopback_dht_config(dir.path(), router.addr());
    dht_download(&t, dir.path(), &config);
    lt.finish(Duration::from_secs(30));
}

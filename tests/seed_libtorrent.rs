//! libtorrent downloads from `actorrent seed` on 127.0.0.1 (issue 6, "Real
//! leecher"): a 64 MiB multi-file torrent, byte-identical at the end, with
//! the seed's own upload counter covering the payload. libtorrent reaches
//! the seed three ways: given its address, through opentracker (both
//! announce; nobody is told an address), and by being dialled (`seed
//! --peer`).
//!
//! Needs `/usr/bin/python3` with python3-libtorrent (see
//! `support/lt_peer.py`); a missing module fails the test.

mod support;

use std::path::Path;
use std::time::Duration;

use support::lt::LtPeer;
use support::process::{Actorrent, assert_stats_fields};
use support::torrent::TestTorrent;
use support::tracker::Tracker;

/// Bound on the seed checking 64 MiB and binding its listener.
const START: Duration = Duration::from_secs(120);
/// Bound on libtorrent fetching 64 MiB over loopback (seconds at most on
/// an idle machine; this one is shared by several builds).
const DOWNLOAD: Duration = Duration::from_secs(240);

/// 64 MiB over files that cut pieces at odd places, a nested directory and
/// an empty file; 256 KiB pieces.
fn torrent_64mib(dir: &Path, name: &str) -> TestTorrent {
    TestTorrent::multi(
        dir,
        name,
        256 * 1024,
        &[
            ("disk.img", 40 << 20),
            ("parts/one.bin", (16 << 20) + 12_345),
            ("parts/two.bin", (8 << 20) - 12_345 - 777),
            ("parts/empty", 0),
            ("readme.txt", 777),
        ],
        64,
    )
}

/// Runs libtorrent to completion and asserts the files and the seed's
/// counters.
fn leech_and_check(seed: &mut Actorrent, t: &TestTorrent, out: &Path, peer: Option<u16>) {
    let mut extra = vec!["--timeout".to_owned(), DOWNLOAD.as_secs().to_string()];
    if let Some(port) = peer {
        extra.push("--peer".into());
        extra.push(format!("127.0.0.1:{port}"));
    }
    let mut lt = LtPeer::spawn("leech", &t.path, out, &extra);
    let done = lt.expect_line("DONE ", DOWNLOAD + Duration::from_secs(30));
    assert!(
        done.starts_with(&t.payload.len().to_string()),
        "libtorrent reports another size: {done}"
    );
    lt.wait_success(Duration::from_secs(30));
    t.assert_downloaded(out);
    let want = t.payload.len() as u64;
    let s = seed.wait_stats(
        Duration::from_secs(30),
        "bytes_up covering the payload",
        |v| v["bytes_up"].as_u64().is_some_and(|b| b >= want),
    );
    assert_stats_fields(&s);
    assert_eq!(s["state"], "seeding", "{s}");
    assert_eq!(s["hash_failures"], 0, "{s}");
}

#[test]
fn libtorrent_downloads_64_mib_from_actorrent_seed() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent_64mib(dir.path(), "lt-direct");
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    let out = dir.path().join("lt-out");
    leech_and_check(&mut seed, &t, &out, Some(port));
    seed.stop(Duration::from_secs(30));
}

/// A leecher that never dials out is still served: the seed is given its
/// address with `--peer` and connects to it (as it does to leechers a
/// tracker lists).
#[test]
fn the_seed_dials_a_leecher_that_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        "lt-dialled",
        256 * 1024,
        &[("a.bin", 6 << 20), ("b/c.bin", (2 << 20) + 999)],
        65,
    );
    let data = dir.path().join("data");
    t.write_payload(&data);
    let out = dir.path().join("lt-out");
    let timeout = vec!["--timeout".to_owned(), DOWNLOAD.as_secs().to_string()];
    let mut lt = LtPeer::spawn("leech", &t.path, &out, &timeout);
    let lt_port = lt.expect_line("PORT ", Duration::from_secs(60));
    let peer = format!("127.0.0.1:{lt_port}");
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &["--peer", &peer]);
    seed.listen_port(START);
    lt.expect_line("DONE ", DOWNLOAD + Duration::from_secs(30));
    lt.wait_success(Duration::from_secs(30));
    t.assert_downloaded(&out);
    seed.stop(Duration::from_secs(30));
}

/// The same download with no address given: the seed announces itself to
/// opentracker and libtorrent finds it there.
#[test]
fn libtorrent_finds_the_actorrent_seed_through_opentracker() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent_64mib(dir.path(), "lt-tracker");
    let tracker = Tracker::start(&[t.info_hash]);
    t.set_announce(&tracker.http_url());
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    let out = dir.path().join("lt-out");
    leech_and_check(&mut seed, &t, &out, None);
    seed.stop(Duration::from_secs(30));
}

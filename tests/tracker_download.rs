//! A whole download through a tracker: a libtorrent seed and `actorrent
//! download` both announce to opentracker on loopback, and actorrent is
//! given no `--peer`: the tracker is its only way to the seed. Once over
//! HTTP, once over UDP (BEP 15).
//!
//! Needs opentracker and `/usr/bin/python3` with python3-libtorrent
//! (scripts/test.sh installs both).

mod support;

use std::time::Duration;

use support::lt::LtPeer;
use support::process::Actorrent;
use support::torrent::TestTorrent;
use support::tracker::{Tracker, seeds_known};

fn download_through(tracker_url: impl Fn(&Tracker) -> String, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        name,
        64 * 1024,
        &[("a.bin", 3 << 20), ("sub/b.bin", 1_234_567), ("c.bin", 77)],
        5,
    );
    let tracker = Tracker::start(&[t.info_hash]);
    let url = tracker_url(&tracker);
    t.set_announce(&url);
    let data = dir.path().join("data");
    t.write_payload(&data);
    // libtorrent announces as it starts seeding; wait until the tracker
    // counts it, or our one announce could come first and find nobody.
    let (mut seed, _port) = LtPeer::seed(&t.path, &data);
    assert!(
        support::wait_until(Duration::from_secs(30), || seeds_known(
            &tracker,
            &t.info_hash
        ) >= 1),
        "opentracker never heard of the libtorrent seed"
    );

    let out = dir.path().join("out");
    let mut dl = Actorrent::download("download via tracker", &t.path, &out, &[], &[]);
    let status = dl.wait_exit(Duration::from_secs(120));
    if !status.success() {
        dl.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(&out);
    let last = dl.last_stats().expect("stats lines");
    assert_eq!(last["event"], "complete");
    let trackers = last["trackers"].as_object().expect("per-tracker stats");
    let ours = &trackers[&url];
    assert!(
        ours["announces_sent"].as_u64().unwrap_or(0) >= 1,
        "announced to {url}: {ours}"
    );
    assert_eq!(ours["announces_failed"], 0, "{ours}");
    seed.finish(Duration::from_secs(30));
}

#[test]
fn download_finds_a_libtorrent_seed_through_an_http_tracker() {
    download_through(Tracker::http_url, "via-http");
}

#[test]
fn download_finds_a_libtorrent_seed_through_a_udp_tracker() {
    download_through(Tracker::udp_url, "via-udp");
}

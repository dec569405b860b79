//! Magnet links (issue 11) with real peers on 127.0.0.1: libtorrent fetches
//! the info dictionary from `actorrent seed` by BEP 9 and completes.
//!
//! Needs `/usr/bin/python3` with python3-libtorrent (see
//! `support/lt_peer.py`); a missing module fails the test.

mod support;

use std::time::Duration;

use support::lt::LtPeer;
use support::process::Actorrent;
use support::torrent::TestTorrent;

/// Bound on the seed checking its data and binding its listener.
const START: Duration = Duration::from_secs(60);
/// Bound on a few MiB crossing loopback on a shared machine.
const DOWNLOAD: Duration = Duration::from_secs(120);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Several metadata pieces (many files make a long info dictionary) so
/// the request/data exchange runs more than once.
fn many_files(dir: &std::path::Path, name: &str) -> TestTorrent {
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

#[test]
fn libtorrent_fetches_the_metadata_from_actorrent_seed() {
    let dir = tempfile::tempdir().unwrap();
    let t = many_files(dir.path(), "lt-magnet");
    let info_len = protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&t.path).unwrap())
        .unwrap()
        .info_bytes
        .len();
    assert!(
        info_len > 16 * 1024,
        "want several metadata pieces, have {info_len} bytes"
    );
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    let out = dir.path().join("lt-out");
    let saved = dir.path().join("lt.torrent");
    let magnet = format!("magnet:?xt=urn:btih:{}&dn=lt-magnet", hex(&t.info_hash));
    let extra = vec![
        "--timeout".to_owned(),
        DOWNLOAD.as_secs().to_string(),
        "--peer".into(),
        format!("127.0.0.1:{port}"),
        "--save-torrent".into(),
        saved.display().to_string(),
    ];
    let mut lt = LtPeer::spawn_magnet(&magnet, &out, &extra);
    lt.expect_line("METADATA", DOWNLOAD);
    lt.expect_line("DONE ", DOWNLOAD);
    let status = lt.wait(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "libtorrent exited with {status:?}:\n{}",
        lt.stderr_text()
    );
    t.assert_downloaded(&out);
    let got = protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(got.info_hash.0, t.info_hash);
    seed.stop(Duration::from_secs(30));
}

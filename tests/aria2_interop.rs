//! A real client of another family downloads from `actorrent seed`: aria2
//! (Debian's `aria2c`), which finds the seed through opentracker alone,
//! over HTTP and over UDP. aria2 sends its pieces as HAVE NONE and then,
//! mid-connection, a BITFIELD; before issue 16 the seed dropped it for that
//! ("bitfield after other messages") and aria2 stalled for good.
//!
//! Needs `aria2c` and opentracker (scripts/test.sh installs both).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::Actorrent;
use support::torrent::TestTorrent;
use support::tracker::Tracker;

const START: Duration = Duration::from_secs(120);
/// Far above what 6 MiB on loopback needs.
const DOWNLOAD: Duration = Duration::from_secs(120);

/// `udp`: aria2 speaks UDP trackers only through its DHT socket, so the
/// DHT is on for that run (with no bootstrap node and its own state file:
/// it knows no one and asks no one).
fn aria2_downloads_through(tracker_url: impl Fn(&Tracker) -> String, name: &str, udp: bool) {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        name,
        256 * 1024,
        &[("disk.img", 5 << 20), ("sub/notes.txt", 700_001)],
        21,
    );
    let tracker = Tracker::start(&[t.info_hash]);
    t.set_announce(&tracker_url(&tracker));
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    seed.listen_port(START);
    seed.wait_stats(START, "seeding", |v| v["state"] == "seeding");

    let out = dir.path().join("aria2");
    let dht = format!("--enable-dht={udp}");
    let dht_file = dir.path().join("dht.dat");
    let mut child = Command::new("aria2c")
        .arg("--dir")
        .arg(&out)
        .arg(dht)
        .arg(format!("--dht-file-path={}", dht_file.display()))
        .args([
            "--seed-time=0",
            "--enable-dht6=false",
            "--dht-listen-port=6981-6989",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--listen-port=6991-6999",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--bt-stop-timeout=90",
            "--check-integrity=true",
            "--file-allocation=none",
        ])
        .arg(&t.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run aria2c (scripts/test.sh installs aria2)");
    let deadline = Instant::now() + DOWNLOAD;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match status {
        Some(s) if s.success() => {}
        Some(s) => seed.fail(&format!("aria2c exited with {s}:\n{said}")),
        None => seed.fail(&format!("aria2c did not finish in {DOWNLOAD:?}:\n{said}")),
    }
    t.assert_downloaded(&out);
    let s = seed.wait_stats(START, "the upload counted", |v| {
        v["bytes_up"]
            .as_u64()
            .is_some_and(|b| b >= t.payload.len() as u64)
    });
    assert_eq!(s["protocol_errors"], 0, "{s}");
    seed.stop(Duration::from_secs(30));
}

#[test]
fn aria2_downloads_from_actorrent_seed_through_an_http_tracker() {
    aria2_downloads_through(Tracker::http_url, "aria2-http", false);
}

#[test]
fn aria2_downloads_from_actorrent_seed_through_a_udp_tracker() {
    aria2_downloads_through(Tracker::udp_url, "aria2-udp", true);
}

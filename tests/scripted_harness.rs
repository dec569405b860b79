//! Tests of the scripted-peer harness itself: libtorrent (a client we did not
//! write) downloads from scripted seeds and ends with the right files. That
//! proves the seeds speak correct BitTorrent, so when a whole-client test in
//! `scripted_download.rs` fails, the fault is the client's, not the harness's.
//!
//! Needs `/usr/bin/python3` with libtorrent (python3-libtorrent), which
//! `scripts/test.sh` installs; a missing module is a failure, not a skip.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::wire::Message;
use support::scripted::{Corrupt, Fault, Gate, Holding, Script, Seed};
use support::torrent::TestTorrent;

/// libtorrent as a leecher: adds the torrent, connects to each peer, exits 0
/// once seeding (every piece verified) or 1 after the deadline.
const LEECH: &str = r#"
import sys, time
import libtorrent as lt
torrent, save, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
ses = lt.session({
    'listen_interfaces': '127.0.0.1:0',
    'enable_dht': False, 'enable_lsd': False,
    'enable_upnp': False, 'enable_natpmp': False,
    'out_enc_policy': 2, 'in_enc_policy': 2,
    'allow_multiple_connections_per_ip': True,
})
h = ses.add_torrent({'ti': lt.torrent_info(torrent), 'save_path': save})
for p in sys.argv[4:]:
    host, port = p.rsplit(':', 1)
    h.connect_peer((host, int(port)))
end = time.time() + limit
while time.time() < end:
    s = h.status()
    if s.is_seeding:
        print('seeding', s.num_pieces, flush=True)
        sys.exit(0)
    time.sleep(0.05)
s = h.status()
print('timeout', s.state, s.progress, s.num_peers, flush=True)
sys.exit(1)
"#;

/// Kills the libtorrent process if the test panics first.
struct Leecher(Child);

impl Drop for Leecher {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts libtorrent leeching `t` from `seeds`.
fn spawn_libtorrent(t: &TestTorrent, out: &Path, seeds: &[&Seed]) -> Leecher {
    let peers: Vec<SocketAddr> = seeds.iter().map(|s| s.addr()).collect();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", LEECH]).arg(&t.path).arg(out).arg("40");
    for p in &peers {
        cmd.arg(p.to_string());
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (python3-libtorrent)");
    Leecher(child)
}

/// Waits for libtorrent and asserts it completed the torrent.
fn assert_libtorrent_completes(mut leecher: Leecher, t: &TestTorrent, out: &Path, seeds: &[&Seed]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = leecher.0.try_wait().expect("wait for libtorrent") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The script prints one line; after exit the pipes hold all of it.
    let mut text = String::new();
    if status.is_some() {
        let _ = leecher.0.stdout.take().unwrap().read_to_string(&mut text);
        let _ = leecher.0.stderr.take().unwrap().read_to_string(&mut text);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "libtorrent did not complete ({status:?}): {text}\n{}",
        seeds.iter().map(|s| s.summary()).collect::<String>()
    );
    t.assert_downloaded(out);
}

/// Runs libtorrent against `seeds` and asserts it completes the torrent.
fn libtorrent_downloads(t: &TestTorrent, out: &Path, seeds: &[&Seed]) {
    let leecher = spawn_libtorrent(t, out, seeds);
    assert_libtorrent_completes(leecher, t, out, seeds);
}

fn multi_file(dir: &Path, piece_length: u32) -> TestTorrent {
    TestTorrent::multi(
        dir,
        "harness",
        piece_length,
        &[
            ("a.bin", 100_000), // spans pieces, ends mid-piece
            ("dir/b.bin", 45_000),
            ("dir/c.txt", 7),
            ("d.bin", 60_000),
        ],
        7,
    )
}

#[test]
fn libtorrent_downloads_from_one_normal_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let t = multi_file(tmp.path(), 32 * 1024);
    let mut seed = Seed::start(&t, Script::new());
    let out = tmp.path().join("out");
    libtorrent_downloads(&t, &out, &[&seed]);
    seed.stop();
    seed.assert_no_problems("normal seed");

    // The log shows a real exchange: libtorrent's handshake, its interest,
    // and every block of the torrent served exactly once.
    let logs = seed.logs();
    assert!(!logs.is_empty());
    let hs = logs[0].handshake.expect("handshake recorded");
    assert!(hs.supports_fast() && hs.supports_extended());
    assert!(logs[0].received().any(|(_, m)| *m == Message::Interested));
    let mut served: Vec<_> = logs.iter().flat_map(|l| l.blocks_sent()).collect();
    served.sort();
    served.dedup();
    assert_eq!(served, t.blocks());
}

#[test]
fn libtorrent_downloads_from_partial_choking_and_disconnecting_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let t = multi_file(tmp.path(), 32 * 1024);
    let n = t.piece_count();
    let even = Seed::start(&t, Script::new().pieces((0..n).step_by(2)));
    let mut odd = Script::new().pieces((1..n).step_by(2));
    odd.fault = Fault::ChokeCycle {
        every: 2,
        choked_for: Duration::from_millis(100),
    };
    let odd = Seed::start(&t, odd);
    let mut have_all = Script::new().fault(Fault::DisconnectAfter(3));
    have_all.holding = Holding::HaveAll;
    let quitter = Seed::start(&t, have_all);
    let out = tmp.path().join("out");
    libtorrent_downloads(&t, &out, &[&even, &odd, &quitter]);
    for (who, s) in [("even", &even), ("odd", &odd), ("quitter", &quitter)] {
        s.assert_no_problems(who);
    }
    // The choking seed really choked, and never served while choking.
    let odd_logs = odd.logs();
    assert!(
        odd_logs
            .iter()
            .any(|l| l.sent().any(|(_, m)| *m == Message::Choke)),
        "the choke-cycle seed never choked"
    );
}

#[test]
fn libtorrent_rejects_a_corrupting_seed() {
    let tmp = tempfile::tempdir().unwrap();
    // 16 KiB pieces: one block per piece, so each failed piece has one source.
    let t = TestTorrent::single(tmp.path(), "one.bin", 16 * 1024, 200_000, 11);
    let mut bad = Script::new();
    bad.corrupt = Corrupt::Pieces(vec![0, 1, 2, 3, 4, 5]);
    let bad = Seed::start(&t, bad);
    let good = Seed::start(&t, Script::new());
    let out = tmp.path().join("out");
    libtorrent_downloads(&t, &out, &[&bad, &good]);
    bad.assert_no_problems("corrupt seed");
    good.assert_no_problems("good seed");
}

/// The deliberate protocol violations are violations to libtorrent too: it
/// drops each of those connections while a gated good seed keeps it waiting,
/// then completes from the good seed. (libtorrent tolerates an unrequested
/// block, so that fault is exercised but not asserted here.)
#[test]
fn libtorrent_drops_the_protocol_violators() {
    let tmp = tempfile::tempdir().unwrap();
    let t = multi_file(tmp.path(), 32 * 1024);
    let violators: Vec<(&str, Seed)> = [
        ("garbage", Fault::GarbageAfterHandshake),
        ("oversize length", Fault::OversizeLength),
        ("wrong-size bitfield", Fault::WrongSizeBitfield),
    ]
    .into_iter()
    .map(|(who, f)| (who, Seed::start(&t, Script::new().fault(f))))
    .collect();
    let gate = Gate::new();
    let mut good = Script::new();
    good.gate = Some(gate.clone());
    let good = Seed::start(&t, good);
    let unrequested = Seed::start(&t, Script::new().fault(Fault::UnrequestedPiece));
    let mut seeds: Vec<&Seed> = violators.iter().map(|(_, s)| s).collect();
    seeds.push(&good);
    seeds.push(&unrequested);
    let out = tmp.path().join("out");
    let leecher = spawn_libtorrent(&t, &out, &seeds);
    for (who, seed) in &violators {
        let closed = support::wait_until(Duration::from_secs(20), || {
            seed.logs().first().is_some_and(|l| l.closed_by_client())
        });
        assert!(closed, "libtorrent kept the {who} seed\n{}", seed.summary());
    }
    // The unrequested block really went out before any request.
    let u = unrequested.logs();
    assert!(
        u.iter()
            .any(|l| l.requests().is_empty() && !l.blocks_sent().is_empty())
    );
    gate.open();
    assert_libtorrent_completes(leecher, &t, &out, &seeds);
}

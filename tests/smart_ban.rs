//! Smart ban (issue 14, the corrupt-host fault): a seed that corrupts every
//! block and an honest seed serve the same pieces, so many pieces arrive
//! with blocks of both and fail. The honest seed must never be banned (a
//! failed piece of several senders strikes no one; the good copy convicts
//! the sender of the differing block), the corrupt one must be, the download
//! must complete byte-identical, and the banned host must not get back in by
//! dialling from a new port.

mod support;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use protocol::wire::Handshake;
use support::process::Actorrent;
use support::scripted::{Corrupt, Script, Seed};
use support::torrent::TestTorrent;

const STEP: Duration = Duration::from_secs(60);

/// Dials the client from a new port with `peer_id` and returns whether it
/// answered the handshake with its own.
fn handshake_answered(port: u16, t: &TestTorrent, peer_id: [u8; 20]) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, STEP).expect("connect to the client");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&Handshake::new([0; 8], t.info_hash, peer_id).to_bytes())
        .unwrap();
    let mut buf = [0u8; 68];
    // EOF or a reset before 68 bytes: refused.
    s.read_exact(&mut buf).is_ok()
}

#[test]
fn the_corrupt_seed_is_banned_and_the_honest_one_never() {
    let tmp = tempfile::tempdir().unwrap();
    // 128 KiB pieces of eight blocks, both seeds pacing their blocks: the
    // client asks both for blocks of the same pieces, so many pieces fail
    // with blocks of both.
    let t = TestTorrent::single(tmp.path(), "mixed.bin", 128 * 1024, 4 << 20, 41);
    let pace = Duration::from_millis(2);
    let mut bad = Script::new();
    bad.corrupt = Corrupt::Every;
    bad.block_delay = pace;
    let bad = Seed::start(&t, bad);
    let mut good = Script::new();
    good.block_delay = pace;
    let good = Seed::start(&t, good);
    let out = tmp.path().join("out");
    let (b, g) = (bad.addr().to_string(), good.addr().to_string());
    let words = [
        "download",
        t.path.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--peer",
        &b,
        "--peer",
        &g,
        "--seed-after",
    ];
    let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
    let mut dl = Actorrent::spawn("actorrent download", &args);
    let port = dl.listen_port(STEP);
    let done = dl.wait_stats(STEP, "seeding", |v| v["state"] == "seeding");
    t.assert_downloaded(&out);
    assert!(done["banned_peers"].as_u64() >= Some(1), "{done}");

    let log = dl.log();
    let bans: Vec<&str> = log.lines().filter(|l| l.contains("banning peer")).collect();
    assert!(
        bans.iter().any(|l| l.contains(&b)),
        "the corrupt seed {b} was not banned: {bans:?}"
    );
    assert!(
        !bans.iter().any(|l| l.contains(&g)),
        "the honest seed {g} was banned: {bans:?}"
    );
    // Every connection to the bad seed was opened before it was banned and
    // none since (the client keeps its address off the dial list).
    let bad_conns = bad.connections();
    // The banned host dials in from a new port with the same peer id (the
    // scripted seed's: its listening port): refused. A stranger is taken.
    let mut bad_id = [0u8; 20];
    bad_id.copy_from_slice(format!("-SC0001-{:012}", bad.addr().port()).as_bytes());
    assert!(
        !handshake_answered(port, &t, bad_id),
        "the banned host got back in from a new port\n{}",
        dl.log_tail(40)
    );
    let mut stranger = [7u8; 20];
    stranger[..8].copy_from_slice(b"-XX0001-");
    assert!(
        handshake_answered(port, &t, stranger),
        "a new peer was refused too\n{}",
        dl.log_tail(40)
    );
    assert_eq!(
        bad.connections(),
        bad_conns,
        "the client dialled the banned seed again"
    );
}

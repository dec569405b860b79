//! MSE/PE on real connections (issue 15): libtorrent on 127.0.0.1 with
//! `out_enc_policy` and `in_enc_policy` forced (and `allowed_enc_level`
//! rc4) against `actorrent download` and `actorrent seed`, with our
//! `encryption` at its default (`prefer`) and at `require`; a plaintext-only
//! libtorrent against `prefer` (the fallback) and against `require` (no
//! connection, both ways); and raw sockets for what the listener must drop
//! (a plaintext handshake under `require`, an unknown SKEY hash, garbage
//! where the key should be). Every case is asserted on the files and on the
//! `connections` counters of `--stats-json`.
//!
//! Needs `/usr/bin/python3` with python3-libtorrent (see
//! `support/lt_peer.py`); a missing module fails the test.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::client::{Client, DOWNLOAD_TIMEOUT};
use support::lt::LtPeer;
use support::process::Actorrent;
use support::torrent::TestTorrent;

const START: Duration = Duration::from_secs(60);
const LT_DONE: Duration = Duration::from_secs(120);

fn small_torrent(dir: &Path, name: &str, seed: u64) -> TestTorrent {
    TestTorrent::multi(
        dir,
        name,
        64 * 1024,
        &[("a.bin", (3 << 20) + 777), ("b/c.bin", 300_001)],
        seed,
    )
}

/// A libtorrent seed of `t` (payload written under `dir/lt-data`) with
/// these encryption arguments; returns it and its address.
fn lt_seed(dir: &Path, t: &TestTorrent, enc: &[&str]) -> (LtPeer, SocketAddr) {
    let data = dir.join("lt-data");
    t.write_payload(&data);
    let mut args: Vec<String> = vec!["--timeout".into(), "300".into()];
    args.extend(enc.iter().map(|s| s.to_string()));
    let mut lt = LtPeer::spawn("seed", &t.path, &data, &args);
    let port: u16 = lt.expect_line("PORT ", START).parse().expect("PORT line");
    (lt, SocketAddr::from(([127, 0, 0, 1], port)))
}

const FORCED: &[&str] = &["--encryption", "forced", "--enc-level", "rc4"];
const PLAINTEXT_ONLY: &[&str] = &["--encryption", "disabled"];

fn conn(v: &Value, dir: &str, kind: &str) -> u64 {
    v["connections"][dir][kind].as_u64().unwrap_or(0)
}

fn counter(v: &Value, name: &str) -> u64 {
    v["connections"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no connections.{name} in {v}"))
}

/// actorrent (default `prefer`, and `require`) downloads from a libtorrent
/// seed that refuses plaintext: every connection is RC4.
#[test]
fn download_from_a_forced_encryption_libtorrent_seed() {
    for extra in [&[][..], &["--encryption", "require"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let t = small_torrent(dir.path(), "enc-dl", 151);
        let (_lt, addr) = lt_seed(dir.path(), &t, FORCED);
        let out = dir.path().join("out");
        let f = Client::download(&t.path, &out, &[addr], extra).wait(DOWNLOAD_TIMEOUT);
        f.assert_success();
        t.assert_downloaded(&out);
        let s = f.final_stats();
        assert!(conn(&s, "outgoing", "rc4") >= 1, "{extra:?}: {s}");
        // A failed attempt (libtorrent closing a connection it finds
        // redundant, say) may be retried, but never gets through in
        // plaintext.
        assert_eq!(conn(&s, "outgoing", "plaintext"), 0, "{extra:?}: {s}");
    }
}

/// With `prefer`, a libtorrent seed that speaks no MSE closes on our key;
/// we dial again in plaintext and download.
#[test]
fn prefer_falls_back_to_plaintext_for_a_plaintext_only_seed() {
    let dir = tempfile::tempdir().unwrap();
    let t = small_torrent(dir.path(), "enc-fallback", 152);
    let (_lt, addr) = lt_seed(dir.path(), &t, PLAINTEXT_ONLY);
    let out = dir.path().join("out");
    let f = Client::download(&t.path, &out, &[addr], &[]).wait(DOWNLOAD_TIMEOUT);
    f.assert_success();
    t.assert_downloaded(&out);
    let s = f.final_stats();
    assert!(conn(&s, "outgoing", "plaintext") >= 1, "{s}");
    assert!(counter(&s, "mse_fallbacks") >= 1, "{s}");
    assert_eq!(conn(&s, "outgoing", "rc4"), 0, "{s}");
}

/// With `require`, a plaintext-only seed is never talked to in plaintext:
/// the dial fails (counted) and no byte of payload arrives.
#[test]
fn require_does_not_dial_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let t = small_torrent(dir.path(), "enc-require-out", 153);
    let (_lt, addr) = lt_seed(dir.path(), &t, PLAINTEXT_ONLY);
    let out = dir.path().join("out");
    let peer = addr.to_string();
    let args: Vec<&std::ffi::OsStr> = vec![
        "download".as_ref(),
        t.path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--peer".as_ref(),
        peer.as_ref(),
        "--encryption".as_ref(),
        "require".as_ref(),
    ];
    let mut a = Actorrent::spawn("require leecher", &args);
    // Two attempts: the first dial and its reconnect (1 s backoff).
    let s = a.wait_stats(START, "two failed encrypted dials", |v| {
        v["connections"]["mse_failures_outgoing"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    });
    assert_eq!(counter(&s, "mse_fallbacks"), 0, "{s}");
    assert_eq!(conn(&s, "outgoing", "plaintext"), 0, "{s}");
    assert_eq!(s["bytes_down"], 0, "{s}");
}

/// An actorrent seed (`require`, and default `prefer`) serves a libtorrent
/// leecher with encryption forced: the incoming connections are RC4.
#[test]
fn forced_encryption_libtorrent_leeches_from_actorrent() {
    for extra in [&["--encryption", "require"][..], &[][..]] {
        let dir = tempfile::tempdir().unwrap();
        let t = small_torrent(dir.path(), "enc-seed", 154);
        let data = dir.path().join("data");
        t.write_payload(&data);
        let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, extra);
        let port = seed.listen_port(START);
        seed.wait_stats(START, "seeding", |v| v["state"] == "seeding");
        let out = dir.path().join("lt-out");
        let mut args = vec!["--timeout".to_owned(), LT_DONE.as_secs().to_string()];
        args.extend(FORCED.iter().map(|s| s.to_string()));
        args.extend(["--peer".into(), format!("127.0.0.1:{port}")]);
        let mut lt = LtPeer::spawn("leech", &t.path, &out, &args);
        lt.expect_line("DONE ", LT_DONE + Duration::from_secs(30));
        t.assert_downloaded(&out);
        let s = seed.wait_stats(Duration::from_secs(30), "an incoming RC4 connection", |v| {
            conn(v, "incoming", "rc4") >= 1
        });
        assert_eq!(conn(&s, "incoming", "plaintext"), 0, "{extra:?}: {s}");
        seed.stop(Duration::from_secs(30));
    }
}

/// A plaintext-only libtorrent leecher: served by a `prefer` seed, in
/// plaintext.
#[test]
fn prefer_seed_serves_a_plaintext_only_libtorrent() {
    let dir = tempfile::tempdir().unwrap();
    let t = small_torrent(dir.path(), "enc-plain-in", 155);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding", |v| v["state"] == "seeding");
    let out = dir.path().join("lt-out");
    let mut args = vec!["--timeout".to_owned(), LT_DONE.as_secs().to_string()];
    args.extend(PLAINTEXT_ONLY.iter().map(|s| s.to_string()));
    args.extend(["--peer".into(), format!("127.0.0.1:{port}")]);
    let mut lt = LtPeer::spawn("leech", &t.path, &out, &args);
    lt.expect_line("DONE ", LT_DONE + Duration::from_secs(30));
    t.assert_downloaded(&out);
    let s = seed.wait_stats(
        Duration::from_secs(30),
        "an incoming plaintext connection",
        |v| conn(v, "incoming", "plaintext") >= 1,
    );
    assert_eq!(conn(&s, "incoming", "rc4"), 0, "{s}");
    seed.stop(Duration::from_secs(30));
}

/// Reads until the seed closes the socket; true if it did (within the
/// read timeout) without sending a BitTorrent handshake back.
fn closed_without_handshake(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) => return false,
        }
    }
    !got.starts_with(b"\x13BitTorrent protocol")
}

/// What the listener drops, each counted: a plaintext handshake while
/// encryption is required; an MSE handshake for a torrent it does not
/// serve (unknown SKEY hash); garbage where the key and the sync hash
/// should be (no sync hash within the 512-byte padding limit).
#[test]
fn the_listener_drops_what_it_must_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = small_torrent(dir.path(), "enc-bad-in", 156);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("require seed", &t.path, &data, &["--encryption", "require"]);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding", |v| v["state"] == "seeding");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // A plaintext handshake for the right torrent.
    let mut plain = TcpStream::connect(addr).unwrap();
    let mut hs = Vec::from(&b"\x13BitTorrent protocol"[..]);
    hs.extend_from_slice(&[0; 8]);
    hs.extend_from_slice(&t.info_hash);
    hs.extend_from_slice(b"-XX0001-plaintext000");
    plain.write_all(&hs).unwrap();
    assert!(closed_without_handshake(plain), "plaintext was answered");
    seed.wait_stats(Duration::from_secs(30), "refused_plaintext 1", |v| {
        v["connections"]["refused_plaintext"] == 1
    });

    // MSE for another torrent: the real initiator, a wrong info-hash.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let secrets = protocol::mse::Secrets::generate(&mut rand::rng());
        actors::mse_stream::initiate(
            s,
            [0x55; 20],
            &[],
            actors::mse_stream::Encryption::Require,
            secrets,
            Duration::from_secs(30),
        )
        .await
        .err()
    });
    assert!(err.is_some(), "an unknown torrent completed MSE");
    seed.wait_stats(Duration::from_secs(30), "unknown_skey 1", |v| {
        v["connections"]["unknown_skey"] == 1
    });

    // 96 bytes of "key" and 600 of padding with no sync hash in them.
    let mut junk = TcpStream::connect(addr).unwrap();
    let garbage: Vec<u8> = (0..96 + 600).map(|i| (i * 7 + 3) as u8).collect();
    junk.write_all(&garbage).unwrap();
    assert!(closed_without_handshake(junk), "garbage was answered");
    let s = seed.wait_stats(Duration::from_secs(30), "mse_errors_incoming 1", |v| {
        v["connections"]["mse_errors_incoming"] == 1
    });
    assert_eq!(conn(&s, "incoming", "plaintext"), 0, "{s}");
    seed.stop(Duration::from_secs(30));
}

//! Peer exchange (BEP 11) with scripted peers on 127.0.0.1: a leecher whose
//! only peer knows nothing but an address learns the seed from that peer's
//! `ut_pex` message and completes; and `actorrent seed` tells a peer that
//! connects to it about the peer it dialled.

mod support;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::ut_pex::Pex;
use protocol::wire::{self, Decoded, ExtendedHandshake, Handshake, Message};
use support::process::Actorrent;
use support::torrent::TestTorrent;

const START: Duration = Duration::from_secs(60);
const DOWNLOAD: Duration = Duration::from_secs(120);
/// Our id for `ut_pex` in the scripted peers' extended handshakes.
const SCRIPT_PEX: u8 = 5;

/// Sends our handshake (extension bit) and extended handshake with
/// `ut_pex`; returns the remote's handshake.
fn open(s: &mut TcpStream, info_hash: [u8; 20], id: &[u8; 20]) -> Handshake {
    open_with(s, info_hash, id, ExtendedHandshake::default())
}

/// [`open`] with more fields in our extended handshake (`ut_pex` added).
fn open_with(
    s: &mut TcpStream,
    info_hash: [u8; 20],
    id: &[u8; 20],
    mut ext: ExtendedHandshake,
) -> Handshake {
    let mut ours = Handshake::new([0; 8], info_hash, *id);
    ours.set_extended(true);
    let mut out = BytesMut::new();
    ours.encode(&mut out);
    ext.m.insert("ut_pex".to_string(), SCRIPT_PEX);
    ext.to_message().encode(&mut out);
    s.write_all(&out).unwrap();
    let mut hs = [0u8; Handshake::LEN];
    s.read_exact(&mut hs).unwrap();
    Handshake::decode(&hs).unwrap().complete().unwrap()
}

/// Reads messages until `pick` returns something or `timeout` passes.
fn read_until<T>(
    s: &mut TcpStream,
    timeout: Duration,
    mut pick: impl FnMut(Message) -> Option<T>,
) -> Option<T> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        while let Ok(Decoded::Complete(msg)) =
            wire::decode_message(&mut buf, &wire::Limits::default())
        {
            if let Some(v) = pick(msg) {
                return Some(v);
            }
        }
    }
    None
}

/// The `ut_pex` id the remote assigned in its extended handshake.
fn their_pex_id(msg: &Message) -> Option<u8> {
    match msg {
        Message::Extended { id: 0, payload } => ExtendedHandshake::decode(payload)
            .ok()
            .and_then(|h| h.m.get("ut_pex").copied()),
        _ => None,
    }
}

#[test]
fn a_leecher_learns_the_seed_by_pex_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(dir.path(), "pex-in", 64 * 1024, &[("a.bin", 1 << 20)], 21);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &[]);
    let seed_port = seed.listen_port(START);
    seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });

    // The go-between: no data, only an address by PEX (with junk around
    // it: a port-0 entry and a dropped list).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let info_hash = t.info_hash;
    let relay = std::thread::spawn(move || {
        let mut s = support::scripted::accept_plaintext(&listener);
        open(&mut s, info_hash, b"-SC0001-pexrelay0000");
        let id = read_until(&mut s, DOWNLOAD, |m| their_pex_id(&m)).expect("our ut_pex id");
        let pex = Pex {
            added: vec![
                (
                    SocketAddr::from(([127, 0, 0, 1], seed_port)),
                    protocol::ut_pex::flags::SEED,
                ),
                (SocketAddr::from(([127, 0, 0, 1], 0)), 0),
            ],
            dropped: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
            truncated: 0,
        };
        let mut out = BytesMut::new();
        Message::Extended {
            id,
            payload: Bytes::from(pex.encode()),
        }
        .encode(&mut out);
        s.write_all(&out).unwrap();
        // Stay until the leecher hangs up.
        read_until(&mut s, DOWNLOAD, |_| None::<()>);
    });

    let out = dir.path().join("out");
    let peer = format!("127.0.0.1:{relay_port}");
    let args: Vec<&OsStr> = vec![
        "download".as_ref(),
        t.path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--peer".as_ref(),
        peer.as_ref(),
        // The scripted relay speaks plaintext only.
        "--encryption".as_ref(),
        "disable".as_ref(),
    ];
    let mut dl = Actorrent::spawn("download learning by PEX", &args);
    let status = dl.wait_exit(DOWNLOAD);
    if !status.success() {
        dl.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(&out);
    assert!(
        dl.log().contains("peers learned by PEX"),
        "no PEX line in the log"
    );
    relay.join().unwrap();
    seed.stop(Duration::from_secs(30));
}

/// BEP 10 `ipv6` + `p`: a go-between met over IPv4 names, in its extended
/// handshake only (no `ut_pex` message), an IPv6 address where the seed
/// listens (::1, the seed's dual-stack listener); the leecher dials it and
/// completes.
#[test]
fn a_leecher_dials_the_ipv6_address_of_an_extended_handshake() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(dir.path(), "ext-v6", 64 * 1024, &[("a.bin", 1 << 20)], 22);
    let data = dir.path().join("data");
    t.write_payload(&data);
    // Dual-stack: reachable on ::1 (and 127.0.0.1).
    let seed_args: Vec<&OsStr> = vec![
        "seed".as_ref(),
        t.path.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "[::]:0".as_ref(),
    ];
    let mut seed = Actorrent::spawn("actorrent seed on [::]", &seed_args);
    let seed_port = seed.listen_port(START);
    let line = seed.wait_stats(START, "seeding after the check", |v| {
        v["state"] == "seeding"
    });
    // The stats line names the listener's address.
    assert_eq!(
        line["network"]["listen"].as_str(),
        Some(format!("[::]:{seed_port}").as_str()),
        "network.listen in {line}"
    );

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let info_hash = t.info_hash;
    let relay = std::thread::spawn(move || {
        let mut s = support::scripted::accept_plaintext(&listener);
        let ext = ExtendedHandshake {
            ipv6: Some(std::net::Ipv6Addr::LOCALHOST),
            p: Some(seed_port),
            ..Default::default()
        };
        open_with(&mut s, info_hash, b"-SC0001-extv6relay00", ext);
        // Stay until the leecher hangs up.
        read_until(&mut s, DOWNLOAD, |_| None::<()>);
    });

    let out = dir.path().join("out");
    let peer = format!("127.0.0.1:{relay_port}");
    let args: Vec<&OsStr> = vec![
        "download".as_ref(),
        t.path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--peer".as_ref(),
        peer.as_ref(),
        "--encryption".as_ref(),
        "disable".as_ref(),
    ];
    let mut dl = Actorrent::spawn("download learning an IPv6 address", &args);
    let status = dl.wait_exit(DOWNLOAD);
    if !status.success() {
        dl.fail(&format!("exited with {status}"));
    }
    t.assert_downloaded(&out);
    assert!(
        dl.log()
            .contains("IPv6 address from the extended handshake"),
        "no extended-handshake IPv6 line in the log"
    );
    relay.join().unwrap();
    seed.stop(Duration::from_secs(30));
}

#[test]
fn the_seed_tells_a_newcomer_about_the_peer_it_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        "pex-out",
        64 * 1024,
        &[("a.bin", 256 << 10)],
        22,
    );
    let data = dir.path().join("data");
    t.write_payload(&data);
    let info_hash = t.info_hash;
    // B: a peer the seed dials (so its address is where it listens).
    let b_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let b_addr = b_listener.local_addr().unwrap();
    let b = std::thread::spawn(move || {
        let mut s = support::scripted::accept_plaintext(&b_listener);
        open(&mut s, info_hash, b"-SC0001-pexdialled00");
        read_until(&mut s, DOWNLOAD, |_| None::<()>);
    });
    let b_peer = b_addr.to_string();
    let mut seed = Actorrent::seed(
        "actorrent seed",
        &t.path,
        &data,
        &["--peer", &b_peer, "--encryption", "disable"],
    );
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding with B connected", |v| {
        v["state"] == "seeding" && v["peers"].as_u64().unwrap_or(0) >= 1
    });
    // A dials in and is told of B in its first ut_pex message.
    let mut a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    open(&mut a, info_hash, b"-SC0001-pexnewcomer0");
    let told = read_until(&mut a, Duration::from_secs(30), |m| match m {
        Message::Extended {
            id: SCRIPT_PEX,
            payload,
        } => Pex::decode(&payload, &protocol::ut_pex::Limits::default()).ok(),
        _ => None,
    })
    .unwrap_or_else(|| seed.fail("no ut_pex message to the newcomer"));
    assert!(
        told.added.iter().any(|(addr, _)| *addr == b_addr),
        "B not in {told:?}"
    );
    assert!(told.added.len() <= 50);
    drop(a);
    seed.stop(Duration::from_secs(30));
    b.join().unwrap();
}

/// Rewrites `t`'s .torrent with `private = 1` in the info dictionary (a new
/// info-hash).
fn make_private(t: &mut TestTorrent) {
    use protocol::bencode::{self, Bencode};
    let bytes = std::fs::read(&t.path).unwrap();
    let Bencode::Dict(mut root) = bencode::decode(&bytes).unwrap().to_owned_value() else {
        panic!("not a dictionary");
    };
    let Some(Bencode::Dict(info)) = root.get_mut(b"info".as_slice()) else {
        panic!("no info");
    };
    info.insert(b"private".to_vec(), Bencode::Int(1));
    let info_bytes = Bencode::Dict(info.clone()).encode();
    t.info_hash = protocol::metainfo::InfoHash::of(&info_bytes).0;
    std::fs::write(&t.path, Bencode::Dict(root).encode()).unwrap();
}

/// BEP 27: a private torrent's peers advertise no `ut_pex` (its metadata
/// is still served), and no DHT node starts for it even with `[dht]` on.
#[test]
fn a_private_torrent_uses_neither_pex_nor_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = TestTorrent::multi(
        dir.path(),
        "private",
        64 * 1024,
        &[("a.bin", 128 << 10)],
        23,
    );
    make_private(&mut t);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let args: Vec<&OsStr> = vec![
        "seed".as_ref(),
        t.path.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    // The DHT on, with no bootstrap node (nothing leaves 127.0.0.1).
    let env = [
        ("ACTORRENT_DHT_ENABLED", "true"),
        ("ACTORRENT_DHT_BOOTSTRAP_NODES", "[]"),
    ];
    let mut seed = Actorrent::spawn_env("private seed", &args, &env);
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding", |v| v["state"] == "seeding");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    open(&mut s, t.info_hash, b"-SC0001-privatecheck");
    let ext = read_until(&mut s, Duration::from_secs(30), |m| match m {
        Message::Extended { id: 0, payload } => ExtendedHandshake::decode(&payload).ok(),
        _ => None,
    })
    .unwrap_or_else(|| seed.fail("no extended handshake"));
    assert!(!ext.m.contains_key("ut_pex"), "{ext:?}");
    assert!(ext.m.contains_key("ut_metadata"), "{ext:?}");
    drop(s);
    assert!(
        !seed.log().contains("DHT node running"),
        "a DHT node started for a private torrent"
    );
    seed.stop(Duration::from_secs(30));
}

/// BEP 10 `yourip`: the seed tells a peer that dialled in over 127.0.0.1
/// the address it sees; no `ipv6`, since its only IPv6 address on this
/// connection would be loopback (the rule for global addresses is unit
/// tested in `actors/src/peer/mod.rs`).
#[test]
fn the_extended_handshake_says_yourip() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(dir.path(), "yourip", 64 * 1024, &[("a.bin", 64 << 10)], 23);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed(
        "actorrent seed",
        &t.path,
        &data,
        &["--encryption", "disable"],
    );
    let port = seed.listen_port(START);
    seed.wait_stats(START, "seeding", |v| v["state"] == "seeding");
    let mut a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = a.local_addr().unwrap();
    open(&mut a, t.info_hash, b"-SC0001-youripasker0");
    let ext = read_until(&mut a, Duration::from_secs(30), |m| match m {
        Message::Extended { id: 0, payload } => ExtendedHandshake::decode(&payload).ok(),
        _ => None,
    })
    .unwrap_or_else(|| seed.fail("no extended handshake"));
    assert_eq!(ext.yourip, Some(local.ip()), "{ext:?}");
    assert_eq!(ext.ipv6, None, "{ext:?}");
    drop(a);
    seed.stop(Duration::from_secs(30));
}

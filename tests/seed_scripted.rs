//! Scripted leechers against the real `actorrent seed` on 127.0.0.1 (issue
//! 6, "Scripted leechers"): a normal download checked block by block, a
//! request flood, a cancel storm, and the
//! seed's peak memory while several leechers misbehave at once. Each test
//! asserts what the misbehaving connection saw (closed, or still served)
//! and that the seed stays up and serves a well-behaved leecher afterwards.
//! Requests no seed may honour are rejected, not fatal: see
//! `tests/peer_tolerance.rs`, which tries every such input.
//!
//! Every seed runs with `--unchoke-slots unlimited` so an interested leecher
//! is unchoked at once, without waiting for a choker round.
//!
//! The first test runs the scripted leecher against libtorrent's seed: it
//! proves the leecher speaks correct BitTorrent, so a failure below is the
//! seed's.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use protocol::wire::{BlockRef, Message};
use support::leecher::{LeechError, Leecher};
use support::lt::LtPeer;
use support::process::{Actorrent, assert_stats_fields};
use support::torrent::TestTorrent;

/// Generous bound on one scripted step (connect, unchoke, a close): far
/// above what loopback needs, low enough that a hung seed fails the test.
const STEP: Duration = Duration::from_secs(30);
/// Bound on fetching a whole test torrent.
const FETCH: Duration = Duration::from_secs(120);
/// Bound on a seed checking its data and binding its listener.
const START: Duration = Duration::from_secs(120);

/// A multi-file torrent of about 2.3 MiB with 64 KiB pieces: files that end
/// mid-piece, an empty file, and a last piece that is short (so a full
/// block at its start runs past its end).
fn multi_file(dir: &Path, name: &str, seed: u64) -> TestTorrent {
    TestTorrent::multi(
        dir,
        name,
        64 * 1024,
        &[
            ("a.bin", 1_500_000),
            ("sub/b.bin", 700_001),
            ("sub/c.txt", 5),
            ("empty.txt", 0),
            ("z.bin", 100_000 + 3000),
        ],
        seed,
    )
}

/// A seed of `t` from a fresh data directory under `dir`, serving everyone.
fn start_seed(dir: &Path, t: &TestTorrent, extra: &[&str]) -> (Actorrent, u16) {
    let data = dir.join("data");
    t.write_payload(&data);
    let mut args = vec!["--unchoke-slots", "unlimited"];
    args.extend_from_slice(extra);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &args);
    let port = seed.listen_port(START);
    (seed, port)
}

fn addr(port: u16) -> std::net::SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Connects a fast-extension leecher and waits for its unchoke.
fn unchoked(seed: &Actorrent, port: u16, t: &TestTorrent) -> Leecher {
    let mut l = Leecher::connect(addr(port), t, true, STEP)
        .unwrap_or_else(|e| seed.fail(&format!("connect: {e:?}")));
    l.interested_until_unchoked(STEP)
        .unwrap_or_else(|e| seed.fail(&format!("unchoke: {e:?}")));
    l
}

/// Asserts the seed still serves: a new leecher downloads `blocks` intact.
fn assert_still_serves(seed: &mut Actorrent, port: u16, t: &TestTorrent, blocks: &[BlockRef]) {
    assert!(seed.running(), "the seed exited");
    let mut l = unchoked(seed, port, t);
    l.fetch(blocks, 64, FETCH)
        .unwrap_or_else(|e| seed.fail(&format!("a later leecher was not served: {e:?}")));
}

#[test]
fn scripted_leecher_downloads_from_libtorrent() {
    let dir = tempfile::tempdir().unwrap();
    let t = multi_file(dir.path(), "lt-src", 1);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let (_lt, port) = LtPeer::seed(&t.path, &data);
    let mut l = Leecher::connect(addr(port), &t, true, STEP).expect("connect to libtorrent");
    assert!(l.peer.has_all, "libtorrent announced only some pieces");
    l.interested_until_unchoked(STEP)
        .expect("libtorrent unchokes");
    let blocks = t.blocks();
    l.fetch(&blocks, 64, FETCH)
        .expect("every block from libtorrent");
    assert_eq!(l.peer.good_blocks, blocks.len());
}

#[test]
fn serves_every_block_to_scripted_leechers() {
    let dir = tempfile::tempdir().unwrap();
    let t = multi_file(dir.path(), "serve", 2);
    let (mut seed, port) = start_seed(dir.path(), &t, &[]);
    let first = seed.stats()[0].clone();
    assert_stats_fields(&first);
    assert_eq!(first["listen_port"], port, "{first}");

    // A fast-extension leecher: the handshake reply has both bits, the
    // seed has everything, and every block arrives intact.
    let mut l = unchoked(&seed, port, &t);
    let hs = l.peer.handshake.unwrap();
    assert!(
        hs.supports_fast(),
        "the seed's handshake lacks the fast bit"
    );
    assert!(
        hs.supports_extended(),
        "the seed's handshake lacks the extension bit"
    );
    assert!(l.peer.has_all, "the seed announced only some pieces");
    let blocks = t.blocks();
    l.fetch(&blocks, 100, FETCH)
        .unwrap_or_else(|e| seed.fail(&format!("download: {e:?}")));
    assert_eq!(l.peer.good_blocks, blocks.len());

    // A plain BEP 3 leecher: no have-all (it cannot understand one), a full
    // bitfield instead; served the same.
    let mut plain = Leecher::connect(addr(port), &t, false, STEP)
        .unwrap_or_else(|e| seed.fail(&format!("connect without fast: {e:?}")));
    assert!(
        !plain.peer.messages.contains(&Message::HaveAll),
        "have-all sent to a peer without the fast extension"
    );
    assert!(
        plain
            .peer
            .messages
            .iter()
            .any(|m| matches!(m, Message::Bitfield(_))),
        "no bitfield for a peer without the fast extension"
    );
    assert!(plain.peer.has_all, "the bitfield is not full");
    plain
        .interested_until_unchoked(STEP)
        .unwrap_or_else(|e| seed.fail(&format!("unchoke without fast: {e:?}")));
    plain
        .fetch(&blocks, 100, FETCH)
        .unwrap_or_else(|e| seed.fail(&format!("download without fast: {e:?}")));

    // The seed counts what it sent: at least both payloads.
    let want = 2 * t.payload.len() as u64;
    let s = seed.wait_stats(STEP, "bytes_up of both downloads", |v| {
        v["bytes_up"].as_u64().is_some_and(|b| b >= want)
    });
    assert_stats_fields(&s);
    assert_eq!(s["state"], "seeding", "{s}");
    assert_eq!(s["pieces_done"], t.piece_count(), "{s}");
    assert_eq!(s["pieces_total"], t.piece_count(), "{s}");
    seed.stop(STEP);
}

/// `n` requests cycling through the torrent's blocks, in one buffer.
fn flood(t: &TestTorrent, n: usize) -> Vec<Message> {
    t.blocks()
        .into_iter()
        .cycle()
        .take(n)
        .map(Message::Request)
        .collect()
}

/// Sends a flood of 5000 requests without reading, then expects the seed
/// to close the connection.
fn flood_and_expect_close(seed: &Actorrent, port: u16, t: &TestTorrent) {
    let mut l = unchoked(seed, port, t);
    match l.send(&flood(t, 5000)) {
        // Already closed by the seed part way through: what we want.
        Ok(()) | Err(LeechError::Closed) => {}
        Err(e) => seed.fail(&format!("sending the flood: {e:?}")),
    }
    if let Err(e) = l.wait_closed(STEP) {
        seed.fail(&format!(
            "a peer with 5000 requests queued was not disconnected: {e:?} ({} blocks answered)",
            l.peer.good_blocks
        ));
    }
    assert!(
        l.peer.good_blocks < 5000,
        "the seed answered the whole flood instead of dropping the peer"
    );
}

#[test]
fn request_flood_drops_the_flooder_only() {
    let dir = tempfile::tempdir().unwrap();
    let t = multi_file(dir.path(), "flood", 3);
    let (mut seed, port) = start_seed(dir.path(), &t, &[]);
    // A well-behaved leecher connected throughout keeps its connection.
    let mut bystander = unchoked(&seed, port, &t);
    flood_and_expect_close(&seed, port, &t);
    let blocks = t.blocks();
    bystander
        .fetch(&blocks, 64, FETCH)
        .unwrap_or_else(|e| seed.fail(&format!("bystander after the flood: {e:?}")));
    assert_still_serves(&mut seed, port, &t, &blocks);
    seed.stop(STEP);
}

#[test]
fn cancel_storm_is_ignored_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // About 8 MiB: 400 blocks for the storm and 100 more to serve after.
    let t = TestTorrent::multi(
        dir.path(),
        "cancel",
        256 * 1024,
        &[("a.bin", 6 << 20), ("b/c.bin", (2 << 20) + 5000)],
        5,
    );
    let (mut seed, port) = start_seed(dir.path(), &t, &[]);
    let blocks = t.blocks();
    assert!(blocks.len() > 400 + 100, "the storm needs spare blocks");
    let (stormed, rest) = blocks.split_at(400);

    let mut l = unchoked(&seed, port, &t);
    // 400 requests, a cancel for each, and cancels for blocks never asked
    // for (each rest block, and odd offsets inside stormed ones), all in
    // one write.
    let mut storm: Vec<Message> = stormed.iter().map(|b| Message::Request(*b)).collect();
    storm.extend(stormed.iter().map(|b| Message::Cancel(*b)));
    storm.extend(rest.iter().map(|b| Message::Cancel(*b)));
    storm.extend(stormed.iter().take(200).map(|b| {
        Message::Cancel(BlockRef {
            index: b.index,
            begin: b.begin + 1,
            length: b.length - 1,
        })
    }));
    storm.extend(stormed.iter().map(|b| Message::Cancel(*b)));
    l.send(&storm)
        .unwrap_or_else(|e| seed.fail(&format!("sending the storm: {e:?}")));

    // The same connection is still served; blocks of the storm may still
    // arrive (sent before the cancel was read) or be rejected, once each.
    let mut stray: HashSet<BlockRef> = stormed.iter().copied().collect();
    l.fetch_tolerating(rest, 64, FETCH, &mut stray)
        .unwrap_or_else(|e| seed.fail(&format!("serving after the storm: {e:?}")));
    assert!(seed.running(), "the seed exited");
    assert_still_serves(&mut seed, port, &t, &blocks);
    seed.stop(STEP);
}

/// 64 MiB over 4 concurrent flooders (5000 requests each, not reading),
/// 4 leechers holding 450 requests (under the cap) without reading for a
/// while, and then two full downloads.
///
/// The bound, 200 MiB peak resident: the payload is 64 MiB, so even a
/// read-ahead cache holding every piece at once plus 8 connections' socket
/// buffers and the runtime stay well under it. A seed that read a block
/// for each request it accepted would hold 4 x 5000 x 16 KiB = 312 MiB for
/// the flooders alone (they never read), and one that buffered every
/// stalled leecher's 450 blocks another 28 MiB: either crosses the bound.
#[test]
fn memory_stays_bounded_under_floods() {
    const BOUND: u64 = 200 << 20;
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        "memory",
        256 * 1024,
        &[
            ("image.bin", 48 << 20),
            ("more/rest.bin", (16 << 20) - 12345),
        ],
        6,
    );
    let (mut seed, port) = start_seed(dir.path(), &t, &[]);
    let after_start = seed.vm_hwm();
    let blocks = t.blocks();

    std::thread::scope(|s| {
        for i in 0..4 {
            let (seed, t) = (&seed, &t);
            s.spawn(move || {
                // Each flooder starts at another quarter of the torrent.
                let mut l = unchoked(seed, port, t);
                let msgs: Vec<Message> = t
                    .blocks()
                    .into_iter()
                    .cycle()
                    .skip(i * t.blocks().len() / 4)
                    .take(5000)
                    .map(Message::Request)
                    .collect();
                match l.send(&msgs) {
                    Ok(()) | Err(LeechError::Closed) => {}
                    Err(e) => seed.fail(&format!("flooder {i}: {e:?}")),
                }
                if let Err(e) = l.wait_closed(STEP) {
                    seed.fail(&format!("flooder {i} not disconnected: {e:?}"));
                }
            });
        }
        for i in 0..4 {
            let (seed, t, blocks) = (&seed, &t, &blocks);
            s.spawn(move || {
                let mut l = unchoked(seed, port, t);
                let mine: Vec<BlockRef> = blocks.iter().skip(i * 1000).take(450).copied().collect();
                let reqs: Vec<Message> = mine.iter().map(|b| Message::Request(*b)).collect();
                l.send(&reqs)
                    .unwrap_or_else(|e| seed.fail(&format!("staller {i}: {e:?}")));
                // Hold them unread while the flooders run, then take them.
                std::thread::sleep(Duration::from_secs(3));
                l.wait_for(FETCH, "the held blocks", |p| p.good_blocks >= mine.len())
                    .unwrap_or_else(|e| {
                        seed.fail(&format!(
                            "staller {i} not served: {e:?}; the seed's log of it:\n{}",
                            seed.log_about(l.local_port())
                        ))
                    });
            });
        }
    });
    let during = seed.vm_hwm();
    // Two complete downloads at once read the whole payload.
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (seed, t, blocks) = (&seed, &t, &blocks);
            s.spawn(move || {
                let mut l = unchoked(seed, port, t);
                l.fetch(blocks, 128, FETCH)
                    .unwrap_or_else(|e| seed.fail(&format!("full download: {e:?}")));
            });
        }
    });
    let peak = seed.vm_hwm();
    eprintln!(
        "seed VmHWM: {} MiB after start, {} MiB after the floods, {} MiB after two full downloads",
        after_start >> 20,
        during >> 20,
        peak >> 20
    );
    seed.assert_peak_rss_under(BOUND);
    seed.stop(STEP);
}

/// A leecher that asks for tiny blocks, each of another piece, and never
/// reads: every block queued for its socket is a slice of a whole piece
/// read for it, and keeps that piece's buffer alive after the read-ahead
/// cache has moved on. 2500 blocks of 256 bytes are 0.7 MiB of output,
/// under `max_send_queue`; past the first few hundred (what the socket
/// buffers take, kept small here) each pins a 256 KiB piece: 400-500 MiB
/// if only the cache counted in the budget. The pinned pieces hold their
/// budget until the last block is dropped, so the seed's memory stays
/// within the 32 MiB budget set here (once it is full, the seed reads just
/// the blocks asked for); then the leecher reads, and every block is right.
#[test]
fn tiny_blocks_of_many_pieces_pin_no_more_than_the_budget() {
    const BOUND: u64 = 160 << 20;
    const PIECE: u32 = 256 * 1024;
    const BLOCKS: usize = 2500;
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(dir.path(), "pin", PIECE, &[("image.bin", 16 << 20)], 7);
    // A small fixed send buffer (ours stays small while we do not read), so
    // the blocks wait in the seed's queue rather than in the kernel's.
    let config = dir.path().join("pin.toml");
    std::fs::write(
        &config,
        "socket_send_buffer = 16384\n[budget]\ncapacity = 33554432\n",
    )
    .unwrap();
    let (mut seed, port) = start_seed(dir.path(), &t, &["--config", config.to_str().unwrap()]);
    let mut l = unchoked(&seed, port, &t);
    let pieces = (16 << 20) / PIECE;
    let wanted: Vec<BlockRef> = (0..BLOCKS as u32)
        .map(|i| BlockRef {
            index: i % pieces,
            begin: (i / pieces) * 256,
            length: 256,
        })
        .collect();
    // In batches well under the 500 requests the seed lets a peer queue,
    // paced so that its reads keep up.
    for batch in wanted.chunks(100) {
        let reqs: Vec<Message> = batch.iter().map(|b| Message::Request(*b)).collect();
        l.send(&reqs)
            .unwrap_or_else(|e| seed.fail(&format!("sending requests: {e:?}")));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let peak = seed.vm_hwm();
    eprintln!(
        "seed VmHWM {} MiB with {BLOCKS} tiny blocks unread",
        peak >> 20
    );
    seed.assert_peak_rss_under(BOUND);
    l.wait_for(FETCH, "the tiny blocks", |p| p.good_blocks >= BLOCKS)
        .unwrap_or_else(|e| {
            seed.fail(&format!(
                "tiny blocks not served: {e:?}; the seed's log of it:\n{}",
                seed.log_about(l.local_port())
            ))
        });
    assert_still_serves(&mut seed, port, &t, &t.blocks());
    seed.stop(STEP);
}

/// Raw-disk mode: the payload's "files" are byte ranges of one image file
/// (EZIO's hex-offset names), and `--raw-target` seeds from that image.
#[test]
fn serves_from_a_raw_target() {
    let dir = tempfile::tempdir().unwrap();
    let extents: [(u64, usize); 3] = [(0, 300_000), (0x10_0000, 700_000), (0x20_0000, 50_000)];
    let names: Vec<String> = extents.iter().map(|(o, _)| format!("0x{o:016x}")).collect();
    let files: Vec<(&str, usize)> = names
        .iter()
        .zip(&extents)
        .map(|(n, (_, len))| (n.as_str(), *len))
        .collect();
    let t = TestTorrent::multi(dir.path(), "disk", 64 * 1024, &files, 7);
    // The image: each extent's bytes at its offset, zeros between.
    let mut image = vec![0u8; 0x20_0000 + 50_000];
    for ((offset, _), (_, data)) in extents.iter().zip(&t.files) {
        let at = *offset as usize;
        image[at..at + data.len()].copy_from_slice(data);
    }
    let image_path = dir.path().join("disk.img");
    std::fs::write(&image_path, &image).unwrap();

    let args: Vec<&std::ffi::OsStr> = vec![
        "seed".as_ref(),
        t.path.as_os_str(),
        "--raw-target".as_ref(),
        image_path.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--unchoke-slots".as_ref(),
        "unlimited".as_ref(),
    ];
    let mut seed = Actorrent::spawn("actorrent seed --raw-target", &args);
    let port = seed.listen_port(START);
    let mut l = unchoked(&seed, port, &t);
    assert!(l.peer.has_all, "the raw seed announced only some pieces");
    l.fetch(&t.blocks(), 64, FETCH)
        .unwrap_or_else(|e| seed.fail(&format!("download from the image: {e:?}")));
    seed.stop(STEP);
}

/// With one upload slot, a second and third leecher stay choked: a request
/// from the fast-extension one is rejected, one from the plain BEP 3 one
/// is dropped (never answered with a block before the unchoke), and both
/// keep their connections. Once the first leecher leaves, a choked one
/// gets the slot and is served.
#[test]
fn requests_while_choked_are_rejected_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let t = multi_file(dir.path(), "choked", 8);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("actorrent seed", &t.path, &data, &["--unchoke-slots", "1"]);
    let port = seed.listen_port(START);
    let blocks = t.blocks();
    let first = unchoked(&seed, port, &t);

    let mut fast = Leecher::connect(addr(port), &t, true, STEP)
        .unwrap_or_else(|e| seed.fail(&format!("connect: {e:?}")));
    let mut plain = Leecher::connect(addr(port), &t, false, STEP)
        .unwrap_or_else(|e| seed.fail(&format!("connect: {e:?}")));
    let r = blocks[3];
    fast.send(&[Message::Interested, Message::Request(r)])
        .unwrap_or_else(|e| seed.fail(&format!("request: {e:?}")));
    plain
        .send(&[Message::Interested, Message::Request(r)])
        .unwrap_or_else(|e| seed.fail(&format!("request: {e:?}")));
    fast.wait_for(STEP, "a reject or an unchoke", |p| {
        p.rejected.contains(&r) || !p.choking
    })
    .unwrap_or_else(|e| seed.fail(&format!("choked fast leecher: {e:?}")));
    // The one slot can rotate (optimistic unchoke) between our request and
    // its answer; only a request that met a choke must be rejected.
    if fast.peer.choking {
        assert_eq!(fast.peer.good_blocks, 0, "a choked peer got a block");
    }

    // The slot frees with only the plain leecher left interested: it is
    // unchoked and served, and its request made while choked was dropped,
    // not queued.
    drop(fast);
    drop(first);
    plain
        .wait_for(STEP, "the unchoke after the slot freed", |p| !p.choking)
        .unwrap_or_else(|e| seed.fail(&format!("plain leecher never unchoked: {e:?}")));
    assert_eq!(
        plain.peer.good_blocks, 0,
        "a request made while choked was answered after the unchoke (BEP 3 drops it)"
    );
    plain
        .fetch(&blocks[..8], 8, FETCH)
        .unwrap_or_else(|e| seed.fail(&format!("plain leecher after the unchoke: {e:?}")));
    seed.stop(STEP);
}

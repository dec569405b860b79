//! What a peer may send (issue 16): every row of the table in the peer
//! module's docs (`actors/src/peer/mod.rs`), tried against the real client
//! in both directions, on 127.0.0.1.
//!
//! - Seeding: scripted leechers send each input to `actorrent seed`; a
//!   tolerated input leaves the connection serving (the same connection
//!   then fetches blocks, each checked against the payload), a fatal one
//!   gets the connection closed. One more leecher replays, message for
//!   message, what a popular command-line client sent when it could not
//!   download from us (extended handshake, have none, four allowed fast,
//!   requests, haves, then a bitfield mid-connection) and downloads the
//!   whole torrent that way.
//! - Leeching: `actorrent download` fetches from scripted seeds that send
//!   each input; tolerating seeds keep their one connection to the end,
//!   fatal ones are closed, and the reconnect policy is checked: a
//!   protocol error is retried until `max_protocol_strikes`, input no
//!   honest peer sends is never retried.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::wire::{BLOCK_SIZE, ExtendedHandshake, Message};
use support::client::{Client, DOWNLOAD_TIMEOUT};
use support::leecher::{LeechError, Leecher, raw_request};
use support::process::Actorrent;
use support::scripted::{Fault, Gate, Script, Seed};
use support::torrent::TestTorrent;
use support::wait_until;

/// Bound on one scripted step (connect, unchoke, a close).
const STEP: Duration = Duration::from_secs(30);
/// Bound on a seed checking its data and binding its listener.
const START: Duration = Duration::from_secs(120);

fn frame(m: &Message) -> Bytes {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    b.freeze()
}

fn frames(ms: &[Message]) -> Vec<u8> {
    ms.iter().flat_map(|m| frame(m).to_vec()).collect()
}

/// A raw frame: length prefix, `id`, `payload`.
fn raw(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(id);
    v.extend_from_slice(payload);
    v
}

/// A message naming piece `index` only (have, suggest, allowed fast).
fn raw_index(id: u8, index: u32) -> Vec<u8> {
    raw(id, &index.to_be_bytes())
}

/// A block message (request, cancel, reject) as raw bytes.
fn raw_block(id: u8, index: u32, begin: u32, length: u32) -> Vec<u8> {
    let mut v = raw_request(index, begin, length);
    v[4] = id;
    v
}

fn bitfield(t: &TestTorrent, held: impl Fn(u32) -> bool) -> Bytes {
    let n = t.piece_count();
    let mut bits = vec![0u8; n.div_ceil(8) as usize];
    for i in (0..n).filter(|&i| held(i)) {
        bits[i as usize / 8] |= 0x80 >> (i % 8);
    }
    Bytes::from(bits)
}

/// About 4 MiB in 64 KiB pieces: enough blocks that a download spans the
/// scripted seeds' injections, and a short last piece.
fn torrent(dir: &Path, name: &str, seed: u64) -> TestTorrent {
    TestTorrent::multi(
        dir,
        name,
        64 * 1024,
        &[("a.bin", 3_000_000), ("b/c.bin", 1_200_003)],
        seed,
    )
}

// ---- seeding ----------------------------------------------------------------

fn addr(port: u16) -> std::net::SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// What the seed must do with one input.
enum Expect {
    /// Keep the connection and go on serving it.
    Kept,
    /// Close it.
    Closed,
}

struct Case {
    what: &'static str,
    /// Our handshake sets the fast and extension bits.
    fast: bool,
    /// Sent after the unchoke (or, when `!unchoked`, right after the
    /// handshake and hello).
    bytes: Vec<u8>,
    expect: Expect,
    /// Counted in `protocol_oddities` (a tolerated oddity).
    odd: bool,
}

fn case(what: &'static str, bytes: Vec<u8>, expect: Expect, odd: bool) -> Case {
    Case {
        what,
        fast: true,
        bytes,
        expect,
        odd,
    }
}

#[test]
fn seed_tolerates_what_libtorrent_tolerates_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "seed-rows", 11);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed(
        "actorrent seed",
        &t.path,
        &data,
        &["--unchoke-slots", "unlimited"],
    );
    let port = seed.listen_port(START);
    let n = t.piece_count();
    let last = n - 1;
    let blocks = t.blocks();
    let piece0 = blocks[0];
    let ext = ExtendedHandshake {
        v: Some("second handshake".into()),
        reqq: Some(64),
        ..ExtendedHandshake::default()
    };
    use Expect::{Closed, Kept};
    let mut cases = vec![
        case(
            "late bitfield after have none and haves",
            frames(&[Message::Have(0), Message::Bitfield(bitfield(&t, |i| i < 3))]),
            Kept,
            true,
        ),
        case(
            "late have none after a have",
            frames(&[Message::Have(1), Message::HaveNone]),
            Kept,
            true,
        ),
        case(
            "repeated have",
            frames(&[Message::Have(2), Message::Have(2), Message::Have(2)]),
            Kept,
            true,
        ),
        case(
            "request for a block past the short last piece",
            raw_request(last, 0, BLOCK_SIZE),
            Kept,
            true,
        ),
        case(
            "request with index == piece count",
            raw_request(n, 0, BLOCK_SIZE),
            Kept,
            true,
        ),
        case(
            "request with index u32::MAX",
            raw_request(u32::MAX, 0, BLOCK_SIZE),
            Kept,
            true,
        ),
        case(
            "request past the piece end",
            raw_request(0, t.piece_length - 8192, BLOCK_SIZE),
            Kept,
            true,
        ),
        case("request of length 0", raw_request(0, 0, 0), Kept, true),
        case(
            "request of 16 KiB + 1",
            raw_request(0, 0, BLOCK_SIZE + 1),
            Kept,
            true,
        ),
        case(
            "request of 128 KiB",
            raw_request(0, 0, 128 * 1024),
            Kept,
            true,
        ),
        case(
            "request of u32::MAX bytes",
            raw_request(1, 0, u32::MAX),
            Kept,
            true,
        ),
        case(
            "a block we never requested",
            frames(&[Message::Piece {
                index: piece0.index,
                begin: piece0.begin,
                data: t.block(&piece0).unwrap(),
            }]),
            Kept,
            true,
        ),
        case(
            "cancel for a request not queued",
            frames(&[Message::Cancel(blocks[5])]),
            Kept,
            false,
        ),
        case(
            "cancel, reject, suggest and allowed fast out of range",
            [
                raw_block(8, n, 0, BLOCK_SIZE),
                raw_block(16, n + 5, 0, BLOCK_SIZE),
                raw_index(13, n),
                raw_index(17, u32::MAX),
            ]
            .concat(),
            Kept,
            true,
        ),
        case(
            "reject for a block we did not request",
            frames(&[Message::Reject(blocks[3])]),
            Kept,
            true,
        ),
        case(
            "a thousand keep-alives",
            frames(&vec![Message::KeepAlive; 1000]),
            Kept,
            false,
        ),
        case(
            "port without the DHT bit",
            frames(&[Message::Port(6881)]),
            Kept,
            false,
        ),
        case(
            "a second extended handshake",
            frames(&[ext.to_message()]),
            Kept,
            false,
        ),
        case(
            "an extended handshake that is not a dictionary",
            frames(&[
                Message::Extended {
                    id: 0,
                    payload: Bytes::from_static(b"i42e"),
                },
                Message::Extended {
                    id: 0,
                    payload: Bytes::from_static(b"d1:m"),
                },
            ]),
            Kept,
            true,
        ),
        case(
            "bitfield one byte too long",
            raw(5, &[bitfield(&t, |_| false).to_vec(), vec![0]].concat()),
            Closed,
            false,
        ),
        case(
            "bitfield with spare bits set",
            {
                let mut bits = bitfield(&t, |_| false).to_vec();
                *bits.last_mut().unwrap() = 0x01;
                raw(5, &bits)
            },
            Closed,
            false,
        ),
        case("have out of range", raw_index(4, n), Closed, false),
        case(
            "a block longer than 16 KiB",
            frames(&[Message::Piece {
                index: 0,
                begin: 0,
                data: Bytes::from(vec![0u8; BLOCK_SIZE as usize + 1]),
            }]),
            Closed,
            false,
        ),
        case(
            "an extension message with an id we never assigned",
            frames(&[Message::Extended {
                id: 7,
                payload: Bytes::from_static(b"de"),
            }]),
            Closed,
            false,
        ),
        case("an unknown message id", raw(99, b"xyz"), Closed, false),
        case(
            "an unchoke of length 2",
            vec![0, 0, 0, 2, 1, 0],
            Closed,
            false,
        ),
        case(
            "a length prefix of 16 MiB",
            vec![0x01, 0, 0, 0, 7, 0, 0, 0],
            Closed,
            false,
        ),
    ];
    for (what, m) in [
        ("have all without the fast bit", Message::HaveAll),
        ("have none without the fast bit", Message::HaveNone),
        ("suggest without the fast bit", Message::Suggest(0)),
        ("allowed fast without the fast bit", Message::AllowedFast(0)),
        ("reject without the fast bit", Message::Reject(blocks[0])),
    ] {
        let mut c = case(what, frames(&[m]), Closed, false);
        c.fast = false;
        cases.push(c);
    }

    let mut odd = 0u64;
    let mut closed = 0u64;
    for c in &cases {
        let mut l = Leecher::connect(addr(port), &t, c.fast, STEP)
            .unwrap_or_else(|e| seed.fail(&format!("{}: connect: {e:?}", c.what)));
        l.interested_until_unchoked(STEP)
            .unwrap_or_else(|e| seed.fail(&format!("{}: unchoke: {e:?}", c.what)));
        let rejected_before = l.peer.rejected.len();
        match l.send_raw(&c.bytes) {
            Ok(()) | Err(LeechError::Closed) => {}
            Err(e) => seed.fail(&format!("{}: sending: {e:?}", c.what)),
        }
        match c.expect {
            Expect::Kept => {
                if c.what.starts_with("request") {
                    // A request we cannot serve is rejected (fast extension).
                    l.wait_for(STEP, "the reject", |p| p.rejected.len() > rejected_before)
                        .unwrap_or_else(|e| seed.fail(&format!("{}: no reject: {e:?}", c.what)));
                    assert_eq!(
                        l.peer.rejected.len(),
                        rejected_before + 1,
                        "{}: not rejected exactly once ({:?})",
                        c.what,
                        l.peer.rejected
                    );
                }
                // The same connection still serves: two blocks, intact.
                let want = [blocks[blocks.len() / 2], blocks[blocks.len() - 1]];
                l.fetch(&want, 2, STEP).unwrap_or_else(|e| {
                    seed.fail(&format!("{}: connection not kept serving: {e:?}", c.what))
                });
                odd += u64::from(c.odd);
            }
            Expect::Closed => {
                if let Err(e) = l.wait_closed(STEP) {
                    seed.fail(&format!("{}: connection not closed: {e:?}", c.what));
                }
                closed += 1;
            }
        }
        assert!(seed.running(), "{}: the seed exited", c.what);
    }
    let s = seed.wait_stats(STEP, "oddities and errors counted", |v| {
        v["protocol_oddities"].as_u64().is_some_and(|o| o >= odd)
            && v["protocol_errors"].as_u64().is_some_and(|e| e >= closed)
    });
    assert!(
        s["bytes_wasted"].as_u64().unwrap() >= u64::from(piece0.length),
        "the unrequested block is not counted as waste: {s}"
    );
    seed.stop(STEP);
}

/// What a popular command-line downloader sent when it stalled against
/// `actorrent seed` ("bitfield after other messages"), replayed: handshake,
/// extended handshake, have none, four allowed fast, interested, requests,
/// a have for each piece it completes, and in the middle of it all a
/// bitfield of what it holds. It must get the whole torrent.
#[test]
fn seed_serves_the_message_order_that_used_to_stall_a_popular_client() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "replay", 12);
    let data = dir.path().join("data");
    t.write_payload(&data);
    let mut seed = Actorrent::seed(
        "actorrent seed",
        &t.path,
        &data,
        &["--unchoke-slots", "unlimited"],
    );
    let port = seed.listen_port(START);
    let ext = ExtendedHandshake {
        v: Some("replayed client".into()),
        reqq: Some(100),
        ..ExtendedHandshake::default()
    };
    let hello = vec![
        ext.to_message(),
        Message::HaveNone,
        Message::AllowedFast(3),
        Message::AllowedFast(7),
        Message::AllowedFast(11),
        Message::AllowedFast(19),
        Message::Interested,
    ];
    let mut l = Leecher::connect_with(addr(port), &t, true, Some(hello), STEP)
        .unwrap_or_else(|e| seed.fail(&format!("connect: {e:?}")));
    l.wait_for(STEP, "the unchoke", |p| !p.choking)
        .unwrap_or_else(|e| seed.fail(&format!("unchoke: {e:?}")));
    let blocks = t.blocks();
    let per_piece = (t.piece_length / BLOCK_SIZE) as usize;
    let mut have: HashSet<u32> = HashSet::new();
    for (i, chunk) in blocks.chunks(per_piece * 4).enumerate() {
        l.fetch(chunk, 32, STEP)
            .unwrap_or_else(|e| seed.fail(&format!("chunk {i}: {e:?}")));
        let done: Vec<u32> = chunk.iter().map(|b| b.index).collect();
        for p in &done {
            if have.insert(*p) {
                l.send(&[Message::Have(*p)])
                    .unwrap_or_else(|e| seed.fail(&format!("have {p}: {e:?}")));
            }
        }
        if i == 2 {
            // Mid-connection, what it holds as a bitfield.
            let bits = bitfield(&t, |p| have.contains(&p));
            l.send(&[Message::Bitfield(bits)])
                .unwrap_or_else(|e| seed.fail(&format!("late bitfield: {e:?}")));
        }
    }
    assert_eq!(l.peer.good_blocks, blocks.len(), "not every block arrived");
    assert!(seed.running());
    seed.stop(STEP);
}

// ---- leeching ---------------------------------------------------------------

/// A scripted seed of `t` that announces with `hello` and then sends the
/// `inject` frames at the given times while serving one block per 5 ms.
fn tolerated(t: &TestTorrent, hello: Option<Vec<Message>>, inject: &[(u64, &[Message])]) -> Seed {
    let mut s = Script::new();
    s.block_delay = Duration::from_millis(5);
    s.hello = hello.map(|h| h.iter().map(frame).collect());
    s.inject = inject
        .iter()
        .map(|(ms, m)| (Duration::from_millis(*ms), m.iter().map(frame).collect()))
        .collect();
    Seed::start(t, s)
}

/// A seed that announces every piece, then sends `bytes` and only reads.
fn fatal(t: &TestTorrent, bytes: Vec<u8>) -> Seed {
    Seed::start(t, Script::new().fault(Fault::Raw(vec![Bytes::from(bytes)])))
}

#[test]
fn leecher_keeps_tolerable_seeds_and_retries_or_refuses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "leech-rows", 13);
    let n = t.piece_count();
    let blocks = t.blocks();
    let b0 = blocks[0];
    let ext = ExtendedHandshake {
        v: Some("again".into()),
        reqq: Some(100),
        ..ExtendedHandshake::default()
    };
    let last = blocks[blocks.len() - 1];
    let unasked = Message::Piece {
        index: last.index,
        begin: last.begin,
        data: t.block(&last).unwrap(),
    };
    let odd_frames = vec![
        Message::Have(0),
        Message::Have(0),
        Message::KeepAlive,
        Message::KeepAlive,
        Message::KeepAlive,
        Message::Port(6881),
        Message::Suggest(1),
        Message::Reject(b0),
        Message::Cancel(blocks[1]),
        ext.to_message(),
        Message::Extended {
            id: 0,
            payload: Bytes::from_static(b"i1e"),
        },
        // The seed asks us for a block we do not have yet.
        Message::Request(blocks[2]),
    ];
    let kept: Vec<(&str, Seed)> = vec![
        (
            "late bitfield",
            tolerated(
                &t,
                Some(vec![Message::HaveNone, Message::Have(0)]),
                &[(100, &[Message::Bitfield(bitfield(&t, |_| true))])],
            ),
        ),
        (
            "late have all",
            tolerated(
                &t,
                Some(vec![Message::Bitfield(bitfield(&t, |i| i == 1))]),
                &[(100, &[Message::HaveAll])],
            ),
        ),
        (
            "late have none, then have all",
            tolerated(
                &t,
                Some(vec![Message::HaveAll]),
                &[(50, &[Message::HaveNone]), (250, &[Message::HaveAll])],
            ),
        ),
        (
            "odd but harmless messages",
            tolerated(&t, None, &[(50, &odd_frames)]),
        ),
        (
            // Twice: the second copy is unrequested even if the client
            // happened to ask this seed for that block.
            "an unrequested block",
            tolerated(&t, None, &[(50, &[unasked.clone(), unasked])]),
        ),
    ];
    let mut raw_invalid = vec![
        (
            "bitfield with spare bits",
            fatal(&t, {
                let mut bits = bitfield(&t, |_| false).to_vec();
                *bits.last_mut().unwrap() |= 0x01;
                raw(5, &bits)
            }),
        ),
        ("have out of range", fatal(&t, raw_index(4, n))),
        (
            "a block at an offset no block starts at",
            fatal(
                &t,
                frames(&[Message::Piece {
                    index: 0,
                    begin: 1,
                    data: Bytes::from(vec![0u8; 100]),
                }]),
            ),
        ),
        (
            "an extension message id never assigned",
            fatal(
                &t,
                frames(&[Message::Extended {
                    id: 3,
                    payload: Bytes::from_static(b"de"),
                }]),
            ),
        ),
        ("an unknown message id", fatal(&t, raw(42, b""))),
    ];
    let mut no_fast = Script::new().fault(Fault::Raw(vec![frame(&Message::HaveAll)]));
    no_fast.fast = false;
    raw_invalid.push(("have all without the fast bit", Seed::start(&t, no_fast)));
    let refused: Vec<(&str, Seed)> = vec![
        (
            "a block longer than 16 KiB",
            fatal(
                &t,
                frames(&[Message::Piece {
                    index: 0,
                    begin: 0,
                    data: Bytes::from(vec![0u8; BLOCK_SIZE as usize + 1]),
                }]),
            ),
        ),
        (
            "a length prefix of 16 MiB",
            Seed::start(&t, Script::new().fault(Fault::OversizeLength)),
        ),
    ];

    // The kept seeds alone could finish the download; a gated good seed
    // keeps the client running for as long as the reconnect policy needs.
    let gate = Gate::new();
    let mut good = Script::new();
    good.gate = Some(gate.clone());
    let good = Seed::start(&t, good);
    let config = dir.path().join("fast-retry.toml");
    std::fs::write(
        &config,
        "reconnect_backoff_ms = 100\nmax_protocol_strikes = 3\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let fatal_seeds: Vec<&Seed> = raw_invalid
        .iter()
        .chain(refused.iter())
        .map(|(_, s)| s)
        .collect();
    // Fatal seeds first, kept ones only once those are settled: the kept
    // ones would finish the download too soon.
    let mut client = Client::download(
        &t.path,
        &out,
        &fatal_seeds
            .iter()
            .map(|s| s.addr())
            .chain([good.addr()])
            .collect::<Vec<_>>(),
        &["--config", config.to_str().unwrap()],
    );
    let summary = || -> String { fatal_seeds.iter().map(|s| s.summary()).collect() };
    for (what, seed) in &raw_invalid {
        let three = wait_until(STEP, || {
            let logs = seed.logs();
            logs.len() >= 3 && logs.iter().all(|l| l.closed_by_client())
        });
        assert!(
            three,
            "{what}: not retried up to 3 strikes, each closed\n{}",
            summary()
        );
    }
    for (what, seed) in &refused {
        let closed = wait_until(STEP, || {
            seed.logs().first().is_some_and(|l| l.closed_by_client())
        });
        assert!(closed, "{what}: not closed\n{}", summary());
    }
    // Well past three backoffs (100, 200, 400 ms): nobody is dialled again.
    std::thread::sleep(Duration::from_secs(2));
    for (what, seed) in &raw_invalid {
        assert_eq!(seed.logs().len(), 3, "{what}: dialled past 3 strikes");
    }
    for (what, seed) in &refused {
        assert_eq!(seed.logs().len(), 1, "{what}: dialled again");
    }
    assert!(client.running(), "the client gave up");
    drop(client);

    // Now the tolerable seeds, on their own.
    let kept_at = Instant::now();
    let out = dir.path().join("out-kept");
    let client = Client::download(
        &t.path,
        &out,
        &kept.iter().map(|(_, s)| s.addr()).collect::<Vec<_>>(),
        &[],
    );
    let done = client.wait(DOWNLOAD_TIMEOUT);
    assert!(
        done.status.success(),
        "download failed: {}\n{}",
        done.status,
        support::client::tail(&done.stderr, 40)
    );
    t.assert_downloaded(&out);
    let stats = done.final_stats();
    assert!(
        stats["protocol_oddities"].as_u64().unwrap() >= 5,
        "oddities not counted: {stats}"
    );
    assert!(
        stats["bytes_wasted"].as_u64().unwrap() > 0,
        "the unrequested block is not waste: {stats}"
    );
    assert_eq!(
        stats["protocol_errors"], 0,
        "a tolerable seed was dropped: {stats}"
    );
    for (what, seed) in &kept {
        let logs = seed.logs();
        assert_eq!(
            logs.len(),
            1,
            "{what}: reconnected, so the first connection was dropped\n{}",
            seed.summary()
        );
        seed.assert_no_problems(what);
        assert!(
            logs[0].accepted_at >= kept_at,
            "{what}: connection from the earlier client"
        );
    }
    // The seed that asked us for a block we lack got a reject for it.
    let odd = &kept[3].1.logs()[0];
    assert!(
        odd.received()
            .any(|(_, m)| *m == Message::Reject(blocks[2])),
        "the client did not reject a request for a piece it lacks"
    );
    // Each late announcement was acted on: the seed that first had only
    // piece 1, and the one that had nothing, each served blocks of others.
    for i in [0, 1, 2] {
        let served: HashSet<u32> = kept[i].1.logs()[0]
            .blocks_sent()
            .iter()
            .map(|b| b.index)
            .collect();
        assert!(
            served.iter().any(|&p| p > 1),
            "{}: no block requested after the late announcement ({served:?})",
            kept[i].0
        );
    }
}

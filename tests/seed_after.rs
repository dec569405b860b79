//! `actorrent download --listen --seed-after` as a seed (issue 6): a
//! leecher is served while the download is still incomplete (only pieces it
//! has, and a request for one it lacks costs the leecher its connection),
//! and once complete it seeds until `--seed-ratio` or `--seed-time` ends it
//! with exit 0. The payload comes from a scripted seed (see
//! `support::scripted`); the leechers are scripted too (`support::leecher`).

mod support;

use std::path::Path;
use std::time::Duration;

use protocol::wire::{BlockRef, Message};
use support::leecher::Leecher;
use support::process::{Actorrent, assert_stats_fields};
use support::scripted::{Script, Seed};
use support::torrent::TestTorrent;

/// Bound on one step: a download of these small torrents, a connection,
/// an unchoke (which may wait for a choker round of 10 s).
const STEP: Duration = Duration::from_secs(60);

/// About 1 MiB in 32 pieces of 32 KiB, two files.
fn torrent(dir: &Path, name: &str, seed: u64) -> TestTorrent {
    TestTorrent::multi(
        dir,
        name,
        32 * 1024,
        &[("a.bin", 700_000), ("b/c.bin", 300_000)],
        seed,
    )
}

/// `actorrent download <t> --output <out> --listen 127.0.0.1:0 --peer
/// <from> --seed-after <extra>`.
fn download(t: &TestTorrent, out: &Path, from: &Seed, extra: &[&str]) -> Actorrent {
    let args = [&["--seed-after"], extra].concat();
    Actorrent::download(
        "actorrent download --seed-after",
        &t.path,
        out,
        &[from.addr()],
        &args,
    )
}

fn addr(port: u16) -> std::net::SocketAddr {
    ([127, 0, 0, 1], port).into()
}

#[test]
fn a_partial_download_serves_only_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "partial", 11);
    let half = t.piece_count() / 2;
    // The only source has the first half: the download stops there.
    let src = Seed::start(&t, Script::new().pieces(0..half));
    let out = dir.path().join("out");
    let mut dl = download(&t, &out, &src, &[]);
    let port = dl.listen_port(STEP);
    dl.wait_stats(STEP, "half the pieces", |v| v["pieces_done"] == half);

    let mut l = Leecher::connect(addr(port), &t, true, STEP)
        .unwrap_or_else(|e| dl.fail(&format!("connect: {e:?}")));
    assert!(
        !l.peer.has_all,
        "an incomplete download announced every piece"
    );
    let announced: Vec<u32> = (0..t.piece_count())
        .filter(|&i| l.peer.have[i as usize])
        .collect();
    assert_eq!(announced, (0..half).collect::<Vec<_>>(), "announced pieces");
    l.interested_until_unchoked(STEP)
        .unwrap_or_else(|e| dl.fail(&format!("unchoke: {e:?}")));
    let held: Vec<_> = t.blocks().into_iter().filter(|b| b.index < half).collect();
    l.fetch(&held, 32, STEP)
        .unwrap_or_else(|e| dl.fail(&format!("serving the pieces it has: {e:?}")));

    // A request for a piece it lacks is rejected (as libtorrent does),
    // never served, and the connection goes on.
    let missing = BlockRef {
        index: half,
        begin: 0,
        length: 16 * 1024,
    };
    l.send(&[Message::Request(missing)])
        .unwrap_or_else(|e| dl.fail(&format!("sending: {e:?}")));
    l.wait_for(STEP, "the reject", |p| p.rejected.contains(&missing))
        .unwrap_or_else(|e| dl.fail(&format!("a request for a missing piece: {e:?}")));
    l.fetch(&held[..4], 4, STEP)
        .unwrap_or_else(|e| dl.fail(&format!("serving after the reject: {e:?}")));
    assert!(dl.running(), "the download exited");
}

#[test]
fn seed_ratio_ends_seeding_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "ratio", 12);
    let src = Seed::start(&t, Script::new());
    let out = dir.path().join("out");
    let mut dl = download(&t, &out, &src, &["--seed-ratio", "1.0"]);
    let port = dl.listen_port(STEP);
    let s = dl.wait_stats(STEP, "seeding after the download", |v| {
        v["state"] == "seeding"
    });
    assert_stats_fields(&s);
    t.assert_downloaded(&out);
    // Ratio 0 so far: it must still be up to serve this leecher.
    let mut l = Leecher::connect(addr(port), &t, true, STEP)
        .unwrap_or_else(|e| dl.fail(&format!("connect while seeding: {e:?}")));
    assert!(
        l.peer.has_all,
        "a complete download announced only some pieces"
    );
    l.interested_until_unchoked(STEP)
        .unwrap_or_else(|e| dl.fail(&format!("unchoke: {e:?}")));
    l.fetch(&t.blocks(), 64, STEP)
        .unwrap_or_else(|e| dl.fail(&format!("serving the whole torrent: {e:?}")));
    // One payload uploaded: ratio 1 reached, so it stops on its own. A
    // client that counts protocol overhead in its download total may need
    // a little more: a second leecher takes what it gets until the exit.
    if dl.running() {
        let _ = Leecher::connect(addr(port), &t, true, STEP).and_then(|mut l2| {
            l2.interested_until_unchoked(STEP)?;
            l2.fetch(&t.blocks(), 64, STEP)
        });
    }
    let status = dl.wait_exit(STEP);
    if !status.success() {
        dl.fail(&format!("exited with {status} at the seed ratio"));
    }
    let last = dl.last_stats().unwrap();
    assert!(
        last["bytes_up"]
            .as_u64()
            .is_some_and(|b| b >= t.payload.len() as u64),
        "stopped before ratio 1: {last}"
    );
}

#[test]
fn seed_time_ends_seeding_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let t = torrent(dir.path(), "time", 13);
    let src = Seed::start(&t, Script::new());
    let out = dir.path().join("out");
    let mut dl = download(&t, &out, &src, &["--seed-time", "2"]);
    dl.listen_port(STEP);
    dl.wait_stats(STEP, "seeding after the download", |v| {
        v["state"] == "seeding"
    });
    t.assert_downloaded(&out);
    let status = dl.wait_exit(STEP);
    if !status.success() {
        dl.fail(&format!("exited with {status} after the seed time"));
    }
}

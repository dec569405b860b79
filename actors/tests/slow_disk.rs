//! A slow disk must slow the requests, not grow memory: with the disk writer
//! capped far below what the seeds deliver, the bytes requested from the
//! seeds never run ahead of the bytes written by more than the buffer
//! budget, the budget pauses, and the process's resident memory stays flat.
//!
//! The seeds are scripted peers on loopback TCP that answer every request
//! at once from memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actors::budget::BudgetConfig;
use actors::config::ClientConfig;
use actors::mse_stream::Encryption;
use actors::picker::Strategy;
use actors::pipeline::PipelineConfig;
use actors::session::Session;
use actors::torrent::{Target, TorrentParams, TorrentState, TorrentStats};
use bytes::{Bytes, BytesMut};
use protocol::bencode::Bencode;
use protocol::metainfo::Metainfo;
use protocol::wire::{self, Decoded, Handshake, Limits, Message};
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PIECE: usize = 256 * 1024;

fn torrent(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut pieces = Vec::new();
    for p in payload.chunks(PIECE) {
        pieces.extend_from_slice(&storage::sha1_of(&[Bytes::copy_from_slice(p)]));
    }
    let mut info = BTreeMap::new();
    info.insert(b"name".to_vec(), Bencode::from(name));
    info.insert(b"length".to_vec(), Bencode::Int(payload.len() as i64));
    info.insert(b"piece length".to_vec(), Bencode::Int(PIECE as i64));
    info.insert(b"pieces".to_vec(), Bencode::Bytes(pieces));
    let mut top = BTreeMap::new();
    top.insert(b"info".to_vec(), Bencode::Dict(info));
    Bencode::Dict(top).encode()
}

/// Serves every request, `delay` after the read that brought it (a link's
/// round trip; zero for at once); counts the bytes requested of it.
async fn seed(
    listener: TcpListener,
    info_hash: [u8; 20],
    payload: Arc<Vec<u8>>,
    asked: Arc<AtomicU64>,
    delay: Duration,
) {
    while let Ok((sock, _)) = listener.accept().await {
        let payload = payload.clone();
        let asked = asked.clone();
        tokio::spawn(async move {
            let _ = serve(sock, info_hash, payload, asked, delay).await;
        });
    }
}

async fn serve(
    mut sock: TcpStream,
    info_hash: [u8; 20],
    payload: Arc<Vec<u8>>,
    asked: Arc<AtomicU64>,
    delay: Duration,
) -> std::io::Result<()> {
    let mut hs = [0u8; Handshake::LEN];
    sock.read_exact(&mut hs).await?;
    let mut ours = Handshake::new([0; 8], info_hash, *b"-SCRIPT-seed00000000");
    ours.set_fast(true);
    let mut out = BytesMut::new();
    ours.encode(&mut out);
    Message::HaveAll.encode(&mut out);
    sock.write_all(&out).await?;
    out.clear();
    let pieces = payload.len().div_ceil(PIECE) as u32;
    let limits = Limits {
        piece_count: Some(pieces),
        ..Limits::default()
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if sock.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        while let Ok(Decoded::Complete(msg)) = wire::decode_message(&mut buf, &limits) {
            match msg {
                Message::Interested => Message::Unchoke.encode(&mut out),
                Message::Request(r) => {
                    asked.fetch_add(u64::from(r.length), Ordering::SeqCst);
                    let start = r.index as usize * PIECE + r.begin as usize;
                    let data = Bytes::copy_from_slice(&payload[start..start + r.length as usize]);
                    Message::Piece {
                        index: r.index,
                        begin: r.begin,
                        data,
                    }
                    .encode(&mut out);
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            sock.write_all(&out).await?;
            out.clear();
        }
    }
}

/// The client's config for these seeds: plaintext, as they speak. Under the
/// default `prefer` each connection would first try MSE, and a seed that
/// answers it with a plain handshake (and no close) holds the attempt for
/// the whole handshake timeout (10 s) before the plaintext retry; the
/// download then ran in the last few ms of the test.
fn plaintext() -> ClientConfig {
    ClientConfig {
        encryption: Encryption::Disable,
        ..ClientConfig::default()
    }
}

/// The tests of this file run one at a time: the RSS bound reads the whole
/// process, which the other test's download would inflate.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A seeded random payload of `total` bytes named `name`, its torrent, and
/// three scripted seeds on loopback that count the bytes asked of them.
struct Swarm {
    name: &'static str,
    payload: Arc<Vec<u8>>,
    meta: Arc<Metainfo>,
    asked: Arc<AtomicU64>,
    peers: Vec<SocketAddr>,
    dir: tempfile::TempDir,
}

impl Swarm {
    async fn start(name: &'static str, total: usize, rng_seed: u64, delay: Duration) -> Swarm {
        let mut payload = vec![0u8; total];
        rand::rngs::StdRng::seed_from_u64(rng_seed).fill_bytes(&mut payload);
        let payload = Arc::new(payload);
        let meta = Arc::new(Metainfo::from_bytes(&torrent(name, &payload)).unwrap());
        let asked = Arc::new(AtomicU64::new(0));
        let mut peers = Vec::new();
        for _ in 0..3 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            peers.push(l.local_addr().unwrap());
            tokio::spawn(seed(
                l,
                meta.info_hash.0,
                payload.clone(),
                asked.clone(),
                delay,
            ));
        }
        Swarm {
            name,
            payload,
            meta,
            asked,
            peers,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The download of the payload into the swarm's directory.
    fn params(&self) -> TorrentParams {
        TorrentParams {
            meta: self.meta.clone(),
            target: Target::Directory(self.dir.path().to_path_buf()),
            resume_file: self.dir.path().join(format!("{}.resume", self.name)),
            peers: self.peers.clone(),
            strategy: Strategy::RarestFirst,
            seed: false,
            upload_limit: None,
            download_limit: None,
            priorities: None,
            dht: None,
        }
    }

    /// Bytes the seeds were asked for.
    fn asked(&self) -> u64 {
        self.asked.load(Ordering::SeqCst)
    }

    fn assert_downloaded(&self) {
        let got = std::fs::read(self.dir.path().join(self.name)).unwrap();
        assert!(got == *self.payload, "downloaded file differs");
    }
}

/// Calls `sample` every 10 ms until the torrent is complete (at most
/// 120 s); a torrent error fails the test.
async fn until_complete(stats: &watch::Receiver<TorrentStats>, mut sample: impl FnMut()) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        sample();
        let state = stats.borrow().state.clone();
        match state {
            TorrentState::Complete => return,
            TorrentState::Error(e) => panic!("download failed: {e}"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "download did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bytes the session's writers have written.
fn written(session: &Session) -> u64 {
    session
        .writer_stats()
        .iter()
        .map(|(_, s)| s.bytes_written)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_disk_pauses_requests_and_memory_stays_flat() {
    let _serial = SERIAL.lock().await;
    const TOTAL: usize = 64 << 20;
    const BUDGET: u64 = 2 << 20;
    let swarm = Swarm::start("slow.bin", TOTAL, 6, Duration::ZERO).await;

    let mut config = ClientConfig {
        budget: BudgetConfig {
            capacity: BUDGET,
            ..BudgetConfig::default()
        },
        ..plaintext()
    };
    // 16 MiB/s: the seeds deliver many times faster over loopback.
    config.disk.writer.max_bytes_per_sec = Some(16 << 20);
    let session = Session::start(config).unwrap();
    let rss_before = rss_bytes();
    let handle = session.add_torrent(swarm.params()).await.unwrap();
    let stats = handle.stats();

    let mut max_ahead = 0u64;
    let mut max_rss = rss_before;
    let mut samples = 0u32;
    until_complete(&stats, || {
        // Requested first, written second: the difference can only be
        // overestimated by the order, never hidden.
        let requested = swarm.asked();
        max_ahead = max_ahead.max(requested.saturating_sub(written(&session)));
        max_rss = max_rss.max(rss_bytes());
        samples += 1;
    })
    .await;
    let peak = session.budget().peak();
    session.shutdown().await;

    eprintln!(
        "samples {samples}, max ahead {max_ahead}, budget peak {peak}, rss growth {} KiB",
        max_rss.saturating_sub(rss_before) >> 10
    );
    swarm.assert_downloaded();
    assert!(samples > 50, "too few samples ({samples}) to say anything");
    assert!(
        max_ahead <= BUDGET,
        "requests ran {max_ahead} bytes ahead of the disk, budget {BUDGET}"
    );
    // The budget did fill up to its pause point, so it was what held the
    // peers back (not a slow seed).
    assert!(
        peak >= BUDGET * 9 / 10,
        "budget peak {peak} never reached the high watermark"
    );
    // Without the budget the seeds would have pushed most of the 64 MiB
    // into memory ahead of a 16 MiB/s disk. Allow the budget several times
    // over for read buffers shared by blocks, plus allocator slack.
    let growth = max_rss.saturating_sub(rss_before);
    assert!(
        growth <= 32 << 20,
        "resident memory grew by {} MiB",
        growth >> 20
    );
}

/// The effective limit follows the work: it starts at the floor, grows
/// while the peers are starved by it (a fast disk, seeds answering at
/// once, pipelines wanting more than the floor holds) and shrinks back to
/// the floor once the download is done and nothing is requested. The
/// seeds answer after 20 ms, so the limit (rate x latency) is what holds
/// the download back and it lasts several 100 ms ticks (answering at once
/// they finished 32 MiB within about one tick, and whether the limit grew
/// was a race); the pipelines start and stay at least 32 deep, three
/// seeds' worth 1.5 MiB against the 256 KiB floor (the default 4 deep,
/// 12 blocks, would fit under the floor's 16 until they grew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effective_budget_grows_when_starved_and_shrinks_when_idle() {
    let _serial = SERIAL.lock().await;
    const TOTAL: usize = 32 << 20;
    const CAPACITY: u64 = 16 << 20;
    const FLOOR: u64 = 256 << 10;
    let swarm = Swarm::start("grow.bin", TOTAL, 7, Duration::from_millis(20)).await;
    let config = ClientConfig {
        budget: BudgetConfig {
            capacity: CAPACITY,
            floor: FLOOR,
            ..BudgetConfig::default()
        },
        pipeline: PipelineConfig {
            initial_depth: 32,
            min_depth: 32,
            ..PipelineConfig::default()
        },
        ..plaintext()
    };
    let session = Session::start(config).unwrap();
    assert_eq!(session.budget().limit(), FLOOR, "starts at the floor");
    let handle = session.add_torrent(swarm.params()).await.unwrap();
    let stats = handle.stats();
    let mut max_limit = 0u64;
    let started = std::time::Instant::now();
    until_complete(&stats, || {
        max_limit = max_limit.max(session.budget().limit());
    })
    .await;
    let took = started.elapsed();
    let grown = max_limit.max(session.budget().limit_peak());
    // Idle: from at most 16 MiB to 256 KiB is 6 halvings of a second each.
    let idle_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while session.budget().limit() > FLOOR && tokio::time::Instant::now() < idle_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = session.budget().limit();
    let peak = session.budget().peak();
    session.shutdown().await;
    eprintln!("download {took:?}, limit grew to {grown}, back to {after}, budget peak {peak}");

    swarm.assert_downloaded();
    assert!(
        grown >= 2 * FLOOR,
        "the limit never grew above the floor ({grown})"
    );
    assert!(grown <= CAPACITY, "the limit {grown} passed the capacity");
    assert_eq!(after, FLOOR, "the idle limit did not shrink to the floor");
}

/// On a slow disk the effective limit stays bounded: the landed blocks
/// reach the backlog bound, whose refusals are not starvation, so with the
/// default 256 MiB capacity the limit (on the bytes in the network) grows
/// at most to cover the pipelines, never to the capacity, and the requests
/// stay within the limit plus the backlog of the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_disk_does_not_grow_the_effective_limit() {
    let _serial = SERIAL.lock().await;
    const TOTAL: usize = 32 << 20;
    const FLOOR: u64 = 1 << 20;
    const BACKLOG: u64 = 2 << 20;
    // Three full pipelines (256 blocks of 16 KiB), doubled once past them:
    // a limit that grew on every 100 ms tick of the 2 s download would
    // reach the 256 MiB capacity.
    const BOUND: u64 = 2 * 3 * (4 << 20);
    let swarm = Swarm::start("slowgrow.bin", TOTAL, 8, Duration::ZERO).await;
    let mut config = ClientConfig {
        budget: BudgetConfig {
            floor: FLOOR,
            backlog: BACKLOG,
            ..BudgetConfig::default()
        },
        ..plaintext()
    };
    config.disk.writer.max_bytes_per_sec = Some(16 << 20);
    let session = Session::start(config).unwrap();
    let handle = session.add_torrent(swarm.params()).await.unwrap();
    let stats = handle.stats();
    let mut max_ahead = 0u64;
    let mut samples = 0u32;
    until_complete(&stats, || {
        let requested = swarm.asked();
        max_ahead = max_ahead.max(requested.saturating_sub(written(&session)));
        samples += 1;
    })
    .await;
    let limit_peak = session.budget().limit_peak();
    let peak = session.budget().peak();
    session.shutdown().await;
    eprintln!(
        "samples {samples}, max ahead {max_ahead}, budget peak {peak}, limit peak {limit_peak}"
    );
    swarm.assert_downloaded();
    assert!(samples > 50, "too few samples ({samples}) to say anything");
    assert!(
        limit_peak <= BOUND,
        "the limit grew to {limit_peak} on a slow disk (bound {BOUND})"
    );
    // In the network at most the limit, landed at most the backlog; past
    // both only the blocks that finish started pieces (`force_reserve`)
    // go, a backlog's worth of slack for them.
    assert!(
        max_ahead <= limit_peak + 2 * BACKLOG,
        "requests ran {max_ahead} bytes ahead of the disk, limit peak {limit_peak}"
    );
}

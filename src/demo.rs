//! `actorrent demo`: the whole client with no input. Writes a random payload
//! (a few files) into a temporary directory, builds its torrent in memory,
//! starts one seeding [`Session`] and N leeching sessions in this process on
//! 127.0.0.1, waits until every leecher has every piece, compares every byte
//! with the payload, prints throughput and CPU cost, and removes the
//! directory.
//!
//! The sessions are as separate as in separate processes (each its own hash
//! pool, disk writers, buffer budget and listening socket); they only share
//! the tokio runtime and the process-wide metrics histograms.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::config::ClientConfig;
use actors::session::Session;
use actors::torrent::{Target, TorrentParams, TorrentState};
use anyhow::{Context, anyhow};
use protocol::bencode::Bencode;
use protocol::metainfo::Metainfo;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::Failure;

/// `actorrent demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Payload size in MiB.
    #[arg(long, value_name = "MiB", default_value = "256", value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub size: u64,
    /// Leeching sessions, each connected to the seed and to the leechers
    /// started before it.
    #[arg(long, value_name = "N", default_value = "2", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub leechers: u64,
}

/// Most pieces a demo torrent has (the piece size doubles until it fits).
const TARGET_PIECES: u64 = 2048;

pub fn run(args: &DemoArgs, config: ClientConfig) -> Result<(), Failure> {
    let dir = tempfile::Builder::new()
        .prefix("actorrent-demo-")
        .tempdir()
        .context("creating a temporary directory")
        .map_err(Failure::Runtime)?;
    let size = args.size * 1024 * 1024;
    let (torrent, files) = make_payload(dir.path(), size).map_err(Failure::Runtime)?;
    let meta = Arc::new(
        Metainfo::from_bytes(&torrent)
            .context("parsing the demo torrent")
            .map_err(Failure::Runtime)?,
    );
    println!(
        "demo: {} MiB in {} files, {} pieces of {} KiB; 1 seed and {} leecher(s) on 127.0.0.1 in one process",
        args.size,
        files.len(),
        meta.info.piece_count(),
        meta.info.piece_length / 1024,
        args.leechers
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::Runtime)?;
    // Generous: loopback moves hundreds of MiB/s; this only catches a hang.
    let deadline = Duration::from_secs(120 + args.size * args.leechers);
    let result = runtime.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(deadline, swarm(dir.path(), &meta, args.leechers as usize, config)) => match r {
                Ok(r) => r,
                Err(_) => Err(anyhow!("the demo did not finish within {} s", deadline.as_secs())),
            },
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    drop(runtime);
    let report = result.map_err(Failure::Runtime)?;
    for (i, root) in report.leecher_dirs.iter().enumerate() {
        verify(&root.join(&meta.info.name), &files)
            .with_context(|| format!("leecher {}", i + 1))
            .map_err(Failure::Runtime)?;
    }
    let mib = size as f64 / 1048576.0;
    for (i, secs) in report.times.iter().enumerate() {
        println!(
            "leecher {}: {mib:.1} MiB in {secs:.2} s ({:.1} MiB/s), every byte verified",
            i + 1,
            mib / secs.max(1e-9)
        );
    }
    let total = mib * args.leechers as f64;
    println!(
        "total: {total:.1} MiB downloaded in {:.2} s ({:.1} MiB/s); CPU {:.2} s (user+sys, whole process) = {:.2} CPU s/GiB",
        report.wall,
        total / report.wall.max(1e-9),
        report.cpu,
        report.cpu / (total / 1024.0)
    );
    dir.close()
        .context("removing the demo directory")
        .map_err(Failure::Runtime)?;
    Ok(())
}

struct Report {
    leecher_dirs: Vec<PathBuf>,
    /// Seconds from start to completion, per leecher.
    times: Vec<f64>,
    /// Seconds until the last leecher completed.
    wall: f64,
    /// CPU seconds of the process over the same span.
    cpu: f64,
}

async fn swarm(
    dir: &Path,
    meta: &Arc<Metainfo>,
    leechers: usize,
    config: ClientConfig,
) -> anyhow::Result<Report> {
    let localhost: SocketAddr = ([127, 0, 0, 1], 0).into();
    let strategy = config.picker.strategy;
    let seed = Session::start(config.clone()).context("starting the seed")?;
    let seed_addr = seed.listen(localhost).await?;
    let seed_torrent = seed
        .add_torrent(params(meta, dir.join("seed"), Vec::new(), strategy))
        .await?;
    wait_for(seed_torrent.stats(), |s| s == &TorrentState::Seeding)
        .await
        .context("the seed did not verify its data")?;

    let mut sessions = Vec::new();
    let mut addrs = vec![seed_addr];
    let mut handles = Vec::new();
    let mut leecher_dirs = Vec::new();
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    for i in 0..leechers {
        let session = Session::start(config.clone()).context("starting a leecher")?;
        let addr = session.listen(localhost).await?;
        let root = dir.join(format!("leecher-{}", i + 1));
        let handle = session
            .add_torrent(params(meta, root.clone(), addrs.clone(), strategy))
            .await?;
        addrs.push(addr);
        leecher_dirs.push(root);
        handles.push(handle);
        sessions.push(session);
    }
    let mut waits = tokio::task::JoinSet::new();
    for (i, h) in handles.iter().enumerate() {
        let stats = h.stats();
        waits.spawn(async move {
            let r = wait_for(stats, |s| s == &TorrentState::Seeding).await;
            (i, r, started.elapsed().as_secs_f64())
        });
    }
    let mut times = vec![0.0; leechers];
    while let Some(done) = waits.join_next().await {
        let (i, r, secs) = done.context("a waiting task failed")?;
        r.with_context(|| format!("leecher {}", i + 1))?;
        times[i] = secs;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    for s in sessions {
        s.shutdown().await;
    }
    seed.shutdown().await;
    Ok(Report {
        leecher_dirs,
        times,
        wall,
        cpu,
    })
}

fn params(
    meta: &Arc<Metainfo>,
    root: PathBuf,
    peers: Vec<SocketAddr>,
    strategy: actors::picker::Strategy,
) -> TorrentParams {
    TorrentParams {
        meta: meta.clone(),
        resume_file: root.join(".actorrent").join("demo.resume"),
        target: Target::Directory(root),
        peers,
        strategy,
        // Leechers keep serving once complete, so later ones can fetch from
        // them too.
        seed: true,
        upload_limit: None,
        download_limit: None,
        priorities: None,
        dht: None,
    }
}

/// Waits until the torrent's state satisfies `done`; fails on an error
/// state or if the torrent goes away.
async fn wait_for(
    mut stats: tokio::sync::watch::Receiver<actors::torrent::TorrentStats>,
    done: impl Fn(&TorrentState) -> bool,
) -> anyhow::Result<()> {
    loop {
        {
            let s = stats.borrow_and_update();
            if done(&s.state) {
                return Ok(());
            }
            if let TorrentState::Error(e) = &s.state {
                return Err(anyhow!("torrent failed: {e}"));
            }
        }
        stats
            .changed()
            .await
            .map_err(|_| anyhow!("the torrent stopped"))?;
    }
}

/// Each payload file's name and contents.
type Files = Vec<(String, Vec<u8>)>;

/// Writes the payload under `dir/seed/<name>/` and returns the torrent's
/// bytes and the files.
fn make_payload(dir: &Path, size: u64) -> anyhow::Result<(Vec<u8>, Files)> {
    let name = "actorrent-demo";
    // A few files of uneven sizes, so pieces cross file boundaries.
    let mut lengths = vec![size / 2, size / 4, size / 8 + 12345];
    let rest = size.saturating_sub(lengths.iter().sum());
    lengths.push(rest);
    lengths.retain(|&l| l > 0);
    let mut piece_length: u64 = 16 * 1024;
    while size.div_ceil(piece_length) > TARGET_PIECES && piece_length < 16 << 20 {
        piece_length *= 2;
    }
    let mut rng = SmallRng::from_os_rng();
    let root = dir.join("seed").join(name);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut files = Vec::new();
    let mut pieces = Vec::new();
    let mut hasher = PieceHasher::new(piece_length as usize);
    for (i, len) in lengths.iter().enumerate() {
        let file = format!("file-{}.bin", i + 1);
        let mut data = vec![0u8; *len as usize];
        rng.fill_bytes(&mut data);
        std::fs::write(root.join(&file), &data).with_context(|| format!("writing {file}"))?;
        hasher.update(&data, &mut pieces);
        files.push((file, data));
    }
    hasher.finish(&mut pieces);
    let mut info = BTreeMap::new();
    let file_list = files
        .iter()
        .map(|(path, data)| {
            let mut f = BTreeMap::new();
            f.insert(b"length".to_vec(), Bencode::Int(data.len() as i64));
            f.insert(
                b"path".to_vec(),
                Bencode::List(vec![Bencode::Bytes(path.as_bytes().to_vec())]),
            );
            Bencode::Dict(f)
        })
        .collect();
    info.insert(b"files".to_vec(), Bencode::List(file_list));
    info.insert(b"name".to_vec(), Bencode::Bytes(name.as_bytes().to_vec()));
    info.insert(b"piece length".to_vec(), Bencode::Int(piece_length as i64));
    info.insert(b"pieces".to_vec(), Bencode::Bytes(pieces));
    let mut top = BTreeMap::new();
    top.insert(b"info".to_vec(), Bencode::Dict(info));
    top.insert(
        b"created by".to_vec(),
        Bencode::Bytes(b"actorrent demo".to_vec()),
    );
    Ok((Bencode::Dict(top).encode(), files))
}

/// SHA-1 of consecutive pieces over data that arrives file by file.
struct PieceHasher {
    piece_length: usize,
    buf: Vec<u8>,
}

impl PieceHasher {
    fn new(piece_length: usize) -> Self {
        PieceHasher {
            piece_length,
            buf: Vec::with_capacity(piece_length),
        }
    }

    fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            let take = (self.piece_length - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.piece_length {
                self.finish(out);
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.buf.is_empty() {
            let piece = bytes::Bytes::from(std::mem::take(&mut self.buf));
            out.extend_from_slice(&storage::sha1_of(&[piece]));
            self.buf.reserve(self.piece_length);
        }
    }
}

/// Compares every file under `root` with the payload.
fn verify(root: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    for (name, data) in files {
        let path = root.join(name);
        let got = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if got != *data {
            return Err(anyhow!("{} differs from the payload", path.display()));
        }
    }
    Ok(())
}

/// User plus system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

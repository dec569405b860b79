//! `actorrent download`: fetch one torrent from the peers given (and, once
//! the tracker session lands, from its trackers), verify every piece, write
//! it, and exit 0 when the data is complete and on disk.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::config::ClientConfig;
use actors::session::Session;
use actors::torrent::{Target, TorrentParams, TorrentState, TorrentStats, parse_strategy};
use anyhow::{Context, anyhow};
use protocol::metainfo::Metainfo;
use serde_json::json;

use crate::Failure;
use crate::info::read_torrent;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["output", "raw_target"])))]
pub struct DownloadArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// Directory the payload goes into (as `<DIR>/<torrent name>`).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Raw-disk mode: write every file at its hex offset in this block
    /// device or image file.
    #[arg(long, value_name = "PATH")]
    pub raw_target: Option<PathBuf>,
    /// A peer to connect to (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT")]
    pub peers: Vec<SocketAddr>,
    /// Accept incoming connections on this address (port 0: any free port).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Fetch pieces in order instead of rarest first.
    #[arg(long)]
    pub sequential: bool,
    /// Write one JSON object per second (and a final one) to this file, or
    /// to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub stats_json: Option<String>,
    /// Where to keep resume data (default: `<DIR>/.actorrent/<info-hash>.resume`,
    /// or next to an image file, or under the state directory for a device).
    #[arg(long, value_name = "PATH")]
    pub resume_file: Option<PathBuf>,
}

pub fn run(args: &DownloadArgs) -> Result<(), Failure> {
    let bytes = read_torrent(&args.torrent)?;
    let meta = Metainfo::from_bytes(&bytes).map_err(|e| {
        Failure::BadInput(anyhow!(
            "{}: not a valid torrent: {e}",
            args.torrent.display()
        ))
    })?;
    let target = match (&args.output, &args.raw_target) {
        (Some(dir), None) => Target::Directory(dir.clone()),
        (None, Some(path)) => Target::Raw(path.clone()),
        _ => return Err(Failure::BadInput(anyhow!("give --output or --raw-target"))),
    };
    let resume_file = match &args.resume_file {
        Some(p) => p.clone(),
        None => {
            default_resume_file(&target, &meta.info_hash.to_hex()).map_err(Failure::BadInput)?
        }
    };
    let mut stats_out: Option<Box<dyn Write + Send>> = match args.stats_json.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating {path}"))
                .map_err(Failure::BadInput)?,
        )),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(async {
        let session = Session::start(ClientConfig::default())
            .context("starting the session")
            .map_err(Failure::Runtime)?;
        let params = TorrentParams {
            meta: Arc::new(meta),
            target,
            resume_file,
            peers: args.peers.clone(),
            strategy: parse_strategy(args.sequential),
        };
        let handle = session
            .add_torrent(params)
            .await
            .context("adding the torrent")
            .map_err(Failure::Runtime)?;
        if let Some(addr) = args.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))
                .map_err(Failure::Runtime)?;
            let local = listener
                .local_addr()
                .map_err(|e| Failure::Runtime(e.into()))?;
            tracing::info!(%local, "listening");
            let h = handle.clone();
            tokio::spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    if h.incoming(stream, peer).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut stats = handle.stats();
        let started = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let outcome = loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = stats.changed() => {
                    if changed.is_err() {
                        break Err(Failure::Runtime(anyhow!("the torrent stopped unexpectedly")));
                    }
                    let s = stats.borrow().clone();
                    if !matches!(s.state, TorrentState::Complete | TorrentState::Error(_)) {
                        continue;
                    }
                }
                _ = tokio::signal::ctrl_c() => {
                    break Err(Failure::Interrupted);
                }
            }
            let s = stats.borrow().clone();
            let event = if s.state == TorrentState::Complete {
                "complete"
            } else {
                "progress"
            };
            if let Some(out) = stats_out.as_mut() {
                let _ = writeln!(out, "{}", stats_json(&s, event));
                let _ = out.flush();
            }
            if tty {
                progress_line(&s, started.elapsed());
            }
            match s.state {
                TorrentState::Complete => break Ok(()),
                TorrentState::Error(e) => break Err(Failure::Runtime(anyhow!(e))),
                _ => {}
            }
        };
        if tty {
            eprintln!();
        }
        session.shutdown().await;
        outcome
    })
}

fn default_resume_file(target: &Target, hex: &str) -> anyhow::Result<PathBuf> {
    Ok(match target {
        Target::Directory(dir) => dir.join(".actorrent").join(format!("{hex}.resume")),
        Target::Raw(path) => {
            if is_block_device(path) {
                let base = std::env::var_os("XDG_STATE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"))
                    })
                    .ok_or_else(|| anyhow!("no HOME for resume data; give --resume-file"))?;
                base.join("actorrent").join(format!("{hex}.resume"))
            } else {
                let mut name = path.as_os_str().to_owned();
                name.push(".actorrent-resume");
                PathBuf::from(name)
            }
        }
    })
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

fn stats_json(s: &TorrentStats, event: &str) -> serde_json::Value {
    json!({
        "event": event,
        "state": s.state.name(),
        "bytes_down": s.bytes_down,
        "bytes_up": s.bytes_up,
        "rate_down": s.rate_down,
        "rate_up": s.rate_up,
        "peers": s.peers,
        "pieces_done": s.pieces_done,
        "pieces_total": s.pieces_total,
        "hash_failures": s.hash_failures,
        "banned_peers": s.banned_peers,
        "protocol_errors": s.protocol_errors,
        "budget_in_use": s.budget_in_use,
        "budget_peak": s.budget_peak,
    })
}

fn progress_line(s: &TorrentStats, elapsed: Duration) {
    let pct = if s.pieces_total == 0 {
        100.0
    } else {
        100.0 * f64::from(s.pieces_done) / f64::from(s.pieces_total)
    };
    eprint!(
        "\r{:>10} {pct:5.1}%  {:>9.1} MiB  {:>8.1} MiB/s  {} peers  {:>5}s ",
        s.state.name(),
        s.bytes_down as f64 / 1048576.0,
        s.rate_down as f64 / 1048576.0,
        s.peers,
        elapsed.as_secs()
    );
}

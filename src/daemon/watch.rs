//! The watch directory: every `*.torrent` (or `*.magnet`, a text file
//! holding a magnet link) that appears in it is added, then renamed to
//! `*.added`, or to `*.invalid` with the reason logged. The directory is rescanned every [`RESCAN`] (no inotify yet: a
//! scan of a directory of a few files costs microseconds).

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::metainfo::Metainfo;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::registry::DaemonHandle;
use super::state::{MAX_MAGNET, MAX_TORRENT_FILE, read_bounded};

/// How often the directory is scanned.
pub const RESCAN: Duration = Duration::from_secs(1);

/// Files handled per scan, so a flood is taken in bounded steps.
const PER_SCAN: usize = 64;

/// Watches `dir` until `stop` fires.
pub async fn run(dir: PathBuf, daemon: DaemonHandle, stop: CancellationToken) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        warn!(dir = %dir.display(), error = %e, "cannot create the watch directory");
    }
    eprintln!("actorrent: watching {}", dir.display());
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for path in scan(&dir) {
            if stop.is_cancelled() {
                return;
            }
            let outcome = add(&daemon, &path).await;
            let suffix = match &outcome {
                Ok(what) => {
                    info!(file = %path.display(), %what, "watch directory: added");
                    "added"
                }
                Err(why) => {
                    warn!(file = %path.display(), reason = %why, "watch directory: invalid torrent");
                    eprintln!("actorrent: {}: {why}", path.display());
                    "invalid"
                }
            };
            let mut to = path.clone().into_os_string();
            to.push(".");
            to.push(suffix);
            if let Err(e) = std::fs::rename(&path, &to) {
                warn!(file = %path.display(), error = %e, "watch directory: rename failed");
            }
        }
    }
}

fn scan(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "torrent" || x == "magnet")
        })
        .collect();
    out.sort();
    out.truncate(PER_SCAN);
    out
}

async fn add(daemon: &DaemonHandle, path: &Path) -> Result<String, String> {
    let added = if path.extension().is_some_and(|x| x == "magnet") {
        let bytes = read_bounded(path, MAX_MAGNET as u64).map_err(|e| e.to_string())?;
        let uri = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
        let uri = uri.trim().to_owned();
        let link = protocol::magnet::Magnet::parse(&uri)
            .map_err(|e| format!("invalid magnet link: {e}"))?;
        daemon.add_magnet(uri, link, None, None, Vec::new()).await?
    } else {
        let bytes = read_bounded(path, MAX_TORRENT_FILE as u64).map_err(|e| e.to_string())?;
        let meta = Metainfo::from_bytes(&bytes).map_err(|e| format!("not a valid torrent: {e}"))?;
        daemon.add(bytes, meta, None, None, Vec::new()).await?
    };
    Ok(if added.duplicate {
        format!("duplicate of torrent {}", added.id)
    } else {
        format!("torrent {}", added.id)
    })
}

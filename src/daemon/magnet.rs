//! A magnet link added to the daemon: its metadata phase runs as a task the
//! daemon actor owns (one per magnet, cancelled when the torrent is
//! stopped or removed). Peers come from `x.pe` and the link's trackers
//! (through the session's tracker actor, announcing 16 KiB left as
//! libtorrent does); `actors::magnet::fetch` returns the verified info
//! dictionary, and the task hands it back on the daemon's bounded channel,
//! awaiting room (the daemon never waits on the task, so this cannot
//! deadlock).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::magnet::{FetchParams, MetadataConfig, MetadataProgress};
use actors::tracker::{AnnounceProgress, TorrentRegistration, TrackerHandle};
use protocol::magnet::Magnet;
use protocol::metainfo::{Info, InfoHash, Metainfo};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Finished metadata phases waiting for the daemon actor.
pub const DONE_CHANNEL: usize = 16;

/// How one metadata phase ended.
pub struct Done {
    pub id: i64,
    pub info_hash: InfoHash,
    /// The .torrent bytes (info dictionary wrapped with the link's
    /// trackers) and peers worth dialling, or why not.
    pub result: Result<(Vec<u8>, Vec<SocketAddr>), String>,
}

/// What the task needs from the daemon.
pub struct FetchCtx {
    pub tracker: TrackerHandle,
    pub peer_id: [u8; 20],
    pub port: u16,
    pub config: MetadataConfig,
    pub dialer: actors::net::Dialer,
    pub done: mpsc::Sender<Done>,
}

/// Stands in for the metainfo until the metadata is known: the link's name
/// (or hash), no files, no pieces, its trackers.
pub fn placeholder(m: &Magnet) -> Arc<Metainfo> {
    Arc::new(Metainfo {
        info_hash: m.info_hash,
        info: Info {
            name: m
                .display_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| m.info_hash.to_hex()),
            piece_length: 16 * 1024,
            pieces: Vec::new(),
            files: Vec::new(),
            total_length: 0,
            private: false,
            multi_file: false,
        },
        info_bytes: Vec::new(),
        announce: m.trackers.first().cloned(),
        trackers: m.trackers.iter().map(|t| vec![t.clone()]).collect(),
        url_list: Vec::new(),
        comment: None,
        created_by: None,
        creation_date: None,
    })
}

/// Starts the metadata phase of `m`; returns its progress.
pub fn spawn(
    id: i64,
    m: Magnet,
    ctx: &FetchCtx,
    cancel: CancellationToken,
) -> watch::Receiver<MetadataProgress> {
    let (progress_tx, progress) = watch::channel(MetadataProgress::default());
    let tracker = ctx.tracker.clone();
    let (peer_id, port, config, done) = (ctx.peer_id, ctx.port, ctx.config, ctx.done.clone());
    let dialer = ctx.dialer.clone();
    tokio::spawn(async move {
        let mut peers: Vec<SocketAddr> = Vec::new();
        for p in &m.peers {
            // x.pe may name a host; one that does not resolve is skipped.
            match tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(p)).await {
                Ok(Ok(addrs)) => peers.extend(addrs.take(4)),
                _ => tracing::warn!(peer = %p, "x.pe address does not resolve; skipped"),
            }
        }
        let (more_tx, more_rx) = mpsc::channel(16);
        // Held until the phase ends: announces say 16 KiB left meanwhile.
        let (_announce_tx, announce) = watch::channel(AnnounceProgress {
            uploaded: 0,
            downloaded: 0,
            left: 16 * 1024,
        });
        let registered = !m.trackers.is_empty()
            && tracker
                .add_torrent(TorrentRegistration {
                    info_hash: m.info_hash,
                    tiers: m.trackers.iter().map(|t| vec![t.clone()]).collect(),
                    peer_id,
                    port,
                    progress: announce,
                    peers: more_tx,
                })
                .await
                .is_ok();
        let fetched = actors::magnet::fetch(
            FetchParams {
                info_hash: m.info_hash,
                peer_id,
                peers,
                more_peers: more_rx,
                config,
                dialer,
                progress: progress_tx,
                // Not yet: the daemon's metadata phase dials x.pe and tr
                // peers only.
                pex: None,
            },
            cancel.clone(),
        )
        .await;
        if registered {
            // The torrent registers itself again once it runs.
            let _ = tracker.remove_torrent(m.info_hash).await;
        }
        let result = match fetched {
            Ok(f) => {
                let bytes = crate::magnet::torrent_bytes(&f.info_bytes, &m.trackers);
                Ok((bytes, f.peers))
            }
            Err(e) => Err(e.to_string()),
        };
        if cancel.is_cancelled() {
            return;
        }
        let _ = done
            .send(Done {
                id,
                info_hash: m.info_hash,
                result,
            })
            .await;
    });
    progress
}

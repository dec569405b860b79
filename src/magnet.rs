//! `download 'magnet:?...'`: the metadata phase. Peers come from `x.pe`,
//! `--peer` and the `tr` trackers (announced with `left` 16 KiB, as
//! libtorrent does before it knows the size); `actors::magnet::fetch` gets a
//! verified info dictionary from them; it is wrapped in a .torrent (the
//! magnet's trackers as tiers), parsed by the same metainfo parser as a
//! file, optionally saved (`--save-torrent`), and the download goes on as a
//! normal one.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use actors::config::ClientConfig;
use actors::magnet::{FetchParams, MetadataProgress};
use actors::tracker::{AnnounceProgress, TorrentRegistration};
use anyhow::{Context, anyhow};
use protocol::bencode::{Bencode, encode_bytes};
use protocol::magnet::Magnet;
use protocol::metainfo::Metainfo;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::Failure;

/// What the metadata phase found: the .torrent bytes and the addresses to
/// hand the torrent.
pub struct Resolved {
    pub torrent: Vec<u8>,
    pub peers: Vec<SocketAddr>,
}

/// A .torrent around a verified info dictionary: `announce` (the first
/// tracker), `announce-list` (one tier per tracker) and `info`, keys in
/// order. The info bytes are spliced in as they are, so the info-hash holds.
pub fn torrent_bytes(info: &[u8], trackers: &[String]) -> Vec<u8> {
    let mut out = b"d".to_vec();
    if let Some(first) = trackers.first() {
        encode_bytes(&mut out, b"announce");
        encode_bytes(&mut out, first.as_bytes());
        encode_bytes(&mut out, b"announce-list");
        let tiers = trackers
            .iter()
            .map(|t| Bencode::List(vec![Bencode::Bytes(t.as_bytes().to_vec())]))
            .collect();
        out.extend_from_slice(&Bencode::List(tiers).encode());
    }
    encode_bytes(&mut out, b"info");
    out.extend_from_slice(info);
    out.push(b'e');
    out
}

fn progress_json(p: &MetadataProgress, event: &str, listen_port: u16) -> serde_json::Value {
    json!({
        "event": event,
        "state": "metadata",
        "peers": p.peers,
        "metadata_peers": p.peers_with_metadata,
        "metadata_pieces_done": p.pieces_done,
        "metadata_pieces_total": p.pieces_total,
        "metadata_hash_failures": p.hash_failures,
        "metadata_banned": p.banned,
        "listen_port": listen_port,
    })
}

/// Where the metadata phase reports: `--stats-json`, `--save-torrent` and
/// the `--metrics` listener bound for the whole command.
pub struct Outputs<'a> {
    pub stats_out: &'a mut Option<Box<dyn Write + Send>>,
    pub save_torrent: Option<&'a Path>,
    pub metrics: Option<&'a std::net::TcpListener>,
}

/// Runs the metadata phase of `uri` on its own runtime, writing `state:
/// metadata` lines to `stats_out` each second and answering scrapes.
pub fn resolve(
    uri: &str,
    net: &crate::download::NetArgs,
    listen: Option<SocketAddr>,
    dht_state: Option<std::path::PathBuf>,
    config: &ClientConfig,
    outputs: Outputs<'_>,
) -> Result<Resolved, Failure> {
    let Outputs {
        stats_out,
        save_torrent,
        metrics,
    } = outputs;
    let magnet =
        Magnet::parse(uri).map_err(|e| Failure::BadInput(anyhow!("invalid magnet link: {e}")))?;
    if uri.contains("&ws=") || uri.contains("?ws=") {
        tracing::info!("web seeds (ws=) are not used");
    }
    let listen_port = listen.map_or(0, |a| a.port());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::Runtime)?;
    let resolved = runtime.block_on(async {
        let mut peers: Vec<SocketAddr> = net.peers.clone();
        for p in &magnet.peers {
            // x.pe may name a host; a name that does not resolve is skipped.
            match tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(p)).await {
                Ok(Ok(addrs)) => peers.extend(addrs.take(4)),
                _ => tracing::warn!(peer = %p, "x.pe address does not resolve; skipped"),
            }
        }
        let mut peer_id = *b"-AR0001-000000000000";
        let tail: [u8; 12] = rand::random();
        for (d, r) in peer_id[8..].iter_mut().zip(tail) {
            *d = b'0' + r % 10;
        }
        let (more_tx, more_rx) = mpsc::channel(16);
        let tracker_stop = CancellationToken::new();
        let tracker = if magnet.trackers.is_empty() {
            None
        } else {
            let (handle, join) =
                actors::tracker::spawn(config.tracker.clone(), tracker_stop.clone());
            // libtorrent announces 16 KiB left while it lacks the metadata.
            let (_progress_tx, progress) = watch::channel(AnnounceProgress {
                uploaded: 0,
                downloaded: 0,
                left: 16 * 1024,
            });
            let reg = TorrentRegistration {
                info_hash: magnet.info_hash,
                tiers: magnet.trackers.iter().map(|t| vec![t.clone()]).collect(),
                peer_id,
                // Bound already (connections wait in the backlog until the
                // session accepts them), so peers learn the real port.
                port: listen_port,
                progress,
                peers: more_tx.clone(),
            };
            if let Err(e) = handle.add_torrent(reg).await {
                tracing::warn!(error = %e, "not announcing to the magnet's trackers");
            }
            Some((handle, join, _progress_tx))
        };
        // The DHT: get_peers only (we do not listen yet, so no announce).
        let dns_stop = CancellationToken::new();
        let (dns, dns_join) = actors::tracker::dns::spawn(
            config.tracker.dns,
            config.tracker.binding.clone(),
            dns_stop.clone(),
        );
        let dht = Dht::start(config, net.no_dht, listen, dht_state, Some(dns)).await;
        if let Some(d) = &dht {
            if let Err(e) = d
                .handle
                .register(magnet.info_hash, None, more_tx.clone())
                .await
            {
                tracing::warn!(error = %e, "not looking the magnet up in the DHT");
            }
        }
        drop(more_tx);
        let network = crate::metrics::Network {
            listen,
            dht: dht.as_ref().map(|d| d.handle.local_addr()),
            binding: config.tracker.binding.clone(),
        };
        let mut scrapes = match metrics {
            Some(l) => Some(crate::metrics::serve_on(l).map_err(Failure::Runtime)?),
            None => None,
        };
        // A bar only on a terminal, as for the download after it.
        let bar = std::io::stderr().is_terminal().then(metadata_bar);
        let (progress_tx, progress) = watch::channel(MetadataProgress::default());
        let cancel = CancellationToken::new();
        let fetch = actors::magnet::fetch(
            FetchParams {
                info_hash: magnet.info_hash,
                peer_id,
                peers,
                more_peers: more_rx,
                config: config.metadata,
                // Counted apart: the session (and its counters) starts
                // once the metadata is known.
                dialer: actors::net::Dialer::new(
                    std::sync::Arc::new(config.clone()),
                    Default::default(),
                )
                .map_err(|e| Failure::BadInput(anyhow!(e)))?,
                progress: progress_tx,
                pex: (config.pex.enabled && !net.no_pex).then_some(config.pex),
            },
            cancel.clone(),
        );
        tokio::pin!(fetch);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let outcome = loop {
            tokio::select! {
                r = &mut fetch => break r.map_err(|e| Failure::Runtime(e.into())),
                _ = tokio::signal::ctrl_c() => {
                    cancel.cancel();
                    break Err(Failure::Runtime(anyhow!("interrupted while fetching the metadata")));
                }
                _ = tick.tick() => {}
                Some(reply) = crate::download::recv_scrape(&mut scrapes) => {
                    let _ = reply.send(crate::metrics::render_metadata(&progress.borrow(), &network));
                    continue;
                }
            }
            if let Some(bar) = &bar {
                bar.set_message(bar_message(&progress.borrow()));
                bar.tick();
            }
            if let Some(out) = stats_out.as_mut() {
                let _ = writeln!(
                    out,
                    "{}",
                    progress_json(&progress.borrow(), "progress", listen_port)
                );
                let _ = out.flush();
            }
        };
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        if let Some((handle, join, _)) = tracker {
            let _ = handle.remove_torrent(magnet.info_hash).await;
            tracker_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), join).await;
        }
        if let Some(d) = dht {
            d.stop().await;
        }
        dns_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), dns_join).await;
        if let Some(out) = stats_out.as_mut() {
            let _ = writeln!(
                out,
                "{}",
                progress_json(&progress.borrow(), "metadata", listen_port)
            );
            let _ = out.flush();
        }
        outcome
    })?;
    let torrent = torrent_bytes(&resolved.info_bytes, &magnet.trackers);
    // The same parser and path checks as a .torrent file: a verified but
    // invalid info dictionary stops here (exit 2), nothing written.
    Metainfo::from_bytes(&torrent).map_err(|e| {
        Failure::BadInput(anyhow!(
            "the metadata of {} is not a valid torrent: {e}",
            magnet.info_hash
        ))
    })?;
    if let Some(path) = save_torrent {
        std::fs::write(path, &torrent)
            .with_context(|| format!("--save-torrent: writing {}", path.display()))
            .map_err(Failure::Runtime)?;
    }
    Ok(Resolved {
        torrent,
        peers: resolved.peers,
    })
}

/// The metadata phase's bar: a spinner, since the size is not known.
fn metadata_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// `metadata 3p 2/5 pieces`: the state, connections and metadata pieces.
fn bar_message(p: &MetadataProgress) -> String {
    format!(
        "metadata {}p {}/{} pieces",
        p.peers, p.pieces_done, p.pieces_total
    )
}

/// A DHT node of this process, stopped (and its table saved) by [`Dht::stop`].
pub struct Dht {
    pub handle: actors::dht::DhtHandle,
    join: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
}

impl Dht {
    /// Starts the node unless `[dht] enabled` is off or `--no-dht` was
    /// given. It binds the listen address's IP (all interfaces when not
    /// listening) and `[dht] port`, or the listen port when that is 0.
    /// A node that cannot start is logged and left out.
    pub async fn start(
        config: &ClientConfig,
        no_dht: bool,
        listen: Option<SocketAddr>,
        state_file: Option<std::path::PathBuf>,
        dns: Option<actors::tracker::dns::DnsHandle>,
    ) -> Option<Dht> {
        if no_dht || !config.dht.enabled {
            return None;
        }
        if !config.proxy.is_empty() {
            // The DHT is UDP, which the SOCKS5 proxy does not carry here.
            tracing::warn!("DHT off: a SOCKS5 proxy is set and DHT traffic would bypass it");
            return None;
        }
        let ip = listen.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let port = match config.dht.port {
            0 => listen.map_or(0, |a| a.port()),
            p => p,
        };
        let cancel = CancellationToken::new();
        let start = |port| actors::dht::DhtStart {
            bind: SocketAddr::new(ip, port),
            state_file: state_file.clone(),
            dns: dns.clone(),
            seed: None,
        };
        let mut spawned = actors::dht::spawn(config.dht.clone(), start(port), cancel.clone()).await;
        // The listen port's UDP twin may be taken (another client's DHT):
        // unless `[dht] port` names one, any port does.
        if spawned.is_err() && config.dht.port == 0 && port != 0 {
            tracing::info!(port, "the DHT port is taken; using any free port");
            spawned = actors::dht::spawn(config.dht.clone(), start(0), cancel.clone()).await;
        }
        match spawned {
            Ok((handle, join)) => {
                tracing::info!(addr = %handle.local_addr(), "DHT node running");
                Some(Dht {
                    handle,
                    join,
                    cancel,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, port, "the DHT node did not start; going on without it");
                None
            }
        }
    }

    /// Stops the node and waits (bounded) for it to save its table.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.join).await;
    }
}

//! `--metrics ADDR`: Prometheus text format over HTTP.
//!
//! A hand-written HTTP/1.1 responder on tokio rather than a crate: the
//! endpoint answers one GET with one text body, which is a few dozen lines,
//! while `metrics-exporter-prometheus` with its listener pulls in hyper and
//! its tree (minutes of compile on a 2-core builder) for the same result.
//!
//! The listener task owns no client state. Each request becomes a [`Scrape`]
//! sent through a bounded mailbox to the command's run loop, which owns the
//! session and the torrent statistics, renders the page with [`render`] and
//! answers on the oneshot. Connections are served with a bounded number of
//! tasks, a bounded request head and a timeout, since anyone who can reach
//! the port can send anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::config::ClientConfig;
use actors::metrics::{
    BLOCKS_PER_PWRITEV, HASH_LATENCY_US, HistogramSnapshot, PIPELINE_DEPTH, REQUEST_RTT_US,
    SERVE_TURNAROUND_US, WRITE_LATENCY_US,
};
use actors::session::Session;
use actors::torrent::TorrentStats;
use actors::tracker::TrackerStats;
use anyhow::Context;
use std::fmt::Write as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// A request for the page: the run loop answers with the rendered text.
pub type Scrape = oneshot::Sender<String>;

/// Scrapes waiting for the run loop.
const SCRAPE_MAILBOX: usize = 8;
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;
/// Longest request head read.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time allowed for a whole exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Mailbox capacities from the config, for the depth gauges' denominators.
pub struct Capacities {
    torrent: usize,
    peer: usize,
}

impl Capacities {
    pub fn of(config: &ClientConfig) -> Self {
        Capacities {
            torrent: config.torrent_mailbox,
            peer: config.peer_mailbox,
        }
    }
}

/// Where our traffic goes: the listener, the DHT socket, the binding and
/// the proxy (without its credentials), for `--stats-json` (`network`)
/// and the metrics (`actorrent_listen_port`, `actorrent_network_info`).
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// The listener's local address, if listening.
    pub listen: Option<std::net::SocketAddr>,
    /// The DHT node's local address, if one runs.
    pub dht: Option<std::net::SocketAddr>,
    /// `bind_interface`, `bind_address` and `proxy`.
    pub binding: actors::net::Binding,
}

impl Network {
    /// The `network` object of a stats line.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.map(|a| a.to_string()),
            "dht": self.dht.map(|a| a.to_string()),
            "bind_interface": self.binding.interface,
            "bind_address": self.binding.address.map(|a| a.to_string()),
            "proxy": self.binding.proxy.as_ref().map(|p| p.redacted()),
        })
    }

    fn render(&self, out: &mut String) {
        let port = self.listen.map_or(0, |a| a.port());
        let label = |v: Option<String>| v.unwrap_or_default().replace(['\\', '"', '\n'], "_");
        let _ = writeln!(
            out,
            "# HELP actorrent_listen_port The port accepting peer connections (0: not listening).\n# TYPE actorrent_listen_port gauge\nactorrent_listen_port {port}"
        );
        let _ = writeln!(
            out,
            "# HELP actorrent_network_info Where traffic goes: listener, DHT socket, binding, proxy (always 1).\n# TYPE actorrent_network_info gauge\nactorrent_network_info{{listen=\"{}\",dht=\"{}\",bind_interface=\"{}\",bind_address=\"{}\",proxy=\"{}\"}} 1",
            label(self.listen.map(|a| a.to_string())),
            label(self.dht.map(|a| a.to_string())),
            label(self.binding.interface.clone()),
            label(self.binding.address.map(|a| a.to_string())),
            label(self.binding.proxy.as_ref().map(|p| p.redacted())),
        );
    }
}

/// Binds `addr` for [`serve`]: bound before anything else starts, so a
/// magnet's metadata phase and the torrent after it answer on one port.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--metrics: listening on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("--metrics: non-blocking listener")?;
    let local = listener.local_addr().context("--metrics: local address")?;
    if addr.port() == 0 {
        eprintln!("actorrent: metrics on http://{local}/metrics");
    }
    tracing::info!(%local, "serving metrics");
    Ok(listener)
}

/// Serves a listener from [`bind`] on the current runtime (a duplicate of
/// its descriptor, so the next runtime can serve it again); returns the
/// mailbox the scrapes arrive in.
pub fn serve_on(listener: &std::net::TcpListener) -> anyhow::Result<mpsc::Receiver<Scrape>> {
    let dup = listener.try_clone().context("--metrics: listener")?;
    let listener = TcpListener::from_std(dup).context("--metrics: listener")?;
    let (tx, rx) = mpsc::channel(SCRAPE_MAILBOX);
    tokio::spawn(serve(listener, tx));
    Ok(rx)
}

/// `actorrent_torrents{state=...}`: torrents by state, every state named
/// (0 when none), `metadata` for magnet links whose info dictionary is not
/// known yet.
fn render_states(out: &mut String, states: &[&str], metadata: usize) {
    let _ = writeln!(
        out,
        "# HELP actorrent_torrents Torrents by state (metadata: a magnet link's info dictionary is being fetched).\n# TYPE actorrent_torrents gauge"
    );
    let _ = writeln!(out, "actorrent_torrents{{state=\"metadata\"}} {metadata}");
    for name in ["checking", "downloading", "seeding", "complete", "error"] {
        let n = states.iter().filter(|s| **s == name).count();
        let _ = writeln!(out, "actorrent_torrents{{state=\"{name}\"}} {n}");
    }
}

/// The page while a magnet link's metadata is fetched (no session yet):
/// the network, `actorrent_torrents{state="metadata"} 1`, the connections
/// and the metadata pieces.
pub fn render_metadata(p: &actors::magnet::MetadataProgress, network: &Network) -> String {
    let mut out = String::with_capacity(2 * 1024);
    network.render(&mut out);
    render_states(&mut out, &[], 1);
    let gauges: [(&str, &str, u64); 5] = [
        ("actorrent_peers", "Connected peers.", p.peers as u64),
        (
            "actorrent_metadata_peers",
            "Connected peers that advertised ut_metadata with a size.",
            p.peers_with_metadata as u64,
        ),
        (
            "actorrent_metadata_pieces_done",
            "16 KiB metadata pieces received of the current copy.",
            u64::from(p.pieces_done),
        ),
        (
            "actorrent_metadata_pieces_total",
            "Metadata pieces in all (0 until a peer told the size).",
            u64::from(p.pieces_total),
        ),
        (
            "actorrent_metadata_banned",
            "Addresses banned for sending a metadata copy that did not match the info-hash.",
            p.banned,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP actorrent_metadata_hash_failures_total Metadata copies whose SHA-1 did not match the info-hash.\n# TYPE actorrent_metadata_hash_failures_total counter\nactorrent_metadata_hash_failures_total {}",
        p.hash_failures
    );
    out
}

async fn serve(listener: TcpListener, tx: mpsc::Sender<Scrape>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off instead of
                // spinning on an error that will repeat.
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, tx)).await;
        });
    }
}

/// Reads one request head and answers it, then closes.
async fn exchange(mut stream: TcpStream, tx: mpsc::Sender<Scrape>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != b"GET" {
        return respond(&mut stream, "405 Method Not Allowed", "").await;
    }
    if path != b"/metrics" && path != b"/" {
        return respond(&mut stream, "404 Not Found", "try /metrics\n").await;
    }
    let (reply, body) = oneshot::channel();
    if tx.send(reply).await.is_err() {
        return respond(&mut stream, "503 Service Unavailable", "stopping\n").await;
    }
    match body.await {
        Ok(body) => respond(&mut stream, "200 OK", &body).await,
        Err(_) => respond(&mut stream, "503 Service Unavailable", "stopping\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The page: counters and gauges from the session and the torrents'
/// statistics, histograms from the process-wide statics.
pub fn render(
    session: &Session,
    torrents: &[TorrentStats],
    trackers: Option<&TrackerStats>,
    caps: &Capacities,
    network: &Network,
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    network.render(&mut out);
    let states: Vec<&str> = torrents.iter().map(|t| t.state.name()).collect();
    render_states(&mut out, &states, 0);
    let sum = |f: fn(&TorrentStats) -> u64| torrents.iter().map(f).sum::<u64>();
    let writers = session.writer_stats();
    let hash = session.hash_counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let hashed = load(&hash.pieces);
    let mismatched = load(&hash.mismatches);
    let pool = session.read_pool_stats();

    let counters: [(&str, &str, u64); 13] = [
        (
            "actorrent_bytes_down_total",
            "Bytes of accepted blocks received.",
            sum(|s| s.bytes_down),
        ),
        (
            "actorrent_bytes_up_total",
            "Bytes of blocks sent.",
            sum(|s| s.bytes_up),
        ),
        (
            "actorrent_pieces_verified_total",
            "Pieces whose hash matched.",
            hashed.saturating_sub(mismatched),
        ),
        (
            "actorrent_hash_failures_total",
            "Pieces that failed their hash check.",
            sum(|s| s.hash_failures),
        ),
        (
            "actorrent_hashed_bytes_total",
            "Bytes hashed by the hash workers.",
            load(&hash.bytes),
        ),
        (
            "actorrent_write_syscalls_total",
            "pwritev calls made by the disk writers.",
            writers.iter().map(|(_, w)| w.pwritev_calls).sum(),
        ),
        (
            "actorrent_blocks_written_total",
            "Buffers written by the disk writers.",
            writers.iter().map(|(_, w)| w.blocks_written).sum(),
        ),
        (
            "actorrent_bytes_written_total",
            "Bytes written by the disk writers.",
            writers.iter().map(|(_, w)| w.bytes_written).sum(),
        ),
        (
            "actorrent_protocol_errors_total",
            "Connections dropped for protocol violations.",
            sum(|s| s.protocol_errors),
        ),
        (
            "actorrent_protocol_oddities_total",
            "Odd peer messages tolerated instead of ending the connection.",
            sum(|s| s.protocol_oddities),
        ),
        (
            "actorrent_bytes_wasted_total",
            "Bytes of received blocks thrown away (duplicates, unrequested).",
            sum(|s| s.bytes_wasted),
        ),
        (
            "actorrent_read_buffers_reused_total",
            "Disk reads for upload into a buffer from the read pool.",
            pool.hits,
        ),
        (
            "actorrent_read_buffers_allocated_total",
            "Disk reads for upload into a new allocation (pool empty, or a size it does not keep).",
            pool.misses + pool.unpooled,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }

    // Announces by outcome, summed over tracker URLs (per-URL detail is in
    // `--stats-json`; URLs as labels would grow without bound).
    let _ = writeln!(
        out,
        "# HELP actorrent_announces_total Tracker announces, by outcome.\n# TYPE actorrent_announces_total counter"
    );
    let urls = trackers
        .map(|t| t.trackers.values().collect::<Vec<_>>())
        .unwrap_or_default();
    let by =
        |f: fn(&actors::tracker::TrackerUrlStats) -> u64| urls.iter().map(|u| f(u)).sum::<u64>();
    for (outcome, v) in [
        ("sent", by(|u| u.announces_sent)),
        ("succeeded", by(|u| u.announces_succeeded)),
        ("failed", by(|u| u.announces_failed)),
    ] {
        let _ = writeln!(
            out,
            "actorrent_announces_total{{outcome=\"{outcome}\"}} {v}"
        );
    }

    // Connections by direction and kind, and the ones that failed before
    // a BitTorrent handshake, by reason.
    let c = session.connection_stats();
    let _ = writeln!(
        out,
        "# HELP actorrent_connections_total BitTorrent handshakes completed, by direction and kind (plaintext, MSE with plaintext payload, RC4).\n# TYPE actorrent_connections_total counter"
    );
    for (dir, k) in [("outgoing", c.outgoing), ("incoming", c.incoming)] {
        for (kind, v) in [
            ("plaintext", k.plaintext),
            ("mse_plaintext", k.mse_plaintext),
            ("rc4", k.rc4),
        ] {
            let _ = writeln!(
                out,
                "actorrent_connections_total{{direction=\"{dir}\",kind=\"{kind}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP actorrent_connection_failures_total Connections dropped before their BitTorrent handshake, by reason.\n# TYPE actorrent_connection_failures_total counter"
    );
    for (reason, v) in [
        ("connect", c.connect_failures),
        ("mse_fallback", c.mse_fallbacks),
        ("mse_outgoing", c.mse_failures_outgoing),
        ("refused_plaintext", c.refused_plaintext),
        ("refused_encrypted", c.refused_encrypted),
        ("mse_incoming", c.mse_errors_incoming),
        ("unknown_skey", c.unknown_skey),
        ("incomplete_incoming", c.incomplete_incoming),
        ("unknown_torrent", c.unknown_torrent),
    ] {
        let _ = writeln!(
            out,
            "actorrent_connection_failures_total{{reason=\"{reason}\"}} {v}"
        );
    }

    let files = session.open_files();
    let gauges: [(&str, &str, u64); 9] = [
        (
            "actorrent_peers",
            "Connected peers.",
            torrents.iter().map(|s| s.peers as u64).sum(),
        ),
        (
            "actorrent_budget_in_use_bytes",
            "Buffer budget in use.",
            session.budget().in_use(),
        ),
        (
            "actorrent_budget_capacity_bytes",
            "Buffer budget capacity.",
            session.budget().capacity(),
        ),
        (
            "actorrent_budget_peak_bytes",
            "Highest buffer budget use seen.",
            session.budget().peak(),
        ),
        (
            "actorrent_budget_limit_bytes",
            "Effective buffer budget limit now (grows when peers starve, shrinks when idle; capacity is the ceiling).",
            session.budget().limit(),
        ),
        (
            "actorrent_budget_limit_peak_bytes",
            "Highest effective buffer budget limit set.",
            session.budget().limit_peak(),
        ),
        (
            "actorrent_open_files",
            "Torrent files open now (disk.max_open_files caps them).",
            files.open as u64,
        ),
        (
            "actorrent_open_files_capacity",
            "disk.max_open_files.",
            files.capacity as u64,
        ),
        (
            "actorrent_read_pool_idle_bytes",
            "Idle read buffers kept for reuse (disk.read_pool_bytes caps them).",
            pool.idle_bytes,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let (hash_depth, hash_cap) = session.hash_queue();
    let (writer_depths, writer_cap) = session.writer_queues();
    let depth = [
        ("hash", hash_depth, hash_cap),
        (
            "writer",
            writer_depths.iter().map(|(_, d)| d).sum(),
            writer_cap,
        ),
        (
            "session",
            session.mailbox_depth(),
            session.mailbox_capacity(),
        ),
        (
            "torrent",
            torrents.iter().map(|s| s.mailbox_depth).sum(),
            caps.torrent,
        ),
        (
            "peer",
            torrents.iter().map(|s| s.peer_mailbox_depth).sum(),
            caps.peer,
        ),
    ];
    let _ = writeln!(
        out,
        "# HELP actorrent_mailbox_depth Messages waiting, summed over the actors of a kind.\n# TYPE actorrent_mailbox_depth gauge"
    );
    for (kind, d, _) in depth {
        let _ = writeln!(out, "actorrent_mailbox_depth{{actor=\"{kind}\"}} {d}");
    }
    let _ = writeln!(
        out,
        "# HELP actorrent_mailbox_capacity Capacity of one mailbox of each actor kind.\n# TYPE actorrent_mailbox_capacity gauge"
    );
    for (kind, _, c) in depth {
        let _ = writeln!(out, "actorrent_mailbox_capacity{{actor=\"{kind}\"}} {c}");
    }

    let histograms = [
        (
            "actorrent_request_rtt_seconds",
            "Time from a request to its block.",
            REQUEST_RTT_US.snapshot(),
            Unit::Micros,
        ),
        (
            "actorrent_serve_turnaround_seconds",
            "Time from a remote's request arriving to its block written to the socket.",
            SERVE_TURNAROUND_US.snapshot(),
            Unit::Micros,
        ),
        (
            "actorrent_pipeline_depth",
            "Pipeline depth of unchoked connections, sampled every peer tick.",
            PIPELINE_DEPTH.snapshot(),
            Unit::Count,
        ),
        (
            "actorrent_blocks_per_pwritev",
            "Blocks written per pwritev run.",
            BLOCKS_PER_PWRITEV.snapshot(),
            Unit::Count,
        ),
        (
            "actorrent_hash_latency_seconds",
            "Time to hash one piece.",
            HASH_LATENCY_US.snapshot(),
            Unit::Micros,
        ),
        (
            "actorrent_disk_write_latency_seconds",
            "Time of one pwritev run.",
            WRITE_LATENCY_US.snapshot(),
            Unit::Micros,
        ),
    ];
    for (name, help, snap, unit) in histograms {
        histogram(&mut out, name, help, &snap, unit);
    }
    out
}

/// What a histogram's recorded integers are.
#[derive(Clone, Copy)]
enum Unit {
    /// Microseconds, shown as seconds.
    Micros,
    /// Plain counts.
    Count,
}

impl Unit {
    /// The value in the exposed unit, exactly (no float rounding noise in
    /// bucket labels).
    fn show(self, v: u64) -> String {
        match self {
            Unit::Count => v.to_string(),
            Unit::Micros => {
                let (s, us) = (v / 1_000_000, v % 1_000_000);
                if us == 0 {
                    s.to_string()
                } else {
                    format!("{s}.{us:06}").trim_end_matches('0').to_string()
                }
            }
        }
    }
}

/// One histogram in Prometheus form: cumulative buckets, `+Inf`, sum, count.
fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot, unit: Unit) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, n) in h.bounds.iter().zip(&h.buckets) {
        cumulative += n;
        let le = unit.show(*bound);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    // A scrape racing a recording may see a bucket ahead of the count;
    // `+Inf` and `_count` must still agree and cover every bucket.
    let overflow = h.buckets.get(h.bounds.len()).copied().unwrap_or(0);
    let count = h.count.max(cumulative + overflow);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", unit.show(h.sum));
    let _ = writeln!(out, "{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_show_as_exact_seconds() {
        assert_eq!(Unit::Micros.show(50), "0.00005");
        assert_eq!(Unit::Micros.show(2_500_000), "2.5");
        assert_eq!(Unit::Micros.show(10_000_000), "10");
        assert_eq!(Unit::Micros.show(0), "0");
        assert_eq!(Unit::Count.show(1024), "1024");
    }

    #[test]
    fn histograms_are_cumulative_and_end_in_inf_equal_to_count() {
        let h = HistogramSnapshot {
            bounds: &[1, 2, 4],
            buckets: vec![3, 0, 2, 1],
            count: 6,
            sum: 17,
        };
        let mut out = String::new();
        histogram(&mut out, "x", "help", &h, Unit::Count);
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "x_bucket{le=\"1\"} 3",
                "x_bucket{le=\"2\"} 3",
                "x_bucket{le=\"4\"} 5",
                "x_bucket{le=\"+Inf\"} 6",
                "x_sum 17",
                "x_count 6",
            ]
        );
    }
}

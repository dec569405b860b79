//! `actorrent download`: fetch one torrent from the peers given (and, once
//! the tracker session lands, from its trackers), verify every piece, write
//! it, and exit 0 when the data is complete and on disk.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::config::ClientConfig;
use actors::mse_stream::Encryption;
use actors::session::Session;
use actors::torrent::{Target, TorrentParams, TorrentState, TorrentStats, parse_strategy};
use anyhow::{Context, anyhow};
use protocol::metainfo::Metainfo;
use serde_json::json;

use crate::Failure;
use crate::info::read_torrent;
use crate::select::SelectArgs;

/// Options shared by `download` and `seed`.
#[derive(clap::Args, Debug, Clone)]
pub struct NetArgs {
    /// A peer to connect to (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT")]
    pub peers: Vec<SocketAddr>,
    /// Write one JSON object per second (and a final one) to this file, or
    /// to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub stats_json: Option<String>,
    /// Where to keep resume data (default: `<DIR>/.actorrent/<info-hash>.resume`,
    /// or next to an image file, or under the state directory for a device).
    #[arg(long, value_name = "PATH")]
    pub resume_file: Option<PathBuf>,
    /// Upload slots (the optimistic one included), or `unlimited` to serve
    /// every interested peer at once (a LAN seed). Default: `choker.slots`
    /// of the config (4).
    #[arg(long, value_name = "N|unlimited", value_parser = parse_slots)]
    pub unchoke_slots: Option<Slots>,
    /// Upload limit in bytes per second, 0 for unlimited (default: the
    /// config's `upload_limit`, unlimited).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub upload_limit: Option<u64>,
    /// Download limit in bytes per second, 0 for unlimited (default: the
    /// config's `download_limit`, unlimited).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub download_limit: Option<u64>,
    /// Serve Prometheus metrics over HTTP at `http://ADDR/metrics` (port 0:
    /// any free port, printed on stderr).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Run no DHT node (BEP 5): peers come from trackers and `--peer` only.
    /// Private torrents never use the DHT.
    #[arg(long)]
    pub no_dht: bool,
    /// No peer exchange (BEP 11): peers are neither learned from nor told
    /// to other peers. Private torrents never use it.
    #[arg(long)]
    pub no_pex: bool,
    /// MSE/PE for peer connections: `prefer` (try encrypted, fall back to
    /// plaintext, accept both), `require` (RC4 only) or `disable`
    /// (plaintext only). Default: the config's `encryption` (prefer).
    #[arg(long, value_name = "prefer|require|disable", value_parser = parse_encryption)]
    pub encryption: Option<Encryption>,
    /// Bind every socket (peers, listener, trackers) to this network
    /// interface (SO_BINDTODEVICE): while it is down or missing nothing
    /// goes out, by any route. Default: the config's `bind_interface`.
    #[arg(long, value_name = "NAME")]
    pub bind_interface: Option<String>,
    /// Local address of outgoing peer and tracker connections. Default: the
    /// config's `bind_address` (the OS chooses).
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<std::net::IpAddr>,
    /// SOCKS5 proxy for outgoing peer connections and HTTP trackers
    /// (`socks5://[user:password@]host:port`). While set, UDP trackers and
    /// the DHT are not used: their traffic would bypass the proxy.
    /// Default: the config's `proxy` (none).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
}

/// `--bind-interface` / `--bind-address` over the config's keys, copied to
/// the tracker and DHT configs, which open sockets of their own.
fn apply_binding(net: &NetArgs, config: &mut ClientConfig) -> Result<(), Failure> {
    if let Some(name) = &net.bind_interface {
        config.bind_interface = name.clone();
    }
    if let Some(ip) = net.bind_address {
        config.bind_address = ip.to_string();
    }
    if let Some(p) = &net.proxy {
        config.proxy = p.clone();
    }
    let binding =
        actors::net::Binding::from_config(config).map_err(|e| Failure::BadInput(anyhow!(e)))?;
    config.dht.bind_interface = binding.interface.clone();
    config.tracker.binding = binding;
    Ok(())
}

fn parse_encryption(s: &str) -> Result<Encryption, String> {
    match s {
        "prefer" => Ok(Encryption::Prefer),
        "require" => Ok(Encryption::Require),
        "disable" => Ok(Encryption::Disable),
        _ => Err(format!("`{s}` is not prefer, require or disable")),
    }
}

/// Upload slots: a count or unlimited.
#[derive(Debug, Clone, Copy)]
pub struct Slots(pub Option<usize>);

fn parse_slots(s: &str) -> Result<Slots, String> {
    if s == "unlimited" {
        return Ok(Slots(None));
    }
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(Slots(Some(n))),
        _ => Err(format!("`{s}` is not a positive number or `unlimited`")),
    }
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["output", "raw_target"])))]
pub struct DownloadArgs {
    /// The .torrent file, or a magnet link (`magnet:?xt=urn:btih:...`):
    /// the metadata is then fetched from the link's peers and trackers.
    pub torrent: PathBuf,
    /// With a magnet link: write the .torrent here once the metadata is
    /// verified.
    #[arg(long, value_name = "PATH")]
    pub save_torrent: Option<PathBuf>,
    /// Directory the payload goes into (as `<DIR>/<torrent name>`).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Raw-disk mode: write every file at its hex offset in this block
    /// device or image file.
    #[arg(long, value_name = "PATH")]
    pub raw_target: Option<PathBuf>,
    /// With `--raw-target`: write and read it with O_DIRECT, bypassing the
    /// page cache (config `disk.direct_io`).
    #[arg(long, requires = "raw_target")]
    pub direct_io: bool,
    /// Accept incoming connections on this address (port 0: any free
    /// port). Default: `[::]:6881` (both families), or the next free port
    /// up to 6889, or any free port; 0.0.0.0 where IPv6 is off.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Fetch pieces in order instead of rarest first.
    #[arg(long)]
    pub sequential: bool,
    /// Keep seeding after the download completes, until interrupted or a
    /// `--seed-ratio` / `--seed-time` is reached.
    #[arg(long)]
    pub seed_after: bool,
    /// With `--seed-after`: stop once uploaded bytes reach this multiple of
    /// the torrent's size.
    #[arg(long, value_name = "RATIO", requires = "seed_after")]
    pub seed_ratio: Option<f64>,
    /// With `--seed-after`: stop after seeding this many seconds.
    #[arg(long, value_name = "SECS", requires = "seed_after")]
    pub seed_time: Option<u64>,
    /// Serve every file over HTTP while it downloads, at
    /// `http://IP:PORT/stream/<info-hash>/<file-index>` (port 0: any free
    /// port); the URLs are printed on stderr. Keeps running (and seeding)
    /// after the download completes, until interrupted.
    #[arg(long, value_name = "IP:PORT")]
    pub stream: Option<SocketAddr>,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["data", "raw_target"])))]
pub struct SeedArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// Directory holding the payload (as `<DIR>/<torrent name>`, the layout
    /// `download --output` makes).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Raw-disk mode: serve from this block device or image file.
    #[arg(long, value_name = "PATH")]
    pub raw_target: Option<PathBuf>,
    /// With `--raw-target`: read it with O_DIRECT, bypassing the
    /// page cache (config `disk.direct_io`).
    #[arg(long, requires = "raw_target")]
    pub direct_io: bool,
    /// Accept incoming connections on this address (port 0: any free port).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:6881")]
    pub listen: SocketAddr,
    /// Super-seeding (BEP 16): show each peer one rare piece at a time and
    /// the next once another peer has it, so the seed sends each piece
    /// about once (config `super_seed`).
    #[arg(long)]
    pub super_seed: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// The ports `download` tries, in order, when `--listen` is not given
/// (then one the OS picks), as other clients do.
const DEFAULT_LISTEN_PORTS: std::ops::RangeInclusive<u16> = 6881..=6889;

/// Binds `download`'s listener: `--listen` exactly, or the first free port
/// of [`DEFAULT_LISTEN_PORTS`] on `[::]`/0.0.0.0 (the bound address when
/// `--bind-address` is set), or any free port.
fn bind_download_listener(
    listen: Option<SocketAddr>,
    config: &ClientConfig,
) -> Result<std::net::TcpListener, Failure> {
    let binding =
        actors::net::Binding::from_config(config).map_err(|e| Failure::BadInput(anyhow!(e)))?;
    if let Some(addr) = listen {
        return actors::net::bind_listener_std(addr, &binding)
            .with_context(|| format!("--listen: binding {addr}"))
            .map_err(Failure::Runtime);
    }
    // `[::]` is one socket for both families; 0.0.0.0 where IPv6 is off.
    let ips = match binding.address {
        Some(ip) => vec![ip],
        None => vec![
            std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
            std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED),
        ],
    };
    let mut last = None;
    for port in DEFAULT_LISTEN_PORTS.chain([0]) {
        for &ip in &ips {
            match actors::net::bind_listener_std(SocketAddr::new(ip, port), &binding) {
                Ok(l) => return Ok(l),
                Err(e) => {
                    tracing::debug!(%ip, port, error = %e, "cannot listen there");
                    last = Some(e);
                }
            }
        }
    }
    Err(Failure::Runtime(
        anyhow!(last.map_or_else(|| "no address to try".to_string(), |e| e.to_string()))
            .context("listening for peers"),
    ))
}

/// What the run loop should do once the torrent is complete.
struct Plan {
    seed: bool,
    seed_only: bool,
    seed_ratio: Option<f64>,
    seed_time: Option<Duration>,
    listen: Option<SocketAddr>,
    /// A listener bound before the torrent starts (`download`), so every
    /// announce, the metadata phase's included, names the port it has.
    bound: Option<std::net::TcpListener>,
    sequential: bool,
    /// The selection flags (`download` only; `seed` keeps the recorded one).
    select: Option<SelectArgs>,
    stream: Option<SocketAddr>,
    /// The `--metrics` listener bound before the torrent starts
    /// (`download`), so a magnet's metadata phase is scraped on the same port.
    metrics: Option<std::net::TcpListener>,
}

pub fn run(args: &DownloadArgs, mut config: ClientConfig) -> Result<(), Failure> {
    // Before anything opens a socket (a magnet's metadata fetch included).
    apply_binding(&args.net, &mut config)?;
    config.disk.direct_io |= args.direct_io;
    let target = match (&args.output, &args.raw_target) {
        (Some(dir), None) => Target::Directory(dir.clone()),
        (None, Some(path)) => Target::Raw(path.clone()),
        _ => return Err(Failure::BadInput(anyhow!("give --output or --raw-target"))),
    };
    let bound = bind_download_listener(args.listen, &config)?;
    let local = bound
        .local_addr()
        .context("reading the listen address")
        .map_err(Failure::Runtime)?;
    tracing::info!(%local, "listening");
    let plan = Plan {
        seed: args.seed_after || args.stream.is_some(),
        seed_only: false,
        seed_ratio: args.seed_ratio,
        seed_time: args.seed_time.map(Duration::from_secs),
        listen: None,
        bound: Some(bound),
        sequential: args.sequential,
        select: Some(args.select.clone()),
        stream: args.stream,
        metrics: args
            .net
            .metrics
            .map(crate::metrics::bind)
            .transpose()
            .map_err(Failure::Runtime)?,
    };
    let mut stats_out = open_stats(&args.net)?;
    let source = args.torrent.to_string_lossy();
    if source.starts_with("magnet:") {
        let hex = protocol::magnet::Magnet::parse(&source)
            .map(|m| m.info_hash.to_hex())
            .unwrap_or_default();
        let dht_state = dht_state_file(&args.net, &target, &hex);
        let resolved = crate::magnet::resolve(
            &source,
            &args.net,
            Some(local),
            dht_state,
            &config,
            crate::magnet::Outputs {
                stats_out: &mut stats_out,
                save_torrent: args.save_torrent.as_deref(),
                metrics: plan.metrics.as_ref(),
            },
        )?;
        let mut net = args.net.clone();
        for p in resolved.peers {
            if !net.peers.contains(&p) {
                net.peers.push(p);
            }
        }
        return run_torrent(
            Source::Bytes(resolved.torrent),
            target,
            &net,
            plan,
            config,
            stats_out,
        );
    }
    if args.save_torrent.is_some() {
        return Err(Failure::BadInput(anyhow!(
            "--save-torrent is for magnet links; this is a .torrent file already"
        )));
    }
    run_torrent(
        Source::File(&args.torrent),
        target,
        &args.net,
        plan,
        config,
        stats_out,
    )
}

/// Where the torrent comes from: a file, or the metadata phase of a magnet.
enum Source<'a> {
    File(&'a Path),
    Bytes(Vec<u8>),
}

fn open_stats(net: &NetArgs) -> Result<Option<Box<dyn Write + Send>>, Failure> {
    Ok(match net.stats_json.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating {path}"))
                .map_err(Failure::BadInput)?,
        )),
    })
}

pub fn seed(args: &SeedArgs, mut config: ClientConfig) -> Result<(), Failure> {
    apply_binding(&args.net, &mut config)?;
    config.super_seed |= args.super_seed;
    config.disk.direct_io |= args.direct_io;
    let target = match (&args.data, &args.raw_target) {
        (Some(dir), None) => Target::Directory(dir.clone()),
        (None, Some(path)) => Target::Raw(path.clone()),
        _ => return Err(Failure::BadInput(anyhow!("give --data or --raw-target"))),
    };
    let plan = Plan {
        seed: true,
        seed_only: true,
        seed_ratio: None,
        seed_time: None,
        listen: Some(args.listen),
        bound: None,
        sequential: false,
        select: None,
        stream: None,
        metrics: None,
    };
    let stats_out = open_stats(&args.net)?;
    run_torrent(
        Source::File(&args.torrent),
        target,
        &args.net,
        plan,
        config,
        stats_out,
    )
}

fn run_torrent(
    source: Source<'_>,
    target: Target,
    net: &NetArgs,
    mut plan: Plan,
    mut config: ClientConfig,
    mut stats_out: Option<Box<dyn Write + Send>>,
) -> Result<(), Failure> {
    let meta = match source {
        Source::File(torrent) => {
            let bytes = read_torrent(torrent)?;
            Metainfo::from_bytes(&bytes).map_err(|e| {
                Failure::BadInput(anyhow!("{}: not a valid torrent: {e}", torrent.display()))
            })?
        }
        // Parsed once already by the metadata phase, which reports errors.
        Source::Bytes(bytes) => Metainfo::from_bytes(&bytes)
            .map_err(|e| Failure::BadInput(anyhow!("the fetched metadata: {e}")))?,
    };
    let priorities = match &plan.select {
        Some(sel) => Some(
            crate::select::priorities(sel, &meta.info)
                .map_err(|e| Failure::BadInput(anyhow!(e)))?,
        ),
        None => None,
    };
    if plan.seed_only {
        let payload = match &target {
            Target::Directory(dir) => dir.join(&meta.info.name),
            Target::Raw(path) => path.clone(),
        };
        if !payload.exists() {
            return Err(Failure::BadInput(anyhow!(
                "no data to seed at {}",
                payload.display()
            )));
        }
    }
    let resume_file = match &net.resume_file {
        Some(p) => p.clone(),
        None => {
            default_resume_file(&target, &meta.info_hash.to_hex()).map_err(Failure::BadInput)?
        }
    };
    let total_length = meta.info.total_length;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(async {
        // Flags override the config file and the environment.
        if let Some(slots) = net.unchoke_slots {
            config.choker.slots = slots.0;
        }
        if let Some(limit) = net.upload_limit {
            config.upload_limit = (limit > 0).then_some(limit);
        }
        if let Some(limit) = net.download_limit {
            config.download_limit = (limit > 0).then_some(limit);
        }
        if net.no_pex {
            config.pex.enabled = false;
        }
        if let Some(e) = net.encryption {
            config.encryption = e;
        }
        let capacities = crate::metrics::Capacities::of(&config);
        let stream_cfg = config.stream.clone();
        let config_strategy = config.picker.strategy;
        let metrics_listener = match plan.metrics.take() {
            Some(l) => Some(l),
            None => net.metrics.map(crate::metrics::bind).transpose().map_err(Failure::Runtime)?,
        };
        let mut scrapes = match &metrics_listener {
            Some(l) => Some(crate::metrics::serve_on(l).map_err(Failure::Runtime)?),
            None => None,
        };
        let dht_config = config.clone();
        let session = Session::start(config)
            .context("starting the session")
            .map_err(Failure::Runtime)?;
        let meta = Arc::new(meta);
        let meta_for_urls = meta.clone();
        let params = TorrentParams {
            meta,
            target,
            resume_file,
            peers: net.peers.clone(),
            // `--sequential` wins; otherwise the config's `picker.strategy`.
            strategy: if plan.sequential {
                parse_strategy(true)
            } else {
                config_strategy
            },
            seed: plan.seed,
            upload_limit: None,
            download_limit: None,
            priorities,
            dht: None,
        };
        let mut params = params;
        // Listen first: the torrent announces the port it gets.
        let mut listen_port = 0;
        let mut listen_addr = None;
        let local = match (plan.bound.take(), plan.listen) {
            (Some(bound), _) => Some(session.listen_on(bound).await),
            (None, Some(addr)) => Some(session.listen(addr).await),
            (None, None) => None,
        };
        if let Some(local) = local {
            let local = local.map_err(|e| Failure::Runtime(e.into()))?;
            listen_port = local.port();
            listen_addr = Some(local);
        }
        // BEP 27: a private torrent's peers come from its trackers only.
        let dht = if meta_for_urls.info.private {
            None
        } else {
            let state = dht_state_file(net, &params.target, &meta_for_urls.info_hash.to_hex());
            crate::magnet::Dht::start(
                &dht_config,
                net.no_dht,
                listen_addr,
                state,
                Some(session.tracker().dns()),
            )
            .await
        };
        params.dht = dht.as_ref().map(|d| d.handle.clone());
        let network = crate::metrics::Network {
            listen: listen_addr,
            dht: dht.as_ref().map(|d| d.handle.local_addr()),
            binding: dht_config.tracker.binding.clone(),
        };
        let handle = session
            .add_torrent(params)
            .await
            .context("adding the torrent")
            .map_err(Failure::Runtime)?;
        let stream_urls = match plan.stream {
            Some(addr) => start_stream(addr, &handle, &meta_for_urls, &stream_cfg).await?,
            None => Vec::new(),
        };
        let mut stats = handle.stats();
        let mut seeding_since: Option<Instant> = None;
        // A progress bar only on a terminal; scripts get log lines and the
        // stats JSON instead.
        let bar = std::io::stderr()
            .is_terminal()
            .then(|| progress_bar(total_length));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut signals = Signals::new().map_err(|e| Failure::Runtime(e.into()))?;
        let outcome = loop {
            let mut event = "progress";
            tokio::select! {
                _ = tick.tick() => {}
                changed = stats.changed() => {
                    if changed.is_err() {
                        break Err(Failure::Runtime(anyhow!("the torrent stopped unexpectedly")));
                    }
                    let s = stats.borrow().clone();
                    let newly_seeding = s.state == TorrentState::Seeding && seeding_since.is_none();
                    if !newly_seeding && !matches!(s.state, TorrentState::Complete | TorrentState::Error(_)) {
                        continue;
                    }
                }
                _ = signals.recv() => {
                    tracing::info!("signal received; stopping");
                    break Ok(());
                }
                Some(reply) = recv_scrape(&mut scrapes) => {
                    let s = stats.borrow().clone();
                    let trackers = session.tracker().stats().await.ok();
                    let _ = reply.send(crate::metrics::render(&session, &[s], trackers.as_ref(), &capacities, &network));
                    continue;
                }
            }
            let s = stats.borrow().clone();
            match s.state {
                TorrentState::Complete => event = "complete",
                TorrentState::Error(_) => event = "error",
                TorrentState::Seeding if seeding_since.is_none() => {
                    seeding_since = Some(Instant::now());
                    if !plan.seed_only {
                        event = "complete";
                    }
                }
                // With every piece verified the torrent is still
                // `Downloading` until its first resume checkpoint is synced,
                // then `Seeding`: only a check that found pieces missing
                // means there is nothing to seed.
                TorrentState::Downloading if plan.seed_only && s.done_bytes < s.wanted_bytes => {
                    break Err(Failure::Runtime(anyhow!(
                        "the data is incomplete ({} of {} pieces verified); nothing to seed",
                        s.pieces_done,
                        s.pieces_total
                    )));
                }
                _ => {}
            }
            if let Some(out) = stats_out.as_mut() {
                let mut line = stats_json(&s, event, listen_port);
                line["network"] = network.to_json();
                line["stream_urls"] = json!(stream_urls);
                line["connections"] = json!(session.connection_stats());
                if let Ok(t) = session.tracker().stats().await {
                    add_tracker_stats(&mut line, &t);
                }
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            if let Some(bar) = &bar {
                update_bar(bar, &s);
            }
            match s.state {
                TorrentState::Complete => break Ok(()),
                TorrentState::Error(e) => break Err(Failure::Runtime(anyhow!(e))),
                TorrentState::Seeding => {
                    let by_ratio = plan
                        .seed_ratio
                        .is_some_and(|r| s.bytes_up as f64 >= r * total_length as f64);
                    let by_time = plan
                        .seed_time
                        .zip(seeding_since)
                        .is_some_and(|(limit, since)| since.elapsed() >= limit);
                    if by_ratio || by_time {
                        break Ok(());
                    }
                }
                _ => {}
            }
        };
        if let Some(bar) = &bar {
            bar.finish();
        }
        let connections = session.connection_stats();
        session.shutdown().await;
        if let Some(d) = dht {
            d.stop().await;
        }
        if let (Some(out), Ok(())) = (stats_out.as_mut(), &outcome) {
            // The final numbers after the stop (resume data saved).
            let s = stats.borrow().clone();
            if s.state != TorrentState::Complete {
                let mut line = stats_json(&s, "stopped", listen_port);
                line["stream_urls"] = json!(stream_urls);
                line["connections"] = json!(connections);
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
        outcome
    })
}

/// Binds `--stream`, serves every file of the torrent there, prints each
/// file's URL on stderr and returns the URLs (in file order).
async fn start_stream(
    addr: SocketAddr,
    handle: &actors::torrent::TorrentHandle,
    meta: &Metainfo,
    cfg: &actors::stream::StreamConfig,
) -> Result<Vec<String>, Failure> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--stream: listening on {addr}"))
        .map_err(Failure::Runtime)?;
    let local = listener
        .local_addr()
        .context("--stream: local address")
        .map_err(Failure::Runtime)?;
    let hash = meta.info_hash.to_hex();
    let router = crate::stream::router(crate::stream::OneTorrent {
        info_hash: hash.clone(),
        handle: handle.clone(),
    });
    tokio::spawn(crate::stream::serve(listener, router, cfg.clone()));
    let urls: Vec<String> = meta
        .info
        .files
        .iter()
        .filter(|f| !f.padding)
        .enumerate()
        .map(|(i, f)| {
            let url = format!("http://{local}{}", crate::stream::path_of(&hash, i));
            eprintln!("actorrent: stream of {} at {url}", f.path.join("/"));
            url
        })
        .collect();
    Ok(urls)
}

/// The next metrics scrape, or never when `--metrics` is not given.
pub(crate) async fn recv_scrape(
    scrapes: &mut Option<tokio::sync::mpsc::Receiver<crate::metrics::Scrape>>,
) -> Option<crate::metrics::Scrape> {
    match scrapes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// SIGINT and SIGTERM. The first asks for a clean stop; a second one exits
/// at once.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        let (mut int, mut term) = match Signals::new() {
            Ok(s) => (s.int, s.term),
            Err(_) => return,
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("actorrent: second signal; exiting at once");
            std::process::exit(130);
        });
    }
}

/// The DHT's routing table is kept next to the resume data (the same
/// directory every run of this output uses), so a restart rejoins at once.
fn dht_state_file(net: &NetArgs, target: &Target, hex: &str) -> Option<PathBuf> {
    let resume = match &net.resume_file {
        Some(p) => p.clone(),
        None => default_resume_file(target, hex).ok()?,
    };
    Some(resume.parent()?.join("dht.state"))
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

fn stats_json(s: &TorrentStats, event: &str, listen_port: u16) -> serde_json::Value {
    json!({
        "event": event,
        "listen_port": listen_port,
        "state": s.state.name(),
        // Why an `error` state stopped the torrent (a full disk, a file
        // that cannot be opened...), so a script need not read the log.
        "error": match &s.state {
            TorrentState::Error(e) => Some(e.as_str()),
            _ => None,
        },
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
        "protocol_oddities": s.protocol_oddities,
        "bytes_wasted": s.bytes_wasted,
        "budget_in_use": s.budget_in_use,
        "budget_peak": s.budget_peak,
        "budget_limit_peak": s.budget_limit_peak,
        "wanted_bytes": s.wanted_bytes,
        "done_bytes": s.done_bytes,
        "stream_readers": s.stream_readers,
    })
}

/// Announce counters per tracker URL and the DNS cache's hits and misses.
fn add_tracker_stats(line: &mut serde_json::Value, t: &actors::tracker::TrackerStats) {
    use actors::tracker::BreakerState;
    let trackers: serde_json::Map<String, serde_json::Value> = t
        .trackers
        .iter()
        .map(|(url, u)| {
            let breaker = match u.breaker {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half-open",
            };
            let v = json!({
                "announces_sent": u.announces_sent,
                "announces_failed": u.announces_failed,
                "breaker": breaker,
                "breaker_opened": u.breaker_opened,
                "last_error": u.last_error,
            });
            (url.clone(), v)
        })
        .collect();
    line["trackers"] = serde_json::Value::Object(trackers);
    line["dns_hits"] = json!(t.dns.hits);
    line["dns_misses"] = json!(t.dns.misses);
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>11} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Verified bytes as the bar's position; state, peers and upload as its
/// message.
fn update_bar(bar: &indicatif::ProgressBar, s: &TorrentStats) {
    bar.set_length(s.wanted_bytes);
    bar.set_position(s.done_bytes);
    bar.set_message(format!(
        "{} {}p up {}",
        s.state.name(),
        s.peers,
        indicatif::HumanBytes(s.bytes_up)
    ));
}

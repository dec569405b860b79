//! `actorrent daemon`: one process, one session, many torrents, driven
//! through the Transmission RPC and kept across restarts in a state
//! directory.
//!
//! - [`state`]: the state directory (metainfo, settings, resume data).
//! - [`registry`]: the daemon actor, which owns the session and what the
//!   daemon knows of each torrent.
//! - [`methods`]: the RPC methods, JSON in and out.
//! - [`rpc`]: the HTTP server (guards, body limit, web UI files).
//! - [`remove`]: deleting a torrent's own files.
//! - [`relocate`]: moving them.
//! - [`watch`]: the watch directory.

pub mod magnet;
pub mod methods;
pub mod registry;
pub mod relocate;
pub mod remove;
pub mod rpc;
pub mod state;
pub mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use actors::config::ClientConfig;
use actors::session::Session;
use anyhow::{Context as _, anyhow};
use tokio_util::sync::CancellationToken;

use crate::Failure;

/// Where Debian's `transmission-common` puts the Transmission web UI
/// (3.x: `web`, 4.x: `public_html`).
const WEB_UI_DIRS: [&str; 2] = [
    "/usr/share/transmission/public_html",
    "/usr/share/transmission/web",
];

/// `actorrent daemon`.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// State directory: torrents, their settings and resume data (default:
    /// `$XDG_STATE_HOME/actorrent`, or `~/.local/state/actorrent`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the Transmission RPC listens (port 0: any free port, printed
    /// on stderr).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9091")]
    pub rpc: SocketAddr,
    /// Where new torrents' data goes (default: `~/Downloads`).
    #[arg(long, value_name = "DIR")]
    pub download_dir: Option<PathBuf>,
    /// Accept peer connections on this address.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:51413")]
    pub listen: SocketAddr,
    /// Add every `.torrent` dropped here (renamed to `.added`, or
    /// `.invalid` when it cannot be added).
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
    /// Require HTTP Basic auth on the RPC, as `USER:PASSWORD`.
    #[arg(long, value_name = "USER:PASSWORD", conflicts_with = "rpc_auth_file")]
    pub rpc_auth: Option<String>,
    /// Like `--rpc-auth`, the `USER:PASSWORD` read from the first line of
    /// this file (keeps it out of `ps`).
    #[arg(long, value_name = "PATH")]
    pub rpc_auth_file: Option<PathBuf>,
    /// A host name the RPC answers to besides IP addresses and localhost
    /// (repeatable): the defence against DNS rebinding.
    #[arg(long = "rpc-host", value_name = "NAME")]
    pub rpc_hosts: Vec<String>,
    /// Serve this web UI at `/transmission/web/` (default: Debian's
    /// Transmission web UI when installed).
    #[arg(long, value_name = "DIR")]
    pub web_ui: Option<PathBuf>,
}

fn default_state_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| anyhow!("no HOME or XDG_STATE_HOME; give --state-dir"))?;
    Ok(base.join("actorrent"))
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p);
    }
    Ok(std::env::current_dir()
        .context("finding the current directory")?
        .join(p))
}

pub fn run(
    args: &DaemonArgs,
    config: ClientConfig,
    config_path: Option<&Path>,
) -> Result<(), Failure> {
    let bad = Failure::BadInput;
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir().map_err(bad)?,
    };
    let state_dir = absolute(state_dir).map_err(bad)?;
    let download_dir = match &args.download_dir {
        Some(d) => absolute(d.clone()).map_err(bad)?,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join("Downloads"))
            .unwrap_or_else(|| state_dir.join("downloads")),
    };
    let auth = match (&args.rpc_auth, &args.rpc_auth_file) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(p)) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .map_err(bad)?;
            Some(text.lines().next().unwrap_or("").to_owned())
        }
        (None, None) => None,
    };
    if let Some(a) = &auth
        && !a.contains(':')
    {
        return Err(bad(anyhow!("--rpc-auth: give USER:PASSWORD")));
    }
    let web = args.web_ui.clone().or_else(|| {
        WEB_UI_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("index.html").is_file())
    });
    let state = state::StateDir::open(&state_dir).map_err(Failure::Runtime)?;
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(async {
        // Handlers first: a SIGTERM from now on is a clean stop.
        let signals = Signals::new().map_err(|e| Failure::Runtime(e.into()))?;
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Failure::Runtime(e.into()))?;
        let strategy = config.picker.strategy;
        let metadata = config.metadata;
        let capacities = crate::metrics::Capacities::of(&config);
        let binding = actors::net::Binding::from_config(&config)
            .map_err(|e| Failure::BadInput(anyhow::anyhow!(e)))?;
        let http = methods::url_client(&binding)
            .context("building the HTTP client for .torrent URLs")
            .map_err(Failure::Runtime)?;
        let stream_cfg = config.stream.clone();
        let pex = config.pex.enabled.then_some(config.pex);
        let mut dht_config = config.clone();
        // `bind_interface` binds the DHT socket too, as for `download`.
        dht_config.dht.bind_interface = binding.interface.clone();
        let config_rates = (config.upload_limit, config.download_limit);
        let config_peers = (config.max_connections, config.max_peers_per_torrent);
        let reloadable = Reloadable {
            path: config_path.map(Path::to_path_buf),
            running: config.clone(),
        };
        let session = Session::start(config)
            .context("starting the session")
            .map_err(Failure::Runtime)?;
        let peers = session
            .listen(args.listen)
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
        eprintln!("actorrent: peers on {peers}");
        // One DHT node for every public torrent and magnet of the process,
        // on the peer port's UDP twin; its table is kept in the state dir.
        let dht = crate::magnet::Dht::start(
            &dht_config,
            false,
            Some(peers),
            Some(state_dir.join("dht.state")),
            Some(session.tracker().dns()),
        )
        .await;
        let rpc_listener = tokio::net::TcpListener::bind(args.rpc)
            .await
            .with_context(|| format!("--rpc: listening on {}", args.rpc))
            .map_err(Failure::Runtime)?;
        let rpc_addr = rpc_listener
            .local_addr()
            .context("--rpc: local address")
            .map_err(Failure::Runtime)?;
        let stop = CancellationToken::new();
        let (daemon, join) = registry::spawn(
            session,
            state,
            registry::Options {
                default_download_dir: download_dir,
                strategy,
                listen_port: peers.port(),
                metadata,
                capacities,
                network: crate::metrics::Network {
                    listen: Some(peers),
                    dht: dht.as_ref().map(|d| d.handle.local_addr()),
                    binding,
                },
                dht: dht.as_ref().map(|d| d.handle.clone()),
                pex,
                config_rates,
                config_peers,
            },
            stop.clone(),
        );
        let session_id: String = {
            use rand::Rng;
            rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(48)
                .map(char::from)
                .collect()
        };
        let router = rpc::router(
            methods::Context {
                daemon: daemon.clone(),
                session_id,
                stop: stop.clone(),
                http,
            },
            rpc::Guard {
                auth: auth.as_deref().map(rpc::auth_digest),
                hosts: args.rpc_hosts.clone(),
                web: web.clone(),
                strikes: rpc::Strikes::default(),
            },
        );
        let server = tokio::spawn(crate::stream::serve(rpc_listener, router, stream_cfg));
        eprintln!("actorrent: RPC at http://{rpc_addr}/transmission/rpc");
        if let Some(w) = &web {
            eprintln!(
                "actorrent: web UI at http://{rpc_addr}/transmission/web/ from {}",
                w.display()
            );
        }
        let watcher = match &args.watch {
            Some(dir) => Some(tokio::spawn(watch::run(
                absolute(dir.clone()).map_err(bad)?,
                daemon.clone(),
                stop.clone(),
            ))),
            None => None,
        };
        let hup = tokio::spawn(reload_on_hup(daemon.clone(), hup, stop.clone(), reloadable));
        drop(daemon);
        tokio::select! {
            _ = signals.recv() => {}
            _ = stop.cancelled() => tracing::info!("session-close received"),
        }
        tracing::info!("stopping: saving every torrent");
        stop.cancel();
        server.abort();
        hup.abort();
        if let Some(w) = watcher {
            let _ = w.await;
        }
        registry::finish(join).await;
        if let Some(d) = dht {
            d.stop().await;
        }
        eprintln!("actorrent: daemon stopped");
        Ok(())
    })
}

/// Thousands of torrents keep files open: the soft descriptor limit goes
/// up to the hard one, as servers do (systemd's default soft limit is
/// 1024).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                tracing::info!(
                    from = lim.rlim_cur,
                    to = lim.rlim_max,
                    "raised the open file limit"
                );
            }
        }
    }
}

/// The config file the daemon started from, and what it said then.
struct Reloadable {
    path: Option<PathBuf>,
    running: ClientConfig,
}

/// The keys a re-read config file can change in a running daemon: the
/// defaults under the session settings' own limits.
const RUNTIME_KEYS: &[&str] = &[
    "upload_limit",
    "download_limit",
    "max_connections",
    "max_peers_per_torrent",
];

/// Dotted keys whose values differ between two configs.
fn changed_keys(old: &ClientConfig, new: &ClientConfig) -> Vec<String> {
    fn flat(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flat(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let table = |c: &ClientConfig| {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(v) = toml::Value::try_from(c) {
            flat("", &v, &mut out);
        }
        out
    };
    let (a, b) = (table(old), table(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// SIGHUP re-reads the config file (`--config`), applies what can change
/// at run time and names what needs a restart; then the session settings
/// (`settings.json` in the state directory), as transmission-daemon does.
async fn reload_on_hup(
    daemon: registry::DaemonHandle,
    mut hup: tokio::signal::unix::Signal,
    stop: CancellationToken,
    mut config: Reloadable,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        if let Some(path) = config.path.clone() {
            match crate::config::load(Some(&path)) {
                Err(Failure::BadInput(e) | Failure::Runtime(e)) => {
                    eprintln!("actorrent: SIGHUP: {} not reloaded: {e:#}", path.display());
                }
                Ok(new) => {
                    let changed = changed_keys(&config.running, &new);
                    let (now, later): (Vec<&String>, Vec<&String>) = changed
                        .iter()
                        .partition(|k| RUNTIME_KEYS.contains(&k.as_str()));
                    let applied = daemon
                        .set_config_limits(
                            (new.upload_limit, new.download_limit),
                            (new.max_connections, new.max_peers_per_torrent),
                        )
                        .await;
                    match applied {
                        Ok(()) => eprintln!(
                            "actorrent: SIGHUP: {} reloaded; applied: {}",
                            path.display(),
                            if now.is_empty() {
                                "nothing changed".into()
                            } else {
                                join(&now)
                            }
                        ),
                        Err(e) => eprintln!("actorrent: SIGHUP: limits not applied: {e}"),
                    }
                    if !later.is_empty() {
                        eprintln!(
                            "actorrent: SIGHUP: changed in {} but only read at start (restart to apply): {}",
                            path.display(),
                            join(&later)
                        );
                    }
                    // The next SIGHUP compares with what is in effect: the
                    // start-only keys keep their old values until a restart.
                    config.running.upload_limit = new.upload_limit;
                    config.running.download_limit = new.download_limit;
                    config.running.max_connections = new.max_connections;
                    config.running.max_peers_per_torrent = new.max_peers_per_torrent;
                }
            }
        }
        match daemon.reload().await {
            Ok(()) => eprintln!("actorrent: SIGHUP: session settings reloaded"),
            Err(e) => eprintln!("actorrent: SIGHUP: session settings not reloaded: {e}"),
        }
    }
}

fn join(keys: &[&String]) -> String {
    keys.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// SIGINT and SIGTERM; a second one exits at once.
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

    async fn recv(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
            }
            eprintln!("actorrent: second signal; exiting at once");
            std::process::exit(130);
        });
    }
}

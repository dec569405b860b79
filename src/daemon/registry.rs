//! The daemon actor: owns the session and, per torrent, what the daemon
//! knows beyond the torrent actor (its RPC id, its settings, whether the
//! user stopped it). The RPC and the watch directory talk to it through
//! [`DaemonHandle`], a bounded mailbox with oneshot replies; it awaits only
//! the session (downstream), never its callers.
//!
//! Stopping a torrent ends its actor (resume data saved, `stopped`
//! announced); starting it again spawns a fresh one that trusts the resume
//! data. Changes the torrent actor cannot take while running (its own rate
//! limits) restart it the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actors::picker::{Priority, Strategy};
use actors::session::Session;
use actors::torrent::{Target, TorrentHandle, TorrentParams, TorrentState, TorrentStats};
use protocol::metainfo::Metainfo;
use protocol::trpc::{IdRef, Ids};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::magnet::{self as magnet_phase, FetchCtx};
use super::state::{SessionSettings, StateDir, Stored, TorrentSettings};

/// Requests waiting for the daemon actor. Each RPC connection has at most
/// one request in flight, and connections are capped, so this only
/// absorbs a burst.
pub const DAEMON_MAILBOX: usize = 64;

/// A torrent counts as recently active for this long after it moved data.
const RECENT: Duration = Duration::from_secs(60);

/// What a torrent-add resulted in.
#[derive(Debug, Clone)]
pub struct Added {
    pub id: i64,
    pub name: String,
    pub hash: String,
    /// It was there already (nothing changed).
    pub duplicate: bool,
}

/// Everything the RPC shows of one torrent, copied out of the actor.
#[derive(Clone)]
pub struct View {
    pub id: i64,
    pub hash: String,
    pub meta: Arc<Metainfo>,
    pub settings: TorrentSettings,
    pub stats: TorrentStats,
    /// A torrent actor runs for it (false: stopped by the user).
    pub running: bool,
    /// Its actor, to ask for per-file progress.
    pub handle: Option<TorrentHandle>,
    /// Last time it moved data, seconds since the epoch (0: never).
    pub activity_date: i64,
    /// A magnet link's metadata phase: the fraction fetched.
    pub metadata: Option<f64>,
}

/// Session-wide numbers for `session-get` and `session-stats`.
#[derive(Clone, Debug)]
pub struct SessionView {
    pub download_dir: PathBuf,
    pub config_dir: PathBuf,
    pub peer_port: u16,
    pub torrents: usize,
    pub active: usize,
    pub paused: usize,
    pub rate_down: u64,
    pub rate_up: u64,
    pub uploaded: u64,
    pub downloaded: u64,
    pub seconds_active: u64,
    pub start_added_torrents: bool,
    /// Whether a DHT node runs (`dht-enabled`).
    pub dht_enabled: bool,
    /// Whether peer exchange is on (`pex-enabled`).
    pub pex_enabled: bool,
    /// What `session-set` changed.
    pub settings: SessionSettings,
    /// Connections allowed, process-wide and per torrent.
    pub peer_limits: (usize, usize),
}

/// What `torrent-set` changes.
#[derive(Clone, Debug, Default)]
pub struct Change {
    /// New priority per file index (Skip: unwanted); files not named keep
    /// theirs, and a file made wanted again gets `Normal` unless also named
    /// with a priority.
    pub wanted: Vec<(usize, bool)>,
    pub priority: Vec<(usize, Priority)>,
    pub upload_limit: Option<Option<u64>>,
    pub download_limit: Option<Option<u64>>,
    pub labels: Option<Vec<String>>,
    pub seed_ratio_limit: Option<f64>,
    pub seed_ratio_mode: Option<i64>,
    pub seed_idle_limit: Option<i64>,
    pub seed_idle_mode: Option<i64>,
    /// A new download directory whose data is already in place
    /// (`torrent-set-location` with `move: false`).
    pub location: Option<PathBuf>,
}

/// What to do to a set of torrents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Verify,
    Remove { delete_data: bool },
}

enum Cmd {
    Add {
        bytes: Vec<u8>,
        meta: Box<Metainfo>,
        download_dir: Option<PathBuf>,
        paused: Option<bool>,
        labels: Vec<String>,
        reply: oneshot::Sender<Result<Added, String>>,
    },
    AddMagnet {
        uri: String,
        magnet: Box<protocol::magnet::Magnet>,
        download_dir: Option<PathBuf>,
        paused: Option<bool>,
        labels: Vec<String>,
        reply: oneshot::Sender<Result<Added, String>>,
    },
    Get {
        ids: Ids,
        reply: oneshot::Sender<Vec<View>>,
    },
    Act {
        ids: Ids,
        action: Action,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Set {
        ids: Ids,
        change: Box<Change>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Session {
        reply: oneshot::Sender<SessionView>,
    },
    Metrics {
        reply: oneshot::Sender<String>,
    },
    SessionSet {
        settings: SessionSettings,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Reload {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// New defaults under the session settings, from a re-read `--config`.
    ConfigLimits {
        rates: (Option<u64>, Option<u64>),
        peers: (usize, usize),
        reply: oneshot::Sender<()>,
    },
    Relocate {
        ids: Ids,
        dir: PathBuf,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// A move of a torrent's data ended (from the task doing it).
struct Moved {
    id: i64,
    dir: PathBuf,
    result: Result<usize, String>,
}

/// Moves reporting back at once; a mover waits for room.
const MOVED_CHANNEL: usize = 16;

/// The way to the daemon actor.
#[derive(Clone)]
pub struct DaemonHandle {
    tx: mpsc::Sender<Cmd>,
}

const GONE: &str = "the daemon is shutting down";

impl DaemonHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| GONE.to_owned())?;
        rx.await.map_err(|_| GONE.to_owned())
    }

    /// Adds a torrent (its bytes already parsed into `meta`).
    pub async fn add(
        &self,
        bytes: Vec<u8>,
        meta: Metainfo,
        download_dir: Option<PathBuf>,
        paused: Option<bool>,
        labels: Vec<String>,
    ) -> Result<Added, String> {
        self.ask(|reply| Cmd::Add {
            bytes,
            meta: Box::new(meta),
            download_dir,
            paused,
            labels,
            reply,
        })
        .await?
    }

    /// Adds a magnet link: its metadata is fetched, then it downloads.
    pub async fn add_magnet(
        &self,
        uri: String,
        magnet: protocol::magnet::Magnet,
        download_dir: Option<PathBuf>,
        paused: Option<bool>,
        labels: Vec<String>,
    ) -> Result<Added, String> {
        self.ask(|reply| Cmd::AddMagnet {
            uri,
            magnet: Box::new(magnet),
            download_dir,
            paused,
            labels,
            reply,
        })
        .await?
    }

    /// The torrents `ids` names, in id order.
    pub async fn get(&self, ids: Ids) -> Result<Vec<View>, String> {
        self.ask(|reply| Cmd::Get { ids, reply }).await
    }

    /// Starts, stops, verifies or removes torrents.
    pub async fn act(&self, ids: Ids, action: Action) -> Result<(), String> {
        self.ask(|reply| Cmd::Act { ids, action, reply }).await?
    }

    /// Changes torrents' settings.
    pub async fn set(&self, ids: Ids, change: Change) -> Result<(), String> {
        self.ask(|reply| Cmd::Set {
            ids,
            change: Box::new(change),
            reply,
        })
        .await?
    }

    /// Session-wide numbers.
    pub async fn session(&self) -> Result<SessionView, String> {
        self.ask(|reply| Cmd::Session { reply }).await
    }

    /// The Prometheus metrics of the session and every running torrent.
    pub async fn metrics(&self) -> Result<String, String> {
        self.ask(|reply| Cmd::Metrics { reply }).await
    }

    /// Moves torrents' data to `dir` and continues them there, without a
    /// recheck; returns once every move has ended.
    pub async fn relocate(&self, ids: Ids, dir: PathBuf) -> Result<(), String> {
        self.ask(|reply| Cmd::Relocate { ids, dir, reply }).await?
    }

    /// Reads the session settings file again and applies it (SIGHUP).
    pub async fn reload(&self) -> Result<(), String> {
        self.ask(|reply| Cmd::Reload { reply }).await?
    }

    /// Replaces the config file's rate and connection limits, which apply
    /// where the session settings set none (SIGHUP after `--config`
    /// changed).
    pub async fn set_config_limits(
        &self,
        rates: (Option<u64>, Option<u64>),
        peers: (usize, usize),
    ) -> Result<(), String> {
        self.ask(|reply| Cmd::ConfigLimits {
            rates,
            peers,
            reply,
        })
        .await
    }

    /// Changes session settings (fields left `None` keep theirs).
    pub async fn session_set(&self, settings: SessionSettings) -> Result<(), String> {
        self.ask(|reply| Cmd::SessionSet { settings, reply })
            .await?
    }
}

/// What `add_entry` adds: a whole torrent or a magnet link.
enum NewEntry {
    Torrent {
        bytes: Vec<u8>,
        meta: Metainfo,
    },
    Magnet {
        uri: String,
        link: protocol::magnet::Magnet,
    },
}

struct Entry {
    meta: Arc<Metainfo>,
    hash: String,
    settings: TorrentSettings,
    handle: Option<TorrentHandle>,
    /// The numbers of the last run, shown while stopped.
    last: TorrentStats,
    last_active: Option<SystemTime>,
    /// When its current run started (idle time counts from here at most).
    run_started: Option<SystemTime>,
    /// Its data is being moved; whether to start it again after.
    moving: Option<bool>,
    /// Settings changed that only need saving eventually (the done date):
    /// written in batches by the tick.
    dirty: bool,
    /// A magnet link whose metadata is not known yet (`meta` is then a
    /// placeholder).
    magnet: Option<MagnetState>,
}

struct MagnetState {
    link: protocol::magnet::Magnet,
    /// Set while its metadata phase runs.
    cancel: Option<tokio_util::sync::CancellationToken>,
    progress: Option<tokio::sync::watch::Receiver<actors::magnet::MetadataProgress>>,
    error: Option<String>,
}

/// How the daemon starts its torrents.
pub struct Options {
    pub default_download_dir: PathBuf,
    pub strategy: Strategy,
    pub listen_port: u16,
    pub metadata: actors::magnet::MetadataConfig,
    pub capacities: crate::metrics::Capacities,
    pub network: crate::metrics::Network,
    /// The process's DHT node (one per process, as for `download`), for
    /// public torrents and magnets; `None` when `[dht] enabled` is off.
    pub dht: Option<actors::dht::DhtHandle>,
    /// `[pex]` when peer exchange is on: public torrents and the magnets'
    /// metadata phase use it (`pex-enabled`).
    pub pex: Option<actors::pex::PexConfig>,
    /// The configuration's (upload, download) limits, bytes per second,
    /// which hold until `session-set` sets the session's.
    pub config_rates: (Option<u64>, Option<u64>),
    /// The configuration's (process-wide, per torrent) connection limits.
    pub config_peers: (usize, usize),
}

struct Daemon {
    session: Session,
    state: StateDir,
    opts: Options,
    session_settings: SessionSettings,
    torrents: BTreeMap<i64, Entry>,
    next_id: i64,
    started: Instant,
    fetch: FetchCtx,
    moved_tx: mpsc::Sender<Moved>,
    /// Ticks so far (dirty settings are flushed every few).
    ticks: u64,
}

/// Dirty settings are written every this many ticks (seconds).
const DIRTY_FLUSH_TICKS: u64 = 10;

/// Runs blocking file work (fsyncs) on the actor's task without stalling
/// the other tasks of its worker thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Starts the daemon actor with the torrents kept in `state`. Returns its
/// handle and its task, which ends when `stop` fires (or every handle is
/// gone) with every torrent's settings saved, and yields the session for
/// [`finish`] to stop.
pub fn spawn(
    session: Session,
    state: StateDir,
    opts: Options,
    stop: tokio_util::sync::CancellationToken,
) -> (DaemonHandle, tokio::task::JoinHandle<Session>) {
    let (tx, rx) = mpsc::channel(DAEMON_MAILBOX);
    let session_settings = state.load_session().unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "session settings unreadable; using defaults");
        SessionSettings::default()
    });
    let (done_tx, done_rx) = mpsc::channel(magnet_phase::DONE_CHANNEL);
    let fetch = FetchCtx {
        tracker: session.tracker().clone(),
        peer_id: session.peer_id(),
        port: opts.listen_port,
        config: opts.metadata,
        dialer: session.dialer(),
        done: done_tx,
        dht: opts.dht.clone(),
        pex: opts.pex,
    };
    let (moved_tx, moved_rx) = mpsc::channel(MOVED_CHANNEL);
    let mut d = Daemon {
        moved_tx,
        ticks: 0,
        fetch,
        session,
        state,
        opts,
        session_settings,
        torrents: BTreeMap::new(),
        next_id: 1,
        started: Instant::now(),
    };
    let join = tokio::spawn(async move {
        d.restore().await;
        d.run(rx, done_rx, moved_rx, stop).await;
        d.session
    });
    (DaemonHandle { tx }, join)
}

/// Transmission's upload ratio: uploaded over downloaded, or over the
/// verified bytes when nothing was downloaded (a torrent seeded from local
/// data); -1 when both are 0.
pub fn ratio(uploaded: u64, downloaded: u64, have_valid: u64) -> f64 {
    let denom = if downloaded > 0 {
        downloaded
    } else {
        have_valid
    };
    if denom == 0 {
        -1.0
    } else {
        uploaded as f64 / denom as f64
    }
}

/// Bytes in verified pieces.
pub fn have_valid(meta: &Metainfo, pieces_done: u32) -> u64 {
    (u64::from(pieces_done) * u64::from(meta.info.piece_length)).min(meta.info.total_length)
}

/// The seed ratio a torrent stops at, by its mode (Transmission's
/// `seedRatioMode`: 0 the session's, 1 its own, 2 none).
fn ratio_limit(t: &TorrentSettings, session: &SessionSettings) -> Option<f64> {
    match t.seed_ratio_mode {
        1 => Some(t.seed_ratio_limit),
        2 => None,
        _ => session.ratio_limit(),
    }
}

/// The idle minutes a seeding torrent stops after, likewise.
fn idle_limit(t: &TorrentSettings, session: &SessionSettings) -> Option<i64> {
    match t.seed_idle_mode {
        1 => Some(t.seed_idle_limit),
        2 => None,
        _ => session.idle_limit(),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Stats for a torrent that has not run in this process: the verified
/// pieces its resume data records (not rechecked: a guide for the listing
/// until it starts).
fn stats_at_rest(
    meta: &Metainfo,
    resume: &std::path::Path,
    settings: &TorrentSettings,
) -> TorrentStats {
    let info = &meta.info;
    let have = storage::resume::load(resume)
        .ok()
        .flatten()
        .filter(|d| d.info_hash == meta.info_hash.0 && d.have.len() == info.piece_count() as usize)
        .map(|d| d.have)
        .unwrap_or_else(|| vec![false; info.piece_count() as usize]);
    let user: Vec<&protocol::metainfo::FileEntry> =
        info.files.iter().filter(|f| !f.padding).collect();
    let wanted = |i: usize| {
        settings
            .priorities
            .as_ref()
            .and_then(|p| p.get(i))
            .is_none_or(|p| *p != Priority::Skip)
    };
    let pl = u64::from(info.piece_length);
    let (mut wanted_bytes, mut done_bytes) = (0, 0);
    for (i, f) in user.iter().enumerate() {
        if !wanted(i) {
            continue;
        }
        wanted_bytes += f.length;
        let (start, end) = (f.offset, f.offset + f.length);
        for p in start / pl..end.div_ceil(pl) {
            if have.get(p as usize) == Some(&true) {
                done_bytes += ((p + 1) * pl).min(end) - (p * pl).max(start);
            }
        }
    }
    TorrentStats {
        state: TorrentState::Downloading,
        bytes_down: 0,
        bytes_up: 0,
        rate_down: 0,
        rate_up: 0,
        peers: 0,
        pieces_done: have.iter().filter(|h| **h).count() as u32,
        pieces_total: info.piece_count(),
        hash_failures: 0,
        banned_peers: 0,
        protocol_errors: 0,
        protocol_oddities: 0,
        bytes_wasted: 0,
        budget_in_use: 0,
        budget_peak: 0,
        budget_limit_peak: 0,
        wanted_bytes,
        done_bytes,
        stream_readers: 0,
        mailbox_depth: 0,
        peer_mailbox_depth: 0,
    }
}

impl Daemon {
    async fn restore(&mut self) {
        self.apply_session();
        let (stored, skipped) = self.state.load_all();
        for s in &skipped {
            // Named so the operator can fix or remove it; the rest loads.
            warn!(problem = %s, "skipping a torrent in the state directory");
            eprintln!("actorrent: skipping a torrent in the state directory: {s}");
        }
        let mut used = std::collections::HashSet::new();
        for Stored {
            meta,
            magnet,
            mut settings,
        } in stored
        {
            if settings.id <= 0 || !used.insert(settings.id) {
                settings.id = 0;
            }
            if settings.download_dir.as_os_str().is_empty() {
                settings.download_dir = self.download_dir();
            }
            match (meta, magnet) {
                (Some(meta), _) => {
                    let hash = meta.info_hash.to_hex();
                    self.insert(meta, hash, settings, None).await;
                }
                (None, Some(link)) => {
                    let hash = link.info_hash.to_hex();
                    let state = MagnetState {
                        cancel: None,
                        progress: None,
                        error: None,
                        link: link.clone(),
                    };
                    self.insert(
                        magnet_phase::placeholder(&link),
                        hash,
                        settings,
                        Some(state),
                    )
                    .await;
                }
                _ => {}
            }
        }
        info!(
            torrents = self.torrents.len(),
            skipped = skipped.len(),
            "state restored"
        );
    }

    fn download_dir(&self) -> PathBuf {
        self.session_settings
            .download_dir
            .clone()
            .unwrap_or_else(|| self.opts.default_download_dir.clone())
    }

    /// Registers a torrent (giving it an id if it has none) and starts it
    /// unless paused. `save`: write its settings now.
    async fn insert(
        &mut self,
        meta: Arc<Metainfo>,
        hash: String,
        mut settings: TorrentSettings,
        magnet: Option<MagnetState>,
    ) -> i64 {
        if settings.id <= 0 {
            settings.id = self
                .next_id
                .max(self.torrents.keys().last().map_or(1, |k| k + 1));
        }
        self.next_id = self.next_id.max(settings.id + 1);
        let id = settings.id;

        let last = stats_at_rest(&meta, &self.state.resume_path(&hash), &settings);
        let paused = settings.paused;
        self.torrents.insert(
            id,
            Entry {
                meta,
                hash,
                settings,
                handle: None,
                last,
                last_active: None,
                run_started: None,
                moving: None,
                dirty: false,
                magnet,
            },
        );
        if !paused {
            self.start(id, Vec::new()).await;
        }
        id
    }

    async fn start(&mut self, id: i64, peers: Vec<std::net::SocketAddr>) {
        let Some(e) = self.torrents.get_mut(&id) else {
            return;
        };
        if e.moving.is_some() {
            // Started once its data has moved.
            return;
        }
        if let Some(m) = &mut e.magnet {
            if m.cancel.is_none() {
                let cancel = tokio_util::sync::CancellationToken::new();
                m.progress = Some(magnet_phase::spawn(
                    id,
                    m.link.clone(),
                    &self.fetch,
                    cancel.clone(),
                ));
                m.cancel = Some(cancel);
                m.error = None;
            }
            return;
        }
        if e.handle
            .as_ref()
            .is_some_and(|h| !matches!(h.stats().borrow().state, TorrentState::Error(_)))
        {
            return;
        }
        let params = TorrentParams {
            meta: e.meta.clone(),
            target: Target::Directory(e.settings.download_dir.clone()),
            resume_file: self.state.resume_path(&e.hash),
            peers,
            strategy: self.opts.strategy,
            // A daemon's torrents serve once complete, until stopped.
            seed: true,
            upload_limit: e.settings.upload_limit,
            download_limit: e.settings.download_limit,
            priorities: e.settings.priorities.clone(),
            // BEP 27: a private torrent's peers come from its trackers only.
            dht: self.opts.dht.clone().filter(|_| !e.meta.info.private),
        };
        match self.session.add_torrent(params).await {
            Ok(h) => {
                e.handle = Some(h);
                e.run_started = Some(SystemTime::now());
            }
            Err(err) => {
                e.last.state = TorrentState::Error(err.to_string());
            }
        }
    }

    /// Stops a torrent's actor and keeps its last numbers; its run's
    /// transfer counts go into the totals kept in the settings.
    async fn stop(&mut self, id: i64) {
        let Some(e) = self.torrents.get_mut(&id) else {
            return;
        };
        if let Some(m) = &mut e.magnet
            && let Some(c) = m.cancel.take()
        {
            c.cancel();
        }
        let Some(h) = e.handle.take() else {
            return;
        };
        e.run_started = None;
        let _ = self.session.stop_torrent(e.meta.info_hash.0).await;
        let s = h.stats().borrow().clone();
        e.settings.uploaded_ever += s.bytes_up;
        e.settings.downloaded_ever += s.bytes_down;
        e.last = TorrentStats {
            bytes_up: 0,
            bytes_down: 0,
            rate_down: 0,
            rate_up: 0,
            peers: 0,
            ..s
        };
    }

    fn save(&mut self, id: i64) {
        if let Some(e) = self.torrents.get_mut(&id) {
            e.dirty = false;
            let (state, hash, settings) = (&self.state, &e.hash, &e.settings);
            if let Err(err) = blocking(|| state.save_settings(hash, settings)) {
                warn!(error = %format!("{err:#}"), "saving torrent settings");
            }
        }
    }

    /// Writes every torrent whose settings changed without being saved,
    /// with one directory sync for all.
    fn flush_dirty(&mut self) {
        let dirty: Vec<(&str, &TorrentSettings)> = self
            .torrents
            .values()
            .filter(|e| e.dirty)
            .map(|e| (e.hash.as_str(), &e.settings))
            .collect();
        if dirty.is_empty() {
            return;
        }
        let state = &self.state;
        for err in blocking(|| state.save_settings_many(&dirty)) {
            warn!(error = %format!("{err:#}"), "saving torrent settings");
        }
        for e in self.torrents.values_mut() {
            e.dirty = false;
        }
    }

    fn resolve(&self, ids: &Ids) -> Vec<i64> {
        match ids {
            Ids::All => self.torrents.keys().copied().collect(),
            Ids::RecentlyActive => {
                let now = SystemTime::now();
                self.torrents
                    .iter()
                    .filter(|(_, e)| {
                        e.last_active
                            .and_then(|t| now.duration_since(t).ok())
                            .is_some_and(|d| d < RECENT)
                    })
                    .map(|(id, _)| *id)
                    .collect()
            }
            Ids::List(list) => {
                let mut out: Vec<i64> = list
                    .iter()
                    .filter_map(|r| match r {
                        IdRef::Id(id) => self.torrents.contains_key(id).then_some(*id),
                        IdRef::Hash(h) => self
                            .torrents
                            .iter()
                            .find(|(_, e)| &e.meta.info_hash.0 == h)
                            .map(|(id, _)| *id),
                    })
                    .collect();
                out.sort_unstable();
                out.dedup();
                out
            }
        }
    }

    fn view(&self, id: i64, e: &Entry) -> View {
        let (stats, running) = match &e.handle {
            Some(h) => {
                let mut s = h.stats().borrow().clone();
                s.bytes_up += e.settings.uploaded_ever;
                s.bytes_down += e.settings.downloaded_ever;
                (s, true)
            }
            None => {
                let mut s = e.last.clone();
                s.bytes_up = e.settings.uploaded_ever;
                s.bytes_down = e.settings.downloaded_ever;
                let fetching = e.magnet.as_ref().is_some_and(|m| m.cancel.is_some());
                if let Some(err) = e.magnet.as_ref().and_then(|m| m.error.clone()) {
                    s.state = TorrentState::Error(err);
                }
                (s, fetching)
            }
        };
        let metadata = e.magnet.as_ref().map(|m| {
            m.progress.as_ref().map_or(0.0, |p| {
                let p = p.borrow();
                if p.pieces_total == 0 {
                    0.0
                } else {
                    f64::from(p.pieces_done) / f64::from(p.pieces_total)
                }
            })
        });
        View {
            id,
            hash: e.hash.clone(),
            meta: e.meta.clone(),
            settings: e.settings.clone(),
            stats,
            running,
            handle: e.handle.clone(),
            activity_date: e
                .last_active
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64),
            metadata,
        }
    }

    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut magnets: mpsc::Receiver<magnet_phase::Done>,
        mut moved: mpsc::Receiver<Moved>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(c) => self.on_cmd(c).await,
                    None => break,
                },
                _ = tick.tick() => self.on_tick().await,
                Some(done) = magnets.recv() => self.metadata_done(done).await,
                Some(m) = moved.recv() => self.moved(m).await,
            }
        }
        for e in self.torrents.values_mut() {
            if let Some(c) = e.magnet.as_mut().and_then(|m| m.cancel.take()) {
                c.cancel();
            }
        }
        self.shutdown().await;
    }

    /// Notes activity and first completion of every running torrent, and
    /// stops those that reached their seed ratio or idle limit.
    async fn on_tick(&mut self) {
        let now = SystemTime::now();
        let mut reached = Vec::new();
        let session = &self.session_settings;
        for (id, e) in &mut self.torrents {
            let Some(h) = &e.handle else { continue };
            let s = h.stats().borrow().clone();
            if s.rate_down > 0 || s.rate_up > 0 {
                e.last_active = Some(now);
            }
            let seeding = s.wanted_bytes > 0
                && s.done_bytes >= s.wanted_bytes
                && matches!(s.state, TorrentState::Seeding | TorrentState::Complete);
            if !seeding {
                continue;
            }
            if e.settings.done_date == 0 {
                // Kept in the next batch: a crash before it loses only
                // the date.
                e.settings.done_date = now_secs();
                e.dirty = true;
            }
            let r = ratio(
                e.settings.uploaded_ever + s.bytes_up,
                e.settings.downloaded_ever + s.bytes_down,
                have_valid(&e.meta, s.pieces_done),
            );
            if let Some(limit) = ratio_limit(&e.settings, session)
                && r >= limit
            {
                reached.push((*id, format!("seed ratio {r:.2} reached its limit {limit}")));
                continue;
            }
            // Idle: no data moved either way since the later of its last
            // activity and the start of this run.
            let since = match (e.last_active, e.run_started) {
                (Some(a), Some(b)) => a.max(b),
                (a, b) => a.or(b).unwrap_or(now),
            };
            let idle = now.duration_since(since).unwrap_or_default();
            if let Some(minutes) = idle_limit(&e.settings, session)
                && idle >= Duration::from_secs(minutes.max(0) as u64 * 60)
            {
                reached.push((
                    *id,
                    format!("idle for {} s, its limit is {minutes} min", idle.as_secs()),
                ));
            }
        }
        self.ticks += 1;
        if self.ticks % DIRTY_FLUSH_TICKS == 0 {
            self.flush_dirty();
        }
        for (id, why) in reached {
            self.stop(id).await;
            if let Some(e) = self.torrents.get_mut(&id) {
                e.settings.paused = true;
                e.settings.finished = true;
                info!(hash = %e.hash, id, "{why}: stopped seeding");
            }
            self.save(id);
        }
    }

    async fn shutdown(&mut self) {
        // Totals of this run into the settings, then every torrent stops
        // at once (each saves its resume data and announces `stopped`).
        // Only torrents that moved data have new totals to write: the
        // rest are on disk as they are (each write costs two fsyncs).
        for e in self.torrents.values_mut() {
            if let Some(h) = &e.handle {
                let s = h.stats().borrow().clone();
                if s.bytes_up > 0 || s.bytes_down > 0 {
                    e.settings.uploaded_ever += s.bytes_up;
                    e.settings.downloaded_ever += s.bytes_down;
                    e.dirty = true;
                }
            }
        }
        // One batch, one directory sync.
        self.flush_dirty();
    }

    /// A magnet's metadata phase ended: with the .torrent, it becomes a
    /// torrent like any other (same id and settings) and starts.
    async fn metadata_done(&mut self, done: magnet_phase::Done) {
        let Some(e) = self.torrents.get_mut(&done.id) else {
            return;
        };
        let Some(m) = &mut e.magnet else { return };
        if m.link.info_hash != done.info_hash || m.cancel.is_none() {
            return;
        }
        m.cancel = None;
        let (bytes, peers) = match done.result {
            Ok(x) => x,
            Err(err) => {
                m.error = Some(err);
                return;
            }
        };
        let meta = match Metainfo::from_bytes(&bytes) {
            Ok(meta) => meta,
            Err(err) => {
                m.error = Some(format!(
                    "the fetched metadata is not a valid torrent: {err}"
                ));
                return;
            }
        };
        if let Err(err) = self.state.magnet_resolved(&e.hash, &bytes) {
            m.error = Some(format!("{err:#}"));
            return;
        }
        info!(hash = %e.hash, name = %meta.info.name, id = done.id, "metadata fetched");
        e.magnet = None;
        e.meta = Arc::new(meta);
        e.last = stats_at_rest(&e.meta, &self.state.resume_path(&e.hash), &e.settings);
        self.start(done.id, peers).await;
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::AddMagnet {
                uri,
                magnet,
                download_dir,
                paused,
                labels,
                reply,
            } => {
                let _ = reply.send(
                    self.add_magnet(uri, *magnet, download_dir, paused, labels)
                        .await,
                );
            }
            Cmd::Add {
                bytes,
                meta,
                download_dir,
                paused,
                labels,
                reply,
            } => {
                let _ = reply.send(self.add(bytes, *meta, download_dir, paused, labels).await);
            }
            Cmd::Get { ids, reply } => {
                let views = self
                    .resolve(&ids)
                    .into_iter()
                    .filter_map(|id| self.torrents.get(&id).map(|e| self.view(id, e)))
                    .collect();
                let _ = reply.send(views);
            }
            Cmd::Act { ids, action, reply } => {
                let ids = self.resolve(&ids);
                let _ = reply.send(self.act(ids, action).await);
            }
            Cmd::Set { ids, change, reply } => {
                let ids = self.resolve(&ids);
                let _ = reply.send(self.set(ids, &change).await);
            }
            Cmd::Session { reply } => {
                let _ = reply.send(self.session_view());
            }
            Cmd::Metrics { reply } => {
                let stats: Vec<TorrentStats> = self
                    .torrents
                    .values()
                    .filter_map(|e| e.handle.as_ref().map(|h| h.stats().borrow().clone()))
                    .collect();
                let trackers = self.session.tracker().stats().await.ok();
                let text = crate::metrics::render(
                    &self.session,
                    &stats,
                    trackers.as_ref(),
                    &self.opts.capacities,
                    &self.opts.network,
                );
                let _ = reply.send(text);
            }
            Cmd::Relocate { ids, dir, reply } => {
                let ids = self.resolve(&ids);
                self.relocate(ids, dir, reply).await;
            }
            Cmd::Reload { reply } => {
                let _ = reply.send(self.reload());
            }
            Cmd::ConfigLimits {
                rates,
                peers,
                reply,
            } => {
                self.opts.config_rates = rates;
                self.opts.config_peers = peers;
                self.apply_session();
                let _ = reply.send(());
            }
            Cmd::SessionSet { settings, reply } => {
                self.session_settings.merge(settings);
                self.apply_session();
                let r = self
                    .state
                    .save_session(&self.session_settings)
                    .map_err(|e| format!("{e:#}"));
                let _ = reply.send(r);
            }
        }
    }

    /// The settings of a new torrent (its id fixed before its files are
    /// written, so they agree), or why it cannot be added.
    fn new_settings(
        &self,
        download_dir: Option<PathBuf>,
        paused: Option<bool>,
        labels: Vec<String>,
    ) -> Result<TorrentSettings, String> {
        let dir = download_dir.unwrap_or_else(|| self.download_dir());
        if !dir.is_absolute() {
            return Err(format!(
                "download-dir {} is not an absolute path",
                dir.display()
            ));
        }
        let paused = paused.unwrap_or(!self.session_settings.start_added_torrents.unwrap_or(true));
        Ok(TorrentSettings {
            id: self
                .next_id
                .max(self.torrents.keys().last().map_or(1, |k| k + 1)),
            download_dir: dir,
            paused,
            added_date: now_secs(),
            labels,
            ..TorrentSettings::default()
        })
    }

    fn duplicate(&self, hash: &str) -> Option<Added> {
        self.torrents
            .iter()
            .find(|(_, e)| e.hash == hash)
            .map(|(id, e)| Added {
                id: *id,
                name: e.meta.info.name.clone(),
                hash: hash.to_owned(),
                duplicate: true,
            })
    }

    async fn add_magnet(
        &mut self,
        uri: String,
        link: protocol::magnet::Magnet,
        download_dir: Option<PathBuf>,
        paused: Option<bool>,
        labels: Vec<String>,
    ) -> Result<Added, String> {
        let hash = link.info_hash.to_hex();
        self.add_entry(
            hash,
            NewEntry::Magnet { uri, link },
            download_dir,
            paused,
            labels,
        )
        .await
    }

    async fn add(
        &mut self,
        bytes: Vec<u8>,
        meta: Metainfo,
        download_dir: Option<PathBuf>,
        paused: Option<bool>,
        labels: Vec<String>,
    ) -> Result<Added, String> {
        let hash = meta.info_hash.to_hex();
        self.add_entry(
            hash,
            NewEntry::Torrent { bytes, meta },
            download_dir,
            paused,
            labels,
        )
        .await
    }

    /// The one path of every add: duplicate check, settings, state files
    /// written, then the entry inserted (and started unless paused).
    async fn add_entry(
        &mut self,
        hash: String,
        new: NewEntry,
        download_dir: Option<PathBuf>,
        paused: Option<bool>,
        labels: Vec<String>,
    ) -> Result<Added, String> {
        if let Some(d) = self.duplicate(&hash) {
            return Ok(d);
        }
        let settings = self.new_settings(download_dir, paused, labels)?;
        let id = settings.id;
        let (meta, magnet) = match new {
            NewEntry::Torrent { bytes, meta } => {
                let state = &self.state;
                blocking(|| state.add(&hash, &bytes, &settings)).map_err(|e| format!("{e:#}"))?;
                info!(%hash, name = %meta.info.name, id, "torrent added");
                (Arc::new(meta), None)
            }
            NewEntry::Magnet { uri, link } => {
                let state = &self.state;
                blocking(|| state.add_magnet(&hash, &uri, &settings))
                    .map_err(|e| format!("{e:#}"))?;
                let meta = magnet_phase::placeholder(&link);
                info!(%hash, name = %meta.info.name, id, "magnet added");
                let state = MagnetState {
                    link,
                    cancel: None,
                    progress: None,
                    error: None,
                };
                (meta, Some(state))
            }
        };
        let name = meta.info.name.clone();
        self.insert(meta, hash.clone(), settings, magnet).await;
        Ok(Added {
            id,
            name,
            hash,
            duplicate: false,
        })
    }

    /// Stops each torrent, then moves its data on a blocking thread; each
    /// continues from its resume data once its move has ended
    /// ([`Daemon::moved`]). `reply` gets the outcome of all of them.
    async fn relocate(
        &mut self,
        ids: Vec<i64>,
        dir: PathBuf,
        reply: oneshot::Sender<Result<(), String>>,
    ) {
        if let Some(id) = ids
            .iter()
            .find(|id| self.torrents.get(id).is_some_and(|e| e.moving.is_some()))
        {
            let _ = reply.send(Err(format!("torrent {id} is being moved already")));
            return;
        }
        let mut jobs = Vec::new();
        for id in ids {
            let Some(e) = self.torrents.get_mut(&id) else {
                continue;
            };
            if e.settings.download_dir == dir {
                continue;
            }
            if e.magnet.is_some() {
                // No data yet: it goes there once known.
                e.settings.download_dir = dir.clone();
                self.save(id);
                continue;
            }
            let was_running = e.handle.is_some();
            self.stop(id).await;
            let Some(e) = self.torrents.get_mut(&id) else {
                continue;
            };
            e.moving = Some(was_running);
            jobs.push((id, e.meta.clone(), e.settings.download_dir.clone()));
        }
        let tx = self.moved_tx.clone();
        tokio::spawn(async move {
            let mut errors = Vec::new();
            for (id, meta, from) in jobs {
                let to = dir.clone();
                let result = tokio::task::spawn_blocking(move || {
                    super::relocate::move_payload(&meta.info, &from, &to)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the move failed: {e}")));
                if let Err(e) = &result {
                    errors.push(format!("torrent {id}: {e}"));
                }
                let _ = tx
                    .send(Moved {
                        id,
                        dir: dir.clone(),
                        result,
                    })
                    .await;
            }
            let _ = reply.send(if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            });
        });
    }

    /// A move ended: the torrent continues at its new place (or at the old
    /// one if the move failed), trusting its resume data.
    async fn moved(&mut self, m: Moved) {
        let Some(e) = self.torrents.get_mut(&m.id) else {
            return;
        };
        let resume = e.moving.take().unwrap_or(false);
        match m.result {
            Ok(n) => {
                info!(hash = %e.hash, id = m.id, files = n, to = %m.dir.display(), "data moved");
                e.settings.download_dir = m.dir;
                self.save(m.id);
            }
            Err(err) => warn!(hash = %e.hash, id = m.id, error = %err, "data not moved"),
        }
        if resume {
            self.start(m.id, Vec::new()).await;
        }
    }

    async fn act(&mut self, ids: Vec<i64>, action: Action) -> Result<(), String> {
        if !matches!(action, Action::Stop)
            && let Some(id) = ids
                .iter()
                .find(|id| self.torrents.get(id).is_some_and(|e| e.moving.is_some()))
        {
            return Err(format!(
                "torrent {id} is being moved; try again when it is done"
            ));
        }
        for id in ids {
            match action {
                Action::Start => {
                    let session = &self.session_settings;
                    if let Some(e) = self.torrents.get_mut(&id) {
                        e.settings.paused = false;
                        // As Transmission: started by hand past its ratio
                        // limit, a torrent seeds on without one.
                        let r = ratio(
                            e.settings.uploaded_ever,
                            e.settings.downloaded_ever,
                            have_valid(&e.meta, e.last.pieces_done),
                        );
                        if e.settings.finished
                            && e.magnet.is_none()
                            && ratio_limit(&e.settings, session).is_some_and(|l| r >= l)
                        {
                            info!(hash = %e.hash, id, "started by hand past its seed ratio: no ratio limit now");
                            e.settings.seed_ratio_mode = 2;
                        }
                        e.settings.finished = false;
                    }
                    self.start(id, Vec::new()).await;
                    self.save(id);
                }
                Action::Stop => {
                    self.stop(id).await;
                    if let Some(e) = self.torrents.get_mut(&id) {
                        e.settings.paused = true;
                        if e.moving.is_some() {
                            // Stays stopped once its data has moved.
                            e.moving = Some(false);
                        }
                    }
                    self.save(id);
                }
                Action::Verify => {
                    let magnet = self.torrents.get(&id).is_some_and(|e| e.magnet.is_some());
                    if magnet {
                        // Nothing to verify before the metadata is known.
                        continue;
                    }
                    let was_running = self.torrents.get(&id).is_some_and(|e| e.handle.is_some());
                    self.stop(id).await;
                    let Some(e) = self.torrents.get(&id) else {
                        continue;
                    };
                    // Without resume data the next start hashes every piece.
                    self.state.forget_resume(&e.hash);
                    if was_running {
                        self.start(id, Vec::new()).await;
                    } else {
                        let s =
                            stats_at_rest(&e.meta, &self.state.resume_path(&e.hash), &e.settings);
                        if let Some(e) = self.torrents.get_mut(&id) {
                            e.last = s;
                        }
                    }
                    self.save(id);
                }
                Action::Remove { delete_data } => {
                    self.stop(id).await;
                    let Some(e) = self.torrents.remove(&id) else {
                        continue;
                    };
                    self.state.remove(&e.hash);
                    if delete_data {
                        super::remove::delete_payload(&e.meta.info, &e.settings.download_dir);
                    }
                    info!(hash = %e.hash, id, delete_data, "torrent removed");
                }
            }
        }
        Ok(())
    }

    async fn set(&mut self, ids: Vec<i64>, c: &Change) -> Result<(), String> {
        for id in ids {
            let Some(e) = self.torrents.get_mut(&id) else {
                continue;
            };
            let files = e.meta.info.files.iter().filter(|f| !f.padding).count();
            let mut restart = false;
            if !c.wanted.is_empty() || !c.priority.is_empty() {
                let mut prio = match (&e.settings.priorities, &e.handle) {
                    (Some(p), _) if p.len() == files => p.clone(),
                    (_, Some(h)) => h.progress().await.map(|p| p.priorities).unwrap_or_default(),
                    _ => Vec::new(),
                };
                if prio.len() != files {
                    prio = vec![Priority::Normal; files];
                }
                for &(i, want) in &c.wanted {
                    if let Some(p) = prio.get_mut(i) {
                        if !want {
                            *p = Priority::Skip;
                        } else if *p == Priority::Skip {
                            *p = Priority::Normal;
                        }
                    }
                }
                for &(i, level) in &c.priority {
                    if let Some(p) = prio.get_mut(i)
                        && *p != Priority::Skip
                    {
                        *p = level;
                    }
                }
                if let Some(h) = &e.handle {
                    h.set_file_priorities(prio.clone())
                        .await
                        .map_err(|err| format!("torrent {id}: {err}"))?;
                }
                e.settings.priorities = Some(prio);
            }
            if let Some(dir) = &c.location {
                restart |= e.settings.download_dir != *dir;
                e.settings.download_dir = dir.clone();
            }
            if let Some(l) = c.upload_limit {
                restart |= e.settings.upload_limit != l;
                e.settings.upload_limit = l;
            }
            if let Some(l) = c.download_limit {
                restart |= e.settings.download_limit != l;
                e.settings.download_limit = l;
            }
            if let Some(l) = &c.labels {
                e.settings.labels = l.clone();
            }
            if let Some(v) = c.seed_ratio_limit {
                e.settings.seed_ratio_limit = v;
            }
            if let Some(v) = c.seed_ratio_mode {
                e.settings.seed_ratio_mode = v;
            }
            if let Some(v) = c.seed_idle_limit {
                e.settings.seed_idle_limit = v;
            }
            if let Some(v) = c.seed_idle_mode {
                e.settings.seed_idle_mode = v;
            }
            let running = e.handle.is_some();
            self.save(id);
            // Rate limits and the directory are fixed when a torrent actor
            // starts: a new one takes over from the resume data just saved.
            if restart && running {
                self.stop(id).await;
                self.start(id, Vec::new()).await;
            }
        }
        Ok(())
    }

    /// Puts the session settings into effect: rate and connection limits
    /// at once (seed limits are read every tick, the download directory
    /// at each add).
    fn apply_session(&self) {
        let s = &self.session_settings;
        let (up, down) = s.rate_limits();
        let alt = s.alt_speed_enabled.unwrap_or(false);
        let up = if alt || s.speed_limit_up_enabled.is_some() {
            up
        } else {
            self.opts.config_rates.0
        };
        let down = if alt || s.speed_limit_down_enabled.is_some() {
            down
        } else {
            self.opts.config_rates.1
        };
        self.session.set_rate_limits(up, down);
        let clamp = |v: Option<u64>, d: usize| v.map_or(d, |v| v.clamp(1, 65_535) as usize);
        self.session.set_peer_limits(
            clamp(s.peer_limit_global, self.opts.config_peers.0),
            clamp(s.peer_limit_per_torrent, self.opts.config_peers.1),
        );
        if let Some(f) = &s.log_filter
            && let Err(e) = crate::set_log_filter(f)
        {
            warn!(filter = %f, error = %e, "log filter not applied");
        }
        info!(?up, ?down, peers = ?self.session.peer_limits(), "session settings applied");
    }

    /// SIGHUP: reads `settings.json` again and applies it, as
    /// transmission-daemon does.
    fn reload(&mut self) -> Result<(), String> {
        let s = self.state.load_session().map_err(|e| format!("{e:#}"))?;
        self.session_settings = s;
        self.apply_session();
        Ok(())
    }

    fn session_view(&self) -> SessionView {
        let mut v = SessionView {
            download_dir: self.download_dir(),
            config_dir: self.state.root().to_path_buf(),
            peer_port: self.opts.listen_port,
            torrents: self.torrents.len(),
            active: 0,
            paused: 0,
            rate_down: 0,
            rate_up: 0,
            uploaded: 0,
            downloaded: 0,
            seconds_active: self.started.elapsed().as_secs(),
            start_added_torrents: self.session_settings.start_added_torrents.unwrap_or(true),
            dht_enabled: self.opts.dht.is_some(),
            pex_enabled: self.opts.pex.is_some(),
            settings: self.session_settings.clone(),
            peer_limits: self.session.peer_limits(),
        };
        for e in self.torrents.values() {
            match &e.handle {
                Some(h) => {
                    let s = h.stats().borrow().clone();
                    v.rate_down += s.rate_down;
                    v.rate_up += s.rate_up;
                    v.uploaded += s.bytes_up;
                    v.downloaded += s.bytes_down;
                    if s.rate_down > 0 || s.rate_up > 0 {
                        v.active += 1;
                    }
                }
                None => v.paused += 1,
            }
        }
        v
    }
}

/// Ends the daemon: saves every torrent's settings and then stops the
/// session, whose torrents save their resume data and announce `stopped`.
pub async fn finish(join: tokio::task::JoinHandle<Session>) {
    if let Ok(session) = join.await {
        session.shutdown().await;
    }
}

//! The tracker session: one actor for the whole process that announces
//! every torrent to its trackers.
//!
//! It owns, per tracker URL, a circuit breaker with backoff
//! ([`breaker::TrackerHealth`]), counters and the cached UDP connection id;
//! per torrent, its tiers ([`tiers::Tiers`]), pending event and schedule;
//! and process-wide, the HTTP client, the DNS cache actor ([`dns`]) and an
//! announce rate limit (governor).
//!
//! Message flow, chosen so there is no await cycle:
//!
//! ```text
//! TrackerHandle --send().await--> tracker actor --spawn--> announce tasks (JoinSet, capped)
//!                                       ^                        |
//!                                       +---- join_next ---------+
//! tracker actor --try_send--> torrent's peers channel   (never awaits the torrent)
//! announce task --send().await--> DNS actor --oneshot--> announce task
//! ```
//!
//! The actor never awaits anything but its mailbox, its task set and its
//! timer while running, so a slow tracker only ever delays its own task.
//! Peers go to the torrent with `try_send`: when the torrent's channel is
//! full the batch is dropped (the next announce brings the peers again).
//!
//! An announce walks the torrent's tiers one URL at a time (one task per
//! URL); a failure moves to the next URL at once, a URL whose breaker or
//! backoff refuses it is skipped, and when the walk runs out the torrent is
//! retried when the first of its trackers becomes available again.
//!
//! Announces in flight are capped twice: across the process
//! (`max_concurrent_announces`) and per tracker URL
//! (`max_in_flight_per_tracker`), so a tracker that hangs until its timeout
//! holds only its own share of the slots. Scheduling is a scan of the
//! torrents after every event (no timer per torrent): cheap for the
//! hundreds of torrents one process runs, and it keeps every decision in
//! one place.

pub mod announce;
pub mod breaker;
pub mod dns;
pub mod http;
pub mod request;
pub mod tiers;
pub mod udp;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use protocol::metainfo::InfoHash;
use protocol::tracker::Event;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::{self, AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use self::announce::Transport;
use self::breaker::TrackerHealth;
pub use self::breaker::{BreakerConfig, BreakerState};
pub use self::dns::{DnsConfig, DnsStats};
use self::request::{
    AnnounceError, AnnounceParams, Announced, TaskExtras, TransportConfig, UdpConnection,
};
use self::tiers::{Cursor, Tiers};

/// Every tunable of the tracker session.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Capacity of the actor's mailbox. Default 256.
    pub mailbox_capacity: usize,
    /// Where HTTP and UDP announces are sent from: the session copies the
    /// top-level `bind_interface` / `bind_address` here (not a key of its
    /// own).
    #[serde(skip)]
    pub binding: crate::net::Binding,
    /// Most announces in flight at once across all torrents; `stopped`
    /// announces have their own pool of this many, so a removal never waits
    /// behind regular announces (and shutdown cannot open a socket per
    /// torrent at once). Default 64.
    pub max_concurrent_announces: usize,
    /// Most announces in flight to one tracker URL, so a tracker that
    /// hangs holds at most this many of the slots above and the other
    /// trackers keep theirs. Torrents over it wait their turn (they do not
    /// skip to the next URL). Default 16.
    pub max_in_flight_per_tracker: usize,
    /// Whole-request timeout of an HTTP announce, body included. Default
    /// 30 s.
    #[serde(rename = "http_timeout_ms", with = "storage::serde_fmt::duration_ms")]
    pub http_timeout: Duration,
    /// TCP (and TLS) connect timeout of an HTTP announce. Default 10 s.
    #[serde(
        rename = "http_connect_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub http_connect_timeout: Duration,
    /// Redirects followed before an HTTP announce fails (a redirect loop
    /// fails here). Default 5.
    pub max_redirects: usize,
    /// Largest HTTP response body read; larger ones fail. Default 1 MiB.
    pub max_body_size: usize,
    /// First UDP timeout; retransmission `n` waits `base * 2^n` (BEP 15:
    /// 15 s). Default 15 s.
    #[serde(
        rename = "udp_base_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub udp_base_timeout: Duration,
    /// UDP retransmissions after the first send. BEP 15 allows 8, which
    /// is over an hour of waiting on a dead tracker; 3 gives up after
    /// 15 + 30 + 60 + 120 s and lets the breaker and backoff take over.
    /// Default 3.
    pub udp_max_retransmits: u32,
    /// How long a UDP connection id is reused (BEP 15: one minute).
    #[serde(
        rename = "udp_connection_lifetime_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub udp_connection_lifetime: Duration,
    /// Circuit breaker (threshold 3 by default) and backoff per tracker.
    pub breaker: BreakerConfig,
    /// Shortest wait before retrying a torrent whose every tracker failed
    /// (the backoff's full jitter may draw zero). Default 5 s.
    #[serde(
        rename = "min_retry_delay_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub min_retry_delay: Duration,
    /// Floor on the tracker's `interval`, so a tracker answering 0 cannot
    /// make us announce in a loop. Default 60 s.
    #[serde(
        rename = "min_announce_interval_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub min_announce_interval: Duration,
    /// Ceiling on the tracker's `interval`. Default 2 h.
    #[serde(
        rename = "max_announce_interval_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub max_announce_interval: Duration,
    /// Announces per second across the process (regular and event
    /// announces; `stopped` is exempt so shutdown is never delayed).
    /// Default 50.
    pub announces_per_second: NonZeroU32,
    /// Announces allowed in one burst above the rate. Default 100.
    pub announce_burst: NonZeroU32,
    /// Peers asked for in each announce. Default 50.
    pub numwant: u32,
    /// Longest `remove_torrent` (and shutdown) waits for `stopped`
    /// announces. Default 5 s.
    #[serde(rename = "stop_timeout_ms", with = "storage::serde_fmt::duration_ms")]
    pub stop_timeout: Duration,
    /// The DNS cache.
    pub dns: DnsConfig,
    /// The HTTP `User-Agent`.
    pub user_agent: String,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 256,
            binding: Default::default(),
            max_concurrent_announces: 64,
            max_in_flight_per_tracker: 16,
            http_timeout: Duration::from_secs(30),
            http_connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
            max_body_size: 1 << 20,
            udp_base_timeout: Duration::from_secs(15),
            udp_max_retransmits: 3,
            udp_connection_lifetime: Duration::from_secs(60),
            breaker: BreakerConfig::default(),
            min_retry_delay: Duration::from_secs(5),
            min_announce_interval: Duration::from_secs(60),
            max_announce_interval: Duration::from_secs(2 * 3600),
            announces_per_second: NonZeroU32::new(50).expect("non-zero"),
            announce_burst: NonZeroU32::new(100).expect("non-zero"),
            numwant: 50,
            stop_timeout: Duration::from_secs(5),
            dns: DnsConfig::default(),
            user_agent: concat!("actorrent/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Why a request to the tracker actor failed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TrackerError {
    /// The actor has stopped (cancelled, or it could not start).
    #[error("the tracker actor has stopped")]
    Stopped,
    /// `add_torrent` for an info hash already registered.
    #[error("torrent {0} is already registered with the tracker session")]
    AlreadyRegistered(InfoHash),
    /// The info hash is not registered.
    #[error("torrent {0} is not registered with the tracker session")]
    UnknownTorrent(InfoHash),
    /// The registration lists no tracker URL.
    #[error("torrent {0} has no tracker")]
    NoTrackers(InfoHash),
}

/// The counters a torrent reports at each announce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnnounceProgress {
    /// Bytes uploaded since `started`.
    pub uploaded: u64,
    /// Bytes downloaded since `started`.
    pub downloaded: u64,
    /// Bytes still needed.
    pub left: u64,
}

/// A torrent handed to the tracker session.
#[derive(Debug)]
pub struct TorrentRegistration {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Announce-list tiers (BEP 12), or `[[announce]]`.
    pub tiers: Vec<Vec<String>>,
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// Our listen port.
    pub port: u16,
    /// Uploaded/downloaded/left, read at each announce.
    pub progress: watch::Receiver<AnnounceProgress>,
    /// Where new peers go. The actor uses `try_send`: a batch that finds
    /// the channel full (or closed) is dropped, since the next announce
    /// brings those peers again and the actor must never wait on a torrent.
    pub peers: mpsc::Sender<Vec<SocketAddr>>,
}

/// Counters of one tracker URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerUrlStats {
    /// Announces started (every event, `stopped` included).
    pub announces_sent: u64,
    /// Announces the tracker answered with success.
    pub announces_succeeded: u64,
    /// Announces that failed.
    pub announces_failed: u64,
    /// The breaker's state now.
    pub breaker: BreakerState,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Times it turned half-open (a trial went out).
    pub breaker_half_opened: u64,
    /// Times it closed again after a trial.
    pub breaker_closed: u64,
    /// The latest failure, shown to the user (a `failure reason` reads
    /// "tracker says: ...").
    pub last_error: Option<String>,
    /// The latest `warning message`.
    pub last_warning: Option<String>,
    /// UDP datagrams ignored (wrong source address or transaction id).
    pub ignored_datagrams: u64,
}

impl Default for TrackerUrlStats {
    fn default() -> Self {
        Self {
            announces_sent: 0,
            announces_succeeded: 0,
            announces_failed: 0,
            breaker: BreakerState::Closed,
            breaker_opened: 0,
            breaker_half_opened: 0,
            breaker_closed: 0,
            last_error: None,
            last_warning: None,
            ignored_datagrams: 0,
        }
    }
}

/// A snapshot of the tracker session's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Per tracker URL.
    pub trackers: BTreeMap<String, TrackerUrlStats>,
    /// DNS cache hits, misses and failures.
    pub dns: DnsStats,
    /// Times an announce waited for the process-wide rate limit.
    pub rate_limited: u64,
    /// Peer batches dropped because a torrent's channel was full.
    pub peer_batches_dropped: u64,
    /// Torrents registered.
    pub torrents: usize,
}

enum Command {
    Add(
        Box<TorrentRegistration>,
        oneshot::Sender<Result<(), TrackerError>>,
    ),
    Completed(InfoHash, oneshot::Sender<Result<(), TrackerError>>),
    Remove(InfoHash, oneshot::Sender<Result<(), TrackerError>>),
    Stats(oneshot::Sender<TrackerStats>),
}

/// Cheap, cloneable handle to the tracker actor.
#[derive(Clone, Debug)]
pub struct TrackerHandle {
    tx: mpsc::Sender<Command>,
    dns: dns::DnsHandle,
}

impl TrackerHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, TrackerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| TrackerError::Stopped)?;
        rx.await.map_err(|_| TrackerError::Stopped)
    }

    /// Registers a torrent: the actor sends `started`, then re-announces at
    /// the tracker's interval (never faster than its `min interval`).
    pub async fn add_torrent(&self, t: TorrentRegistration) -> Result<(), TrackerError> {
        self.call(|r| Command::Add(Box::new(t), r)).await?
    }

    /// Sends `completed` once to the torrent's trackers (with the next
    /// announce the tracker's `min interval` allows).
    pub async fn completed(&self, info_hash: InfoHash) -> Result<(), TrackerError> {
        self.call(|r| Command::Completed(info_hash, r)).await?
    }

    /// Sends `stopped` to every tracker the torrent announced to (waiting
    /// at most `stop_timeout`) and forgets the torrent; resolves when done.
    pub async fn remove_torrent(&self, info_hash: InfoHash) -> Result<(), TrackerError> {
        self.call(|r| Command::Remove(info_hash, r)).await?
    }

    /// The DNS cache actor the tracker session resolves through, for other
    /// actors of the process to share (the DHT's bootstrap names).
    pub fn dns(&self) -> dns::DnsHandle {
        self.dns.clone()
    }

    /// Counters snapshot: announces sent/failed and breaker changes per
    /// tracker, DNS cache hits/misses.
    pub async fn stats(&self) -> Result<TrackerStats, TrackerError> {
        let mut stats = self.call(Command::Stats).await?;
        stats.dns = self.dns.stats().await.map_err(|_| TrackerError::Stopped)?;
        Ok(stats)
    }
}

/// Spawns the one process-wide tracker actor (a tokio task), with its DNS
/// cache actor; both stop when `cancel` fires, the tracker after sending
/// `stopped` for every torrent (bounded by `stop_timeout`).
pub fn spawn(
    config: TrackerConfig,
    cancel: CancellationToken,
) -> (TrackerHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.mailbox_capacity.max(1));
    // The DNS actor gets a child token: it must outlive the tracker's
    // shutdown `stopped` announces, so the tracker cancels it itself.
    let dns_cancel = CancellationToken::new();
    let (dns, dns_join) = dns::spawn(config.dns, config.binding.clone(), dns_cancel.clone());
    let handle = TrackerHandle {
        tx,
        dns: dns.clone(),
    };
    let http = http::client(
        &config.binding,
        dns.clone(),
        config.http_timeout,
        config.http_connect_timeout,
        config.max_redirects,
        &config.user_agent,
    );
    let join = tokio::spawn(
        async move {
            match http {
                Ok(http) => {
                    let transport = Transport {
                        http,
                        dns,
                        binding: config.binding.clone(),
                        config: TransportConfig {
                            max_body_size: config.max_body_size,
                            udp_base_timeout: config.udp_base_timeout,
                            udp_max_retransmits: config.udp_max_retransmits,
                            udp_connection_lifetime: config.udp_connection_lifetime,
                        },
                    };
                    let actor = Actor::new(config, transport);
                    actor.run(rx, cancel).await;
                }
                // Only a broken TLS backend gets here; the handle then reports
                // `Stopped` on every call.
                Err(e) => tracing::error!(error = %e, "cannot build the HTTP client"),
            }
            dns_cancel.cancel();
            let _ = dns_join.await;
        }
        .instrument(tracing::info_span!("tracker")),
    );
    (handle, join)
}

/// Per tracker URL state.
struct TrackerEntry {
    health: TrackerHealth,
    stats: TrackerUrlStats,
    udp_connection: Option<UdpConnection>,
    /// Announce tasks to this URL now.
    in_flight: usize,
}

/// The announce task of one torrent.
struct InFlight {
    id: task::Id,
    abort: AbortHandle,
    url: String,
}

/// Per torrent state.
struct Torrent {
    info_hash: InfoHash,
    tiers: Tiers,
    peer_id: [u8; 20],
    port: u16,
    progress: watch::Receiver<AnnounceProgress>,
    peers: mpsc::Sender<Vec<SocketAddr>>,
    /// Our random key for this torrent (same for every tracker).
    key: u32,
    /// Whether a tracker has acknowledged `started`.
    started: bool,
    /// `completed` is owed (set once, cleared when a tracker takes it).
    completed_pending: bool,
    /// `completed` went out already; never again.
    completed_sent: bool,
    /// When the next announce is due (ignored while one is in flight).
    next_at: Instant,
    /// No announce before this (the tracker's `min interval`).
    not_before: Instant,
    /// The next URL to try in the current walk of the tiers.
    cursor: Cursor,
    /// The task announcing for this torrent.
    in_flight: Option<InFlight>,
    /// Due, but its next URL is at its in-flight cap: re-tried whenever a
    /// task ends rather than on a timer.
    parked: bool,
    /// The last walk ran out of trackers: woken early when one of its
    /// trackers' breakers changes state.
    retrying: bool,
    /// `tracker id` per URL, echoed back.
    tracker_ids: HashMap<String, String>,
    /// URLs that acknowledged an announce: they get `stopped`.
    announced_to: HashSet<String>,
}

impl Torrent {
    fn event(&self) -> Option<Event> {
        if !self.started {
            Some(Event::Started)
        } else if self.completed_pending {
            Some(Event::Completed)
        } else {
            None
        }
    }
}

/// What a finished task reports.
enum TaskOutput {
    Announce {
        info_hash: InfoHash,
        url: String,
        cursor: Cursor,
        event: Option<Event>,
        result: Result<Announced, AnnounceError>,
        extras: TaskExtras,
    },
    /// `stopped` announces of a removed torrent (or of every torrent at
    /// shutdown): per URL, the result (`None` if it ran out of time), and
    /// who waits for them (answered once the counters include them).
    Stopped(
        Vec<(String, Option<Result<Announced, AnnounceError>>)>,
        Option<oneshot::Sender<Result<(), TrackerError>>>,
    ),
}

struct Actor {
    config: TrackerConfig,
    transport: Transport,
    trackers: HashMap<String, TrackerEntry>,
    torrents: HashMap<InfoHash, Torrent>,
    tasks: JoinSet<TaskOutput>,
    /// Announce tasks in `tasks` (the rest are `stopped` tasks): which
    /// torrent and URL each serves.
    announce_tasks: HashMap<task::Id, (InfoHash, String)>,
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
    /// Permits for `stopped` announces in flight, shared by the actor's own
    /// stop tasks only.
    stop_permits: Arc<Semaphore>,
    rng: SmallRng,
    rate_limited: u64,
    peer_batches_dropped: u64,
}

impl Actor {
    fn new(config: TrackerConfig, transport: Transport) -> Self {
        let clock = DefaultClock::default();
        let quota =
            Quota::per_second(config.announces_per_second).allow_burst(config.announce_burst);
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            stop_permits: Arc::new(Semaphore::new(config.max_concurrent_announces.max(1))),
            config,
            transport,
            trackers: HashMap::new(),
            torrents: HashMap::new(),
            tasks: JoinSet::new(),
            announce_tasks: HashMap::new(),
            rng: SmallRng::from_os_rng(),
            rate_limited: 0,
            peer_batches_dropped: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        loop {
            let now = Instant::now();
            self.start_due(now);
            let wake = self.next_wake();
            // Finished tasks before new commands: they free slots, and a
            // flood of commands must not starve them.
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_joined(done);
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                () = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            }
        }
        self.shutdown().await;
    }

    /// Sends `stopped` for every torrent, waits for those (bounded), then
    /// drops everything still running.
    async fn shutdown(&mut self) {
        let hashes: Vec<InfoHash> = self.torrents.keys().copied().collect();
        for ih in hashes {
            self.remove(ih, None);
        }
        let deadline = Instant::now() + self.config.stop_timeout;
        while let Ok(Some(done)) =
            tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await
        {
            self.on_joined(done);
        }
        self.tasks.abort_all();
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Add(reg, reply) => {
                let _ = reply.send(self.add(*reg));
            }
            Command::Completed(ih, reply) => {
                let r = match self.torrents.get_mut(&ih) {
                    None => Err(TrackerError::UnknownTorrent(ih)),
                    Some(t) => {
                        if !t.completed_sent && !t.completed_pending {
                            t.completed_pending = true;
                            t.next_at = Instant::now();
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Command::Remove(ih, reply) => {
                if self.torrents.contains_key(&ih) {
                    self.remove(ih, Some(reply));
                } else {
                    let _ = reply.send(Err(TrackerError::UnknownTorrent(ih)));
                }
            }
            Command::Stats(reply) => {
                let now = Instant::now();
                let trackers = self
                    .trackers
                    .iter()
                    .map(|(url, e)| {
                        let mut s = e.stats.clone();
                        s.breaker = e.health.state(now);
                        (url.clone(), s)
                    })
                    .collect();
                let _ = reply.send(TrackerStats {
                    trackers,
                    dns: DnsStats::default(),
                    rate_limited: self.rate_limited,
                    peer_batches_dropped: self.peer_batches_dropped,
                    torrents: self.torrents.len(),
                });
            }
        }
    }

    fn add(&mut self, reg: TorrentRegistration) -> Result<(), TrackerError> {
        if self.torrents.contains_key(&reg.info_hash) {
            return Err(TrackerError::AlreadyRegistered(reg.info_hash));
        }
        let tiers = Tiers::new(reg.tiers, &mut self.rng);
        if tiers.is_empty() {
            return Err(TrackerError::NoTrackers(reg.info_hash));
        }
        let now = Instant::now();
        info!(info_hash = %reg.info_hash, trackers = tiers.len(), "torrent registered with trackers");
        self.torrents.insert(
            reg.info_hash,
            Torrent {
                info_hash: reg.info_hash,
                tiers,
                peer_id: reg.peer_id,
                port: reg.port,
                progress: reg.progress,
                peers: reg.peers,
                key: self.rng.random(),
                started: false,
                completed_pending: false,
                completed_sent: false,
                next_at: now,
                not_before: now,
                cursor: 0,
                in_flight: None,
                parked: false,
                retrying: false,
                tracker_ids: HashMap::new(),
                announced_to: HashSet::new(),
            },
        );
        Ok(())
    }

    /// Forgets a torrent and spawns its `stopped` announces; `reply` is
    /// answered when they finish or time out.
    fn remove(&mut self, ih: InfoHash, reply: Option<oneshot::Sender<Result<(), TrackerError>>>) {
        let Some(mut t) = self.torrents.remove(&ih) else {
            if let Some(r) = reply {
                let _ = r.send(Err(TrackerError::UnknownTorrent(ih)));
            }
            return;
        };
        if let Some(f) = t.in_flight.take() {
            // The tracker may have seen this announce: it gets `stopped`
            // too. Its breaker trial (if it was one) is not decided.
            f.abort.abort();
            self.finish_task(f.id);
            if let Some(e) = self.trackers.get_mut(&f.url) {
                e.health.on_abandoned();
            }
            t.announced_to.insert(f.url);
        }
        let progress = *t.progress.borrow();
        let targets: Vec<(String, AnnounceParams, Option<UdpConnection>)> = t
            .announced_to
            .iter()
            .map(|url| {
                let entry = self.trackers.get_mut(url);
                let udp = entry.as_ref().and_then(|e| e.udp_connection);
                if let Some(e) = entry {
                    e.stats.announces_sent += 1;
                }
                let params = AnnounceParams {
                    info_hash: ih.0,
                    peer_id: t.peer_id,
                    port: t.port,
                    uploaded: progress.uploaded,
                    downloaded: progress.downloaded,
                    left: progress.left,
                    event: Some(Event::Stopped),
                    numwant: 0,
                    key: t.key,
                    trackerid: t.tracker_ids.get(url).cloned(),
                };
                (url.clone(), params, udp)
            })
            .collect();
        debug!(info_hash = %ih, trackers = targets.len(), "sending stopped");
        let transport = self.transport.clone();
        let timeout = self.config.stop_timeout;
        let permits = self.stop_permits.clone();
        self.tasks.spawn(async move {
            let mut set = JoinSet::new();
            let mut urls = Vec::with_capacity(targets.len());
            for (i, (url, params, udp)) in targets.into_iter().enumerate() {
                let transport = transport.clone();
                let permits = permits.clone();
                urls.push(url.clone());
                set.spawn(async move {
                    // The semaphore is never closed, so this only waits.
                    let _permit = permits.acquire_owned().await;
                    let (result, _) = announce::announce(&transport, &url, &params, udp).await;
                    (i, result)
                });
            }
            let mut results: Vec<_> = urls.into_iter().map(|u| (u, None)).collect();
            let deadline = Instant::now() + timeout;
            while let Ok(Some(done)) = tokio::time::timeout_at(deadline, set.join_next()).await {
                if let Ok((i, result)) = done {
                    results[i].1 = Some(result);
                }
            }
            // Whatever is left ran out of time (its entry stays `None`);
            // dropping the set aborts it.
            drop(set);
            TaskOutput::Stopped(results, reply)
        });
    }

    fn entry(&mut self, url: &str) -> &mut TrackerEntry {
        let breaker = self.config.breaker;
        self.trackers
            .entry(url.to_owned())
            .or_insert_with(|| TrackerEntry {
                health: TrackerHealth::new(breaker),
                stats: TrackerUrlStats::default(),
                udp_connection: None,
                in_flight: 0,
            })
    }

    /// Forgets an announce task (ended or aborted); `None` if it was
    /// already forgotten.
    fn finish_task(&mut self, id: task::Id) -> Option<(InfoHash, String)> {
        let (ih, url) = self.announce_tasks.remove(&id)?;
        if let Some(e) = self.trackers.get_mut(&url) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
        Some((ih, url))
    }

    /// Wakes the torrents waiting out a failed walk that include `url`:
    /// its breaker changed, so their retry time may have too.
    fn wake_waiters(&mut self, url: &str, now: Instant) {
        for t in self.torrents.values_mut() {
            if t.retrying && t.in_flight.is_none() && t.tiers.urls().any(|u| u == url) {
                t.next_at = t.next_at.min(now);
            }
        }
    }

    fn on_joined(&mut self, done: Result<(task::Id, TaskOutput), task::JoinError>) {
        match done {
            Ok((id, out)) => self.on_output(id, out),
            // Aborted tasks were forgotten when aborted.
            Err(e) if e.is_cancelled() => {
                self.finish_task(e.id());
            }
            Err(e) => {
                // A panic in an announce is a bug, but it must not wedge the
                // torrent: count it as that tracker's failure.
                warn!(error = %e, "tracker task panicked");
                if let Some((ih, url)) = self.announce_tasks.get(&e.id()).cloned() {
                    let cursor = self.torrents.get(&ih).map_or(0, |t| t.cursor);
                    let out = TaskOutput::Announce {
                        info_hash: ih,
                        url,
                        cursor,
                        event: None,
                        result: Err(AnnounceError::Io("announce task panicked".into())),
                        extras: TaskExtras::default(),
                    };
                    self.on_output(e.id(), out);
                }
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.announce_tasks.len() >= self.config.max_concurrent_announces.max(1) {
            // Nothing can start until a task ends, which wakes us anyway.
            return None;
        }
        self.torrents
            .values()
            .filter(|t| t.in_flight.is_none() && !t.parked)
            .map(|t| t.next_at.max(t.not_before))
            .min()
    }

    /// Starts an announce for every torrent that is due, within the
    /// concurrency cap and the rate limit.
    fn start_due(&mut self, now: Instant) {
        let mut due: Vec<(Instant, InfoHash)> = self
            .torrents
            .values()
            .filter(|t| t.in_flight.is_none() && t.next_at.max(t.not_before) <= now)
            .map(|t| (t.next_at, t.info_hash))
            .collect();
        // Longest-waiting first, so a burst of new torrents cannot starve
        // re-announces.
        due.sort_unstable();
        for (_, ih) in due {
            if self.announce_tasks.len() >= self.config.max_concurrent_announces.max(1) {
                break;
            }
            self.advance(ih, now);
        }
    }

    /// Continues the torrent's walk of its tiers from its cursor: starts an
    /// announce to the first URL its breaker lets through, or, when the
    /// walk runs out, schedules the next walk.
    fn advance(&mut self, ih: InfoHash, now: Instant) {
        let Some(t) = self.torrents.get(&ih) else {
            return;
        };
        if t.in_flight.is_some() {
            return;
        }
        let mut cursor = t.cursor;
        loop {
            let Some(t) = self.torrents.get(&ih) else {
                return;
            };
            let Some(url) = t.tiers.get(cursor).map(str::to_owned) else {
                break;
            };
            let per_tracker = self.config.max_in_flight_per_tracker;
            let entry = self.entry(&url);
            if entry.health.blocked_until(now).is_some() {
                cursor += 1;
                continue;
            }
            if entry.in_flight >= per_tracker.max(1) {
                if let Some(t) = self.torrents.get_mut(&ih) {
                    t.cursor = cursor;
                    t.parked = true;
                }
                return;
            }
            // Rate limit only once a URL is ready, so a blocked walk does
            // not consume quota.
            if let Err(not_until) = self.limiter.check() {
                self.rate_limited += 1;
                let wait = not_until.wait_time_from(self.clock.now());
                if let Some(t) = self.torrents.get_mut(&ih) {
                    t.cursor = cursor;
                    t.parked = false;
                    t.next_at = now + wait;
                }
                return;
            }
            let entry = self.entry(&url);
            let change = entry.health.try_begin(now);
            if let Ok(Some(BreakerState::HalfOpen)) = change {
                entry.stats.breaker_half_opened += 1;
                info!(%url, "tracker breaker half-open: trial announce");
            }
            entry.stats.announces_sent += 1;
            let udp = entry.udp_connection;
            self.spawn_announce(ih, cursor, url, udp);
            return;
        }
        // The walk ran out: retry when the first tracker is available.
        let retry = {
            let t = &self.torrents[&ih];
            let urls: Vec<String> = t.tiers.urls().map(str::to_owned).collect();
            urls.iter()
                .filter_map(|u| {
                    self.trackers
                        .get(u)
                        .and_then(|e| e.health.blocked_until(now))
                })
                .min()
                .unwrap_or(now)
                .max(now + self.config.min_retry_delay)
        };
        if let Some(t) = self.torrents.get_mut(&ih) {
            t.cursor = 0;
            t.parked = false;
            t.retrying = true;
            t.next_at = retry;
            debug!(info_hash = %ih, retry_in = ?retry - now, "every tracker failed or is backing off");
        }
    }

    fn spawn_announce(
        &mut self,
        ih: InfoHash,
        cursor: Cursor,
        url: String,
        udp: Option<UdpConnection>,
    ) {
        let numwant = self.config.numwant;
        let Some(t) = self.torrents.get_mut(&ih) else {
            return;
        };
        let progress = *t.progress.borrow();
        let event = t.event();
        let params = AnnounceParams {
            info_hash: ih.0,
            peer_id: t.peer_id,
            port: t.port,
            uploaded: progress.uploaded,
            downloaded: progress.downloaded,
            left: progress.left,
            event,
            numwant,
            key: t.key,
            trackerid: t.tracker_ids.get(&url).cloned(),
        };
        t.cursor = cursor;
        let transport = self.transport.clone();
        let task_url = url.clone();
        let span = tracing::debug_span!("announce", info_hash = %ih, url = %url);
        let abort = self.tasks.spawn(
            async move {
                let (result, extras) =
                    announce::announce(&transport, &task_url, &params, udp).await;
                TaskOutput::Announce {
                    info_hash: ih,
                    url: task_url,
                    cursor,
                    event,
                    result,
                    extras,
                }
            }
            .instrument(span),
        );
        debug!(info_hash = %ih, %url, ?event, "announcing");
        let id = abort.id();
        t.in_flight = Some(InFlight {
            id,
            abort,
            url: url.clone(),
        });
        t.parked = false;
        self.entry(&url).in_flight += 1;
        self.announce_tasks.insert(id, (ih, url));
    }

    fn on_output(&mut self, id: task::Id, out: TaskOutput) {
        let now = Instant::now();
        match out {
            TaskOutput::Stopped(results, reply) => {
                for (url, result) in results {
                    let entry = self.entry(&url);
                    match result {
                        Some(Ok(_)) => entry.stats.announces_succeeded += 1,
                        Some(Err(e)) => {
                            entry.stats.announces_failed += 1;
                            entry.stats.last_error = Some(e.to_string());
                        }
                        None => {
                            entry.stats.announces_failed += 1;
                            entry.stats.last_error = Some(AnnounceError::Timeout.to_string());
                        }
                    }
                }
                if let Some(r) = reply {
                    let _ = r.send(Ok(()));
                }
            }
            TaskOutput::Announce {
                info_hash,
                url,
                cursor,
                event,
                result,
                extras,
            } => {
                self.finish_task(id);
                // Not ours if the torrent was removed (and maybe re-added)
                // while the task ran.
                let still_ours = self
                    .torrents
                    .get(&info_hash)
                    .and_then(|t| t.in_flight.as_ref())
                    .is_some_and(|f| f.id == id);
                if still_ours {
                    if let Some(t) = self.torrents.get_mut(&info_hash) {
                        t.in_flight = None;
                    }
                }
                let jitter: f64 = self.rng.random();
                let entry = self.entry(&url);
                entry.stats.ignored_datagrams += extras.ignored_datagrams;
                let mut changed = false;
                match &result {
                    Ok(a) => {
                        entry.stats.announces_succeeded += 1;
                        entry.udp_connection = extras.udp_connection;
                        if entry.health.on_success() == Some(BreakerState::Closed) {
                            entry.stats.breaker_closed += 1;
                            info!(%url, "tracker breaker closed");
                            changed = true;
                        }
                        if let Some(w) = &a.warning {
                            warn!(%url, warning = %w, "tracker warning");
                            entry.stats.last_warning = Some(w.clone());
                        }
                    }
                    Err(e) => {
                        entry.udp_connection = None;
                        entry.stats.announces_failed += 1;
                        entry.stats.last_error = Some(e.to_string());
                        warn!(%url, error = %e, "announce failed");
                        if entry.health.on_failure(now, jitter) == Some(BreakerState::Open) {
                            entry.stats.breaker_opened += 1;
                            warn!(%url, cool_down = ?entry.health.cool_down(), "tracker breaker open");
                            changed = true;
                        }
                    }
                }
                if changed {
                    self.wake_waiters(&url, now);
                }
                if !still_ours {
                    return;
                }
                match result {
                    Ok(a) => self.on_announced(info_hash, cursor, &url, event, a, now),
                    Err(_) => {
                        if let Some(t) = self.torrents.get_mut(&info_hash) {
                            t.cursor = cursor + 1;
                        }
                        self.advance(info_hash, now);
                    }
                }
            }
        }
    }

    fn on_announced(
        &mut self,
        ih: InfoHash,
        cursor: Cursor,
        url: &str,
        event: Option<Event>,
        a: Announced,
        now: Instant,
    ) {
        let Some(t) = self.torrents.get_mut(&ih) else {
            return;
        };
        t.tiers.promote(cursor);
        t.cursor = 0;
        t.retrying = false;
        t.announced_to.insert(url.to_owned());
        match event {
            Some(Event::Started) => t.started = true,
            Some(Event::Completed) => {
                t.completed_pending = false;
                t.completed_sent = true;
            }
            _ => {}
        }
        if let Some(id) = a.tracker_id {
            t.tracker_ids.insert(url.to_owned(), id);
        }
        let min = Duration::from_secs(a.min_interval.unwrap_or(0).into());
        let interval = Duration::from_secs(a.interval.into()).max(min).clamp(
            self.config.min_announce_interval,
            self.config
                .max_announce_interval
                .max(self.config.min_announce_interval),
        );
        t.not_before = now + min;
        t.next_at = if t.completed_pending {
            now
        } else {
            now + interval
        };
        debug!(info_hash = %ih, %url, peers = a.peers.len(), ?interval, "announced");
        if !a.peers.is_empty() {
            match t.peers.try_send(a.peers) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.peer_batches_dropped += 1,
                // The torrent is going away; its removal will follow.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

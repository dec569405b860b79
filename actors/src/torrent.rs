//! The torrent actor: one task per torrent. It owns the metainfo, the
//! storage, the piece picker (folded in here: both are per torrent, and a
//! separate picker actor would add a mailbox hop per block batch and buy no
//! parallelism), the resume tracker, the peer registry and the statistics.
//!
//! Lifecycle: [`TorrentState::Checking`] (open the storage, trust resume
//! data or recheck), [`TorrentState::Downloading`], then
//! [`TorrentState::Complete`] once every piece is verified, written and
//! synced and the resume data says so; [`TorrentState::Error`] when the
//! storage fails (a write error stops the torrent with the error shown).
//!
//! Data path: peers send blocks in [`TorrentMsg::Exchange`]; complete pieces
//! wait in `pending_hash` for a hash-pool permit, verified pieces in
//! `pending_write` for a writer permit. Completions come back on `done_rx`,
//! whose capacity covers every permit, so the hash and writer threads'
//! `try_send` cannot fail; each completion carries its permit, so a slot is
//! free again only once the torrent has taken the result.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::metainfo::Metainfo;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use storage::{
    DiskIo, HashDone, HashHandle, HashJob, ResumePolicy, ResumeTracker, Storage, StorageConfig,
    StorageError, WriteDone, WriteJob,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::choker::{Candidate, Choker};
use crate::config::ClientConfig;
use crate::peer::{self, PeerCmd, PeerContext};
use crate::picker::{Bitfield, Block, PeerId, Picker, PickerConfig, Received, Strategy};
use crate::pipeline::RateMeter;
use crate::ratelimit::{self, Limiter};
use crate::session::BufferBudget;
use crate::tracker::{AnnounceProgress, TorrentRegistration, TrackerHandle};

/// Where a torrent's payload goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// `<dir>/<torrent name>`: a file, or a directory for a multi-file torrent.
    Directory(PathBuf),
    /// Raw-disk mode: every file at its hex offset in one device or image.
    Raw(PathBuf),
}

/// How to start a torrent.
#[derive(Clone, Debug)]
pub struct TorrentParams {
    /// The parsed torrent.
    pub meta: Arc<Metainfo>,
    /// Where the data goes.
    pub target: Target,
    /// Where resume data is kept.
    pub resume_file: PathBuf,
    /// Peers to connect to.
    pub peers: Vec<SocketAddr>,
    /// Piece order.
    pub strategy: Strategy,
    /// Keep serving once complete (a seed), instead of stopping.
    pub seed: bool,
    /// This torrent's upload limit, bytes per second.
    pub upload_limit: Option<u64>,
    /// This torrent's download limit, bytes per second.
    pub download_limit: Option<u64>,
}

/// Where a torrent is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TorrentState {
    /// Opening storage, reading resume data, rechecking.
    Checking,
    /// Fetching pieces.
    Downloading,
    /// Complete, and serving peers.
    Seeding,
    /// Every piece verified, written, synced and recorded; stopped.
    Complete,
    /// Stopped by a failure (disk full, write error, ...).
    Error(String),
}

impl TorrentState {
    /// Short lowercase name, for JSON and logs.
    pub fn name(&self) -> &'static str {
        match self {
            TorrentState::Checking => "checking",
            TorrentState::Downloading => "downloading",
            TorrentState::Seeding => "seeding",
            TorrentState::Complete => "complete",
            TorrentState::Error(_) => "error",
        }
    }
}

/// A torrent's published statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct TorrentStats {
    /// Lifecycle state.
    pub state: TorrentState,
    /// Bytes of accepted blocks received (duplicates excluded).
    pub bytes_down: u64,
    /// Bytes of blocks sent.
    pub bytes_up: u64,
    /// Download rate, bytes per second.
    pub rate_down: u64,
    /// Upload rate, bytes per second.
    pub rate_up: u64,
    /// Connected peers.
    pub peers: usize,
    /// Verified pieces.
    pub pieces_done: u32,
    /// Pieces in the torrent.
    pub pieces_total: u32,
    /// Pieces that failed their hash check.
    pub hash_failures: u64,
    /// Peers banned for hash failures.
    pub banned_peers: u64,
    /// Connections dropped for protocol violations.
    pub protocol_errors: u64,
    /// Odd messages tolerated rather than ending the connection (a late
    /// bitfield, a request we cannot serve, an unrequested block, ...).
    pub protocol_oddities: u64,
    /// Bytes of blocks received and thrown away: duplicates, blocks never
    /// requested, blocks of pieces already complete.
    pub bytes_wasted: u64,
    /// Buffer budget in use, process-wide, in bytes.
    pub budget_in_use: u64,
    /// Highest buffer budget use seen, process-wide, in bytes.
    pub budget_peak: u64,
    /// Messages waiting in this torrent's mailbox.
    pub mailbox_depth: usize,
    /// Commands waiting in the mailboxes of this torrent's peers, summed.
    pub peer_mailbox_depth: usize,
}

/// How a connection ended, for the reconnect policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFault {
    /// Connect failure, timeout, closed socket: may be retried.
    Network,
    /// The peer broke the protocol: retried with backoff, and refused for
    /// good after `max_protocol_strikes` such ends.
    Protocol,
    /// Input no honest peer sends (oversized frames, request floods), or a
    /// connection to ourselves: the address is never dialled again.
    Refused,
}

/// The torrent's answer to an exchange.
#[derive(Debug)]
pub struct ExchangeReply {
    /// Blocks to request from the peer now.
    pub requests: Vec<Block>,
    /// The peer broke the protocol (sent a block that fits no piece of the
    /// torrent): drop it.
    pub violation: Option<String>,
}

/// The torrent's mailbox.
#[derive(Debug)]
pub enum TorrentMsg {
    /// A peer finished its handshake; `cmds` reaches it.
    PeerConnected {
        /// The connection.
        id: PeerId,
        /// Its command mailbox.
        cmds: mpsc::Sender<PeerCmd>,
    },
    /// A connection ended (also sent when the connect failed).
    PeerGone {
        /// The connection.
        id: PeerId,
        /// Whose fault.
        fault: PeerFault,
        /// Why, for the log.
        reason: String,
    },
    /// The peer's bitfield.
    Bitfield {
        /// The connection.
        id: PeerId,
        /// Its bits, length already checked by the codec.
        bits: Bytes,
    },
    /// The peer has every piece (BEP 6).
    HaveAll {
        /// The connection.
        id: PeerId,
    },
    /// The peer has no pieces (BEP 6), after having announced some: it
    /// replaces them.
    HaveNone {
        /// The connection.
        id: PeerId,
    },
    /// The peer completed a piece.
    Have {
        /// The connection.
        id: PeerId,
        /// The piece.
        piece: u32,
    },
    /// The peer choked us: its outstanding requests are void.
    Choked {
        /// The connection.
        id: PeerId,
    },
    /// The peer rejected a request (BEP 6).
    Rejected {
        /// The connection.
        id: PeerId,
        /// The block.
        block: Block,
    },
    /// Requests to the peer timed out.
    TimedOut {
        /// The connection.
        id: PeerId,
        /// The blocks.
        blocks: Vec<Block>,
    },
    /// Blocks received (their budget travels with them) and, if `want > 0`,
    /// a request for up to `want` blocks to ask the peer for.
    Exchange {
        /// The connection.
        id: PeerId,
        /// Received blocks.
        blocks: Vec<(Block, Bytes)>,
        /// How many blocks the peer may request now.
        want: u32,
        /// The budget is paused: only blocks of pieces already started.
        partial_only: bool,
        /// The answer.
        reply: oneshot::Sender<ExchangeReply>,
    },
    /// More peer addresses (from the command line, a tracker, ...).
    AddPeers(Vec<SocketAddr>),
    /// A connection the remote side opened to us, with its handshake.
    Incoming(tokio::net::TcpStream, SocketAddr, protocol::wire::Handshake),
    /// A peer's interest in us and its transfer numbers (on change and
    /// about once a second).
    PeerStatus {
        /// The connection.
        id: PeerId,
        /// It wants something we have.
        interested: bool,
        /// Bytes per second it sends us.
        down_rate: u64,
        /// Bytes per second we send it.
        up_rate: u64,
        /// Bytes uploaded to it since the last status.
        uploaded: u64,
        /// Odd but tolerated messages it sent since the last status.
        oddities: u64,
    },
}

/// A handle to a running torrent.
#[derive(Clone)]
pub struct TorrentHandle {
    tx: mpsc::Sender<TorrentMsg>,
    stats: watch::Receiver<TorrentStats>,
}

impl TorrentHandle {
    /// The latest statistics, updated as they change and once per interval.
    pub fn stats(&self) -> watch::Receiver<TorrentStats> {
        self.stats.clone()
    }

    /// Hands over a connection a remote peer opened to us, without
    /// waiting: `false` if the torrent's mailbox is full or it stopped
    /// (the connection is then dropped).
    pub fn incoming(
        &self,
        stream: tokio::net::TcpStream,
        addr: SocketAddr,
        handshake: protocol::wire::Handshake,
    ) -> bool {
        self.tx
            .try_send(TorrentMsg::Incoming(stream, addr, handshake))
            .is_ok()
    }

    /// Adds peer addresses to connect to. Fails if the torrent has stopped.
    pub async fn add_peers(&self, peers: Vec<SocketAddr>) -> Result<(), TorrentStopped> {
        self.tx
            .send(TorrentMsg::AddPeers(peers))
            .await
            .map_err(|_| TorrentStopped)
    }
}

/// The torrent's task has ended.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the torrent has stopped")]
pub struct TorrentStopped;

/// Process-wide resources a torrent uses.
#[derive(Clone)]
pub(crate) struct Shared {
    pub config: Arc<ClientConfig>,
    pub budget: Arc<BufferBudget>,
    pub hash: HashHandle,
    /// One permit per hash queue slot, shared by every torrent.
    pub hash_permits: Arc<Semaphore>,
    pub disk: DiskIo,
    pub peer_id: [u8; 20],
    /// One permit per connection, process-wide.
    pub connections: Arc<Semaphore>,
    /// The process-wide tracker session.
    pub tracker: TrackerHandle,
    /// Our listen port (0 until the session listens), for announces.
    pub listen_port: Arc<AtomicU16>,
    /// Process-wide rate limits.
    pub up_limit: Option<Arc<Limiter>>,
    pub down_limit: Option<Arc<Limiter>>,
}

/// A completion from the hash or disk threads.
enum Done {
    Hash(HashDone, OwnedSemaphorePermit),
    Write(WriteDone, OwnedSemaphorePermit),
    Sync(Result<(), StorageError>),
}

/// Spawns a torrent actor. It stops when `cancel` fires or it fails.
pub(crate) fn spawn(
    params: TorrentParams,
    shared: Shared,
    cancel: CancellationToken,
) -> (TorrentHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(shared.config.torrent_mailbox);
    let pieces = params.meta.info.piece_count();
    let (stats_tx, stats_rx) = watch::channel(TorrentStats {
        state: TorrentState::Checking,
        bytes_down: 0,
        bytes_up: 0,
        rate_down: 0,
        rate_up: 0,
        peers: 0,
        pieces_done: 0,
        pieces_total: pieces,
        hash_failures: 0,
        banned_peers: 0,
        protocol_errors: 0,
        protocol_oddities: 0,
        bytes_wasted: 0,
        budget_in_use: 0,
        budget_peak: 0,
        mailbox_depth: 0,
        peer_mailbox_depth: 0,
    });
    let span = tracing::info_span!("torrent", info_hash = %params.meta.info_hash.to_hex());
    let self_tx = tx.clone();
    let join = tokio::spawn(tracing::Instrument::instrument(
        async move {
            run(params, shared, cancel, rx, self_tx, stats_tx).await;
        },
        span,
    ));
    (
        TorrentHandle {
            tx,
            stats: stats_rx,
        },
        join,
    )
}

struct PeerEntry {
    addr: SocketAddr,
    cmds: Option<mpsc::Sender<PeerCmd>>,
    cancel: CancellationToken,
    /// We told it we are interested.
    interested: bool,
    /// It is interested in us.
    wants_us: bool,
    down_rate: u64,
    up_rate: u64,
    /// It has every piece.
    is_seed: bool,
}

#[derive(Default)]
struct AddrState {
    connected: bool,
    failures: u32,
    /// Connections to it that ended in a protocol error.
    protocol_strikes: u32,
    next_try: Option<Instant>,
    given_up: bool,
    /// Never dialled again, even if a tracker lists it anew.
    refused: bool,
}

struct Torrent {
    shared: Shared,
    meta: Arc<Metainfo>,
    storage: Storage,
    picker: Picker,
    resume: ResumeTracker,
    resume_file: PathBuf,
    state: TorrentState,
    stats: watch::Sender<TorrentStats>,
    self_tx: mpsc::Sender<TorrentMsg>,
    cancel: CancellationToken,
    peers: HashMap<PeerId, PeerEntry>,
    addrs: HashMap<SocketAddr, AddrState>,
    banned: HashSet<SocketAddr>,
    next_peer: u64,
    tasks: JoinSet<()>,
    pending_hash: VecDeque<(u32, Vec<Bytes>)>,
    pending_write: VecDeque<storage::VerifiedPiece>,
    write_permits: Arc<Semaphore>,
    done_tx: mpsc::Sender<Done>,
    /// A sync for a checkpoint is in flight.
    checkpoint: Option<storage::Checkpoint>,
    /// The final sync has been asked for.
    finishing: bool,
    /// A writer queue was full despite our permit: wait before retrying.
    write_backoff: bool,
    bytes_down: u64,
    down: RateMeter,
    hash_failures: u64,
    banned_peers: u64,
    protocol_errors: u64,
    protocol_oddities: u64,
    bytes_wasted: u64,
    bytes_up: u64,
    up: RateMeter,
    seed: bool,
    choker: Choker,
    up_limits: Vec<Arc<Limiter>>,
    down_limits: Vec<Arc<Limiter>>,
    /// Addresses of the last connections that ended, for a ban decided
    /// after the peer left.
    recently_gone: VecDeque<(PeerId, SocketAddr)>,
    /// Announce counters for the tracker session, when registered.
    progress: Option<watch::Sender<AnnounceProgress>>,
    announced_complete: bool,
}

/// Ended connections whose address a late ban can still find.
const RECENTLY_GONE: usize = 1024;

/// Peers from the tracker session wait here; it drops a batch that finds the
/// channel full (the next announce brings them again).
const TRACKER_PEER_BATCHES: usize = 16;

async fn run(
    params: TorrentParams,
    shared: Shared,
    cancel: CancellationToken,
    mut rx: mpsc::Receiver<TorrentMsg>,
    self_tx: mpsc::Sender<TorrentMsg>,
    stats: watch::Sender<TorrentStats>,
) {
    let meta = params.meta.clone();
    let started = Instant::now();
    let (storage, have) = match check(&params, &shared).await {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, "torrent failed to start");
            stats.send_modify(|s| s.state = TorrentState::Error(e));
            return;
        }
    };
    let info = &meta.info;
    let mut bits = Bitfield::new(info.piece_count());
    for (i, h) in have.iter().enumerate() {
        if *h {
            bits.set(i as u32, true);
        }
    }
    let picker = match Picker::new(
        info.piece_count(),
        info.piece_length,
        info.total_length,
        &bits,
        PickerConfig {
            strategy: params.strategy,
            ..shared.config.picker
        },
        SmallRng::from_os_rng(),
    ) {
        Ok(p) => p,
        Err(e) => {
            stats.send_modify(|s| s.state = TorrentState::Error(e.to_string()));
            return;
        }
    };
    info!(
        have = bits.count(),
        pieces = info.piece_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checked"
    );
    let write_cap = storage.write_capacity().max(1);
    let hash_cap = shared.hash.capacity();
    // Every permit can have one completion waiting, plus the one sync.
    let (done_tx, mut done_rx) = mpsc::channel(write_cap + hash_cap + 2);
    let policy: ResumePolicy = shared.config.resume;
    let shared_choker = shared.config.choker;
    let mut up_limits: Vec<Arc<Limiter>> = shared.up_limit.iter().cloned().collect();
    up_limits.extend(params.upload_limit.map(ratelimit::limiter));
    let mut down_limits: Vec<Arc<Limiter>> = shared.down_limit.iter().cloned().collect();
    down_limits.extend(params.download_limit.map(ratelimit::limiter));
    let mut t = Torrent {
        resume: ResumeTracker::new(have, policy, Instant::now()),
        write_permits: Arc::new(Semaphore::new(write_cap)),
        shared,
        meta,
        storage,
        picker,
        resume_file: params.resume_file,
        state: TorrentState::Downloading,
        stats,
        self_tx,
        cancel: cancel.clone(),
        peers: HashMap::new(),
        addrs: HashMap::new(),
        banned: HashSet::new(),
        next_peer: 0,
        tasks: JoinSet::new(),
        pending_hash: VecDeque::new(),
        pending_write: VecDeque::new(),
        done_tx,
        checkpoint: None,
        finishing: false,
        write_backoff: false,
        bytes_down: 0,
        down: RateMeter::new(Duration::from_secs(5), 10),
        hash_failures: 0,
        banned_peers: 0,
        protocol_errors: 0,
        protocol_oddities: 0,
        bytes_wasted: 0,
        bytes_up: 0,
        up: RateMeter::new(Duration::from_secs(5), 10),
        seed: params.seed,
        choker: Choker::new(shared_choker),
        up_limits,
        down_limits,
        recently_gone: VecDeque::new(),
        progress: None,
        announced_complete: false,
    };
    let (tracker_peers_tx, mut tracker_peers) = mpsc::channel(TRACKER_PEER_BATCHES);
    t.register_with_trackers(tracker_peers_tx).await;
    for a in params.peers {
        t.addrs.entry(a).or_default();
    }
    t.check_complete();
    t.connect_peers();
    t.publish();
    let mut tick =
        tokio::time::interval(t.shared.config.stats_interval.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if matches!(t.state, TorrentState::Complete | TorrentState::Error(_)) {
            break;
        }
        let hash_permits = t.shared.hash_permits.clone();
        let write_permits = t.write_permits.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(done) = done_rx.recv() => t.on_done(done).await,
            permit = hash_permits.acquire_owned(), if !t.pending_hash.is_empty() => {
                if let Ok(p) = permit { t.submit_hash(p); }
            }
            permit = write_permits.acquire_owned(), if !t.pending_write.is_empty() && !t.write_backoff => {
                if let Ok(p) = permit { t.submit_write(p); }
            }
            _ = tokio::time::sleep(Duration::from_millis(5)), if t.write_backoff => {
                t.write_backoff = false;
            }
            msg = rx.recv() => match msg {
                Some(m) => t.on_msg(m),
                None => break,
            },
            _ = tick.tick() => {
                t.connect_peers();
                t.maybe_checkpoint();
                t.choke_round();
                t.publish();
            }
            Some(_) = t.tasks.join_next(), if !t.tasks.is_empty() => {}
            Some(addrs) = tracker_peers.recv() => t.on_msg(TorrentMsg::AddPeers(addrs)),
        }
        t.announce_completion().await;
    }
    t.shutdown(&mut rx, &mut done_rx).await;
}

/// Opens the storage and decides which pieces are already ours.
async fn check(params: &TorrentParams, shared: &Shared) -> Result<(Storage, Vec<bool>), String> {
    let info = params.meta.info.clone();
    let target = params.target.clone();
    let disk = shared.disk.clone();
    let hash = shared.hash.clone();
    let resume_file = params.resume_file.clone();
    let info_hash = params.meta.info_hash.0;
    let recheck_cfg = shared.config.recheck.clone();
    tokio::task::spawn_blocking(move || {
        // A target that does not exist yet holds nothing: skip reading it.
        let fresh = match &target {
            Target::Directory(dir) => !dir.join(&info.name).exists(),
            Target::Raw(path) => !path.exists(),
        };
        let cfg = StorageConfig::default();
        let storage = match &target {
            Target::Directory(dir) => Storage::open_info(&disk, &info, dir, &cfg),
            Target::Raw(path) => Storage::open_info_raw(&disk, &info, path, &cfg),
        }
        .map_err(|e| e.to_string())?;
        let n = info.piece_count() as usize;
        if fresh {
            return Ok((storage, vec![false; n]));
        }
        let loaded = storage::resume::load(&resume_file);
        let checked =
            storage::resume::validate(&storage, &info_hash, loaded).map_err(|e| e.to_string())?;
        if let Some(r) = &checked.reason {
            info!(reason = %r, pieces = checked.recheck.len(), "rechecking");
        }
        let mut have = checked.have;
        if !checked.recheck.is_empty() {
            let report = storage::recheck(
                &storage,
                &info.pieces,
                Some(&checked.recheck),
                &hash,
                &recheck_cfg,
            )
            .map_err(|e| format!("recheck: {e}"))?;
            for (h, g) in have.iter_mut().zip(report.good) {
                *h |= g;
            }
        }
        Ok((storage, have))
    })
    .await
    .map_err(|e| format!("checking task failed: {e}"))?
}

impl Torrent {
    fn publish(&mut self) {
        let now = Instant::now();
        let s = TorrentStats {
            state: self.state.clone(),
            bytes_down: self.bytes_down,
            bytes_up: self.bytes_up,
            rate_down: self.down.rate(now),
            rate_up: self.up.rate(now),
            peers: self.peers.values().filter(|p| p.cmds.is_some()).count(),

            pieces_done: self.picker.num_pieces() - self.picker.missing_count(),
            pieces_total: self.picker.num_pieces(),
            hash_failures: self.hash_failures,
            banned_peers: self.banned_peers,
            protocol_errors: self.protocol_errors,
            protocol_oddities: self.protocol_oddities,
            bytes_wasted: self.bytes_wasted,
            budget_in_use: self.shared.budget.in_use(),
            budget_peak: self.shared.budget.peak(),
            mailbox_depth: self.self_tx.max_capacity() - self.self_tx.capacity(),
            peer_mailbox_depth: self
                .peers
                .values()
                .filter_map(|p| p.cmds.as_ref())
                .map(|tx| tx.max_capacity() - tx.capacity())
                .sum(),
        };
        if let Some(p) = &self.progress {
            let left = (self.picker.missing_count() as u64)
                .saturating_mul(u64::from(self.meta.info.piece_length))
                .min(self.meta.info.total_length);
            p.send_replace(AnnounceProgress {
                uploaded: self.bytes_up,
                downloaded: self.bytes_down,
                left,
            });
        }
        self.stats.send_replace(s);
    }

    /// Hands the torrent to the tracker session if it has trackers.
    async fn register_with_trackers(&mut self, peers: mpsc::Sender<Vec<SocketAddr>>) {
        if self.meta.trackers.is_empty() {
            return;
        }
        let (tx, rx) = watch::channel(AnnounceProgress::default());
        self.progress = Some(tx);
        self.publish();
        let reg = TorrentRegistration {
            info_hash: self.meta.info_hash,
            tiers: self.meta.trackers.clone(),
            peer_id: self.shared.peer_id,
            port: self.shared.listen_port.load(Ordering::Relaxed),
            progress: rx,
            peers,
        };
        if let Err(e) = self.shared.tracker.add_torrent(reg).await {
            warn!(error = %e, "not announcing to trackers");
            self.progress = None;
        }
    }

    /// Tells the trackers once that the download completed.
    async fn announce_completion(&mut self) {
        let done = matches!(self.state, TorrentState::Seeding | TorrentState::Complete);
        if !done || self.announced_complete || self.progress.is_none() {
            return;
        }
        self.announced_complete = true;
        self.publish();
        // A torrent that was complete from the start is not a completion.
        if self.bytes_down > 0
            && let Err(e) = self.shared.tracker.completed(self.meta.info_hash).await
        {
            warn!(error = %e, "announcing completion failed");
        }
    }

    fn fail(&mut self, reason: String) {
        warn!(%reason, "torrent stopped");
        self.state = TorrentState::Error(reason);
        self.publish();
    }

    /// Starts connections to known addresses, within the limit.
    fn connect_peers(&mut self) {
        let serving = self.seed && self.state == TorrentState::Seeding;
        if (self.picker.is_complete() && !serving) || self.cancel.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let limit = self.shared.config.max_peers_per_torrent;
        let mut slots = limit.saturating_sub(self.peers.len());
        if slots == 0 {
            return;
        }
        let ready: Vec<SocketAddr> = self
            .addrs
            .iter()
            .filter(|(a, s)| {
                !s.connected
                    && !s.given_up
                    && !self.banned.contains(*a)
                    && s.next_try.is_none_or(|t| t <= now)
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in ready {
            if slots == 0 {
                break;
            }
            let Ok(permit) = self.shared.connections.clone().try_acquire_owned() else {
                break;
            };
            slots -= 1;
            if let Some(s) = self.addrs.get_mut(&addr) {
                s.connected = true;
            }
            let ctx = self.new_peer(addr);
            self.tasks.spawn(async move {
                let _permit = permit;
                peer::connect_and_run(ctx).await;
            });
        }
    }

    fn on_msg(&mut self, msg: TorrentMsg) {
        match msg {
            TorrentMsg::PeerConnected { id, cmds } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.cmds = Some(cmds);
                    if let Some(a) = self.addrs.get_mut(&p.addr) {
                        a.failures = 0;
                    }
                    debug!(peer = id.0, addr = %p.addr, "connected");
                }
            }
            TorrentMsg::PeerGone { id, fault, reason } => self.peer_gone(id, fault, reason),
            TorrentMsg::Bitfield { id, bits } => {
                let n = self.picker.num_pieces();
                match Bitfield::from_bytes(&bits, n) {
                    Ok(b) => {
                        if let Err(e) = self.picker.peer_bitfield(id, &b) {
                            self.drop_peer(id, format!("bad bitfield: {e}"));
                        } else if b.is_full() {
                            self.drop_if_both_seeds(id);
                        }
                    }
                    Err(e) => self.drop_peer(id, format!("bad bitfield: {e}")),
                }
                self.update_interest(id);
            }
            TorrentMsg::HaveAll { id } => {
                self.picker.peer_have_all(id);
                self.update_interest(id);
                self.drop_if_both_seeds(id);
            }
            TorrentMsg::HaveNone { id } => {
                self.picker.peer_have_none(id);
                if let Some(p) = self.peers.get_mut(&id) {
                    p.is_seed = false;
                }
                self.update_interest(id);
            }
            TorrentMsg::Have { id, piece } => match self.picker.peer_have(id, piece) {
                Ok(true) => self.update_interest(id),
                // libtorrent: a redundant HAVE is ignored.
                Ok(false) => self.protocol_oddities += 1,
                Err(e) => self.drop_peer(id, format!("bad have: {e}")),
            },
            TorrentMsg::Choked { id } => {
                self.picker.peer_choked(id);
            }
            TorrentMsg::Rejected { id, block } => {
                self.picker.request_rejected(id, block);
            }
            TorrentMsg::TimedOut { id, blocks } => {
                for b in blocks {
                    self.picker.request_timed_out(id, b);
                }
            }
            TorrentMsg::Exchange {
                id,
                blocks,
                want,
                partial_only,
                reply,
            } => {
                let r = self.exchange(id, blocks, want, partial_only);
                // The peer may have gone meanwhile; then nothing waits.
                let _ = reply.send(r);
            }
            TorrentMsg::AddPeers(addrs) => {
                let port = self.shared.listen_port.load(Ordering::Relaxed);
                for a in addrs {
                    // Ourselves, as a tracker lists us back.
                    let own = a.port() == port && (a.ip().is_loopback() || a.ip().is_unspecified());
                    if own || self.banned.contains(&a) {
                        continue;
                    }
                    let s = self.addrs.entry(a).or_default();
                    if s.given_up && !s.refused && s.failures > 0 {
                        // Heard of again (a tracker lists it): try anew.
                        *s = AddrState::default();
                    }
                }
                self.connect_peers();
            }
            TorrentMsg::Incoming(stream, addr, handshake) => {
                let full = self.peers.len() >= self.shared.config.max_peers_per_torrent;
                let done = self.picker.is_complete() && !self.seed;
                if full || done || self.banned.contains(&addr) {
                    return;
                }
                let Ok(permit) = self.shared.connections.clone().try_acquire_owned() else {
                    debug!(%addr, "process connection limit reached; incoming dropped");
                    return;
                };
                let ctx = self.new_peer(addr);
                self.tasks.spawn(async move {
                    let _permit = permit;
                    peer::run(stream, Some(handshake), ctx).await;
                });
            }
            TorrentMsg::PeerStatus {
                id,
                interested,
                down_rate,
                up_rate,
                uploaded,
                oddities,
            } => {
                self.bytes_up += uploaded;
                self.protocol_oddities += oddities;
                self.up.record(Instant::now(), uploaded);
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                p.down_rate = down_rate;
                p.up_rate = up_rate;
                if p.wants_us != interested {
                    p.wants_us = interested;
                    if interested {
                        if self.choker.interested(id, Instant::now()) {
                            self.send_choke(id, false);
                        }
                    } else if self.choker.remove(id) {
                        self.send_choke(id, true);
                    }
                }
            }
        }
    }

    /// Registers a new connection to `addr` and returns what its task needs.
    fn new_peer(&mut self, addr: SocketAddr) -> PeerContext {
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        let cancel = self.cancel.child_token();
        self.peers.insert(
            id,
            PeerEntry {
                addr,
                cmds: None,
                cancel: cancel.clone(),
                interested: false,
                wants_us: false,
                down_rate: 0,
                up_rate: 0,
                is_seed: false,
            },
        );
        PeerContext {
            id,
            addr,
            info_hash: self.meta.info_hash.0,
            our_id: self.shared.peer_id,
            piece_count: self.picker.num_pieces(),
            have: self.picker.have_bitfield().clone(),
            torrent: self.self_tx.clone(),
            budget: self.shared.budget.clone(),
            config: self.shared.config.clone(),
            cancel,
            storage: self.storage.clone(),
            up_limits: self.up_limits.clone(),
            down_limits: self.down_limits.clone(),
        }
    }

    /// Tells a peer the choker's decision; a peer whose mailbox is full is
    /// dropped (a lost unchoke would leave it waiting forever).
    fn send_choke(&mut self, id: PeerId, choke: bool) {
        let Some(tx) = self.peers.get(&id).and_then(|p| p.cmds.as_ref()) else {
            return;
        };
        if tx.try_send(PeerCmd::Choke(choke)).is_err() {
            self.drop_peer(id, "peer mailbox full".into());
        }
    }

    /// Runs the choker when a round is due.
    fn choke_round(&mut self) {
        let now = Instant::now();
        if !self.choker.due(now) {
            return;
        }
        let candidates: Vec<Candidate> = self
            .peers
            .iter()
            .filter(|(_, p)| p.cmds.is_some())
            .map(|(id, p)| Candidate {
                id: *id,
                interested: p.wants_us,
                down_rate: p.down_rate,
                up_rate: p.up_rate,
            })
            .collect();
        let seeding = self.picker.is_complete();
        let d = self.choker.round(now, seeding, &candidates);
        for id in d.choke {
            self.send_choke(id, true);
        }
        for id in d.unchoke {
            self.send_choke(id, false);
        }
    }

    /// A peer that has everything is of no use to a complete torrent.
    fn drop_if_both_seeds(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.is_seed = true;
        }
        if self.picker.is_complete() {
            self.drop_peer(id, "both sides are seeds".into());
        }
    }

    fn exchange(
        &mut self,
        id: PeerId,
        blocks: Vec<(Block, Bytes)>,
        want: u32,
        partial_only: bool,
    ) -> ExchangeReply {
        let now = Instant::now();
        let mut violation = None;
        let mut dropped = 0u64;
        for (block, data) in blocks {
            let len = u64::from(block.length);
            if violation.is_some() {
                dropped += len;
                continue;
            }
            match self.picker.block_received(id, block, data) {
                Received::Accepted { cancel, complete } => {
                    self.bytes_down += len;
                    self.down.record(now, len);
                    for other in cancel {
                        // Policy: a cancel that finds the peer's mailbox full
                        // is dropped; the block then arrives as a duplicate
                        // and its budget is released here.
                        if let Some(tx) = self.peers.get(&other).and_then(|p| p.cmds.as_ref()) {
                            let _ = tx.try_send(PeerCmd::Cancel(block));
                        }
                    }
                    if let Some(c) = complete {
                        self.pending_hash.push_back((c.index, c.blocks));
                    }
                }
                Received::Duplicate => dropped += len,
                Received::Unrequested => {
                    // libtorrent counts it as waste and keeps the peer.
                    dropped += len;
                    self.protocol_oddities += 1;
                    debug!(
                        peer = id.0,
                        block = %format_args!("{}:{}+{}", block.piece, block.begin, block.length),
                        "block never requested; dropped"
                    );
                }
                Received::Invalid => {
                    dropped += len;
                    violation = Some(format!(
                        "sent block {}:{}+{} that fits no piece of the torrent",
                        block.piece, block.begin, block.length
                    ));
                }
            }
        }
        self.release(dropped);
        self.bytes_wasted += dropped;
        let requests = if violation.is_none() && want > 0 && !self.picker.is_banned(id) {
            if partial_only {
                self.picker.pick_partial(id, want as usize, now)
            } else {
                self.picker.pick(id, want as usize, now)
            }
        } else {
            Vec::new()
        };
        ExchangeReply {
            requests,
            violation,
        }
    }

    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.shared.budget.release(bytes);
        }
    }

    fn update_interest(&mut self, id: PeerId) {
        let want = self.picker.interesting(id);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.interested == want {
            return;
        }
        let Some(tx) = &p.cmds else { return };
        match tx.try_send(PeerCmd::Interested(want)) {
            Ok(()) => p.interested = want,
            // Policy: interest must not be lost; a peer this far behind on
            // its mailbox is dropped.
            Err(_) => self.drop_peer(id, "peer mailbox full".into()),
        }
    }

    /// Bans a peer for bad data: dropped now, its address never dialled
    /// again (also when the verdict comes after it left: smart ban).
    fn ban(&mut self, id: PeerId, why: &str) {
        self.banned_peers += 1;
        let addr = self.peers.get(&id).map(|p| p.addr).or_else(|| {
            self.recently_gone
                .iter()
                .find(|(gone, _)| *gone == id)
                .map(|(_, a)| *a)
        });
        if let Some(addr) = addr {
            warn!(%addr, why, "banning peer");
            self.banned.insert(addr);
        }
        self.drop_peer(id, "banned".into());
    }

    fn drop_peer(&mut self, id: PeerId, reason: String) {
        if let Some(p) = self.peers.get(&id) {
            debug!(peer = id.0, addr = %p.addr, %reason, "dropping peer");
            p.cancel.cancel();
        }
    }

    fn peer_gone(&mut self, id: PeerId, fault: PeerFault, reason: String) {
        self.picker.peer_gone(id);
        self.choker.remove(id);
        let Some(p) = self.peers.remove(&id) else {
            return;
        };
        if self.recently_gone.len() >= RECENTLY_GONE {
            self.recently_gone.pop_front();
        }
        self.recently_gone.push_back((id, p.addr));
        debug!(peer = id.0, addr = %p.addr, ?fault, %reason, "peer gone");
        let config = &self.shared.config;
        let (max, base, strikes) = (
            config.reconnect_attempts,
            config.reconnect_backoff,
            config.max_protocol_strikes,
        );
        if fault != PeerFault::Network {
            self.protocol_errors += 1;
        }
        let a = self.addrs.get_mut(&p.addr);
        match (fault, a) {
            (PeerFault::Refused, a) => {
                warn!(addr = %p.addr, %reason, "peer refused for good");
                if let Some(a) = a {
                    a.refused = true;
                }
            }
            (PeerFault::Protocol, Some(a)) => {
                a.protocol_strikes += 1;
                a.refused = a.protocol_strikes >= strikes;
                let then = if a.refused {
                    "refused for good"
                } else {
                    "will retry"
                };
                warn!(addr = %p.addr, %reason, strikes = a.protocol_strikes, "peer broke the protocol; {then}");
            }
            (PeerFault::Protocol, None) => {
                warn!(addr = %p.addr, %reason, "peer broke the protocol");
            }
            (PeerFault::Network, _) => {}
        }
        if let Some(a) = self.addrs.get_mut(&p.addr) {
            a.connected = false;
            if a.refused {
                a.given_up = true;
            } else {
                a.failures += 1;
                a.given_up = a.failures > max;
                let shift = a.failures.saturating_sub(1).min(10);
                a.next_try = Some(Instant::now() + base * (1u32 << shift));
            }
        }
        self.connect_peers();
    }

    fn submit_hash(&mut self, permit: OwnedSemaphorePermit) {
        let Some((index, blocks)) = self.pending_hash.pop_front() else {
            return;
        };
        let Some(expected) = self.meta.info.piece_hash(index).copied() else {
            return;
        };
        let tx = self.done_tx.clone();
        let job = HashJob {
            piece: index,
            blocks,
            expected,
            reply: Box::new(move |d| {
                // Cannot fail: the channel has a slot per permit.
                let _ = tx.try_send(Done::Hash(d, permit));
            }),
        };
        if let Err(e) = self.shared.hash.try_submit(job) {
            // Only if the pool is stopping; the permit bounded the queue.
            let job = e.into_inner();
            self.pending_hash.push_front((job.piece, job.blocks));
        }
    }

    fn submit_write(&mut self, permit: OwnedSemaphorePermit) {
        let Some(piece) = self.pending_write.pop_front() else {
            return;
        };
        let tx = self.done_tx.clone();
        let job = WriteJob {
            piece,
            reply: Box::new(move |d| {
                let _ = tx.try_send(Done::Write(d, permit));
            }),
        };
        if let Err(e) = self.storage.try_write(job) {
            // Another torrent on the same device filled the writer's queue:
            // keep the piece and try again shortly.
            let job = e.into_inner();
            self.pending_write.push_front(job.piece);
            self.write_backoff = true;
        }
    }

    async fn on_done(&mut self, done: Done) {
        match done {
            Done::Hash(HashDone::Verified(piece), _permit) => {
                // Smart ban: a good copy judges the senders of earlier bad ones.
                for id in self.picker.piece_passed(piece.piece(), piece.blocks()) {
                    self.ban(id, "sent a block that differs from the verified piece");
                }
                self.pending_write.push_back(piece);
            }
            Done::Hash(HashDone::Mismatch { piece, blocks }, _permit) => {
                let bytes = bytes_of(&blocks);
                self.release(bytes);
                self.hash_failures += 1;
                match self.picker.piece_failed_blocks(piece, &blocks) {
                    Ok(f) => {
                        warn!(
                            piece,
                            contributors = f.contributors.len(),
                            "hash check failed"
                        );
                        for id in f.newly_banned {
                            self.ban(id, "involved in repeated hash failures");
                        }
                    }
                    Err(e) => warn!(error = %e, "picker refused a hash failure"),
                }
            }
            Done::Write(WriteDone { piece, result }, _permit) => {
                let size = u64::from(self.picker.piece_size(piece));
                self.release(size);
                match result {
                    Ok(()) => {
                        if let Err(e) = self.picker.piece_verified(piece) {
                            warn!(error = %e, "picker refused a verified piece");
                        }
                        self.resume.written(piece);
                        for p in self.peers.values() {
                            if let Some(tx) = &p.cmds {
                                // Policy: a HAVE that finds a full mailbox is
                                // dropped; it only informs the remote peer.
                                let _ = tx.try_send(PeerCmd::Have(piece));
                            }
                        }
                        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
                        for id in ids {
                            self.update_interest(id);
                        }
                        self.check_complete();
                    }
                    Err(e) => self.fail(format!("writing piece {piece}: {e}")),
                }
            }
            Done::Sync(result) => {
                let cp = self.checkpoint.take();
                match (result, cp) {
                    (Ok(()), Some(cp)) => {
                        self.resume.commit(cp, Instant::now());
                        if let Err(e) = self.save_resume().await {
                            warn!(error = %e, "saving resume data failed");
                        }
                        if self.finishing && self.state == TorrentState::Downloading {
                            if self.resume.unsynced() > 0 {
                                // Pieces written after that checkpoint began.
                                self.start_sync();
                            } else {
                                info!("download complete");
                                self.state = if self.seed {
                                    TorrentState::Seeding
                                } else {
                                    TorrentState::Complete
                                };
                                self.publish();
                            }
                        }
                    }
                    (Err(e), cp) => {
                        if let Some(cp) = cp {
                            let _ = self.resume.abort(cp);
                        }
                        self.fail(format!("syncing to disk: {e}"));
                    }
                    (Ok(()), None) => {}
                }
            }
        }
    }

    async fn save_resume(&self) -> Result<(), String> {
        let storage = self.storage.clone();
        let path = self.resume_file.clone();
        let data = storage::ResumeData {
            info_hash: self.meta.info_hash.0,
            stamps: Vec::new(),
            have: self.resume.have().to_vec(),
        };
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            let stamps = storage.stamps().map_err(|e| e.to_string())?;
            storage::resume::save(&path, &storage::ResumeData { stamps, ..data })
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn start_sync(&mut self) {
        let cp = self.resume.begin();
        self.checkpoint = Some(cp);
        let tx = self.done_tx.clone();
        // `Storage::sync` waits for room in the writer queues; on a runtime
        // worker that wait stalls every task (stats, signals) for as long
        // as a slow disk takes to drain a full queue.
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || {
            storage.sync(Box::new(move |r| {
                let _ = tx.try_send(Done::Sync(r));
            }));
        });
    }

    fn maybe_checkpoint(&mut self) {
        if self.checkpoint.is_none() && !self.finishing && self.resume.due(Instant::now()) {
            self.start_sync();
        }
    }

    fn check_complete(&mut self) {
        if self.finishing || !self.picker.is_complete() {
            return;
        }
        self.finishing = true;
        // Connections to other seeds are of no use now; without seeding,
        // none are.
        for p in self.peers.values() {
            if !self.seed || p.is_seed {
                p.cancel.cancel();
            }
        }
        // A checkpoint in flight finishes first; its completion sees
        // `finishing` and syncs again if pieces were written since.
        if self.checkpoint.is_none() {
            self.start_sync();
        }
    }

    async fn shutdown(
        &mut self,
        rx: &mut mpsc::Receiver<TorrentMsg>,
        done_rx: &mut mpsc::Receiver<Done>,
    ) {
        self.cancel.cancel();
        // Peers may be blocked sending to us: keep draining while they stop.
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => if joined.is_none() { break },
                Some(m) = rx.recv() => {
                    if let TorrentMsg::Exchange { blocks, reply, .. } = m {
                        let bytes: u64 = blocks.iter().map(|(b, _)| u64::from(b.length)).sum();
                        self.release(bytes);
                        drop(reply);
                    }
                }
            }
        }
        // Let the writes already queued land, then record what is on disk.
        let in_flight = self.write_permits.clone();
        let cap = self.storage.write_capacity().max(1) as u32;
        loop {
            tokio::select! {
                Some(d) = done_rx.recv() => match d {
                    Done::Write(WriteDone { piece, result: Ok(()) }, _p) => {
                        self.release(u64::from(self.picker.piece_size(piece)));
                        self.resume.written(piece);
                    }
                    Done::Write(WriteDone { piece, .. }, _p) => {
                        self.release(u64::from(self.picker.piece_size(piece)));
                    }
                    Done::Hash(d, _p) => {
                        let bytes = match &d {
                            HashDone::Verified(v) => v.len(),
                            HashDone::Mismatch { blocks, .. } => bytes_of(blocks),
                        };
                        self.release(bytes);
                    }
                    Done::Sync(_) => {}
                },
                all = in_flight.acquire_many(cap) => {
                    drop(all);
                    break;
                }
            }
        }
        for (_, blocks) in self.pending_hash.drain(..) {
            let bytes = bytes_of(&blocks);
            self.shared.budget.release(bytes);
        }
        for p in self.pending_write.drain(..) {
            self.shared.budget.release(p.len());
        }
        if self.progress.is_some() {
            // Bounded inside the tracker session by its stop timeout.
            let _ = self
                .shared
                .tracker
                .remove_torrent(self.meta.info_hash)
                .await;
        }
        if !matches!(self.state, TorrentState::Complete) && self.resume.unsynced() > 0 {
            let storage = self.storage.clone();
            let synced = tokio::task::spawn_blocking(move || storage.sync_blocking()).await;
            if let Ok(Ok(())) = synced {
                let cp = self.resume.begin();
                self.resume.commit(cp, Instant::now());
                if let Err(e) = self.save_resume().await {
                    warn!(error = %e, "saving resume data failed");
                }
            }
        }
        self.publish();
    }
}

/// Bytes held by a piece's blocks (what they hold of the buffer budget).
fn bytes_of(blocks: &[Bytes]) -> u64 {
    blocks.iter().map(|b| b.len() as u64).sum()
}

/// What the picker thinks of a strategy name.
pub fn parse_strategy(sequential: bool) -> Strategy {
    if sequential {
        Strategy::Sequential
    } else {
        Strategy::RarestFirst
    }
}

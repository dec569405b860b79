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
//! wait in `pending_hash` for a hash-pool permit. A piece submitted with a
//! writer permit too goes from the hash worker straight to the disk writer
//! (one wake-up of this actor per piece, by the write completion); without
//! one, or when the writer's queue is full, the verified piece comes back
//! and waits in `pending_write` for a writer permit. Completions come back
//! in a `done::DoneBox`, whose capacity covers every permit, so the hash
//! and writer threads' pushes cannot fail; each completion carries its
//! permit, so a slot is free again only once the torrent has taken the
//! result. A written piece does not wake the actor (its budget is returned
//! by the writing thread): the actor drains the box whenever it runs, and
//! on a short timer while writes are out.
//!
//! The actor's methods are split by concern: `peers` (address book,
//! connections, reconnect policy, choking), `pieces` (the data path
//! and checkpoints) and `streams` (priority changes, stream readers and
//! their time-critical windows); the file selection is the plain struct in
//! [`selection`]; its vocabulary is in [`msg`].
//!
//! Completion means every *wanted* piece (of a file not skipped) is
//! verified, written and synced; pieces of skipped files are fetched only
//! when a stream reads them or when they share bytes with a wanted file.

use std::collections::{HashMap, VecDeque};
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
    DiskIo, HashDone, HashHandle, ResumePolicy, ResumeTracker, Storage, StorageConfig, WriteDone,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod done;
pub mod msg;
mod peers;
mod pieces;
pub mod selection;
mod streams;
mod superseed;

pub use msg::{
    ExchangeReply, FileProgress, PeerFault, PeerInfo, SetPrioritiesError, StreamError,
    TorrentHandle, TorrentMsg, TorrentState, TorrentStats, TorrentStopped,
};
use peers::{AddrState, PeerEntry};
use pieces::{Done, bytes_of};
pub use selection::{Selection, SelectionError};

use crate::budget::BufferBudget;
use crate::choker::Choker;
use crate::config::ClientConfig;
use crate::picker::{Bitfield, PeerId, Picker, PickerConfig, Priority, Strategy};
use crate::pipeline::RateMeter;
use crate::ratelimit::{self, LimitCell};
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
    /// One priority per file (numbered as `info` lists them). `None`: the
    /// selection recorded in the resume data, or every file normal.
    pub priorities: Option<Vec<Priority>>,
    /// The process's DHT node: the torrent registers with it (`get_peers`
    /// now and every re-announce interval, `announce_peer` on our listen
    /// port), its peers joining the trackers' in the address book. Never
    /// used for a private torrent (BEP 27).
    pub dht: Option<crate::dht::DhtHandle>,
}

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
    /// Our listener's address once bound: the `ipv6` of our extended
    /// handshake comes from it.
    pub listen_addr: Arc<std::sync::OnceLock<SocketAddr>>,
    /// Process-wide rate limits (changed through the session).
    pub up_limit: LimitCell,
    pub down_limit: LimitCell,
    /// Connections per torrent (`max_peers_per_torrent`, changed through
    /// the session).
    pub max_peers: Arc<std::sync::atomic::AtomicUsize>,
    /// Process-wide connection counters.
    pub conn: Arc<crate::net::ConnCounters>,
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
        budget_limit_peak: 0,
        wanted_bytes: 0,
        done_bytes: 0,
        stream_readers: 0,
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
    (TorrentHandle::new(tx, stats_rx), join)
}

struct Torrent {
    shared: Shared,
    meta: Arc<Metainfo>,
    /// The raw info dictionary, shared by every peer that serves it (BEP 9).
    metadata: Bytes,
    /// The process's DHT node (`port` messages from peers go to it).
    dht: Option<crate::dht::DhtHandle>,
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
    banned: peers::Bans,
    /// When a full torrent last evicted a peer for a newcomer.
    last_eviction: Option<Instant>,
    /// Peers evicted so far, for the log.
    evictions: u64,
    next_peer: u64,
    tasks: JoinSet<()>,
    pending_hash: VecDeque<(u32, Vec<Bytes>)>,
    pending_write: VecDeque<storage::VerifiedPiece>,
    write_permits: Arc<Semaphore>,
    done: Arc<done::DoneBox>,
    /// How long the actor sleeps with writes out before it looks at
    /// `done` unasked; doubles while it finds nothing.
    done_poll: Duration,
    /// A sync for a checkpoint is in flight.
    checkpoint: Option<storage::Checkpoint>,
    /// The final sync has been asked for.
    finishing: bool,
    /// A writer queue was full despite our permit: wait before retrying.
    write_backoff: bool,
    /// Pieces were written since the last [`Torrent::after_writes`].
    written_unsettled: bool,
    bytes_down: u64,
    down: RateMeter,
    hash_failures: u64,
    banned_peers: u64,
    /// Addresses not taken because the address book was full.
    addrs_skipped: u64,
    protocol_errors: u64,
    protocol_oddities: u64,
    bytes_wasted: u64,
    bytes_up: u64,
    up: RateMeter,
    seed: bool,
    choker: Choker,
    up_limits: Vec<LimitCell>,
    down_limits: Vec<LimitCell>,
    /// Addresses of the last connections that ended, for a ban decided
    /// after the peer left.
    recently_gone: VecDeque<(PeerId, SocketAddr, Option<[u8; 20]>)>,
    /// Announce counters for the tracker session, when registered.
    progress: Option<watch::Sender<AnnounceProgress>>,
    announced_complete: bool,
    /// Which files are wanted, at which priority.
    selection: Selection,
    /// Open stream readers.
    streams: streams::Streams,
    /// The task creating newly selected files and moving their parked
    /// bytes into place, while it runs.
    relocation: Option<tokio::sync::oneshot::Receiver<Result<Vec<u32>, String>>>,
    /// Layout files selected since the last relocation started.
    unpark: Vec<usize>,
    /// Super-seeding state, while `super_seed` is on and we seed.
    superseed: Option<superseed::SuperSeed>,
    /// Random tie-breaks (super-seeding).
    rng: SmallRng,
    /// Pieces whose writes started since the resume data last covered
    /// everything written (see `storage::resume::WriteJournal`).
    journal: storage::resume::WriteJournal,
    /// The journal could not be written once (warned once; a crash then
    /// costs a recheck or a download again, never trust).
    journal_failed: bool,
}

/// Peers from the tracker session wait here; it drops a batch that finds the
/// channel full (the next announce brings them again).
const TRACKER_PEER_BATCHES: usize = 16;
/// Most completions handled in one wake-up before the loop looks at its
/// other inputs again.
const DONE_BATCH: usize = 64;
/// Bounds of the delay after which an idle actor with writes out looks for
/// their quiet completions (see [`done`]): the first is what the last piece
/// of a download waits at most, the second what an actor waiting on a slow
/// disk costs in wake-ups.
const DONE_POLL_MIN: Duration = Duration::from_millis(2);
const DONE_POLL_MAX: Duration = Duration::from_millis(64);

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
    let (storage, have, selection) = match check(&params, &shared).await {
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
    let mut picker = picker;
    if let Err(e) = picker.set_piece_priorities(&selection.piece_levels(storage.layout())) {
        stats.send_modify(|s| s.state = TorrentState::Error(e.to_string()));
        return;
    }
    info!(
        have = bits.count(),
        pieces = info.piece_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checked"
    );
    let write_cap = storage.write_capacity().max(1);
    let hash_cap = shared.hash.capacity();
    // Every permit can have one completion waiting, plus the one sync.
    let done = Arc::new(done::DoneBox::new(write_cap + hash_cap + 2));
    let policy: ResumePolicy = shared.config.resume;
    let shared_choker = shared.config.choker;
    let mut up_limits: Vec<LimitCell> = vec![shared.up_limit.clone()];
    up_limits.extend(params.upload_limit.map(ratelimit::fixed));
    let mut down_limits: Vec<LimitCell> = vec![shared.down_limit.clone()];
    down_limits.extend(params.download_limit.map(ratelimit::fixed));
    let journal = storage::resume::WriteJournal::new(
        &params.resume_file,
        meta.info_hash.0,
        info.piece_count(),
    );
    let mut t = Torrent {
        resume: ResumeTracker::new(have, policy, Instant::now()),
        write_permits: Arc::new(Semaphore::new(write_cap)),
        shared,
        metadata: Bytes::copy_from_slice(&meta.info_bytes),
        dht: params.dht.clone(),
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
        banned: peers::Bans::default(),
        last_eviction: None,
        evictions: 0,
        next_peer: 0,
        tasks: JoinSet::new(),
        pending_hash: VecDeque::new(),
        pending_write: VecDeque::new(),
        done,
        done_poll: DONE_POLL_MIN,
        checkpoint: None,
        finishing: false,
        write_backoff: false,
        written_unsettled: false,
        bytes_down: 0,
        down: RateMeter::new(Duration::from_secs(5), 10),
        hash_failures: 0,
        banned_peers: 0,
        addrs_skipped: 0,
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
        selection,
        streams: streams::Streams::default(),
        relocation: None,
        unpark: Vec::new(),
        superseed: None,
        rng: SmallRng::from_os_rng(),
        journal,
        journal_failed: false,
    };
    // What the check found, saved now: a crash before the first
    // checkpoint need not hash again, and the save leaves the spare that a
    // save on a full disk writes into (see `storage::resume::save`). A
    // record and spare already on disk that say the same are not rewritten
    // (`save_resume`); with a journal it always is.
    match t.save_resume().await {
        // What a crashed run's journal listed is settled by that save.
        Ok(()) => {
            if let Err(e) = t.journal.clear() {
                warn!(error = %e, "removing the write journal failed");
            }
        }
        Err(e) => warn!(error = %e, "saving resume data failed"),
    }
    let (tracker_peers_tx, mut tracker_peers) = mpsc::channel(TRACKER_PEER_BATCHES);
    if let Some(dht) = params.dht.as_ref().filter(|_| !t.meta.info.private) {
        // The DHT shares the trackers' channel: one address book, and a
        // full channel drops a batch either way (the next lookup brings it).
        let port = t.shared.listen_port.load(Ordering::Relaxed);
        let announce = (port != 0).then_some(port);
        match dht
            .register(t.meta.info_hash, announce, tracker_peers_tx.clone())
            .await
        {
            Ok(()) => info!(announce_port = ?announce, "registered with the DHT"),
            Err(e) => warn!(error = %e, "not using the DHT"),
        }
    }
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
    let mut pex_tick =
        tokio::time::interval(t.shared.config.pex.interval.max(Duration::from_secs(1)));
    pex_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let poll = tokio::time::sleep(DONE_POLL_MIN);
    tokio::pin!(poll);
    let mut poll_armed;
    loop {
        if matches!(t.state, TorrentState::Complete | TorrentState::Error(_)) {
            break;
        }
        // Whatever woke the actor, it takes the completions waiting first
        // (their HAVEs reach each peer before the peer runs, so a batch
        // costs the peer one wake-up too).
        let found = t.drain_done().await;
        if matches!(t.state, TorrentState::Complete | TorrentState::Error(_)) {
            break;
        }
        let hash_permits = t.shared.hash_permits.clone();
        let write_permits = t.write_permits.clone();
        if found {
            t.done_poll = DONE_POLL_MIN;
        }
        // One timer, pushed later each time the actor runs, so it fires
        // only once the actor has been idle that long. Not a new timer per
        // message: a timer due earlier than the one the parked runtime
        // thread waits for wakes that thread (an eventfd write per
        // message, measured), while moving one later only marks it.
        poll_armed = write_permits.available_permits() < write_cap;
        if poll_armed {
            poll.as_mut()
                .reset(tokio::time::Instant::now() + t.done_poll);
        }
        let done = t.done.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = done.woken() => {}
            () = &mut poll, if poll_armed => {
                // Back off while the polls find nothing (a slow disk); the
                // next drain that finds something resets it.
                t.done_poll = (t.done_poll * 2).min(DONE_POLL_MAX);
            }
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
            Ok(r) = recv_relocation(&mut t.relocation) => t.relocated(r).await,
            _ = tick.tick() => {
                t.sweep_streams();
                t.connect_peers();
                t.maybe_checkpoint();
                t.choke_round();
                t.super_seed_tick();
                t.publish();
            }
            Some(_) = t.tasks.join_next(), if !t.tasks.is_empty() => {}
            _ = pex_tick.tick() => t.pex_refresh(None),
            Some(addrs) = tracker_peers.recv() => t.on_msg(TorrentMsg::AddPeers(addrs)),
        }
        t.announce_completion().await;
    }
    t.shutdown(&mut rx).await;
}

/// The end of the relocation task, or never when none runs.
async fn recv_relocation(
    rx: &mut Option<tokio::sync::oneshot::Receiver<Result<Vec<u32>, String>>>,
) -> Result<Result<Vec<u32>, String>, tokio::sync::oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// Opens the storage, decides which pieces are already ours, and moves
/// into place the parked bytes of files selected since the last run.
async fn check(
    params: &TorrentParams,
    shared: &Shared,
) -> Result<(Storage, Vec<bool>, Selection), String> {
    let info = params.meta.info.clone();
    let target = params.target.clone();
    let disk = shared.disk.clone();
    let hash = shared.hash.clone();
    let resume_file = params.resume_file.clone();
    let info_hash = params.meta.info_hash.0;
    let recheck_cfg = shared.config.recheck.clone();
    let preallocation = shared.config.disk.preallocation;
    let priorities = params.priorities.clone();
    tokio::task::spawn_blocking(move || {
        // A target that does not exist yet holds nothing: skip reading it.
        let fresh = match &target {
            Target::Directory(dir) => !dir.join(&info.name).exists(),
            Target::Raw(path) => !path.exists(),
        };
        let loaded = if fresh {
            Ok(None)
        } else {
            storage::resume::load(&resume_file)
        };
        // The layout alone (no files opened yet), to map the selection.
        storage::layout::check_info(&info).map_err(|e| e.to_string())?;
        let layout = match &target {
            Target::Directory(_) => storage::Layout::new_files(
                storage::layout::specs_from_info(&info),
                info.piece_length,
            ),
            Target::Raw(_) => storage::Layout::new_raw(
                storage::layout::raw_specs_from_info(&info),
                info.piece_length,
                None,
            ),
        }
        .map_err(|e| e.to_string())?;
        let recorded = loaded.as_ref().ok().and_then(|d| d.as_ref());
        let selection = match &priorities {
            Some(p) => Selection::new(&layout, p.clone()).map_err(|e| e.to_string())?,
            None => recorded
                .filter(|d| d.info_hash == info_hash)
                .and_then(|d| Selection::from_levels(&layout, &d.priorities))
                .unwrap_or_else(|| Selection::uniform(&layout, Priority::Normal)),
        };
        let slots = recorded
            .filter(|d| d.info_hash == info_hash)
            .map(|d| d.slots.clone())
            .unwrap_or_default();
        let cfg = StorageConfig {
            selection: Some(storage::Selection {
                wanted: selection.wanted_files(layout.files().len()),
                part_path: resume_file.with_extension("parts"),
                slots,
            }),
            preallocation,
        };
        let storage = match &target {
            Target::Directory(dir) => Storage::open_info(&disk, &info, dir, &cfg),
            Target::Raw(path) => Storage::open_info_raw(&disk, &info, path, &cfg),
        }
        .map_err(|e| e.to_string())?;
        let n = info.piece_count() as usize;
        if fresh {
            return Ok((storage, vec![false; n], selection));
        }
        // Left by a run that did not stop cleanly (kill -9, a crash).
        let journal = storage::resume::load_journal(&resume_file, &info_hash, info.piece_count());
        let checked = storage::resume::validate_with_journal(
            &storage,
            &info_hash,
            loaded,
            journal.as_deref(),
        )
        .map_err(|e| e.to_string())?;
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
        // Files selected since the last run: their bytes held in the part
        // file move into place now, verified again on the way.
        let pending: Vec<u32> = storage
            .relocation_pending()
            .into_iter()
            .filter(|&p| have[p as usize])
            .collect();
        if !pending.is_empty() {
            let bad = storage::relocate_blocking(&storage, &info.pieces, &pending)
                .map_err(|e| format!("moving parked bytes into place: {e}"))?;
            info!(
                pieces = pending.len(),
                damaged = bad.len(),
                "parked bytes moved into place"
            );
            for p in bad {
                have[p as usize] = false;
            }
        }
        Ok((storage, have, selection))
    })
    .await
    .map_err(|e| format!("checking task failed: {e}"))?
}

impl Torrent {
    fn publish(&mut self) {
        let now = Instant::now();
        let layout = self.storage.layout();
        let wanted_bytes = self.selection.wanted_bytes(layout);
        let done_bytes = self
            .selection
            .done_bytes(layout, self.picker.have_bitfield());
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
            budget_limit_peak: self.shared.budget.limit_peak(),
            wanted_bytes,
            done_bytes,
            stream_readers: self.streams.len(),
            mailbox_depth: self.self_tx.max_capacity() - self.self_tx.capacity(),
            peer_mailbox_depth: self
                .peers
                .values()
                .filter_map(|p| p.cmds.as_ref())
                .map(|tx| tx.max_capacity() - tx.capacity())
                .sum(),
        };
        if let Some(p) = &self.progress {
            let left = wanted_bytes - done_bytes.min(wanted_bytes);
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

    fn on_msg(&mut self, msg: TorrentMsg) {
        match msg {
            TorrentMsg::PeerConnected {
                id,
                cmds,
                peer_id,
                encrypted,
            } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    if let Some(e) = encrypted {
                        p.encrypted = e;
                    }
                    if self.banned.peer(&p.addr, &peer_id) {
                        // A banned host, found by its peer id at a new address.
                        self.drop_peer(id, "banned peer id".into());
                        return;
                    }
                    p.peer_id = Some(peer_id);
                    p.cmds = Some(cmds);
                    if let Some(a) = self.addrs.get_mut(&p.addr) {
                        a.failures = 0;
                    }
                    debug!(peer = id.0, addr = %p.addr, "connected");
                    if !self.settle_duplicate(id, peer_id) {
                        return;
                    }
                    self.super_seed_refill(id);
                    self.pex_refresh(Some(id));
                }
            }
            TorrentMsg::PeerGone { id, fault, reason } => self.peer_gone(id, fault, reason),
            TorrentMsg::PexPeers { id, added } => {
                if self.pex_enabled() {
                    debug!(peer = id.0, count = added.len(), "addresses from PEX");
                    self.pex_peers(added);
                }
            }
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
                self.super_seed_refill(id);
            }
            TorrentMsg::HaveAll { id } => {
                self.picker.peer_have_all(id);
                self.update_interest(id);
                self.drop_if_both_seeds(id);
                self.super_seed_refill(id);
            }
            TorrentMsg::HaveNone { id } => {
                self.picker.peer_have_none(id);
                if let Some(p) = self.peers.get_mut(&id) {
                    p.is_seed = false;
                }
                self.update_interest(id);
            }
            TorrentMsg::Have { id, piece } => match self.picker.peer_have(id, piece) {
                Ok(true) => {
                    self.update_interest(id);
                    self.super_seed_announced(id, piece);
                }
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
            TorrentMsg::AddPeers(addrs) => self.add_peers(addrs),
            TorrentMsg::SetFilePriorities { priorities, reply } => {
                self.set_priorities(priorities, reply)
            }
            TorrentMsg::Peers { max, reply } => {
                let _ = reply.send(self.peer_list(max));
            }
            TorrentMsg::Progress { reply } => {
                let layout = self.storage.layout();
                let _ = reply.send(FileProgress {
                    done: self
                        .selection
                        .file_done_bytes(layout, self.picker.have_bitfield()),
                    priorities: self.selection.priorities().to_vec(),
                });
            }
            TorrentMsg::StreamOpen { file, reply } => self.stream_open(file, reply),
            TorrentMsg::StreamWant { id, piece, reply } => self.stream_want(id, piece, reply),
            TorrentMsg::StreamClose { id } => self.stream_close(id),
            TorrentMsg::Incoming(stream, addr, handshake) => self.incoming(stream, addr, handshake),
            TorrentMsg::PeerStatus {
                id,
                interested,
                down_rate,
                up_rate,
                uploaded,
                oddities,
                choking_us,
            } => {
                self.bytes_up += uploaded;
                self.protocol_oddities += oddities;
                self.up.record(Instant::now(), uploaded);
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                p.down_rate = down_rate;
                p.up_rate = up_rate;
                p.choking_us = choking_us;
                p.exchanged += uploaded;
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

    async fn shutdown(&mut self, rx: &mut mpsc::Receiver<TorrentMsg>) {
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
            while let Some(d) = self.done.pop() {
                match d {
                    // Their landed bytes went back when they were written.
                    Done::Write(
                        WriteDone {
                            piece,
                            result: Ok(()),
                        },
                        _p,
                    ) => {
                        self.resume.written(piece);
                    }
                    Done::Write(..) | Done::Sync(_) => {}
                    Done::Hash(d, _p) => {
                        let bytes = match &d {
                            HashDone::Verified(v) => v.len(),
                            HashDone::Mismatch { blocks, .. } => bytes_of(blocks),
                        };
                        self.release_landed(bytes);
                    }
                }
            }
            // Written pieces wake nobody: look again shortly.
            tokio::select! {
                _ = self.done.woken() => {}
                _ = tokio::time::sleep(DONE_POLL_MIN) => {}
                all = in_flight.acquire_many(cap) => {
                    drop(all);
                    break;
                }
            }
        }
        for (_, blocks) in self.pending_hash.drain(..) {
            let bytes = bytes_of(&blocks);
            self.shared.budget.release_landed(bytes);
        }
        for p in self.pending_write.drain(..) {
            self.shared.budget.release_landed(p.len());
        }
        if self.progress.is_some() {
            // Bounded inside the tracker session by its stop timeout.
            let _ = self
                .shared
                .tracker
                .remove_torrent(self.meta.info_hash)
                .await;
        }
        if let Some(cp) = self.checkpoint.take() {
            // Its sync's answer is not waited for (the loop above may have
            // left on a failed write): this stop's own sync covers its
            // pieces, so they are not lost from the record.
            for piece in self.resume.abort(cp) {
                self.resume.written(piece);
            }
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
        // Every write landed and is in the saved record: a clean stop, so
        // the next run needs no journal.
        if !matches!(self.state, TorrentState::Complete)
            && self.resume.unsynced() == 0
            && self.journal.exists()
        {
            match self.save_resume().await {
                Ok(()) => {
                    if let Err(e) = self.journal.clear() {
                        warn!(error = %e, "removing the write journal failed");
                    }
                }
                Err(e) => warn!(error = %e, "saving resume data failed"),
            }
        }
        self.publish();
    }
}

/// What the picker thinks of a strategy name.
pub fn parse_strategy(sequential: bool) -> Strategy {
    if sequential {
        Strategy::Sequential
    } else {
        Strategy::RarestFirst
    }
}

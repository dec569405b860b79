//! The session actor: one per process. It owns the process-wide resources
//! every torrent shares (the hash worker pool, the disk thread registry, the
//! buffer budget, our peer id) and the registry of torrents, and takes
//! commands from the command line through its bounded mailbox.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use protocol::wire::Handshake;
use storage::{DiskIo, HashPool, HashPoolConfig};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::budget::{BudgetConfigError, BufferBudget};
use crate::config::ClientConfig;
use crate::mse_stream::{Kind, MseStream};
use crate::net::{self, ConnCounters, ConnStats, Direction, SkeyMap};
use crate::torrent::{self, Shared, TorrentHandle, TorrentParams};

/// Why the session could not start or serve a command.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The budget configuration is inconsistent.
    #[error("buffer budget: {0}")]
    Budget(#[from] BudgetConfigError),
    /// The hash worker threads could not start.
    #[error("starting hash workers: {0}")]
    HashPool(std::io::Error),
    /// The session has stopped.
    #[error("the session has stopped")]
    Stopped,
    /// `bind_interface` or `bind_address` is unusable.
    #[error("{0}")]
    Bind(#[from] net::BindError),
    /// The listening socket could not be opened.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

enum Command {
    AddTorrent {
        params: TorrentParams,
        reply: oneshot::Sender<TorrentHandle>,
    },
    /// Stop one torrent; the reply comes once its task has ended (writes
    /// flushed, resume data saved, `stopped` announced).
    StopTorrent {
        info_hash: [u8; 20],
        reply: oneshot::Sender<()>,
    },
    /// A remote peer connected and sent its handshake.
    Incoming {
        stream: MseStream<TcpStream>,
        addr: SocketAddr,
        handshake: Handshake,
        kind: Kind,
    },
}

/// A handle to the running session. Dropping every handle does not stop
/// it; [`Session::shutdown`] does.
pub struct Session {
    tx: mpsc::Sender<Command>,
    peer_id: [u8; 20],
    listen_port: Arc<AtomicU16>,
    /// The listener's address, set once it is bound (BEP 10 `ipv6`).
    listen_addr: Arc<std::sync::OnceLock<SocketAddr>>,
    tracker: crate::tracker::TrackerHandle,
    cancel: CancellationToken,
    config: Arc<ClientConfig>,
    /// The SKEY map the session keeps for the listener (see [`SkeyMap`]).
    skeys: watch::Receiver<SkeyMap>,
    conn: Arc<ConnCounters>,
    join: tokio::task::JoinHandle<()>,
    budget: Arc<BufferBudget>,
    disk: DiskIo,
    hash: storage::HashHandle,
    /// The process-wide rate limits every peer waits on.
    up_limit: watch::Sender<Option<Arc<crate::ratelimit::Limiter>>>,
    down_limit: watch::Sender<Option<Arc<crate::ratelimit::Limiter>>>,
    /// Connections per torrent, read by every torrent.
    max_peers: Arc<AtomicUsize>,
    /// The process-wide connection permits and how many there are.
    connections: Arc<Semaphore>,
    max_connections: AtomicUsize,
    /// Permits a lowered limit still has to withdraw (in use when it
    /// was lowered).
    permit_debt: Arc<AtomicUsize>,
}

impl Session {
    /// Starts the session actor (on the current tokio runtime) and the hash
    /// worker threads.
    pub fn start(mut config: ClientConfig) -> Result<Session, SessionError> {
        let binding = net::Binding::from_config(&config)?;
        config.tracker.binding = binding.clone();
        let budget = Arc::new(BufferBudget::new(config.budget)?);
        let pool = HashPool::new(HashPoolConfig {
            workers: config.hash_workers,
            queue_capacity: config.hash_queue,
        })
        .map_err(SessionError::HashPool)?;
        let disk = DiskIo::new(config.disk.clone());
        let mut peer_id = *b"-AR0001-000000000000";
        let tail: [u8; 12] = rand::random();
        for (d, r) in peer_id[8..].iter_mut().zip(tail) {
            *d = b'0' + r % 10;
        }
        // The tracker outlives the torrents: each sends `stopped` as it
        // shuts down, then the session stops the tracker.
        let tracker_stop = CancellationToken::new();
        let (tracker, tracker_join) =
            crate::tracker::spawn(config.tracker.clone(), tracker_stop.clone());
        let config = Arc::new(config);
        let conn = Arc::new(ConnCounters::default());
        let (skeys_tx, skeys) = watch::channel(SkeyMap::default());
        let (up_tx, up_rx) = crate::ratelimit::cell(config.upload_limit);
        let (down_tx, down_rx) = crate::ratelimit::cell(config.download_limit);
        let max_peers = Arc::new(AtomicUsize::new(config.max_peers_per_torrent));
        let max_connections = config.max_connections;
        let connections = Arc::new(Semaphore::new(max_connections));
        let shared = Shared {
            hash: pool.handle(),
            hash_permits: Arc::new(Semaphore::new(pool.handle().capacity())),
            config: config.clone(),
            budget: budget.clone(),
            disk: disk.clone(),
            peer_id,
            connections: connections.clone(),
            tracker: tracker.clone(),
            listen_port: Arc::new(AtomicU16::new(0)),
            listen_addr: Arc::new(std::sync::OnceLock::new()),
            up_limit: up_rx,
            down_limit: down_rx,
            max_peers: max_peers.clone(),
            conn: conn.clone(),
        };
        let (tx, rx) = mpsc::channel(config.session_mailbox);
        let cancel = CancellationToken::new();
        let hash = pool.handle();
        let listen_port = shared.listen_port.clone();
        let listen_addr = shared.listen_addr.clone();
        let join = tokio::spawn(run(
            rx,
            shared,
            pool,
            cancel.clone(),
            skeys_tx,
            tracker_stop,
            tracker_join,
        ));
        Ok(Session {
            tx,
            peer_id,
            listen_port,
            listen_addr,
            tracker,
            config,
            skeys,
            conn,
            cancel,
            join,
            budget,
            disk,
            hash,
            up_limit: up_tx,
            down_limit: down_tx,
            max_peers,
            max_connections: AtomicUsize::new(max_connections),
            permit_debt: Arc::new(AtomicUsize::new(0)),
            connections,
        })
    }

    /// Our peer id (the same for every torrent).
    pub fn peer_id(&self) -> [u8; 20] {
        self.peer_id
    }

    /// Replaces the process-wide rate limits (bytes per second, `None`:
    /// unlimited). Peers waiting on the old limits move to the new ones.
    pub fn set_rate_limits(&self, up: Option<u64>, down: Option<u64>) {
        let cur =
            |tx: &watch::Sender<Option<Arc<crate::ratelimit::Limiter>>>| tx.borrow().is_some();
        // Unchanged "unlimited" stays as it is; any limit is replaced (a
        // fresh bucket, at most one burst).
        if up.is_some() || cur(&self.up_limit) {
            self.up_limit
                .send_replace(up.map(crate::ratelimit::limiter));
        }
        if down.is_some() || cur(&self.down_limit) {
            self.down_limit
                .send_replace(down.map(crate::ratelimit::limiter));
        }
    }

    /// Changes the connection limits: per torrent at once (a torrent over
    /// it makes no new connections), and process-wide: raised at once,
    /// lowered as connections end (the permits in use are withdrawn when
    /// they come back, before any new connection gets one).
    pub fn set_peer_limits(&self, global: usize, per_torrent: usize) {
        self.max_peers.store(per_torrent.max(1), Ordering::Relaxed);
        let global = global.max(1);
        let old = self.max_connections.swap(global, Ordering::Relaxed);
        if global > old {
            // Permits still owed from a lowering are cancelled first.
            let up = global - old;
            let owed = self
                .permit_debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(up))
                })
                .unwrap_or(0);
            self.connections.add_permits(up - owed.min(up));
        } else if global < old {
            let want = old - global;
            let rest = want - self.connections.forget_permits(want);
            // One task withdraws the rest as connections end (a second
            // lowering adds to its debt instead of starting another).
            if rest > 0 && self.permit_debt.fetch_add(rest, Ordering::AcqRel) == 0 {
                let (sem, debt) = (self.connections.clone(), self.permit_debt.clone());
                tokio::spawn(async move {
                    while debt.load(Ordering::Acquire) > 0 {
                        let Ok(p) = sem.clone().acquire_owned().await else {
                            return;
                        };
                        if debt
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                            .is_ok()
                        {
                            p.forget();
                        }
                    }
                });
            }
        }
    }

    /// Connections (process-wide, per torrent) now allowed.
    pub fn peer_limits(&self) -> (usize, usize) {
        (
            self.max_connections.load(Ordering::Relaxed),
            self.max_peers.load(Ordering::Relaxed),
        )
    }

    /// Adds a torrent; it starts checking at once.
    pub async fn add_torrent(&self, params: TorrentParams) -> Result<TorrentHandle, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::AddTorrent { params, reply })
            .await
            .map_err(|_| SessionError::Stopped)?;
        rx.await.map_err(|_| SessionError::Stopped)
    }

    /// Stops one torrent and returns once its task has ended (its resume
    /// data saved and `stopped` announced). Unknown info-hashes return at
    /// once. The daemon uses it for `torrent-stop` and `torrent-remove`.
    pub async fn stop_torrent(&self, info_hash: [u8; 20]) -> Result<(), SessionError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::StopTorrent { info_hash, reply })
            .await
            .map_err(|_| SessionError::Stopped)?;
        rx.await.map_err(|_| SessionError::Stopped)
    }

    /// Accepts peer connections on `addr` (port 0: any free port) and
    /// routes each to its torrent by the info-hash of its handshake, or of
    /// its SKEY for an encrypted one (see [`net::accept`]); unknown
    /// info-hashes are dropped. Returns the bound address.
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, SessionError> {
        let listener = net::bind_listener(addr, &net::Binding::from_config(&self.config)?)
            .map_err(|source| SessionError::Listen { addr, source })?;
        self.serve(listener, addr)
    }

    /// Accepts on a socket bound earlier with [`net::bind_listener_std`].
    pub async fn listen_on(
        &self,
        listener: std::net::TcpListener,
    ) -> Result<SocketAddr, SessionError> {
        let addr = listener
            .local_addr()
            .map_err(|source| SessionError::Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|source| SessionError::Listen { addr, source })?;
        self.serve(listener, addr)
    }

    fn serve(
        &self,
        listener: tokio::net::TcpListener,
        addr: SocketAddr,
    ) -> Result<SocketAddr, SessionError> {
        let local = listener
            .local_addr()
            .map_err(|source| SessionError::Listen { addr, source })?;
        info!(%local, encryption = ?self.config.encryption, "listening");
        // Torrents announce this port from now on.
        self.listen_port.store(local.port(), Ordering::Relaxed);
        // The first listener's address is the one peers are told of.
        let _ = self.listen_addr.set(local);
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        let config = self.config.clone();
        let skeys = self.skeys.clone();
        let conn = self.conn.clone();
        // Handshakes being read at once, so a flood of idle sockets costs
        // bounded memory and tasks.
        let pending = Arc::new(Semaphore::new(self.config.max_pending_handshakes));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((stream, peer)) = accepted else {
                    continue;
                };
                let peer = net::canonical(peer);
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    debug!(%peer, "too many handshakes in progress; dropped");
                    continue;
                };
                let tx = tx.clone();
                let (config, skeys, conn) = (config.clone(), skeys.clone(), conn.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let Some(a) = net::accept(stream, peer, &skeys, &config, &conn).await else {
                        return;
                    };
                    let _ = tx
                        .send(Command::Incoming {
                            stream: a.stream,
                            addr: peer,
                            handshake: a.handshake,
                            kind: a.kind,
                        })
                        .await;
                });
            }
        });
        Ok(local)
    }

    /// A dialer with the session's config and counters (for the metadata
    /// phase of a magnet link).
    pub fn dialer(&self) -> net::Dialer {
        net::Dialer::new(self.config.clone(), self.conn.clone())
            .expect("the binding was checked when the session started")
    }

    /// Connection counters: handshakes by kind and direction, MSE
    /// failures and refusals.
    pub fn connection_stats(&self) -> ConnStats {
        self.conn.snapshot()
    }

    /// The process-wide tracker session.
    pub fn tracker(&self) -> &crate::tracker::TrackerHandle {
        &self.tracker
    }

    /// The process-wide buffer budget.
    pub fn budget(&self) -> &BufferBudget {
        &self.budget
    }

    /// Disk writer counters, by device.
    pub fn writer_stats(&self) -> Vec<(u64, storage::WriterStats)> {
        self.disk.writer_stats()
    }

    /// The open-file cache (files open now, cap, reopens, closes).
    pub fn open_files(&self) -> storage::FdCacheStats {
        self.disk.open_files()
    }

    /// The seeding reads' buffer pool (reuse, allocations, idle bytes).
    pub fn read_pool_stats(&self) -> storage::BufPoolStats {
        self.disk.read_pool_stats()
    }

    /// Hash pool counters (pieces hashed, bytes, mismatches).
    pub fn hash_counters(&self) -> &storage::HashCounters {
        self.hash.counters()
    }

    /// Hash jobs waiting for a worker, and the queue's capacity.
    pub fn hash_queue(&self) -> (usize, usize) {
        (self.hash.queue_depth(), self.hash.capacity())
    }

    /// Write jobs waiting in each device's writer mailbox (by device id),
    /// and one mailbox's capacity.
    pub fn writer_queues(&self) -> (Vec<(u64, usize)>, usize) {
        self.disk.writer_queue_depths()
    }

    /// Commands waiting in the session's mailbox.
    pub fn mailbox_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Capacity of the session's mailbox.
    pub fn mailbox_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Stops every torrent (each flushes its writes and saves resume data)
    /// and waits for every task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.join.await;
    }
}

/// A torrent the session runs.
struct Running {
    handle: TorrentHandle,
    /// Cancels this torrent only.
    token: CancellationToken,
    generation: u64,
}

async fn run(
    mut rx: mpsc::Receiver<Command>,
    shared: Shared,
    pool: HashPool,
    cancel: CancellationToken,
    skeys: watch::Sender<SkeyMap>,
    tracker_stop: CancellationToken,
    tracker_join: tokio::task::JoinHandle<()>,
) {
    let mut torrents = JoinSet::new();
    // A torrent stopped and added again runs under a new generation, so
    // the end of the old task does not unregister the new one.
    let mut by_hash: HashMap<[u8; 20], Running> = HashMap::new();
    let mut generation: u64 = 0;
    // The buffer budget's effective limit moves one step per tick.
    let mut governor = crate::budget::Governor::new(shared.config.budget);
    let mut budget_tick = tokio::time::interval(crate::budget::TICK);
    budget_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Callers of `stop_torrent`, answered when the task has ended.
    let mut stopping: HashMap<([u8; 20], u64), Vec<oneshot::Sender<()>>> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = budget_tick.tick() => shared.budget.tick(&mut governor),
            cmd = rx.recv() => match cmd {
                Some(Command::AddTorrent { params, reply }) => {
                    let hash = params.meta.info_hash.0;
                    generation += 1;
                    let gen_id = generation;
                    let token = cancel.child_token();
                    let (handle, join) = torrent::spawn(params, shared.clone(), token.clone());
                    torrents.spawn(async move {
                        let _ = join.await;
                        (hash, gen_id)
                    });
                    if let Some(old) = by_hash.insert(hash, Running { handle: handle.clone(), token, generation: gen_id }) {
                        // Two torrents of one info-hash: the older stops.
                        old.token.cancel();
                    }
                    net::skey_insert(&skeys, hash);
                    let _ = reply.send(handle);
                }
                Some(Command::StopTorrent { info_hash, reply }) => {
                    match by_hash.get(&info_hash) {
                        Some(r) => {
                            r.token.cancel();
                            stopping.entry((info_hash, r.generation)).or_default().push(reply);
                        }
                        None => {
                            let _ = reply.send(());
                        }
                    }
                }
                Some(Command::Incoming { stream, addr, handshake, kind }) => {
                    // Never wait on a torrent here: a busy one loses the
                    // connection rather than stalling every other torrent.
                    match by_hash.get(&handshake.info_hash) {
                        Some(r) => {
                            shared.conn.established(kind, Direction::Incoming);
                            if !r.handle.incoming(stream, addr, handshake) {
                                debug!(%addr, "torrent busy; incoming connection dropped");
                            }
                        }
                        None => {
                            shared.conn.unknown_torrent();
                            debug!(%addr, "unknown info-hash; dropped");
                        }
                    }
                }
                None => break,
            },
            Some(done) = torrents.join_next(), if !torrents.is_empty() => {
                if let Ok((hash, gen_id)) = done {
                    if by_hash.get(&hash).is_some_and(|r| r.generation == gen_id) {
                        by_hash.remove(&hash);
                        net::skey_remove(&skeys, hash);
                    }
                    for w in stopping.remove(&(hash, gen_id)).unwrap_or_default() {
                        let _ = w.send(());
                    }
                }
            }
        }
    }
    cancel.cancel();
    while torrents.join_next().await.is_some() {}
    tracker_stop.cancel();
    let _ = tracker_join.await;
    info!("session stopped");
    // The hash threads stop once the last handle is gone.
    drop(shared);
    drop(pool);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lowered_connection_limit_withdraws_permits_as_they_come_back() {
        let config = ClientConfig {
            max_connections: 4,
            hash_workers: 1,
            ..ClientConfig::default()
        };
        let s = Session::start(config).unwrap();
        let held = s.connections.clone().acquire_many_owned(3).await.unwrap();
        // 1 free permit goes now, 1 more is owed by the connections.
        s.set_peer_limits(2, 10);
        assert_eq!(s.connections.available_permits(), 0);
        assert_eq!(s.peer_limits(), (2, 10));
        drop(held);
        let settled = async {
            while s.connections.available_permits() != 2
                || s.permit_debt.load(Ordering::Acquire) != 0
            {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), settled)
            .await
            .expect("the owed permit is withdrawn once the connections end");
        s.set_peer_limits(5, 10);
        assert_eq!(s.connections.available_permits(), 5);
        // Lowered while in use, raised again before they came back: the
        // debt is cancelled instead of new permits added.
        let held = s.connections.clone().acquire_many_owned(5).await.unwrap();
        s.set_peer_limits(3, 10);
        s.set_peer_limits(5, 10);
        drop(held);
        tokio::task::yield_now().await;
        assert_eq!(s.connections.available_permits(), 5);
        s.shutdown().await;
    }
}

//! The session actor: one per process. It owns the process-wide resources
//! every torrent shares (the hash worker pool, the disk thread registry, the
//! buffer budget, our peer id) and the registry of torrents, and takes
//! commands from the command line through its bounded mailbox.

use std::sync::Arc;

use storage::{DiskIo, HashPool, HashPoolConfig};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::budget::{AtomicBudget, BudgetConfig, BudgetConfigError};
use crate::config::ClientConfig;
use crate::torrent::{self, Shared, TorrentHandle, TorrentParams};

/// The process-wide buffer budget: bytes of block data in flight, taken
/// when a request is sent and given back when the block is written or
/// dropped. Shared by reference between peers and torrents; it is a pair of
/// atomics and a [`Notify`], not a lock, so no actor ever waits on another
/// while holding it.
#[derive(Debug)]
pub struct BufferBudget {
    budget: AtomicBudget,
    resumed: Notify,
}

impl BufferBudget {
    /// A budget sized by `config`.
    pub fn new(config: BudgetConfig) -> Result<Self, BudgetConfigError> {
        Ok(BufferBudget {
            budget: AtomicBudget::new(config)?,
            resumed: Notify::new(),
        })
    }

    /// Takes `bytes` unless the budget is paused or full.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        self.budget.try_reserve(bytes)
    }

    /// Takes `bytes` whatever the state; see [`AtomicBudget::force_reserve`]
    /// for the one use that is sound.
    pub fn force_reserve(&self, bytes: u64) {
        self.budget.force_reserve(bytes);
    }

    /// Gives back `bytes`; wakes the peers waiting if this resumed it.
    pub fn release(&self, bytes: u64) {
        if bytes > 0 && self.budget.release(bytes) {
            self.resumed.notify_waiters();
        }
    }

    /// Resolves the next time the budget resumes (peers also retry on their
    /// tick, so a wake-up lost to a race only costs one tick).
    pub async fn resumed(&self) {
        self.resumed.notified().await;
    }

    /// Bytes in use.
    pub fn in_use(&self) -> u64 {
        self.budget.in_use()
    }

    /// The highest use seen.
    pub fn peak(&self) -> u64 {
        self.budget.peak()
    }

    /// Whether new requests are held back.
    pub fn is_paused(&self) -> bool {
        self.budget.is_paused()
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.budget.capacity()
    }
}

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
}

enum Command {
    AddTorrent {
        params: TorrentParams,
        reply: oneshot::Sender<TorrentHandle>,
    },
}

/// A handle to the running session. Dropping every handle does not stop
/// it; [`Session::shutdown`] does.
pub struct Session {
    tx: mpsc::Sender<Command>,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<()>,
    budget: Arc<BufferBudget>,
    disk: DiskIo,
}

impl Session {
    /// Starts the session actor (on the current tokio runtime) and the hash
    /// worker threads.
    pub fn start(config: ClientConfig) -> Result<Session, SessionError> {
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
        let config = Arc::new(config);
        let shared = Shared {
            hash: pool.handle(),
            hash_permits: Arc::new(Semaphore::new(pool.handle().capacity())),
            config: config.clone(),
            budget: budget.clone(),
            disk: disk.clone(),
            peer_id,
        };
        let (tx, rx) = mpsc::channel(config.session_mailbox);
        let cancel = CancellationToken::new();
        let join = tokio::spawn(run(rx, shared, pool, cancel.clone()));
        Ok(Session {
            tx,
            cancel,
            join,
            budget,
            disk,
        })
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

    /// The process-wide buffer budget.
    pub fn budget(&self) -> &BufferBudget {
        &self.budget
    }

    /// Disk writer counters, by device.
    pub fn writer_stats(&self) -> Vec<(u64, storage::WriterStats)> {
        self.disk.writer_stats()
    }

    /// Stops every torrent (each flushes its writes and saves resume data)
    /// and waits for every task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.join.await;
    }
}

async fn run(
    mut rx: mpsc::Receiver<Command>,
    shared: Shared,
    pool: HashPool,
    cancel: CancellationToken,
) {
    let mut torrents = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            cmd = rx.recv() => match cmd {
                Some(Command::AddTorrent { params, reply }) => {
                    let (handle, join) = torrent::spawn(params, shared.clone(), cancel.child_token());
                    torrents.spawn(async move {
                        let _ = join.await;
                    });
                    let _ = reply.send(handle);
                }
                None => break,
            },
            Some(_) = torrents.join_next(), if !torrents.is_empty() => {}
        }
    }
    cancel.cancel();
    while torrents.join_next().await.is_some() {}
    info!("session stopped");
    // The hash threads stop once the last handle is gone.
    drop(shared);
    drop(pool);
}

//! The torrent actor's vocabulary: its mailbox ([`TorrentMsg`]), what it
//! answers a peer ([`ExchangeReply`]), how a connection ended
//! ([`PeerFault`]), and its public face ([`TorrentHandle`] with the
//! [`TorrentStats`] it publishes). A leaf module: it imports no actor, so
//! the peer actor can speak to its torrent without importing the actor
//! that spawns it (imports run session -> torrent -> peer -> messages).

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::peer::msg::PeerCmd;
use crate::picker::{Block, PeerId, Priority};

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
    /// Highest effective limit of the buffer budget set, process-wide.
    pub budget_limit_peak: u64,
    /// Bytes of the selected files.
    pub wanted_bytes: u64,
    /// Bytes of the selected files verified and on disk.
    pub done_bytes: u64,
    /// Streams open on this torrent.
    pub stream_readers: usize,
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
    /// Input no honest peer sends (oversized frames, request floods): the
    /// address is never dialled again.
    Refused,
    /// A connection to ourselves (a tracker lists our own address back):
    /// never dialled again, and nobody's fault.
    Ourselves,
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
        /// The peer id of its handshake (a ban covers it).
        peer_id: [u8; 20],
        /// Whether its payload is RC4-encrypted, when the peer actor
        /// dialled (the torrent knows it of connections it accepted).
        encrypted: Option<bool>,
    },
    /// Addresses a peer told us of by BEP 11 (`ut_pex` added), checked
    /// and capped by the peer actor.
    PexPeers {
        /// The connection they came from.
        id: PeerId,
        /// The addresses.
        added: Vec<SocketAddr>,
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
    Incoming(
        crate::mse_stream::MseStream<tokio::net::TcpStream>,
        SocketAddr,
        protocol::wire::Handshake,
    ),
    /// New priorities, one per file (numbered as `info` lists them).
    SetFilePriorities {
        /// The priorities.
        priorities: Vec<Priority>,
        /// Ok once the picker uses them (files newly selected are created
        /// and their parked bytes move into place in the background).
        reply: oneshot::Sender<Result<(), SetPrioritiesError>>,
    },
    /// What a controller (the daemon's RPC) shows of the peers.
    Peers {
        /// At most this many.
        max: usize,
        /// The answer.
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    /// What a controller (the daemon's RPC) shows per file.
    Progress {
        /// The answer.
        reply: oneshot::Sender<FileProgress>,
    },
    /// A stream wants to read a file.
    StreamOpen {
        /// File index, as `info` lists them.
        file: usize,
        /// The grant, or why not.
        reply: oneshot::Sender<Result<StreamGrant, StreamError>>,
    },
    /// A stream entered `piece`: its window moves there; the reply comes
    /// once the piece is verified and written.
    StreamWant {
        /// The stream.
        id: u64,
        /// The piece under it.
        piece: u32,
        /// Fires when the piece is ours.
        reply: oneshot::Sender<()>,
    },
    /// A stream went away.
    StreamClose {
        /// The stream.
        id: u64,
    },
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
        /// It chokes us.
        choking_us: bool,
    },
}

/// One connected peer as a controller shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    /// Its address.
    pub addr: SocketAddr,
    /// The peer id of its handshake (names its client).
    pub peer_id: Option<[u8; 20]>,
    /// The fraction of the torrent it has.
    pub progress: f64,
    /// Bytes per second it sends us.
    pub rate_to_us: u64,
    /// Bytes per second we send it.
    pub rate_to_peer: u64,
    /// We want something it has.
    pub we_interested: bool,
    /// It wants something we have.
    pub peer_interested: bool,
    /// We choke it.
    pub we_choking: bool,
    /// It chokes us.
    pub peer_choking: bool,
    /// Its payload is RC4-encrypted (MSE).
    pub encrypted: bool,
    /// It dialled us.
    pub incoming: bool,
}

/// Per-file progress and priorities, in the user's file numbering
/// (padding files left out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileProgress {
    /// Bytes of each file in verified pieces.
    pub done: Vec<u64>,
    /// Each file's priority ([`Priority::Skip`]: not wanted).
    pub priorities: Vec<Priority>,
}

/// What the torrent gives a new stream (see [`crate::stream`]).
pub struct StreamGrant {
    /// The reader's id in its torrent.
    pub id: u64,
    /// Offset of the file's first byte in the torrent.
    pub file_offset: u64,
    /// The file's length.
    pub length: u64,
    /// The file's last path component.
    pub name: String,
    /// The torrent's piece length.
    pub piece_length: u32,
    /// Bytes per read.
    pub chunk_size: usize,
    /// Longest wait for one piece.
    pub wait_timeout: std::time::Duration,
    /// Where verified bytes are read from.
    pub storage: storage::Storage,
    /// Dropped with the stream: the torrent sees its sender close.
    pub alive: mpsc::Receiver<()>,
}

impl std::fmt::Debug for StreamGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGrant")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// Why a stream could not be opened or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The torrent has no file with this index.
    #[error("no file {0} in this torrent")]
    NoSuchFile(usize),
    /// `max_readers` streams are open on this torrent already.
    #[error("{0} streams are open on this torrent already")]
    TooManyReaders(usize),
    /// The torrent has stopped, or is not serving data yet.
    #[error("the torrent has stopped")]
    Stopped,
    /// The piece did not arrive within `wait_timeout`.
    #[error("piece {0} was not downloaded in time")]
    Timeout(u32),
    /// Reading verified bytes failed.
    #[error("reading: {0}")]
    Read(String),
}

/// Why new file priorities were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetPrioritiesError {
    /// Not one priority per file.
    #[error("{got} priorities for a torrent of {expected} files")]
    Count {
        /// Priorities given.
        got: usize,
        /// Files in the torrent.
        expected: usize,
    },
    /// The torrent has stopped.
    #[error("the torrent has stopped")]
    Stopped,
}

/// A handle to a running torrent.
#[derive(Clone)]
pub struct TorrentHandle {
    tx: mpsc::Sender<TorrentMsg>,
    stats: watch::Receiver<TorrentStats>,
}

impl TorrentHandle {
    /// The handle of a torrent whose mailbox is `tx` and whose statistics
    /// are published on `stats`.
    pub(super) fn new(tx: mpsc::Sender<TorrentMsg>, stats: watch::Receiver<TorrentStats>) -> Self {
        TorrentHandle { tx, stats }
    }

    /// The latest statistics, updated as they change and once per interval.
    pub fn stats(&self) -> watch::Receiver<TorrentStats> {
        self.stats.clone()
    }

    /// Hands over a connection a remote peer opened to us, without
    /// waiting: `false` if the torrent's mailbox is full or it stopped
    /// (the connection is then dropped).
    pub fn incoming(
        &self,
        stream: crate::mse_stream::MseStream<tokio::net::TcpStream>,
        addr: SocketAddr,
        handshake: protocol::wire::Handshake,
    ) -> bool {
        self.tx
            .try_send(TorrentMsg::Incoming(stream, addr, handshake))
            .is_ok()
    }

    /// The mailbox, for the stream readers.
    pub(crate) fn sender(&self) -> mpsc::Sender<TorrentMsg> {
        self.tx.clone()
    }

    /// Changes the file priorities while the torrent runs (one per file,
    /// numbered as `info` lists them; [`Priority::Skip`] deselects). Files
    /// newly selected are created, and bytes of theirs already held in the
    /// part file move into place without being fetched again. Returns once
    /// the picker works with the new priorities.
    pub async fn set_file_priorities(
        &self,
        priorities: Vec<Priority>,
    ) -> Result<(), SetPrioritiesError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(TorrentMsg::SetFilePriorities { priorities, reply })
            .await
            .map_err(|_| SetPrioritiesError::Stopped)?;
        rx.await.map_err(|_| SetPrioritiesError::Stopped)?
    }

    /// Per-file progress and priorities. Fails if the torrent has stopped.
    pub async fn progress(&self) -> Result<FileProgress, TorrentStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(TorrentMsg::Progress { reply })
            .await
            .map_err(|_| TorrentStopped)?;
        rx.await.map_err(|_| TorrentStopped)
    }

    /// The connected peers, at most `max` (the busiest first). Fails if
    /// the torrent has stopped.
    pub async fn peers(&self, max: usize) -> Result<Vec<PeerInfo>, TorrentStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(TorrentMsg::Peers { max, reply })
            .await
            .map_err(|_| TorrentStopped)?;
        rx.await.map_err(|_| TorrentStopped)
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

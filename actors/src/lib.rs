//! The actors of actorrent and the plain state machines beside them.
//!
//! Each actor is a tokio task that owns its state and a bounded mailbox
//! (`tokio::sync::mpsc::channel(capacity)`, capacities in
//! [`config::ClientConfig`]); the logic lives in plain structs with time
//! passed in ([`picker`], [`pipeline`], [`rtt`], [`budget`],
//! [`peer::session`]), unit-tested without a runtime.
//!
//! # Who sends to whom
//!
//! ```text
//!   CLI ──await──> Session ──spawn──> Torrent ──spawn──> Peer (one per connection)
//!
//!   Peer ──await──> Torrent           blocks + "give me n requests" (reply by oneshot),
//!                                     bitfield/have/choke/reject/timeout, gone
//!   Torrent ─try──> Peer              cancel, have, interested
//!   Torrent ─permit─> hash pool       complete pieces (semaphore: one permit per slot)
//!   Torrent ─permit─> disk writer     verified pieces (semaphore: one permit per slot)
//!   hash pool ─try──> disk writer     verified pieces whose write permit came with the
//!                                     hash job (written on the hash worker's thread when
//!                                     the writer is parked; a full queue: back to the Torrent)
//!   hash pool / disk writer ─push──> Torrent  completions (`torrent::done::DoneBox`, a slot
//!                                     per permit; a written piece does not wake the Torrent)
//!
//!   FileStream ──await──> Torrent     StreamOpen / StreamWant (reply by oneshot when the
//!                                     piece is ours), SetFilePriorities (TorrentHandle)
//!   FileStream ─try──> Torrent        StreamClose on drop (a lost one: the torrent sees
//!                                     the stream's `alive` channel closed on its tick)
//!   FileStream ─try──> disk readers   reads of verified bytes (a full queue: retried)
//!   Torrent ──spawn_blocking──> relocation (create selected files, move parked bytes),
//!                                     its end on a oneshot the torrent polls
//! ```
//!
//! # Modules, and which way imports run
//!
//! ```text
//!   stream ──> torrent::msg (StreamGrant, StreamError)
//!   session ──> torrent ──> peer ──> peer::msg (PeerCmd)
//!                  │          └────> torrent::msg (TorrentMsg, ExchangeReply, PeerFault,
//!                  │                               TorrentHandle, TorrentStats)
//!                  ├─ torrent::peers   address book, connections, reconnects, choking
//!                  ├─ torrent::pieces  blocks -> hash pool -> disk writers, checkpoints
//!                  ├─ torrent::streams priority changes, stream readers, critical windows
//!                  └─ torrent::selection the file selection (plain struct)
//!   all of them ──> plain state machines: picker, pipeline, rtt, budget, choker
//! ```
//!
//! An actor imports the actors it spawns and the message modules of the
//! actors it talks to; message modules import no actor. So a peer speaks
//! to its torrent through `torrent::msg` without importing the torrent
//! actor, and no module imports the one that spawns it. The tracker
//! session is the same shape: `tracker::request` holds what an announce
//! sends and gets, shared by the dispatch (`tracker::announce`) and the two
//! transports (`tracker::http`, `tracker::udp`).
//!
//! # The rule that keeps it deadlock-free
//!
//! Data flows down and waits for room: a peer awaits the torrent's mailbox,
//! the torrent awaits a permit before giving a job to a hash or disk thread.
//! Nothing flowing up ever waits:
//!
//! - Torrent → Peer uses `try_send`. A cancel that finds the mailbox full is
//!   dropped (the block then arrives as a duplicate and its budget is
//!   released); a HAVE is dropped (it only informs the remote); an interest
//!   change must not be lost, so the peer is disconnected instead.
//! - Hash and disk completions are pushed into a bounded queue with one
//!   slot per permit, and each completion carries its permit, so the queue
//!   cannot be full when a thread pushes. A written piece's budget is
//!   returned by the writing thread; the torrent takes the completion on
//!   its next run (or a timer), so it wakes nobody.
//! - The torrent never awaits a peer, so a peer waiting on the torrent
//!   (including for a oneshot reply) always makes progress.
//! - A stream ([`stream`]) is downstream like a peer: it awaits the
//!   torrent's mailbox and oneshot replies; the torrent answers by oneshot
//!   and never awaits a stream, and a stream's close uses `try_send`.
//!
//! Memory is bounded by the process-wide [`budget::BufferBudget`]: a peer
//! reserves a block's bytes before requesting it, and the torrent releases
//! them when the piece is written or the block is dropped. Above the high
//! watermark no peer requests anything, so a slow disk slows the remote
//! senders instead of growing queues.
//!
//! The budget is shared by reference (atomics plus a `Notify`), not owned by
//! the session actor as the first design sketched: a reservation per request
//! through the session's mailbox would put a message hop on the hot path of
//! every peer for a decision two atomic operations make.
//!
//! # The tracker session
//!
//! [`tracker`] is one actor for the process, its breaker and tier state
//! machines beside it. Handles await room in its mailbox; it never awaits
//! anyone: peers go to a torrent with `try_send` (a full channel drops the
//! batch, the next announce brings the peers again), announces run as
//! tasks it owns and joins, and those tasks await only the DNS cache actor,
//! which answers by oneshot and sends to no one.

pub mod budget;
pub mod choker;
pub mod config;
pub mod dht;
pub mod magnet;
pub mod metrics;
pub mod mse_stream;
pub mod net;
pub mod peer;
pub mod pex;
pub mod picker;
pub mod pipeline;
pub mod ratelimit;
pub mod rtt;
pub mod session;
pub mod stream;
pub mod torrent;
pub mod tracker;

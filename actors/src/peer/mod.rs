//! The peer actor: one task per connection. It owns the socket, the wire
//! state ([`session::PeerSession`]: choke/interest, outstanding requests,
//! RTT, pipeline) and its read buffer, and talks to its torrent only through
//! the torrent's bounded mailbox.
//!
//! It reads what the socket has ready (several reads of a chunk each, up to
//! `read_buffer` bytes), decodes every complete message, forwards all the
//! blocks of those reads to the torrent in one [`TorrentMsg::Exchange`] that
//! also asks for new blocks to request, and waits for the answer (the
//! torrent never waits on a peer, so this cannot deadlock). Blocks travel as
//! `Bytes` slices of the read buffers: no copy.
//!
//! The two directions do not wait for each other: the loop's `select!`
//! reads whenever the socket has input and writes whenever it has room and
//! frames are queued, so a large send in progress never leaves the
//! remote's requests unread, and the served queue is refilled after every
//! write. The `select!` is biased: a ready read first, then a ready
//! write, then commands and disk reads, the tick last, so a timer never
//! runs (and waits on the torrent) ahead of frames that could go out.
//! Rate limits are waited for in arms of that `select!` too (a throttled
//! block, bytes read but not yet granted), never inside an arm, so a
//! limited direction stops neither the other nor the tick.
//! What waits to be written is bounded: block frames by
//! `max_send_queue` (the upload side stops framing there), control
//! messages by `CONTROL_BACKLOG` (reading pauses until the remote takes
//! them).
//!
//! Budget: before asking for `n` blocks the peer reserves `n` full blocks in
//! the process-wide [`BufferBudget`] and gives back what the torrent did not
//! hand out. A block's reservation then travels with it to the torrent (which
//! releases it once the piece is written, or at once for a duplicate); a
//! request that ends without data (timeout, reject, choke, cancel,
//! disconnect) is released here. A late block that is no longer outstanding
//! needs a fresh reservation and is dropped if the budget refuses.
//!
//! # What a peer may send
//!
//! Liberal where libtorrent is, strict where it is. Each row was decided
//! against libtorrent's `bt_peer_connection.cpp` / `peer_connection.cpp`
//! (the function named); "oddity" means tolerated and counted in the
//! torrent's `protocol_oddities` (logged at debug). Ending a connection is
//! one of three faults ([`PeerFault`]): *protocol* (reconnected with
//! backoff; the address is refused for good after `max_protocol_strikes`
//! of them), *refused* (input no honest peer sends: the address is never
//! dialled again) and *network*.
//!
//! | input | libtorrent | actorrent |
//! |---|---|---|
//! | BITFIELD after HAVE NONE, HAVE ALL, HAVEs or requests | `incoming_bitfield`: counts the old set down (`peer_lost`), takes the new one | takes it as the new set (availability by the difference), interest re-evaluated; oddity |
//! | HAVE ALL / HAVE NONE after other messages | `incoming_have_all` / `_none`: replace the set | replace the set; oddity |
//! | BITFIELD of the wrong length | disconnect (`invalid_bitfield_size`) | protocol |
//! | BITFIELD with spare bits set | bits past the last piece dropped by `assign` | protocol: BEP 3 says to drop such a peer |
//! | HAVE ALL, HAVE NONE, SUGGEST, REJECT, ALLOWED FAST without the fast bit | disconnect (`invalid_have_all`, ...) | protocol |
//! | HAVE for a piece out of range | disconnect (`invalid_have`) | protocol |
//! | HAVE for a piece already announced | ignored (redundant HAVE) | ignored; oddity |
//! | REQUEST for a piece we lack or a block outside the piece, of length 0 or over 16 KiB, or out of range | `write_reject_request`, counted as invalid | reject (fast) or silence (BEP 3); oddity |
//! | REQUEST while we choke | reject; disconnect once requests keep coming 2 s after the choke | reject (fast) or silence (BEP 3), not counted: requests crossing a choke are normal and cost nothing, no queue grows |
//! | REQUEST without INTERESTED | taken as interest ("be lenient") | taken as interest; oddity |
//! | more requests queued than we accept | rejected past `max_allowed_in_request_queue` | refused: a flood past the `reqq` we advertise |
//! | PIECE never requested (or sent twice) | dropped as waste (`piece_unknown`) | dropped, counted in `bytes_wasted`; oddity |
//! | PIECE that fits no block of the torrent | disconnect (`invalid_piece`) | protocol |
//! | PIECE longer than 16 KiB | disconnect (`packet_too_large`) | refused |
//! | CANCEL for a request not queued | ignored | ignored |
//! | CANCEL, REJECT, SUGGEST, ALLOWED FAST naming no valid block or piece | ignored, logged | ignored; oddity |
//! | REJECT for a block we did not request | ignored, logged | ignored; oddity |
//! | keep-alives in bursts | ignored | ignored |
//! | PORT without the DHT bit | accepted (`incoming_dht_port`) | accepted: the node goes to our DHT (`try_add_node`) |
//! | a second extended handshake | read again, updates | updates what it says (`reqq`) |
//! | an extended handshake that is not a bencoded dictionary | ignored ("invalid extended handshake") | ignored; oddity |
//! | an extension message with an id we never assigned | disconnect (`invalid_message`: no extension claims it) | protocol |
//! | a `ut_metadata` message that does not decode (BEP 9) | disconnect | protocol |
//! | a `ut_metadata` request for a piece out of range, or past our send queue | reject | reject; oddity when out of range |
//! | `ut_metadata` data or reject we never asked for | dropped | dropped; oddity |
//! | an unknown message id | disconnect (`invalid_message`) | protocol |
//! | a fixed-size message of another size | disconnect (`invalid_choke`, ...) | protocol |
//! | a length prefix over the message limit | disconnect (`packet_too_large`) | refused |
//! | a handshake for another torrent | disconnect (`invalid_info_hash`) | protocol |
//! | a connection to ourselves | disconnect (`self_connection`) | never dialled again; not counted as a protocol error |

pub mod msg;
mod readbuf;
pub mod session;
mod upload;

pub use msg::PeerCmd;

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::ut_metadata::{self, MetadataMsg};
use protocol::wire::{self, Decoded, ExtendedHandshake, Handshake, Limits, Message};
use storage::{ReadDone, Storage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::budget::{BufferBudget, Refused};
use crate::config::ClientConfig;
use crate::metrics::{self, LocalHistogram};
use crate::mse_stream::Kind;
use crate::net::{self, ConnCounters, Direction};
use crate::picker::{BLOCK_SIZE, Bitfield, Block, PeerId};
use crate::pipeline::RateMeter;
use crate::ratelimit::{self, LimitCell};
use crate::torrent::msg::{ExchangeReply, PeerFault, TorrentMsg};
use session::{Arrival, PeerSession, SessionConfig};
use upload::Upload;

/// Control bytes queued past `max_send_queue` at which the loop stops
/// reading from a remote that does not read what we send (requests it
/// keeps sending while choked would otherwise queue rejects without end).
const CONTROL_BACKLOG: usize = 256 * 1024;

/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// One message queued for the socket: control messages (one or more,
/// `data` empty) or a block's header and its data, a slice of a read-ahead
/// buffer (never copied).
struct Frame {
    head: Bytes,
    data: Bytes,
    /// When the block's request arrived, for the serve turnaround.
    asked: Option<Instant>,
}

impl Frame {
    fn len(&self) -> usize {
        self.head.len() + self.data.len()
    }
}

/// Everything a peer task needs from its torrent.
#[derive(Clone)]
pub struct PeerContext {
    /// How the torrent names this connection.
    pub id: PeerId,
    /// The remote address.
    pub addr: SocketAddr,
    /// The torrent's info-hash.
    pub info_hash: [u8; 20],
    /// Our peer id.
    pub our_id: [u8; 20],
    /// Pieces in the torrent.
    pub piece_count: u32,
    /// Our verified pieces when the connection starts.
    pub have: Bitfield,
    /// The torrent's mailbox.
    pub torrent: mpsc::Sender<TorrentMsg>,
    /// The process-wide buffer budget.
    pub budget: Arc<BufferBudget>,
    /// Settings.
    pub config: Arc<ClientConfig>,
    /// Fired by the torrent to drop this connection.
    pub cancel: CancellationToken,
    /// The torrent's storage, for serving blocks.
    pub storage: Storage,
    /// Upload rate limits (process, torrent) this connection obeys.
    pub up_limits: Vec<LimitCell>,
    /// Download rate limits this connection obeys.
    pub down_limits: Vec<LimitCell>,
    /// Process-wide connection counters (by kind, MSE failures).
    pub conn: Arc<ConnCounters>,
    /// The raw info dictionary, served to peers that ask by BEP 9
    /// (`ut_metadata`) and advertised in our extended handshake; `None`
    /// rejects every request.
    pub metadata: Option<Bytes>,
    /// Exchange peers by BEP 11 (`ut_pex`): on unless `[pex] enabled` is
    /// off or the torrent is private.
    pub pex: bool,
    /// The process's DHT node, for public torrents: our handshake sets the
    /// DHT bit, and a remote's BEP 5 `port` message gives it a node.
    pub dht: Option<crate::dht::DhtHandle>,
    /// Our listener's address, if we listen: told to the remote as BEP 10
    /// `ipv6` when it is (or, dual-stack, the connection is) global IPv6.
    pub listen: Option<SocketAddr>,
}

/// BEP 10 `yourip`: the remote's address as we see it (IPv4-mapped shown
/// as IPv4), so a peer behind NAT learns its external address.
fn your_ip(remote: SocketAddr) -> std::net::IpAddr {
    net::canonical(remote).ip()
}

/// BEP 10 `ipv6`: our IPv6 address, for a peer that reached us over IPv4
/// to try IPv6. Only when we listen on IPv6: the listener's own address
/// when it names one, else (`[::]`, dual-stack) the local address of this
/// connection when it is IPv6. Never loopback, link-local, multicast or an
/// IPv4-mapped address, which a remote could not reach us on.
fn our_ipv6(listen: Option<SocketAddr>, local: Option<SocketAddr>) -> Option<std::net::Ipv6Addr> {
    let usable = |ip: std::net::Ipv6Addr| {
        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
        (!ip.is_loopback()
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && !link_local
            && ip.to_ipv4_mapped().is_none())
        .then_some(ip)
    };
    let std::net::IpAddr::V6(bound) = listen?.ip() else {
        return None;
    };
    if !bound.is_unspecified() {
        return usable(bound);
    }
    match local?.ip() {
        std::net::IpAddr::V6(ip) => usable(ip),
        std::net::IpAddr::V4(_) => None,
    }
}

/// The extension message ids we assign in our extended handshake's `m`
/// (the remote sends us these; we send it the ids it assigned).
pub mod ext_id {
    /// BEP 9 `ut_metadata`.
    pub const UT_METADATA: u8 = 1;
    /// BEP 11 `ut_pex`.
    pub const UT_PEX: u8 = 2;
}

/// Why a connection ended, for the log and the torrent's reconnect policy.
#[derive(Debug)]
struct End {
    fault: PeerFault,
    reason: String,
}

impl End {
    fn network(reason: impl Into<String>) -> End {
        End {
            fault: PeerFault::Network,
            reason: reason.into(),
        }
    }
    fn protocol(reason: impl Into<String>) -> End {
        End {
            fault: PeerFault::Protocol,
            reason: reason.into(),
        }
    }
    /// Input no honest peer sends (an oversized frame, a request flood):
    /// the address is not dialled again.
    fn refused(reason: impl Into<String>) -> End {
        End {
            fault: PeerFault::Refused,
            reason: reason.into(),
        }
    }
}

/// Connects to `ctx.addr` (MSE/PE per the `encryption` setting, see
/// [`crate::net::dial`]) and runs the connection until it ends. Always
/// tells the torrent with [`TorrentMsg::PeerGone`].
pub async fn connect_and_run(ctx: PeerContext) {
    let span = info_span!("peer", addr = %ctx.addr);
    async move {
        let mut ours = net::our_handshake(ctx.info_hash, ctx.our_id);
        ours.set_dht(ctx.dht.is_some());
        // Checked when the session started; a bad one cannot get here.
        let binding = net::Binding::from_config(&ctx.config).unwrap_or_default();
        let dialled = net::dial(
            ctx.addr,
            ctx.info_hash,
            &ours,
            &ctx.config,
            &ctx.conn,
            &binding,
        )
        .await;
        let end = match dialled {
            Ok(d) => {
                let how = Setup {
                    known: None,
                    ours_sent: d.handshake_sent,
                    outgoing: Some(d.kind),
                    local: d.stream.get_ref().local_addr().ok(),
                };
                run_inner(d.stream, how, &ctx).await
            }
            Err(e) if e.protocol => End::protocol(e.reason),
            Err(e) => End::network(e.reason),
        };
        finish(&ctx, end).await;
    }
    .instrument(span)
    .await
}

/// Runs a connection over any byte stream (an accepted socket, or an
/// in-memory duplex stream in tests). `theirs` is the remote handshake when
/// the listener already read it (to pick the torrent); then only ours is
/// sent. Always tells the torrent with [`TorrentMsg::PeerGone`].
pub async fn run<S>(stream: S, theirs: Option<Handshake>, ctx: PeerContext)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run_with_local(stream, theirs, None, ctx).await
}

/// [`run`] for an accepted socket whose local address is `local`.
pub async fn run_with_local<S>(
    stream: S,
    theirs: Option<Handshake>,
    local: Option<SocketAddr>,
    ctx: PeerContext,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let span = info_span!("peer", addr = %ctx.addr);
    async move {
        let how = Setup {
            known: theirs,
            ours_sent: false,
            outgoing: None,
            local,
        };
        let end = run_inner(stream, how, &ctx).await;
        finish(&ctx, end).await;
    }
    .instrument(span)
    .await
}

/// What connection setup already did before the BitTorrent handshake.
struct Setup {
    /// The remote's handshake, when the listener read it.
    known: Option<Handshake>,
    /// Ours went out in the MSE initial payload.
    ours_sent: bool,
    /// A connection we dialled, and its kind: counted once the handshake
    /// completes (the listener counts incoming ones).
    outgoing: Option<Kind>,
    /// The socket's local address (BEP 10 `ipv6`), when it is a socket.
    local: Option<SocketAddr>,
}

async fn finish(ctx: &PeerContext, end: End) {
    debug!(reason = %end.reason, "connection ended");
    // The torrent may be gone already (shutdown): nothing to tell then.
    let _ = ctx
        .torrent
        .send(TorrentMsg::PeerGone {
            id: ctx.id,
            fault: end.fault,
            reason: end.reason,
        })
        .await;
}

async fn handshake<S>(stream: &mut S, how: &Setup, ctx: &PeerContext) -> Result<Handshake, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ours = net::our_handshake(ctx.info_hash, ctx.our_id);
    ours.set_dht(ctx.dht.is_some());
    let exchange = async {
        if !how.ours_sent {
            stream
                .write_all(&ours.to_bytes())
                .await
                .map_err(|e| End::network(format!("sending handshake: {e}")))?;
            // An encrypting stream may hold bytes until flushed.
            stream
                .flush()
                .await
                .map_err(|e| End::network(format!("sending handshake: {e}")))?;
        }
        if let Some(h) = &how.known {
            return Ok(*h);
        }
        let mut buf = [0u8; Handshake::LEN];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| End::network(format!("reading handshake: {e}")))?;
        match Handshake::decode(&buf) {
            Ok(Decoded::Complete(h)) => Ok(h),
            Ok(Decoded::NeedMore(_)) => Err(End::protocol("short handshake")),
            Err(e) => Err(End::protocol(format!("bad handshake: {e}"))),
        }
    };
    let theirs = tokio::time::timeout(ctx.config.handshake_timeout, exchange)
        .await
        .map_err(|_| End::network("handshake timed out"))??;
    if theirs.info_hash != ctx.info_hash {
        return Err(End::protocol("handshake for another torrent"));
    }
    if theirs.peer_id == ctx.our_id {
        return Err(End {
            fault: PeerFault::Ourselves,
            reason: "connected to ourselves".into(),
        });
    }
    if let Some(kind) = how.outgoing {
        ctx.conn.established(kind, Direction::Outgoing);
    }
    Ok(theirs)
}

/// The connection's state inside the actor loop.
struct Conn<'a> {
    ctx: &'a PeerContext,
    /// The socket's local address, if known (BEP 10 `ipv6`).
    local: Option<SocketAddr>,
    session: PeerSession,
    out: BytesMut,
    fast: bool,
    /// Our pieces, for validating the remote's requests.
    have: Bitfield,
    /// The peer has said which pieces it has (bitfield, have all, have
    /// none or a have): a later bitfield, have all or have none replaces
    /// that set and is counted as an oddity.
    announced: bool,
    /// Odd but harmless messages handled since the last status report
    /// (see the module docs' table).
    oddities: u64,
    /// The last pick found nothing: retry on the next tick, not per read.
    starved: bool,
    /// Waiting for the budget to resume.
    budget_blocked: bool,
    /// The budget's resume count taken before the refusal that set
    /// `budget_blocked`.
    budget_epoch: u64,
    /// Bytes read that the download limits have not granted yet: no
    /// further read until they have.
    down_wait: Option<ratelimit::Wait>,
    /// Frames waiting for the socket, oldest first (control messages go
    /// before the blocks, behind any frame already partly written).
    frames: VecDeque<Frame>,
    /// Bytes in `frames`.
    frames_len: usize,
    /// The front frame is partly written: nothing may go before it.
    front_started: bool,
    /// A write went out since the last flush: an encrypting stream may
    /// still hold its tail (see [`write_frames`]).
    unflushed: bool,
    /// Last write progress, or when `frames` became non-empty: a remote
    /// that takes nothing for `write_timeout` is dropped.
    last_write: Instant,
    up: Upload,
    /// The id the remote assigned to `ut_metadata` (from its extended
    /// handshake), for our answers to its requests.
    their_ut_metadata: Option<u8>,
    /// The id the remote assigned to `ut_pex`.
    their_ut_pex: Option<u8>,
    pex: crate::pex::PexSender,
    /// When the remote's last `ut_pex` message was taken.
    pex_received: Option<Instant>,
    /// The torrent's latest list, kept for when the remote's extended
    /// handshake (and its `ut_pex` id) arrives after it.
    pex_list: Option<std::sync::Arc<[SocketAddr]>>,
}

async fn run_inner<S>(mut stream: S, how: Setup, ctx: &PeerContext) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let theirs = match handshake(&mut stream, &how, ctx).await {
        Ok(h) => h,
        Err(end) => return end,
    };
    let (cmd_tx, mut cmd_rx) = mpsc::channel(ctx.config.peer_mailbox);
    if ctx
        .torrent
        .send(TorrentMsg::PeerConnected {
            id: ctx.id,
            cmds: cmd_tx,
            peer_id: theirs.peer_id,
            encrypted: how.outgoing.map(|k| k == crate::mse_stream::Kind::MseRc4),
        })
        .await
        .is_err()
    {
        return End::network("torrent stopped");
    }
    let cfg = &ctx.config;
    let now = Instant::now();
    // A slot per read that may be in flight: the reply's `try_send` fits.
    let (reads_tx, mut reads_rx) = mpsc::channel(cfg.read_cache_pieces.max(1));
    let mut conn = Conn {
        ctx,
        session: PeerSession::new(
            SessionConfig {
                pipeline: cfg.pipeline,
                rtt: cfg.rtt,
                snub_after_timeouts: cfg.snub_after_timeouts,
                keepalive_interval: cfg.keepalive_interval,
                inactivity_timeout: cfg.inactivity_timeout,
            },
            now,
        ),
        out: BytesMut::with_capacity(4096),
        fast: theirs.supports_fast(),
        have: ctx.have.clone(),
        announced: false,
        oddities: 0,
        starved: false,
        budget_blocked: false,
        budget_epoch: 0,
        down_wait: None,
        frames: VecDeque::new(),
        frames_len: 0,
        front_started: false,
        unflushed: false,
        last_write: now,
        up: Upload {
            am_choking: true,
            peer_interested: false,
            queue: VecDeque::new(),
            turnaround: LocalHistogram::like(&metrics::SERVE_TURNAROUND_US),
            cache: VecDeque::new(),
            reading: Vec::new(),
            reads_tx,
            bytes_up: 0,
            meter: RateMeter::new(Duration::from_secs(5), 10),
            reported_up: 0,
            last_status: now,
            status_interested: false,
            throttled: None,
        },
        their_ut_metadata: None,
        their_ut_pex: None,
        pex: crate::pex::PexSender::default(),
        pex_received: None,
        pex_list: None,
        local: how.local.map(net::canonical),
    };
    let end = conn.drive(stream, theirs, &mut cmd_rx, &mut reads_rx).await;
    conn.session.flush_metrics();
    conn.up.turnaround.flush_into(&metrics::SERVE_TURNAROUND_US);
    // Count what was uploaded since the last report.
    if conn.up.bytes_up > conn.up.reported_up || conn.oddities > 0 {
        conn.up.status_interested = !conn.up.peer_interested;
        let _ = conn.report(false).await;
    }
    // Requests that will never be answered now give their budget back; the
    // read-ahead cache and the queued blocks give theirs back when they are
    // dropped (`budget::held`).
    let left = conn.session.drain();
    conn.release_blocks(&left);
    conn.up.cache.clear();
    conn.frames.clear();
    // Reads still in flight hold budget until they land; wait for them.
    while !conn.up.reading.is_empty() {
        let Some(d) = reads_rx.recv().await else {
            break;
        };
        if let Some(pos) = conn
            .up
            .reading
            .iter()
            .position(|p| p.0 == d.piece && p.1 == d.begin)
        {
            let (_, _, length) = conn.up.reading.swap_remove(pos);
            conn.release(u64::from(length));
        }
    }
    end
}

/// What [`write_frames`] did.
enum Wrote {
    /// Bytes of the queue's front frames accepted by the stream.
    Bytes(usize),
    /// The queue was empty: the stream was flushed.
    Flushed,
}

/// Polls `fut` once: its output if it is ready now, `None` (and `fut`
/// dropped) if not. With a no-op waker: a socket that has nothing now must
/// not wake the task while it waits on the torrent; the loop's `select!`
/// polls the read again with the task's waker before it sleeps.
fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(fut).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// One vectored write of the queue's front frames, or, with the queue
/// empty, a flush: an RC4 stream (`MseStream`) accepts a write before all
/// of its ciphertext reached the socket, and sends the rest on its next
/// write or flush. Cancel-safe: a write either happened (and is returned)
/// or not, and a cancelled flush is resumed by the next one.
async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &VecDeque<Frame>,
) -> std::io::Result<Wrote> {
    if frames.is_empty() {
        writer.flush().await?;
        return Ok(Wrote::Flushed);
    }
    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
    let mut k = 0;
    'fill: for f in frames {
        for b in [&f.head, &f.data] {
            if b.is_empty() {
                continue;
            }
            if k == MAX_IOVECS {
                break 'fill;
            }
            slices[k] = IoSlice::new(b);
            k += 1;
        }
    }
    writer.write_vectored(&slices[..k]).await.map(Wrote::Bytes)
}

impl Conn<'_> {
    fn release(&self, bytes: u64) {
        self.ctx.budget.release(bytes);
    }

    fn release_blocks<'b>(&self, blocks: impl IntoIterator<Item = &'b Block>) {
        let bytes: u64 = blocks.into_iter().map(|b| u64::from(b.length)).sum();
        if bytes > 0 {
            self.release(bytes);
        }
    }

    async fn drive<S>(
        &mut self,
        stream: S,
        theirs: Handshake,
        cmds: &mut mpsc::Receiver<PeerCmd>,
        reads: &mut mpsc::Receiver<ReadDone>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ctx = self.ctx;
        let (mut reader, mut writer) = tokio::io::split(stream);
        if theirs.supports_extended() {
            let mut ext = ExtendedHandshake {
                v: Some(concat!("actorrent ", env!("CARGO_PKG_VERSION")).to_string()),
                reqq: Some(ctx.config.max_upload_queue.min(u32::MAX as usize) as u32),
                yourip: Some(your_ip(ctx.addr)),
                ipv6: our_ipv6(ctx.listen, self.local),
                ..Default::default()
            };
            if let Some(info) = &ctx.metadata {
                ext.m
                    .insert(ut_metadata::EXTENSION_NAME.into(), ext_id::UT_METADATA);
                ext.metadata_size = Some(info.len() as u64);
            }
            if ctx.pex {
                ext.m
                    .insert(protocol::ut_pex::EXTENSION_NAME.into(), ext_id::UT_PEX);
            }
            ext.to_message().encode(&mut self.out);
        }
        if self.fast && self.have.none() {
            Message::HaveNone.encode(&mut self.out);
        } else if self.fast && self.have.is_full() {
            Message::HaveAll.encode(&mut self.out);
        } else if !self.have.none() {
            Message::Bitfield(Bytes::from(self.have.to_bytes())).encode(&mut self.out);
        }
        // BEP 5: a peer that sets the DHT bit is told our DHT port (after
        // the piece set, which some clients want first).
        if let Some(dht) = ctx.dht.as_ref().filter(|_| theirs.supports_dht()) {
            Message::Port(dht.local_addr().port()).encode(&mut self.out);
        }
        // The opening messages go out before anything is read, as the
        // handshake did: a connection that ends at once still said them.
        // Flushed too: an encrypting stream may hold the tail of a write.
        let opening = self.out.split().freeze();
        let say = async {
            writer.write_all(&opening).await?;
            writer.flush().await
        };
        match tokio::time::timeout(ctx.config.write_timeout, say).await {
            Ok(Ok(())) => self.session.sent(Instant::now()),
            Ok(Err(e)) => return End::network(format!("write: {e}")),
            Err(_) => return End::network("write timed out"),
        }
        let limits = Limits {
            max_message_len: ctx.config.max_message_len,
            max_request_len: wire::DEFAULT_MAX_REQUEST_LEN,
            piece_count: Some(ctx.piece_count),
        };
        let mut spare = readbuf::ReadBuffers::new(ctx.config.read_buffer / 4);
        let mut buf = spare.first();
        let mut tick = tokio::time::interval(ctx.config.peer_tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.stage_control();
            let budget = ctx.budget.clone();
            let budget_epoch = self.budget_epoch;
            let can_read = self.frames_len < ctx.config.max_send_queue + CONTROL_BACKLOG
                && self.down_wait.is_none();
            // Biased, in this order: a ready read, then a ready write, then
            // the rest; the tick last. Random choice let the tick win over a
            // pending write, and the tick's exchange then waited on the
            // torrent with frames (an Interested, a Request) unsent.
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return End::network("dropped by the torrent"),
                read = reader.read_buf(&mut buf), if can_read => {
                    let mut n = match read {
                        Ok(0) => return End::network("closed by the peer"),
                        Ok(n) => n,
                        Err(e) => return End::network(format!("read: {e}")),
                    };
                    let mut blocks = Vec::new();
                    let mut turn = 0;
                    let mut ended = None;
                    loop {
                        let now = Instant::now();
                        self.session.received(now);
                        let decoded = self.decode(&mut buf, &mut spare, &limits, now, &mut blocks);
                        if let Err(end) = decoded.await {
                            self.release_blocks(blocks.iter().map(|(b, _)| b));
                            return end;
                        }
                        turn += n;
                        // Under a download limit the next read waits for
                        // these bytes' grant, as a branch of the loop.
                        self.down_wait = ratelimit::grant(&ctx.down_limits, n);
                        // A read fills at most a chunk; when more is waiting
                        // (tokio polls the socket again only after a read
                        // that filled its room, so asking costs no syscall
                        // otherwise), read it too: up to `read_buffer` bytes
                        // go to the torrent in one exchange, one wake-up.
                        if self.down_wait.is_some()
                            || turn >= ctx.config.read_buffer
                            || self.frames_len >= ctx.config.max_send_queue + CONTROL_BACKLOG
                        {
                            break;
                        }
                        match ready_now(reader.read_buf(&mut buf)) {
                            None => break,
                            Some(Ok(m)) if m > 0 => n = m,
                            // The end (or an error) after the blocks in hand
                            // are passed on.
                            Some(Ok(_)) => {
                                ended = Some(End::network("closed by the peer"));
                                break;
                            }
                            Some(Err(e)) => {
                                ended = Some(End::network(format!("read: {e}")));
                                break;
                            }
                        }
                    }
                    if let Err(end) = self.exchange(blocks, false).await {
                        return end;
                    }
                    if let Some(end) = ended {
                        return end;
                    }
                    if let Err(end) = self.report(false).await {
                        return end;
                    }
                    if let Err(end) = self.pump().await {
                        return end;
                    }
                }
                wrote = write_frames(&mut writer, &self.frames), if !self.frames.is_empty() || self.unflushed => {
                    match wrote {
                        Ok(Wrote::Bytes(0)) => return End::network("write: wrote zero bytes"),
                        Ok(Wrote::Bytes(n)) => {
                            self.unflushed = true;
                            self.wrote(n);
                        }
                        Ok(Wrote::Flushed) => self.unflushed = false,
                        Err(e) => return End::network(format!("write: {e}")),
                    }
                    if let Err(end) = self.pump().await {
                        return end;
                    }
                }
                Some(done) = reads.recv() => {
                    if let Err(end) = self.read_done(done) {
                        return end;
                    }
                    if let Err(end) = self.pump().await {
                        return end;
                    }
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return End::network("torrent stopped") };
                    self.on_cmd(cmd);
                    // Drain what else is waiting so a burst costs one flush.
                    while let Ok(cmd) = cmds.try_recv() {
                        self.on_cmd(cmd);
                    }
                    if let Err(end) = self.exchange(Vec::new(), false).await {
                        return end;
                    }
                    if let Err(end) = self.pump().await {
                        return end;
                    }
                }
                _ = ratelimit::granted(self.down_wait.as_mut()), if self.down_wait.is_some() => {
                    self.down_wait = None;
                }
                _ = ratelimit::granted(self.up.throttled.as_mut().map(|t| &mut t.wait)),
                    if self.up.throttled.is_some() => {
                    if let Err(end) = self.throttle_done().await {
                        return end;
                    }
                }
                _ = budget.resumed_since(budget_epoch), if self.budget_blocked => {
                    self.budget_blocked = false;
                    if let Err(end) = self.exchange(Vec::new(), true).await {
                        return end;
                    }
                }
                _ = tick.tick() => {
                    spare.trim();
                    let now = Instant::now();
                    self.session.flush_metrics();
                    self.up.turnaround.flush_into(&metrics::SERVE_TURNAROUND_US);
                    // While our download limit holds the next read, what
                    // the remote sent sits unread in the socket: that is
                    // neither its inactivity nor its requests' lateness.
                    let held = self.down_wait.is_some();
                    if !held && self.session.inactive(now) {
                        return End::network("inactive");
                    }
                    let expired = if held { Vec::new() } else { self.session.expire(now) };
                    if !expired.is_empty() {
                        debug!(count = expired.len(), "requests timed out");
                        self.release_blocks(&expired);
                        if ctx.torrent.send(TorrentMsg::TimedOut { id: ctx.id, blocks: expired }).await.is_err() {
                            return End::network("torrent stopped");
                        }
                    }
                    if !self.frames.is_empty()
                        && now.saturating_duration_since(self.last_write) > ctx.config.write_timeout
                    {
                        return End::network("write timed out");
                    }
                    if self.session.keepalive_due(now) {
                        Message::KeepAlive.encode(&mut self.out);
                    }
                    let retry = std::mem::take(&mut self.starved);
                    if let Err(end) = self.exchange(Vec::new(), retry).await {
                        return end;
                    }
                    if let Err(end) = self.report(true).await {
                        return end;
                    }
                    if let Err(end) = self.pump().await {
                        return end;
                    }
                }
            }
        }
    }

    /// Queues a frame for the socket.
    fn push_frame(&mut self, frame: Frame) {
        if self.frames.is_empty() {
            self.last_write = Instant::now();
        }
        self.frames_len += frame.len();
        self.frames.push_back(frame);
    }

    /// Moves the control messages encoded since the last loop turn into
    /// the send queue: after the frame being written and the control
    /// frames queued before them, ahead of the blocks.
    fn stage_control(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let head = self.out.split().freeze();
        if self.frames.is_empty() {
            self.last_write = Instant::now();
        }
        let mut at = usize::from(self.front_started);
        while self.frames.get(at).is_some_and(|f| f.data.is_empty()) {
            at += 1;
        }
        self.frames_len += head.len();
        self.frames.insert(
            at.min(self.frames.len()),
            Frame {
                head,
                data: Bytes::new(),
                asked: None,
            },
        );
    }

    /// Takes `n` written bytes off the front of the send queue.
    fn wrote(&mut self, mut n: usize) {
        let now = Instant::now();
        self.last_write = now;
        self.session.sent(now);
        self.frames_len -= n.min(self.frames_len);
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            let len = front.len();
            if n >= len {
                n -= len;
                if let Some(t) = front.asked {
                    self.up.turnaround.observe(
                        u64::try_from(now.saturating_duration_since(t).as_micros())
                            .unwrap_or(u64::MAX),
                    );
                }
                self.frames.pop_front();
                self.front_started = false;
            } else {
                let from_head = n.min(front.head.len());
                let _ = front.head.split_to(from_head);
                let _ = front.data.split_to(n - from_head);
                self.front_started = true;
                n = 0;
            }
        }
    }

    fn on_cmd(&mut self, cmd: PeerCmd) {
        match cmd {
            PeerCmd::Cancel(b) => {
                if self.session.cancelled(b) {
                    self.release(u64::from(b.length));
                    Message::Cancel(wire::BlockRef {
                        index: b.piece,
                        begin: b.begin,
                        length: b.length,
                    })
                    .encode(&mut self.out);
                }
            }
            PeerCmd::Have(i) => {
                self.have.set(i, true);
                Message::Have(i).encode(&mut self.out);
            }
            PeerCmd::Choke(choke) => {
                if choke != self.up.am_choking {
                    self.up.am_choking = choke;
                    if choke {
                        Message::Choke.encode(&mut self.out);
                        if let Some(t) = self.up.throttled.take() {
                            self.up.queue.push_front(t.req);
                        }
                        // BEP 6: with the fast extension a choke does not
                        // cancel requests by itself; reject each one.
                        for (r, _) in self.up.queue.drain(..) {
                            if self.fast {
                                Message::Reject(r).encode(&mut self.out);
                            }
                        }
                    } else {
                        Message::Unchoke.encode(&mut self.out);
                    }
                }
            }
            PeerCmd::Pex(current) => {
                self.send_pex(&current);
                self.pex_list = Some(current);
            }
            PeerCmd::Interested(on) => {
                if on != self.session.am_interested {
                    self.session.am_interested = on;
                    let msg = if on {
                        Message::Interested
                    } else {
                        Message::NotInterested
                    };
                    msg.encode(&mut self.out);
                    self.starved = false;
                }
            }
        }
    }

    /// Handles one message; blocks are collected into `blocks` for one
    /// exchange with the torrent per read.
    async fn on_message(
        &mut self,
        msg: Message,
        now: Instant,
        blocks: &mut Vec<(Block, Bytes)>,
    ) -> Result<(), End> {
        let ctx = self.ctx;
        let to_torrent = |m| async {
            ctx.torrent
                .send(m)
                .await
                .map_err(|_| End::network("torrent stopped"))
        };
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                let voided = self.session.choked();
                self.release_blocks(&voided);
                to_torrent(TorrentMsg::Choked { id: ctx.id }).await?;
            }
            Message::Unchoke => {
                self.session.peer_choking = false;
                self.starved = false;
            }
            Message::Interested => self.up.peer_interested = true,
            Message::NotInterested => self.up.peer_interested = false,
            Message::Have(i) => {
                self.announced = true;
                to_torrent(TorrentMsg::Have {
                    id: ctx.id,
                    piece: i,
                })
                .await?;
                self.starved = false;
            }
            Message::Bitfield(bits) => {
                self.replaces_announced("bitfield");
                to_torrent(TorrentMsg::Bitfield { id: ctx.id, bits }).await?;
                self.starved = false;
            }
            Message::HaveAll | Message::HaveNone | Message::Suggest(_) if !self.fast => {
                return Err(End::protocol("fast-extension message without the fast bit"));
            }
            Message::HaveAll => {
                self.replaces_announced("have all");
                to_torrent(TorrentMsg::HaveAll { id: ctx.id }).await?;
                self.starved = false;
            }
            Message::HaveNone => {
                // The torrent starts every peer with no pieces; only a late
                // one changes anything.
                if self.replaces_announced("have none") {
                    to_torrent(TorrentMsg::HaveNone { id: ctx.id }).await?;
                }
            }
            Message::Request(r) => self.on_request(r)?,
            Message::Piece { index, begin, data } => {
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                if len > BLOCK_SIZE {
                    // libtorrent: packet_too_large. No client sends more.
                    return Err(End::refused(format!("block of {len} bytes")));
                }
                let block = Block {
                    piece: index,
                    begin,
                    length: len,
                };
                match self.session.block_arrived(block, now) {
                    Arrival::Expected => blocks.push((block, data)),
                    Arrival::NotOutstanding => {
                        // Late or unrequested; the torrent's picker tells
                        // which. Without budget room it is dropped.
                        if ctx.budget.try_reserve(u64::from(len)) {
                            blocks.push((block, data));
                        }
                    }
                }
            }
            Message::Cancel(r) => {
                // Unknown cancels (already served, never asked) are harmless.
                if self.up.throttled.as_ref().is_some_and(|t| t.req.0 == r) {
                    self.up.throttled = None;
                } else if let Some(pos) = self.up.queue.iter().position(|q| q.0 == r) {
                    self.up.queue.remove(pos);
                }
            }
            // PORT is taken with or without the DHT bit, as libtorrent does:
            // the node is offered to the DHT without waiting (a full mailbox
            // drops the hint). Suggestions are advice we do not take.
            Message::Port(port) => {
                if let Some(dht) = &ctx.dht
                    && port != 0
                {
                    dht.try_add_node(SocketAddr::new(ctx.addr.ip(), port));
                }
            }
            Message::Suggest(_) => {}
            Message::AllowedFast(_) if !self.fast => {
                return Err(End::protocol("allowed-fast without the fast bit"));
            }
            Message::AllowedFast(_) => {}
            Message::Reject(_) if !self.fast => {
                return Err(End::protocol("reject without the fast bit"));
            }
            Message::Reject(r) => {
                let block = Block {
                    piece: r.index,
                    begin: r.begin,
                    length: r.length,
                };
                if self.session.rejected(block) {
                    self.release(u64::from(block.length));
                    to_torrent(TorrentMsg::Rejected { id: ctx.id, block }).await?;
                } else {
                    self.oddity("reject for a block not requested");
                }
            }
            // A second handshake updates what the first said (BEP 10).
            Message::Extended { id: 0, payload } => match ExtendedHandshake::decode(&payload) {
                Ok(h) => {
                    if let Some(q) = h.reqq {
                        self.session.set_peer_reqq(q);
                    }
                    // Id 0 withdraws the extension (BEP 10).
                    self.their_ut_metadata =
                        h.m.get(ut_metadata::EXTENSION_NAME)
                            .copied()
                            .filter(|&id| id != 0);
                    self.their_ut_pex =
                        h.m.get(protocol::ut_pex::EXTENSION_NAME)
                            .copied()
                            .filter(|&id| id != 0);
                    if let Some(list) = self.pex_list.clone() {
                        self.send_pex(&list);
                    }
                    // BEP 10 `ipv6` + `p`: the peer's IPv6 listen address.
                    // It goes to the address book the way PEX addresses do
                    // (same cap; the torrent drops it when PEX is off, as
                    // for private torrents).
                    if let (Some(ip), Some(port), true) = (h.ipv6, h.p, ctx.pex) {
                        let addr = SocketAddr::new(ip.into(), port);
                        if !ip.is_unspecified() && !ip.is_multicast() && addr != ctx.addr {
                            debug!(%addr, "IPv6 address from the extended handshake");
                            self.ctx
                                .torrent
                                .send(TorrentMsg::PexPeers {
                                    id: self.ctx.id,
                                    added: vec![addr],
                                })
                                .await
                                .map_err(|_| End::network("torrent stopped"))?;
                        }
                    }
                }
                Err(e) => self.oddity(&format!("extended handshake ignored: {e}")),
            },
            Message::Extended {
                id: ext_id::UT_METADATA,
                payload,
            } if ctx.metadata.is_some() => self.on_metadata_msg(&payload)?,
            Message::Extended {
                id: ext_id::UT_PEX,
                payload,
            } if ctx.pex => self.on_pex(&payload, now).await?,
            // We assign no other extension message ids, so no honest peer
            // sends one.
            Message::Extended { id, .. } => {
                return Err(End::protocol(format!(
                    "extension message {id}, an id we never assigned"
                )));
            }
        }
        Ok(())
    }

    /// Answers a BEP 9 message: a request with the piece from the info
    /// dictionary, or a reject when the piece is out of range or our send
    /// queue is full (so a flood of requests cannot grow memory).
    fn on_metadata_msg(&mut self, payload: &Bytes) -> Result<(), End> {
        let Some(info) = self.ctx.metadata.clone() else {
            return Ok(());
        };
        let limits = ut_metadata::Limits::default();
        let msg = MetadataMsg::decode(payload, &limits)
            .map_err(|e| End::protocol(format!("bad ut_metadata message: {e}")))?;
        let MetadataMsg::Request { piece } = msg else {
            self.oddity("ut_metadata data or reject we never asked for");
            return Ok(());
        };
        let Some(their_id) = self.their_ut_metadata else {
            self.oddity("ut_metadata request from a peer that did not advertise it");
            return Ok(());
        };
        let size = info.len() as u32;
        let answer = match ut_metadata::piece_len(size, piece) {
            Some(len)
                if self.out.len() + self.frames_len + len as usize
                    <= self.ctx.config.max_send_queue =>
            {
                let start = (piece * ut_metadata::PIECE_SIZE) as usize;
                MetadataMsg::Data {
                    piece,
                    total_size: size,
                    data: info.slice(start..start + len as usize),
                }
            }
            Some(_) => MetadataMsg::Reject { piece },
            None => {
                self.oddity(&format!(
                    "ut_metadata request for piece {piece} out of range"
                ));
                MetadataMsg::Reject { piece }
            }
        };
        Message::Extended {
            id: their_id,
            payload: Bytes::from(answer.encode()),
        }
        .encode(&mut self.out);
        Ok(())
    }

    /// Takes a BEP 11 message: the added peers go to the torrent (capped,
    /// port 0 and our own address skipped there). One message per half
    /// interval is taken; more often is an oddity and ignored, as is a
    /// message that does not decode.
    async fn on_pex(&mut self, payload: &[u8], now: Instant) -> Result<(), End> {
        let cfg = &self.ctx.config.pex;
        if self
            .pex_received
            .is_some_and(|t| now.saturating_duration_since(t) < cfg.interval / 2)
        {
            self.oddity("ut_pex messages more often than BEP 11 allows");
            return Ok(());
        }
        let limits = protocol::ut_pex::Limits {
            max_peers: cfg.max_peers_per_message,
        };
        let pex = match protocol::ut_pex::Pex::decode(payload, &limits) {
            Ok(p) => p,
            Err(e) => {
                self.oddity(&format!("ut_pex message ignored: {e}"));
                return Ok(());
            }
        };
        self.pex_received = Some(now);
        if pex.truncated > 0 {
            self.oddity(&format!(
                "ut_pex: {} peers past the cap skipped",
                pex.truncated
            ));
        }
        let added: Vec<SocketAddr> = pex.added.into_iter().map(|(a, _)| a).collect();
        if added.is_empty() {
            return Ok(());
        }
        debug!(count = added.len(), "peers learned by PEX");
        self.ctx
            .torrent
            .send(TorrentMsg::PexPeers {
                id: self.ctx.id,
                added,
            })
            .await
            .map_err(|_| End::network("torrent stopped"))
    }

    /// Sends a BEP 11 message if the remote takes them and the interval
    /// allows.
    fn send_pex(&mut self, current: &[SocketAddr]) {
        let Some(id) = self.their_ut_pex.filter(|_| self.ctx.pex) else {
            return;
        };
        let cfg = self.ctx.config.pex;
        if let Some(msg) = self.pex.next(current, self.ctx.addr, Instant::now(), &cfg) {
            Message::Extended {
                id,
                payload: Bytes::from(msg.encode()),
            }
            .encode(&mut self.out);
        }
    }

    /// Counts an odd message we tolerate, and logs it at debug.
    fn oddity(&mut self, what: &str) {
        debug!(what, "protocol oddity tolerated");
        self.oddities += 1;
    }

    /// Notes that the peer announced its pieces; `true` (and an oddity)
    /// if it had announced them before, so this replaces that set.
    fn replaces_announced(&mut self, what: &str) -> bool {
        let late = std::mem::replace(&mut self.announced, true);
        if late {
            self.oddity(&format!("late {what} replaces the pieces announced before"));
        }
        late
    }

    /// Handles every complete message in `buf`, collecting blocks into
    /// `blocks`, and makes room for the rest of the partial one.
    async fn decode(
        &mut self,
        buf: &mut BytesMut,
        spare: &mut readbuf::ReadBuffers,
        limits: &Limits,
        now: Instant,
        blocks: &mut Vec<(Block, Bytes)>,
    ) -> Result<(), End> {
        loop {
            match wire::decode_message(buf, limits) {
                Ok(Decoded::Complete(msg)) => self.on_message(msg, now, blocks).await?,
                Ok(Decoded::NeedMore(n)) => {
                    spare.make_room(buf, n);
                    return Ok(());
                }
                Err(e) => self.on_bad_message(e, buf, limits)?,
            }
        }
    }

    /// Decides what a message the codec refused costs the connection: a
    /// well-framed message naming a piece or block out of range is dropped
    /// (a request is rejected) where libtorrent does the same, anything
    /// else ends the connection. See the module docs' table.
    fn on_bad_message(
        &mut self,
        e: wire::WireError,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<(), End> {
        use protocol::wire::{WireError, id};
        match e.content_error_id() {
            Some(id::REQUEST | id::CANCEL | id::REJECT | id::SUGGEST | id::ALLOWED_FAST) => {
                let Some((msg_id, payload)) = wire::skip_frame(buf, limits.max_message_len) else {
                    return Err(End::protocol(format!("bad message: {e}")));
                };
                if msg_id == id::REQUEST && payload.len() == 12 {
                    let r = wire::BlockRef {
                        index: u32::from_be_bytes(payload[0..4].try_into().unwrap_or_default()),
                        begin: u32::from_be_bytes(payload[4..8].try_into().unwrap_or_default()),
                        length: u32::from_be_bytes(payload[8..12].try_into().unwrap_or_default()),
                    };
                    self.refuse_request(r);
                }
                self.oddity(&format!("message dropped: {e}"));
                Ok(())
            }
            _ => Err(match e {
                WireError::MessageTooLong { .. } => End::refused(format!("bad message: {e}")),
                _ => End::protocol(format!("bad message: {e}")),
            }),
        }
    }

    /// Tells the torrent our transfer numbers and the remote's interest: at
    /// once when the interest changed, else about once a second
    /// (`periodic`).
    async fn report(&mut self, periodic: bool) -> Result<(), End> {
        let now = Instant::now();
        let changed = self.up.status_interested != self.up.peer_interested;
        let due = periodic
            && now.saturating_duration_since(self.up.last_status) >= Duration::from_secs(1);
        if !changed && !due {
            return Ok(());
        }
        self.up.last_status = now;
        self.up.status_interested = self.up.peer_interested;
        let uploaded = self.up.bytes_up - self.up.reported_up;
        self.up.reported_up = self.up.bytes_up;
        let msg = TorrentMsg::PeerStatus {
            id: self.ctx.id,
            interested: self.up.peer_interested,
            down_rate: self.session.download_rate(now),
            up_rate: self.up.meter.rate(now),
            uploaded,
            oddities: std::mem::take(&mut self.oddities),
            choking_us: self.session.peer_choking,
        };
        self.ctx
            .torrent
            .send(msg)
            .await
            .map_err(|_| End::network("torrent stopped"))
    }

    /// Hands received blocks to the torrent and, when the pipeline has room,
    /// asks it for blocks to request. `force` asks even after a pick that
    /// found nothing.
    async fn exchange(&mut self, blocks: Vec<(Block, Bytes)>, force: bool) -> Result<(), End> {
        let ctx = self.ctx;
        // The budget resumed but the select has not polled its wake-up yet
        // (while blocks keep arriving the read branch wins the biased
        // select): this is that wake-up, or the pipe drains before it runs.
        let resumed = self.budget_blocked && ctx.budget.epoch() != self.budget_epoch;
        if resumed {
            self.budget_blocked = false;
        }
        let force = force || resumed;
        let mut want = if self.starved && !force {
            0
        } else {
            self.session.wanted()
        };
        let mut reserved = 0u64;
        let mut partial_only = false;
        if want > 0 {
            if self.budget_blocked && self.starved && !force {
                // Paused, and the last partial-only pick found nothing.
                want = 0;
            } else {
                // Ask for less rather than nothing: a deep pipeline may not
                // fit in a small budget at once.
                let asked = want;
                let epoch = ctx.budget.epoch();
                let mut by_limit = false;
                while want > 0 {
                    match ctx.budget.reserve(want as u64 * u64::from(BLOCK_SIZE)) {
                        Ok(()) => break,
                        Err(Refused::Limit) => by_limit = true,
                        Err(_) => {}
                    }
                    want /= 2;
                }
                // `asked > 0` says the remote unchokes us and the pipeline
                // has slots; cut by the effective limit (not by the backlog
                // of unwritten blocks) to less than half the pipeline, the
                // limit starves this peer, so it should grow.
                let out = self.session.outstanding();
                if by_limit && (out + want) * 2 < out + asked {
                    ctx.budget.starving();
                }
                if want > 0 {
                    reserved = want as u64 * u64::from(BLOCK_SIZE);
                } else {
                    // Paused: only blocks that finish started pieces (or a
                    // budget full of partial pieces would never drain),
                    // reserved once the torrent says which.
                    want = self.session.wanted();
                    partial_only = true;
                    self.budget_blocked = true;
                    self.budget_epoch = epoch;
                }
            }
        }
        if want == 0 && blocks.is_empty() {
            return Ok(());
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let msg = TorrentMsg::Exchange {
            id: ctx.id,
            blocks,
            want: want as u32,
            partial_only,
            reply: reply_tx,
        };
        let stopped = || End::network("torrent stopped");
        if ctx.torrent.send(msg).await.is_err() {
            self.release(reserved);
            return Err(stopped());
        }
        let ExchangeReply {
            requests,
            violation,
        } = match reply_rx.await {
            Ok(r) => r,
            Err(_) => {
                self.release(reserved);
                return Err(stopped());
            }
        };
        let used: u64 = requests.iter().map(|b| u64::from(b.length)).sum();
        if partial_only {
            ctx.budget.force_reserve(used);
        } else {
            self.release(reserved - used.min(reserved));
        }
        if let Some(v) = violation {
            self.release_blocks(&requests);
            return Err(End::protocol(v));
        }
        // A pick that found blocks ends the starvation: left set, the peer
        // would ask again only on wake-ups and ticks (after a partial-only
        // pick found nothing, a 250 ms stop-and-go at every budget pause).
        if want > 0 {
            self.starved = requests.is_empty();
        }
        let now = Instant::now();
        for b in &requests {
            Message::Request(wire::BlockRef {
                index: b.piece,
                begin: b.begin,
                length: b.length,
            })
            .encode(&mut self.out);
        }
        self.session.requested(&requests, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn yourip_is_the_remote_address_as_seen_mapped_shown_as_ipv4() {
        assert_eq!(your_ip(a("198.18.0.7:6881")), a("198.18.0.7:1").ip());
        assert_eq!(
            your_ip(a("[::ffff:198.18.0.7]:6881")),
            a("198.18.0.7:1").ip()
        );
        assert_eq!(your_ip(a("[2001:db8::7]:6881")), a("[2001:db8::7]:1").ip());
    }

    #[test]
    fn ipv6_is_our_listen_address_or_the_connections_when_dual_stack() {
        let global = "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap();
        // Not listening, or listening on IPv4 only: nothing to tell.
        assert_eq!(our_ipv6(None, Some(a("[2001:db8::1]:5000"))), None);
        assert_eq!(
            our_ipv6(Some(a("0.0.0.0:6881")), Some(a("[2001:db8::1]:5000"))),
            None
        );
        // A listener on a global IPv6 address: that one, whatever the
        // connection (an IPv4 peer learns it too).
        assert_eq!(
            our_ipv6(Some(a("[2001:db8::1]:6881")), Some(a("198.18.0.1:6881"))),
            Some(global)
        );
        assert_eq!(our_ipv6(Some(a("[2001:db8::1]:6881")), None), Some(global));
        // Dual-stack `[::]`: the address this connection uses, if IPv6.
        assert_eq!(
            our_ipv6(Some(a("[::]:6881")), Some(a("[2001:db8::1]:6881"))),
            Some(global)
        );
        assert_eq!(
            our_ipv6(Some(a("[::]:6881")), Some(a("198.18.0.1:6881"))),
            None
        );
        assert_eq!(our_ipv6(Some(a("[::]:6881")), None), None);
        // Addresses nobody else can reach us on are never sent.
        for bad in [
            "[::1]:6881",
            "[fe80::1]:6881",
            "[ff02::1]:6881",
            "[::ffff:198.18.0.1]:6881",
        ] {
            assert_eq!(our_ipv6(Some(a(bad)), None), None, "{bad}");
            assert_eq!(our_ipv6(Some(a("[::]:6881")), Some(a(bad))), None, "{bad}");
        }
    }
}

//! The metadata phase of a magnet link (BEP 9 over BEP 10): find the info
//! dictionary of an info-hash from the peers that have it, before any
//! torrent actor exists.
//!
//! [`fetch`] runs a coordinator that owns the address book of the phase
//! (bounded, deduplicated, banned addresses never dialled again) and the
//! [`Assembler`]; one small task per connection does the BitTorrent and
//! extended handshakes and asks the coordinator which pieces to request.
//! Peer tasks await the coordinator's bounded mailbox (as peers await their
//! torrent) and the coordinator never awaits a peer: it answers through
//! oneshots.
//!
//! Several peers are asked in parallel, a few pieces each. A copy whose
//! SHA-1 does not match the info-hash is discarded, every peer that sent
//! part of it gets a strike, and the next copies are taken from one peer at
//! a time, so a bad copy then names its sender, which is banned. The caller
//! parses the verified bytes with the metainfo parser (path checks
//! included) and starts a normal torrent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::metainfo::InfoHash;
use protocol::ut_metadata::{self, Assembler, MetadataMsg, Received};
use protocol::wire::{self, Decoded, ExtendedHandshake, Handshake, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Bounds and timings of the metadata phase: the `[metadata]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// Largest `metadata_size` accepted from a peer. Default 16 MiB.
    pub max_size: u32,
    /// Connections open at once while fetching. Default 16.
    pub max_peers: usize,
    /// Pieces asked of one peer at a time. Default 4.
    pub requests_per_peer: usize,
    /// A peer that leaves a request unanswered this long is dropped.
    /// Default 20 s.
    #[serde(
        rename = "request_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub request_timeout: Duration,
    /// Addresses kept in the phase's address book. Default 1000.
    pub max_known: usize,
    /// TCP connect timeout. Default 10 s.
    #[serde(
        rename = "connect_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub connect_timeout: Duration,
    /// Handshake (and extended handshake) timeout. Default 10 s.
    #[serde(
        rename = "handshake_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub handshake_timeout: Duration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            max_size: ut_metadata::DEFAULT_MAX_METADATA_SIZE,
            max_peers: 16,
            requests_per_peer: 4,
            request_timeout: Duration::from_secs(20),
            max_known: 1000,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// How far the phase is, for `--stats-json`, metrics and the progress bar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataProgress {
    /// Connections open now.
    pub peers: usize,
    /// Connected peers that advertised `ut_metadata` with a size.
    pub peers_with_metadata: usize,
    /// Metadata pieces received of the current copy.
    pub pieces_done: u32,
    /// Metadata pieces in all (0 until a peer told the size).
    pub pieces_total: u32,
    /// Copies whose SHA-1 did not match the info-hash.
    pub hash_failures: u64,
    /// Addresses banned for sending a bad copy.
    pub banned: u64,
}

/// What [`fetch`] needs.
pub struct FetchParams {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// Addresses to dial first (`x.pe`, `--peer`).
    pub peers: Vec<SocketAddr>,
    /// More addresses as trackers (or the DHT) find them.
    pub more_peers: mpsc::Receiver<Vec<SocketAddr>>,
    /// Bounds.
    pub config: MetadataConfig,
    /// How to connect: the encryption policy, binding and proxy of every
    /// other peer connection.
    pub dialer: crate::net::Dialer,
    /// Progress, replaced as it changes.
    pub progress: watch::Sender<MetadataProgress>,
    /// `Some`: advertise `ut_pex` and dial the peers PEX messages name
    /// (BEP 11; a magnet's privacy is unknown until its metadata, and a
    /// private torrent's magnet has its trackers). `None` (`--no-pex`): not.
    pub pex: Option<crate::pex::PexConfig>,
}

/// The verified info dictionary and the addresses worth dialling next.
#[derive(Debug)]
pub struct Fetched {
    /// The raw info dictionary; its SHA-1 is the info-hash.
    pub info_bytes: Vec<u8>,
    /// Every address seen and not banned, peers that had the metadata first.
    pub peers: Vec<SocketAddr>,
}

/// Why [`fetch`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Stopped by its cancellation token.
    #[error("stopped before the metadata was found")]
    Cancelled,
}

type PeerTag = u64;

/// What a connection tells the coordinator. Each carries a reply: `None`
/// means "leave", `Some(pieces)` the pieces to request next (maybe none:
/// ask again later).
enum Event {
    /// The remote advertised `ut_metadata` and this size; pieces, please.
    Want {
        peer: PeerTag,
        size: u64,
        reply: oneshot::Sender<Option<Vec<u32>>>,
    },
    Piece {
        peer: PeerTag,
        piece: u32,
        data: Bytes,
        reply: oneshot::Sender<Option<Vec<u32>>>,
    },
    /// Addresses a `ut_pex` message named (capped by the decoder).
    Learned { addrs: Vec<SocketAddr> },
    /// The connection ended (or the peer rejected a request).
    Gone { peer: PeerTag, reason: String },
}

/// Finds the info dictionary of `params.info_hash`. Runs until it has a
/// verified copy or `cancel` fires; peers that come and go meanwhile are
/// retried from the address book.
pub async fn fetch(params: FetchParams, cancel: CancellationToken) -> Result<Fetched, FetchError> {
    let FetchParams {
        info_hash,
        peer_id,
        peers,
        mut more_peers,
        config,
        dialer,
        progress,
        pex,
    } = params;
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let mut c = Coordinator {
        info_hash,
        config,
        dialer,
        assembler: None,
        solo: None,
        one_source: false,
        known: HashSet::new(),
        queue: VecDeque::new(),
        active: HashMap::new(),
        with_metadata: HashSet::new(),
        banned: HashSet::new(),
        strikes: HashMap::new(),
        next_tag: 0,
        progress,
        stats: MetadataProgress::default(),
        pex,
    };
    c.learn(peers);
    let peers_cancel = cancel.child_token();
    // Retries an address whose connection ended, a few seconds later.
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut more_open = true;
    let result = loop {
        c.dial(&tx, peer_id, &peers_cancel);
        c.publish();
        tokio::select! {
            _ = cancel.cancelled() => break Err(FetchError::Cancelled),
            batch = more_peers.recv(), if more_open => match batch {
                Some(b) => c.learn(b),
                None => more_open = false,
            },
            _ = retry.tick() => c.requeue(),
            Some(ev) = rx.recv() => {
                if let Some(done) = c.on_event(ev) {
                    break Ok(done);
                }
            }
        }
    };
    peers_cancel.cancel();
    result
}

struct Coordinator {
    info_hash: InfoHash,
    config: MetadataConfig,
    dialer: crate::net::Dialer,
    assembler: Option<Assembler>,
    /// After a bad copy: the one peer pieces are asked of.
    solo: Option<PeerTag>,
    /// A bad copy was seen: take the next ones from one peer at a time.
    one_source: bool,
    known: HashSet<SocketAddr>,
    /// Addresses to dial, oldest first.
    queue: VecDeque<SocketAddr>,
    active: HashMap<PeerTag, (SocketAddr, CancellationToken)>,
    with_metadata: HashSet<PeerTag>,
    banned: HashSet<SocketAddr>,
    strikes: HashMap<SocketAddr, u32>,
    next_tag: PeerTag,
    progress: watch::Sender<MetadataProgress>,
    stats: MetadataProgress,
    pex: Option<crate::pex::PexConfig>,
}

impl Coordinator {
    fn learn(&mut self, addrs: Vec<SocketAddr>) {
        for a in addrs {
            if self.known.len() >= self.config.max_known {
                break;
            }
            if !self.banned.contains(&a) && self.known.insert(a) {
                self.queue.push_back(a);
            }
        }
    }

    /// Known addresses with no connection go back in the dial queue.
    fn requeue(&mut self) {
        if !self.queue.is_empty() {
            return;
        }
        let connected: HashSet<SocketAddr> = self.active.values().map(|(a, _)| *a).collect();
        for a in &self.known {
            if !connected.contains(a) && !self.banned.contains(a) {
                self.queue.push_back(*a);
            }
        }
    }

    fn dial(&mut self, tx: &mpsc::Sender<Event>, peer_id: [u8; 20], cancel: &CancellationToken) {
        while self.active.len() < self.config.max_peers {
            let Some(addr) = self.queue.pop_front() else {
                return;
            };
            if self.banned.contains(&addr) || self.active.values().any(|(a, _)| *a == addr) {
                continue;
            }
            let tag = self.next_tag;
            self.next_tag += 1;
            let token = cancel.child_token();
            self.active.insert(tag, (addr, token.clone()));
            let conn = PeerConn {
                tag,
                addr,
                info_hash: self.info_hash,
                peer_id,
                config: self.config,
                dialer: self.dialer.clone(),
                tx: tx.clone(),
                pex: self.pex,
            };
            tokio::spawn(async move {
                let reason = tokio::select! {
                    _ = token.cancelled() => "stopped".to_string(),
                    r = conn.run() => r,
                };
                // The coordinator may be gone (the phase is over).
                let _ = conn
                    .tx
                    .send(Event::Gone {
                        peer: conn.tag,
                        reason,
                    })
                    .await;
            });
        }
    }

    fn publish(&mut self) {
        self.stats.peers = self.active.len();
        self.stats.peers_with_metadata = self.with_metadata.len();
        let (done, total) = self.assembler.as_ref().map_or((0, 0), Assembler::progress);
        self.stats.pieces_done = done;
        self.stats.pieces_total = total;
        self.progress.send_if_modified(|p| {
            let changed = *p != self.stats;
            *p = self.stats.clone();
            changed
        });
    }

    /// The pieces `peer` should request now.
    fn assign(&mut self, peer: PeerTag) -> Vec<u32> {
        if self.solo.is_some_and(|s| s != peer) {
            return Vec::new();
        }
        let Some(a) = self.assembler.as_mut() else {
            return Vec::new();
        };
        if self.solo.is_none() && self.one_source {
            // After a bad copy, one source at a time.
            self.solo = Some(peer);
        }
        let mut out = Vec::new();
        while out.len() < self.config.requests_per_peer {
            match a.next_request(peer) {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    fn on_event(&mut self, ev: Event) -> Option<Fetched> {
        match ev {
            Event::Want { peer, size, reply } => {
                if !self.active.contains_key(&peer) {
                    let _ = reply.send(None);
                    return None;
                }
                self.with_metadata.insert(peer);
                let limits = ut_metadata::Limits {
                    max_metadata_size: self.config.max_size,
                };
                if self.assembler.is_none() {
                    match Assembler::new(self.info_hash, size, &limits) {
                        Ok(a) => self.assembler = Some(a),
                        Err(e) => {
                            debug!(error = %e, "peer's metadata_size not used");
                            let _ = reply.send(None);
                            return None;
                        }
                    }
                }
                // A peer that disagrees on the size waits: the copy being
                // assembled may be the wrong one.
                let pieces = if self.assembler.as_ref().map(|a| u64::from(a.size())) == Some(size) {
                    self.assign(peer)
                } else {
                    Vec::new()
                };
                let _ = reply.send(Some(pieces));
                None
            }
            Event::Piece {
                peer,
                piece,
                data,
                reply,
            } => {
                let Some(a) = self.assembler.as_mut() else {
                    let _ = reply.send(Some(Vec::new()));
                    return None;
                };
                match a.received(peer, piece, &data) {
                    Received::Stored | Received::Ignored => {
                        let next = self.assign(peer);
                        let _ = reply.send(Some(next));
                        None
                    }
                    Received::Complete(info_bytes) => {
                        let _ = reply.send(None);
                        info!(size = info_bytes.len(), "metadata verified");
                        let mut peers: Vec<SocketAddr> = self
                            .active
                            .iter()
                            .filter(|(t, _)| self.with_metadata.contains(t))
                            .map(|(_, (a, _))| *a)
                            .collect();
                        for a in &self.known {
                            if !peers.contains(a) && !self.banned.contains(a) {
                                peers.push(*a);
                            }
                        }
                        Some(Fetched { info_bytes, peers })
                    }
                    Received::HashMismatch(senders) => {
                        let _ = reply.send(Some(Vec::new()));
                        self.on_mismatch(&senders);
                        None
                    }
                }
            }
            Event::Learned { addrs } => {
                // Hostile input: no port 0, no unspecified or multicast
                // address; `learn` caps the book and skips banned ones.
                let before = self.known.len();
                self.learn(
                    addrs
                        .into_iter()
                        .filter(|a| {
                            a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()
                        })
                        .collect(),
                );
                debug!(
                    new = self.known.len() - before,
                    "metadata peers learned by PEX"
                );
                None
            }
            Event::Gone { peer, reason } => {
                if let Some((addr, _)) = self.active.remove(&peer) {
                    debug!(%addr, %reason, "metadata peer gone");
                }
                self.with_metadata.remove(&peer);
                if let Some(a) = self.assembler.as_mut() {
                    a.release(peer);
                }
                if self.solo == Some(peer) {
                    self.solo = None;
                }
                None
            }
        }
    }

    /// A bad copy: strikes for its senders, a ban for a lone sender or a
    /// second offence, and the assembly starts over (from the size the next
    /// peer gives, in case the size was the lie).
    fn on_mismatch(&mut self, senders: &[PeerTag]) {
        self.stats.hash_failures += 1;
        for tag in senders {
            let Some((addr, token)) = self.active.get(tag).cloned() else {
                continue;
            };
            let strikes = self.strikes.entry(addr).or_insert(0);
            *strikes += 1;
            let ban = senders.len() == 1 || *strikes >= 2;
            warn!(%addr, strikes = *strikes, banned = ban, "metadata does not match the info-hash");
            if ban {
                self.banned.insert(addr);
                self.stats.banned += 1;
                token.cancel();
            }
        }
        self.one_source = true;
        self.assembler = None;
        self.solo = None;
    }
}

/// One connection of the metadata phase.
struct PeerConn {
    tag: PeerTag,
    addr: SocketAddr,
    info_hash: InfoHash,
    peer_id: [u8; 20],
    config: MetadataConfig,
    dialer: crate::net::Dialer,
    tx: mpsc::Sender<Event>,
    pex: Option<crate::pex::PexConfig>,
}

/// Our extended message id for `ut_metadata` (the same as the peer actor's).
const OUR_UT_METADATA: u8 = crate::peer::ext_id::UT_METADATA;
/// Our extended message id for `ut_pex` (the same as the peer actor's).
const OUR_UT_PEX: u8 = crate::peer::ext_id::UT_PEX;

impl PeerConn {
    /// Runs the connection; returns why it ended.
    async fn run(&self) -> String {
        match self.session().await {
            Ok(()) => "done".into(),
            Err(e) => e,
        }
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Option<Vec<u32>>>) -> Event,
    ) -> Result<Option<Vec<u32>>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| "phase over".to_string())?;
        rx.await.map_err(|_| "phase over".to_string())
    }

    async fn session(&self) -> Result<(), String> {
        let cfg = &self.config;
        let ours = crate::net::our_handshake(self.info_hash.0, self.peer_id);
        // The same dial as a torrent's peers: encryption policy, binding,
        // proxy. Our handshake may have gone out in MSE's initial payload.
        let dialled = tokio::time::timeout(
            cfg.connect_timeout + cfg.handshake_timeout,
            self.dialer.dial(self.addr, self.info_hash.0, &ours),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.reason)?;
        let mut stream = dialled.stream;
        let mut out = BytesMut::new();
        if !dialled.handshake_sent {
            ours.encode(&mut out);
        }
        let mut m = std::collections::BTreeMap::new();
        m.insert(ut_metadata::EXTENSION_NAME.to_string(), OUR_UT_METADATA);
        if self.pex.is_some() {
            m.insert(protocol::ut_pex::EXTENSION_NAME.to_string(), OUR_UT_PEX);
        }
        ExtendedHandshake {
            m,
            v: Some(concat!("actorrent ", env!("CARGO_PKG_VERSION")).to_string()),
            ..Default::default()
        }
        .to_message()
        .encode(&mut out);
        let mut hs = [0u8; Handshake::LEN];
        let theirs = tokio::time::timeout(cfg.handshake_timeout, async {
            stream.write_all(&out).await?;
            stream.read_exact(&mut hs).await?;
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))
        .and_then(|()| match Handshake::decode(&hs) {
            Ok(Decoded::Complete(h)) => Ok(h),
            Ok(Decoded::NeedMore(_)) => Err("short handshake".to_string()),
            Err(e) => Err(format!("bad handshake: {e}")),
        })?;
        if theirs.info_hash != self.info_hash.0 {
            return Err("handshake for another torrent".into());
        }
        if theirs.peer_id == self.peer_id {
            return Err("connected to ourselves".into());
        }
        if !theirs.supports_extended() {
            return Err("no extension protocol (BEP 10), so no metadata".into());
        }
        let limits = wire::Limits::default();
        let md_limits = ut_metadata::Limits {
            max_metadata_size: cfg.max_size,
        };
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut their_id: Option<u8> = None;
        let mut size: Option<u32> = None;
        let mut outstanding: Vec<u32> = Vec::new();
        let mut asked_at = Instant::now();
        let hello_by = Instant::now() + cfg.handshake_timeout;
        // Connected for its `ut_pex` message only (it has no metadata).
        let mut pex_only = false;
        let mut pex_seen = false;
        loop {
            // Waiting on a request: its timeout; idle: ask again shortly.
            let wait = if !outstanding.is_empty() {
                cfg.request_timeout
                    .saturating_sub(asked_at.elapsed())
                    .max(Duration::from_millis(1))
            } else {
                Duration::from_millis(500)
            };
            let read = tokio::time::timeout(wait, stream.read_buf(&mut buf)).await;
            // `Some(answer)` once the coordinator was asked; `answer` `None`: leave.
            let mut next: Option<Option<Vec<u32>>> = None;
            match read {
                Ok(Ok(0)) => return Err("closed by the peer".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Err(_) => {
                    if !outstanding.is_empty() {
                        return Err("metadata request timed out".into());
                    }
                    match size {
                        Some(s) => {
                            next = Some(
                                self.ask(|reply| Event::Want {
                                    peer: self.tag,
                                    size: u64::from(s),
                                    reply,
                                })
                                .await?,
                            );
                        }
                        None if pex_only && Instant::now() >= hello_by + cfg.request_timeout => {
                            return Err("no ut_metadata, and no ut_pex message in time".into());
                        }
                        None if !pex_only && Instant::now() >= hello_by => {
                            return Err("no ut_metadata in the extended handshake".into());
                        }
                        None => continue,
                    }
                }
            }
            loop {
                let msg = match wire::decode_message(&mut buf, &limits) {
                    Ok(Decoded::Complete(m)) => m,
                    Ok(Decoded::NeedMore(n)) => {
                        buf.reserve(n);
                        break;
                    }
                    Err(e) => return Err(format!("bad message: {e}")),
                };
                match msg {
                    Message::Extended { id: 0, payload } => {
                        let h = ExtendedHandshake::decode(&payload)
                            .map_err(|e| format!("extended handshake: {e}"))?;
                        their_id =
                            h.m.get(ut_metadata::EXTENSION_NAME)
                                .copied()
                                .filter(|&i| i != 0);
                        let their_pex =
                            h.m.get(protocol::ut_pex::EXTENSION_NAME)
                                .is_some_and(|&i| i != 0);
                        let (Some(_), Some(s)) = (their_id, h.metadata_size) else {
                            // A peer without the metadata (another magnet
                            // leecher) may still know who has it: stay for
                            // its first ut_pex message.
                            if self.pex.is_some() && their_pex {
                                pex_only = true;
                                their_id = None;
                                continue;
                            }
                            return Err("no ut_metadata or metadata_size advertised".into());
                        };
                        let s = ut_metadata::check_size(s, &md_limits)
                            .map_err(|e| format!("metadata_size not used: {e}"))?;
                        size = Some(s);
                        next = Some(
                            self.ask(|reply| Event::Want {
                                peer: self.tag,
                                size: u64::from(s),
                                reply,
                            })
                            .await?,
                        );
                    }
                    Message::Extended {
                        id: OUR_UT_METADATA,
                        payload,
                    } => match MetadataMsg::decode(&payload, &md_limits)
                        .map_err(|e| format!("bad ut_metadata message: {e}"))?
                    {
                        MetadataMsg::Data {
                            piece,
                            total_size,
                            data,
                        } => {
                            if Some(total_size) != size {
                                return Err(format!(
                                    "ut_metadata total_size {total_size} is not the metadata_size advertised"
                                ));
                            }
                            let Some(pos) = outstanding.iter().position(|&p| p == piece) else {
                                return Err(format!("ut_metadata piece {piece} never requested"));
                            };
                            outstanding.swap_remove(pos);
                            asked_at = Instant::now();
                            next = Some(
                                self.ask(|reply| Event::Piece {
                                    peer: self.tag,
                                    piece,
                                    data,
                                    reply,
                                })
                                .await?,
                            );
                        }
                        MetadataMsg::Reject { piece } => {
                            return Err(format!("rejected metadata piece {piece}"));
                        }
                        MetadataMsg::Request { piece } => {
                            // We have no metadata to give yet (BEP 9: reject).
                            if let Some(id) = their_id {
                                let mut o = BytesMut::new();
                                Message::Extended {
                                    id,
                                    payload: Bytes::from(MetadataMsg::Reject { piece }.encode()),
                                }
                                .encode(&mut o);
                                stream
                                    .write_all(&o)
                                    .await
                                    .map_err(|e| format!("write: {e}"))?;
                            }
                        }
                    },
                    Message::Extended {
                        id: OUR_UT_PEX,
                        payload,
                    } if self.pex.is_some() && !pex_seen => {
                        // One message is enough here: the torrent keeps
                        // the connection for the rest (BEP 11: once a
                        // minute), and the coordinator bounds its book.
                        pex_seen = true;
                        let max_peers = self.pex.map_or(0, |p| p.max_peers_per_message);
                        match protocol::ut_pex::Pex::decode(
                            &payload,
                            &protocol::ut_pex::Limits { max_peers },
                        ) {
                            Ok(p) => {
                                let addrs: Vec<SocketAddr> =
                                    p.added.into_iter().map(|(a, _)| a).collect();
                                if !addrs.is_empty() {
                                    self.tx
                                        .send(Event::Learned { addrs })
                                        .await
                                        .map_err(|_| "phase over".to_string())?;
                                }
                            }
                            Err(e) => debug!(error = %e, "ut_pex message ignored"),
                        }
                        if pex_only {
                            return Err("no metadata; told us its peers by PEX".into());
                        }
                    }
                    // Pieces, bitfields and the rest wait for the torrent.
                    _ => {}
                }
                if let Some(n) = next.take() {
                    self.request(&mut stream, their_id, n, &mut outstanding, &mut asked_at)
                        .await?;
                }
            }
            if let Some(n) = next.take() {
                self.request(&mut stream, their_id, n, &mut outstanding, &mut asked_at)
                    .await?;
            }
        }
    }

    /// Sends the requests the coordinator handed out (`None`: leave).
    async fn request(
        &self,
        stream: &mut crate::mse_stream::MseStream<TcpStream>,
        their_id: Option<u8>,
        pieces: Option<Vec<u32>>,
        outstanding: &mut Vec<u32>,
        asked_at: &mut Instant,
    ) -> Result<(), String> {
        let Some(pieces) = pieces else {
            return Err("not needed any more".into());
        };
        let Some(id) = their_id else {
            return Ok(());
        };
        if pieces.is_empty() {
            return Ok(());
        }
        let mut o = BytesMut::new();
        for piece in pieces {
            Message::Extended {
                id,
                payload: Bytes::from(MetadataMsg::Request { piece }.encode()),
            }
            .encode(&mut o);
            outstanding.push(piece);
        }
        *asked_at = Instant::now();
        stream
            .write_all(&o)
            .await
            .map_err(|e| format!("write: {e}"))
    }
}

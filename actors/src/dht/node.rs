//! One DHT node as a sans-IO state machine: datagrams and time in,
//! datagrams and events out. The actor ([`super::spawn`]) is the loop
//! around it; tests and the benchmark drive it without sockets.
//!
//! Inputs: [`Node::handle_packet`], [`Node::handle_timeout`] and the
//! commands ([`Node::register`], [`Node::add_node`], [`Node::bootstrap`],
//! [`Node::start_lookup`]...), each with `now` passed in. Outputs, drained
//! after every input: [`Node::poll_transmit`] (datagrams to send),
//! [`Node::poll_event`] (peers found, lookups done) and
//! [`Node::poll_timeout`] (when to call `handle_timeout` next).
//!
//! What it owns: the routing table, the token secrets, the store of
//! announced peers, our queries in flight (by transaction id, with one
//! deadline queue: every query has the same timeout, so deadlines expire
//! in the order they were set), the lookups running, the torrents
//! registered, the incoming-query rate limits and the counters.
//!
//! Every queue is bounded by [`DhtConfig`]: `max_queries_in_flight`,
//! `max_lookups`, `max_torrents`, `max_queued_packets` (datagrams beyond
//! it are dropped and counted, like a full socket buffer would), and the
//! events (at most one per answer or lookup, drained after every input).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use protocol::krpc::{self, Body, CompactNode, Limits, Message, Method, Query, Response, code};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::config::DhtConfig;
use super::id::NodeId;
use super::lookup::{Lookup, LookupKind, LookupSummary};
use super::routing::{Contact, Outcome, RoutingTable, usable};
use super::state::SavedState;
use super::store::{PeerStore, Stored};
use super::token::TokenSecrets;

/// Our `v` (BEP 5 client version): "AT" and a version.
pub const VERSION: &[u8; 4] = b"AT\x00\x01";

type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<Nanos>>;
type KeyedLimiter =
    RateLimiter<IpAddr, HashMapStateStore<IpAddr>, FakeRelativeClock, NoOpMiddleware<Nanos>>;

/// Identifies a lookup started with [`Node::start_lookup`].
pub type LookupId = u64;

/// What the node tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Peers of a registered torrent, new in the current lookup.
    Peers {
        /// The torrent.
        info_hash: NodeId,
        /// The peers (IPv4).
        peers: Vec<SocketAddr>,
    },
    /// A lookup finished.
    LookupDone {
        /// Its id.
        id: LookupId,
        /// What it looked for.
        target: NodeId,
        /// Which traversal.
        kind: LookupKind,
        /// What it found and cost.
        summary: LookupSummary,
    },
}

/// Why a command was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// `max_torrents` torrents are registered.
    #[error("the DHT already has {0} torrents registered")]
    TooManyTorrents(usize),
    /// The info-hash is registered already.
    #[error("torrent {0} is already registered with the DHT")]
    AlreadyRegistered(NodeId),
    /// The info-hash is not registered.
    #[error("torrent {0} is not registered with the DHT")]
    UnknownTorrent(NodeId),
    /// `max_lookups` lookups are running.
    #[error("{0} DHT lookups are running already")]
    TooManyLookups(usize),
}

/// The node's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Our node id.
    pub id: NodeId,
    /// Nodes in the routing table's buckets.
    pub nodes: usize,
    /// Of those: good, questionable, bad (BEP 5).
    pub good_nodes: usize,
    /// See `good_nodes`.
    pub questionable_nodes: usize,
    /// See `good_nodes`.
    pub bad_nodes: usize,
    /// Nodes waiting in replacement caches.
    pub cached_nodes: usize,
    /// Buckets.
    pub buckets: usize,
    /// Nodes in the fullest bucket (never above `bucket_size`).
    pub largest_bucket: usize,
    /// Torrents registered.
    pub torrents: usize,
    /// Peers stored for others, and of how many info-hashes.
    pub stored_peers: usize,
    /// See `stored_peers`.
    pub stored_torrents: usize,
    /// Lookups started, finished, running.
    pub lookups_started: u64,
    /// See `lookups_started`.
    pub lookups_done: u64,
    /// See `lookups_started`.
    pub lookups_running: usize,
    /// Our queries in flight.
    pub queries_in_flight: usize,
    /// Datagrams received and sent.
    pub packets_in: u64,
    /// See `packets_in`.
    pub packets_out: u64,
    /// Bytes received and sent.
    pub bytes_in: u64,
    /// See `bytes_in`.
    pub bytes_out: u64,
    /// Datagrams dropped, by reason: the codec's reasons
    /// ([`krpc::KrpcError::reason`]), `unexpected_response` (no query of
    /// ours with that transaction id from that address), `not_ipv4`,
    /// `bad_source` (port 0 and the like), `own_id` (a node using our id).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Queries answered, by method (`unknown` got error 204).
    pub answered: BTreeMap<&'static str, u64>,
    /// Incoming queries dropped by the rate limits (per address or total).
    pub rate_limited: u64,
    /// `announce_peer` refused for a bad token (error 203).
    pub bad_tokens: u64,
    /// `announce_peer` stored (new or refreshed); refused because full.
    pub announces_stored: u64,
    /// See `announces_stored`.
    pub announces_refused: u64,
    /// `announce_peer` we sent.
    pub announces_sent: u64,
    /// Our queries that timed out, and that got an error back.
    pub query_timeouts: u64,
    /// See `query_timeouts`.
    pub errors_received: u64,
    /// Queries not sent because `max_queries_in_flight` were out.
    pub queries_deferred: u64,
    /// Datagrams not queued because `max_queued_packets` were waiting.
    pub packets_dropped_out: u64,
    /// Peers found by lookups of registered torrents.
    pub peers_found: u64,
    /// Peer batches a torrent's full channel refused (counted by the actor).
    pub peer_batches_dropped: u64,
    /// Our address as the last node that told us saw it (BEP 42 `ip`).
    pub external_addr: Option<SocketAddrV4>,
    /// Why the state file of the last run was ignored, if it was.
    pub state_error: Option<String>,
}

/// Why a query of ours is out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Ping,
    Lookup(LookupId),
    Announce,
}

#[derive(Clone, Copy, Debug)]
struct Rpc {
    addr: SocketAddrV4,
    /// The id we expect to answer, if we know it.
    id: Option<NodeId>,
    purpose: Purpose,
    /// Tells this query from an older one that had the same transaction id.
    seq: u64,
}

/// Why a lookup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Torrent(NodeId),
    Bootstrap,
    Refresh,
    Request,
}

#[derive(Debug)]
struct Running {
    lookup: Lookup,
    why: Why,
}

#[derive(Debug)]
struct Torrent {
    announce_port: Option<u16>,
    /// When the next lookup is due.
    next_at: Instant,
    lookup: Option<LookupId>,
}

/// One DHT node. See the module docs.
pub struct Node {
    config: DhtConfig,
    limits: Limits,
    table: RoutingTable,
    tokens: TokenSecrets,
    store: PeerStore,
    rng: SmallRng,
    rpcs: HashMap<u16, Rpc>,
    deadlines: VecDeque<(Instant, u16, u64)>,
    next_tid: u16,
    next_seq: u64,
    lookups: BTreeMap<LookupId, Running>,
    next_lookup: LookupId,
    torrents: HashMap<NodeId, Torrent>,
    transmits: VecDeque<(SocketAddrV4, Vec<u8>)>,
    events: VecDeque<Event>,
    total_limit: DirectLimiter,
    ip_limit: KeyedLimiter,
    clock: FakeRelativeClock,
    epoch: Instant,
    clock_at: Duration,
    /// Addresses to start from when the table is nearly empty.
    bootstrap: Vec<SocketAddrV4>,
    /// Bootstrap addresses named by host name: used, never put in the table.
    routers: HashSet<SocketAddrV4>,
    /// Nodes from the saved table, tried once at the first bootstrap.
    saved: Vec<(NodeId, SocketAddrV4)>,
    next_bootstrap: Instant,
    /// Bootstraps since the table last held k nodes.
    bootstrap_attempts: u32,
    bootstrap_lookup: Option<LookupId>,
    next_maintenance: Instant,
    stats: DhtStats,
}

impl Node {
    /// A node with the id and nodes of `saved` (or a random id), its rng
    /// seeded with `seed`.
    pub fn new(config: DhtConfig, saved: Option<SavedState>, seed: u64, now: Instant) -> Node {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (id, saved) = match saved {
            Some(s) => (s.id, s.nodes),
            None => (NodeId::random(&mut rng), Vec::new()),
        };
        let clock = FakeRelativeClock::default();
        let total = Quota::per_second(config.queries_per_second).allow_burst(config.query_burst);
        let per_ip = Quota::per_second(config.queries_per_second_per_ip)
            .allow_burst(config.query_burst_per_ip);
        Node {
            limits: Limits {
                max_packet: config.max_packet_size,
                ..Limits::default()
            },
            table: RoutingTable::new(id, config.routing(), now),
            tokens: TokenSecrets::new(config.token_rotation, &mut rng, now),
            store: PeerStore::new(config.store()),
            rng,
            rpcs: HashMap::new(),
            deadlines: VecDeque::new(),
            next_tid: 0,
            next_seq: 0,
            lookups: BTreeMap::new(),
            next_lookup: 1,
            torrents: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            total_limit: RateLimiter::direct_with_clock(total, clock.clone()),
            ip_limit: RateLimiter::hashmap_with_clock(per_ip, clock.clone()),
            clock,
            epoch: now,
            clock_at: Duration::ZERO,
            bootstrap: Vec::new(),
            routers: HashSet::new(),
            saved,
            next_bootstrap: now,
            bootstrap_attempts: 0,
            bootstrap_lookup: None,
            next_maintenance: now + config.maintenance_interval,
            stats: DhtStats {
                id,
                ..DhtStats::default()
            },
            config,
        }
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.table.own_id()
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The store of peers announced to us.
    pub fn store(&self) -> &PeerStore {
        &self.store
    }

    /// The counters, with the gauges filled in at `now`.
    pub fn stats(&self, now: Instant) -> DhtStats {
        let mut s = self.stats.clone();
        s.nodes = self.table.len();
        (s.good_nodes, s.questionable_nodes, s.bad_nodes) = self.table.liveness_counts(now);
        s.cached_nodes = self.table.cached_len();
        s.buckets = self.table.bucket_count();
        s.largest_bucket = self.table.largest_bucket();
        s.torrents = self.torrents.len();
        s.stored_peers = self.store.len();
        s.stored_torrents = self.store.torrents();
        s.lookups_running = self.lookups.len();
        s.queries_in_flight = self.rpcs.len();
        s
    }

    /// Addresses the per-source rate limit tracks now.
    pub fn rate_limited_sources(&self) -> usize {
        self.ip_limit.len()
    }

    /// Records why the saved state was not used (shown in the stats).
    pub fn note_state_error(&mut self, error: Option<String>) {
        self.stats.state_error = error;
    }

    /// Counts a peer batch the owner could not deliver.
    pub fn count_dropped_batch(&mut self) {
        self.stats.peer_batches_dropped += 1;
    }

    /// What to save on a clean stop: our id and the nodes that are not bad.
    pub fn saved_state(&self, now: Instant) -> SavedState {
        let config = *self.table.config();
        SavedState {
            id: self.id(),
            nodes: self
                .table
                .nodes()
                .filter(|n| n.liveness(now, &config) != super::routing::Liveness::Bad)
                .map(|n| (n.id, n.addr))
                .collect(),
        }
    }

    /// Whether no query of ours and no lookup is in flight.
    pub fn is_idle(&self) -> bool {
        self.rpcs.is_empty() && self.lookups.is_empty()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddrV4, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Instant {
        match self.deadlines.front() {
            Some((d, _, _)) => (*d).min(self.next_maintenance),
            None => self.next_maintenance,
        }
    }

    fn set_time(&mut self, now: Instant) {
        let e = now.saturating_duration_since(self.epoch);
        if e > self.clock_at {
            self.clock.advance(e - self.clock_at);
            self.clock_at = e;
        }
    }

    fn drop_packet(&mut self, reason: &'static str) {
        *self.stats.dropped.entry(reason).or_default() += 1;
    }

    fn send(&mut self, to: SocketAddrV4, msg: &Message) {
        if self.transmits.len() >= self.config.max_queued_packets {
            self.stats.packets_dropped_out += 1;
            return;
        }
        let bytes = msg.encode();
        self.stats.packets_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.transmits.push_back((to, bytes));
    }

    /// Sends a query; false if `max_queries_in_flight` are out.
    fn query(
        &mut self,
        to: SocketAddrV4,
        id: Option<NodeId>,
        method: Method,
        purpose: Purpose,
        now: Instant,
    ) -> bool {
        if self.rpcs.len() >= self.config.max_queries_in_flight {
            self.stats.queries_deferred += 1;
            return false;
        }
        // At most max_queries_in_flight (< 65536) ids are taken, so this
        // finds a free one quickly.
        while self.rpcs.contains_key(&self.next_tid) {
            self.next_tid = self.next_tid.wrapping_add(1);
        }
        let tid = self.next_tid;
        self.next_tid = self.next_tid.wrapping_add(1);
        self.next_seq += 1;
        self.rpcs.insert(
            tid,
            Rpc {
                addr: to,
                id,
                purpose,
                seq: self.next_seq,
            },
        );
        self.deadlines
            .push_back((now + self.config.query_timeout, tid, self.next_seq));
        let mut msg = Message::query(&tid.to_be_bytes(), self.id().0, method);
        msg.version = Some(VERSION.to_vec());
        self.send(to, &msg);
        true
    }

    fn ping(&mut self, to: SocketAddrV4, id: Option<NodeId>, now: Instant) {
        if self.rpcs.values().any(|r| r.addr == to) {
            return;
        }
        self.query(to, id, Method::Ping, Purpose::Ping, now);
    }

    // ---- commands ----

    /// Registers a torrent: a `get_peers` lookup now and every
    /// `reannounce_interval`, each followed by `announce_peer` to the
    /// closest nodes if `announce_port` is set. Peers arrive as
    /// [`Event::Peers`].
    pub fn register(
        &mut self,
        info_hash: NodeId,
        announce_port: Option<u16>,
        now: Instant,
    ) -> Result<(), NodeError> {
        if self.torrents.contains_key(&info_hash) {
            return Err(NodeError::AlreadyRegistered(info_hash));
        }
        if self.torrents.len() >= self.config.max_torrents {
            return Err(NodeError::TooManyTorrents(self.torrents.len()));
        }
        self.torrents.insert(
            info_hash,
            Torrent {
                announce_port,
                next_at: now,
                lookup: None,
            },
        );
        self.start_due_torrents(now);
        self.step(now);
        Ok(())
    }

    /// Forgets a torrent; a lookup of it still running finishes without
    /// events or announces.
    pub fn unregister(&mut self, info_hash: &NodeId) -> Result<(), NodeError> {
        self.torrents
            .remove(info_hash)
            .map(|_| ())
            .ok_or(NodeError::UnknownTorrent(*info_hash))
    }

    /// A node heard of elsewhere (a peer's BEP 5 `port` message): pinged,
    /// and put in the table if it answers.
    pub fn add_node(&mut self, addr: SocketAddrV4, now: Instant) {
        if usable(&addr) {
            self.set_time(now);
            let id = self.table.nodes().find(|n| n.addr == addr).map(|n| n.id);
            self.ping(addr, id, now);
        }
    }

    /// Sets the bootstrap addresses (`routers`: named by host name, so
    /// never put in the table) and starts a bootstrap if the table is
    /// nearly empty.
    pub fn bootstrap(&mut self, addrs: Vec<SocketAddrV4>, routers: bool, now: Instant) {
        for a in addrs {
            if usable(&a) && !self.bootstrap.contains(&a) && self.bootstrap.len() < 64 {
                self.bootstrap.push(a);
                if routers {
                    self.routers.insert(a);
                }
                // A bootstrap already running (say, from the saved table)
                // asks the new address too.
                if let Some(r) = self.bootstrap_lookup.and_then(|l| self.lookups.get_mut(&l)) {
                    r.lookup.add_bootstrap(a);
                }
            }
        }
        self.next_bootstrap = now;
        self.step(now);
    }

    /// Starts a one-shot lookup; its result is [`Event::LookupDone`] with
    /// the returned id.
    pub fn start_lookup(
        &mut self,
        target: NodeId,
        kind: LookupKind,
        now: Instant,
    ) -> Result<LookupId, NodeError> {
        let id = self.launch(target, kind, Why::Request)?;
        self.step(now);
        Ok(id)
    }

    fn launch(
        &mut self,
        target: NodeId,
        kind: LookupKind,
        why: Why,
    ) -> Result<LookupId, NodeError> {
        if self.lookups.len() >= self.config.max_lookups {
            return Err(NodeError::TooManyLookups(self.lookups.len()));
        }
        let k = self.config.bucket_size;
        let mut seeds = self.table.closest(&target, 2 * k);
        if why == Why::Bootstrap {
            seeds.extend(std::mem::take(&mut self.saved));
        }
        // A nearly empty table also starts from the bootstrap nodes.
        let bootstrap = if self.table.len() < k {
            self.bootstrap.clone()
        } else {
            Vec::new()
        };
        let lookup = Lookup::new(
            self.id(),
            target,
            kind,
            self.config.lookup(),
            seeds,
            bootstrap,
        );
        let id = self.next_lookup;
        self.next_lookup += 1;
        self.lookups.insert(id, Running { lookup, why });
        self.stats.lookups_started += 1;
        Ok(id)
    }

    // ---- inputs ----

    /// A datagram from `from`.
    pub fn handle_packet(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.set_time(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let from = match from {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(ip) => SocketAddrV4::new(ip, a.port()),
                None => return self.drop_packet("not_ipv4"),
            },
        };
        if !usable(&from) {
            return self.drop_packet("bad_source");
        }
        let msg = match krpc::decode(data, &self.limits) {
            Ok(m) => m,
            Err(e) => {
                tracing::trace!(%from, error = %e, "bad KRPC datagram");
                return self.drop_packet(e.reason());
            }
        };
        match msg.body {
            Body::Query(q) => {
                if !self.source_allowed(from) || self.total_limit.check().is_err() {
                    self.stats.rate_limited += 1;
                    return;
                }
                self.on_query(&msg.transaction_id, q, msg.read_only, from, now);
            }
            Body::Response(r) => {
                let Some(rpc) = self.take_rpc(&msg.transaction_id, from) else {
                    return self.drop_packet("unexpected_response");
                };
                if let Some(ip) = msg.ip {
                    self.stats.external_addr = Some(ip);
                }
                self.on_response(rpc, r, msg.read_only, from, now);
            }
            Body::Error(e) => {
                let Some(rpc) = self.take_rpc(&msg.transaction_id, from) else {
                    return self.drop_packet("unexpected_response");
                };
                self.stats.errors_received += 1;
                tracing::debug!(%from, code = e.code, message = %e.message, "KRPC error");
                // The node is alive but did not answer the question.
                if let Purpose::Lookup(l) = rpc.purpose {
                    if let Some(r) = self.lookups.get_mut(&l) {
                        r.lookup.on_failure(from);
                    }
                }
            }
        }
        self.step(now);
    }

    /// Whether the per-address limit lets a query from `from` through.
    fn source_allowed(&mut self, from: SocketAddrV4) -> bool {
        if self.ip_limit.len() >= self.config.max_rate_limited_sources {
            self.ip_limit.retain_recent();
            if self.ip_limit.len() >= self.config.max_rate_limited_sources {
                // Many sources at once, none idle: start over (the total
                // limit still holds) rather than grow.
                let quota = Quota::per_second(self.config.queries_per_second_per_ip)
                    .allow_burst(self.config.query_burst_per_ip);
                self.ip_limit = RateLimiter::hashmap_with_clock(quota, self.clock.clone());
            }
        }
        self.ip_limit.check_key(&IpAddr::V4(*from.ip())).is_ok()
    }

    fn take_rpc(&mut self, tid: &[u8], from: SocketAddrV4) -> Option<Rpc> {
        let tid = u16::from_be_bytes(<[u8; 2]>::try_from(tid).ok()?);
        let rpc = match self.rpcs.get(&tid) {
            Some(r) if r.addr == from => self.rpcs.remove(&tid),
            _ => None,
        };
        self.trim_deadlines();
        rpc
    }

    /// Answered queries leave their deadline behind; drops those at the
    /// front, so the queue holds at most the queries sent within one
    /// `query_timeout` (and usually only those in flight).
    fn trim_deadlines(&mut self) {
        while let Some(&(_, tid, seq)) = self.deadlines.front() {
            if self.rpcs.get(&tid).is_some_and(|r| r.seq == seq) {
                break;
            }
            self.deadlines.pop_front();
        }
    }

    fn on_query(
        &mut self,
        tid: &[u8],
        q: Query,
        read_only: bool,
        from: SocketAddrV4,
        now: Instant,
    ) {
        let id = NodeId(q.id);
        if id == self.id() {
            return self.drop_packet("own_id");
        }
        let own = self.id().0;
        let k = self.config.bucket_size;
        let compact = |nodes: Vec<(NodeId, SocketAddrV4)>| -> Vec<CompactNode> {
            nodes
                .into_iter()
                .map(|(id, addr)| CompactNode { id: id.0, addr })
                .collect()
        };
        let (name, reply) = match q.method {
            Method::Ping => (
                "ping",
                Body::Response(Response {
                    id: own,
                    ..Response::default()
                }),
            ),
            Method::FindNode { target } => (
                "find_node",
                Body::Response(Response {
                    id: own,
                    nodes: compact(self.table.closest(&NodeId(target), k)),
                    ..Response::default()
                }),
            ),
            Method::GetPeers { info_hash } => {
                self.tokens.rotate_if_due(now, &mut self.rng);
                let ih = NodeId(info_hash);
                let values =
                    self.store
                        .peers(&ih, now, self.config.max_peers_per_reply, &mut self.rng);
                (
                    "get_peers",
                    Body::Response(Response {
                        id: own,
                        nodes: compact(self.table.closest(&ih, k)),
                        values,
                        token: Some(self.tokens.issue(IpAddr::V4(*from.ip())).to_vec()),
                    }),
                )
            }
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                self.tokens.rotate_if_due(now, &mut self.rng);
                if !self.tokens.check(IpAddr::V4(*from.ip()), &token) {
                    self.stats.bad_tokens += 1;
                    (
                        "announce_peer_bad_token",
                        Body::Error(krpc::ErrorBody {
                            code: code::PROTOCOL,
                            message: "bad token".into(),
                        }),
                    )
                } else {
                    let port = if implied_port { from.port() } else { port };
                    let peer = SocketAddrV4::new(*from.ip(), port);
                    match self.store.announce(NodeId(info_hash), peer, now) {
                        Stored::Full => self.stats.announces_refused += 1,
                        _ => self.stats.announces_stored += 1,
                    }
                    (
                        "announce_peer",
                        Body::Response(Response {
                            id: own,
                            ..Response::default()
                        }),
                    )
                }
            }
            Method::Unknown(_) => (
                "unknown",
                Body::Error(krpc::ErrorBody {
                    code: code::METHOD_UNKNOWN,
                    message: "Method Unknown".into(),
                }),
            ),
        };
        *self.stats.answered.entry(name).or_default() += 1;
        let msg = Message {
            transaction_id: tid.to_vec(),
            version: Some(VERSION.to_vec()),
            // BEP 42: tell the asker the address we see.
            ip: Some(from),
            read_only: false,
            body: reply,
        };
        self.send(from, &msg);
        if !read_only && !self.routers.contains(&from) {
            let outcome = self.table.heard_from(id, from, Contact::Query, now);
            // A node that queries us and would get a place is verified
            // with a ping (only an answer puts it in a bucket).
            if matches!(outcome, Outcome::Cached { .. }) && self.table.wants(&id, now) {
                self.ping(from, Some(id), now);
            }
        }
    }

    fn on_response(
        &mut self,
        rpc: Rpc,
        r: Response,
        read_only: bool,
        from: SocketAddrV4,
        now: Instant,
    ) {
        let id = NodeId(r.id);
        if id == self.id() {
            self.drop_packet("own_id");
            return;
        }
        if let Some(expected) = rpc.id.filter(|e| *e != id) {
            // Another node answers at that address now: the one we knew
            // there is gone.
            self.table.on_failure(&expected, from, now);
        }
        if !read_only && !self.routers.contains(&from) {
            if let Outcome::Cached { ping: Some(stale) } =
                self.table.heard_from(id, from, Contact::Response, now)
            {
                let stale_id = self.table.nodes().find(|n| n.addr == stale).map(|n| n.id);
                self.ping(stale, stale_id, now);
            }
        }
        match rpc.purpose {
            Purpose::Ping | Purpose::Announce => {}
            Purpose::Lookup(l) => {
                let Some(running) = self.lookups.get_mut(&l) else {
                    return;
                };
                let peers =
                    running
                        .lookup
                        .on_response(from, id, &r.nodes, &r.values, r.token.as_deref());
                if let Why::Torrent(ih) = running.why {
                    if !peers.is_empty() && self.torrents.contains_key(&ih) {
                        self.stats.peers_found += peers.len() as u64;
                        self.events.push_back(Event::Peers {
                            info_hash: ih,
                            peers: peers.into_iter().map(SocketAddr::V4).collect(),
                        });
                    }
                }
            }
        }
    }

    /// Expires queries and runs maintenance that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.set_time(now);
        while let Some(&(deadline, tid, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(rpc) = self.rpcs.get(&tid).copied() else {
                continue;
            };
            if rpc.seq != seq {
                continue;
            }
            self.rpcs.remove(&tid);
            self.stats.query_timeouts += 1;
            if let Some(id) = rpc.id {
                self.table.on_failure(&id, rpc.addr, now);
            }
            if let Purpose::Lookup(l) = rpc.purpose {
                if let Some(r) = self.lookups.get_mut(&l) {
                    r.lookup.on_failure(rpc.addr);
                }
            }
        }
        self.trim_deadlines();
        if now >= self.next_maintenance {
            self.next_maintenance = now + self.config.maintenance_interval;
            self.maintain(now);
            self.start_due_torrents(now);
        }
        self.step(now);
    }

    fn maintain(&mut self, now: Instant) {
        self.tokens.rotate_if_due(now, &mut self.rng);
        self.store.expire(now);
        self.ip_limit.retain_recent();
        self.ip_limit.shrink_to_fit();
        // Bucket refresh, at most one new lookup per round.
        if self.lookups.len() < self.config.max_lookups && !self.table.is_empty() {
            for target in self.table.refresh_targets(now, 1, &mut self.rng) {
                let _ = self.launch(target, LookupKind::FindNode, Why::Refresh);
            }
        }
        // One liveness ping per round.
        if let Some((id, addr)) = self
            .table
            .stalest_questionable(now, self.config.node_good_for)
        {
            self.ping(addr, Some(id), now);
        }
    }

    /// Starts the lookups of torrents that are due, while lookup slots
    /// last. Called when a torrent registers, when a lookup ends (a slot
    /// frees) and at maintenance, not per datagram: it scans every torrent.
    fn start_due_torrents(&mut self, now: Instant) {
        if self.lookups.len() >= self.config.max_lookups {
            return;
        }
        let due: Vec<NodeId> = self
            .torrents
            .iter()
            .filter(|(_, t)| t.lookup.is_none() && t.next_at <= now)
            .map(|(ih, _)| *ih)
            .take(self.config.max_lookups - self.lookups.len())
            .collect();
        for ih in due {
            match self.launch(ih, LookupKind::GetPeers, Why::Torrent(ih)) {
                Ok(id) => {
                    if let Some(t) = self.torrents.get_mut(&ih) {
                        t.lookup = Some(id);
                    }
                }
                Err(_) => break,
            }
        }
    }

    /// Starts a bootstrap if due and moves every lookup on.
    fn step(&mut self, now: Instant) {
        if self.table.len() >= self.config.bucket_size {
            self.bootstrap_attempts = 0;
        }
        // Bootstrap while the table is nearly empty.
        if self.bootstrap_lookup.is_none()
            && self.table.len() < self.config.bucket_size
            && now >= self.next_bootstrap
            && (!self.bootstrap.is_empty() || !self.saved.is_empty() || !self.table.is_empty())
        {
            let own = self.id();
            if let Ok(id) = self.launch(own, LookupKind::FindNode, Why::Bootstrap) {
                self.bootstrap_lookup = Some(id);
                // A small DHT may never give us k nodes: retry with a
                // doubling wait (capped at the bucket refresh interval).
                let wait = self
                    .config
                    .retry_interval
                    .saturating_mul(1 << self.bootstrap_attempts.min(10))
                    .min(
                        self.config
                            .bucket_refresh_interval
                            .max(self.config.retry_interval),
                    );
                self.bootstrap_attempts += 1;
                self.next_bootstrap = now + wait;
            }
        }
        // Finishing a lookup may start others (a bootstrap starts its
        // refreshes, a freed slot starts a due torrent), which get their
        // first queries in the next pass. Each pass needs a lookup to have
        // finished, and lookups are bounded, so this ends; the cap is a
        // belt over those braces.
        for _ in 0..=self.config.max_lookups + 1 {
            if !self.pump_lookups(now) {
                break;
            }
            self.start_due_torrents(now);
        }
    }

    /// Sends what every lookup wants to send and finishes those that are
    /// done. True if one finished.
    fn pump_lookups(&mut self, now: Instant) -> bool {
        let ids: Vec<LookupId> = self.lookups.keys().copied().collect();
        let mut finished = false;
        for l in ids {
            while self.rpcs.len() < self.config.max_queries_in_flight {
                let Some(running) = self.lookups.get_mut(&l) else {
                    break;
                };
                let Some(q) = running.lookup.next_query() else {
                    break;
                };
                let target = running.lookup.target().0;
                let method = match running.lookup.kind() {
                    LookupKind::FindNode => Method::FindNode { target },
                    LookupKind::GetPeers => Method::GetPeers { info_hash: target },
                };
                // Cannot fail: there is room for one more query.
                self.query(q.addr, q.id, method, Purpose::Lookup(l), now);
            }
            if self.lookups.get(&l).is_some_and(|r| r.lookup.is_done()) {
                self.finish(l, now);
                finished = true;
            }
        }
        finished
    }

    fn finish(&mut self, l: LookupId, now: Instant) {
        let Some(running) = self.lookups.remove(&l) else {
            return;
        };
        self.stats.lookups_done += 1;
        let summary = running.lookup.summary();
        match running.why {
            Why::Torrent(ih) => {
                // The torrent may have been unregistered (and registered
                // again, with a lookup of its own) meanwhile.
                if let Some(t) = self.torrents.get_mut(&ih).filter(|t| t.lookup == Some(l)) {
                    t.lookup = None;
                    // A lookup that reached no one is retried soon.
                    t.next_at = now
                        + if summary.responses == 0 {
                            self.config.retry_interval
                        } else {
                            self.config.reannounce_interval
                        };
                    if let Some(port) = t.announce_port {
                        for a in &summary.closest {
                            let Some(token) = &a.token else { continue };
                            let method = Method::AnnouncePeer {
                                info_hash: ih.0,
                                port,
                                implied_port: false,
                                token: token.clone(),
                            };
                            if self.query(a.addr, Some(a.id), method, Purpose::Announce, now) {
                                self.stats.announces_sent += 1;
                            }
                        }
                    }
                }
            }
            Why::Bootstrap => {
                self.bootstrap_lookup = None;
                // The self-lookup filled the buckets near us; a lookup
                // into each farther bucket fills those (as libtorrent does
                // after bootstrapping), so that we can route anywhere.
                if summary.responses > 0 {
                    // At least the far half of the id space, even while
                    // the table is one bucket.
                    let depth = self.table.bucket_count().saturating_sub(1).max(1);
                    for i in 0..depth {
                        let target = self.id().random_with_prefix(i, &mut self.rng);
                        if self
                            .launch(target, LookupKind::FindNode, Why::Refresh)
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                tracing::debug!(
                    nodes = self.table.len(),
                    responses = summary.responses,
                    "DHT bootstrap lookup done"
                );
            }
            Why::Refresh | Why::Request => {}
        }
        self.events.push_back(Event::LookupDone {
            id: l,
            target: running.lookup.target(),
            kind: running.lookup.kind(),
            summary,
        });
    }
}

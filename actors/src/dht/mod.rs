//! The DHT (BEP 5, Mainline): one actor per process that owns one UDP
//! socket and a [`node::Node`], the sans-IO state machine that holds the
//! routing table ([`routing`]), the token secrets ([`token`]), the store of
//! peers announced to us ([`store`]) and the lookups in flight
//! ([`lookup`]). KRPC encoding and decoding is [`protocol::krpc`].
//!
//! ```text
//! DhtHandle --send().await--> DHT actor --try_send--> torrent's peers channel
//!                               |   ^
//!                               |   +-- join_next -- bootstrap DNS tasks --await--> DNS actor
//!                               +--> UDP socket (send_to / recv_from)
//! ```
//!
//! The actor awaits only its mailbox, its socket, its timer and its own
//! DNS tasks (which await the DNS cache actor, which sends to no one), so it
//! takes part in no await cycle. Peers go to a torrent with `try_send`: a
//! batch that finds the channel full is dropped and counted (the next
//! lookup brings the peers again); a closed channel unregisters the
//! torrent.
//!
//! # How it is used
//!
//! - [`spawn`] binds the socket, reads the state file (our id and the nodes
//!   of the last run), resolves the bootstrap nodes through the DNS cache,
//!   and starts. Cancelling the token (or dropping every handle) stops it
//!   after it has saved the routing table to the state file (atomically).
//! - A torrent calls [`DhtHandle::register`] with its info-hash, the port
//!   to announce (`None` to look up peers without announcing, e.g. before
//!   it listens) and a bounded channel for peer batches; it gets a
//!   `get_peers` lookup at once and every `reannounce_interval`, each
//!   followed by `announce_peer` to the 8 closest nodes.
//!   [`DhtHandle::unregister`] when it stops.
//! - A peer that sends a BEP 5 `port` message calls
//!   [`DhtHandle::try_add_node`] (never waits; a full mailbox drops the
//!   hint).
//!
//! # Choice of implementation
//!
//! The `mainline` crate (pubky/mainline 7.0, MIT) was evaluated first, as
//! issue 11 asks, and not used:
//!
//! - Its queues are unbounded and internal: `Dht::new` makes the actor's
//!   mailbox with `flume::unbounded()`, and every `get_peers` /
//!   `find_node` call hands the actor an unbounded flume channel for its
//!   results. Its inflight-request map and per-query caches grow with use
//!   (cleaned by time, not capped). They cannot be bounded from outside.
//! - Its actor is an OS thread per node spinning on a blocking socket with
//!   a 50 ms read timeout and `try_recv` on its mailbox; an in-process DHT
//!   of 1024 nodes would be 1024 threads waking 20 times a second each.
//! - Time is read inside (`Instant::now()` throughout), so its routing
//!   table and queries cannot be tested with time passed in.
//! - Incoming queries: its `Server` says it "doesn't implement any
//!   rate-limiting or blocking"; a `RequestFilter` hook exists but per-
//!   source limits would live outside its bounds.
//! - Routing: k is a fixed 20 (BEP 5 says 8); buckets are kept by
//!   distance without BEP 5 splitting or good/questionable/bad liveness;
//!   there is no replacement cache. Save/restore is possible
//!   (`to_bootstrap()` gives addresses, without ids).
//! - Dependencies: it carries BEP 44 unconditionally (`ed25519-dalek`
//!   3.0.0-pre, `sha1_smol`, `crc`, `lru`, `serde_bencode`, `dyn-clone`,
//!   `getrandom` 0.4, `flume`), a second bencode implementation beside
//!   ours, and a pre-release crypto crate.
//!
//! So the DHT is our own: a KRPC codec in `protocol/`, plain state machines
//! here, a thin actor. Node ids are random (BEP 42 ids derived from the
//! external address are a follow-up; the `ip` that answering nodes report
//! is recorded in [`DhtStats::external_addr`] for it). IPv4 only (BEP 32
//! is a follow-up). BEP 43 read-only nodes are honoured (not put in the
//! table); we are never read-only.
//!
//! Unknown query methods are answered with error 204 (BEP 5); malformed
//! datagrams are dropped and counted by reason, never answered.

pub mod config;
pub mod id;
pub mod lookup;
pub mod node;
pub mod routing;
pub mod sim;
pub mod state;
pub mod store;
pub mod token;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::metainfo::InfoHash;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

pub use self::config::DhtConfig;
pub use self::id::NodeId;
pub use self::lookup::{Answered, LookupKind, LookupSummary};
pub use self::node::{DhtStats, Event, Node, NodeError};
use crate::tracker::dns::DnsHandle;

/// Why a call to the DHT failed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DhtError {
    /// The actor has stopped.
    #[error("the DHT actor has stopped")]
    Stopped,
    /// The node refused the command.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// How to start the actor (the parts that are not configuration).
#[derive(Debug, Clone)]
pub struct DhtStart {
    /// Where to bind the UDP socket (IPv4).
    pub bind: SocketAddr,
    /// The routing-table state file (read at start, written at stop);
    /// `None` keeps nothing across runs.
    pub state_file: Option<PathBuf>,
    /// The DNS cache for bootstrap host names; without it only IP literals
    /// in `bootstrap_nodes` are used.
    pub dns: Option<DnsHandle>,
    /// Seed of the node's random numbers (id, tokens); `None` draws one.
    pub seed: Option<u64>,
}

enum Command {
    Register {
        info_hash: InfoHash,
        announce_port: Option<u16>,
        peers: mpsc::Sender<Vec<SocketAddr>>,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    Unregister(InfoHash, oneshot::Sender<Result<(), DhtError>>),
    AddNode(SocketAddrV4),
    Lookup(
        NodeId,
        LookupKind,
        oneshot::Sender<Result<LookupSummary, DhtError>>,
    ),
    Stats(oneshot::Sender<DhtStats>),
}

/// Cheap, cloneable handle to the DHT actor.
#[derive(Clone, Debug)]
pub struct DhtHandle {
    tx: mpsc::Sender<Command>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Register { info_hash, .. } => write!(f, "Register({info_hash})"),
            Command::Unregister(ih, _) => write!(f, "Unregister({ih})"),
            Command::AddNode(a) => write!(f, "AddNode({a})"),
            Command::Lookup(t, k, _) => write!(f, "Lookup({t}, {k:?})"),
            Command::Stats(_) => f.write_str("Stats"),
        }
    }
}

impl DhtHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DhtError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// The UDP address the node is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Registers a torrent: a `get_peers` lookup now and every
    /// `reannounce_interval` while registered, each followed by
    /// `announce_peer(announce_port)` to the closest nodes unless
    /// `announce_port` is `None`. New peers of each lookup go to `peers`
    /// with `try_send` (a full channel drops the batch and counts it in
    /// [`DhtStats::peer_batches_dropped`]; a closed one unregisters).
    pub async fn register(
        &self,
        info_hash: InfoHash,
        announce_port: Option<u16>,
        peers: mpsc::Sender<Vec<SocketAddr>>,
    ) -> Result<(), DhtError> {
        self.call(|reply| Command::Register {
            info_hash,
            announce_port,
            peers,
            reply,
        })
        .await?
    }

    /// Forgets a torrent.
    pub async fn unregister(&self, info_hash: InfoHash) -> Result<(), DhtError> {
        self.call(|r| Command::Unregister(info_hash, r)).await?
    }

    /// A node address learned elsewhere (a peer's BEP 5 `port` message):
    /// pinged, and put in the routing table if it answers. Waits for room
    /// in the mailbox. Only IPv4 addresses are used.
    pub async fn add_node(&self, addr: SocketAddr) -> Result<(), DhtError> {
        let Some(v4) = v4(addr) else { return Ok(()) };
        self.tx
            .send(Command::AddNode(v4))
            .await
            .map_err(|_| DhtError::Stopped)
    }

    /// [`DhtHandle::add_node`] without waiting: false if the mailbox was
    /// full (the hint is dropped) or the actor stopped. For peer actors,
    /// which must not wait on the DHT.
    pub fn try_add_node(&self, addr: SocketAddr) -> bool {
        match v4(addr) {
            Some(v4) => self.tx.try_send(Command::AddNode(v4)).is_ok(),
            None => false,
        }
    }

    /// A one-shot `get_peers` lookup (no announce, no registration):
    /// resolves when it converges.
    pub async fn get_peers(&self, info_hash: InfoHash) -> Result<LookupSummary, DhtError> {
        self.call(|r| Command::Lookup(NodeId(info_hash.0), LookupKind::GetPeers, r))
            .await?
    }

    /// A one-shot `find_node` lookup of `target`.
    pub async fn find_node(&self, target: NodeId) -> Result<LookupSummary, DhtError> {
        self.call(|r| Command::Lookup(target, LookupKind::FindNode, r))
            .await?
    }

    /// The counters.
    pub async fn stats(&self) -> Result<DhtStats, DhtError> {
        self.call(Command::Stats).await
    }
}

fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// Binds the socket, loads the state file and starts the actor. It stops
/// when `cancel` fires or every handle is dropped, after saving the state
/// file; the join handle resolves then.
pub async fn spawn(
    config: DhtConfig,
    start: DhtStart,
    cancel: CancellationToken,
) -> std::io::Result<(DhtHandle, tokio::task::JoinHandle<()>)> {
    let socket = match &config.bind_interface {
        None => UdpSocket::bind(start.bind).await?,
        Some(name) => {
            // Bound to the interface before the address, so no datagram
            // ever leaves by another route (`bind_interface`).
            use socket2::{Domain, Protocol, Socket, Type};
            let sock = Socket::new(
                Domain::for_address(start.bind),
                Type::DGRAM,
                Some(Protocol::UDP),
            )?;
            sock.bind_device(Some(name.as_bytes()))?;
            sock.set_nonblocking(true)?;
            sock.bind(&start.bind.into())?;
            UdpSocket::from_std(sock.into())?
        }
    };
    let local_addr = socket.local_addr()?;
    let (tx, rx) = mpsc::channel(config.mailbox_capacity.max(1));
    let now = Instant::now().into_std();
    let mut state_error = None;
    let saved = match &start.state_file {
        None => None,
        Some(path) => match state::load(path, config.max_state_file, config.max_nodes) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "ignoring the DHT state file");
                state_error = Some(e.to_string());
                None
            }
        },
    };
    let restored = saved.as_ref().map_or(0, |s| s.nodes.len());
    let seed = start.seed.unwrap_or_else(rand::random);
    let mut node = Node::new(config.clone(), saved, seed, now);
    node.note_state_error(state_error);
    let span = tracing::info_span!("dht", addr = %local_addr, id = %node.id());
    let actor = Actor {
        socket: Arc::new(socket),
        node,
        torrents: HashMap::new(),
        requests: HashMap::new(),
        dns_tasks: JoinSet::new(),
        retry: config.retry_interval,
        buf: vec![0; config.max_packet_size.max(1) + 1],
        state_file: start.state_file,
    };
    let join = tokio::spawn(
        async move {
            info!(restored, "DHT node started");
            actor
                .run(config.bootstrap_nodes, start.dns, rx, cancel)
                .await;
        }
        .instrument(span),
    );
    Ok((DhtHandle { tx, local_addr }, join))
}

type Resolved = (String, Result<Vec<SocketAddrV4>, String>);

struct Actor {
    socket: Arc<UdpSocket>,
    node: Node,
    /// Peer channels of the registered torrents.
    torrents: HashMap<NodeId, mpsc::Sender<Vec<SocketAddr>>>,
    /// One-shot lookups and who waits for them.
    requests: HashMap<node::LookupId, oneshot::Sender<Result<LookupSummary, DhtError>>>,
    /// Bootstrap host names being resolved (one task per name).
    dns_tasks: JoinSet<Resolved>,
    retry: Duration,
    /// One byte more than the largest datagram decoded, so that a larger
    /// one is seen as too large rather than silently cut.
    buf: Vec<u8>,
    state_file: Option<PathBuf>,
}

/// Most datagrams read in one wake-up before outputs are flushed.
const RECV_BATCH: usize = 64;

impl Actor {
    async fn run(
        mut self,
        bootstrap: Vec<String>,
        dns: Option<DnsHandle>,
        mut rx: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
        self.start_bootstrap(&bootstrap, dns.as_ref());
        loop {
            let now = Instant::now().into_std();
            if now >= self.node.poll_timeout() {
                self.node.handle_timeout(now);
            }
            self.flush().await;
            let wake = Instant::from_std(self.node.poll_timeout());
            let socket = self.socket.clone();
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                r = socket.recv_from(&mut self.buf) => {
                    match r {
                        Ok((n, from)) => {
                            let now = Instant::now().into_std();
                            self.node.handle_packet(from, &self.buf[..n], now);
                            // Drain what else is queued before flushing.
                            for _ in 1..RECV_BATCH {
                                match socket.try_recv_from(&mut self.buf) {
                                    Ok((n, from)) => self.node.handle_packet(from, &self.buf[..n], now),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(e) => debug!(error = %e, "DHT socket receive failed"),
                    }
                }
                Some(done) = self.dns_tasks.join_next(), if !self.dns_tasks.is_empty() => {
                    if let Ok((host, result)) = done {
                        self.on_resolved(host, result, dns.as_ref());
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        self.dns_tasks.abort_all();
        self.save();
    }

    /// IP literals go to the node at once; host names are resolved in
    /// tasks (their answers are routers: used, not put in the table).
    fn start_bootstrap(&mut self, nodes: &[String], dns: Option<&DnsHandle>) {
        let now = Instant::now().into_std();
        let mut literals = Vec::new();
        for entry in nodes {
            if let Ok(addr) = entry.parse::<SocketAddr>() {
                literals.extend(v4(addr));
                continue;
            }
            match (entry.rsplit_once(':'), dns) {
                (Some((host, port)), Some(dns)) => match port.parse::<u16>() {
                    Ok(port) => self.resolve(host.to_owned(), port, dns.clone(), Duration::ZERO),
                    Err(_) => warn!(entry = %entry, "bad DHT bootstrap node (host:port)"),
                },
                (Some(_), None) => debug!(entry = %entry, "no DNS cache: bootstrap name skipped"),
                (None, _) => warn!(entry = %entry, "bad DHT bootstrap node (host:port)"),
            }
        }
        self.node.bootstrap(literals, false, now);
    }

    fn resolve(&mut self, host: String, port: u16, dns: DnsHandle, after: Duration) {
        self.dns_tasks.spawn(async move {
            tokio::time::sleep(after).await;
            let r = dns
                .lookup(&host)
                .await
                .map(|ips| {
                    ips.iter()
                        .filter_map(|ip| v4(SocketAddr::new(*ip, port)))
                        .collect()
                })
                .map_err(|e| e.to_string());
            (format!("{host}:{port}"), r)
        });
    }

    fn on_resolved(
        &mut self,
        entry: String,
        result: Result<Vec<SocketAddrV4>, String>,
        dns: Option<&DnsHandle>,
    ) {
        let now = Instant::now().into_std();
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                debug!(entry = %entry, addrs = addrs.len(), "bootstrap node resolved");
                self.node.bootstrap(addrs, true, now);
            }
            other => {
                let why = other.err().unwrap_or_else(|| "no IPv4 address".into());
                debug!(entry = %entry, error = %why, "bootstrap node not resolved; retrying later");
                if let (Some((host, port)), Some(dns)) = (entry.rsplit_once(':'), dns) {
                    if let Ok(port) = port.parse() {
                        self.resolve(host.to_owned(), port, dns.clone(), self.retry);
                    }
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now().into_std();
        match cmd {
            Command::Register {
                info_hash,
                announce_port,
                peers,
                reply,
            } => {
                let ih = NodeId(info_hash.0);
                let r = self.node.register(ih, announce_port, now);
                if r.is_ok() {
                    self.torrents.insert(ih, peers);
                }
                let _ = reply.send(r.map_err(DhtError::from));
            }
            Command::Unregister(info_hash, reply) => {
                let ih = NodeId(info_hash.0);
                self.torrents.remove(&ih);
                let _ = reply.send(self.node.unregister(&ih).map_err(DhtError::from));
            }
            Command::AddNode(addr) => self.node.add_node(addr, now),
            Command::Lookup(target, kind, reply) => match self.node.start_lookup(target, kind, now)
            {
                Ok(id) => {
                    self.requests.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Stats(reply) => {
                let _ = reply.send(self.node.stats(now));
            }
        }
    }

    /// Sends what the node queued and delivers its events.
    async fn flush(&mut self) {
        while let Some((to, bytes)) = self.node.poll_transmit() {
            // Errors (unreachable network, a refused address) are the
            // remote's problem: the query times out.
            if let Err(e) = self.socket.send_to(&bytes, to).await {
                debug!(%to, error = %e, "DHT send failed");
            }
        }
        while let Some(ev) = self.node.poll_event() {
            match ev {
                Event::Peers { info_hash, peers } => {
                    let Some(tx) = self.torrents.get(&info_hash) else {
                        continue;
                    };
                    match tx.try_send(peers) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => self.node.count_dropped_batch(),
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            debug!(info_hash = %info_hash, "peer channel closed: unregistered");
                            self.torrents.remove(&info_hash);
                            let _ = self.node.unregister(&info_hash);
                        }
                    }
                }
                Event::LookupDone { id, summary, .. } => {
                    if let Some(reply) = self.requests.remove(&id) {
                        let _ = reply.send(Ok(summary));
                    }
                }
            }
        }
    }

    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let state = self.node.saved_state(Instant::now().into_std());
        match state::save(path, &state) {
            Ok(()) => info!(path = %path.display(), nodes = state.nodes.len(), "DHT state saved"),
            Err(e) => warn!(error = %e, "cannot save the DHT state"),
        }
    }
}

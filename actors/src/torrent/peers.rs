//! The torrent's peers: the address book (every address heard of, with its
//! failures, protocol strikes and bans), the connections (started within the
//! per-torrent and process limits), the reconnect policy, interest and the
//! choker's decisions. Methods of the torrent actor, kept apart from its
//! data path ([`super::pieces`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Torrent;
use super::msg::{PeerFault, PeerInfo, TorrentState};
use crate::choker::Candidate;
use crate::peer::msg::PeerCmd;
use crate::peer::{self, PeerContext};
use crate::picker::PeerId;

pub(super) struct PeerEntry {
    pub(super) addr: SocketAddr,
    /// The id from its handshake, when it dialled us (known before the
    /// connection is taken).
    pub(super) peer_id: Option<[u8; 20]>,
    pub(super) cmds: Option<mpsc::Sender<PeerCmd>>,
    pub(super) cancel: CancellationToken,
    /// We told it we are interested.
    pub(super) interested: bool,
    /// It is interested in us.
    pub(super) wants_us: bool,
    pub(super) down_rate: u64,
    pub(super) up_rate: u64,
    /// It has every piece.
    pub(super) is_seed: bool,
    /// When the connection was registered.
    pub(super) since: Instant,
    /// Payload bytes exchanged either way so far.
    pub(super) exchanged: u64,
    /// Evicted to make room: cancelled, not counted against the limit.
    pub(super) leaving: bool,
    /// We dialled it (else it dialled us).
    pub(super) outgoing: bool,
    /// Its payload is RC4-encrypted (MSE), once known.
    pub(super) encrypted: bool,
    /// It chokes us (as of its last status report).
    pub(super) choking_us: bool,
    /// Closed as the losing half of a duplicate pair: its end is nobody's
    /// fault and its address is not retried while the winner lives.
    pub(super) duplicate: bool,
}

#[derive(Default)]
pub(super) struct AddrState {
    pub(super) connected: bool,
    pub(super) failures: u32,
    /// Connections to it that ended in a protocol error.
    pub(super) protocol_strikes: u32,
    pub(super) next_try: Option<Instant>,
    pub(super) given_up: bool,
    /// Never dialled again, even if a tracker lists it anew.
    pub(super) refused: bool,
    /// A live connection that dialled us from this host's peer: dialling
    /// its address again would only make a duplicate.
    pub(super) covered_by: Option<PeerId>,
}

/// Ended connections whose address a late ban can still find.
const RECENTLY_GONE: usize = 1024;

/// A full torrent evicts its least useful peer for a newcomer only if that
/// peer has had this long to become useful: a burst of new connections
/// cannot evict each other, nor peers that just arrived.
const EVICT_MIN_AGE: Duration = Duration::from_secs(5);
/// At most one eviction per this interval (4 a second): a connection flood
/// can replace peers only that fast, while real peers, which a full
/// torrent turned away, get in within a few of their redials.
const EVICT_INTERVAL: Duration = Duration::from_millis(250);

/// Who is banned for bad data. A host, not a connection: by IP address, so
/// the same host dialling in from a new port is still refused (libtorrent
/// bans by IP too). On loopback, where every test peer shares one address,
/// by address and port instead. And by the peer id of its handshake, which
/// only a liar's own connections share.
#[derive(Default)]
pub(super) struct Bans {
    ips: HashSet<IpAddr>,
    addrs: HashSet<SocketAddr>,
    ids: HashSet<[u8; 20]>,
}

impl Bans {
    pub(super) fn insert(&mut self, addr: SocketAddr, peer_id: Option<[u8; 20]>) {
        if by_ip(addr) {
            self.ips.insert(host(addr));
        } else {
            self.addrs.insert(addr);
        }
        if let Some(id) = peer_id {
            self.ids.insert(id);
        }
    }

    /// Whether an address (to dial, or dialling in) is banned.
    pub(super) fn addr(&self, addr: &SocketAddr) -> bool {
        if by_ip(*addr) {
            self.ips.contains(&host(*addr))
        } else {
            self.addrs.contains(addr)
        }
    }

    /// Whether a connection with this address and handshake is banned.
    pub(super) fn peer(&self, addr: &SocketAddr, peer_id: &[u8; 20]) -> bool {
        self.addr(addr) || self.ids.contains(peer_id)
    }

    /// Whether `other` is the same banned host as `addr`.
    fn same_host(addr: SocketAddr, other: SocketAddr) -> bool {
        if by_ip(addr) {
            host(addr) == host(other)
        } else {
            addr == other
        }
    }
}

/// The host's address; an IPv4-mapped IPv6 address is the IPv4 one.
fn host(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

fn by_ip(addr: SocketAddr) -> bool {
    !host(addr).is_loopback()
}

impl Torrent {
    /// Whether this torrent exchanges peers (BEP 11; never when private).
    pub(super) fn pex_enabled(&self) -> bool {
        self.shared.config.pex.enabled && !self.meta.info.private
    }

    /// The peers to tell others of: connected ones (handshake done) that
    /// we dialled, so their address is where they listen.
    fn pex_list(&self) -> std::sync::Arc<[SocketAddr]> {
        self.peers
            .values()
            .filter(|p| p.cmds.is_some() && !p.leaving && self.addrs.contains_key(&p.addr))
            .map(|p| p.addr)
            .collect()
    }

    /// Sends the list to one peer (its first message) or to all (the
    /// interval's refresh), with `try_send`: a full mailbox loses it until
    /// the next refresh.
    pub(super) fn pex_refresh(&mut self, only: Option<PeerId>) {
        if !self.pex_enabled() {
            return;
        }
        let list = self.pex_list();
        for (id, p) in &self.peers {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            if let Some(tx) = &p.cmds {
                let _ = tx.try_send(PeerCmd::Pex(list.clone()));
            }
        }
    }

    /// Addresses a peer learned by PEX: into the address book like a
    /// tracker's, while the book is below `[pex] max_known_addrs` (banned
    /// and our own are skipped by `add_peers`).
    pub(super) fn pex_peers(&mut self, added: Vec<SocketAddr>) {
        let room = self
            .shared
            .config
            .pex
            .max_known_addrs
            .saturating_sub(self.addrs.len());
        let fresh: Vec<SocketAddr> = added
            .into_iter()
            .filter(|a| a.port() != 0 && !self.addrs.contains_key(a))
            .take(room)
            .collect();
        if !fresh.is_empty() {
            self.add_peers(fresh);
        }
    }

    /// Addresses from the command line, a tracker, the DHT or PEX: known
    /// from now on (ourselves and banned ones aside), and dialled within
    /// the limits.
    pub(super) fn add_peers(&mut self, addrs: Vec<SocketAddr>) {
        let port = self.shared.listen_port.load(Ordering::Relaxed);
        let cap = self.shared.config.max_known_addrs_per_torrent;
        for a in addrs {
            let a = crate::net::canonical(a);
            // Ourselves, as a tracker lists us back.
            let own = a.port() == port && (a.ip().is_loopback() || a.ip().is_unspecified());
            if own || self.banned.addr(&a) || a.port() == 0 {
                continue;
            }
            if !make_room(&mut self.addrs, &a, cap) {
                if self.addrs_skipped == 0 {
                    info!(
                        cap,
                        "address book full (max_known_addrs_per_torrent); new addresses skipped until some are given up"
                    );
                }
                self.addrs_skipped += 1;
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

    /// A connection the remote side opened, taken if the limits allow.
    pub(super) fn incoming(
        &mut self,
        stream: crate::mse_stream::MseStream<tokio::net::TcpStream>,
        addr: SocketAddr,
        handshake: protocol::wire::Handshake,
    ) {
        let staying = self.peers.values().filter(|p| !p.leaving).count();
        let full = staying >= self.shared.max_peers.load(Ordering::Relaxed);
        let done = !self.picker.needs_anything() && !self.seed;
        if self.banned.peer(&addr, &handshake.peer_id) {
            debug!(%addr, "banned host dialled in; dropped");
            return;
        }
        if done {
            return;
        }
        // The permit first: a peer evicted for a newcomer the process
        // limit then turns away would be lost for nothing.
        let Ok(permit) = self.shared.connections.clone().try_acquire_owned() else {
            debug!(%addr, "process connection limit reached; incoming dropped");
            return;
        };
        if full && !self.evict_for_newcomer() {
            return;
        }
        let ctx = self.new_peer(addr, Some(handshake.peer_id), false);
        let local = stream.get_ref().local_addr().ok();
        if let Some(p) = self.peers.get_mut(&ctx.id) {
            p.encrypted = stream.kind() == crate::mse_stream::Kind::MseRc4;
        }
        self.tasks.spawn(async move {
            let _permit = permit;
            peer::run_with_local(stream, Some(handshake), local, ctx).await;
        });
    }

    /// Makes room in a full torrent for a peer dialling in, by dropping the
    /// least useful connection (libtorrent does the same rather than refuse
    /// every newcomer, which let idle peers that came first lock out real
    /// ones). Least useful, among peers connected for [`EVICT_MIN_AGE`]:
    /// first one that neither side is interested in, then one we unchoke
    /// that takes nothing (stalled), then the lowest rate, the fewest bytes
    /// exchanged, the oldest. At most one per [`EVICT_INTERVAL`]. Returns
    /// whether room was made.
    fn evict_for_newcomer(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_eviction
            .is_some_and(|t| now.duration_since(t) < EVICT_INTERVAL)
        {
            return false;
        }
        let victim = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.cmds.is_some() && !p.leaving && now.duration_since(p.since) >= EVICT_MIN_AGE
            })
            .min_by_key(|(id, p)| {
                let rate = p.down_rate + p.up_rate;
                let tier = if !p.interested && !p.wants_us {
                    0
                } else if rate == 0 && self.choker.is_unchoked(**id) {
                    1
                } else {
                    2
                };
                (tier, rate, p.exchanged, p.since)
            })
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        self.last_eviction = Some(now);
        self.evictions += 1;
        if let Some(p) = self.peers.get_mut(&id) {
            debug!(peer = id.0, addr = %p.addr, evictions = self.evictions, "evicted for a new peer (torrent full)");
            p.leaving = true;
            p.cmds = None;
            p.cancel.cancel();
        }
        true
    }

    /// Starts connections to known addresses, within the limit.
    pub(super) fn connect_peers(&mut self) {
        let serving = self.seed && self.state == TorrentState::Seeding;
        if (!self.picker.needs_anything() && !serving) || self.cancel.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let limit = self.shared.max_peers.load(Ordering::Relaxed);
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
                    && !self.banned.addr(a)
                    && s.covered_by.is_none_or(|c| !self.peers.contains_key(&c))
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
            let ctx = self.new_peer(addr, None, true);
            self.tasks.spawn(async move {
                let _permit = permit;
                peer::connect_and_run(ctx).await;
            });
        }
    }

    /// Registers a new connection to `addr` and returns what its task needs.
    pub(super) fn new_peer(
        &mut self,
        addr: SocketAddr,
        peer_id: Option<[u8; 20]>,
        outgoing: bool,
    ) -> PeerContext {
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        let cancel = self.cancel.child_token();
        self.peers.insert(
            id,
            PeerEntry {
                addr,
                peer_id,
                cmds: None,
                cancel: cancel.clone(),
                interested: false,
                wants_us: false,
                down_rate: 0,
                up_rate: 0,
                is_seed: false,
                since: Instant::now(),
                exchanged: 0,
                leaving: false,
                outgoing,
                encrypted: false,
                choking_us: true,
                duplicate: false,
            },
        );
        // A super-seed shows a new peer nothing; pieces are revealed one
        // by one once it is connected (see `superseed`).
        let have = match self.super_seed_state() {
            Some(ss) => {
                ss.add_peer(id);
                crate::picker::Bitfield::new(self.picker.num_pieces())
            }
            None => self.picker.have_bitfield().clone(),
        };
        PeerContext {
            id,
            addr,
            info_hash: self.meta.info_hash.0,
            our_id: self.shared.peer_id,
            piece_count: self.picker.num_pieces(),
            have,
            torrent: self.self_tx.clone(),
            budget: self.shared.budget.clone(),
            config: self.shared.config.clone(),
            cancel,
            storage: self.storage.clone(),
            up_limits: self.up_limits.clone(),
            down_limits: self.down_limits.clone(),
            conn: self.shared.conn.clone(),
            metadata: Some(self.metadata.clone()),
            pex: self.pex_enabled(),
            dht: self.dht.clone().filter(|_| !self.meta.info.private),
            listen: self.shared.listen_addr.get().copied(),
        }
    }

    /// Tells a peer the choker's decision; a peer whose mailbox is full is
    /// dropped (a lost unchoke would leave it waiting forever).
    pub(super) fn send_choke(&mut self, id: PeerId, choke: bool) {
        let Some(tx) = self.peers.get(&id).and_then(|p| p.cmds.as_ref()) else {
            return;
        };
        if tx.try_send(PeerCmd::Choke(choke)).is_err() {
            self.drop_peer(id, "peer mailbox full".into());
        }
    }

    /// Runs the choker when a round is due.
    pub(super) fn choke_round(&mut self) {
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
        let seeding = self.picker.wanted_complete();
        let d = self.choker.round(now, seeding, &candidates);
        for id in d.choke {
            self.send_choke(id, true);
        }
        for id in d.unchoke {
            self.send_choke(id, false);
        }
    }

    /// A peer that has everything is of no use to a complete torrent.
    pub(super) fn drop_if_both_seeds(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.is_seed = true;
        }
        if !self.picker.needs_anything() {
            self.drop_peer(id, "both sides are seeds".into());
        }
    }

    pub(super) fn update_interest(&mut self, id: PeerId) {
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

    /// Bans a peer for bad data: dropped now with every other connection
    /// of its host, which is never dialled or taken again (also when the
    /// verdict comes after it left: smart ban). See [`Bans`].
    pub(super) fn ban(&mut self, id: PeerId, why: &str) {
        self.banned_peers += 1;
        let who = self
            .peers
            .get(&id)
            .map(|p| (p.addr, p.peer_id))
            .or_else(|| {
                self.recently_gone
                    .iter()
                    .find(|(gone, _, _)| *gone == id)
                    .map(|(_, a, pid)| (*a, *pid))
            });
        self.drop_peer(id, "banned".into());
        let Some((addr, peer_id)) = who else {
            return;
        };
        warn!(%addr, why, "banning peer");
        self.banned.insert(addr, peer_id);
        let same: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(other, p)| {
                **other != id
                    && (Bans::same_host(addr, p.addr)
                        || (peer_id.is_some() && p.peer_id == peer_id))
            })
            .map(|(other, _)| *other)
            .collect();
        for other in same {
            self.drop_peer(other, "its host is banned".into());
        }
    }

    /// Settles a connection pair to one host (we dialled it while it
    /// dialled us) once `id`'s handshake names `peer_id`: returns whether
    /// `id` survives. The rule is libtorrent's, so both ends close the same
    /// half: the connection kept is the one the peer with the greater id
    /// opened. Two connections in the same direction: the newer goes.
    pub(super) fn settle_duplicate(&mut self, id: PeerId, peer_id: [u8; 20]) -> bool {
        let Some(new_outgoing) = self.peers.get(&id).map(|p| p.outgoing) else {
            return false;
        };
        let other = self
            .peers
            .iter()
            .find(|(o, p)| {
                **o != id && !p.leaving && p.cmds.is_some() && p.peer_id == Some(peer_id)
            })
            .map(|(o, p)| (*o, p.outgoing));
        let Some((other, other_outgoing)) = other else {
            return true;
        };
        let keep_outgoing = self.shared.peer_id > peer_id;
        let loser = if new_outgoing != other_outgoing && new_outgoing == keep_outgoing {
            other
        } else {
            id
        };
        let winner = if loser == id { other } else { id };
        let Some(p) = self.peers.get_mut(&loser) else {
            return true;
        };
        debug!(peer = loser.0, addr = %p.addr, kept = winner.0, "duplicate connection to one peer; closed");
        p.duplicate = true;
        p.leaving = true;
        p.cmds = None;
        p.cancel.cancel();
        // A lost dial names the address we dial: not again while the
        // incoming winner lives.
        if p.outgoing {
            let addr = p.addr;
            if let Some(s) = self.addrs.get_mut(&addr) {
                s.covered_by = Some(winner);
            }
        }
        loser != id
    }

    pub(super) fn drop_peer(&mut self, id: PeerId, reason: String) {
        if let Some(p) = self.peers.get(&id) {
            debug!(peer = id.0, addr = %p.addr, %reason, "dropping peer");
            p.cancel.cancel();
        }
    }

    pub(super) fn peer_gone(&mut self, id: PeerId, fault: PeerFault, reason: String) {
        if let Some(ss) = &mut self.superseed {
            ss.peer_gone(id);
        }
        self.picker.peer_gone(id);
        self.choker.remove(id);
        let Some(p) = self.peers.remove(&id) else {
            return;
        };
        if self.recently_gone.len() >= RECENTLY_GONE {
            self.recently_gone.pop_front();
        }
        self.recently_gone.push_back((id, p.addr, p.peer_id));
        debug!(peer = id.0, addr = %p.addr, ?fault, %reason, "peer gone");
        if p.duplicate {
            if let Some(a) = self.addrs.get_mut(&p.addr) {
                a.connected = false;
            }
            return;
        }
        let config = &self.shared.config;
        let (max, base, strikes) = (
            config.reconnect_attempts,
            config.reconnect_backoff,
            config.max_protocol_strikes,
        );
        if !matches!(fault, PeerFault::Network | PeerFault::Ourselves) {
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
            (PeerFault::Ourselves, a) => {
                debug!(addr = %p.addr, "this address is ourselves; not dialled again");
                if let Some(a) = a {
                    a.refused = true;
                }
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
}

/// Whether `a` may go into the book `addrs` of at most `cap` addresses:
/// known already, or room, or room made by forgetting one address given up
/// on (never a refused one: its refusal must outlive the churn).
fn make_room(addrs: &mut HashMap<SocketAddr, AddrState>, a: &SocketAddr, cap: usize) -> bool {
    if addrs.contains_key(a) || addrs.len() < cap {
        return true;
    }
    let victim = addrs
        .iter()
        .find(|(_, s)| s.given_up && !s.refused && !s.connected)
        .map(|(a, _)| *a);
    match victim {
        Some(v) => {
            addrs.remove(&v);
            true
        }
        None => false,
    }
}

impl Torrent {
    /// What a controller shows of the connected peers, at most `max` of
    /// them (the busiest first).
    pub(super) fn peer_list(&self, max: usize) -> Vec<PeerInfo> {
        let pieces = self.picker.num_pieces();
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .filter(|(_, p)| p.cmds.is_some() && !p.leaving)
            .map(|(id, p)| PeerInfo {
                addr: p.addr,
                peer_id: p.peer_id,
                progress: if pieces == 0 {
                    0.0
                } else {
                    f64::from(self.picker.peer_piece_count(*id)) / f64::from(pieces)
                },
                rate_to_us: p.down_rate,
                rate_to_peer: p.up_rate,
                we_interested: p.interested,
                peer_interested: p.wants_us,
                we_choking: !self.choker.is_unchoked(*id),
                peer_choking: p.choking_us,
                encrypted: p.encrypted,
                incoming: !p.outgoing,
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.rate_to_us + p.rate_to_peer));
        out.truncate(max);
        out
    }
}

impl Torrent {
    /// The super-seeding state when new peers are to be super-seeded:
    /// `super_seed` is on and every piece is ours.
    pub(super) fn super_seed_state(&mut self) -> Option<&mut super::superseed::SuperSeed> {
        if !self.shared.config.super_seed || !self.seed || !self.picker.is_complete() {
            return None;
        }
        let n = self.picker.num_pieces();
        Some(
            self.superseed
                .get_or_insert_with(|| super::superseed::SuperSeed::new(n)),
        )
    }

    /// Shows `id` new pieces up to its slots, if we super-seed to it.
    pub(super) fn super_seed_refill(&mut self, id: PeerId) {
        let Some(ss) = self.superseed.as_mut().filter(|ss| ss.serves(id)) else {
            return;
        };
        let Some(tx) = self.peers.get(&id).and_then(|p| p.cmds.clone()) else {
            return;
        };
        let picker = &self.picker;
        let reveal = ss.refill(
            id,
            |i| picker.peer_has(id, i),
            |i| picker.availability(i),
            &mut self.rng,
        );
        let total = ss.revealed_total();
        for piece in reveal {
            debug!(peer = id.0, piece, total, "super-seeding: revealed");
            match tx.try_send(PeerCmd::Have(piece)) {
                Ok(()) => {}
                // A lost reveal would leave the peer waiting for good.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.drop_peer(id, "peer mailbox full".into());
                    return;
                }
                // The connection is ending; its PeerGone frees the pieces.
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }

    /// `from` announced `piece`: peers that passed it on are owed more.
    pub(super) fn super_seed_announced(&mut self, from: PeerId, piece: u32) {
        let Some(ss) = self.superseed.as_mut() else {
            return;
        };
        for id in ss.announced(from, piece, Instant::now()) {
            debug!(peer = id.0, by = from.0, piece, "super-seeding: passed on");
            self.super_seed_refill(id);
        }
    }

    /// Serves peers that had nobody to forward their pieces to.
    pub(super) fn super_seed_tick(&mut self) {
        let Some(ss) = self.superseed.as_mut() else {
            return;
        };
        for id in ss.stale(Instant::now()) {
            self.super_seed_refill(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_address_book_forgets_given_up_addresses_only() {
        let addr = |i: u8| SocketAddr::from(([198, 18, 0, i], 6881));
        let mut book: HashMap<SocketAddr, AddrState> = HashMap::new();
        for i in 0..3 {
            assert!(make_room(&mut book, &addr(i), 3));
            book.insert(addr(i), AddrState::default());
        }
        // Full of live addresses: a new one is skipped, a known one is not.
        assert!(!make_room(&mut book, &addr(9), 3));
        assert!(make_room(&mut book, &addr(1), 3));
        // A refused address given up on stays (its refusal holds).
        book.get_mut(&addr(0)).unwrap().given_up = true;
        book.get_mut(&addr(0)).unwrap().refused = true;
        assert!(!make_room(&mut book, &addr(9), 3));
        // One given up on and not refused makes room, and only one.
        book.get_mut(&addr(2)).unwrap().given_up = true;
        assert!(make_room(&mut book, &addr(9), 3));
        book.insert(addr(9), AddrState::default());
        assert_eq!(book.len(), 3);
        assert!(!book.contains_key(&addr(2)));
        assert!(book.contains_key(&addr(0)));
        assert!(!make_room(&mut book, &addr(10), 3));
    }

    #[test]
    fn a_ban_covers_the_host_its_port_changes_and_its_peer_id() {
        let mut b = Bans::default();
        let bad: SocketAddr = "198.18.2.9:6881".parse().unwrap();
        b.insert(bad, Some([9; 20]));
        assert!(b.addr(&"198.18.2.9:40000".parse().unwrap()), "new port");
        assert!(
            b.addr(&"[::ffff:198.18.2.9]:1".parse().unwrap()),
            "v4-mapped"
        );
        assert!(!b.addr(&"198.18.2.10:6881".parse().unwrap()));
        assert!(
            b.peer(&"198.18.3.1:6881".parse().unwrap(), &[9; 20]),
            "peer id"
        );
        assert!(!b.peer(&"198.18.3.1:6881".parse().unwrap(), &[8; 20]));
        // Loopback: every local peer shares the address; by port there.
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        b.insert(local, None);
        assert!(b.addr(&local));
        assert!(!b.addr(&"127.0.0.1:5001".parse().unwrap()));
    }
}

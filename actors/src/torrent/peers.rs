//! The torrent's peers: the address book (every address heard of, with its
//! failures, protocol strikes and bans), the connections (started within the
//! per-torrent and process limits), the reconnect policy, interest and the
//! choker's decisions. Methods of the torrent actor, kept apart from its
//! data path ([`super::pieces`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Torrent;
use super::msg::{PeerFault, TorrentState};
use crate::choker::Candidate;
use crate::peer::msg::PeerCmd;
use crate::peer::{self, PeerContext};
use crate::picker::PeerId;

pub(super) struct PeerEntry {
    pub(super) addr: SocketAddr,
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
}

/// Ended connections whose address a late ban can still find.
const RECENTLY_GONE: usize = 1024;

impl Torrent {
    /// Addresses from the command line, a tracker, the DHT or PEX: known
    /// from now on (ourselves and banned ones aside), and dialled within
    /// the limits.
    pub(super) fn add_peers(&mut self, addrs: Vec<SocketAddr>) {
        let port = self.shared.listen_port.load(Ordering::Relaxed);
        for a in addrs {
            // Ourselves, as a tracker lists us back.
            let own = a.port() == port && (a.ip().is_loopback() || a.ip().is_unspecified());
            if own || self.banned.contains(&a) {
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
        let full = self.peers.len() >= self.shared.config.max_peers_per_torrent;
        let done = !self.picker.needs_anything() && !self.seed;
        if full || done || self.banned.contains(&addr) {
            return;
        }
        let Ok(permit) = self.shared.connections.clone().try_acquire_owned() else {
            debug!(%addr, "process connection limit reached; incoming dropped");
            return;
        };
        let ctx = self.new_peer(addr);
        self.tasks.spawn(async move {
            let _permit = permit;
            peer::run(stream, Some(handshake), ctx).await;
        });
    }

    /// Starts connections to known addresses, within the limit.
    pub(super) fn connect_peers(&mut self) {
        let serving = self.seed && self.state == TorrentState::Seeding;
        if (!self.picker.needs_anything() && !serving) || self.cancel.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let limit = self.shared.config.max_peers_per_torrent;
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
                    && !self.banned.contains(*a)
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
            let ctx = self.new_peer(addr);
            self.tasks.spawn(async move {
                let _permit = permit;
                peer::connect_and_run(ctx).await;
            });
        }
    }

    /// Registers a new connection to `addr` and returns what its task needs.
    pub(super) fn new_peer(&mut self, addr: SocketAddr) -> PeerContext {
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        let cancel = self.cancel.child_token();
        self.peers.insert(
            id,
            PeerEntry {
                addr,
                cmds: None,
                cancel: cancel.clone(),
                interested: false,
                wants_us: false,
                down_rate: 0,
                up_rate: 0,
                is_seed: false,
            },
        );
        PeerContext {
            id,
            addr,
            info_hash: self.meta.info_hash.0,
            our_id: self.shared.peer_id,
            piece_count: self.picker.num_pieces(),
            have: self.picker.have_bitfield().clone(),
            torrent: self.self_tx.clone(),
            budget: self.shared.budget.clone(),
            config: self.shared.config.clone(),
            cancel,
            storage: self.storage.clone(),
            up_limits: self.up_limits.clone(),
            down_limits: self.down_limits.clone(),
            conn: self.shared.conn.clone(),
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

    /// Bans a peer for bad data: dropped now, its address never dialled
    /// again (also when the verdict comes after it left: smart ban).
    pub(super) fn ban(&mut self, id: PeerId, why: &str) {
        self.banned_peers += 1;
        let addr = self.peers.get(&id).map(|p| p.addr).or_else(|| {
            self.recently_gone
                .iter()
                .find(|(gone, _)| *gone == id)
                .map(|(_, a)| *a)
        });
        if let Some(addr) = addr {
            warn!(%addr, why, "banning peer");
            self.banned.insert(addr);
        }
        self.drop_peer(id, "banned".into());
    }

    pub(super) fn drop_peer(&mut self, id: PeerId, reason: String) {
        if let Some(p) = self.peers.get(&id) {
            debug!(peer = id.0, addr = %p.addr, %reason, "dropping peer");
            p.cancel.cancel();
        }
    }

    pub(super) fn peer_gone(&mut self, id: PeerId, fault: PeerFault, reason: String) {
        self.picker.peer_gone(id);
        self.choker.remove(id);
        let Some(p) = self.peers.remove(&id) else {
            return;
        };
        if self.recently_gone.len() >= RECENTLY_GONE {
            self.recently_gone.pop_front();
        }
        self.recently_gone.push_back((id, p.addr));
        debug!(peer = id.0, addr = %p.addr, ?fault, %reason, "peer gone");
        let config = &self.shared.config;
        let (max, base, strikes) = (
            config.reconnect_attempts,
            config.reconnect_backoff,
            config.max_protocol_strikes,
        );
        if fault != PeerFault::Network {
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

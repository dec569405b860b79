//! The choker of one torrent: which interested peers we upload to. A plain
//! struct with time passed in; the torrent actor runs a round every
//! `interval` and tells peers the changes.
//!
//! - **Downloading**: the `slots - 1` interested peers that give us the best
//!   download rate (reciprocation), plus one optimistic unchoke that rotates
//!   every `optimistic_interval` through the other interested peers, least
//!   recently unchoked first, so a newcomer gets a chance to prove itself.
//! - **Seeding**, by [`SeedChoking`]: nothing to reciprocate, so the
//!   `slots - 1` peers we upload to fastest keep their slots, and the last
//!   slot rotates (least recently unchoked first), every round with
//!   `round_robin` (the default: every leecher gets served in turn), every
//!   `optimistic_interval` with `fastest_upload` (libtorrent's
//!   `fastest_upload` seed choking: the slots stay with the peers that
//!   take our upload fastest, which serves the swarm best when links
//!   differ, and a newcomer still gets its chance on the optimistic one).
//! - **Unlimited** (`slots: None`, the LAN disk-imaging setting): every
//!   interested peer is unchoked as soon as it says so.
//!
//! Between rounds, a newly interested peer takes a free slot at once rather
//! than waiting up to `interval` for the next round.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::picker::PeerId;

/// How a seed chooses whom to upload to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedChoking {
    /// The fastest keep `slots - 1`; the last slot moves every round.
    #[default]
    RoundRobin,
    /// The fastest keep `slots - 1`; the last (optimistic) slot moves every
    /// `optimistic_interval`, as when downloading.
    FastestUpload,
}

/// Choker settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChokerConfig {
    /// Upload slots, the optimistic one included; `None` is unlimited.
    /// Default 4 (plus the optimistic one when downloading: 5 in all, as
    /// the reference clients do).
    #[serde(with = "storage::serde_fmt::zero_is_none")]
    pub slots: Option<usize>,
    /// Time between rounds. Default 10 s.
    #[serde(rename = "interval_ms", with = "storage::serde_fmt::duration_ms")]
    pub interval: Duration,
    /// Time between optimistic rotations. Default 30 s.
    #[serde(
        rename = "optimistic_interval_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub optimistic_interval: Duration,
    /// While seeding: `round_robin` (default) or `fastest_upload`.
    pub seed_choking: SeedChoking,
}

impl Default for ChokerConfig {
    fn default() -> Self {
        ChokerConfig {
            slots: Some(4),
            interval: Duration::from_secs(10),
            optimistic_interval: Duration::from_secs(30),
            seed_choking: SeedChoking::RoundRobin,
        }
    }
}

/// What the choker knows of a peer at a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The peer.
    pub id: PeerId,
    /// It wants something we have.
    pub interested: bool,
    /// Bytes per second it sends us.
    pub down_rate: u64,
    /// Bytes per second we send it.
    pub up_rate: u64,
}

/// Changes to tell the peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Send UNCHOKE to these.
    pub unchoke: Vec<PeerId>,
    /// Send CHOKE to these.
    pub choke: Vec<PeerId>,
}

/// The choker state.
#[derive(Debug)]
pub struct Choker {
    config: ChokerConfig,
    unchoked: BTreeSet<PeerId>,
    optimistic: Option<PeerId>,
    last_round: Option<Instant>,
    last_optimistic: Option<Instant>,
    /// When each peer was last unchoked (for round-robin order).
    last_unchoked: BTreeMap<PeerId, Instant>,
}

impl Choker {
    /// A choker with nobody unchoked.
    pub fn new(config: ChokerConfig) -> Self {
        Choker {
            config,
            unchoked: BTreeSet::new(),
            optimistic: None,
            last_round: None,
            last_optimistic: None,
            last_unchoked: BTreeMap::new(),
        }
    }

    /// Whether a round is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last_round
            .is_none_or(|t| now.saturating_duration_since(t) >= self.config.interval)
    }

    /// Whether `id` is unchoked.
    pub fn is_unchoked(&self, id: PeerId) -> bool {
        self.unchoked.contains(&id)
    }

    /// Peers unchoked now.
    pub fn unchoked_count(&self) -> usize {
        self.unchoked.len()
    }

    /// `id` became interested: unchoke it at once if a slot is free.
    pub fn interested(&mut self, id: PeerId, now: Instant) -> bool {
        if self.unchoked.contains(&id) {
            return false;
        }
        let free = match self.config.slots {
            None => true,
            Some(n) => self.unchoked.len() < n.max(1),
        };
        if free {
            self.unchoke(id, now);
        }
        free
    }

    /// `id` is no longer interested or has gone: its slot frees.
    pub fn remove(&mut self, id: PeerId) -> bool {
        if self.optimistic == Some(id) {
            self.optimistic = None;
        }
        self.last_unchoked.remove(&id);
        self.unchoked.remove(&id)
    }

    fn unchoke(&mut self, id: PeerId, now: Instant) {
        self.unchoked.insert(id);
        self.last_unchoked.insert(id, now);
    }

    /// Runs a round at `now` over `peers`.
    pub fn round(&mut self, now: Instant, seeding: bool, peers: &[Candidate]) -> Decision {
        self.last_round = Some(now);
        let interested: Vec<&Candidate> = peers.iter().filter(|c| c.interested).collect();
        let want: BTreeSet<PeerId> = match self.config.slots {
            None => interested.iter().map(|c| c.id).collect(),
            Some(slots) => self.pick(now, seeding, slots.max(1), &interested),
        };
        let mut d = Decision::default();
        for id in self.unchoked.clone() {
            if !want.contains(&id) {
                self.unchoked.remove(&id);
                d.choke.push(id);
            }
        }
        for id in want {
            if !self.unchoked.contains(&id) {
                d.unchoke.push(id);
            }
            // Peers keeping their slot count as served now for rotation.
            self.unchoke(id, now);
        }
        let present: BTreeSet<PeerId> = peers.iter().map(|c| c.id).collect();
        self.last_unchoked.retain(|id, _| present.contains(id));
        d
    }

    fn pick(
        &mut self,
        now: Instant,
        seeding: bool,
        slots: usize,
        interested: &[&Candidate],
    ) -> BTreeSet<PeerId> {
        let mut ranked: Vec<&Candidate> = interested.to_vec();
        if seeding {
            ranked.sort_by(|a, b| b.up_rate.cmp(&a.up_rate).then(a.id.cmp(&b.id)));
        } else {
            ranked.sort_by(|a, b| {
                b.down_rate
                    .cmp(&a.down_rate)
                    .then(b.up_rate.cmp(&a.up_rate))
                    .then(a.id.cmp(&b.id))
            });
        }
        let regular = slots - 1;
        let mut want: BTreeSet<PeerId> = ranked.iter().take(regular).map(|c| c.id).collect();
        // The rotating slot: least recently unchoked among the rest.
        let every_round = seeding && self.config.seed_choking == SeedChoking::RoundRobin;
        let rotate = every_round
            || self.optimistic.is_none()
            || self.last_optimistic.is_none_or(|t| {
                now.saturating_duration_since(t) >= self.config.optimistic_interval
            })
            || !interested.iter().any(|c| Some(c.id) == self.optimistic);
        if rotate {
            // `None` (never unchoked) sorts first; ties by id.
            let next = ranked
                .iter()
                .filter(|c| !want.contains(&c.id))
                .min_by_key(|c| (self.last_unchoked.get(&c.id).copied(), c.id))
                .map(|c| c.id);
            self.optimistic = next;
            self.last_optimistic = Some(now);
        }
        if let Some(o) = self.optimistic {
            want.insert(o);
        }
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, interested: bool, down: u64, up: u64) -> Candidate {
        Candidate {
            id: PeerId(id),
            interested,
            down_rate: down,
            up_rate: up,
        }
    }

    fn ids(v: &[PeerId]) -> Vec<u64> {
        let mut v: Vec<u64> = v.iter().map(|p| p.0).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn downloading_keeps_best_uploaders_plus_one_optimistic() {
        let t0 = Instant::now();
        let mut ch = Choker::new(ChokerConfig::default());
        let peers: Vec<_> = (0..8).map(|i| c(i, true, i * 100, 0)).collect();
        let d = ch.round(t0, false, &peers);
        // Slots 4: the 3 fastest (7, 6, 5) and one optimistic.
        assert_eq!(d.unchoke.len(), 4);
        for id in [7, 6, 5] {
            assert!(ch.is_unchoked(PeerId(id)));
        }
        assert_eq!(ch.unchoked_count(), 4);
        assert!(d.choke.is_empty());
    }

    #[test]
    fn uninterested_peers_are_never_unchoked() {
        let t0 = Instant::now();
        let mut ch = Choker::new(ChokerConfig::default());
        let peers = vec![c(1, false, 1000, 0), c(2, true, 0, 0)];
        let d = ch.round(t0, false, &peers);
        assert_eq!(ids(&d.unchoke), vec![2]);
        assert!(!ch.is_unchoked(PeerId(1)));
    }

    #[test]
    fn optimistic_rotates_only_after_its_interval() {
        let t0 = Instant::now();
        let mut ch = Choker::new(ChokerConfig::default());
        let peers: Vec<_> = (0..6).map(|i| c(i, true, 1000 - i * 100, 0)).collect();
        ch.round(t0, false, &peers);
        let opt = ch.optimistic.unwrap();
        assert!(opt.0 >= 3, "regular slots are 0, 1, 2");
        ch.round(t0 + Duration::from_secs(10), false, &peers);
        assert_eq!(ch.optimistic, Some(opt), "kept before 30 s");
        ch.round(t0 + Duration::from_secs(20), false, &peers);
        assert_eq!(ch.optimistic, Some(opt));
        let d = ch.round(t0 + Duration::from_secs(30), false, &peers);
        let next = ch.optimistic.unwrap();
        assert_ne!(next, opt, "rotated at 30 s");
        assert_eq!(d.choke, vec![opt]);
        assert_eq!(d.unchoke, vec![next]);
    }

    #[test]
    fn seeding_ranks_by_upload_and_rotates_every_round() {
        let t0 = Instant::now();
        let mut ch = Choker::new(ChokerConfig {
            slots: Some(2),
            ..ChokerConfig::default()
        });
        // Peer 9 takes our upload fastest and keeps its slot; 1, 2, 3 share
        // the other one in turn.
        let peers = vec![
            c(1, true, 0, 10),
            c(2, true, 0, 10),
            c(3, true, 0, 10),
            c(9, true, 0, 999),
        ];
        let mut served = BTreeSet::new();
        for round in 0..3u64 {
            ch.round(t0 + Duration::from_secs(10 * round), true, &peers);
            assert!(ch.is_unchoked(PeerId(9)));
            assert_eq!(ch.unchoked_count(), 2);
            served.insert(ch.optimistic.unwrap().0);
        }
        assert_eq!(
            served,
            BTreeSet::from([1, 2, 3]),
            "round-robin over the rest"
        );
    }

    #[test]
    fn fastest_upload_seeding_keeps_the_fastest_and_rotates_the_optimistic_slowly() {
        let t0 = Instant::now();
        let mut ch = Choker::new(ChokerConfig {
            slots: Some(3),
            seed_choking: SeedChoking::FastestUpload,
            ..ChokerConfig::default()
        });
        // Up rates: 8 and 7 are the fastest takers; 1..=4 are slow.
        let mut peers: Vec<_> = (1..=4).map(|i| c(i, true, 0, 10 * i)).collect();
        peers.push(c(7, true, 0, 7000));
        peers.push(c(8, true, 0, 8000));
        ch.round(t0, true, &peers);
        let opt = ch.optimistic.unwrap();
        assert!(opt.0 <= 4, "the optimistic slot is one of the slow peers");
        for round in 1..3u64 {
            let d = ch.round(t0 + Duration::from_secs(10 * round), true, &peers);
            assert!(d.choke.is_empty() && d.unchoke.is_empty(), "kept");
            assert_eq!(ch.optimistic, Some(opt), "no rotation before 30 s");
        }
        assert!(ch.is_unchoked(PeerId(8)) && ch.is_unchoked(PeerId(7)));
        // The rates change: peer 2 now takes our upload fastest; it gets a
        // regular slot and 7 loses its own at the next round.
        peers[1].up_rate = 9000;
        ch.round(t0 + Duration::from_secs(25), true, &peers);
        assert!(ch.is_unchoked(PeerId(2)) && ch.is_unchoked(PeerId(8)));
        let d = ch.round(t0 + Duration::from_secs(30), true, &peers);
        let next = ch.optimistic.unwrap();
        assert_ne!(next, opt, "rotated at 30 s");
        assert!(d.unchoke.contains(&next));
        assert_eq!(ch.unchoked_count(), 3);
        // Round robin, for contrast, moves the last slot every round.
        let mut rr = Choker::new(ChokerConfig {
            slots: Some(3),
            ..ChokerConfig::default()
        });
        rr.round(t0, true, &peers);
        let first = rr.optimistic;
        rr.round(t0 + Duration::from_secs(10), true, &peers);
        assert_ne!(rr.optimistic, first);
    }

    #[test]
    fn unlimited_unchokes_every_interested_peer_at_once() {
        let t0 = Instant::now();
        let mut ch = Choker::new(ChokerConfig {
            slots: None,
            ..ChokerConfig::default()
        });
        for i in 0..100 {
            assert!(ch.interested(PeerId(i), t0));
        }
        assert_eq!(ch.unchoked_count(), 100);
        let peers: Vec<_> = (0..100).map(|i| c(i, i % 2 == 0, 0, 0)).collect();
        let d = ch.round(t0, true, &peers);
        assert_eq!(d.choke.len(), 50, "the uninterested half is choked");
        assert_eq!(ch.unchoked_count(), 50);
    }

    #[test]
    fn interested_fills_free_slots_between_rounds() {
        let t0 = Instant::now();
        let mut ch = Choker::new(ChokerConfig {
            slots: Some(2),
            ..ChokerConfig::default()
        });
        assert!(ch.interested(PeerId(1), t0));
        assert!(ch.interested(PeerId(2), t0));
        assert!(!ch.interested(PeerId(3), t0), "no slot left");
        assert!(ch.remove(PeerId(1)));
        assert!(ch.interested(PeerId(3), t0));
        assert!(ch.due(t0));
        ch.round(t0, false, &[]);
        assert!(!ch.due(t0 + Duration::from_secs(9)));
        assert!(ch.due(t0 + Duration::from_secs(10)));
    }
}

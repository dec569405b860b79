//! The peers other nodes announced to us (`announce_peer` with a valid
//! token), which we hand out in `get_peers` answers. A plain struct; time is
//! passed in.
//!
//! Bounded twice: `max_per_torrent` peers per info-hash (a new peer then
//! replaces the one closest to expiry, so an active swarm keeps its newest
//! announcers) and `max_total` peers in all (a new peer of a new info-hash is
//! then refused until entries expire, so a flood of made-up info-hashes
//! cannot push out the swarms already stored). Entries expire `ttl` after
//! their last announce; peers re-announce every 15 to 30 minutes.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::IndexedRandom;

use super::id::NodeId;

/// Bounds of the store (part of [`super::DhtConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Peers kept per info-hash.
    pub max_per_torrent: usize,
    /// Peers kept in all.
    pub max_total: usize,
    /// How long an announce is kept.
    pub ttl: Duration,
}

/// The defaults are [`super::DhtConfig`]'s, kept in one place.
impl Default for StoreConfig {
    fn default() -> Self {
        super::DhtConfig::default().store()
    }
}

/// What [`PeerStore::announce`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A new peer.
    Added,
    /// The peer was known; its expiry moved.
    Refreshed,
    /// The info-hash was full; the peer replaced the stalest one.
    Replaced,
    /// The store is full: refused.
    Full,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: SocketAddrV4,
    expires: Instant,
}

/// The store.
#[derive(Clone, Debug, Default)]
pub struct PeerStore {
    config: StoreConfig,
    torrents: HashMap<NodeId, Vec<Entry>>,
    total: usize,
}

impl PeerStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> PeerStore {
        PeerStore {
            config,
            torrents: HashMap::new(),
            total: 0,
        }
    }

    /// Peers stored.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Info-hashes with at least one peer.
    pub fn torrents(&self) -> usize {
        self.torrents.len()
    }

    /// Stores `addr` as a peer of `info_hash` until `now + ttl`.
    pub fn announce(&mut self, info_hash: NodeId, addr: SocketAddrV4, now: Instant) -> Stored {
        let expires = now + self.config.ttl;
        if let Some(list) = self.torrents.get_mut(&info_hash) {
            if let Some(e) = list.iter_mut().find(|e| e.addr == addr) {
                e.expires = expires;
                return Stored::Refreshed;
            }
            if list.len() >= self.config.max_per_torrent {
                if let Some(stalest) = list.iter_mut().min_by_key(|e| e.expires) {
                    *stalest = Entry { addr, expires };
                    return Stored::Replaced;
                }
                return Stored::Full;
            }
        }
        if self.total >= self.config.max_total || self.config.max_per_torrent == 0 {
            return Stored::Full;
        }
        self.torrents
            .entry(info_hash)
            .or_default()
            .push(Entry { addr, expires });
        self.total += 1;
        Stored::Added
    }

    /// Up to `max` unexpired peers of `info_hash`, a random choice when
    /// there are more.
    pub fn peers(
        &self,
        info_hash: &NodeId,
        now: Instant,
        max: usize,
        rng: &mut impl Rng,
    ) -> Vec<SocketAddrV4> {
        let Some(list) = self.torrents.get(info_hash) else {
            return Vec::new();
        };
        let live: Vec<SocketAddrV4> = list
            .iter()
            .filter(|e| e.expires > now)
            .map(|e| e.addr)
            .collect();
        if live.len() <= max {
            return live;
        }
        live.choose_multiple(rng, max).copied().collect()
    }

    /// Drops expired entries.
    pub fn expire(&mut self, now: Instant) {
        let mut total = 0;
        self.torrents.retain(|_, list| {
            list.retain(|e| e.expires > now);
            total += list.len();
            !list.is_empty()
        });
        self.total = total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::net::Ipv4Addr;

    fn peer(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 6881)
    }

    fn cfg(per: usize, total: usize) -> StoreConfig {
        StoreConfig {
            max_per_torrent: per,
            max_total: total,
            ttl: Duration::from_secs(1800),
        }
    }

    #[test]
    fn bounded_per_torrent_and_in_total() {
        let now = Instant::now();
        let mut s = PeerStore::new(cfg(3, 5));
        let a = NodeId([1; 20]);
        let b = NodeId([2; 20]);
        for i in 0..3 {
            assert_eq!(s.announce(a, peer(i), now), Stored::Added);
        }
        let later = now + Duration::from_secs(1);
        assert_eq!(s.announce(a, peer(1), later), Stored::Refreshed);
        assert_eq!(s.announce(a, peer(9), later), Stored::Replaced);
        assert_eq!(s.len(), 3);
        assert_eq!(s.announce(b, peer(20), now), Stored::Added);
        assert_eq!(s.announce(b, peer(21), now), Stored::Added);
        // Total of 5 reached: a new info-hash is refused...
        assert_eq!(s.announce(NodeId([3; 20]), peer(30), now), Stored::Full);
        // ...and so is a new peer of a torrent under its own bound.
        assert_eq!(s.announce(b, peer(22), now), Stored::Full);
        assert_eq!(s.len(), 5);
        let mut rng = SmallRng::seed_from_u64(1);
        let got = s.peers(&a, later, 10, &mut rng);
        assert_eq!(got.len(), 3);
        assert!(got.contains(&peer(9)));
        // The stalest of a (peer 0 or 2, not the refreshed peer 1) was
        // replaced.
        assert!(got.contains(&peer(1)));
    }

    #[test]
    fn entries_expire_and_replies_are_capped() {
        let now = Instant::now();
        let mut s = PeerStore::new(cfg(100, 1000));
        let a = NodeId([1; 20]);
        for i in 0..60 {
            s.announce(a, peer(i), now);
        }
        let mut rng = SmallRng::seed_from_u64(2);
        let got = s.peers(&a, now, 50, &mut rng);
        assert_eq!(got.len(), 50);
        let mut dedup = got.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 50, "no duplicates in a reply");
        let gone = now + Duration::from_secs(1800);
        assert!(s.peers(&a, gone, 50, &mut rng).is_empty());
        s.expire(gone);
        assert!(s.is_empty());
        assert_eq!(s.torrents(), 0);
    }
}

//! Super-seeding (BEP 16): a plain struct the torrent actor consults while
//! it seeds with `super_seed` on. It owns which pieces each peer has been
//! shown.
//!
//! A super-seed tells a peer of no piece (an empty bitfield, HAVE NONE with
//! the fast extension), then reveals pieces one HAVE at a time, at most
//! [`SLOTS`] outstanding per peer, each the rarest the peer lacks and, where
//! it can, one no other peer is being shown. A revealed piece is settled
//! (and the peer shown the next) once *another* peer announces it: the first
//! peer has passed it on, so the seed's upload went into the swarm rather
//! than to one peer. The peer announcing it itself is not enough (it may
//! keep it to itself); only if it then holds every revealed piece for
//! [`FORWARD_WAIT`] is it shown one more, so a swarm with nobody to forward
//! to (one leecher) still completes. A revealed piece the peer turns out
//! to have from elsewhere is replaced at once.
//!
//! Cost: a reveal scans every piece (O(pieces)), once per piece per peer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::picker::PeerId;

/// Pieces revealed to one peer and not yet settled (libtorrent keeps two).
pub(crate) const SLOTS: usize = 2;

/// How long a peer holding all its revealed pieces waits for one to be
/// forwarded before it is shown another anyway.
pub(crate) const FORWARD_WAIT: Duration = Duration::from_secs(5);

/// A piece shown to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shown {
    piece: u32,
    /// When the peer itself announced it, if it has.
    held_since: Option<Instant>,
}

/// Super-seeding state of one torrent.
#[derive(Debug)]
pub(crate) struct SuperSeed {
    /// Peers being shown each piece now.
    showing: Vec<u16>,
    /// Times each piece was revealed in all, for the statistics and tests.
    revealed_total: u64,
    peers: HashMap<PeerId, Vec<Shown>>,
}

impl SuperSeed {
    pub(crate) fn new(pieces: u32) -> Self {
        SuperSeed {
            showing: vec![0; pieces as usize],
            revealed_total: 0,
            peers: HashMap::new(),
        }
    }

    /// Pieces revealed so far, all peers together.
    pub(crate) fn revealed_total(&self) -> u64 {
        self.revealed_total
    }

    /// Whether `peer` is one we super-seed to.
    pub(crate) fn serves(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// Starts super-seeding to `peer` (it was shown no piece).
    pub(crate) fn add_peer(&mut self, peer: PeerId) {
        self.peers.entry(peer).or_default();
    }

    /// `peer` left: its shown pieces are free for others.
    pub(crate) fn peer_gone(&mut self, peer: PeerId) {
        if let Some(shown) = self.peers.remove(&peer) {
            for s in shown {
                self.unshow(s.piece);
            }
        }
    }

    fn unshow(&mut self, piece: u32) {
        if let Some(c) = self.showing.get_mut(piece as usize) {
            *c = c.saturating_sub(1);
        }
    }

    /// `from` announced `piece`. Returns the peers (possibly `from`) that
    /// are owed a new piece now.
    pub(crate) fn announced(&mut self, from: PeerId, piece: u32, now: Instant) -> Vec<PeerId> {
        let mut owed = Vec::new();
        let mut settled = 0;
        for (&id, shown) in self.peers.iter_mut() {
            if id == from {
                for s in shown.iter_mut().filter(|s| s.piece == piece) {
                    s.held_since.get_or_insert(now);
                }
                continue;
            }
            let before = shown.len();
            shown.retain(|s| s.piece != piece);
            if shown.len() != before {
                settled += before - shown.len();
                owed.push(id);
            }
        }
        for _ in 0..settled {
            self.unshow(piece);
        }
        owed
    }

    /// Peers holding every piece they were shown (at least one) for
    /// [`FORWARD_WAIT`]: the oldest of theirs is settled and they are owed
    /// one more.
    pub(crate) fn stale(&mut self, now: Instant) -> Vec<PeerId> {
        let mut owed = Vec::new();
        let mut freed = Vec::new();
        for (&id, shown) in self.peers.iter_mut() {
            let all_held = !shown.is_empty()
                && shown.iter().all(|s| {
                    s.held_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= FORWARD_WAIT)
                });
            if all_held {
                freed.push(shown.remove(0).piece);
                owed.push(id);
            }
        }
        for p in freed {
            self.unshow(p);
        }
        owed
    }

    /// Tops `peer` up to [`SLOTS`] shown pieces. `has(i)`: the peer has
    /// piece `i` (a shown piece it has from elsewhere is replaced, one it
    /// announced after we showed it stays, see the module docs);
    /// `avail(i)`: peers known to have piece `i`. Returns the pieces to
    /// reveal to it now (send HAVE for each).
    pub(crate) fn refill(
        &mut self,
        peer: PeerId,
        has: impl Fn(u32) -> bool,
        avail: impl Fn(u32) -> u32,
        rng: &mut impl Rng,
    ) -> Vec<u32> {
        let Some(shown) = self.peers.get_mut(&peer) else {
            return Vec::new();
        };
        let mut freed = Vec::new();
        shown.retain(|s| {
            let keep = s.held_since.is_some() || !has(s.piece);
            if !keep {
                freed.push(s.piece);
            }
            keep
        });
        let mut current: Vec<u32> = shown.iter().map(|s| s.piece).collect();
        for p in freed {
            self.unshow(p);
        }
        let n = self.showing.len();
        let mut out = Vec::new();
        while current.len() < SLOTS && n > 0 {
            // Start the scan at a random piece: ties go to a random one.
            let start = rng.random_range(0..n);
            let mut best: Option<(u64, u32)> = None;
            for k in 0..n {
                let i = ((start + k) % n) as u32;
                if has(i) || current.contains(&i) {
                    continue;
                }
                // A piece shown to someone now counts as very common.
                let score = u64::from(avail(i)) + 1000 * u64::from(self.showing[i as usize]);
                if best.is_none_or(|(s, _)| score < s) {
                    best = Some((score, i));
                    if score == 0 {
                        break;
                    }
                }
            }
            let Some((_, piece)) = best else { break };
            current.push(piece);
            self.showing[piece as usize] = self.showing[piece as usize].saturating_add(1);
            self.revealed_total += 1;
            out.push(piece);
        }
        if let Some(shown) = self.peers.get_mut(&peer) {
            shown.extend(out.iter().map(|&piece| Shown {
                piece,
                held_since: None,
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    #[test]
    fn each_peer_is_shown_different_pieces_nobody_has() {
        let mut s = SuperSeed::new(8);
        let mut r = rng();
        let mut seen = Vec::new();
        for p in 0..4 {
            s.add_peer(PeerId(p));
            let got = s.refill(PeerId(p), |_| false, |_| 0, &mut r);
            assert_eq!(got.len(), SLOTS);
            seen.extend(got);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 8, "no piece shown twice while others remain");
        assert_eq!(s.revealed_total(), 8);
    }

    #[test]
    fn rarest_piece_first_and_never_one_the_peer_has() {
        let mut s = SuperSeed::new(5);
        s.add_peer(PeerId(1));
        let avail = |i: u32| [3, 2, 0, 1, 0][i as usize];
        let has = |i: u32| i == 4;
        let got = s.refill(PeerId(1), has, avail, &mut rng());
        assert_eq!(got, vec![2, 3]);
    }

    #[test]
    fn next_piece_only_once_another_peer_announces_it() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new(16);
        let mut r = rng();
        s.add_peer(PeerId(1));
        s.add_peer(PeerId(2));
        let shown = s.refill(PeerId(1), |_| false, |_| 0, &mut r);
        let p = shown[0];
        // The peer itself completing it settles nothing.
        assert!(s.announced(PeerId(1), p, t0).is_empty());
        assert!(
            s.refill(PeerId(1), |i| i == p, |_| 0, &mut r).is_empty(),
            "still two shown"
        );
        // Another peer announcing it: peer 1 forwarded it.
        assert_eq!(s.announced(PeerId(2), p, t0), vec![PeerId(1)]);
        let next = s.refill(PeerId(1), |i| i == p, |_| 1, &mut r);
        assert_eq!(next.len(), 1);
        assert!(!shown.contains(&next[0]));
    }

    #[test]
    fn a_peer_with_nobody_to_forward_to_is_served_after_the_wait() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new(4);
        let mut r = rng();
        s.add_peer(PeerId(1));
        let shown = s.refill(PeerId(1), |_| false, |_| 0, &mut r);
        s.announced(PeerId(1), shown[0], t0);
        assert!(s.stale(t0 + FORWARD_WAIT).is_empty(), "one still missing");
        s.announced(PeerId(1), shown[1], t0 + Duration::from_secs(1));
        assert!(s.stale(t0 + FORWARD_WAIT).is_empty());
        let owed = s.stale(t0 + FORWARD_WAIT + Duration::from_secs(1));
        assert_eq!(owed, vec![PeerId(1)]);
        let has = |i: u32| shown.contains(&i);
        assert_eq!(s.refill(PeerId(1), has, |_| 1, &mut r).len(), 1);
    }

    #[test]
    fn a_shown_piece_the_peer_already_had_is_replaced() {
        let mut s = SuperSeed::new(4);
        let mut r = rng();
        s.add_peer(PeerId(1));
        let shown = s.refill(PeerId(1), |_| false, |_| 0, &mut r);
        // Its bitfield arrives late: it had the first one all along.
        let had = shown[0];
        let again = s.refill(PeerId(1), |i| i == had, |_| 0, &mut r);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0], had);
        assert_ne!(again[0], shown[1]);
    }

    #[test]
    fn a_peer_that_has_everything_is_shown_nothing_and_gone_frees_its_pieces() {
        let mut s = SuperSeed::new(3);
        let mut r = rng();
        s.add_peer(PeerId(1));
        assert!(s.refill(PeerId(1), |_| true, |_| 0, &mut r).is_empty());
        s.add_peer(PeerId(2));
        let shown = s.refill(PeerId(2), |_| false, |_| 0, &mut r);
        s.peer_gone(PeerId(2));
        assert!(s.showing.iter().all(|&c| c == 0), "{shown:?} freed");
        assert!(!s.serves(PeerId(2)));
        assert!(s.refill(PeerId(9), |_| false, |_| 0, &mut r).is_empty());
    }
}

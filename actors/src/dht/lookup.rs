//! One iterative lookup (Kademlia's node lookup, BEP 5's `find_node` and
//! `get_peers` traversals) as a plain state machine fed with replies.
//!
//! The lookup keeps the candidates it knows sorted by distance to the
//! target and queries the closest ones it has not asked yet, at most
//! `alpha` (3) at a time. Each answer brings closer nodes, which join the
//! candidates; a timeout marks a node failed, and the next candidate takes
//! its place. The lookup is done when the `k` (8) closest candidates that
//! have not failed have all answered: nothing closer is left to ask. For
//! `get_peers` it collects the peers (`values`) on the way and the token of
//! each answering node, so that the caller can `announce_peer` to the `k`
//! closest.
//!
//! It owns no sockets, transaction ids or clocks: the caller takes queries
//! from [`Lookup::next_query`], sends them, and reports each answer
//! ([`Lookup::on_response`]) or timeout ([`Lookup::on_failure`]) by
//! address.
//!
//! Bounds: `max_candidates` candidates kept (the farthest are dropped),
//! `max_queries` queries per lookup, `max_peers` peers collected; a node
//! listed twice, our own id, and unusable addresses are skipped, so a node
//! that answers with itself or with the same nodes again adds nothing.

use std::collections::HashSet;
use std::net::SocketAddrV4;

use protocol::krpc::CompactNode;

use super::id::NodeId;
use super::routing::usable;

/// Tunables of a lookup (part of [`super::DhtConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupConfig {
    /// Queries in flight at once. Kademlia and BEP 5: 3.
    pub alpha: usize,
    /// The lookup converges on this many closest nodes. BEP 5: 8.
    pub k: usize,
    /// Candidates kept.
    pub max_candidates: usize,
    /// Queries sent at most.
    pub max_queries: usize,
    /// Peers collected at most.
    pub max_peers: usize,
}

/// The defaults are [`super::DhtConfig`]'s, kept in one place.
impl Default for LookupConfig {
    fn default() -> Self {
        super::DhtConfig::default().lookup()
    }
}

/// Which traversal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LookupKind {
    /// `find_node`: nodes only.
    FindNode,
    /// `get_peers`: peers and tokens too.
    GetPeers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Fresh,
    InFlight,
    Responded,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    id: NodeId,
    addr: SocketAddrV4,
    state: State,
    /// Hops from our routing table: seeds are 1.
    depth: u32,
    token: Option<Vec<u8>>,
}

/// A query the caller should send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextQuery {
    /// Where.
    pub addr: SocketAddrV4,
    /// The id we expect to answer; `None` for a bootstrap address.
    pub id: Option<NodeId>,
}

/// A node that answered, with the token it gave (`get_peers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddrV4,
    /// The token for `announce_peer`.
    pub token: Option<Vec<u8>>,
}

/// What a lookup found and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookupSummary {
    /// Every distinct peer collected.
    pub peers: Vec<SocketAddrV4>,
    /// The closest nodes that answered (at most `k`), closest first.
    pub closest: Vec<Answered>,
    /// Queries sent.
    pub queries: u32,
    /// Answers received.
    pub responses: u32,
    /// Queries that timed out.
    pub failures: u32,
    /// Hops: the longest chain of answers that led to a node in `closest`
    /// (1 if only the starting nodes were asked).
    pub rounds: u32,
}

/// One lookup.
#[derive(Clone, Debug)]
pub struct Lookup {
    own: NodeId,
    target: NodeId,
    kind: LookupKind,
    config: LookupConfig,
    /// Sorted by distance to `target`, closest first.
    candidates: Vec<Candidate>,
    /// Bootstrap addresses whose id we do not know, still to ask.
    unknown: Vec<SocketAddrV4>,
    /// Bootstrap addresses asked and not yet answered.
    unknown_in_flight: Vec<SocketAddrV4>,
    /// Every address ever made a candidate: never added twice.
    seen: HashSet<SocketAddrV4>,
    in_flight: usize,
    peers: Vec<SocketAddrV4>,
    peer_set: HashSet<SocketAddrV4>,
    queries: u32,
    responses: u32,
    failures: u32,
}

impl Lookup {
    /// A lookup of `target` starting from `seeds` (nodes of our routing
    /// table or a saved one) and `bootstrap` addresses of unknown id.
    pub fn new(
        own: NodeId,
        target: NodeId,
        kind: LookupKind,
        config: LookupConfig,
        seeds: impl IntoIterator<Item = (NodeId, SocketAddrV4)>,
        bootstrap: impl IntoIterator<Item = SocketAddrV4>,
    ) -> Lookup {
        let config = LookupConfig {
            alpha: config.alpha.max(1),
            k: config.k.max(1),
            max_candidates: config.max_candidates.max(config.k.max(1)),
            ..config
        };
        let mut l = Lookup {
            own,
            target,
            kind,
            config,
            candidates: Vec::new(),
            unknown: Vec::new(),
            unknown_in_flight: Vec::new(),
            seen: HashSet::new(),
            in_flight: 0,
            peers: Vec::new(),
            peer_set: HashSet::new(),
            queries: 0,
            responses: 0,
            failures: 0,
        };
        for (id, addr) in seeds {
            l.add_candidate(id, addr, 1);
        }
        for addr in bootstrap {
            if usable(&addr) && l.unknown.len() < config.max_candidates && l.seen.insert(addr) {
                l.unknown.push(addr);
            }
        }
        l
    }

    /// Adds a bootstrap address of unknown id (one resolved late).
    pub fn add_bootstrap(&mut self, addr: SocketAddrV4) {
        if usable(&addr)
            && self.unknown.len() < self.config.max_candidates
            && self.seen.insert(addr)
        {
            self.unknown.push(addr);
        }
    }

    /// The target.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// The traversal.
    pub fn kind(&self) -> LookupKind {
        self.kind
    }

    /// Queries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn add_candidate(&mut self, id: NodeId, addr: SocketAddrV4, depth: u32) {
        if id == self.own || !usable(&addr) || self.seen.contains(&addr) {
            return;
        }
        let d = id.distance(&self.target);
        let pos = match self
            .candidates
            .binary_search_by(|c| c.id.distance(&self.target).cmp(&d))
        {
            // The same id at another address: keep the first.
            Ok(_) => return,
            Err(pos) => pos,
        };
        if pos >= self.config.max_candidates {
            return;
        }
        self.seen.insert(addr);
        self.candidates.insert(
            pos,
            Candidate {
                id,
                addr,
                state: State::Fresh,
                depth,
                token: None,
            },
        );
        if self.candidates.len() > self.config.max_candidates {
            if let Some(dropped) = self.candidates.pop() {
                if dropped.state == State::InFlight {
                    // Its answer will find no candidate and be ignored.
                    self.in_flight -= 1;
                }
            }
        }
    }

    /// The next query to send, if the lookup wants one now (fewer than
    /// `alpha` in flight and an unasked candidate among the `k` closest
    /// that have not failed). The query counts as in flight from here.
    pub fn next_query(&mut self) -> Option<NextQuery> {
        if self.in_flight >= self.config.alpha || self.queries as usize >= self.config.max_queries {
            return None;
        }
        if let Some(addr) = self.unknown.pop() {
            self.unknown_in_flight.push(addr);
            self.in_flight += 1;
            self.queries += 1;
            return Some(NextQuery { addr, id: None });
        }
        let k = self.config.k;
        let c = self
            .candidates
            .iter_mut()
            .filter(|c| c.state != State::Failed)
            .take(k)
            .find(|c| c.state == State::Fresh)?;
        c.state = State::InFlight;
        self.in_flight += 1;
        self.queries += 1;
        Some(NextQuery {
            addr: c.addr,
            id: Some(c.id),
        })
    }

    /// Whether the lookup has nothing more to do.
    pub fn is_done(&self) -> bool {
        if self.in_flight > 0 {
            return false;
        }
        if self.queries as usize >= self.config.max_queries {
            return true;
        }
        self.unknown.is_empty()
            && !self
                .candidates
                .iter()
                .filter(|c| c.state != State::Failed)
                .take(self.config.k)
                .any(|c| c.state == State::Fresh)
    }

    /// The node at `addr` answered as `id`, with `nodes`, `values` and a
    /// `token`. Returns the peers not seen before in this lookup. An answer
    /// from an address the lookup is not waiting for changes nothing.
    pub fn on_response(
        &mut self,
        addr: SocketAddrV4,
        id: NodeId,
        nodes: &[CompactNode],
        values: &[SocketAddrV4],
        token: Option<&[u8]>,
    ) -> Vec<SocketAddrV4> {
        let depth;
        if let Some(pos) = self.unknown_in_flight.iter().position(|a| *a == addr) {
            self.unknown_in_flight.swap_remove(pos);
            self.in_flight -= 1;
            self.responses += 1;
            depth = 1;
            // A bootstrap node becomes a candidate that has answered (if it
            // is close enough to be kept at all).
            self.seen.remove(&addr);
            self.add_candidate(id, addr, 1);
            if let Some(c) = self.candidates.iter_mut().find(|c| c.addr == addr) {
                c.state = State::Responded;
                c.token = token.map(<[u8]>::to_vec);
            }
        } else {
            let Some(c) = self
                .candidates
                .iter_mut()
                .find(|c| c.addr == addr && c.state == State::InFlight)
            else {
                return Vec::new();
            };
            self.in_flight -= 1;
            if c.id != id {
                // It is not the node the list promised: its nodes are not
                // trusted to be close, and the slot goes to another.
                c.state = State::Failed;
                self.failures += 1;
                return Vec::new();
            }
            c.state = State::Responded;
            c.token = token.map(<[u8]>::to_vec);
            depth = c.depth;
            self.responses += 1;
        }
        for n in nodes {
            self.add_candidate(NodeId(n.id), n.addr, depth + 1);
        }
        let mut new = Vec::new();
        if self.kind == LookupKind::GetPeers {
            for p in values {
                if self.peers.len() >= self.config.max_peers {
                    break;
                }
                if p.port() != 0 && self.peer_set.insert(*p) {
                    self.peers.push(*p);
                    new.push(*p);
                }
            }
        }
        new
    }

    /// The query to `addr` timed out (or was answered with an error).
    pub fn on_failure(&mut self, addr: SocketAddrV4) {
        if let Some(pos) = self.unknown_in_flight.iter().position(|a| *a == addr) {
            self.unknown_in_flight.swap_remove(pos);
            self.in_flight -= 1;
            self.failures += 1;
            return;
        }
        if let Some(c) = self
            .candidates
            .iter_mut()
            .find(|c| c.addr == addr && c.state == State::InFlight)
        {
            c.state = State::Failed;
            self.in_flight -= 1;
            self.failures += 1;
        }
    }

    /// What the lookup found so far.
    pub fn summary(&self) -> LookupSummary {
        let closest: Vec<&Candidate> = self
            .candidates
            .iter()
            .filter(|c| c.state == State::Responded)
            .take(self.config.k)
            .collect();
        LookupSummary {
            peers: self.peers.clone(),
            rounds: closest.iter().map(|c| c.depth).max().unwrap_or(0),
            closest: closest
                .into_iter()
                .map(|c| Answered {
                    id: c.id,
                    addr: c.addr,
                    token: c.token.clone(),
                })
                .collect(),
            queries: self.queries,
            responses: self.responses,
            failures: self.failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    /// A simulated DHT: every node knows every other node; asked about a
    /// target, it returns the 8 closest it knows.
    struct Net {
        nodes: Vec<(NodeId, SocketAddrV4)>,
        by_addr: HashMap<SocketAddrV4, NodeId>,
    }

    impl Net {
        fn new(n: usize, rng: &mut SmallRng) -> Net {
            let nodes: Vec<_> = (0..n)
                .map(|i| {
                    (
                        NodeId::random(rng),
                        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10_000 + i as u16),
                    )
                })
                .collect();
            let by_addr = nodes.iter().map(|(id, a)| (*a, *id)).collect();
            Net { nodes, by_addr }
        }

        fn closest(&self, target: &NodeId, n: usize) -> Vec<CompactNode> {
            let mut v = self.nodes.clone();
            v.sort_by_key(|(id, _)| id.distance(target));
            v.into_iter()
                .take(n)
                .map(|(id, addr)| CompactNode { id: id.0, addr })
                .collect()
        }
    }

    fn drive(l: &mut Lookup, net: &Net, answer: impl Fn(SocketAddrV4) -> bool) {
        drive_with(l, net, answer, |net, target| net.closest(target, 8));
    }

    fn drive_with(
        l: &mut Lookup,
        net: &Net,
        answer: impl Fn(SocketAddrV4) -> bool,
        nodes_for: impl Fn(&Net, &NodeId) -> Vec<CompactNode>,
    ) {
        let mut outstanding = Vec::new();
        for _ in 0..10_000 {
            while let Some(q) = l.next_query() {
                outstanding.push(q.addr);
            }
            assert!(l.in_flight() <= 3);
            let Some(addr) = outstanding.pop() else {
                break;
            };
            if answer(addr) {
                let id = net.by_addr[&addr];
                let nodes = nodes_for(net, &l.target());
                l.on_response(addr, id, &nodes, &[], Some(b"tok"));
            } else {
                l.on_failure(addr);
            }
        }
        assert!(l.is_done());
    }

    #[test]
    fn converges_on_the_true_closest_nodes() {
        let mut rng = SmallRng::seed_from_u64(1);
        let net = Net::new(500, &mut rng);
        for _ in 0..20 {
            let target = NodeId::random(&mut rng);
            // Start from 8 random nodes, as a sparse routing table would.
            let seeds: Vec<_> = (0..8)
                .map(|_| net.nodes[rng.random_range(0..net.nodes.len())])
                .collect();
            let mut l = Lookup::new(
                NodeId::random(&mut rng),
                target,
                LookupKind::GetPeers,
                LookupConfig::default(),
                seeds,
                [],
            );
            drive(&mut l, &net, |_| true);
            let s = l.summary();
            let truth: Vec<_> = net.closest(&target, 8).iter().map(|n| n.addr).collect();
            let found: Vec<_> = s.closest.iter().map(|a| a.addr).collect();
            assert_eq!(found, truth);
            assert!(s.closest.iter().all(|a| a.token.as_deref() == Some(b"tok")));
            assert!(s.rounds >= 1);
            assert!(s.queries as usize <= LookupConfig::default().max_queries);
        }
    }

    #[test]
    fn timeouts_are_routed_around() {
        let mut rng = SmallRng::seed_from_u64(2);
        let net = Net::new(300, &mut rng);
        let target = NodeId::random(&mut rng);
        // A third of the nodes never answer.
        let dead: HashSet<SocketAddrV4> = net.nodes.iter().step_by(3).map(|n| n.1).collect();
        let seeds: Vec<_> = net.nodes.iter().take(16).copied().collect();
        let mut l = Lookup::new(
            NodeId::random(&mut rng),
            target,
            LookupKind::FindNode,
            LookupConfig::default(),
            seeds,
            [],
        );
        // Answers list the 8 closest live nodes and the 4 closest dead
        // ones, which the lookup has to try and route around.
        let answer = |net: &Net, target: &NodeId| {
            let all = net.closest(target, 300);
            let live = all.iter().filter(|n| !dead.contains(&n.addr)).take(8);
            let gone = all.iter().filter(|n| dead.contains(&n.addr)).take(4);
            live.chain(gone).copied().collect()
        };
        drive_with(&mut l, &net, |a| !dead.contains(&a), answer);
        let s = l.summary();
        let truth: Vec<_> = net
            .closest(&target, 300)
            .into_iter()
            .filter(|n| !dead.contains(&n.addr))
            .take(8)
            .map(|n| n.addr)
            .collect();
        let found: Vec<_> = s.closest.iter().map(|a| a.addr).collect();
        assert_eq!(found, truth);
        assert!(s.failures > 0);
    }

    #[test]
    fn bootstrap_addresses_of_unknown_id_seed_the_lookup() {
        let mut rng = SmallRng::seed_from_u64(3);
        let net = Net::new(100, &mut rng);
        let target = NodeId::random(&mut rng);
        let mut l = Lookup::new(
            NodeId::random(&mut rng),
            target,
            LookupKind::FindNode,
            LookupConfig::default(),
            [],
            [net.nodes[0].1],
        );
        let q = l.next_query().unwrap();
        assert_eq!(q.id, None);
        let nodes = net.closest(&target, 8);
        l.on_response(q.addr, net.nodes[0].0, &nodes, &[], None);
        drive(&mut l, &net, |_| true);
        let truth: Vec<_> = net.closest(&target, 8).iter().map(|n| n.addr).collect();
        let found: Vec<_> = l.summary().closest.iter().map(|a| a.addr).collect();
        assert_eq!(found, truth);
    }

    #[test]
    fn liars_self_referrals_and_strangers_add_nothing() {
        let own = NodeId([0; 20]);
        let target = NodeId([0xff; 20]);
        let a = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1000);
        let mut l = Lookup::new(
            own,
            target,
            LookupKind::GetPeers,
            LookupConfig::default(),
            [(NodeId([1; 20]), a)],
            [],
        );
        let q = l.next_query().unwrap();
        assert_eq!(q.addr, a);
        // An answer from an address we never asked changes nothing.
        let stranger = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2000);
        let peer = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3000);
        assert!(
            l.on_response(stranger, NodeId([2; 20]), &[], &[peer], None)
                .is_empty()
        );
        assert_eq!(l.in_flight(), 1);
        // It answers with itself, with us, and with port 0: nothing new.
        let nodes = [
            CompactNode {
                id: [1; 20],
                addr: a,
            },
            CompactNode {
                id: own.0,
                addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4000),
            },
            CompactNode {
                id: [5; 20],
                addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            },
        ];
        let got = l.on_response(a, NodeId([1; 20]), &nodes, &[peer, peer], None);
        assert_eq!(got, vec![peer], "duplicate peers collapse");
        assert!(l.next_query().is_none());
        assert!(l.is_done());
        assert_eq!(l.summary().peers, vec![peer]);

        // A node answering under another id than promised is a failure.
        let b = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1001);
        let mut l = Lookup::new(
            own,
            target,
            LookupKind::FindNode,
            LookupConfig::default(),
            [(NodeId([1; 20]), b)],
            [],
        );
        l.next_query().unwrap();
        let more = [CompactNode {
            id: [9; 20],
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5),
        }];
        l.on_response(b, NodeId([7; 20]), &more, &[], None);
        assert!(l.is_done(), "the liar's nodes were not taken");
        assert_eq!(l.summary().failures, 1);
    }

    #[test]
    fn candidates_and_queries_are_bounded() {
        let mut rng = SmallRng::seed_from_u64(4);
        let config = LookupConfig {
            max_candidates: 20,
            max_queries: 10,
            ..LookupConfig::default()
        };
        let target = NodeId::random(&mut rng);
        let seeds: Vec<_> = (0..100u16)
            .map(|i| {
                (
                    NodeId::random(&mut rng),
                    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1000 + i),
                )
            })
            .collect();
        let mut l = Lookup::new(
            NodeId::random(&mut rng),
            target,
            LookupKind::FindNode,
            config,
            seeds,
            [],
        );
        assert_eq!(l.candidates.len(), 20);
        let mut sent = 0;
        for _ in 0..100 {
            while let Some(q) = l.next_query() {
                sent += 1;
                l.on_failure(q.addr);
            }
        }
        assert_eq!(sent, 10);
        assert!(l.is_done());
    }
}

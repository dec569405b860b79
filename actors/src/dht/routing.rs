//! The routing table of BEP 5: k-buckets of the nodes we know, with their
//! liveness, and a replacement cache per bucket. A plain struct; time is
//! passed in.
//!
//! Layout (as libtorrent's): bucket `i` of `n` holds the nodes whose id
//! shares exactly `i` leading bits with ours; the last bucket holds every
//! node sharing `n - 1` bits or more, so it is the one that contains our own
//! id. Only that bucket is split when full (BEP 5), which is what keeps the
//! table's size logarithmic in the size of the DHT: we know many nodes close
//! to us and few far away.
//!
//! Liveness (BEP 5): a node is **good** if it answered one of our queries in
//! the last `good_for` (15 minutes), or has answered one ever and sent us a
//! query in the last `good_for`; **bad** after `max_failures` queries in a
//! row went unanswered; **questionable** otherwise. A full bucket takes a
//! new node only in place of a bad one; otherwise the newcomer waits in the
//! bucket's replacement cache and the table asks for a ping of the bucket's
//! least recently seen questionable node, whose failure (reported through
//! [`RoutingTable::on_failure`]) makes room.
//!
//! Only nodes that answered a query of ours enter a bucket (a query can come
//! from a spoofed address; a response to our random transaction id cannot,
//! short of an on-path attacker). Nodes that only queried us go to the
//! replacement cache, and [`RoutingTable::wants`] tells the caller whether
//! pinging one to verify it would be worth it.
//!
//! Bounds: `bucket_size` nodes per bucket, `max_nodes` in all buckets
//! together, `replacement_cache` per bucket, 160 buckets at most, and
//! `max_nodes_per_ip` nodes (in buckets and caches) per IPv4 address:
//! libtorrent's default of one per address stops one host from filling a
//! table; tests that run many nodes on 127.0.0.1 raise it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::Rng;

use super::id::NodeId;

/// The routing table's tunables (part of [`super::DhtConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    /// k: nodes per bucket. BEP 5: 8.
    pub bucket_size: usize,
    /// Nodes waiting for a place, per bucket.
    pub replacement_cache: usize,
    /// Nodes in all buckets together.
    pub max_nodes: usize,
    /// Nodes per IPv4 address (buckets and caches).
    pub max_nodes_per_ip: usize,
    /// Unanswered queries in a row that make a node bad.
    pub max_failures: u8,
    /// How long an answer keeps a node good. BEP 5: 15 minutes.
    pub good_for: Duration,
    /// A bucket unchanged this long is refreshed. BEP 5: 15 minutes.
    pub refresh_interval: Duration,
}

/// The defaults are [`super::DhtConfig`]'s, kept in one place.
impl Default for RoutingConfig {
    fn default() -> Self {
        super::DhtConfig::default().routing()
    }
}

/// BEP 5 liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Answered recently (or answered once and queried us recently).
    Good,
    /// Not heard from in a while, or never answered.
    Questionable,
    /// Failed to answer `max_failures` queries in a row.
    Bad,
}

/// How we heard from a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// It answered one of our queries.
    Response,
    /// It sent us a query.
    Query,
}

/// What [`RoutingTable::heard_from`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The node is new in a bucket.
    Inserted,
    /// The node was in a bucket; its liveness was updated.
    Updated,
    /// The node waits in a replacement cache. If `ping` is set, pinging
    /// that node (the bucket's stalest questionable one) decides whether
    /// it stays.
    Cached {
        /// The node to ping, if one is worth pinging.
        ping: Option<SocketAddrV4>,
    },
    /// Not taken: our own id, an unusable address, the per-address limit,
    /// or another node's address.
    Rejected,
}

/// One known node.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    /// Its id.
    pub id: NodeId,
    /// Its UDP address.
    pub addr: SocketAddrV4,
    /// When it last answered a query of ours.
    last_response: Option<Instant>,
    /// When it last sent us a query.
    last_query: Option<Instant>,
    /// When we last pinged it to check liveness.
    last_ping: Option<Instant>,
    /// Our queries it failed to answer in a row.
    failures: u8,
}

impl NodeEntry {
    fn new(id: NodeId, addr: SocketAddrV4) -> NodeEntry {
        NodeEntry {
            id,
            addr,
            last_response: None,
            last_query: None,
            last_ping: None,
            failures: 0,
        }
    }

    fn touch(&mut self, contact: Contact, now: Instant) {
        match contact {
            Contact::Response => {
                self.last_response = Some(now);
                self.failures = 0;
            }
            Contact::Query => self.last_query = Some(now),
        }
    }

    /// The node's BEP 5 liveness at `now`.
    pub fn liveness(&self, now: Instant, config: &RoutingConfig) -> Liveness {
        if self.failures >= config.max_failures {
            return Liveness::Bad;
        }
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < config.good_for);
        if recent(self.last_response) || (self.last_response.is_some() && recent(self.last_query)) {
            Liveness::Good
        } else {
            Liveness::Questionable
        }
    }

    /// When we last heard from it at all.
    fn last_seen(&self) -> Option<Instant> {
        self.last_response.max(self.last_query)
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    nodes: Vec<NodeEntry>,
    replacements: Vec<NodeEntry>,
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            nodes: Vec::new(),
            replacements: Vec::new(),
            last_changed: now,
        }
    }
}

/// The routing table.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    own: NodeId,
    config: RoutingConfig,
    buckets: Vec<Bucket>,
    /// Nodes in buckets (not caches).
    len: usize,
    /// Entries (buckets and caches) per address.
    per_ip: HashMap<Ipv4Addr, usize>,
}

/// Whether a node at `addr` may be contacted at all: a real port, and not
/// an unspecified, broadcast or multicast address (which a hostile `nodes`
/// list could use to make us send to many hosts at once).
pub fn usable(addr: &SocketAddrV4) -> bool {
    let ip = addr.ip();
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast()
}

impl RoutingTable {
    /// An empty table around our id `own`.
    pub fn new(own: NodeId, config: RoutingConfig, now: Instant) -> RoutingTable {
        RoutingTable {
            own,
            config: RoutingConfig {
                bucket_size: config.bucket_size.max(1),
                max_nodes_per_ip: config.max_nodes_per_ip.max(1),
                max_failures: config.max_failures.max(1),
                ..config
            },
            buckets: vec![Bucket::new(now)],
            len: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Our id.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// The configuration in use (zeros raised to one).
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// Nodes in buckets.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bucket holds a node.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Nodes waiting in replacement caches.
    pub fn cached_len(&self) -> usize {
        self.buckets.iter().map(|b| b.replacements.len()).sum()
    }

    /// Buckets.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// The largest bucket (never above `bucket_size`).
    pub fn largest_bucket(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| b.nodes.len())
            .max()
            .unwrap_or(0)
    }

    /// Nodes per liveness: (good, questionable, bad).
    pub fn liveness_counts(&self, now: Instant) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for n in self.buckets.iter().flat_map(|b| &b.nodes) {
            match n.liveness(now, &self.config) {
                Liveness::Good => c.0 += 1,
                Liveness::Questionable => c.1 += 1,
                Liveness::Bad => c.2 += 1,
            }
        }
        c
    }

    fn index(&self, id: &NodeId) -> usize {
        self.own.common_prefix_len(id).min(self.buckets.len() - 1)
    }

    /// The node with this id, if it is in a bucket.
    pub fn get(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.buckets[self.index(id)]
            .nodes
            .iter()
            .find(|n| n.id == *id)
    }

    /// Every node in the buckets.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.buckets.iter().flat_map(|b| &b.nodes)
    }

    /// Records that we heard from `id` at `addr`. See the module docs for
    /// what goes where.
    pub fn heard_from(
        &mut self,
        id: NodeId,
        addr: SocketAddrV4,
        contact: Contact,
        now: Instant,
    ) -> Outcome {
        if id == self.own || !usable(&addr) {
            return Outcome::Rejected;
        }
        loop {
            let i = self.index(&id);
            let config = self.config;
            let bucket = &mut self.buckets[i];
            if let Some(n) = bucket.nodes.iter_mut().find(|n| n.id == id) {
                if n.addr != addr {
                    // The same id from elsewhere: keep the node we know
                    // unless it stopped answering (it may have moved).
                    if n.liveness(now, &config) != Liveness::Bad || contact != Contact::Response {
                        return Outcome::Rejected;
                    }
                    let old = n.addr;
                    n.addr = addr;
                    n.failures = 0;
                    Self::ip_moved(&mut self.per_ip, old, addr);
                }
                n.touch(contact, now);
                if contact == Contact::Response {
                    bucket.last_changed = now;
                }
                return Outcome::Updated;
            }
            if let Some(pos) = bucket.replacements.iter().position(|n| n.id == id) {
                if bucket.replacements[pos].addr != addr {
                    return Outcome::Rejected;
                }
                if contact == Contact::Query {
                    bucket.replacements[pos].touch(contact, now);
                    return Outcome::Cached { ping: None };
                }
                // A cached node answered: it is verified now and may take a
                // place; take it out of the cache and insert it below.
                let n = bucket.replacements.remove(pos);
                Self::ip_released(&mut self.per_ip, n.addr);
            }
            if self.addr_taken(&addr) {
                return Outcome::Rejected;
            }
            if self.per_ip.get(addr.ip()).copied().unwrap_or(0) >= config.max_nodes_per_ip {
                return Outcome::Rejected;
            }
            let last = self.buckets.len() - 1;
            let bucket = &mut self.buckets[i];
            if contact == Contact::Response {
                if bucket.nodes.len() < config.bucket_size && self.len < config.max_nodes {
                    let mut n = NodeEntry::new(id, addr);
                    n.touch(contact, now);
                    bucket.nodes.push(n);
                    bucket.last_changed = now;
                    self.len += 1;
                    *self.per_ip.entry(*addr.ip()).or_default() += 1;
                    return Outcome::Inserted;
                }
                if let Some(bad) = bucket
                    .nodes
                    .iter()
                    .position(|n| n.liveness(now, &config) == Liveness::Bad)
                {
                    let old = std::mem::replace(&mut bucket.nodes[bad], NodeEntry::new(id, addr));
                    bucket.nodes[bad].touch(contact, now);
                    bucket.last_changed = now;
                    Self::ip_moved(&mut self.per_ip, old.addr, addr);
                    return Outcome::Inserted;
                }
                if i == last && bucket.nodes.len() >= config.bucket_size && self.split(now) {
                    continue;
                }
            }
            return self.cache(i, NodeEntry::new(id, addr), contact, now);
        }
    }

    /// Puts a node in bucket `i`'s replacement cache (newest last; the
    /// oldest is dropped when full) and names a node worth pinging.
    fn cache(&mut self, i: usize, mut entry: NodeEntry, contact: Contact, now: Instant) -> Outcome {
        let config = self.config;
        if config.replacement_cache == 0 {
            return Outcome::Rejected;
        }
        entry.touch(contact, now);
        let bucket = &mut self.buckets[i];
        if bucket.replacements.len() >= config.replacement_cache {
            // Prefer dropping a node that never answered.
            let drop = bucket
                .replacements
                .iter()
                .position(|n| n.last_response.is_none())
                .unwrap_or(0);
            let old = bucket.replacements.remove(drop);
            Self::ip_released(&mut self.per_ip, old.addr);
        }
        *self.per_ip.entry(*entry.addr.ip()).or_default() += 1;
        let bucket = &mut self.buckets[i];
        bucket.replacements.push(entry);
        // Ping the stalest questionable node not pinged in the last
        // minute: if it fails, the cached node takes its place.
        let ping = bucket
            .nodes
            .iter_mut()
            .filter(|n| n.liveness(now, &config) == Liveness::Questionable)
            .filter(|n| {
                n.last_ping
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
            })
            .min_by_key(|n| n.last_seen())
            .map(|n| {
                n.last_ping = Some(now);
                n.addr
            });
        Outcome::Cached { ping }
    }

    /// Splits the last bucket (the one holding our id) in two. False if it
    /// cannot be split (160 buckets already).
    fn split(&mut self, now: Instant) -> bool {
        let depth = self.buckets.len() - 1;
        if depth + 1 >= 160 {
            return false;
        }
        let own = self.own;
        let last = &mut self.buckets[depth];
        let mut deeper = Bucket::new(now);
        let (stay, go): (Vec<_>, Vec<_>) = last
            .nodes
            .drain(..)
            .partition(|n| own.common_prefix_len(&n.id) == depth);
        last.nodes = stay;
        deeper.nodes = go;
        let (stay, go): (Vec<_>, Vec<_>) = last
            .replacements
            .drain(..)
            .partition(|n| own.common_prefix_len(&n.id) == depth);
        last.replacements = stay;
        deeper.replacements = go;
        self.buckets.push(deeper);
        true
    }

    fn addr_taken(&self, addr: &SocketAddrV4) -> bool {
        if !self.per_ip.contains_key(addr.ip()) {
            return false;
        }
        self.buckets
            .iter()
            .flat_map(|b| b.nodes.iter().chain(&b.replacements))
            .any(|n| n.addr == *addr)
    }

    fn ip_released(per_ip: &mut HashMap<Ipv4Addr, usize>, addr: SocketAddrV4) {
        if let Some(c) = per_ip.get_mut(addr.ip()) {
            *c -= 1;
            if *c == 0 {
                per_ip.remove(addr.ip());
            }
        }
    }

    fn ip_moved(per_ip: &mut HashMap<Ipv4Addr, usize>, old: SocketAddrV4, new: SocketAddrV4) {
        Self::ip_released(per_ip, old);
        *per_ip.entry(*new.ip()).or_default() += 1;
    }

    /// A query to the node `id` at `addr` went unanswered. A node that
    /// turns bad is replaced by the freshest cached node of its bucket
    /// (which then has to prove itself: it is questionable until it
    /// answers).
    pub fn on_failure(&mut self, id: &NodeId, addr: SocketAddrV4, now: Instant) {
        let i = self.index(id);
        let config = self.config;
        let bucket = &mut self.buckets[i];
        let Some(pos) = bucket
            .nodes
            .iter()
            .position(|n| n.id == *id && n.addr == addr)
        else {
            // A cached node that fails is dropped.
            if let Some(pos) = bucket
                .replacements
                .iter()
                .position(|n| n.id == *id && n.addr == addr)
            {
                let n = bucket.replacements.remove(pos);
                Self::ip_released(&mut self.per_ip, n.addr);
            }
            return;
        };
        let n = &mut bucket.nodes[pos];
        n.failures = n.failures.saturating_add(1);
        if n.liveness(now, &config) != Liveness::Bad || bucket.replacements.is_empty() {
            return;
        }
        // The freshest cached node that has answered us, else the newest.
        let pick = bucket
            .replacements
            .iter()
            .rposition(|r| r.last_response.is_some())
            .unwrap_or(bucket.replacements.len() - 1);
        let replacement = bucket.replacements.remove(pick);
        let old = std::mem::replace(&mut bucket.nodes[pos], replacement);
        bucket.last_changed = now;
        // The replacement's address was counted while it was cached.
        Self::ip_released(&mut self.per_ip, old.addr);
    }

    /// Whether a node with this id would get a place if it answered a
    /// ping: its bucket has room, can split, or holds a bad node.
    pub fn wants(&self, id: &NodeId, now: Instant) -> bool {
        if *id == self.own || self.get(id).is_some() {
            return false;
        }
        let i = self.index(id);
        let b = &self.buckets[i];
        (b.nodes.len() < self.config.bucket_size && self.len < self.config.max_nodes)
            || (i == self.buckets.len() - 1 && self.buckets.len() < 160)
            || b.nodes
                .iter()
                .any(|n| n.liveness(now, &self.config) == Liveness::Bad)
    }

    /// Up to `n` nodes closest to `target`, closest first, bad nodes left
    /// out.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<(NodeId, SocketAddrV4)> {
        let mut all: Vec<(super::id::Distance, NodeId, SocketAddrV4)> = self
            .nodes()
            .filter(|e| e.failures < self.config.max_failures)
            .map(|e| (e.id.distance(target), e.id, e.addr))
            .collect();
        if all.len() > n && n > 0 {
            all.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
            all.truncate(n);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.truncate(n);
        all.into_iter().map(|(_, id, addr)| (id, addr)).collect()
    }

    /// Random targets inside the buckets that have not changed for
    /// `refresh_interval`, at most `max`; each such bucket's timer is reset
    /// (BEP 5 refresh: a `find_node` for a random id in the bucket's range).
    pub fn refresh_targets(&mut self, now: Instant, max: usize, rng: &mut impl Rng) -> Vec<NodeId> {
        let mut out = Vec::new();
        for (i, b) in self.buckets.iter_mut().enumerate() {
            if out.len() >= max {
                break;
            }
            if now.duration_since(b.last_changed) >= self.config.refresh_interval {
                b.last_changed = now;
                // Sharing exactly `i` bits lands in bucket `i` (the last
                // bucket takes `i` bits and more).
                out.push(self.own.random_with_prefix(i, rng));
            }
        }
        out
    }

    /// The stalest questionable node not pinged for `min_gap`, marked as
    /// pinged: for the periodic liveness check.
    pub fn stalest_questionable(
        &mut self,
        now: Instant,
        min_gap: Duration,
    ) -> Option<(NodeId, SocketAddrV4)> {
        let config = self.config;
        self.buckets
            .iter_mut()
            .flat_map(|b| b.nodes.iter_mut())
            .filter(|n| n.liveness(now, &config) == Liveness::Questionable)
            .filter(|n| n.last_ping.is_none_or(|t| now.duration_since(t) >= min_gap))
            .min_by_key(|n| n.last_seen())
            .map(|n| {
                n.last_ping = Some(now);
                (n.id, n.addr)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn cfg() -> RoutingConfig {
        RoutingConfig {
            max_nodes_per_ip: 10_000,
            ..RoutingConfig::default()
        }
    }

    fn addr(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 6881)
    }

    /// An id sharing exactly `prefix` bits with `own`.
    fn at(own: &NodeId, prefix: usize, rng: &mut SmallRng) -> NodeId {
        own.random_with_prefix(prefix, rng)
    }

    #[test]
    fn only_the_bucket_holding_our_id_splits() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(1);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, cfg(), now);
        // 8 far nodes fill bucket 0 and then force splits; the 9th far node
        // must not split bucket 0 again.
        for i in 0..8 {
            let id = at(&own, 0, &mut rng);
            assert_eq!(
                t.heard_from(id, addr(i), Contact::Response, now),
                Outcome::Inserted
            );
        }
        assert_eq!(t.bucket_count(), 1);
        let near = at(&own, 5, &mut rng);
        assert_eq!(
            t.heard_from(near, addr(100), Contact::Response, now),
            Outcome::Inserted
        );
        // Splitting moved the far nodes into bucket 0 and made a bucket
        // for everything sharing at least one bit.
        assert_eq!(t.bucket_count(), 2);
        let far = at(&own, 0, &mut rng);
        assert!(matches!(
            t.heard_from(far, addr(101), Contact::Response, now),
            Outcome::Cached { .. }
        ));
        assert_eq!(t.bucket_count(), 2);
        assert_eq!(t.len(), 9);
        assert_eq!(t.cached_len(), 1);
    }

    #[test]
    fn buckets_never_exceed_k_and_the_total_stays_bounded() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(2);
        let own = NodeId::random(&mut rng);
        let config = RoutingConfig {
            max_nodes: 100,
            ..cfg()
        };
        let mut t = RoutingTable::new(own, config, now);
        for i in 0..20_000 {
            let prefix = (rng.random::<u32>() % 40) as usize;
            let id = at(&own, prefix, &mut rng);
            t.heard_from(id, addr(i), Contact::Response, now);
            assert!(t.largest_bucket() <= 8);
            assert!(t.len() <= 100);
            assert!(t.cached_len() <= 8 * t.bucket_count());
        }
        assert_eq!(t.len(), 100);
        assert!(t.bucket_count() <= 160);
        let per_ip: usize = t.per_ip.values().sum();
        assert_eq!(per_ip, t.len() + t.cached_len());
    }

    #[test]
    fn liveness_follows_bep5() {
        let t0 = Instant::now();
        let c = cfg();
        let mut n = NodeEntry::new(NodeId([1; 20]), addr(1));
        assert_eq!(n.liveness(t0, &c), Liveness::Questionable, "never answered");
        n.touch(Contact::Query, t0);
        assert_eq!(n.liveness(t0, &c), Liveness::Questionable, "queried only");
        n.touch(Contact::Response, t0);
        assert_eq!(n.liveness(t0, &c), Liveness::Good);
        let later = t0 + Duration::from_secs(15 * 60);
        assert_eq!(n.liveness(later, &c), Liveness::Questionable);
        n.touch(Contact::Query, later);
        assert_eq!(
            n.liveness(later, &c),
            Liveness::Good,
            "answered once, queried us recently"
        );
        n.failures = 2;
        assert_eq!(n.liveness(later, &c), Liveness::Bad);
    }

    #[test]
    fn a_failing_node_is_replaced_from_the_cache() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(3);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, cfg(), now);
        // Fill bucket 0 (it can no longer split once bucket 1 exists).
        t.heard_from(at(&own, 3, &mut rng), addr(999), Contact::Response, now);
        for i in 0..7 {
            t.heard_from(at(&own, 0, &mut rng), addr(i), Contact::Response, now);
        }
        let victim = at(&own, 0, &mut rng);
        t.heard_from(victim, addr(50), Contact::Response, now);
        assert_eq!(t.bucket_count(), 2);
        let later = now + Duration::from_secs(20 * 60);
        // All questionable now; a newcomer is cached and a ping is asked
        // for the stalest node.
        let newcomer = at(&own, 0, &mut rng);
        let out = t.heard_from(newcomer, addr(60), Contact::Response, later);
        let Outcome::Cached { ping: Some(p) } = out else {
            panic!("{out:?}")
        };
        let pinged = t.nodes().find(|n| n.addr == p).unwrap().id;
        t.on_failure(&pinged, p, later);
        assert!(t.get(&pinged).is_some(), "one failure is not bad yet");
        t.on_failure(&pinged, p, later);
        assert!(t.get(&pinged).is_none(), "bad: replaced");
        assert_eq!(t.get(&newcomer).unwrap().addr, addr(60));
        assert_eq!(t.cached_len(), 0);
        assert!(t.get(&victim).is_some());
    }

    #[test]
    fn queries_alone_only_reach_the_cache_and_answers_promote() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(4);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, cfg(), now);
        let id = at(&own, 2, &mut rng);
        assert!(t.wants(&id, now));
        assert_eq!(
            t.heard_from(id, addr(1), Contact::Query, now),
            Outcome::Cached { ping: None }
        );
        assert!(t.is_empty());
        assert_eq!(
            t.heard_from(id, addr(1), Contact::Response, now),
            Outcome::Inserted
        );
        assert_eq!(t.cached_len(), 0);
        assert!(!t.wants(&id, now));
    }

    #[test]
    fn rejects_self_bad_addresses_ip_limits_and_id_moves() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(5);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, RoutingConfig::default(), now);
        let r = Contact::Response;
        assert_eq!(t.heard_from(own, addr(1), r, now), Outcome::Rejected);
        let zero_port = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 0);
        let id = at(&own, 1, &mut rng);
        assert_eq!(t.heard_from(id, zero_port, r, now), Outcome::Rejected);
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 1);
        assert_eq!(t.heard_from(id, bcast, r, now), Outcome::Rejected);
        assert_eq!(t.heard_from(id, addr(1), r, now), Outcome::Inserted);
        // Default: one node per address.
        let same_ip = SocketAddrV4::new(*addr(1).ip(), 7000);
        let other = at(&own, 1, &mut rng);
        assert_eq!(t.heard_from(other, same_ip, r, now), Outcome::Rejected);
        // The same id from another address while the first is good.
        assert_eq!(t.heard_from(id, addr(2), r, now), Outcome::Rejected);
        assert_eq!(t.get(&id).unwrap().addr, addr(1));
    }

    #[test]
    fn closest_is_sorted_and_skips_bad_nodes() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(6);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, cfg(), now);
        for i in 0..300 {
            let prefix = (rng.random::<u32>() % 12) as usize;
            t.heard_from(at(&own, prefix, &mut rng), addr(i), Contact::Response, now);
        }
        let target = NodeId::random(&mut rng);
        let c = t.closest(&target, 8);
        assert_eq!(c.len(), 8);
        for w in c.windows(2) {
            assert!(w[0].0.distance(&target) < w[1].0.distance(&target));
        }
        let mut all: Vec<_> = t.nodes().map(|n| n.id).collect();
        all.sort_by_key(|id| id.distance(&target));
        assert_eq!(c.iter().map(|x| x.0).collect::<Vec<_>>(), all[..8]);
        let (first, a) = c[0];
        t.on_failure(&first, a, now);
        t.on_failure(&first, a, now);
        assert!(!t.closest(&target, 8).iter().any(|x| x.0 == first));
    }

    #[test]
    fn stale_buckets_are_refreshed_once_per_interval() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(7);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, cfg(), now);
        for i in 0..40 {
            t.heard_from(
                at(&own, (i % 5) as usize, &mut rng),
                addr(i),
                Contact::Response,
                now,
            );
        }
        assert!(t.refresh_targets(now, 10, &mut rng).is_empty());
        let later = now + Duration::from_secs(15 * 60);
        let targets = t.refresh_targets(later, 100, &mut rng);
        assert_eq!(targets.len(), t.bucket_count());
        for (i, id) in targets.iter().enumerate() {
            assert_eq!(t.index(id), i, "target lands in the refreshed bucket");
        }
        assert!(t.refresh_targets(later, 100, &mut rng).is_empty());
    }
}

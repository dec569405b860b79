//! A deterministic in-memory network of [`Node`]s with a virtual clock, for
//! tests and the benchmark: datagrams are delivered in order with no loss
//! or delay (or dropped, for nodes marked down), and when nothing is in
//! transit the clock jumps to the next node's timeout. The same sans-IO
//! nodes the actor runs; no sockets, no runtime.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::config::DhtConfig;
use super::id::NodeId;
use super::lookup::{LookupKind, LookupSummary};
use super::node::{Event, LookupId, Node};

/// The simulated network.
pub struct Network {
    /// The nodes; node `i` is at [`Network::addr`]`(i)`.
    pub nodes: Vec<Node>,
    by_addr: HashMap<SocketAddrV4, usize>,
    /// Datagrams in transit: (from, to, bytes).
    wire: VecDeque<(SocketAddrV4, SocketAddrV4, Vec<u8>)>,
    /// Nodes that receive nothing (a crashed or unreachable node).
    pub down: HashSet<usize>,
    /// The virtual clock.
    pub now: Instant,
    /// Datagrams delivered so far.
    pub delivered: u64,
    /// Events of every node, kept until taken.
    events: Vec<VecDeque<Event>>,
}

impl Network {
    /// `n` nodes with `config`, not yet bootstrapped. Each has its own IPv4
    /// address (10.0.0.0/8), so the default one-node-per-address rule
    /// holds.
    pub fn new(n: usize, config: &DhtConfig, seed: u64) -> Network {
        let now = Instant::now();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                Node::new(
                    config.clone(),
                    None,
                    seed ^ ((i as u64 + 1) * 0x9e37_79b9),
                    now,
                )
            })
            .collect();
        let by_addr = (0..n).map(|i| (Self::addr(i), i)).collect();
        Network {
            events: (0..n).map(|_| VecDeque::new()).collect(),
            nodes,
            by_addr,
            wire: VecDeque::new(),
            down: HashSet::new(),
            now,
            delivered: 0,
        }
    }

    /// The address of node `i`.
    pub fn addr(i: usize) -> SocketAddrV4 {
        let i = i as u32 + 1;
        SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 | i), 6881)
    }

    /// Bootstraps every node from node 0 (node 0 from node 1) and runs
    /// until the network is quiet.
    pub fn bootstrap(&mut self) {
        for i in 0..self.nodes.len() {
            let seed = Self::addr(if i == 0 { 1 } else { 0 });
            self.nodes[i].bootstrap(vec![seed], false, self.now);
            self.collect(i);
            // Bootstrapping one at a time builds tables the way a real
            // DHT grows.
            self.settle(Duration::from_secs(5));
        }
        self.settle(Duration::from_secs(30));
    }

    fn collect(&mut self, i: usize) {
        let from = Self::addr(i);
        while let Some((to, bytes)) = self.nodes[i].poll_transmit() {
            self.wire.push_back((from, to, bytes));
        }
        while let Some(ev) = self.nodes[i].poll_event() {
            let q = &mut self.events[i];
            // Bounded: only the newest few hundred events are kept.
            if q.len() >= 256 {
                q.pop_front();
            }
            q.push_back(ev);
        }
    }

    /// Delivers everything in transit (and what that causes) and fires
    /// timers until no datagram is in transit and no node has a query or
    /// lookup in flight, for at most `horizon` of virtual time.
    pub fn settle(&mut self, horizon: Duration) {
        let end = self.now + horizon;
        while self.now <= end {
            if self.wire.is_empty() && self.nodes.iter().all(Node::is_idle) {
                return;
            }
            self.step_once();
        }
    }

    /// Runs a lookup from node `i` to completion (at most a minute of
    /// virtual time) and returns its summary.
    pub fn lookup(&mut self, i: usize, target: NodeId, kind: LookupKind) -> Option<LookupSummary> {
        let id = self.nodes[i].start_lookup(target, kind, self.now).ok()?;
        self.collect(i);
        let deadline = self.now + Duration::from_secs(60);
        while self.now < deadline {
            if let Some(s) = self.take_done(i, id) {
                return Some(s);
            }
            self.step_once();
        }
        self.take_done(i, id)
    }

    /// Delivers what is in transit, or, if nothing is, fires the earliest
    /// timers.
    fn step_once(&mut self) {
        if self.wire.is_empty() {
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.down.contains(i))
                .map(|(_, n)| n.poll_timeout())
                .min();
            if let Some(t) = next {
                self.now = self.now.max(t);
            }
            for i in 0..self.nodes.len() {
                if !self.down.contains(&i) && self.nodes[i].poll_timeout() <= self.now {
                    self.nodes[i].handle_timeout(self.now);
                    self.collect(i);
                }
            }
            return;
        }
        let batch = self.wire.len();
        for _ in 0..batch {
            let Some((from, to, bytes)) = self.wire.pop_front() else {
                break;
            };
            let Some(&j) = self.by_addr.get(&to) else {
                continue;
            };
            if self.down.contains(&j) {
                continue;
            }
            self.delivered += 1;
            self.nodes[j].handle_packet(SocketAddr::V4(from), &bytes, self.now);
            self.collect(j);
        }
    }

    fn take_done(&mut self, i: usize, id: LookupId) -> Option<LookupSummary> {
        let q = &mut self.events[i];
        let pos = q
            .iter()
            .position(|e| matches!(e, Event::LookupDone { id: d, .. } if *d == id))?;
        match q.remove(pos) {
            Some(Event::LookupDone { summary, .. }) => Some(summary),
            _ => None,
        }
    }

    /// Takes node `i`'s events.
    pub fn take_events(&mut self, i: usize) -> Vec<Event> {
        self.events[i].drain(..).collect()
    }
}

//! The delay line itself, as a plain struct with time passed in: packets
//! are offered with the instant they arrived, each gets a release instant
//! (delay +- jitter), and the caller takes back the packets that are due.
//!
//! Order is kept per flow direction (IPv4 source, destination): a packet is
//! never released before one that arrived earlier between the same two
//! hosts. netem's jitter reorders packets, which TCP takes for loss; paths
//! that jitter without reordering are what a WAN looks like to TCP, and
//! what the lab wants to measure.
//!
//! The queue is bounded in packets; a packet that finds it full is dropped
//! and counted, as a router's buffer would drop it.

use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::SmallRng;

/// Flow keys remembered for ordering, at most; past this the table is
/// cleared (only ordering against packets already queued is lost, and with
/// a lab of a few dozen hosts it never fills).
const MAX_FLOWS: usize = 1 << 16;

/// What the delay line did, for the report at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets offered.
    pub received: u64,
    /// Bytes offered.
    pub received_bytes: u64,
    /// Packets handed back for release.
    pub released: u64,
    /// Bytes handed back for release.
    pub released_bytes: u64,
    /// Packets dropped because the queue was full.
    pub dropped_full: u64,
    /// Packets that were not IPv4 (delayed too, ordered as one flow).
    pub not_ipv4: u64,
    /// Most packets held at once.
    pub max_queue: usize,
    /// Release later than scheduled (how late the caller came), summed and
    /// the worst, in microseconds.
    pub late_us_sum: u64,
    /// Worst lateness, microseconds.
    pub late_us_max: u64,
}

/// Delay settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Base one-way delay.
    pub delay: Duration,
    /// Each packet's delay is drawn uniformly from `delay +- jitter` (as
    /// netem's default distribution), clamped at zero.
    pub jitter: Duration,
    /// Packets held at most.
    pub capacity: usize,
}

struct Held {
    at: Instant,
    seq: u64,
    packet: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    // Reversed: BinaryHeap is a max-heap and the earliest must come first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The bounded, ordered delay queue.
pub struct DelayLine {
    config: Config,
    rng: SmallRng,
    heap: BinaryHeap<Held>,
    /// Latest release instant given to each flow.
    last: HashMap<(u32, u32), Instant>,
    seq: u64,
    counters: Counters,
}

/// What happened to an offered packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued until the given instant.
    Held(Instant),
    /// The queue was full; the packet is given back to be reused.
    Dropped(Vec<u8>),
}

/// The (source, destination) of an IPv4 packet, or `None`.
pub fn ipv4_flow(p: &[u8]) -> Option<(u32, u32)> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
    let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
    Some((src, dst))
}

impl DelayLine {
    /// An empty line.
    pub fn new(config: Config, rng: SmallRng) -> DelayLine {
        DelayLine {
            config,
            rng,
            heap: BinaryHeap::new(),
            last: HashMap::new(),
            seq: 0,
            counters: Counters::default(),
        }
    }

    /// Offers a packet that arrived at `now`.
    pub fn offer(&mut self, now: Instant, packet: Vec<u8>) -> Offer {
        self.counters.received += 1;
        self.counters.received_bytes += packet.len() as u64;
        if self.heap.len() >= self.config.capacity {
            self.counters.dropped_full += 1;
            return Offer::Dropped(packet);
        }
        let flow = ipv4_flow(&packet).unwrap_or_else(|| {
            self.counters.not_ipv4 += 1;
            (0, 0)
        });
        let at = now + self.sample_delay();
        if self.last.len() >= MAX_FLOWS && !self.last.contains_key(&flow) {
            self.last.clear();
        }
        let slot = self.last.entry(flow).or_insert(at);
        let at = at.max(*slot);
        *slot = at;
        self.seq += 1;
        self.heap.push(Held {
            at,
            seq: self.seq,
            packet,
        });
        self.counters.max_queue = self.counters.max_queue.max(self.heap.len());
        Offer::Held(at)
    }

    fn sample_delay(&mut self) -> Duration {
        let j = self.config.jitter.as_nanos() as i64;
        let d = self.config.delay.as_nanos() as i64;
        let off = if j > 0 {
            self.rng.random_range(-j..=j)
        } else {
            0
        };
        Duration::from_nanos((d + off).max(0) as u64)
    }

    /// When the next packet is due, if any is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.at)
    }

    /// The next packet due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let h = self.heap.pop()?;
        let late = now.saturating_duration_since(h.at).as_micros() as u64;
        let c = &mut self.counters;
        c.late_us_sum += late;
        c.late_us_max = c.late_us_max.max(late);
        c.released += 1;
        c.released_bytes += h.packet.len() as u64;
        Some(h.packet)
    }

    /// Packets held now.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn packet(src: u8, dst: u8, tag: u8) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[15] = src;
        p[19] = dst;
        p[27] = tag;
        p
    }

    fn line(delay_ms: u64, jitter_ms: u64, capacity: usize) -> DelayLine {
        DelayLine::new(
            Config {
                delay: Duration::from_millis(delay_ms),
                jitter: Duration::from_millis(jitter_ms),
                capacity,
            },
            SmallRng::seed_from_u64(7),
        )
    }

    #[test]
    fn holds_each_packet_for_its_delay() {
        let mut l = line(40, 0, 16);
        let t0 = Instant::now();
        assert_eq!(
            l.offer(t0, packet(1, 2, 0)),
            Offer::Held(t0 + Duration::from_millis(40))
        );
        assert!(l.pop_due(t0 + Duration::from_millis(39)).is_none());
        let p = l.pop_due(t0 + Duration::from_millis(40)).unwrap();
        assert_eq!(p[27], 0);
        assert!(l.is_empty());
        assert_eq!(l.counters().released, 1);
    }

    #[test]
    fn jitter_stays_within_bounds_and_never_reorders_a_flow() {
        let mut l = line(40, 10, 100_000);
        let t0 = Instant::now();
        let mut last = t0;
        let mut spread = (Duration::MAX, Duration::ZERO);
        for i in 0..10_000u32 {
            // Sparse arrivals (1 per 25 ms) so ordering rarely binds and
            // the jitter itself shows.
            let now = t0 + Duration::from_millis(25 * u64::from(i));
            let Offer::Held(at) = l.offer(now, packet(1, 2, 0)) else {
                panic!("dropped")
            };
            assert!(at >= last, "flow reordered");
            last = at;
            let d = at - now;
            spread = (spread.0.min(d), spread.1.max(d));
        }
        assert!(spread.0 >= Duration::from_millis(30), "{spread:?}");
        assert!(spread.1 <= Duration::from_millis(50), "{spread:?}");
        // Uniform over 20 ms: 10,000 samples reach near both ends.
        assert!(spread.0 < Duration::from_millis(31), "{spread:?}");
        assert!(spread.1 > Duration::from_millis(49), "{spread:?}");
    }

    #[test]
    fn flows_are_ordered_each_on_its_own() {
        let mut l = line(40, 10, 1000);
        let t0 = Instant::now();
        for i in 0..200u8 {
            let now = t0 + Duration::from_micros(u64::from(i));
            l.offer(now, packet(1, 2, i));
            l.offer(now, packet(2, 1, i));
        }
        let mut seen: HashMap<u8, Vec<u8>> = HashMap::new();
        while let Some(p) = l.pop_due(t0 + Duration::from_secs(1)) {
            seen.entry(p[15]).or_default().push(p[27]);
        }
        for tags in seen.values() {
            assert_eq!(tags.len(), 200);
            assert!(tags.windows(2).all(|w| w[0] < w[1]), "{tags:?}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut l = line(10, 0, 2);
        let t0 = Instant::now();
        assert!(matches!(l.offer(t0, packet(1, 2, 0)), Offer::Held(_)));
        assert!(matches!(l.offer(t0, packet(1, 2, 1)), Offer::Held(_)));
        assert!(matches!(l.offer(t0, packet(1, 2, 2)), Offer::Dropped(_)));
        let c = l.counters();
        assert_eq!((c.received, c.dropped_full, c.max_queue), (3, 1, 2));
        // Room again once one is released.
        assert!(l.pop_due(t0 + Duration::from_millis(10)).is_some());
        assert!(matches!(l.offer(t0, packet(1, 2, 3)), Offer::Held(_)));
    }

    #[test]
    fn lateness_is_measured() {
        let mut l = line(1, 0, 4);
        let t0 = Instant::now();
        l.offer(t0, packet(1, 2, 0));
        l.pop_due(t0 + Duration::from_millis(3)).unwrap();
        assert_eq!(l.counters().late_us_max, 2000);
    }

    #[test]
    fn non_ipv4_is_delayed_and_counted() {
        let mut l = line(1, 0, 4);
        let t0 = Instant::now();
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        assert!(matches!(l.offer(t0, v6), Offer::Held(_)));
        assert_eq!(l.counters().not_ipv4, 1);
        assert!(ipv4_flow(&[0x45; 10]).is_none());
    }
}

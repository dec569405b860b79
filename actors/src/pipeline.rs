//! How many block requests one peer connection keeps outstanding.
//!
//! This owns the request pipeline depth of a connection and the download rate
//! meter it is computed from. The model is libtorrent's "desired queue size"
//! (`peer_connection.cpp`): keep enough requests queued at the peer to cover
//! `queue_time` worth of the rate the peer is delivering,
//!
//! ```text
//! depth = download_rate * queue_time / block_size
//! ```
//!
//! clamped to `[min_depth, min(max_pipeline, peer's reqq)]`. A new connection
//! has no rate yet, so it starts from a small depth and grows by one request
//! per block received (TCP-style slow start, doubling each round trip) until
//! the depth reaches the rate-based target or a request times out.
//!
//! A timeout halves the depth and leaves slow start. So that the halving is
//! not undone by the next rate recomputation, it also sets a ceiling that
//! grows back by one request per `depth` blocks received (additive increase,
//! as TCP congestion avoidance) and disappears once it reaches the upper
//! bound again.
//!
//! Plain values with time passed in: the Peer actor calls
//! [`Pipeline::on_block_received`] with its clock's `Instant`, reads
//! [`Pipeline::depth`], and calls [`Pipeline::on_timeout`] when its request
//! timer fires.

use std::time::{Duration, Instant};

/// Tuning of the request pipeline. These become named config values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Depth of a new connection, where slow start begins. Default 4.
    pub initial_depth: u32,
    /// Smallest depth ever used (unless the peer's own `reqq` is smaller).
    /// Default 2: one request in flight while the other is answered.
    pub min_depth: u32,
    /// Largest depth ever used, whatever the rate. Default 256.
    pub max_pipeline: u32,
    /// How much of the peer's delivery rate to keep queued at the peer.
    /// Default 3 s (libtorrent's default; Transmission uses 10 s).
    #[serde(rename = "queue_time_ms", with = "storage::serde_fmt::duration_ms")]
    pub queue_time: Duration,
    /// Size of one requested block. Default 16 KiB.
    pub block_size: u32,
    /// The peer's request queue length (`reqq`) assumed when its BEP 10
    /// handshake does not state one. Default 250: libtorrent's default
    /// `max_allowed_in_request_queue`, and what libtorrent itself advertises,
    /// so a peer that stays silent is most likely one that accepts that many.
    /// Peers that drop requests beyond a smaller queue show up as timeouts,
    /// which halve the depth.
    pub default_peer_reqq: u32,
    /// Window of the download rate meter. Default 5 s.
    #[serde(rename = "rate_window_ms", with = "storage::serde_fmt::duration_ms")]
    pub rate_window: Duration,
    /// Number of buckets the rate window is divided into. Default 10.
    pub rate_buckets: u32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            initial_depth: 4,
            min_depth: 2,
            max_pipeline: 256,
            queue_time: Duration::from_secs(3),
            block_size: 16 * 1024,
            default_peer_reqq: 250,
            rate_window: Duration::from_secs(5),
            rate_buckets: 10,
        }
    }
}

/// Bytes transferred over a sliding window, with the time passed in.
///
/// The window is cut into fixed buckets, so memory is constant whatever the
/// rate. The rate divides the bytes of the buckets still in the window by the
/// time they cover, which is shorter than the window while the meter is young
/// (at least one bucket width): a connection's first second is not diluted
/// over the whole window.
#[derive(Clone, Debug)]
pub struct RateMeter {
    /// The instant of the first record; bucket `k` covers
    /// `[origin + k * width, origin + (k + 1) * width)`.
    origin: Option<Instant>,
    width: Duration,
    /// `(bucket number, bytes)`; slot `k % len` holds bucket `k`.
    slots: Vec<(u64, u64)>,
    /// Bytes ever recorded.
    total: u64,
}

impl RateMeter {
    /// A meter over `window`, divided into `buckets` buckets (at least 1).
    /// A zero window is raised to one millisecond.
    pub fn new(window: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let window = window.max(Duration::from_millis(1));
        Self {
            origin: None,
            width: (window / buckets).max(Duration::from_nanos(1)),
            slots: vec![(u64::MAX, 0); buckets as usize],
            total: 0,
        }
    }

    fn bucket_of(&self, origin: Instant, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(origin).as_nanos();
        u64::try_from(elapsed / self.width.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Adds `bytes` transferred at `now`. Instants earlier than the first
    /// record count as the first bucket.
    pub fn record(&mut self, now: Instant, bytes: u64) {
        let origin = *self.origin.get_or_insert(now);
        let k = self.bucket_of(origin, now);
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(k % len) as usize];
        if slot.0 == k {
            slot.1 = slot.1.saturating_add(bytes);
        } else if slot.0 == u64::MAX || slot.0 < k {
            *slot = (k, bytes);
        } else {
            // `now` went backwards past a whole window: count it in the slot
            // it lands on rather than lose it.
            slot.1 = slot.1.saturating_add(bytes);
        }
        self.total = self.total.saturating_add(bytes);
    }

    /// Bytes per second over the window ending at `now`; 0 before any record.
    pub fn rate(&self, now: Instant) -> u64 {
        let (bytes, span) = self.window_bytes(now);
        if span.is_zero() {
            return 0;
        }
        u64::try_from(u128::from(bytes) * 1_000_000_000 / span.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Bytes recorded in the window ending at `now`, and the time span they
    /// cover (at least one bucket width once anything was recorded).
    pub fn window_bytes(&self, now: Instant) -> (u64, Duration) {
        let Some(origin) = self.origin else {
            return (0, Duration::ZERO);
        };
        let k = self.bucket_of(origin, now);
        let len = self.slots.len() as u64;
        let first = k.saturating_sub(len - 1);
        let bytes = self
            .slots
            .iter()
            .filter(|(n, _)| *n != u64::MAX && *n >= first && *n <= k)
            .fold(0u64, |acc, (_, b)| acc.saturating_add(*b));
        let start = self
            .width
            .saturating_mul(u32::try_from(first).unwrap_or(u32::MAX));
        let span = now
            .saturating_duration_since(origin)
            .saturating_sub(start)
            .max(self.width);
        (bytes, span)
    }

    /// Bytes ever recorded.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The request pipeline depth controller of one connection.
#[derive(Clone, Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    meter: RateMeter,
    /// Current depth, always within `[lower(), upper()]`.
    depth: u32,
    slow_start: bool,
    /// The peer's advertised `reqq`, if its handshake had one.
    peer_reqq: Option<u32>,
    /// After a timeout: the depth may not exceed this until it has grown
    /// back to the upper bound.
    ceiling: Option<u32>,
    /// Blocks received since the ceiling last grew.
    ceiling_credit: u32,
    timeouts: u64,
}

impl Pipeline {
    /// A controller in slow start at `config.initial_depth` (clamped).
    pub fn new(config: PipelineConfig) -> Self {
        let mut p = Self {
            meter: RateMeter::new(config.rate_window, config.rate_buckets),
            config,
            depth: 0,
            slow_start: true,
            peer_reqq: None,
            ceiling: None,
            ceiling_credit: 0,
            timeouts: 0,
        };
        p.depth = p.clamp(config.initial_depth);
        p
    }

    /// Records the peer's `reqq` from its BEP 10 extension handshake. A value
    /// of 0 is treated as 1. The peer's limit wins over `min_depth`: requests
    /// beyond it would be dropped by the peer anyway.
    pub fn set_peer_reqq(&mut self, reqq: u32) {
        self.peer_reqq = Some(reqq.max(1));
        self.depth = self.clamp(self.depth);
    }

    /// The peer's request queue length in use (advertised or the default).
    pub fn peer_reqq(&self) -> u32 {
        self.peer_reqq
            .unwrap_or(self.config.default_peer_reqq)
            .max(1)
    }

    /// Largest allowed depth: `min(max_pipeline, peer's reqq)`, at least 1.
    pub fn upper(&self) -> u32 {
        self.config.max_pipeline.min(self.peer_reqq()).max(1)
    }

    /// Smallest allowed depth: `min_depth`, unless the upper bound is lower.
    pub fn lower(&self) -> u32 {
        self.config.min_depth.max(1).min(self.upper())
    }

    fn clamp(&self, depth: u32) -> u32 {
        depth.clamp(self.lower(), self.upper())
    }

    /// Records a block of `bytes` received at `now` and updates the depth.
    pub fn on_block_received(&mut self, now: Instant, bytes: u32) {
        self.meter.record(now, u64::from(bytes));
        if let Some(ceiling) = self.ceiling {
            self.ceiling_credit += 1;
            if self.ceiling_credit >= ceiling {
                self.ceiling_credit = 0;
                if ceiling + 1 >= self.upper() {
                    self.ceiling = None;
                } else {
                    self.ceiling = Some(ceiling + 1);
                }
            }
        }
        let target = self.target(now);
        if self.slow_start {
            self.depth = self.clamp(self.depth.saturating_add(1));
            if self.depth >= target || self.depth >= self.upper() {
                self.slow_start = false;
                self.depth = self.clamp(target.max(self.depth));
            }
        } else {
            self.depth = target;
        }
    }

    /// Recomputes the depth from the rate at `now` without a new block, so an
    /// idle connection's depth decays (call it from a periodic tick). Does
    /// nothing in slow start.
    pub fn tick(&mut self, now: Instant) {
        if !self.slow_start {
            self.depth = self.target(now);
        }
    }

    /// A request timed out: halve the depth (at least the lower bound), leave
    /// slow start, and cap the depth at the halved value until it grows back.
    pub fn on_timeout(&mut self) {
        self.timeouts += 1;
        self.slow_start = false;
        self.depth = self.clamp(self.depth / 2);
        self.ceiling = Some(self.depth);
        self.ceiling_credit = 0;
    }

    /// The rate-based depth at `now`: `rate * queue_time / block_size`,
    /// clamped to the bounds and to the post-timeout ceiling.
    pub fn target(&self, now: Instant) -> u32 {
        let (bytes, span) = self.meter.window_bytes(now);
        let raw = if span.is_zero() {
            0
        } else {
            let num = u128::from(bytes) * self.config.queue_time.as_nanos();
            let den = span.as_nanos() * u128::from(self.config.block_size.max(1));
            u32::try_from(num / den).unwrap_or(u32::MAX)
        };
        let capped = match self.ceiling {
            Some(c) => raw.min(c),
            None => raw,
        };
        self.clamp(capped)
    }

    /// How many requests to keep outstanding at this peer now.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether the controller is still in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// Download rate in bytes per second at `now`.
    pub fn download_rate(&self, now: Instant) -> u64 {
        self.meter.rate(now)
    }

    /// Timeouts seen over the connection's life.
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    /// The rate meter behind the depth.
    pub fn meter(&self) -> &RateMeter {
        &self.meter
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new(PipelineConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u32 = 16 * 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn meter_empty_is_zero() {
        let m = RateMeter::new(Duration::from_secs(5), 10);
        assert_eq!(m.rate(Instant::now()), 0);
        assert_eq!(m.total(), 0);
    }

    #[test]
    fn meter_young_window_uses_elapsed_time() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(5), 10);
        m.record(t0, 1000);
        // Within the first bucket the span is floored at one width (500 ms).
        assert_eq!(m.rate(t0), 2000);
        m.record(t0 + ms(1000), 1000);
        // 2000 bytes over 1 s.
        assert_eq!(m.rate(t0 + ms(1000)), 2000);
        assert_eq!(m.rate(t0 + ms(2000)), 1000);
        assert_eq!(m.total(), 2000);
    }

    #[test]
    fn meter_steady_rate() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(5), 10);
        // 100 KB every 100 ms = 1 MB/s for 20 s.
        for i in 0..200 {
            m.record(t0 + ms(i * 100), 100_000);
        }
        let r = m.rate(t0 + ms(19_950));
        assert!((950_000..=1_050_000).contains(&r), "rate {r}");
    }

    #[test]
    fn meter_forgets_old_buckets() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(5), 10);
        m.record(t0, 1_000_000);
        assert!(m.rate(t0 + ms(4_000)) > 0);
        assert_eq!(m.rate(t0 + ms(6_000)), 0);
        // A slot reused after a full turn of the ring starts from zero.
        m.record(t0 + ms(10_000), 10);
        let (bytes, span) = m.window_bytes(t0 + ms(10_000));
        assert_eq!(bytes, 10);
        assert!(span >= ms(4_500) && span <= ms(5_000));
        assert_eq!(m.total(), 1_000_010);
    }

    #[test]
    fn meter_time_going_backwards_is_counted() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(5), 10);
        m.record(t0 + ms(10_000), 10);
        m.record(t0, 10);
        assert_eq!(m.total(), 20);
        m.record(t0 + ms(3_000), 10);
        assert_eq!(m.total(), 30);
    }

    #[test]
    fn defaults() {
        let c = PipelineConfig::default();
        assert_eq!(c.initial_depth, 4);
        assert_eq!(c.min_depth, 2);
        assert_eq!(c.max_pipeline, 256);
        assert_eq!(c.queue_time, Duration::from_secs(3));
        assert_eq!(c.block_size, BLOCK);
        assert_eq!(c.default_peer_reqq, 250);
        let p = Pipeline::default();
        assert_eq!(p.depth(), 4);
        assert!(p.in_slow_start());
        assert_eq!(p.peer_reqq(), 250);
        assert_eq!(p.upper(), 250);
        assert_eq!(p.lower(), 2);
    }

    #[test]
    fn slow_start_adds_one_per_block() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        // Blocks arrive quickly: the rate target stays well above the depth.
        for i in 0..10u32 {
            p.on_block_received(t0 + ms(u64::from(i)), BLOCK);
            assert_eq!(p.depth(), 5 + i);
            assert!(p.in_slow_start());
        }
    }

    #[test]
    fn slow_start_ends_at_rate_target() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        // A link that delivers 10 blocks per second (160 KiB/s): the target
        // is 10 * 3 = 30 blocks.
        let mut t = t0;
        let mut left_at = None;
        for i in 0..200 {
            t += ms(100);
            p.on_block_received(t, BLOCK);
            if !p.in_slow_start() {
                left_at = Some(i);
                break;
            }
        }
        assert!(left_at.is_some(), "never left slow start");
        for _ in 0..100 {
            t += ms(100);
            p.on_block_received(t, BLOCK);
        }
        assert!(!p.in_slow_start());
        assert_eq!(p.depth(), 30);
    }

    #[test]
    fn depth_follows_rate_formula() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        // 20 blocks/s (320 KiB/s) for 20 s: 20 * 3 s = 60 blocks.
        let mut t = t0;
        for _ in 0..400 {
            t += ms(50);
            p.on_block_received(t, BLOCK);
        }
        assert!(!p.in_slow_start());
        assert_eq!(p.target(t), 60);
        assert_eq!(p.depth(), 60);
        // 100 blocks/s: 300, clamped to the default reqq of 250.
        for _ in 0..1000 {
            t += ms(10);
            p.on_block_received(t, BLOCK);
        }
        assert_eq!(p.target(t), 250);
        assert_eq!(p.depth(), 250);
        // Back to 20 blocks/s: the depth follows the rate down.
        for _ in 0..200 {
            t += ms(50);
            p.on_block_received(t, BLOCK);
        }
        assert_eq!(p.depth(), 60);
    }

    #[test]
    fn clamped_by_max_pipeline_and_reqq() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(PipelineConfig {
            max_pipeline: 64,
            ..PipelineConfig::default()
        });
        let mut t = t0;
        for _ in 0..1000 {
            t += ms(1);
            p.on_block_received(t, BLOCK);
        }
        assert_eq!(p.depth(), 64);
        p.set_peer_reqq(20);
        assert_eq!(p.depth(), 20);
        assert_eq!(p.upper(), 20);
        t += ms(1);
        p.on_block_received(t, BLOCK);
        assert_eq!(p.depth(), 20);
    }

    #[test]
    fn tiny_reqq_wins_over_min_depth() {
        let mut p = Pipeline::default();
        p.set_peer_reqq(0);
        assert_eq!(p.peer_reqq(), 1);
        assert_eq!(p.upper(), 1);
        assert_eq!(p.lower(), 1);
        assert_eq!(p.depth(), 1);
    }

    #[test]
    fn slow_rate_floors_at_min_depth() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        p.on_timeout();
        let mut t = t0;
        // One block every 10 s: target 0.3, floored at 2.
        for _ in 0..10 {
            t += Duration::from_secs(10);
            p.on_block_received(t, BLOCK);
        }
        assert_eq!(p.depth(), 2);
    }

    #[test]
    fn timeout_halves_and_leaves_slow_start() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        for i in 0..20 {
            p.on_block_received(t0 + ms(i), BLOCK);
        }
        assert_eq!(p.depth(), 24);
        p.on_timeout();
        assert!(!p.in_slow_start());
        assert_eq!(p.depth(), 12);
        assert_eq!(p.timeouts(), 1);
        p.on_timeout();
        assert_eq!(p.depth(), 6);
        p.on_timeout();
        p.on_timeout();
        p.on_timeout();
        assert_eq!(p.depth(), 2);
    }

    #[test]
    fn halved_depth_grows_back_additively() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        let mut t = t0;
        // A fast link: the rate target is far above anything below.
        for _ in 0..40 {
            t += ms(1);
            p.on_block_received(t, BLOCK);
        }
        let before = p.depth();
        p.on_timeout();
        let halved = p.depth();
        assert_eq!(halved, before / 2);
        // The next block must not jump back to the rate target.
        t += ms(1);
        p.on_block_received(t, BLOCK);
        assert_eq!(p.depth(), halved);
        // After `halved` blocks the ceiling grows by one.
        for _ in 0..halved {
            t += ms(1);
            p.on_block_received(t, BLOCK);
        }
        assert_eq!(p.depth(), halved + 1);
        // Eventually the ceiling reaches the upper bound and disappears.
        for _ in 0..100_000 {
            t += ms(1);
            p.on_block_received(t, BLOCK);
        }
        assert_eq!(p.depth(), p.upper());
    }

    #[test]
    fn idle_tick_decays_depth() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        let mut t = t0;
        for _ in 0..1000 {
            t += ms(1);
            p.on_block_received(t, BLOCK);
        }
        assert!(!p.in_slow_start());
        assert!(p.depth() > 100);
        p.tick(t + Duration::from_secs(30));
        assert_eq!(p.depth(), 2);
        assert_eq!(p.download_rate(t + Duration::from_secs(30)), 0);
    }

    #[test]
    fn tick_in_slow_start_changes_nothing() {
        let mut p = Pipeline::default();
        p.tick(Instant::now() + Duration::from_secs(100));
        assert_eq!(p.depth(), 4);
        assert!(p.in_slow_start());
    }
}

//! Circuit breaker and backoff of one tracker URL.
//!
//! This owns the decision "may we announce to this tracker now, and if not,
//! when": a circuit breaker (closed -> open after N consecutive failures ->
//! half-open after a cool-down -> one trial closes it, or reopens it with a
//! doubled cool-down) and exponential backoff with full jitter between
//! failed attempts. The tracker actor keeps one [`TrackerHealth`] per URL.
//!
//! It is a plain value: time is passed in as an [`Instant`] and randomness
//! as a fraction in `[0, 1)`, so tests drive it with exact values.

use std::time::Duration;

use tokio::time::Instant;

/// Tunables of [`TrackerHealth`]; copied from the tracker config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// First cool-down of an open breaker; doubled each time a half-open
    /// trial fails.
    #[serde(rename = "cool_down_ms", with = "storage::serde_fmt::duration_ms")]
    pub cool_down: Duration,
    /// Largest cool-down.
    #[serde(rename = "max_cool_down_ms", with = "storage::serde_fmt::duration_ms")]
    pub max_cool_down: Duration,
    /// Backoff after the first failure, before jitter; doubled per failure.
    #[serde(rename = "backoff_base_ms", with = "storage::serde_fmt::duration_ms")]
    pub backoff_base: Duration,
    /// Largest backoff before jitter.
    #[serde(rename = "backoff_cap_ms", with = "storage::serde_fmt::duration_ms")]
    pub backoff_cap: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            threshold: 3,
            cool_down: Duration::from_secs(60),
            max_cool_down: Duration::from_secs(3600),
            backoff_base: Duration::from_secs(15),
            backoff_cap: Duration::from_secs(1800),
        }
    }
}

/// The breaker's state, as shown in stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Announces flow; failures are being counted.
    Closed,
    /// Announces are refused until the cool-down ends.
    Open,
    /// The cool-down ended: one trial announce decides.
    HalfOpen,
}

/// Breaker plus backoff of one tracker URL.
#[derive(Clone, Debug)]
pub struct TrackerHealth {
    config: BreakerConfig,
    state: BreakerState,
    /// Failures since the last success; drives the breaker and the backoff.
    consecutive_failures: u32,
    /// Cool-down the breaker uses the next time it opens (or the current
    /// one while open).
    cool_down: Duration,
    /// While open: when it turns half-open.
    open_until: Instant,
    /// While half-open: whether the one trial is out.
    trial_in_flight: bool,
    /// No attempt before this (backoff with jitter after a failure).
    retry_at: Option<Instant>,
}

/// Doubling beyond 2^20 cannot matter for any sane cap, and bounding the
/// shift keeps the arithmetic overflow-free.
const MAX_SHIFT: u32 = 20;

fn doubled(base: Duration, times: u32, cap: Duration) -> Duration {
    base.saturating_mul(1 << times.min(MAX_SHIFT)).min(cap)
}

impl TrackerHealth {
    /// A closed breaker with no failures.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            cool_down: config.cool_down,
            open_until: Instant::now(),
            trial_in_flight: false,
            retry_at: None,
        }
    }

    /// The state at `now` (an open breaker whose cool-down has passed reads
    /// as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.open_until => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The earliest time an attempt may start, or `None` if one may start
    /// now. Half-open with its trial out waits for that trial: `Some(now)`
    /// is never returned, the caller re-checks when the trial ends.
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        let state_block = match self.state(now) {
            BreakerState::Open => Some(self.open_until),
            // The trial's result, not time, unblocks: report "far" and let
            // the caller re-check when the result arrives.
            BreakerState::HalfOpen if self.trial_in_flight => Some(now + self.config.max_cool_down),
            _ => None,
        };
        let backoff_block = self.retry_at.filter(|&t| t > now);
        match (state_block, backoff_block) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Asks to start an attempt at `now`. Returns the state change it
    /// caused (open -> half-open), or `Err(until)` if refused. A half-open
    /// breaker lets exactly one trial through.
    pub fn try_begin(&mut self, now: Instant) -> Result<Option<BreakerState>, Instant> {
        if let Some(until) = self.blocked_until(now) {
            return Err(until);
        }
        let mut change = None;
        if self.state == BreakerState::Open {
            // blocked_until returned None, so the cool-down has passed.
            self.state = BreakerState::HalfOpen;
            change = Some(BreakerState::HalfOpen);
        }
        if self.state == BreakerState::HalfOpen {
            self.trial_in_flight = true;
        }
        Ok(change)
    }

    /// Records a success: closes the breaker, resets backoff and cool-down.
    /// Returns the state change, if any.
    pub fn on_success(&mut self) -> Option<BreakerState> {
        let was = self.state;
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.cool_down = self.config.cool_down;
        self.trial_in_flight = false;
        self.retry_at = None;
        (was != BreakerState::Closed).then_some(BreakerState::Closed)
    }

    /// Records a failure at `now`. `jitter` in `[0, 1)` picks the backoff
    /// within `[0, min(cap, base * 2^(failures-1))]` (full jitter). Opens
    /// the breaker at the threshold, or reopens a half-open one with a
    /// doubled cool-down. Returns the state change, if any.
    pub fn on_failure(&mut self, now: Instant, jitter: f64) -> Option<BreakerState> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let ceiling = doubled(
            self.config.backoff_base,
            self.consecutive_failures - 1,
            self.config.backoff_cap,
        );
        self.retry_at = Some(now + ceiling.mul_f64(jitter.clamp(0.0, 1.0)));
        match self.state {
            BreakerState::HalfOpen => {
                self.trial_in_flight = false;
                self.cool_down = self
                    .cool_down
                    .saturating_mul(2)
                    .min(self.config.max_cool_down);
                self.open(now);
                Some(BreakerState::Open)
            }
            BreakerState::Closed if self.consecutive_failures >= self.config.threshold => {
                self.open(now);
                Some(BreakerState::Open)
            }
            // A failure while open comes from an attempt that started
            // before it opened: counted, nothing else changes.
            _ => None,
        }
    }

    /// Forgets an attempt that ended with neither success nor failure of
    /// the tracker (e.g. its torrent was removed): a half-open trial slot
    /// is freed.
    pub fn on_abandoned(&mut self) {
        self.trial_in_flight = false;
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.open_until = now + self.cool_down;
    }

    /// The current cool-down (the one in force while open).
    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            threshold: 3,
            cool_down: Duration::from_secs(10),
            max_cool_down: Duration::from_secs(35),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(7),
        }
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut h = TrackerHealth::new(config());
        assert_eq!(h.state(t0), BreakerState::Closed);
        assert_eq!(h.try_begin(t0), Ok(None));
        assert_eq!(h.on_failure(t0, 0.0), None);
        assert_eq!(h.on_failure(t0, 0.0), None);
        assert_eq!(h.on_failure(t0, 0.0), Some(BreakerState::Open));
        assert_eq!(h.state(t0), BreakerState::Open);
        assert_eq!(h.try_begin(t0), Err(t0 + Duration::from_secs(10)));
        assert_eq!(
            h.try_begin(t0 + Duration::from_secs(9)),
            Err(t0 + Duration::from_secs(10))
        );
    }

    #[test]
    fn success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut h = TrackerHealth::new(config());
        h.on_failure(t0, 0.0);
        h.on_failure(t0, 0.0);
        assert_eq!(h.on_success(), None);
        assert_eq!(h.consecutive_failures(), 0);
        assert_eq!(h.on_failure(t0, 0.0), None);
        assert_eq!(h.on_failure(t0, 0.0), None);
        assert_eq!(h.state(t0), BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_one_trial_through_and_success_closes() {
        let t0 = Instant::now();
        let mut h = TrackerHealth::new(config());
        for _ in 0..3 {
            h.on_failure(t0, 0.0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.state(t1), BreakerState::HalfOpen);
        assert_eq!(h.try_begin(t1), Ok(Some(BreakerState::HalfOpen)));
        // The trial is out: nobody else gets through.
        assert!(h.try_begin(t1).is_err());
        assert!(h.blocked_until(t1).is_some());
        assert_eq!(h.on_success(), Some(BreakerState::Closed));
        assert_eq!(h.state(t1), BreakerState::Closed);
        assert_eq!(h.try_begin(t1), Ok(None));
        assert_eq!(h.try_begin(t1), Ok(None));
        assert_eq!(h.cool_down(), Duration::from_secs(10));
    }

    #[test]
    fn failed_trial_reopens_with_doubled_capped_cool_down() {
        let t0 = Instant::now();
        let mut h = TrackerHealth::new(config());
        for _ in 0..3 {
            h.on_failure(t0, 0.0);
        }
        let mut now = t0;
        for expected in [20, 35, 35] {
            now += h.cool_down();
            assert_eq!(h.try_begin(now), Ok(Some(BreakerState::HalfOpen)));
            assert_eq!(h.on_failure(now, 0.0), Some(BreakerState::Open));
            assert_eq!(h.cool_down(), Duration::from_secs(expected));
            assert_eq!(
                h.try_begin(now + Duration::from_secs(expected - 1)),
                Err(now + Duration::from_secs(expected))
            );
        }
        // A success after all that starts over from the base cool-down.
        now += h.cool_down();
        h.try_begin(now).unwrap();
        h.on_success();
        assert_eq!(h.cool_down(), Duration::from_secs(10));
    }

    #[test]
    fn abandoned_trial_frees_the_slot() {
        let t0 = Instant::now();
        let mut h = TrackerHealth::new(config());
        for _ in 0..3 {
            h.on_failure(t0, 0.0);
        }
        let t1 = t0 + Duration::from_secs(10);
        h.try_begin(t1).unwrap();
        h.on_abandoned();
        assert_eq!(h.try_begin(t1), Ok(None));
    }

    #[test]
    fn backoff_is_full_jitter_of_a_doubling_capped_ceiling() {
        let t0 = Instant::now();
        let mut h = TrackerHealth::new(BreakerConfig {
            threshold: 100,
            ..config()
        });
        // Ceilings 2, 4, 7 (cap), 7 seconds; jitter 1.0 reaches the ceiling.
        for ceiling in [2, 4, 7, 7] {
            h.on_failure(t0, 1.0);
            assert_eq!(h.blocked_until(t0), Some(t0 + Duration::from_secs(ceiling)));
        }
        // Half jitter waits half the ceiling; zero jitter does not wait.
        h.on_failure(t0, 0.5);
        assert_eq!(h.blocked_until(t0), Some(t0 + Duration::from_millis(3500)));
        h.on_failure(t0, 0.0);
        assert_eq!(h.blocked_until(t0), None);
        // Out-of-range jitter is clamped, never past the cap.
        h.on_failure(t0, 7.0);
        assert_eq!(h.blocked_until(t0), Some(t0 + Duration::from_secs(7)));
        assert_eq!(h.try_begin(t0 + Duration::from_secs(7)), Ok(None));
    }

    #[test]
    fn open_breaker_waits_for_the_later_of_cool_down_and_backoff() {
        let t0 = Instant::now();
        let mut h = TrackerHealth::new(BreakerConfig {
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(30),
            ..config()
        });
        for _ in 0..3 {
            h.on_failure(t0, 1.0);
        }
        assert_eq!(h.blocked_until(t0), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let t0 = Instant::now();
        let mut h = TrackerHealth::new(BreakerConfig {
            threshold: u32::MAX,
            ..config()
        });
        for _ in 0..100 {
            h.on_failure(t0, 1.0);
        }
        assert_eq!(h.blocked_until(t0), Some(t0 + Duration::from_secs(7)));
    }
}

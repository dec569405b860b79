//! Round-trip time estimate and request timeout of one peer connection.
//!
//! This owns the RFC 6298 smoother (SRTT, RTTVAR) fed with request-to-block
//! latencies, and the timeout derived from it: `SRTT + 4 * RTTVAR`, clamped
//! to configured bounds, doubled on every expiry until a fresh sample arrives
//! (RFC 6298 section 5.5). The Peer actor owns one per connection, measures a
//! sample when a block answers a request, and arms its request timer with
//! [`RttEstimator::timeout`].
//!
//! It is a plain value: no clock is read here. Samples are `Duration`s the
//! caller measured with its own clock, so tests drive it with exact numbers.
//!
//! Karn's rule is the caller's job: a block that answers a request which
//! already timed out (and may have been re-requested from someone else) is an
//! ambiguous sample and must not be fed to [`RttEstimator::on_sample`].

use std::time::Duration;

/// Bounds and starting value of the request timeout.
///
/// These become named config values; defaults follow RFC 6298 except the
/// lower bound, which is larger than the RFC's 1 s because a BitTorrent peer
/// answers requests from a queue (up to several seconds of pipeline at the
/// default queue time), not immediately as a TCP receiver acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RttConfig {
    /// Smallest timeout ever returned. Default 2 s.
    #[serde(rename = "min_timeout_ms", with = "storage::serde_fmt::duration_ms")]
    pub min_timeout: Duration,
    /// Largest timeout ever returned, backoff included. Default 60 s (the
    /// RFC's suggested upper bound).
    #[serde(rename = "max_timeout_ms", with = "storage::serde_fmt::duration_ms")]
    pub max_timeout: Duration,
    /// Timeout before the first sample (RFC 6298 section 2.1: 1 s), still
    /// clamped to `[min_timeout, max_timeout]`, so 2 s with the defaults.
    #[serde(
        rename = "initial_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub initial_timeout: Duration,
}

impl Default for RttConfig {
    fn default() -> Self {
        Self {
            min_timeout: Duration::from_secs(2),
            max_timeout: Duration::from_secs(60),
            initial_timeout: Duration::from_secs(1),
        }
    }
}

/// Doubling beyond 2^16 cannot matter: any sane `max_timeout` is reached
/// long before, and capping the exponent keeps the arithmetic overflow-free.
const MAX_BACKOFF_SHIFT: u32 = 16;

/// RFC 6298 estimator of one connection's request round-trip time.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    config: RttConfig,
    /// SRTT and RTTVAR, absent until the first sample.
    smoothed: Option<Smoothed>,
    /// The latest raw sample, for display.
    latest: Option<Duration>,
    /// How many timeouts expired since the last sample: the timeout is
    /// multiplied by `2^backoff` (RFC 6298 5.5), capped.
    backoff: u32,
}

#[derive(Clone, Copy, Debug)]
struct Smoothed {
    srtt: Duration,
    rttvar: Duration,
}

impl RttEstimator {
    /// An estimator with no sample yet. `config.min_timeout` should not
    /// exceed `config.max_timeout`; if it does, `max_timeout` wins.
    pub fn new(config: RttConfig) -> Self {
        Self {
            config,
            smoothed: None,
            latest: None,
            backoff: 0,
        }
    }

    /// Feeds one request-to-block latency and clears any timeout backoff.
    ///
    /// First sample R: SRTT = R, RTTVAR = R/2. Later samples R':
    /// RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R'| (with the old SRTT), then
    /// SRTT = 7/8 SRTT + 1/8 R' (RFC 6298 section 2.2 and 2.3, alpha = 1/8,
    /// beta = 1/4). Arithmetic is in whole nanoseconds, rounded down.
    pub fn on_sample(&mut self, rtt: Duration) {
        self.latest = Some(rtt);
        self.backoff = 0;
        self.smoothed = Some(match self.smoothed {
            None => Smoothed {
                srtt: rtt,
                rttvar: rtt / 2,
            },
            Some(Smoothed { srtt, rttvar }) => {
                let err = srtt.abs_diff(rtt);
                Smoothed {
                    rttvar: weighted(rttvar, 3, err, 1, 4),
                    srtt: weighted(srtt, 7, rtt, 1, 8),
                }
            }
        });
    }

    /// Records that a request timed out: the timeout doubles (RFC 6298 5.5)
    /// until the next sample, never beyond `max_timeout`.
    pub fn on_timeout(&mut self) {
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF_SHIFT);
    }

    /// Smoothed round-trip time, `None` before the first sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.smoothed.map(|s| s.srtt)
    }

    /// Round-trip time variation, `None` before the first sample.
    pub fn rttvar(&self) -> Option<Duration> {
        self.smoothed.map(|s| s.rttvar)
    }

    /// The most recent raw sample, `None` before the first one.
    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }

    /// How many timeouts have expired since the last sample.
    pub fn backoff(&self) -> u32 {
        self.backoff
    }

    /// How long to wait for a requested block before declaring it lost:
    /// `SRTT + 4 * RTTVAR` (or `initial_timeout` before any sample), clamped
    /// to `[min_timeout, max_timeout]`, then doubled once per expiry since the
    /// last sample and capped at `max_timeout`.
    pub fn timeout(&self) -> Duration {
        let base = match self.smoothed {
            None => self.config.initial_timeout,
            Some(Smoothed { srtt, rttvar }) => srtt.saturating_add(rttvar.saturating_mul(4)),
        };
        let max = self.config.max_timeout;
        let min = self.config.min_timeout.min(max);
        let base = base.clamp(min, max);
        base.saturating_mul(1 << self.backoff).min(max)
    }
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new(RttConfig::default())
    }
}

/// `(a * wa + b * wb) / div` in nanoseconds, saturating at `Duration::MAX`.
fn weighted(a: Duration, wa: u128, b: Duration, wb: u128, div: u128) -> Duration {
    let nanos = (a.as_nanos() * wa + b.as_nanos() * wb) / div;
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder of a division by 1e9 always fits in u32.
    let sub = (nanos % 1_000_000_000) as u32;
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A config with no lower clamp in the way of the arithmetic under test.
    fn unclamped() -> RttConfig {
        RttConfig {
            min_timeout: Duration::ZERO,
            max_timeout: Duration::from_secs(60),
            initial_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn defaults() {
        let c = RttConfig::default();
        assert_eq!(c.min_timeout, Duration::from_secs(2));
        assert_eq!(c.max_timeout, Duration::from_secs(60));
        assert_eq!(c.initial_timeout, Duration::from_secs(1));
    }

    #[test]
    fn before_first_sample_initial_value_clamped() {
        let e = RttEstimator::default();
        assert_eq!(e.srtt(), None);
        assert_eq!(e.rttvar(), None);
        assert_eq!(e.latest(), None);
        // RFC initial 1 s, raised to the 2 s floor.
        assert_eq!(e.timeout(), Duration::from_secs(2));

        let e = RttEstimator::new(unclamped());
        assert_eq!(e.timeout(), Duration::from_secs(1));
    }

    #[test]
    fn first_sample() {
        let mut e = RttEstimator::new(unclamped());
        e.on_sample(ms(100));
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rttvar(), Some(ms(50)));
        assert_eq!(e.latest(), Some(ms(100)));
        // 100 + 4 * 50
        assert_eq!(e.timeout(), ms(300));
    }

    #[test]
    fn second_and_third_samples_by_hand() {
        let mut e = RttEstimator::new(unclamped());
        e.on_sample(ms(100));
        // R' = 200: RTTVAR = 3/4 * 50 + 1/4 * |100 - 200| = 37.5 + 25 = 62.5
        //           SRTT   = 7/8 * 100 + 1/8 * 200 = 87.5 + 25 = 112.5
        e.on_sample(ms(200));
        assert_eq!(e.rttvar(), Some(Duration::from_micros(62_500)));
        assert_eq!(e.srtt(), Some(Duration::from_micros(112_500)));
        // 112.5 + 4 * 62.5 = 362.5
        assert_eq!(e.timeout(), Duration::from_micros(362_500));

        // R' = 50: RTTVAR = 3/4 * 62.5 + 1/4 * |112.5 - 50| = 46.875 + 15.625 = 62.5
        //          SRTT   = 7/8 * 112.5 + 1/8 * 50 = 98.4375 + 6.25 = 104.6875
        e.on_sample(ms(50));
        assert_eq!(e.rttvar(), Some(Duration::from_micros(62_500)));
        assert_eq!(e.srtt(), Some(Duration::from_nanos(104_687_500)));
        // 104.6875 + 250 = 354.6875
        assert_eq!(e.timeout(), Duration::from_nanos(354_687_500));
    }

    #[test]
    fn rttvar_uses_old_srtt() {
        // If SRTT were updated first, |SRTT - R'| would be 7/8 of the error.
        let mut e = RttEstimator::new(unclamped());
        e.on_sample(ms(800));
        e.on_sample(ms(0));
        // RTTVAR = 3/4 * 400 + 1/4 * 800 = 500 ; SRTT = 7/8 * 800 = 700
        assert_eq!(e.rttvar(), Some(ms(500)));
        assert_eq!(e.srtt(), Some(ms(700)));
    }

    #[test]
    fn steady_samples_converge() {
        let mut e = RttEstimator::new(unclamped());
        for _ in 0..200 {
            e.on_sample(ms(40));
        }
        assert_eq!(e.srtt(), Some(ms(40)));
        assert!(e.rttvar().unwrap() < Duration::from_micros(1));
        assert!(e.timeout() >= ms(40) && e.timeout() < ms(41));
    }

    #[test]
    fn clamped_to_min_and_max() {
        let mut e = RttEstimator::default();
        e.on_sample(ms(10));
        assert_eq!(e.timeout(), Duration::from_secs(2));

        let mut e = RttEstimator::default();
        e.on_sample(Duration::from_secs(30));
        // 30 + 4 * 15 = 90 s, capped at 60 s.
        assert_eq!(e.timeout(), Duration::from_secs(60));
    }

    #[test]
    fn timeout_backs_off_until_next_sample() {
        let mut e = RttEstimator::default();
        e.on_sample(Duration::from_millis(1_000));
        // 1 + 4 * 0.5 = 3 s
        assert_eq!(e.timeout(), Duration::from_secs(3));
        e.on_timeout();
        assert_eq!(e.backoff(), 1);
        assert_eq!(e.timeout(), Duration::from_secs(6));
        e.on_timeout();
        assert_eq!(e.timeout(), Duration::from_secs(12));
        e.on_timeout();
        e.on_timeout();
        assert_eq!(e.timeout(), Duration::from_secs(48));
        e.on_timeout();
        assert_eq!(e.timeout(), Duration::from_secs(60));
        for _ in 0..100 {
            e.on_timeout();
        }
        assert_eq!(e.timeout(), Duration::from_secs(60));

        // A fresh sample ends the backoff.
        e.on_sample(Duration::from_millis(1_000));
        assert_eq!(e.backoff(), 0);
        assert!(e.timeout() < Duration::from_secs(4));
    }

    #[test]
    fn backoff_before_any_sample_doubles_the_initial_value() {
        let mut e = RttEstimator::default();
        e.on_timeout();
        assert_eq!(e.timeout(), Duration::from_secs(4));
    }

    #[test]
    fn inverted_bounds_do_not_panic() {
        let e = RttEstimator::new(RttConfig {
            min_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(5),
            initial_timeout: Duration::from_secs(1),
        });
        assert_eq!(e.timeout(), Duration::from_secs(5));
    }

    #[test]
    fn huge_samples_saturate() {
        let mut e = RttEstimator::default();
        e.on_sample(Duration::MAX);
        e.on_sample(Duration::MAX);
        assert_eq!(e.timeout(), Duration::from_secs(60));
    }
}

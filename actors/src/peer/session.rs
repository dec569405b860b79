//! The state of one peer connection, as a plain struct with time passed in:
//! choke and interest flags, the requests outstanding at the peer with their
//! send times, the RTT estimator and the pipeline controller, and the
//! keep-alive and inactivity clocks. The peer actor feeds it socket events
//! and asks it what to do; it does no I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::metrics::{self, LocalHistogram};
use crate::picker::Block;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::rtt::{RttConfig, RttEstimator};

/// What a received block was, from this connection's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// It answers an outstanding request: its budget reservation travels on
    /// with it.
    Expected,
    /// Not outstanding here (late after a timeout, a cancel or a choke, or
    /// never asked): the caller reserves budget for it or drops it, and the
    /// picker decides whether it was ever requested.
    NotOutstanding,
}

/// Timing and limits of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Pipeline controller settings.
    pub pipeline: PipelineConfig,
    /// RTT estimator bounds.
    pub rtt: RttConfig,
    /// Consecutive timeouts after which the peer is snubbed.
    pub snub_after_timeouts: u32,
    /// Send a keep-alive after this long without sending.
    pub keepalive_interval: Duration,
    /// Drop the peer after this long without receiving.
    pub inactivity_timeout: Duration,
}

/// One connection's wire state.
#[derive(Debug)]
pub struct PeerSession {
    config: SessionConfig,
    /// The peer chokes us (the initial state of every connection).
    pub peer_choking: bool,
    /// We told the peer we are interested.
    pub am_interested: bool,
    /// Requests sent and not answered, oldest first, with their send times.
    outstanding: VecDeque<(Block, Instant)>,
    rtt: RttEstimator,
    pipeline: Pipeline,
    consecutive_timeouts: u32,
    snubbed: bool,
    last_recv: Instant,
    last_send: Instant,
    bytes_received: u64,
    /// RTT samples not yet flushed to [`crate::metrics::REQUEST_RTT_US`].
    rtt_samples: LocalHistogram,
}

impl PeerSession {
    /// A fresh connection at `now`: choked and not interested.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        PeerSession {
            config,
            peer_choking: true,
            am_interested: false,
            outstanding: VecDeque::new(),
            rtt: RttEstimator::new(config.rtt),
            pipeline: Pipeline::new(config.pipeline),
            consecutive_timeouts: 0,
            snubbed: false,
            last_recv: now,
            last_send: now,
            bytes_received: 0,
            rtt_samples: LocalHistogram::like(&metrics::REQUEST_RTT_US),
        }
    }

    /// The peer's BEP 10 `reqq`: bounds the pipeline.
    pub fn set_peer_reqq(&mut self, reqq: u32) {
        self.pipeline.set_peer_reqq(reqq);
    }

    /// How many more requests to send now (0 while choked or not
    /// interested). A snubbed peer gets one request at a time.
    pub fn wanted(&self) -> usize {
        if self.peer_choking || !self.am_interested {
            return 0;
        }
        let depth = if self.snubbed {
            1
        } else {
            self.pipeline.depth() as usize
        };
        depth.saturating_sub(self.outstanding.len())
    }

    /// Requests outstanding at the peer.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether the peer is snubbed (repeated timeouts, no block since).
    pub fn is_snubbed(&self) -> bool {
        self.snubbed
    }

    /// Current pipeline depth.
    pub fn depth(&self) -> u32 {
        self.pipeline.depth()
    }

    /// Smoothed RTT, once sampled.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// Block bytes received on this connection.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Download rate over the pipeline's window.
    pub fn download_rate(&self, now: Instant) -> u64 {
        self.pipeline.download_rate(now)
    }

    /// Records requests just sent.
    pub fn requested(&mut self, blocks: &[Block], now: Instant) {
        self.outstanding.extend(blocks.iter().map(|b| (*b, now)));
        self.last_send = now;
    }

    /// Something was sent at `now` (for the keep-alive clock).
    pub fn sent(&mut self, now: Instant) {
        self.last_send = now;
    }

    /// Something was received at `now` (for the inactivity clock).
    pub fn received(&mut self, now: Instant) {
        self.last_recv = now;
    }

    /// A PIECE message for `block` arrived at `now`.
    pub fn block_arrived(&mut self, block: Block, now: Instant) -> Arrival {
        self.last_recv = now;
        let Some(pos) = self.outstanding.iter().position(|(b, _)| *b == block) else {
            return Arrival::NotOutstanding;
        };
        let (_, sent) = self.outstanding.remove(pos).unwrap_or((block, now));
        self.bytes_received += u64::from(block.length);
        let rtt = now.saturating_duration_since(sent);
        self.rtt_samples
            .observe(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
        self.rtt.on_sample(rtt);
        self.pipeline.on_block_received(now, block.length);
        self.consecutive_timeouts = 0;
        self.snubbed = false;
        Arrival::Expected
    }

    /// The peer rejected `block` (BEP 6). `false` if it was not outstanding.
    pub fn rejected(&mut self, block: Block) -> bool {
        self.remove(block)
    }

    /// We cancelled `block`. `false` if it was not outstanding.
    pub fn cancelled(&mut self, block: Block) -> bool {
        self.remove(block)
    }

    fn remove(&mut self, block: Block) -> bool {
        match self.outstanding.iter().position(|(b, _)| *b == block) {
            Some(pos) => {
                self.outstanding.remove(pos);
                true
            }
            None => false,
        }
    }

    /// The peer choked us: every outstanding request is void (BEP 3; with
    /// the fast extension the peer should reject them, and a late block is
    /// still accepted as [`Arrival::NotOutstanding`]). Returns them.
    pub fn choked(&mut self) -> Vec<Block> {
        self.peer_choking = true;
        self.outstanding.drain(..).map(|(b, _)| b).collect()
    }

    /// Every request outstanding longer than the timeout at `now`, removed.
    /// One expiry sweep counts as one timeout for the RTT backoff and the
    /// pipeline, however many requests it takes.
    pub fn expire(&mut self, now: Instant) -> Vec<Block> {
        let timeout = self.rtt.timeout();
        let mut expired = Vec::new();
        self.outstanding.retain(|(b, sent)| {
            if now.saturating_duration_since(*sent) >= timeout {
                expired.push(*b);
                false
            } else {
                true
            }
        });
        if !expired.is_empty() {
            self.rtt.on_timeout();
            self.pipeline.on_timeout();
            self.consecutive_timeouts += 1;
            if self.consecutive_timeouts >= self.config.snub_after_timeouts {
                self.snubbed = true;
            }
        }
        self.pipeline.tick(now);
        expired
    }

    /// Flushes the RTT samples to the process-wide histogram and samples the
    /// pipeline depth while it matters (unchoked and interested). Called on
    /// the peer's tick and when the connection ends.
    pub fn flush_metrics(&mut self) {
        self.rtt_samples.flush_into(&metrics::REQUEST_RTT_US);
        if !self.peer_choking && self.am_interested {
            metrics::PIPELINE_DEPTH.observe(u64::from(self.pipeline.depth()));
        }
    }

    /// Every outstanding request, removed (the connection is ending).
    pub fn drain(&mut self) -> Vec<Block> {
        self.outstanding.drain(..).map(|(b, _)| b).collect()
    }

    /// Whether a keep-alive should be sent at `now`.
    pub fn keepalive_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_send) >= self.config.keepalive_interval
    }

    /// Whether the peer has been silent too long at `now`.
    pub fn inactive(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_recv) >= self.config.inactivity_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SessionConfig {
        SessionConfig {
            pipeline: PipelineConfig::default(),
            rtt: RttConfig::default(),
            snub_after_timeouts: 2,
            keepalive_interval: Duration::from_secs(90),
            inactivity_timeout: Duration::from_secs(180),
        }
    }

    fn block(piece: u32, i: u32) -> Block {
        Block {
            piece,
            begin: i * 16384,
            length: 16384,
        }
    }

    fn unchoked(now: Instant) -> PeerSession {
        let mut s = PeerSession::new(config(), now);
        s.am_interested = true;
        s.peer_choking = false;
        s
    }

    #[test]
    fn no_requests_while_choked_or_uninterested() {
        let now = Instant::now();
        let mut s = PeerSession::new(config(), now);
        assert_eq!(s.wanted(), 0);
        s.am_interested = true;
        assert_eq!(s.wanted(), 0, "still choked");
        s.peer_choking = false;
        assert_eq!(s.wanted(), PipelineConfig::default().initial_depth as usize);
        s.am_interested = false;
        assert_eq!(s.wanted(), 0);
    }

    #[test]
    fn wanted_counts_outstanding_and_grows_in_slow_start() {
        let t0 = Instant::now();
        let mut s = unchoked(t0);
        let first = s.wanted();
        let blocks: Vec<_> = (0..first as u32).map(|i| block(0, i)).collect();
        s.requested(&blocks, t0);
        assert_eq!(s.wanted(), 0);
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(s.block_arrived(blocks[0], t1), Arrival::Expected);
        // One slot freed, and slow start added one more.
        assert_eq!(s.wanted(), 2);
        assert_eq!(s.srtt(), Some(Duration::from_millis(20)));
        assert_eq!(s.bytes_received(), 16384);
    }

    #[test]
    fn unknown_and_repeated_blocks_are_not_outstanding() {
        let t0 = Instant::now();
        let mut s = unchoked(t0);
        s.requested(&[block(1, 0)], t0);
        assert_eq!(s.block_arrived(block(2, 0), t0), Arrival::NotOutstanding);
        assert_eq!(s.block_arrived(block(1, 0), t0), Arrival::Expected);
        assert_eq!(s.block_arrived(block(1, 0), t0), Arrival::NotOutstanding);
    }

    #[test]
    fn choke_voids_every_request() {
        let t0 = Instant::now();
        let mut s = unchoked(t0);
        s.requested(&[block(0, 0), block(0, 1)], t0);
        assert_eq!(s.choked(), vec![block(0, 0), block(0, 1)]);
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.wanted(), 0);
    }

    #[test]
    fn reject_and_cancel_remove_one() {
        let t0 = Instant::now();
        let mut s = unchoked(t0);
        s.requested(&[block(0, 0), block(0, 1)], t0);
        assert!(s.rejected(block(0, 0)));
        assert!(!s.rejected(block(0, 0)));
        assert!(s.cancelled(block(0, 1)));
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn timeouts_expire_old_requests_and_snub() {
        let t0 = Instant::now();
        let mut s = unchoked(t0);
        s.requested(&[block(0, 0)], t0);
        s.requested(&[block(0, 1)], t0 + Duration::from_millis(1500));
        // The initial timeout is 2 s: only the first request has expired.
        let expired = s.expire(t0 + Duration::from_secs(2));
        assert_eq!(expired, vec![block(0, 0)]);
        assert!(!s.is_snubbed());
        // The backoff doubled the timeout to 4 s.
        assert!(s.expire(t0 + Duration::from_millis(4000)).is_empty());
        let expired = s.expire(t0 + Duration::from_millis(5600));
        assert_eq!(expired, vec![block(0, 1)]);
        assert!(s.is_snubbed(), "two consecutive timeouts snub");
        assert_eq!(s.wanted(), 1, "a snubbed peer gets one request");
        // A delivered block lifts the snub.
        let t = t0 + Duration::from_secs(6);
        s.requested(&[block(0, 2)], t);
        assert_eq!(s.block_arrived(block(0, 2), t), Arrival::Expected);
        assert!(!s.is_snubbed());
    }

    #[test]
    fn keepalive_and_inactivity_clocks() {
        let t0 = Instant::now();
        let mut s = PeerSession::new(config(), t0);
        assert!(!s.keepalive_due(t0 + Duration::from_secs(89)));
        assert!(s.keepalive_due(t0 + Duration::from_secs(90)));
        s.sent(t0 + Duration::from_secs(90));
        assert!(!s.keepalive_due(t0 + Duration::from_secs(100)));
        assert!(!s.inactive(t0 + Duration::from_secs(179)));
        s.received(t0 + Duration::from_secs(100));
        assert!(!s.inactive(t0 + Duration::from_secs(200)));
        assert!(s.inactive(t0 + Duration::from_secs(280)));
    }
}

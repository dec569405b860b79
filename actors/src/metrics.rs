//! Process-wide histograms of the actor layer (request RTT, pipeline depth),
//! beside the storage ones re-exported from [`storage::metrics`].
//!
//! Peers record RTT samples per block into a [`LocalHistogram`] of their
//! own and flush it here on their tick (every `peer_tick`), and sample their
//! pipeline depth on the same tick, so the hot path never touches a shared
//! cache line for metrics. Counters and gauges are not here: they already
//! live where the data is (torrent statistics, writer and hash counters,
//! the buffer budget) and the metrics endpoint reads them there.

pub use storage::metrics::{
    BLOCKS_PER_PWRITEV, COUNT_BOUNDS, HASH_LATENCY_US, Histogram, HistogramSnapshot,
    LATENCY_US_BOUNDS, LocalHistogram, WRITE_LATENCY_US,
};

/// Time from sending a request to receiving its block, in microseconds.
pub static REQUEST_RTT_US: Histogram = Histogram::new(LATENCY_US_BOUNDS);
/// Time from a remote's request arriving to its block written to the
/// socket (the serving side's turnaround), in microseconds.
pub static SERVE_TURNAROUND_US: Histogram = Histogram::new(LATENCY_US_BOUNDS);
/// Pipeline depth (requests a peer may have outstanding) of each unchoked,
/// interesting connection, sampled every peer tick.
pub static PIPELINE_DEPTH: Histogram = Histogram::new(COUNT_BOUNDS);

//! What one announce asks a tracker and what it gets back, whatever the
//! transport: the parameters ([`AnnounceParams`]), the outcome
//! ([`Announced`]), the ways it fails ([`AnnounceError`]) and the transport
//! settings. A leaf module shared by [`super::announce`], [`super::http`] and
//! [`super::udp`], so the dispatch and the transports import one way.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::tracker::Event;
use tokio::time::Instant;

use super::dns::DnsError;

/// What one announce tells the tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceParams {
    /// The torrent.
    pub info_hash: [u8; 20],
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// Our listen port.
    pub port: u16,
    /// Bytes uploaded since `started`.
    pub uploaded: u64,
    /// Bytes downloaded since `started`.
    pub downloaded: u64,
    /// Bytes still needed.
    pub left: u64,
    /// `None` for a regular announce.
    pub event: Option<Event>,
    /// Peers wanted.
    pub numwant: u32,
    /// Our random key for this torrent.
    pub key: u32,
    /// The `tracker id` this tracker gave us before.
    pub trackerid: Option<String>,
}

/// A tracker's successful answer, whatever the transport.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announced {
    /// Seconds until the next regular announce.
    pub interval: u32,
    /// Seconds the tracker wants at least between announces.
    pub min_interval: Option<u32>,
    /// Peers in the swarm.
    pub peers: Vec<SocketAddr>,
    /// To echo as `trackerid` (HTTP only).
    pub tracker_id: Option<String>,
    /// A warning to show the user (HTTP only).
    pub warning: Option<String>,
    /// Seeders, if the tracker said.
    pub seeders: Option<u32>,
    /// Leechers, if the tracker said.
    pub leechers: Option<u32>,
}

/// Why one announce failed. Every variant is a failure of that tracker and
/// feeds its breaker.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AnnounceError {
    /// The URL cannot be parsed or has a scheme we do not speak.
    #[error("bad tracker URL: {0}")]
    BadUrl(String),
    /// The tracker's host did not resolve.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// Connecting, sending or receiving failed (includes timeouts and
    /// redirect loops).
    #[error("HTTP: {0}")]
    Http(String),
    /// The tracker answered with a non-2xx status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body is larger than the configured cap.
    #[error("response body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The tracker refused: its `failure reason` (HTTP) or error message
    /// (UDP action 3), shown to the user.
    #[error("tracker says: {0}")]
    Failure(String),
    /// The HTTP response body is not a valid announce response.
    #[error("bad response: {0}")]
    Response(protocol::tracker::TrackerError),
    /// A UDP datagram from the tracker with our transaction id is malformed
    /// or has the wrong action.
    #[error("bad UDP response: {0}")]
    Udp(String),
    /// Not sent by our own policy (a UDP tracker while a SOCKS5 proxy is
    /// set).
    #[error("{0}")]
    Refused(String),
    /// No UDP answer after every retransmission.
    #[error("no UDP answer after {0} attempts")]
    UdpTimeout(u32),
    /// A socket operation failed.
    #[error("I/O: {0}")]
    Io(String),
    /// The announce did not finish in time.
    #[error("announce timed out")]
    Timeout,
}

/// A UDP connection id and when it was obtained (BEP 15: valid a minute).
pub type UdpConnection = (u64, Instant);

/// Transport settings one announce needs, copied from the tracker config.
#[derive(Clone, Copy, Debug)]
pub struct TransportConfig {
    /// Largest HTTP body read.
    pub max_body_size: usize,
    /// First UDP timeout; the n-th retransmission waits `base * 2^n`.
    pub udp_base_timeout: Duration,
    /// Retransmissions after the first UDP send.
    pub udp_max_retransmits: u32,
    /// How long a UDP connection id is reused.
    pub udp_connection_lifetime: Duration,
}

/// What an announce task returns besides the outcome.
#[derive(Debug, Default)]
pub struct TaskExtras {
    /// The UDP connection id to cache for this tracker, if any.
    pub udp_connection: Option<UdpConnection>,
    /// UDP datagrams ignored: wrong source address or transaction id.
    pub ignored_datagrams: u64,
}

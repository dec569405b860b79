//! Every tunable of the actor layer, with its default, in one place.
//!
//! Each mailbox capacity is a named value here: no actor picks its own.
//!
//! The whole tree (this struct and its parts from the other modules and the
//! storage crate) is serde-able and rejects unknown fields, so it is the
//! schema of the `--config` TOML file: one table per part (`[budget]`,
//! `[pipeline]`, `[disk.writer]`, ...), durations in integer milliseconds
//! under keys ending in `_ms`, optional limits as integers where 0 means
//! none (see [`storage::serde_fmt`]). Fields left out keep their defaults.

use std::time::Duration;

use storage::{DiskIoConfig, RecheckConfig, ResumePolicy};

use crate::budget::BudgetConfig;
use crate::choker::ChokerConfig;
use crate::dht::DhtConfig;
use crate::magnet::MetadataConfig;
use crate::mse_stream::Encryption;
use crate::pex::PexConfig;
use crate::picker::PickerConfig;
use crate::pipeline::PipelineConfig;
use crate::rtt::RttConfig;
use crate::stream::StreamConfig;
use crate::tracker::TrackerConfig;

/// Configuration of a [`crate::session::Session`] and everything it spawns.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Commands waiting for the session actor. Default 64.
    pub session_mailbox: usize,
    /// Events from peers waiting for their torrent actor. Default 1024: a
    /// torrent serves up to `max_peers_per_torrent` peers, each with at most
    /// a few messages in flight since data sends wait for room.
    pub torrent_mailbox: usize,
    /// Commands (cancels, HAVEs, interest) waiting for one peer actor.
    /// Default 512: the torrent never waits on a peer (it uses `try_send`),
    /// so this absorbs a burst of HAVEs while the peer writes to its socket.
    pub peer_mailbox: usize,
    /// Bytes of block data in flight, process-wide, and its watermarks.
    pub budget: BudgetConfig,
    /// Request pipeline of each connection.
    pub pipeline: PipelineConfig,
    /// Request timeout bounds.
    pub rtt: RttConfig,
    /// Piece picking, endgame and bans.
    pub picker: PickerConfig,
    /// Hash worker threads; 0 means one per core.
    pub hash_workers: usize,
    /// Hash jobs that may wait for a worker. Default 64 pieces.
    pub hash_queue: usize,
    /// Disk writer and reader threads and their mailboxes.
    pub disk: DiskIoConfig,
    /// Recheck read sizes.
    pub recheck: RecheckConfig,
    /// How often resume data is saved.
    pub resume: ResumePolicy,
    /// TCP connect timeout. Default 10 s.
    #[serde(
        rename = "connect_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub connect_timeout: Duration,
    /// Time allowed for the remote handshake. Default 10 s.
    #[serde(
        rename = "handshake_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub handshake_timeout: Duration,
    /// A keep-alive is sent after this long without sending. Default 90 s
    /// (peers commonly drop connections silent for 120 s).
    #[serde(
        rename = "keepalive_interval_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub keepalive_interval: Duration,
    /// A peer that sends nothing for this long is dropped. Default 180 s.
    #[serde(
        rename = "inactivity_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub inactivity_timeout: Duration,
    /// A write to a peer socket that makes no progress for this long ends
    /// the connection. Default 30 s.
    #[serde(rename = "write_timeout_ms", with = "storage::serde_fmt::duration_ms")]
    pub write_timeout: Duration,
    /// Connections per torrent. Default 50.
    pub max_peers_per_torrent: usize,
    /// Connections in the whole process. Default 500.
    pub max_connections: usize,
    /// Addresses one torrent's address book holds (from `--peer`, trackers,
    /// the DHT and PEX). A full book first forgets an address it gave up
    /// on, else takes no more: a tracker or a swarm that names thousands of
    /// peers cannot grow it. Banned hosts are kept apart and never re-added.
    /// Default 4000.
    pub max_known_addrs_per_torrent: usize,
    /// Attempts to reach a known peer address before it is forgotten
    /// (reset when a connection succeeds). Default 5.
    pub reconnect_attempts: u32,
    /// Wait before the first reconnect; doubles each attempt. Default 1 s.
    #[serde(
        rename = "reconnect_backoff_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub reconnect_backoff: Duration,
    /// Connections to one address that may end in a protocol error before
    /// the address is refused for good (each earlier one is retried with
    /// the reconnect backoff). Default 3: one error may be our misreading
    /// of an odd client, three in a row are a pattern.
    pub max_protocol_strikes: u32,
    /// Consecutive request timeouts after which a peer is snubbed (one
    /// request at a time until it delivers again). Default 2.
    pub snub_after_timeouts: u32,
    /// Socket receive buffer (SO_RCVBUF) of dialled and accepted
    /// connections; `None` leaves the OS default (Linux autotuning).
    /// Default `None`.
    #[serde(with = "storage::serde_fmt::zero_is_none")]
    pub socket_recv_buffer: Option<usize>,
    /// Socket send buffer (SO_SNDBUF) of dialled and accepted
    /// connections; `None` leaves the OS default.
    #[serde(with = "storage::serde_fmt::zero_is_none")]
    pub socket_send_buffer: Option<usize>,
    /// Bytes a connection reads, while the socket has them ready, before it
    /// hands their blocks to the torrent in one message. Default 256 KiB:
    /// sixteen blocks, so one message (one wake-up of the torrent) carries
    /// many. Each read fills a buffer of a quarter of this (plus room for a
    /// partial frame), the most memory one block keeps alive.
    pub read_buffer: usize,
    /// Largest message accepted from a peer (length prefix).
    pub max_message_len: u32,
    /// How often a torrent publishes its statistics. Default 1 s.
    #[serde(rename = "stats_interval_ms", with = "storage::serde_fmt::duration_ms")]
    pub stats_interval: Duration,
    /// How often peers check request timeouts and keep-alives. Default 250 ms.
    #[serde(rename = "peer_tick_ms", with = "storage::serde_fmt::duration_ms")]
    pub peer_tick: Duration,
    /// Largest block a peer may request from us. Default 16 KiB (what every
    /// mainstream client asks for; larger requests are rejected).
    pub max_upload_block: u32,
    /// Requests one peer may have queued with us; one more drops the peer
    /// and refuses its address (a flood). Advertised as `reqq`. Default 500.
    pub max_upload_queue: usize,
    /// Bytes of block messages queued for one socket before serving pauses
    /// until they are written. Default 1 MiB.
    pub max_send_queue: usize,
    /// Most whole pieces each connection keeps read ahead (cached or being
    /// read) for its next requests, counted in the buffer budget; fewer
    /// when the remote's queued requests span fewer pieces. Default 4:
    /// with one piece being sent, three reads can be waiting on a busy disk
    /// or a busy machine without stalling the socket (8 measured no faster
    /// on the shared 2-core machine).
    pub read_cache_pieces: usize,
    /// Upload slots and rotation.
    pub choker: ChokerConfig,
    /// Super-seeding (BEP 16) while a torrent seeds: peers are shown no
    /// piece at first, then one rare piece at a time, the next once another
    /// peer announces it (see `torrent::superseed`). For a seed whose upload
    /// is the swarm's bottleneck; it slows a swarm that has other seeds.
    /// Default off.
    pub super_seed: bool,
    /// Process-wide upload limit in bytes per second; `None` is unlimited.
    #[serde(with = "storage::serde_fmt::zero_is_none")]
    pub upload_limit: Option<u64>,
    /// Process-wide download limit in bytes per second; `None` is unlimited.
    #[serde(with = "storage::serde_fmt::zero_is_none")]
    pub download_limit: Option<u64>,
    /// Incoming connections whose handshake is still being read, at most.
    /// Default 64.
    pub max_pending_handshakes: usize,
    /// MSE/PE (message stream encryption) for peer connections: `prefer`
    /// (dial encrypted and retry in plaintext if that fails; accept both),
    /// `require` (RC4 only, both ways: plaintext peers are refused) or
    /// `disable` (plaintext only: encrypted peers are refused). Default
    /// `prefer`.
    pub encryption: Encryption,
    /// Network interface every socket is bound to (SO_BINDTODEVICE: peers,
    /// the listener, HTTP and UDP trackers); `""` for none. While it is
    /// down or missing nothing goes out (connections fail and are
    /// retried), never by another route. Default `""`.
    pub bind_interface: String,
    /// Local address of outgoing peer and tracker connections; `""` lets
    /// the OS choose. Default `""`.
    pub bind_address: String,
    /// SOCKS5 proxy for outgoing peer connections and HTTP trackers,
    /// `socks5://[user:password@]host:port`; `""` for none. While set, UDP
    /// trackers and the DHT are not used (their UDP would bypass the
    /// proxy) and tracker names are resolved by the proxy. Default `""`.
    pub proxy: String,
    /// The tracker session: timeouts, breakers, backoff, rate limit, DNS.
    pub tracker: TrackerConfig,
    /// The DHT (BEP 5): bounds of every table and queue, intervals, rate
    /// limits, bootstrap nodes.
    pub dht: DhtConfig,
    /// The metadata phase of a magnet link (BEP 9): size limit, peers,
    /// requests and timeouts.
    pub metadata: MetadataConfig,
    /// Peer exchange (BEP 11): interval and bounds.
    pub pex: PexConfig,
    /// Streaming files over HTTP while they download.
    pub stream: StreamConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            session_mailbox: 64,
            torrent_mailbox: 1024,
            peer_mailbox: 512,
            budget: BudgetConfig::default(),
            pipeline: PipelineConfig::default(),
            rtt: RttConfig::default(),
            picker: PickerConfig::default(),
            hash_workers: 0,
            hash_queue: 64,
            disk: DiskIoConfig::default(),
            recheck: RecheckConfig::default(),
            resume: ResumePolicy::default(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(90),
            inactivity_timeout: Duration::from_secs(180),
            write_timeout: Duration::from_secs(30),
            max_peers_per_torrent: 50,
            max_connections: 500,
            max_known_addrs_per_torrent: 4000,
            reconnect_attempts: 5,
            reconnect_backoff: Duration::from_secs(1),
            max_protocol_strikes: 3,
            snub_after_timeouts: 2,
            socket_recv_buffer: None,
            socket_send_buffer: None,
            read_buffer: 256 * 1024,
            max_message_len: protocol::wire::DEFAULT_MAX_MESSAGE_LEN,
            stats_interval: Duration::from_secs(1),
            peer_tick: Duration::from_millis(250),
            max_upload_block: 16 * 1024,
            max_upload_queue: 500,
            max_send_queue: 1 << 20,
            read_cache_pieces: 4,
            choker: ChokerConfig::default(),
            super_seed: false,
            upload_limit: None,
            download_limit: None,
            max_pending_handshakes: 64,
            encryption: Encryption::Prefer,
            bind_interface: String::new(),
            bind_address: String::new(),
            proxy: String::new(),
            tracker: TrackerConfig::default(),
            dht: DhtConfig::default(),
            metadata: MetadataConfig::default(),
            pex: PexConfig::default(),
            stream: StreamConfig::default(),
        }
    }
}

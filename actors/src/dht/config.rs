//! `[dht]`: every bound and interval of the DHT, with its default.

use std::num::NonZeroU32;
use std::time::Duration;

use super::lookup::LookupConfig;
use super::routing::RoutingConfig;
use super::store::StoreConfig;

/// The DHT's configuration: the `[dht]` table of the config file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhtConfig {
    /// Whether the process runs a DHT node at all (`--no-dht` clears it).
    /// Private torrents never use it either way. Default true.
    pub enabled: bool,
    /// The interface the UDP socket is bound to (SO_BINDTODEVICE): the
    /// command copies the top-level `bind_interface` here (not a key of its
    /// own).
    #[serde(skip)]
    pub bind_interface: Option<String>,
    /// UDP port of the DHT; 0 means the same number as the TCP listen port
    /// (what the session binds is its decision). Default 0.
    pub port: u16,
    /// Commands waiting for the DHT actor. Default 256.
    pub mailbox_capacity: usize,
    /// `host:port` of the nodes a node with an empty table starts from,
    /// resolved through the DNS cache. Default: the well-known routers of
    /// BitTorrent, Transmission and uTorrent. Answers from these (when named
    /// by host name) are used to find other nodes, but the routers
    /// themselves are not put in the routing table (as libtorrent does):
    /// they answer every node on the internet and are no one's neighbours.
    pub bootstrap_nodes: Vec<String>,
    /// k: nodes per bucket, and how many closest nodes a lookup converges
    /// on (BEP 5: 8). Default 8.
    pub bucket_size: usize,
    /// Nodes waiting per bucket for a place to free. Default 8.
    pub replacement_cache: usize,
    /// Nodes in the routing table at most (buckets; caches are bounded by
    /// `replacement_cache` each, 160 buckets at most). Default 1024.
    pub max_nodes: usize,
    /// Nodes per IPv4 address in the routing table. Default 1 (as
    /// libtorrent's `dht_restrict_routing_ips`); raise it for test networks
    /// with many nodes on 127.0.0.1.
    pub max_nodes_per_ip: usize,
    /// Unanswered queries in a row after which a node is bad. Default 2.
    pub max_failures: u8,
    /// How long an answer keeps a node good (BEP 5: 15 minutes).
    #[serde(rename = "node_good_for_ms", with = "storage::serde_fmt::duration_ms")]
    pub node_good_for: Duration,
    /// A bucket unchanged this long is refreshed (BEP 5: 15 minutes).
    #[serde(
        rename = "bucket_refresh_interval_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub bucket_refresh_interval: Duration,
    /// Queries in flight per lookup (alpha). Default 3.
    pub alpha: usize,
    /// Candidates one lookup keeps. Default 64.
    pub max_lookup_candidates: usize,
    /// Queries one lookup sends at most. Default 128.
    pub max_lookup_queries: usize,
    /// Peers one lookup collects at most. Default 1000.
    pub max_lookup_peers: usize,
    /// Lookups running at once (torrents', refreshes, bootstrap and
    /// one-shot ones). Default 32.
    pub max_lookups: usize,
    /// Our queries awaiting an answer, across everything. Default 256.
    pub max_queries_in_flight: usize,
    /// A query unanswered this long has failed. Default 2 s.
    #[serde(rename = "query_timeout_ms", with = "storage::serde_fmt::duration_ms")]
    pub query_timeout: Duration,
    /// Torrents registered at most. Default 10 000.
    pub max_torrents: usize,
    /// Time between a torrent's `get_peers` lookups (each followed by its
    /// `announce_peer`s). Default 15 minutes (libtorrent's interval).
    #[serde(
        rename = "reannounce_interval_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub reannounce_interval: Duration,
    /// Wait before a failed bootstrap, or a torrent lookup that reached no
    /// node, is tried again. Default 30 s.
    #[serde(rename = "retry_interval_ms", with = "storage::serde_fmt::duration_ms")]
    pub retry_interval: Duration,
    /// How often the token secret rotates (BEP 5: 5 minutes, so tokens
    /// live 5 to 10 minutes).
    #[serde(rename = "token_rotation_ms", with = "storage::serde_fmt::duration_ms")]
    pub token_rotation: Duration,
    /// Peers announced to us kept in all. Default 20 000.
    pub max_stored_peers: usize,
    /// Peers announced to us kept per info-hash. Default 200.
    pub max_stored_peers_per_torrent: usize,
    /// How long an announced peer is kept. Default 30 minutes.
    #[serde(
        rename = "stored_peer_ttl_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub stored_peer_ttl: Duration,
    /// Peers in one `get_peers` answer. Default 50 (fits a datagram with
    /// 8 nodes).
    pub max_peers_per_reply: usize,
    /// Incoming queries per second from one IP address. Default 10
    /// (libtorrent blocks above 5).
    pub queries_per_second_per_ip: NonZeroU32,
    /// Burst above that rate from one address. Default 20.
    pub query_burst_per_ip: NonZeroU32,
    /// Incoming queries per second from everyone. Default 1000.
    pub queries_per_second: NonZeroU32,
    /// Burst above that rate. Default 2000.
    pub query_burst: NonZeroU32,
    /// Addresses the per-address limit tracks at most: above it, idle
    /// ones are forgotten, and if that is not enough the table is cleared
    /// (the total limit still holds). Default 10 000.
    pub max_rate_limited_sources: usize,
    /// Datagrams waiting to be sent; more are dropped and counted.
    /// Default 1024.
    pub max_queued_packets: usize,
    /// Largest datagram decoded. Default 2048.
    pub max_packet_size: usize,
    /// Time between maintenance rounds (token rotation, expiry, bucket
    /// refresh, a liveness ping). Default 1 s.
    #[serde(
        rename = "maintenance_interval_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub maintenance_interval: Duration,
    /// Largest routing-table state file read. Default 1 MiB.
    pub max_state_file: usize,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            enabled: true,
            bind_interface: None,
            port: 0,
            mailbox_capacity: 256,
            bootstrap_nodes: vec![
                "router.bittorrent.com:6881".into(),
                "dht.transmissionbt.com:6881".into(),
                "router.utorrent.com:6881".into(),
            ],
            bucket_size: 8,
            replacement_cache: 8,
            max_nodes: 1024,
            max_nodes_per_ip: 1,
            max_failures: 2,
            node_good_for: Duration::from_secs(15 * 60),
            bucket_refresh_interval: Duration::from_secs(15 * 60),
            alpha: 3,
            max_lookup_candidates: 64,
            max_lookup_queries: 128,
            max_lookup_peers: 1000,
            max_lookups: 32,
            max_queries_in_flight: 256,
            query_timeout: Duration::from_secs(2),
            max_torrents: 10_000,
            reannounce_interval: Duration::from_secs(15 * 60),
            retry_interval: Duration::from_secs(30),
            token_rotation: Duration::from_secs(5 * 60),
            max_stored_peers: 20_000,
            max_stored_peers_per_torrent: 200,
            stored_peer_ttl: Duration::from_secs(30 * 60),
            max_peers_per_reply: 50,
            queries_per_second_per_ip: NonZeroU32::new(10).expect("non-zero"),
            query_burst_per_ip: NonZeroU32::new(20).expect("non-zero"),
            queries_per_second: NonZeroU32::new(1000).expect("non-zero"),
            query_burst: NonZeroU32::new(2000).expect("non-zero"),
            max_rate_limited_sources: 10_000,
            max_queued_packets: 1024,
            max_packet_size: 2048,
            maintenance_interval: Duration::from_secs(1),
            max_state_file: 1 << 20,
        }
    }
}

impl DhtConfig {
    /// The routing table's part.
    pub fn routing(&self) -> RoutingConfig {
        RoutingConfig {
            bucket_size: self.bucket_size,
            replacement_cache: self.replacement_cache,
            max_nodes: self.max_nodes,
            max_nodes_per_ip: self.max_nodes_per_ip,
            max_failures: self.max_failures,
            good_for: self.node_good_for,
            refresh_interval: self.bucket_refresh_interval,
        }
    }

    /// A lookup's part.
    pub fn lookup(&self) -> LookupConfig {
        LookupConfig {
            alpha: self.alpha,
            k: self.bucket_size,
            max_candidates: self.max_lookup_candidates,
            max_queries: self.max_lookup_queries,
            max_peers: self.max_lookup_peers,
        }
    }

    /// The peer store's part.
    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            max_per_torrent: self.max_stored_peers_per_torrent,
            max_total: self.max_stored_peers,
            ttl: self.stored_peer_ttl,
        }
    }

    /// Settings that parse but cannot work, named by key, for the config
    /// loader to report (a zero mailbox would panic tokio; zero lookups or
    /// queries in flight would never find anything).
    pub fn invalid_keys(&self) -> Vec<&'static str> {
        let nonzero = [
            ("dht.mailbox_capacity", self.mailbox_capacity),
            ("dht.bucket_size", self.bucket_size),
            ("dht.max_nodes", self.max_nodes),
            ("dht.max_nodes_per_ip", self.max_nodes_per_ip),
            ("dht.max_failures", usize::from(self.max_failures)),
            ("dht.alpha", self.alpha),
            ("dht.max_lookup_candidates", self.max_lookup_candidates),
            ("dht.max_lookup_queries", self.max_lookup_queries),
            ("dht.max_lookups", self.max_lookups),
            ("dht.max_queries_in_flight", self.max_queries_in_flight),
            ("dht.max_queued_packets", self.max_queued_packets),
            ("dht.max_packet_size", self.max_packet_size),
        ];
        let mut bad: Vec<&'static str> = nonzero
            .iter()
            .filter(|(_, v)| *v == 0)
            .map(|(k, _)| *k)
            .collect();
        let durations = [
            ("dht.query_timeout_ms", self.query_timeout),
            ("dht.token_rotation_ms", self.token_rotation),
            ("dht.maintenance_interval_ms", self.maintenance_interval),
            ("dht.reannounce_interval_ms", self.reannounce_interval),
            ("dht.retry_interval_ms", self.retry_interval),
        ];
        bad.extend(
            durations
                .iter()
                .filter(|(_, d)| d.is_zero())
                .map(|(k, _)| *k),
        );
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeros_are_named() {
        assert!(DhtConfig::default().invalid_keys().is_empty());
        let c = DhtConfig {
            alpha: 0,
            query_timeout: Duration::ZERO,
            ..DhtConfig::default()
        };
        assert_eq!(c.invalid_keys(), vec!["dht.alpha", "dht.query_timeout_ms"]);
    }
}

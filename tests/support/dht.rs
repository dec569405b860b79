//! A loopback DHT for the whole-client tests: a router node (actors' own
//! DHT in-process on 127.0.0.1) that every node bootstraps from, and the
//! `[dht]` config that lets actorrent's nodes share one address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The router: an actors DHT node on 127.0.0.1 with no bootstrap nodes of
/// its own, many nodes per address and no per-address rate limit. Stopped
/// (and its task joined) on drop.
pub struct Router {
    rt: tokio::runtime::Runtime,
    handle: actors::dht::DhtHandle,
    join: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Router {
    pub fn start() -> Router {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let mut cfg = actors::dht::DhtConfig {
            bootstrap_nodes: Vec::new(),
            max_nodes_per_ip: 1000,
            ..actors::dht::DhtConfig::default()
        };
        let many = std::num::NonZeroU32::new(100_000).unwrap();
        cfg.queries_per_second_per_ip = many;
        cfg.query_burst_per_ip = many;
        let (handle, join) = rt
            .block_on(actors::dht::spawn(
                cfg,
                actors::dht::DhtStart {
                    bind: "127.0.0.1:0".parse().unwrap(),
                    state_file: None,
                    dns: None,
                    seed: Some(11),
                },
                stop.clone(),
            ))
            .unwrap();
        Router {
            rt,
            handle,
            join: Some(join),
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Waits until some node announced a peer to the router.
    pub fn wait_announced(&self, limit: Duration) -> bool {
        super::wait_until(limit, || {
            self.rt
                .block_on(self.handle.stats())
                .is_ok_and(|s| s.stored_peers >= 1)
        })
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(j) = self.join.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), j).await });
        }
    }
}

/// A config for actorrent DHT nodes on 127.0.0.1 bootstrapped from
/// `bootstrap`: many nodes per address and no per-address rate limit
/// (everyone here shares 127.0.0.1), quick retries.
pub fn loopback_dht_config(dir: &Path, bootstrap: SocketAddr) -> PathBuf {
    let path = dir.join("dht.toml");
    std::fs::write(
        &path,
        format!(
            "[dht]\nbootstrap_nodes = [\"{bootstrap}\"]\nmax_nodes_per_ip = 1000\n\
             queries_per_second_per_ip = 100000\nquery_burst_per_ip = 100000\n\
             retry_interval_ms = 500\nquery_timeout_ms = 1000\n"
        ),
    )
    .unwrap();
    path
}

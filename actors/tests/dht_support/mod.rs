//! Shared pieces of the DHT tests (and the DHT benchmark): a config for
//! many nodes on 127.0.0.1, a swarm of DHT actors there, and a bounded
//! stats poller.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actors::dht::{DhtConfig, DhtHandle, DhtStart, DhtStats, spawn};
use protocol::metainfo::InfoHash;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Every node shares 127.0.0.1, so the per-address bounds that protect a
/// public node (one table entry and 10 queries a second per address) are
/// raised; everything else keeps its default.
pub fn loopback_config(bootstrap: &[SocketAddr]) -> DhtConfig {
    let many = NonZeroU32::new(1_000_000).expect("non-zero");
    DhtConfig {
        bootstrap_nodes: bootstrap.iter().map(ToString::to_string).collect(),
        max_nodes_per_ip: 100_000,
        queries_per_second_per_ip: many,
        query_burst_per_ip: many,
        queries_per_second: many,
        query_burst: many,
        query_timeout: Duration::from_millis(1000),
        retry_interval: Duration::from_millis(500),
        ..DhtConfig::default()
    }
}

/// One running DHT actor.
pub struct Member {
    pub handle: DhtHandle,
    pub cancel: CancellationToken,
    pub join: Option<JoinHandle<()>>,
    pub state_file: PathBuf,
}

impl Member {
    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Cancels the actor and waits (bounded) until it has saved its state.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(j) = self.join.take() {
            tokio::time::timeout(Duration::from_secs(10), j)
                .await
                .expect("the DHT actor stops within 10 s")
                .expect("the DHT actor did not panic");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts one DHT actor on 127.0.0.1 with `config`.
pub async fn start(config: DhtConfig, state_file: &Path, seed: u64) -> Member {
    let cancel = CancellationToken::new();
    let (handle, join) = spawn(
        config,
        DhtStart {
            bind: "127.0.0.1:0".parse().expect("address"),
            state_file: Some(state_file.to_path_buf()),
            dns: None,
            seed: Some(seed),
        },
        cancel.clone(),
    )
    .await
    .expect("bind a UDP socket on 127.0.0.1");
    Member {
        handle,
        cancel,
        join: Some(join),
        state_file: state_file.to_path_buf(),
    }
}

/// `n` nodes: node 0 with no bootstrap node, every other one bootstrapped
/// from node 0 (the way a new DHT is seeded from one router). They join
/// one after the other, each once the previous one's bootstrap lookups
/// are done, the way a DHT grows: a node that joined while the DHT was a
/// few nodes would otherwise not be known around its id until its first
/// bucket refresh, 15 minutes later.
pub async fn swarm(n: usize, dir: &Path, tweak: impl Fn(&mut DhtConfig)) -> Vec<Member> {
    let mut first = loopback_config(&[]);
    tweak(&mut first);
    let mut members = vec![start(first, &dir.join("0.state"), 1).await];
    let seed = members[0].addr();
    for i in 1..n {
        let mut c = loopback_config(&[seed]);
        tweak(&mut c);
        let m = start(c, &dir.join(format!("{i}.state")), i as u64 + 1).await;
        wait_stats(&m.handle, Duration::from_secs(30), "bootstrapped", |s| {
            s.lookups_started >= 1 && s.lookups_running == 0
        })
        .await;
        members.push(m);
    }
    members
}

/// Polls `handle`'s stats until `pred` holds; panics with the last stats
/// after `limit`.
pub async fn wait_stats(
    handle: &DhtHandle,
    limit: Duration,
    what: &str,
    pred: impl Fn(&DhtStats) -> bool,
) -> DhtStats {
    let deadline = Instant::now() + limit;
    loop {
        let s = handle.stats().await.expect("DHT actor running");
        if pred(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}; last stats {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Registers `ih` on `m` announcing `port`, and waits (bounded) until its
/// lookup has sent `announce_peer` to `at_least` nodes. Returns the peer
/// channel (keep it: a closed channel unregisters the torrent).
pub async fn announce(
    m: &DhtHandle,
    ih: InfoHash,
    port: u16,
    at_least: u64,
) -> mpsc::Receiver<Vec<SocketAddr>> {
    let before = m.stats().await.expect("DHT actor running").announces_sent;
    let (tx, rx) = mpsc::channel(8);
    m.register(ih, Some(port), tx).await.expect("register");
    wait_stats(m, Duration::from_secs(20), "announced", |s| {
        s.announces_sent >= before + at_least
    })
    .await;
    rx
}

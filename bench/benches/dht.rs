//! The DHT: lookups on in-process DHTs of N = 64, 256 and 1024 nodes, and
//! the incoming-query rate one node sustains.
//!
//! Two kinds of DHT, each with N nodes:
//!
//! - **sim**: the sans-IO nodes (`actors::dht::node::Node`) in the
//!   simulated network of `actors::dht::sim` (no sockets, a virtual clock,
//!   instant delivery). Timing a lookup there measures the CPU cost of the
//!   whole lookup: the asking node and every node that answers.
//! - **udp**: DHT actors on 127.0.0.1, one tokio task and one UDP socket
//!   each, in this process (2 tokio workers). A lookup is timed from
//!   `find_node` to its answer.
//!
//! Before divan's timings, `main` prints per N: memory per node (bytes
//! allocated and still live after bootstrap, divided by N, counted by this
//! binary's allocator), rounds per lookup, queries and datagrams per
//! lookup; and a flood test: queries per second one actor answers from 200
//! source addresses (127.0.0.2 to 127.0.0.201), with its live memory after
//! 10 000 and after 100 000 queries. Under `cargo test` (no `--bench`) the
//! report uses N = 64 only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use actors::dht::sim::Network;
use actors::dht::{DhtConfig, LookupKind, NodeId};
use divan::Bencher;
use protocol::krpc::{Limits, Message, Method};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::UdpSocket;

#[path = "../../actors/tests/dht_support/mod.rs"]
mod dht_support;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn sim_config() -> DhtConfig {
    let many = std::num::NonZeroU32::new(1_000_000).expect("non-zero");
    DhtConfig {
        queries_per_second_per_ip: many,
        query_burst_per_ip: many,
        queries_per_second: many,
        query_burst: many,
        ..DhtConfig::default()
    }
}

fn sim(n: usize) -> Network {
    let mut net = Network::new(n, &sim_config(), 1);
    net.bootstrap();
    net
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

struct Udp {
    members: Vec<dht_support::Member>,
    _dir: tempfile::TempDir,
}

async fn udp(n: usize) -> Udp {
    let dir = tempfile::tempdir().expect("tempdir");
    let members = dht_support::swarm(n, dir.path(), |c| {
        c.mailbox_capacity = 1024;
    })
    .await;
    for m in &members {
        dht_support::wait_stats(&m.handle, Duration::from_secs(120), "joined", |s| {
            s.nodes >= 8 && s.lookups_running == 0
        })
        .await;
    }
    Udp { members, _dir: dir }
}

/// Per-lookup figures over `lookups` find_node and get_peers lookups from
/// random nodes of the simulated DHT.
fn sim_report(n: usize, lookups: usize) {
    let before = live();
    let mut net = sim(n);
    let per_node = (live() - before) / n as isize;
    let mut rng = SmallRng::seed_from_u64(9);
    let (mut rounds, mut queries, mut datagrams) = (0u64, 0u64, 0u64);
    let t = Instant::now();
    for i in 0..lookups {
        let kind = if i % 2 == 0 {
            LookupKind::FindNode
        } else {
            LookupKind::GetPeers
        };
        let d0 = net.delivered;
        let s = net
            .lookup(i * 37 % n, NodeId::random(&mut rng), kind)
            .expect("lookup ends");
        datagrams += net.delivered - d0;
        rounds += u64::from(s.rounds);
        queries += u64::from(s.queries);
    }
    let secs = t.elapsed().as_secs_f64();
    let l = lookups as f64;
    println!(
        "sim  N={n:<5} memory/node {:>7} B   rounds/lookup {:.2}   queries/lookup {:.1}   datagrams/lookup {:.1}   lookups/s {:.0}",
        per_node,
        rounds as f64 / l,
        queries as f64 / l,
        datagrams as f64 / l,
        l / secs
    );
}

fn udp_report(n: usize, lookups: usize) {
    runtime().block_on(async {
        let before = live();
        let t = Instant::now();
        let net = udp(n).await;
        let joined = t.elapsed();
        let per_node = (live() - before) / n as isize;
        let mut rng = SmallRng::seed_from_u64(10);
        let (mut rounds, mut queries, mut packets) = (0u64, 0u64, 0u64);
        let out_before = total_out(&net).await;
        let t = Instant::now();
        for i in 0..lookups {
            let m = &net.members[i * 37 % n];
            let s = m
                .handle
                .find_node(NodeId::random(&mut rng))
                .await
                .expect("lookup");
            rounds += u64::from(s.rounds);
            queries += u64::from(s.queries);
        }
        let secs = t.elapsed().as_secs_f64();
        packets += total_out(&net).await - out_before;
        let l = lookups as f64;
        println!(
            "udp  N={n:<5} memory/node {:>7} B   rounds/lookup {:.2}   queries/lookup {:.1}   datagrams/lookup {:.1}   lookups/s {:.0} (one at a time)   joined in {:.2} s",
            per_node,
            rounds as f64 / l,
            queries as f64 / l,
            packets as f64 / l,
            l / secs,
            joined.as_secs_f64()
        );
        for mut m in net.members {
            m.cancel.cancel();
            if let Some(j) = m.join.take() {
                let _ = j.await;
            }
        }
    });
}

/// Datagrams sent by every member (all traffic, background included).
async fn total_out(net: &Udp) -> u64 {
    let mut t = 0;
    for m in &net.members {
        t += m.handle.stats().await.expect("stats").packets_out;
    }
    t
}

/// One actor flooded with find_node and get_peers queries from 200
/// addresses, each a closed loop with `WINDOW` queries outstanding (a lost
/// datagram is replaced after 100 ms), until `total` answers are in.
fn flood_report(total: usize) {
    const CLIENTS: usize = 200;
    const WINDOW: usize = 2;
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let many = std::num::NonZeroU32::new(10_000_000).expect("non-zero");
        let config = DhtConfig {
            bootstrap_nodes: vec![],
            queries_per_second_per_ip: many,
            query_burst_per_ip: many,
            queries_per_second: many,
            query_burst: many,
            ..DhtConfig::default()
        };
        let m = dht_support::start(config, &dir.path().join("f.state"), 5).await;
        let to = m.addr();
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let answered = answered.clone();
            tasks.spawn(async move {
                let ip = format!("127.0.0.{}:0", c + 2);
                let sock = UdpSocket::bind(&ip).await.expect("bind 127.0.0.x");
                let mut buf = vec![0u8; 2048];
                let mut k: u32 = 0;
                let query = |k: u32| {
                    let method = if k % 2 == 0 {
                        Method::FindNode { target: [c as u8; 20] }
                    } else {
                        Method::GetPeers { info_hash: [k as u8; 20] }
                    };
                    Message::query(&k.to_be_bytes(), [c as u8 ^ 0x55; 20], method).encode()
                };
                while answered.load(Ordering::Relaxed) < total {
                    for _ in 0..WINDOW {
                        k += 1;
                        let _ = sock.send_to(&query(k), to).await;
                    }
                    for _ in 0..WINDOW {
                        match tokio::time::timeout(Duration::from_millis(100), sock.recv_from(&mut buf)).await {
                            Ok(Ok((len, _))) => {
                                if protocol::krpc::decode(&buf[..len], &Limits::default()).is_ok() {
                                    answered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            _ => break,
                        }
                    }
                }
            });
        }
        let mut early = None;
        while answered.load(Ordering::Relaxed) < total {
            // The clients' own buffers are in place by then, so what
            // changes after it is the node's.
            if early.is_none() && answered.load(Ordering::Relaxed) >= total / 10 {
                early = Some(live());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let late = live();
        while tasks.join_next().await.is_some() {}
        let s = m.handle.stats().await.expect("stats");
        let got = answered.load(Ordering::Relaxed);
        println!(
            "flood: {CLIENTS} addresses x {WINDOW} in flight: {got} answers in {secs:.2} s = {:.0} answers/s; \
             live heap {} B at {}k answers, {} B at {}k ({:+} B); the node saw {} datagrams, answered {}, dropped {} outgoing",
            got as f64 / secs,
            early.unwrap_or(0),
            total / 10_000,
            late,
            got / 1000,
            late - early.unwrap_or(late),
            s.packets_in,
            s.answered.values().sum::<u64>(),
            s.packets_dropped_out,
        );
    });
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if benching { &[64, 256, 1024] } else { &[64] };
    for &n in sizes {
        sim_report(n, if benching { 200 } else { 10 });
    }
    for &n in sizes {
        udp_report(n, if benching { 200 } else { 10 });
    }
    flood_report(if benching { 500_000 } else { 10_000 });
    divan::main();
}

/// A find_node lookup in the simulated DHT: the CPU cost of the lookup
/// across every node it touches.
#[divan::bench(args = [64, 256, 1024], sample_count = 30, sample_size = 5)]
fn sim_find_node(bencher: Bencher, n: usize) {
    let mut net = sim(n);
    let mut rng = SmallRng::seed_from_u64(3);
    let mut i = 0;
    bencher.bench_local(|| {
        i += 1;
        net.lookup(i * 13 % n, NodeId::random(&mut rng), LookupKind::FindNode)
    });
}

/// A find_node lookup over UDP between actors on 127.0.0.1.
#[divan::bench(args = [64, 256, 1024], sample_count = 20, sample_size = 5)]
fn udp_find_node(bencher: Bencher, n: usize) {
    let rt = runtime();
    let net = rt.block_on(udp(n));
    let mut rng = SmallRng::seed_from_u64(4);
    let mut i = 0;
    bencher.bench_local(|| {
        i += 1;
        let m = &net.members[i * 13 % n];
        rt.block_on(m.handle.find_node(NodeId::random(&mut rng)))
    });
    rt.block_on(async {
        for mut m in net.members {
            m.cancel.cancel();
            if let Some(j) = m.join.take() {
                let _ = j.await;
            }
        }
    });
}

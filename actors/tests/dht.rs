//! The DHT actor over real UDP sockets on 127.0.0.1: an in-process DHT of
//! 64 nodes in which every lookup converges, announced peers are found,
//! tables stay within their bounds and a restarted node rejoins from its
//! saved table; and a node under hostile datagrams sent from a real socket.

mod dht_support;

use std::collections::HashSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use actors::dht::{DhtConfig, DhtError, NodeId};
use dht_support::{Member, announce, loopback_config, start, swarm, wait_stats};
use protocol::krpc::{self, Body, CompactNode, Limits, Message, Method, Response, code};
use protocol::metainfo::InfoHash;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const N: usize = 64;
const LIMIT: Duration = Duration::from_secs(20);

async fn ids(members: &[Member]) -> Vec<(NodeId, SocketAddr)> {
    let mut out = Vec::new();
    for m in members {
        out.push((m.handle.stats().await.unwrap().id, m.addr()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_nodes_converge_find_announced_peers_and_rejoin() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = swarm(N, dir.path(), |_| {}).await;
    for m in &members {
        wait_stats(&m.handle, LIMIT, "every node knows k nodes", |s| {
            s.nodes >= 8 && s.lookups_running == 0
        })
        .await;
    }

    // Routing tables within their bounds.
    let bounds = DhtConfig::default();
    for m in &members {
        let s = m.handle.stats().await.unwrap();
        assert!(s.nodes <= bounds.max_nodes);
        assert!(s.largest_bucket <= bounds.bucket_size, "{s:?}");
        assert!(s.buckets <= 160);
        assert!(s.cached_nodes <= s.buckets * bounds.replacement_cache);
        assert!(s.queries_in_flight <= bounds.max_queries_in_flight);
        assert!(s.dropped.is_empty(), "no bad datagram among our own: {s:?}");
    }

    // find_node lookups from many nodes converge on the true 8 closest.
    let all = ids(&members).await;
    let mut rng = SmallRng::seed_from_u64(5);
    for round in 0..16 {
        let target = NodeId::random(&mut rng);
        let from = (round * 5) % N;
        let s = members[from].handle.find_node(target).await.unwrap();
        let mut truth: Vec<_> = all
            .iter()
            .filter(|(_, a)| *a != members[from].addr())
            .collect();
        truth.sort_by_key(|(id, _)| id.distance(&target));
        let truth: Vec<SocketAddr> = truth.iter().take(8).map(|(_, a)| *a).collect();
        let found: Vec<SocketAddr> = s.closest.iter().map(|a| SocketAddr::V4(a.addr)).collect();
        if found != truth {
            for m in &members {
                if truth.contains(&m.addr()) && !found.contains(&m.addr()) {
                    eprintln!(
                        "missing {}: {:?}",
                        m.addr(),
                        m.handle.stats().await.unwrap()
                    );
                }
            }
        }
        assert_eq!(found, truth, "find_node {round} from node {from}: {s:?}");
        assert!(s.rounds >= 1);
    }

    // Node 5 registers a torrent and announces port 5555; every other
    // node's get_peers finds it, and a registered torrent gets it as a
    // batch on its channel.
    let ih = InfoHash([0x42; 20]);
    let _rx5 = announce(&members[5].handle, ih, 5555, 8).await;
    let want = SocketAddrV4::new([127, 0, 0, 1].into(), 5555);
    for (i, m) in members.iter().enumerate().filter(|(i, _)| *i != 5) {
        let s = m.handle.get_peers(ih).await.unwrap();
        assert!(s.peers.contains(&want), "node {i} found {:?}", s.peers);
        assert!(
            s.closest.iter().all(|a| a.token.is_some()),
            "get_peers answers carry tokens"
        );
    }
    let (tx, mut rx) = mpsc::channel(8);
    members[40].handle.register(ih, None, tx).await.unwrap();
    let batch = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(batch.contains(&SocketAddr::V4(want)));
    assert_eq!(
        members[40]
            .handle
            .register(ih, None, mpsc::channel(1).0)
            .await,
        Err(DhtError::Node(actors::dht::NodeError::AlreadyRegistered(
            NodeId(ih.0)
        )))
    );
    members[40].handle.unregister(ih).await.unwrap();
    let stored: usize = {
        let mut t = 0;
        for m in &members {
            t += m.handle.stats().await.unwrap().stored_peers;
        }
        t
    };
    assert!(stored >= 8, "the 8 closest nodes store the announce");

    // Node 7 stops (saving its table), restarts with no bootstrap node, and
    // rejoins from the saved table under the same id.
    let id7 = members[7].handle.stats().await.unwrap().id;
    members[7].stop().await;
    assert!(members[7].handle.stats().await.is_err(), "stopped");
    let saved = std::fs::metadata(&members[7].state_file).unwrap();
    assert!(saved.len() > 26 * 8);
    let restarted = start(loopback_config(&[]), &members[7].state_file.clone(), 999).await;
    let s = wait_stats(
        &restarted.handle,
        LIMIT,
        "the restarted node rejoins",
        |s| s.nodes >= 8,
    )
    .await;
    assert_eq!(s.id, id7, "same id after a restart");
    let found = restarted.handle.get_peers(ih).await.unwrap();
    assert!(found.peers.contains(&want));
    members[7] = restarted;

    for m in &mut members {
        m.stop().await;
    }
}

/// Yields a moment every 50 datagrams, so a flood from one socket is not
/// mostly dropped by the receiver's socket buffer before the node sees it.
async fn pace(i: u16) {
    if i % 50 == 49 {
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// One node, and a raw UDP socket playing a hostile remote.
async fn victim(config: DhtConfig) -> (Member, UdpSocket, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let m = start(config, &dir.path().join("v.state"), 7).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (m, s, dir)
}

async fn recv(s: &UdpSocket) -> Option<Message> {
    let mut buf = vec![0; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    krpc::decode(&buf[..n], &Limits::default()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_are_dropped_counted_and_never_grow_anything() {
    let (m, s, _dir) = victim(loopback_config(&[])).await;
    let to = m.addr();
    let ping = Message::query(b"pp", [1; 20], Method::Ping).encode();
    let mut many = b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaa5:nodes26000:".to_vec();
    many.extend(std::iter::repeat_n(9u8, 26_000));
    many.extend_from_slice(b"e1:t2:aa1:y1:re");
    let sixty_nodes = Message::response(
        b"\x00\x01",
        Response {
            id: [3; 20],
            nodes: (0..60u8)
                .map(|i| CompactNode {
                    id: [i; 20],
                    addr: SocketAddrV4::new([127, 0, 0, 1].into(), 1000 + u16::from(i)),
                })
                .collect(),
            ..Response::default()
        },
    )
    .encode();
    let junk: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage".to_vec(), "not_bencode"),
        (ping[..10].to_vec(), "not_bencode"),
        (many, "too_large"),
        (b"d1:t2:aa1:y1:xe".to_vec(), "unknown_type"),
        (
            Message::response(
                b"zz",
                Response {
                    id: [3; 20],
                    ..Response::default()
                },
            )
            .encode(),
            "unexpected_response",
        ),
        (sixty_nodes, "too_many_nodes"),
    ];
    for (bytes, _) in &junk {
        s.send_to(bytes, to).await.unwrap();
    }
    let st = wait_stats(&m.handle, LIMIT, "junk counted", |st| {
        st.dropped.values().sum::<u64>() >= junk.len() as u64
    })
    .await;
    for (_, reason) in &junk {
        assert!(
            st.dropped.get(reason).copied().unwrap_or(0) >= 1,
            "{reason}: {st:?}"
        );
    }
    assert!(recv(&s).await.is_none(), "junk is never answered");

    // An unknown method is answered with 204.
    s.send_to(
        &Message::query(b"uu", [1; 20], Method::Unknown(b"vote".to_vec())).encode(),
        to,
    )
    .await
    .unwrap();
    let reply = recv(&s).await.expect("an answer");
    assert_eq!(reply.transaction_id, b"uu");
    match reply.body {
        Body::Error(e) => assert_eq!(e.code, code::METHOD_UNKNOWN),
        other => panic!("{other:?}"),
    }

    // 2000 announces with bad tokens store nothing. (Paced, so that the
    // kernel's socket buffer does not drop most of them.)
    for i in 0..2000u16 {
        pace(i).await;
        let q = Message::query(
            &i.to_be_bytes(),
            [2; 20],
            Method::AnnouncePeer {
                info_hash: [0x77; 20],
                port: 1,
                implied_port: false,
                token: i.to_be_bytes().to_vec(),
            },
        );
        s.send_to(&q.encode(), to).await.unwrap();
    }
    let st = wait_stats(&m.handle, LIMIT, "bad tokens counted", |st| {
        st.bad_tokens >= 1000
    })
    .await;
    assert_eq!(st.stored_peers, 0);
    assert_eq!(st.announces_stored, 0);
    assert!(st.queries_in_flight <= 1, "{st:?}");
    assert!(
        st.nodes + st.cached_nodes <= 1,
        "one remote, at most one entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_is_rate_limited_until_its_budget_refills() {
    // The default per-address limits: 10 a second, bursts of 20.
    let config = DhtConfig {
        bootstrap_nodes: vec![],
        ..DhtConfig::default()
    };
    let (m, flood, _dir) = victim(config).await;
    let to = m.addr();
    let started = std::time::Instant::now();
    for i in 0..500u16 {
        pace(i).await;
        let q = Message::query(&i.to_be_bytes(), [1; 20], Method::Ping).encode();
        flood.send_to(&q, to).await.unwrap();
    }
    let st = wait_stats(&m.handle, LIMIT, "flood seen", |st| st.packets_in >= 250).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = m.handle.stats().await.unwrap_or(st);
    let secs = started.elapsed().as_secs() + 1;
    let answered = st.answered.get("ping").copied().unwrap_or(0);
    // A burst of 20, then 10 a second.
    assert!(
        answered <= 20 + 10 * secs,
        "answered {answered} in {secs} s"
    );
    assert_eq!(st.rate_limited + answered, st.packets_in, "{st:?}");
    assert!(st.rate_limited >= 200, "{st:?}");
    // Loopback is one address: a second socket on it shares the budget,
    // so the "other source" here is the same host a few seconds later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    flood
        .send_to(&Message::query(b"ok", [1; 20], Method::Ping).encode(), to)
        .await
        .unwrap();
    let mut answered_again = false;
    while let Some(msg) = recv(&flood).await {
        if msg.transaction_id == b"ok" {
            answered_again = true;
            break;
        }
    }
    assert!(answered_again, "the limit refills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_reported_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dht.state");
    std::fs::write(&path, b"d2:id3:abc5:nodes0:e").unwrap();
    let mut m = start(loopback_config(&[]), &path, 3).await;
    let st = m.handle.stats().await.unwrap();
    let err = st.state_error.expect("the bad file is reported");
    assert!(err.contains("dht.state"), "{err}");
    // It still works and, on stop, replaces the file with a good one.
    m.stop().await;
    let again = start(loopback_config(&[]), &path, 4).await;
    let st2 = again.handle.stats().await.unwrap();
    assert_eq!(st2.state_error, None);
    assert_eq!(st2.id, st.id, "the id saved at the stop is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torrent_whose_channel_closed_is_unregistered() {
    let dir = tempfile::tempdir().unwrap();
    // Twelve nodes: each knows most of the others, not necessarily k = 8
    // of them (a small DHT), which is enough here.
    let members = swarm(12, dir.path(), |_| {}).await;
    for m in &members {
        wait_stats(&m.handle, LIMIT, "joined", |s| {
            s.nodes >= 5 && s.lookups_running == 0
        })
        .await;
    }
    let ih = InfoHash([0x11; 20]);
    let _keep = announce(&members[1].handle, ih, 4000, 8).await;
    let (tx, rx) = mpsc::channel(4);
    drop(rx);
    members[2].handle.register(ih, None, tx).await.unwrap();
    wait_stats(&members[2].handle, LIMIT, "unregistered", |s| {
        s.torrents == 0
    })
    .await;
    // The announce itself is still found by others.
    let peers: HashSet<_> = members[3]
        .handle
        .get_peers(ih)
        .await
        .unwrap()
        .peers
        .into_iter()
        .collect();
    assert!(peers.contains(&SocketAddrV4::new([127, 0, 0, 1].into(), 4000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_names_resolve_through_the_dns_cache_and_routers_stay_out_of_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let members = swarm(12, dir.path(), |_| {}).await;
    for m in &members {
        wait_stats(&m.handle, LIMIT, "joined", |s| {
            s.nodes >= 5 && s.lookups_running == 0
        })
        .await;
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let (dns, dns_join) = actors::tracker::dns::spawn(
        actors::tracker::DnsConfig::default(),
        actors::net::Binding::default(),
        cancel.clone(),
    );
    let router = members[0].addr();
    let config = DhtConfig {
        bootstrap_nodes: vec![format!("localhost:{}", router.port())],
        ..loopback_config(&[])
    };
    let (handle, join) = actors::dht::spawn(
        config,
        actors::dht::DhtStart {
            bind: "127.0.0.1:0".parse().unwrap(),
            state_file: None,
            dns: Some(dns.clone()),
            seed: Some(77),
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    let s = wait_stats(&handle, LIMIT, "joined through a name", |s| s.nodes >= 5).await;
    // Twelve others, minus the router named by host name.
    assert!(s.nodes <= 11, "{s:?}");
    assert!(
        dns.stats().await.unwrap().misses >= 1,
        "resolved through the cache"
    );
    cancel.cancel();
    join.await.unwrap();
    dns_join.await.unwrap();
}

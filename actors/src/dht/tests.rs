//! The sans-IO node, driven without a runtime: against hand-made datagrams
//! (every kind of bad input), and in the simulated network of [`sim`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use protocol::krpc::{self, Body, CompactNode, Limits, Message, Method, Response, code};

use super::sim::Network;
use super::*;

fn from(i: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, i), port))
}

fn node(config: DhtConfig) -> (Node, Instant) {
    let now = Instant::now();
    (Node::new(config, None, 42, now), now)
}

/// Everything the node wants to send, decoded.
fn sent(n: &mut Node) -> Vec<(SocketAddrV4, Message)> {
    let mut out = Vec::new();
    while let Some((to, bytes)) = n.poll_transmit() {
        out.push((to, krpc::decode(&bytes, &Limits::default()).unwrap()));
    }
    out
}

fn query(tid: &[u8], id: u8, method: Method) -> Vec<u8> {
    Message::query(tid, [id; 20], method).encode()
}

fn response_body(m: &Message) -> &Response {
    match &m.body {
        Body::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

#[test]
fn answers_the_four_queries_of_bep5() {
    let (mut n, now) = node(DhtConfig::default());
    let asker = from(1, 7000);
    n.handle_packet(asker, &query(b"p1", 1, Method::Ping), now);
    let out = sent(&mut n);
    // The answer, then a ping to verify the unknown asker for the table.
    let (to, m) = &out[0];
    assert_eq!(SocketAddr::V4(*to), asker);
    assert_eq!(m.transaction_id, b"p1");
    assert_eq!(response_body(m).id, n.id().0);
    assert_eq!(m.ip.map(SocketAddr::V4), Some(asker), "BEP 42 `ip`");
    assert!(
        out[1..]
            .iter()
            .any(|(_, m)| matches!(&m.body, Body::Query(q) if q.method == Method::Ping))
    );

    let target = [7; 20];
    n.handle_packet(asker, &query(b"f1", 1, Method::FindNode { target }), now);
    let m = &sent(&mut n)[0].1;
    assert!(response_body(m).nodes.is_empty(), "empty table, no nodes");

    let ih = [9; 20];
    n.handle_packet(
        asker,
        &query(b"g1", 1, Method::GetPeers { info_hash: ih }),
        now,
    );
    let m = &sent(&mut n)[0].1;
    let token = response_body(m)
        .token
        .clone()
        .expect("get_peers answers carry a token");
    assert!(response_body(m).values.is_empty());

    let announce = |token: Vec<u8>, implied| Method::AnnouncePeer {
        info_hash: ih,
        port: 51413,
        implied_port: implied,
        token,
    };
    n.handle_packet(asker, &query(b"a1", 1, announce(token.clone(), false)), now);
    let m = &sent(&mut n)[0].1;
    assert_eq!(response_body(m).id, n.id().0);
    assert_eq!(n.store().len(), 1);

    // Another asker gets the announced peer back.
    let other = from(2, 7001);
    n.handle_packet(
        other,
        &query(b"g2", 2, Method::GetPeers { info_hash: ih }),
        now,
    );
    let m = &sent(&mut n)[0].1;
    assert_eq!(
        response_body(m).values,
        vec![SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), 51413)]
    );
    // implied_port stores the UDP source port.
    n.handle_packet(asker, &query(b"a2", 1, announce(token, true)), now);
    sent(&mut n);
    assert_eq!(n.store().len(), 2);
    let stats = n.stats(now);
    for m in ["ping", "find_node", "get_peers", "announce_peer"] {
        assert!(stats.answered[m] >= 1, "{m}");
    }
}

#[test]
fn unknown_methods_get_error_204() {
    let (mut n, now) = node(DhtConfig::default());
    n.handle_packet(
        from(1, 1),
        &query(b"u1", 1, Method::Unknown(b"sample_infohashes".to_vec())),
        now,
    );
    let m = &sent(&mut n)[0].1;
    match &m.body {
        Body::Error(e) => assert_eq!(e.code, code::METHOD_UNKNOWN),
        other => panic!("{other:?}"),
    }
    assert_eq!(n.stats(now).answered["unknown"], 1);
}

#[test]
fn bad_datagrams_are_dropped_counted_and_change_nothing() {
    let (mut n, now) = node(DhtConfig::default());
    let src = from(1, 1);
    let mut oversized = b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaa5:nodes26000:".to_vec();
    oversized.extend(std::iter::repeat_n(1u8, 26_000));
    oversized.extend_from_slice(b"e1:t2:aa1:y1:re");
    let ping = query(b"p1", 1, Method::Ping);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage".to_vec(), "not_bencode"),
        (vec![], "not_bencode"),
        (ping[..ping.len() - 3].to_vec(), "not_bencode"),
        (oversized, "too_large"),
        (b"d1:t2:aa1:y1:ze".to_vec(), "unknown_type"),
        // A response to nothing we asked (wrong transaction id).
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
        // An error to nothing we asked.
        (
            Message::error(b"\x00\x00", 201, "x").encode(),
            "unexpected_response",
        ),
    ];
    for (bytes, reason) in &cases {
        let before = n.stats(now).dropped.get(reason).copied().unwrap_or(0);
        n.handle_packet(src, bytes, now);
        assert_eq!(n.stats(now).dropped[reason], before + 1, "{reason}");
        assert!(sent(&mut n).is_empty(), "no answer to {reason}");
    }
    // A query that claims our own id.
    n.handle_packet(
        src,
        &Message::query(b"o", n.id().0, Method::Ping).encode(),
        now,
    );
    assert_eq!(n.stats(now).dropped["own_id"], 1);
    // Port-0 sources.
    n.handle_packet(from(1, 0), &ping, now);
    assert_eq!(n.stats(now).dropped["bad_source"], 1);
    let s = n.stats(now);
    assert_eq!(s.nodes + s.cached_nodes, 0, "nothing entered the table");
    assert_eq!(s.queries_in_flight, 0);
}

/// A node with one lookup out to a scripted peer at `peer`; returns the
/// transaction id of that query.
fn with_query_out(peer: SocketAddr) -> (Node, Instant, Vec<u8>) {
    let (mut n, now) = node(DhtConfig {
        max_nodes_per_ip: 100,
        ..DhtConfig::default()
    });
    let SocketAddr::V4(p) = peer else {
        unreachable!()
    };
    n.bootstrap(vec![p], false, now);
    let out = sent(&mut n);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, p);
    let tid = out[0].1.transaction_id.clone();
    (n, now, tid)
}

#[test]
fn replies_must_match_transaction_id_and_source() {
    let peer = from(5, 6881);
    let (mut n, now, tid) = with_query_out(peer);
    let reply = |tid: &[u8]| {
        Message::response(
            tid,
            Response {
                id: [5; 20],
                ..Response::default()
            },
        )
        .encode()
    };
    // Right id from the wrong address, wrong id from the right address.
    n.handle_packet(from(6, 6881), &reply(&tid), now);
    let mut wrong = tid.clone();
    wrong[0] ^= 0xff;
    n.handle_packet(peer, &reply(&wrong), now);
    n.handle_packet(peer, &reply(b"toolongtid"), now);
    assert_eq!(n.stats(now).dropped["unexpected_response"], 3);
    assert_eq!(n.stats(now).nodes, 0);
    // The real answer is taken once; a replay is unexpected.
    n.handle_packet(peer, &reply(&tid), now);
    assert_eq!(n.stats(now).nodes, 1);
    n.handle_packet(peer, &reply(&tid), now);
    assert_eq!(n.stats(now).dropped["unexpected_response"], 4);
}

fn thousand_nodes(tid: &[u8]) -> Vec<u8> {
    Message::response(
        tid,
        Response {
            id: [5; 20],
            nodes: (0..1000u32)
                .map(|i| CompactNode {
                    id: [(i % 251) as u8; 20],
                    addr: SocketAddrV4::new(Ipv4Addr::from(0x0b00_0000 + i), 1),
                })
                .collect(),
            ..Response::default()
        },
    )
    .encode()
}

#[test]
fn a_node_answering_with_1000_nodes_or_itself_adds_nothing() {
    let peer = from(5, 6881);
    let (mut n, now, tid) = with_query_out(peer);
    let SocketAddr::V4(p) = peer else {
        unreachable!()
    };
    let flood = thousand_nodes(&tid);
    n.handle_packet(peer, &flood, now);
    assert_eq!(n.stats(now).dropped["too_large"], 1);
    // Within the packet size but over the node cap: refused too.
    let (mut n2, _) = node(DhtConfig {
        max_packet_size: 64 * 1024,
        ..DhtConfig::default()
    });
    n2.bootstrap(vec![p], false, now);
    let tid2 = sent(&mut n2)[0].1.transaction_id.clone();
    let flood2 = thousand_nodes(&tid2);
    n2.handle_packet(peer, &flood2, now);
    assert_eq!(n2.stats(now).dropped["too_many_nodes"], 1);
    assert!(
        sent(&mut n2).is_empty(),
        "no node of the flood was contacted"
    );

    // Answering with itself (and us): the lookup has nothing new to ask.
    let me = n.id();
    let selfish = Message::response(
        &tid,
        Response {
            id: [5; 20],
            nodes: vec![
                CompactNode {
                    id: [5; 20],
                    addr: p,
                },
                CompactNode {
                    id: me.0,
                    addr: SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 77), 1),
                },
            ],
            ..Response::default()
        },
    )
    .encode();
    n.handle_packet(peer, &selfish, now);
    let out = sent(&mut n);
    assert!(
        out.iter().all(|(to, _)| *to == p),
        "only the node itself is asked again: {out:?}"
    );
    assert_eq!(n.stats(now).nodes, 1);
}

#[test]
fn a_flood_of_announces_with_bad_tokens_stores_nothing() {
    let (mut n, now) = node(DhtConfig {
        queries_per_second_per_ip: std::num::NonZeroU32::new(100_000).unwrap(),
        query_burst_per_ip: std::num::NonZeroU32::new(100_000).unwrap(),
        queries_per_second: std::num::NonZeroU32::new(100_000).unwrap(),
        query_burst: std::num::NonZeroU32::new(100_000).unwrap(),
        ..DhtConfig::default()
    });
    let ih = [1; 20];
    // A real token, but for another address.
    n.handle_packet(
        from(1, 1),
        &query(b"g", 1, Method::GetPeers { info_hash: ih }),
        now,
    );
    let token = response_body(&sent(&mut n)[0].1).token.clone().unwrap();
    for i in 0..5000u32 {
        let bad = match i % 3 {
            0 => token.clone(),
            1 => i.to_be_bytes().to_vec(),
            _ => vec![],
        };
        let q = query(
            &i.to_be_bytes(),
            2,
            Method::AnnouncePeer {
                info_hash: ih,
                port: 1000,
                implied_port: false,
                token: bad,
            },
        );
        n.handle_packet(from(2, 2), &q, now);
        for (_, m) in sent(&mut n) {
            if let Body::Error(e) = m.body {
                assert_eq!(e.code, code::PROTOCOL);
            }
        }
    }
    let s = n.stats(now);
    assert_eq!(s.stored_peers, 0);
    assert_eq!(s.bad_tokens, 5000);
    // Tokens expire: the right address with its own token, 10 minutes on.
    n.handle_packet(
        from(2, 2),
        &query(b"g", 2, Method::GetPeers { info_hash: ih }),
        now,
    );
    let token = response_body(&sent(&mut n)[0].1).token.clone().unwrap();
    let later = now + Duration::from_secs(600);
    let q = query(
        b"late",
        2,
        Method::AnnouncePeer {
            info_hash: ih,
            port: 1000,
            implied_port: false,
            token,
        },
    );
    n.handle_packet(from(2, 2), &q, later);
    assert_eq!(n.stats(later).stored_peers, 0);
}

#[test]
fn incoming_queries_are_rate_limited_per_source_and_in_total() {
    let config = DhtConfig {
        queries_per_second_per_ip: std::num::NonZeroU32::new(10).unwrap(),
        query_burst_per_ip: std::num::NonZeroU32::new(20).unwrap(),
        queries_per_second: std::num::NonZeroU32::new(100).unwrap(),
        query_burst: std::num::NonZeroU32::new(50).unwrap(),
        ..DhtConfig::default()
    };
    let (mut n, now) = node(config);
    let answered = |n: &mut Node| {
        sent(n)
            .into_iter()
            .filter(|(_, m)| matches!(m.body, Body::Response(_)))
            .count()
    };
    // One source, 100 pings at once: the burst of 20 is answered.
    let mut got = 0;
    for i in 0..100u16 {
        n.handle_packet(from(1, 1), &query(&i.to_be_bytes(), 1, Method::Ping), now);
        got += answered(&mut n);
    }
    assert_eq!(got, 20);
    assert_eq!(n.stats(now).rate_limited, 80);
    // A second later, 10 more.
    let t1 = now + Duration::from_secs(1);
    got = 0;
    for i in 0..100u16 {
        n.handle_packet(from(1, 1), &query(&i.to_be_bytes(), 1, Method::Ping), t1);
        got += answered(&mut n);
    }
    assert_eq!(got, 10);
    // Many sources: the total burst holds (50, refilled in that second,
    // of which 10 went to the first source).
    got = 0;
    for i in 0..100u8 {
        n.handle_packet(from(100 + i, 1), &query(b"x", 3, Method::Ping), t1);
        got += answered(&mut n);
    }
    assert_eq!(got, 40);
}

#[test]
fn the_per_source_table_stays_bounded() {
    let config = DhtConfig {
        max_rate_limited_sources: 100,
        queries_per_second: std::num::NonZeroU32::new(1_000_000).unwrap(),
        query_burst: std::num::NonZeroU32::new(1_000_000).unwrap(),
        ..DhtConfig::default()
    };
    let (mut n, now) = node(config);
    for i in 0..10_000u32 {
        let src = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(0x0c00_0000 + i), 1));
        n.handle_packet(src, &query(b"x", 3, Method::Ping), now);
        sent(&mut n);
        assert!(n.rate_limited_sources() <= 100);
    }
    assert_eq!(n.stats(now).rate_limited, 0, "each source sent one query");
}

#[test]
fn unanswered_queries_time_out_and_fail_the_node() {
    let peer = from(5, 6881);
    let (mut n, now, tid) = with_query_out(peer);
    n.handle_packet(
        peer,
        &Message::response(
            &tid,
            Response {
                id: [5; 20],
                ..Response::default()
            },
        )
        .encode(),
        now,
    );
    assert_eq!(n.stats(now).good_nodes, 1);
    // Idle for 16 minutes it is questionable and gets pinged; two
    // unanswered queries make it bad (max_failures = 2).
    let mut t = now;
    for _ in 0..2 {
        t += Duration::from_secs(16 * 60);
        n.handle_timeout(t);
        assert!(
            !sent(&mut n).is_empty(),
            "a liveness ping or refresh goes out"
        );
        t += Duration::from_secs(3);
        n.handle_timeout(t);
        sent(&mut n);
    }
    let s = n.stats(t);
    assert!(s.query_timeouts >= 2);
    assert_eq!(s.queries_in_flight, 0);
    assert_eq!(s.bad_nodes, 1);
    assert_eq!(s.good_nodes, 0);
}

#[test]
fn outgoing_datagrams_are_bounded() {
    let config = DhtConfig {
        max_queued_packets: 10,
        queries_per_second_per_ip: std::num::NonZeroU32::new(1_000_000).unwrap(),
        query_burst_per_ip: std::num::NonZeroU32::new(1_000_000).unwrap(),
        ..DhtConfig::default()
    };
    let (mut n, now) = node(config);
    for i in 0..100u16 {
        n.handle_packet(from(1, 1), &query(&i.to_be_bytes(), 1, Method::Ping), now);
    }
    assert_eq!(sent(&mut n).len(), 10);
    assert!(n.stats(now).packets_dropped_out >= 90);
}

fn sim_config() -> DhtConfig {
    DhtConfig {
        // Several thousand queries between the same few simulated hosts.
        queries_per_second_per_ip: std::num::NonZeroU32::new(100_000).unwrap(),
        query_burst_per_ip: std::num::NonZeroU32::new(100_000).unwrap(),
        queries_per_second: std::num::NonZeroU32::new(100_000).unwrap(),
        query_burst: std::num::NonZeroU32::new(100_000).unwrap(),
        ..DhtConfig::default()
    }
}

#[test]
fn a_simulated_dht_of_256_nodes_converges() {
    let mut net = Network::new(256, &sim_config(), 7);
    net.bootstrap();
    let now = net.now;
    for n in &net.nodes {
        let s = n.stats(now);
        assert!(
            s.nodes >= 8,
            "every node knows at least k nodes: {}",
            s.nodes
        );
        assert!(s.nodes <= 1024);
        assert!(n.table().largest_bucket() <= 8);
    }
    let mut ids: Vec<(NodeId, SocketAddrV4)> = net
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id(), Network::addr(i)))
        .collect();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(3);
    for round in 0..32 {
        let target = NodeId::random(&mut rng);
        let from = round * 7 % 256;
        let s = net
            .lookup(from, target, LookupKind::FindNode)
            .expect("lookup ends");
        ids.sort_by_key(|(id, _)| id.distance(&target));
        let truth: Vec<SocketAddrV4> = ids
            .iter()
            .filter(|(_, a)| *a != Network::addr(from))
            .take(8)
            .map(|(_, a)| *a)
            .collect();
        let found: Vec<SocketAddrV4> = s.closest.iter().map(|a| a.addr).collect();
        assert_eq!(
            found,
            truth,
            "lookup {round} from node {from}: {s:?}\n{:?}",
            net.nodes[from].stats(net.now)
        );
    }
}

#[test]
fn announced_peers_are_found_by_others_in_the_simulation() {
    let mut net = Network::new(128, &sim_config(), 11);
    net.bootstrap();
    let ih = NodeId([0x5a; 20]);
    let t = net.now;
    net.nodes[3].register(ih, Some(4242), t).unwrap();
    net.settle(Duration::from_secs(30));
    assert!(net.nodes[3].stats(net.now).announces_sent >= 8);
    let s = net.lookup(100, ih, LookupKind::GetPeers).unwrap();
    let want = SocketAddrV4::new(*Network::addr(3).ip(), 4242);
    assert!(s.peers.contains(&want), "{:?}", s.peers);
    // A registered torrent gets the peers as an event.
    let t = net.now;
    net.nodes[50].register(ih, None, t).unwrap();
    net.settle(Duration::from_secs(30));
    let events = net.take_events(50);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Peers { info_hash, peers } if *info_hash == ih && peers.contains(&SocketAddr::V4(want))
    )));
    assert_eq!(
        net.nodes[50].register(ih, None, net.now),
        Err(NodeError::AlreadyRegistered(ih))
    );
}

#[test]
fn a_restarted_node_rejoins_from_its_saved_table() {
    let config = sim_config();
    let mut net = Network::new(64, &config, 13);
    net.bootstrap();
    let saved = net.nodes[10].saved_state(net.now);
    assert!(saved.nodes.len() >= 8);
    let id = saved.id;
    // Node 10 restarts with its saved table and no bootstrap node.
    net.nodes[10] = Node::new(config, Some(saved), 99, net.now);
    assert_eq!(net.nodes[10].id(), id);
    assert_eq!(net.nodes[10].table().len(), 0);
    let t = net.now;
    net.nodes[10].bootstrap(vec![], false, t);
    net.settle(Duration::from_secs(30));
    assert!(net.nodes[10].table().len() >= 8);
}

#[test]
fn lookups_started_by_a_finishing_lookup_send_at_once() {
    // The bootstrap lookup's end starts refresh lookups; their queries must
    // go out with the same input, not wait for the next timer.
    let peer = from(5, 6881);
    let (mut n, now, tid) = with_query_out(peer);
    let answer = Message::response(
        &tid,
        Response {
            id: [5; 20],
            ..Response::default()
        },
    )
    .encode();
    n.handle_packet(peer, &answer, now);
    let out = sent(&mut n);
    let own = n.id().0;
    assert!(
        out.iter().any(|(_, m)| matches!(
            &m.body,
            Body::Query(q) if matches!(q.method, Method::FindNode { target } if target != own)
        )),
        "a refresh find_node went out: {out:?}"
    );
    assert_eq!(n.stats(now).lookups_done, 1);
}

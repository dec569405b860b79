//! The tracker session against scripted UDP trackers (BEP 15) on
//! 127.0.0.1: datagrams from the wrong address or with the wrong
//! transaction id are ignored; the wrong action or size, and error
//! responses, fail the announce; lost requests are retransmitted; the
//! connection id is reused. Over IPv6 (a tracker on `[::1]`) the announce
//! goes out from an IPv6 socket and the answer's 18-byte peers are read
//! (BEP 15's IPv6 format).

mod tracker_support;

use std::time::Duration;

use actors::tracker::spawn;
use protocol::udp_tracker::{AnnounceResponse, ConnectResponse, ErrorResponse, UdpRequest};
use tokio_util::sync::CancellationToken;
use tracker_support::{
    FakeUdp, UdpReply, fast_config, info_hash, next_peers, peer, registration, url_stats,
    wait_stats,
};

const LIMIT: Duration = Duration::from_secs(20);
const CONNECTION_ID: u64 = 0x1234_5678_9abc_def0;

fn connect_ok(tid: u32) -> Vec<u8> {
    ConnectResponse {
        transaction_id: tid,
        connection_id: CONNECTION_ID,
    }
    .encode()
}

fn announce_ok(tid: u32, interval: u32, port: u16) -> Vec<u8> {
    AnnounceResponse {
        transaction_id: tid,
        interval,
        leechers: 1,
        seeders: 2,
        peers: vec![peer(port)],
    }
    .encode(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_source_and_wrong_transaction_id_are_ignored() {
    let tracker = FakeUdp::start(|req, _| match req {
        UdpRequest::Connect(c) => vec![
            UdpReply::Other(connect_ok(c.transaction_id)),
            UdpReply::Main(connect_ok(c.transaction_id.wrapping_add(1))),
            UdpReply::Main(connect_ok(c.transaction_id)),
        ],
        UdpRequest::Announce(a) => vec![
            UdpReply::Other(announce_ok(a.transaction_id, 1800, 666)),
            UdpReply::Main(announce_ok(a.transaction_id ^ 0xffff, 1800, 667)),
            // Too short to carry a transaction id.
            UdpReply::Main(vec![0, 0, 0, 1]),
            UdpReply::Main(announce_ok(a.transaction_id, 1800, 1)),
        ],
        UdpRequest::Scrape(_) => vec![],
    })
    .await;
    let url = tracker.url();
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, mut r) = registration(info_hash(1), vec![vec![url.clone()]], 6999);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(next_peers(&mut r, LIMIT).await, vec![peer(1)]);

    let s = h.stats().await.unwrap();
    let t = url_stats(&s, &url);
    assert_eq!(t.announces_failed, 0, "{t:?}");
    assert_eq!(t.ignored_datagrams, 5, "{t:?}");
    let announces = tracker.announces();
    assert_eq!(announces.len(), 1);
    let a = &announces[0];
    assert_eq!(a.connection_id, CONNECTION_ID);
    assert_eq!(a.info_hash, [1; 20]);
    assert_eq!(a.port, 6999);
    assert_eq!(a.left, 1000);
    assert_eq!(a.event, Some(protocol::tracker::Event::Started));
    assert_eq!(a.num_want, Some(50));
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_action_wrong_size_and_error_responses_fail_the_announce() {
    let wrong_action = FakeUdp::start(|req, _| match req {
        UdpRequest::Connect(c) => vec![UdpReply::Main(connect_ok(c.transaction_id))],
        // A connect response where an announce response belongs.
        UdpRequest::Announce(a) => vec![UdpReply::Main(connect_ok(a.transaction_id))],
        UdpRequest::Scrape(_) => vec![],
    })
    .await;
    let wrong_size = FakeUdp::start(|req, _| match req {
        UdpRequest::Connect(c) => vec![UdpReply::Main(connect_ok(c.transaction_id))],
        UdpRequest::Announce(a) => {
            let mut d = announce_ok(a.transaction_id, 1800, 1);
            d.truncate(d.len() - 1);
            vec![UdpReply::Main(d)]
        }
        UdpRequest::Scrape(_) => vec![],
    })
    .await;
    let error = FakeUdp::start(|req, _| {
        let tid = match req {
            UdpRequest::Connect(c) => c.transaction_id,
            UdpRequest::Announce(a) => a.transaction_id,
            UdpRequest::Scrape(s) => s.transaction_id,
        };
        vec![UdpReply::Main(
            ErrorResponse {
                transaction_id: tid,
                message: "go away".into(),
            }
            .encode(),
        )]
    })
    .await;
    let long_connect = FakeUdp::start(|req, _| match req {
        UdpRequest::Connect(c) => {
            let mut d = connect_ok(c.transaction_id);
            d.push(0);
            vec![UdpReply::Main(d)]
        }
        _ => vec![],
    })
    .await;
    let mut config = fast_config();
    config.breaker.threshold = 1000;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let cases = [
        (&wrong_action, "expected announce, got connect"),
        (&wrong_size, "bad udp response"),
        (&error, "tracker says: go away"),
        (&long_connect, "bad udp response"),
    ];
    let mut keep = Vec::new();
    for (i, (tracker, _)) in cases.iter().enumerate() {
        let (reg, r) = registration(info_hash(10 + i as u8), vec![vec![tracker.url()]], 7000);
        h.add_torrent(reg).await.unwrap();
        keep.push(r);
    }
    let s = wait_stats(&h, LIMIT, "every tracker failed twice", |s| {
        cases
            .iter()
            .all(|(t, _)| url_stats(s, &t.url()).announces_failed >= 2)
    })
    .await;
    for (tracker, expected) in cases {
        let t = url_stats(&s, &tracker.url());
        let err = t.last_error.clone().unwrap_or_default().to_lowercase();
        assert!(
            err.contains(expected),
            "{err:?} should mention {expected:?}"
        );
        assert_eq!(t.announces_succeeded, 0);
    }
    for r in &mut keep {
        assert!(
            r.peers.try_recv().is_err(),
            "no peers from a failed announce"
        );
    }
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_requests_are_retransmitted_and_the_connection_id_reused() {
    // Drops the first two connect requests; answers announces with a
    // one-second interval.
    let tracker = FakeUdp::start(|req, n| match req {
        UdpRequest::Connect(c) if n >= 2 => vec![UdpReply::Main(connect_ok(c.transaction_id))],
        UdpRequest::Announce(a) if a.connection_id == CONNECTION_ID => {
            vec![UdpReply::Main(announce_ok(a.transaction_id, 1, 2))]
        }
        _ => vec![],
    })
    .await;
    // By name, through the DNS cache.
    let url = format!("udp://localhost:{}/announce", tracker.addr.port());
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, mut r) = registration(info_hash(20), vec![vec![url.clone()]], 7000);
    h.add_torrent(reg).await.unwrap();
    for _ in 0..3 {
        assert_eq!(next_peers(&mut r, LIMIT).await, vec![peer(2)]);
    }

    let reqs = tracker.requests();
    let connects: Vec<_> = reqs
        .iter()
        .filter_map(|(r, at)| match r {
            UdpRequest::Connect(c) => Some((c.transaction_id, *at)),
            _ => None,
        })
        .collect();
    // One connect, sent three times (200 ms, then 400 ms apart, less a
    // little for delivery jitter), and its id reused by every announce
    // within its lifetime.
    assert_eq!(connects.len(), 3, "{reqs:?}");
    assert!(connects.iter().all(|(tid, _)| *tid == connects[0].0));
    assert!(connects[1].1 - connects[0].1 >= Duration::from_millis(150));
    assert!(connects[2].1 - connects[1].1 >= Duration::from_millis(350));
    assert!(tracker.announces().len() >= 3);
    let s = h.stats().await.unwrap();
    assert_eq!(url_stats(&s, &url).announces_failed, 0);
    assert_eq!(s.dns.misses, 1);
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tracker_times_out_after_the_retransmission_cap() {
    let tracker = FakeUdp::start(|_, _| vec![]).await;
    let url = tracker.url();
    let mut config = fast_config();
    config.udp_base_timeout = Duration::from_millis(100);
    config.udp_max_retransmits = 1;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let (reg, _r) = registration(info_hash(30), vec![vec![url.clone()]], 7000);
    h.add_torrent(reg).await.unwrap();
    let s = wait_stats(&h, LIMIT, "a UDP timeout", |s| {
        url_stats(s, &url).announces_failed >= 1
    })
    .await;
    assert_eq!(
        url_stats(&s, &url).last_error.as_deref(),
        Some("no UDP answer after 2 attempts")
    );
    // Each attempt sent its connect request twice (first send + one
    // retransmission).
    // Requests first, then the count of attempts: a retry may start at any
    // moment, and every request seen belongs to an attempt already counted.
    let connects = tracker.requests().len() as u64;
    let attempts = url_stats(&h.stats().await.unwrap(), &url).announces_sent;
    assert!(
        connects >= 2 && connects <= 2 * attempts,
        "{connects} for {attempts}"
    );
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announce_over_ipv6_reads_18_byte_peers() {
    let v6 = |port: u16| {
        std::net::SocketAddr::from((
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7),
            port,
        ))
    };
    let tracker = FakeUdp::start_on("[::1]:0", move |req, _| match req {
        UdpRequest::Connect(c) => vec![UdpReply::Main(connect_ok(c.transaction_id))],
        UdpRequest::Announce(a) => vec![UdpReply::Main(
            AnnounceResponse {
                transaction_id: a.transaction_id,
                interval: 1800,
                leechers: 1,
                seeders: 1,
                peers: vec![v6(6881), v6(6882)],
            }
            .encode(true),
        )],
        UdpRequest::Scrape(_) => vec![],
    })
    .await;
    let url = tracker.url();
    assert!(url.starts_with("udp://[::1]:"), "{url}");
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, mut r) = registration(info_hash(6), vec![vec![url.clone()]], 6999);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(next_peers(&mut r, LIMIT).await, vec![v6(6881), v6(6882)]);
    let s = h.stats().await.unwrap();
    assert_eq!(url_stats(&s, &url).announces_failed, 0);
    cancel.cancel();
    join.await.unwrap();
}

//! The tracker session against scripted HTTP trackers on 127.0.0.1:
//! failure reasons and the circuit breaker, the half-open trial, bad
//! bodies, redirect loops, tier fallback and promotion, events, min
//! interval, `stopped` with a bounded wait, the DNS cache, and one slow
//! tracker not holding up another. Backoff and cool-down timing run under
//! paused tokio time against a tracker name that fails without a socket.

mod tracker_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actors::tracker::{BreakerState, spawn};
use tokio_util::sync::CancellationToken;
use tracker_support::{
    FakeHttp, HttpReply, announce_body, failure_body, fast_config, info_hash, next_peers, peer,
    registration, url_stats, wait_stats,
};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_reason_is_a_failure_and_three_open_the_breaker() {
    let tracker = FakeHttp::start(|_, _| HttpReply::Body(failure_body("torrent banned"))).await;
    let url = tracker.url("/announce");
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, _r) = registration(info_hash(1), vec![vec![url.clone()]], 7000);
    h.add_torrent(reg).await.unwrap();

    let s = wait_stats(&h, LIMIT, "breaker open", |s| {
        url_stats(s, &url).breaker == BreakerState::Open
    })
    .await;
    let t = url_stats(&s, &url);
    assert_eq!(t.announces_failed, 3);
    assert_eq!(t.announces_succeeded, 0);
    assert_eq!(t.breaker_opened, 1);
    assert_eq!(
        t.last_error.as_deref(),
        Some("tracker says: torrent banned"),
        "the failure reason is shown"
    );
    // Open for ten minutes: a while later the tracker has still seen only
    // the three attempts, each a `started`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reqs = tracker.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.event().as_deref() == Some("started")));
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_trial_closes_the_breaker_or_reopens_it_for_twice_as_long() {
    // Fails four times (HTTP 500), then answers. With a threshold of 3:
    // open, trial fails (reopen, cool-down doubled), trial succeeds.
    let tracker = FakeHttp::start(|_, n| {
        if n < 4 {
            HttpReply::Status(500, b"oops".to_vec())
        } else {
            HttpReply::Body(announce_body(1, None, &[peer(1)]))
        }
    })
    .await;
    let url = tracker.url("/announce");
    let mut config = fast_config();
    config.breaker.cool_down = Duration::from_millis(300);
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let (reg, mut r) = registration(info_hash(2), vec![vec![url.clone()]], 7000);
    h.add_torrent(reg).await.unwrap();

    assert_eq!(next_peers(&mut r, LIMIT).await, vec![peer(1)]);
    let s = h.stats().await.unwrap();
    let t = url_stats(&s, &url);
    assert_eq!(t.breaker, BreakerState::Closed);
    assert_eq!(t.breaker_opened, 2, "{t:#?}");
    assert_eq!(t.breaker_half_opened, 2, "{t:#?}");
    assert_eq!(t.breaker_closed, 1, "{t:#?}");
    assert_eq!(t.announces_failed, 4);
    assert_eq!(t.announces_succeeded, 1);
    assert_eq!(t.last_error.as_deref(), Some("HTTP status 500"));

    // Only one trial per half-open period, each after the cool-down: the
    // first 300 ms, the second doubled to 600 ms.
    let at: Vec<_> = tracker.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 5);
    assert!(
        at[3] - at[2] >= Duration::from_millis(300),
        "{:?}",
        at[3] - at[2]
    );
    assert!(
        at[4] - at[3] >= Duration::from_millis(600),
        "{:?}",
        at[4] - at[3]
    );
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_redirect_loops_are_failures_of_that_tracker_only() {
    let tracker = FakeHttp::start(|req, _| match req.path.as_str() {
        "/truncated" => HttpReply::Body(b"d8:intervali1800e5:peers12:abc".to_vec()),
        "/garbage" => HttpReply::Body(b"<html>hello</html>".to_vec()),
        "/not-a-dict" => HttpReply::Body(b"li1ei2ee".to_vec()),
        "/bad-peers" => HttpReply::Body(b"d8:intervali1800e5:peers7:abcdefge".to_vec()),
        "/huge" => HttpReply::HugeWithLength(1 << 30),
        "/huge-chunked" => HttpReply::HugeChunked,
        "/status" => HttpReply::Status(503, Vec::new()),
        "/loop" => HttpReply::Redirect("/loop2".into()),
        "/loop2" => HttpReply::Redirect("/loop".into()),
        "/moved" => HttpReply::Redirect("/good".into()),
        "/good" => HttpReply::Body(announce_body(1800, None, &[peer(9)])),
        _ => HttpReply::Status(404, Vec::new()),
    })
    .await;
    let mut config = fast_config();
    config.breaker.threshold = 1000;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let cases = [
        ("/truncated", "bad response"),
        ("/garbage", "bad response"),
        ("/not-a-dict", "bad response"),
        ("/bad-peers", "bad response"),
        ("/huge", "larger than 65536"),
        ("/huge-chunked", "larger than 65536"),
        ("/status", "http status 503"),
        ("/loop", "redirect"),
    ];
    let mut keep = Vec::new();
    for (i, (path, _)) in cases.iter().enumerate() {
        let (reg, r) = registration(info_hash(10 + i as u8), vec![vec![tracker.url(path)]], 7000);
        h.add_torrent(reg).await.unwrap();
        keep.push(r);
    }
    // A good tracker (reached through a redirect) works next to them.
    let (reg, mut good) = registration(info_hash(99), vec![vec![tracker.url("/moved")]], 7000);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(next_peers(&mut good, LIMIT).await, vec![peer(9)]);

    let s = wait_stats(&h, LIMIT, "every bad tracker failed twice", |s| {
        cases
            .iter()
            .all(|(p, _)| url_stats(s, &tracker.url(p)).announces_failed >= 2)
    })
    .await;
    for (path, expected) in cases {
        let t = url_stats(&s, &tracker.url(path));
        let err = t.last_error.clone().unwrap_or_default();
        assert!(
            err.to_lowercase().contains(expected),
            "{path}: {err:?} should mention {expected:?}"
        );
        assert_eq!(t.announces_succeeded, 0, "{path}");
    }
    assert_eq!(url_stats(&s, &tracker.url("/moved")).announces_failed, 0);
    // The redirect loop stopped at the redirect limit (5), not forever.
    let loops = tracker.requests_to("/loop").len() + tracker.requests_to("/loop2").len();
    // Stats read after the requests, so they cover every attempt counted.
    let later = h.stats().await.unwrap();
    let attempts = url_stats(&later, &tracker.url("/loop")).announces_sent as usize;
    assert!(
        loops <= attempts * 6,
        "{loops} requests for {attempts} attempts"
    );
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_fall_back_only_when_a_whole_tier_fails_and_promote_the_answering_url() {
    let tracker = FakeHttp::start(|req, _| match req.path.as_str() {
        "/dead1" | "/dead2" => HttpReply::Status(500, Vec::new()),
        "/ok" => HttpReply::Body(announce_body(1, None, &[peer(1)])),
        "/backup" => HttpReply::Body(announce_body(1, None, &[peer(2)])),
        _ => HttpReply::Status(404, Vec::new()),
    })
    .await;
    let mut config = fast_config();
    config.breaker.threshold = 1000;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());

    // Tier 0 is all dead: the walk reaches tier 1.
    let dead = vec![
        vec![tracker.url("/dead1"), tracker.url("/dead2")],
        vec![tracker.url("/backup")],
    ];
    let (reg, mut r) = registration(info_hash(20), dead, 7000);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(next_peers(&mut r, LIMIT).await, vec![peer(2)]);
    assert_eq!(tracker.requests_to("/dead1").len(), 1);
    assert_eq!(tracker.requests_to("/dead2").len(), 1);
    h.remove_torrent(info_hash(20)).await.unwrap();

    // Tier 0 has one live URL: tier 1 is never asked, and once the live
    // URL answered it is asked first, so the dead one is tried at most once.
    let dead_before = tracker.requests_to("/dead1").len();
    let tiers = vec![
        vec![tracker.url("/dead1"), tracker.url("/ok")],
        vec![tracker.url("/backup")],
    ];
    let backup_before = tracker.requests_to("/backup").len();
    let (reg, mut r) = registration(info_hash(21), tiers, 7000);
    h.add_torrent(reg).await.unwrap();
    for _ in 0..3 {
        assert_eq!(next_peers(&mut r, LIMIT).await, vec![peer(1)]);
    }
    assert!(tracker.requests_to("/dead1").len() - dead_before <= 1);
    assert_eq!(tracker.requests_to("/backup").len(), backup_before);
    let ok = tracker.requests_to("/ok");
    assert!(ok.len() >= 3);
    // `started` first, then regular announces with the counters.
    assert_eq!(ok[0].event().as_deref(), Some("started"));
    assert!(ok[1..].iter().all(|r| r.event().is_none()));
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_carry_our_values_and_completed_goes_once_after_min_interval() {
    // interval 1 s, min interval 2 s: announces are never closer than 2 s,
    // and `completed`, asked for right after `started`, waits for it too.
    let tracker = FakeHttp::start(|_, n| {
        let mut body = announce_body(1, Some(2), &[peer(3)]);
        if n == 0 {
            // A tracker id to echo: insert it before the final `e`.
            body.pop();
            body.extend_from_slice(b"10:tracker id4:abcde");
        }
        HttpReply::Body(body)
    })
    .await;
    let url = tracker.url("/announce");
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, mut r) = registration(info_hash(30), vec![vec![url.clone()]], 7123);
    r.progress.send_replace(actors::tracker::AnnounceProgress {
        uploaded: 11,
        downloaded: 22,
        left: 33,
    });
    h.add_torrent(reg).await.unwrap();
    next_peers(&mut r, LIMIT).await;
    h.completed(info_hash(30)).await.unwrap();
    r.progress.send_replace(actors::tracker::AnnounceProgress {
        uploaded: 44,
        downloaded: 55,
        left: 0,
    });
    next_peers(&mut r, LIMIT).await;
    // Asking again changes nothing: `completed` is sent once.
    h.completed(info_hash(30)).await.unwrap();
    next_peers(&mut r, LIMIT).await;

    let mut reqs = tracker.requests();
    assert!(reqs.len() >= 3);
    reqs.truncate(3);
    let events: Vec<_> = reqs.iter().map(|r| r.event()).collect();
    assert_eq!(
        events,
        [Some("started".into()), Some("completed".into()), None]
    );
    for pair in reqs.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(2),
            "min interval broken: {gap:?}"
        );
    }
    let first = &reqs[0];
    assert_eq!(first.param("port").as_deref(), Some("7123"));
    assert_eq!(first.param("uploaded").as_deref(), Some("11"));
    assert_eq!(first.param("downloaded").as_deref(), Some("22"));
    assert_eq!(first.param("left").as_deref(), Some("33"));
    assert_eq!(first.param("numwant").as_deref(), Some("50"));
    assert_eq!(first.param("compact").as_deref(), Some("1"));
    assert_eq!(first.params["info_hash"], [30u8; 20]);
    assert_eq!(first.param("trackerid"), None);
    let key = first.param("key").expect("a key");
    assert_eq!(key.len(), 8);
    assert!(
        reqs.iter()
            .all(|r| r.param("key").as_deref() == Some(key.as_str()))
    );
    assert_eq!(reqs[1].param("left").as_deref(), Some("0"));
    assert_eq!(reqs[1].param("uploaded").as_deref(), Some("44"));
    assert_eq!(reqs[1].param("trackerid").as_deref(), Some("abcd"));
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_sends_stopped_and_waits_a_bounded_time() {
    // Answers `started`; swallows `stopped` without ever answering.
    let tracker = FakeHttp::start(|req, _| match req.event().as_deref() {
        Some("stopped") => HttpReply::Hang,
        _ => HttpReply::Body(announce_body(1800, None, &[peer(4)])),
    })
    .await;
    let url = tracker.url("/announce");
    let mut config = fast_config();
    config.stop_timeout = Duration::from_millis(300);
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let (reg, mut r) = registration(info_hash(40), vec![vec![url.clone()]], 7000);
    h.add_torrent(reg).await.unwrap();
    next_peers(&mut r, LIMIT).await;

    tokio::time::timeout(LIMIT, h.remove_torrent(info_hash(40)))
        .await
        .expect("remove_torrent returns despite a tracker that never answers")
        .unwrap();
    let events: Vec<_> = tracker.requests().iter().map(|r| r.event()).collect();
    assert_eq!(events, [Some("started".into()), Some("stopped".into())]);
    let s = h.stats().await.unwrap();
    assert_eq!(s.torrents, 0);
    let t = url_stats(&s, &url);
    assert_eq!(t.announces_failed, 1, "the unanswered stopped counts");
    assert_eq!(
        h.remove_torrent(info_hash(40)).await,
        Err(actors::tracker::TrackerError::UnknownTorrent(info_hash(40)))
    );
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_stopped_for_every_torrent() {
    let tracker =
        FakeHttp::start(|_, _| HttpReply::Body(announce_body(1800, None, &[peer(5)]))).await;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let mut keep = Vec::new();
    for i in 0..3 {
        let (reg, mut r) = registration(info_hash(50 + i), vec![vec![tracker.url("/a")]], 7000);
        h.add_torrent(reg).await.unwrap();
        next_peers(&mut r, LIMIT).await;
        keep.push(r);
    }
    cancel.cancel();
    tokio::time::timeout(LIMIT, join).await.unwrap().unwrap();
    let stopped: Vec<_> = tracker
        .requests()
        .into_iter()
        .filter(|r| r.event().as_deref() == Some("stopped"))
        .map(|r| r.params["info_hash"].clone())
        .collect();
    assert_eq!(stopped.len(), 3);
    for i in 0..3 {
        assert!(stopped.contains(&vec![50 + i; 20]));
    }
    assert_eq!(h.stats().await, Err(actors::tracker::TrackerError::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trackers_on_one_host_resolve_once() {
    let a = FakeHttp::start(|_, _| HttpReply::Body(announce_body(1, None, &[peer(6)]))).await;
    let b = FakeHttp::start(|_, _| HttpReply::Body(announce_body(1, None, &[peer(7)]))).await;
    let url_a = format!("http://localhost:{}/announce", a.addr.port());
    let url_b = format!("http://localhost:{}/announce", b.addr.port());
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, mut ra) = registration(info_hash(60), vec![vec![url_a]], 7000);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(next_peers(&mut ra, LIMIT).await, vec![peer(6)]);
    let (reg, mut rb) = registration(info_hash(61), vec![vec![url_b]], 7000);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(next_peers(&mut rb, LIMIT).await, vec![peer(7)]);
    // Re-announces (each on a new connection: the scripted tracker closes
    // them) hit the cache too.
    next_peers(&mut ra, LIMIT).await;
    next_peers(&mut rb, LIMIT).await;
    let s = h.stats().await.unwrap();
    assert_eq!(s.dns.misses, 1, "{:?}", s.dns);
    assert!(s.dns.hits >= 3, "{:?}", s.dns);
    assert_eq!(s.dns.failures, 0);
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_tracker_does_not_hold_up_another() {
    let hung = Arc::new(AtomicBool::new(false));
    let slow = {
        let hung = hung.clone();
        FakeHttp::start(move |_, _| {
            hung.store(true, Ordering::SeqCst);
            HttpReply::Hang
        })
        .await
    };
    let fast = FakeHttp::start(|_, _| HttpReply::Body(announce_body(1800, None, &[peer(8)]))).await;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, _slow_r) = registration(info_hash(70), vec![vec![slow.url("/a")]], 7000);
    h.add_torrent(reg).await.unwrap();
    wait_stats(&h, LIMIT, "the slow announce is out", |_| {
        hung.load(Ordering::SeqCst)
    })
    .await;
    let (reg, mut fast_r) = registration(info_hash(71), vec![vec![fast.url("/a")]], 7000);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(next_peers(&mut fast_r, LIMIT).await, vec![peer(8)]);
    // The slow tracker has still not answered.
    let s = h.stats().await.unwrap();
    let t = url_stats(&s, &slow.url("/a"));
    assert_eq!(
        (t.announces_sent, t.announces_succeeded, t.announces_failed),
        (1, 0, 0)
    );
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_peer_channel_drops_the_batch_and_never_blocks() {
    let tracker = FakeHttp::start(|_, _| HttpReply::Body(announce_body(1, None, &[peer(9)]))).await;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (mut reg, _r) = registration(info_hash(80), vec![vec![tracker.url("/a")]], 7000);
    // A channel of one that nobody reads.
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    reg.peers = tx;
    h.add_torrent(reg).await.unwrap();
    let s = wait_stats(&h, LIMIT, "two dropped batches", |s| {
        s.peer_batches_dropped >= 2
    })
    .await;
    assert!(url_stats(&s, &tracker.url("/a")).announces_succeeded >= 3);
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_checked() {
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, _r) = registration(info_hash(90), vec![vec![], vec![String::new()]], 7000);
    assert_eq!(
        h.add_torrent(reg).await,
        Err(actors::tracker::TrackerError::NoTrackers(info_hash(90)))
    );
    let url = "http://127.0.0.1:9/announce".to_owned();
    let (reg, _r1) = registration(info_hash(91), vec![vec![url.clone()]], 7000);
    h.add_torrent(reg).await.unwrap();
    let (reg, _r2) = registration(info_hash(91), vec![vec![url]], 7001);
    assert_eq!(
        h.add_torrent(reg).await,
        Err(actors::tracker::TrackerError::AlreadyRegistered(info_hash(
            91
        )))
    );
    assert_eq!(
        h.completed(info_hash(92)).await,
        Err(actors::tracker::TrackerError::UnknownTorrent(info_hash(92)))
    );
    cancel.cancel();
    join.await.unwrap();
}

/// Backoff and cool-down under paused time: `.invalid` names fail in the
/// resolver without any socket (RFC 6761), so virtual time is exact.
#[tokio::test(start_paused = true)]
async fn backoff_and_cool_down_follow_the_schedule() {
    let url = "http://tracker.invalid/announce".to_owned();
    let mut config = fast_config();
    config.min_retry_delay = Duration::from_millis(1);
    config.breaker.backoff_base = Duration::from_secs(10);
    config.breaker.backoff_cap = Duration::from_secs(25);
    config.breaker.threshold = 5;
    config.breaker.cool_down = Duration::from_secs(100);
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let (reg, _r) = registration(info_hash(100), vec![vec![url.clone()]], 7000);
    h.add_torrent(reg).await.unwrap();

    // Record the virtual time of every failure, stepping 100 ms at a time.
    let start = tokio::time::Instant::now();
    let mut times = Vec::new();
    let mut seen = 0;
    while times.len() < 7 && start.elapsed() < Duration::from_secs(1000) {
        let s = h.stats().await.unwrap();
        let t = url_stats(&s, &url);
        assert!(
            t.last_error
                .as_deref()
                .is_none_or(|e| e.contains("invalid")),
            "{t:?}"
        );
        while seen < t.announces_failed {
            seen += 1;
            times.push(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(times.len(), 7, "{times:?}");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Full jitter: each wait is at most its ceiling (10, 20, 25, 25 s, plus
    // one polling step), never more.
    for (gap, ceiling) in gaps.iter().zip([10u64, 20, 25, 25]) {
        assert!(
            *gap <= Duration::from_secs(ceiling) + Duration::from_millis(300),
            "gap {gap:?} above ceiling {ceiling} s: {gaps:?}"
        );
    }
    // The fifth failure opened the breaker: nothing for the cool-down, then
    // one trial; its failure reopens for twice as long.
    assert!(gaps[4] >= Duration::from_secs(100), "{gaps:?}");
    assert!(gaps[5] >= Duration::from_secs(200), "{gaps:?}");
    let s = h.stats().await.unwrap();
    let t = url_stats(&s, &url);
    // Opened by the fifth failure, reopened by each failed trial.
    assert_eq!(t.breaker_opened, 3);
    assert_eq!(t.breaker_half_opened, 2);
    assert_eq!(t.breaker, BreakerState::Open);
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_tracker_holds_only_its_share_of_announce_slots() {
    let hung = FakeHttp::start(|_, _| HttpReply::Hang).await;
    let good =
        FakeHttp::start(|_, _| HttpReply::Body(announce_body(1800, None, &[peer(10)]))).await;
    let mut config = fast_config();
    config.max_in_flight_per_tracker = 2;
    config.max_concurrent_announces = 3;
    config.stop_timeout = Duration::from_millis(200);
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let mut keep = Vec::new();
    for i in 0..4 {
        let (reg, r) = registration(info_hash(110 + i), vec![vec![hung.url("/a")]], 7000);
        h.add_torrent(reg).await.unwrap();
        keep.push(r);
    }
    let started = || {
        hung.requests()
            .iter()
            .filter(|r| r.event().as_deref() == Some("started"))
            .count()
    };
    wait_stats(&h, LIMIT, "two announces to the hung tracker", |_| {
        started() == 2
    })
    .await;
    // The third global slot is free for another tracker.
    let (reg, mut r) = registration(info_hash(120), vec![vec![good.url("/a")]], 7000);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(next_peers(&mut r, LIMIT).await, vec![peer(10)]);
    assert_eq!(started(), 2, "the other two wait for a slot");
    // Removing one that hangs frees its slot (its task is aborted): a
    // waiting torrent takes it.
    let hung_stats = h.stats().await.unwrap();
    let in_flight: Vec<_> = hung
        .requests()
        .iter()
        .map(|r| r.params["info_hash"][0])
        .collect();
    h.remove_torrent(info_hash(in_flight[0])).await.unwrap();
    wait_stats(&h, LIMIT, "a waiting torrent announces", |_| started() == 3).await;
    assert_eq!(url_stats(&hung_stats, &hung.url("/a")).announces_failed, 0);
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_wide_rate_limit_spaces_announces() {
    let tracker =
        FakeHttp::start(|_, _| HttpReply::Body(announce_body(1800, None, &[peer(11)]))).await;
    let mut config = fast_config();
    config.announces_per_second = std::num::NonZeroU32::new(2).unwrap();
    config.announce_burst = std::num::NonZeroU32::new(1).unwrap();
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let mut regs = Vec::new();
    for i in 0..4 {
        let (reg, r) = registration(info_hash(130 + i), vec![vec![tracker.url("/a")]], 7000);
        h.add_torrent(reg).await.unwrap();
        regs.push(r);
    }
    for r in &mut regs {
        assert_eq!(next_peers(r, LIMIT).await, vec![peer(11)]);
    }
    let s = h.stats().await.unwrap();
    assert!(s.rate_limited >= 1, "{s:?}");
    // Two a second with no burst: four announces span at least 1.5 s
    // (less a little for delivery jitter).
    let at: Vec<_> = tracker.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 4);
    assert!(
        at[3] - at[0] >= Duration::from_millis(1200),
        "{:?}",
        at[3] - at[0]
    );
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_names_expire_after_the_ttl_cap() {
    let a = FakeHttp::start(|_, _| HttpReply::Body(announce_body(1, None, &[peer(12)]))).await;
    let url = format!("http://localhost:{}/announce", a.addr.port());
    let mut config = fast_config();
    // Nothing stays cached: every new connection (the scripted tracker
    // closes each one) resolves again.
    config.dns.max_ttl = Duration::ZERO;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(config, cancel.clone());
    let (reg, mut r) = registration(info_hash(140), vec![vec![url]], 7000);
    h.add_torrent(reg).await.unwrap();
    next_peers(&mut r, LIMIT).await;
    next_peers(&mut r, LIMIT).await;
    let s = h.stats().await.unwrap();
    assert!(s.dns.misses >= 2, "{:?}", s.dns);
    assert_eq!(s.dns.hits, 0, "{:?}", s.dns);
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_a_reused_connection_is_sent_again_not_failed() {
    // Like opentracker: keep-alive in the headers, but the connection does
    // not survive to a second request.
    let tracker =
        FakeHttp::start(|_, _| HttpReply::KeepAliveThenReset(announce_body(1, None, &[peer(13)])))
            .await;
    let url = tracker.url("/announce");
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, mut r) = registration(info_hash(150), vec![vec![url.clone()]], 7000);
    h.add_torrent(reg).await.unwrap();
    for _ in 0..3 {
        assert_eq!(next_peers(&mut r, LIMIT).await, vec![peer(13)]);
    }
    let resets = tracker.requests_to("(reset)").len();
    assert!(resets >= 1, "the pooled connection was never reused");
    let s = h.stats().await.unwrap();
    assert_eq!(url_stats(&s, &url).announces_failed, 0, "{s:#?}");
    cancel.cancel();
    join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peer_entries_are_skipped_and_ipv6_peers_kept() {
    // Dictionary peers: one good, a hostname, port 0, not a dictionary;
    // then one compact IPv6 peer.
    let mut body = b"d8:intervali1800e5:peersl".to_vec();
    body.extend_from_slice(b"d2:ip8:10.0.0.14:porti5ee");
    body.extend_from_slice(b"d2:ip4:host4:porti6ee");
    body.extend_from_slice(b"d2:ip8:10.0.0.14:porti0ee");
    body.extend_from_slice(b"i3e");
    body.extend_from_slice(b"e6:peers618:");
    body.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    body.extend_from_slice(&7u16.to_be_bytes());
    body.push(b'e');
    let tracker = FakeHttp::start(move |_, _| HttpReply::Body(body.clone())).await;
    let cancel = CancellationToken::new();
    let (h, join) = spawn(fast_config(), cancel.clone());
    let (reg, mut r) = registration(info_hash(160), vec![vec![tracker.url("/a")]], 7000);
    h.add_torrent(reg).await.unwrap();
    assert_eq!(
        next_peers(&mut r, LIMIT).await,
        vec![peer(5), "[::1]:7".parse().unwrap()]
    );
    cancel.cancel();
    join.await.unwrap();
}

//! HTTP tracker codec: announce URLs against hand-written strings, announce
//! responses with every peer format, failures, and scrape.

use std::net::SocketAddr;

use proptest::prelude::*;
use protocol::tracker::{
    AnnounceRequest, Event, ScrapeFile, TrackerError, announce_url, decode_compact_peers,
    parse_announce_response, parse_scrape_response, scrape_url,
};

fn request() -> AnnounceRequest {
    let mut info_hash = [0u8; 20];
    for (i, b) in info_hash.iter_mut().enumerate() {
        *b = i as u8; // 0x00..=0x13
    }
    AnnounceRequest {
        info_hash,
        peer_id: *b"-AT0001-123456789012",
        port: 6881,
        uploaded: 0,
        downloaded: 1024,
        left: 1_000_000,
        event: Some(Event::Started),
        numwant: Some(50),
        key: Some(0x00ab_cdef),
        trackerid: None,
        compact: true,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn announce_url_matches_hand_written_string() {
    let url = announce_url("http://tracker.example:6969/announce", &request());
    assert_eq!(
        url,
        "http://tracker.example:6969/announce\
         ?info_hash=%00%01%02%03%04%05%06%07%08%09%0A%0B%0C%0D%0E%0F%10%11%12%13\
         &peer_id=-AT0001-123456789012\
         &port=6881&uploaded=0&downloaded=1024&left=1000000&compact=1\
         &event=started&numwant=50&key=00ABCDEF"
    );
}

#[test]
fn announce_url_encodes_every_reserved_byte() {
    let mut req = request();
    req.info_hash = *b"AZaz09-._~ /?&=%+\xff\x80!";
    req.peer_id = [0xff; 20];
    req.event = None;
    req.numwant = None;
    req.key = None;
    req.compact = false;
    req.trackerid = Some("id &x".to_owned());
    let url = announce_url("https://t.example/a?passkey=abc", &req);
    assert_eq!(
        url,
        format!(
            "https://t.example/a?passkey=abc\
             &info_hash=AZaz09-._~%20%2F%3F%26%3D%25%2B%FF%80%21\
             &peer_id={}\
             &port=6881&uploaded=0&downloaded=1024&left=1000000&compact=0\
             &trackerid=id%20%26x",
            "%FF".repeat(20)
        )
    );
}

#[test]
fn announce_url_separator_and_fragment() {
    let req = request();
    assert!(announce_url("http://t/ann?", &req).starts_with("http://t/ann?info_hash="));
    assert!(announce_url("http://t/ann?a=1&", &req).starts_with("http://t/ann?a=1&info_hash="));
    assert!(announce_url("http://t/ann#frag", &req).starts_with("http://t/ann?info_hash="));
    for event in [Event::Started, Event::Completed, Event::Stopped] {
        let url = announce_url(
            "http://t/a",
            &AnnounceRequest {
                event: Some(event),
                ..request()
            },
        );
        assert!(url.contains(&format!("&event={}&", event.as_str())));
    }
}

#[test]
fn compact_ipv4_peers() {
    let body = b"d8:completei5e10:incompletei3e8:intervali1800e12:min intervali60e\
5:peers12:\xc0\x00\x02\x01\x1a\xe1\x0a\x00\x00\x01\x00\x50e";
    let r = parse_announce_response(body).unwrap();
    assert_eq!(r.interval, 1800);
    assert_eq!(r.min_interval, Some(60));
    assert_eq!(r.complete, Some(5));
    assert_eq!(r.incomplete, Some(3));
    assert_eq!(r.peers, vec![addr("192.0.2.1:6881"), addr("10.0.0.1:80")]);
    assert_eq!(r.skipped_peers, 0);
    assert_eq!(r.warning, None);
    assert_eq!(r.tracker_id, None);
}

#[test]
fn compact_peers_with_partial_entry_are_rejected() {
    let body = b"d8:intervali60e5:peers7:\x01\x02\x03\x04\x00\x01\x09e";
    assert_eq!(
        parse_announce_response(body),
        Err(TrackerError::CompactPeers {
            field: "peers",
            len: 7,
            entry: 6
        })
    );
    let body = b"d8:intervali60e6:peers65:abcdee";
    assert_eq!(
        parse_announce_response(body),
        Err(TrackerError::CompactPeers {
            field: "peers6",
            len: 5,
            entry: 18
        })
    );
}

#[test]
fn dictionary_peers_with_malformed_entries_skipped() {
    let body = b"d8:intervali900e5:peersl\
d2:ip9:192.0.2.77:peer id20:-XX0001-0000000000004:porti6881ee\
d2:ip11:2001:db8::14:porti51413ee\
d2:ip13:[2001:db8::2]4:porti1ee\
d2:ip16:::ffff:192.0.2.94:porti2ee\
d2:ip15:tracker.example4:porti6881ee\
d2:ip7:1.2.3.44:porti0ee\
d2:ip7:1.2.3.44:porti70000ee\
d2:ip7:1.2.3.44:port4:6881e\
d4:porti1ee\
d2:ip7:1.2.3.4e\
i5e\
ee";
    let r = parse_announce_response(body).unwrap();
    assert_eq!(
        r.peers,
        vec![
            addr("192.0.2.7:6881"),
            addr("[2001:db8::1]:51413"),
            addr("[2001:db8::2]:1"),
            // IPv4-mapped addresses are canonicalised.
            addr("192.0.2.9:2"),
        ]
    );
    // hostname, port 0, port out of range, port as string, no ip, no port,
    // not a dictionary.
    assert_eq!(r.skipped_peers, 7);
}

#[test]
fn ipv6_compact_peers_and_mixed_lists() {
    let mut body = b"d8:intervali60e5:peers6:\x7f\x00\x00\x01\x00\x016:peers636:".to_vec();
    body.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    body.extend_from_slice(&[0x1a, 0xe1]);
    body.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    body.extend_from_slice(&[0, 0]); // port 0: dropped
    body.push(b'e');
    let r = parse_announce_response(&body).unwrap();
    assert_eq!(
        r.peers,
        vec![addr("127.0.0.1:1"), addr("[2001:db8::1]:6881")]
    );
    assert_eq!(r.skipped_peers, 1);
}

#[test]
fn no_peers_key_is_an_empty_list() {
    let r = parse_announce_response(b"d8:intervali60ee").unwrap();
    assert!(r.peers.is_empty());
    assert_eq!(r.skipped_peers, 0);
}

#[test]
fn failure_reason_is_its_own_error() {
    assert_eq!(
        parse_announce_response(b"d14:failure reason17:torrent not founde"),
        Err(TrackerError::Failure("torrent not found".to_owned()))
    );
    // It wins even when other keys are present.
    assert_eq!(
        parse_announce_response(b"d14:failure reason3:nah8:intervali5ee"),
        Err(TrackerError::Failure("nah".to_owned()))
    );
    assert_eq!(
        parse_scrape_response(b"d14:failure reason6:no waye"),
        Err(TrackerError::Failure("no way".to_owned()))
    );
    assert_eq!(
        TrackerError::Failure("x".into()).to_string(),
        "tracker failure: x"
    );
}

#[test]
fn warning_and_tracker_id() {
    let r = parse_announce_response(b"d8:intervali60e10:tracker id3:abc15:warning message4:slowe")
        .unwrap();
    assert_eq!(r.warning.as_deref(), Some("slow"));
    assert_eq!(r.tracker_id.as_deref(), Some("abc"));
}

#[test]
fn missing_or_bad_interval_is_an_error() {
    assert_eq!(
        parse_announce_response(b"d5:peers0:e"),
        Err(TrackerError::MissingField("interval"))
    );
    for body in [
        &b"d8:intervali-1ee"[..],
        b"d8:interval2:60e",
        b"d8:intervali4294967296ee",
    ] {
        assert!(matches!(
            parse_announce_response(body),
            Err(TrackerError::InvalidField {
                field: "interval",
                ..
            })
        ));
    }
}

#[test]
fn malformed_bodies_are_errors() {
    assert!(matches!(
        parse_announce_response(b"<html>502 Bad Gateway</html>"),
        Err(TrackerError::Bencode(_))
    ));
    assert_eq!(
        parse_announce_response(b"li1ee"),
        Err(TrackerError::NotADict)
    );
    assert!(matches!(
        parse_announce_response(b"d8:intervali60e5:peersi1ee"),
        Err(TrackerError::InvalidField { field: "peers", .. })
    ));
    assert!(matches!(
        parse_announce_response(b"d8:intervali60e6:peers6lee"),
        Err(TrackerError::InvalidField {
            field: "peers6",
            ..
        })
    ));
}

#[test]
fn optional_fields_of_the_wrong_type_are_ignored() {
    let r = parse_announce_response(
        b"d8:completei-1e10:incomplete1:x8:intervali60e12:min interval1:y10:tracker id2:\xff\xfe15:warning messagei1ee",
    )
    .unwrap();
    assert_eq!(r.complete, None);
    assert_eq!(r.incomplete, None);
    assert_eq!(r.min_interval, None);
    assert_eq!(r.tracker_id, None);
    assert_eq!(r.warning, None);
}

#[test]
fn scrape_response() {
    let body = b"d5:filesd\
20:aaaaaaaaaaaaaaaaaaaad8:completei5e10:downloadedi50e10:incompletei10ee\
20:bbbbbbbbbbbbbbbbbbbbd8:completei1ee\
3:badd8:completei1ee\
20:ccccccccccccccccccccd8:completei-1ee\
20:ddddddddddddddddddddi3e\
ee";
    let r = parse_scrape_response(body).unwrap();
    assert_eq!(r.files.len(), 2);
    assert_eq!(
        r.files[&[b'a'; 20]],
        ScrapeFile {
            complete: 5,
            downloaded: 50,
            incomplete: 10
        }
    );
    assert_eq!(
        r.files[&[b'b'; 20]],
        ScrapeFile {
            complete: 1,
            downloaded: 0,
            incomplete: 0
        }
    );
    assert_eq!(r.skipped, 3);
    assert_eq!(
        parse_scrape_response(b"de"),
        Err(TrackerError::MissingField("files"))
    );
    assert!(matches!(
        parse_scrape_response(b"d5:filesi1ee"),
        Err(TrackerError::InvalidField { field: "files", .. })
    ));
}

#[test]
fn scrape_url_derivation() {
    let cases = [
        ("http://t.example/announce", Some("http://t.example/scrape")),
        (
            "http://t.example:80/x/announce?passkey=a/announce",
            Some("http://t.example:80/x/scrape?passkey=a/announce"),
        ),
        (
            "http://t.example/announce.php",
            Some("http://t.example/scrape.php"),
        ),
        ("http://t.example/a", None),
        ("http://t.example/announce/", None),
        (
            "http://t.example/x/announcer",
            Some("http://t.example/x/scraper"),
        ),
        ("http://t.example/xannounce", None),
        ("http://announce", None),
        (
            "http://t.example/announce#frag",
            Some("http://t.example/scrape"),
        ),
        ("announce", None),
    ];
    for (announce, want) in cases {
        assert_eq!(scrape_url(announce).as_deref(), want, "{announce}");
    }
}

#[test]
fn compact_helpers() {
    assert_eq!(
        decode_compact_peers(&[1, 2, 3, 4, 0, 5], false),
        Some(vec![addr("1.2.3.4:5")])
    );
    assert_eq!(decode_compact_peers(&[1, 2, 3, 4, 0], false), None);
    assert_eq!(decode_compact_peers(&[], true), Some(vec![]));
}

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_announce_response(&data);
        let _ = parse_scrape_response(&data);
    }

    #[test]
    fn announce_url_is_ascii_and_reversible(info_hash in any::<[u8; 20]>(), peer_id in any::<[u8; 20]>()) {
        let req = AnnounceRequest { info_hash, peer_id, ..request() };
        let url = announce_url("http://t/announce", &req);
        prop_assert!(url.is_ascii());
        let q = url.split_once('?').unwrap().1;
        let field = |name: &str| q.split('&').find_map(|kv| kv.strip_prefix(name)).unwrap().to_owned();
        prop_assert_eq!(percent_decode(&field("info_hash=")), info_hash.to_vec());
        prop_assert_eq!(percent_decode(&field("peer_id=")), peer_id.to_vec());
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

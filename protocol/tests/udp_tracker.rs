//! BEP 15 datagrams checked byte for byte against the layouts in the BEP,
//! round trips in both directions, and rejection of wrong sizes and actions.

use std::net::SocketAddr;

use proptest::prelude::*;
use protocol::tracker::Event;
use protocol::udp_tracker::{
    self, AnnounceRequest, AnnounceResponse, ConnectRequest, ConnectResponse, ErrorResponse,
    ScrapeRequest, ScrapeResponse, ScrapeStats, UdpError, UdpRequest, UdpResponse, parse_request,
    parse_response,
};

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn hash(b: u8) -> [u8; 20] {
    [b; 20]
}

#[test]
fn connect_request_layout() {
    let req = ConnectRequest {
        transaction_id: 0xdead_beef,
    };
    let expected = cat(&[
        &[0x00, 0x00, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80], // 0: protocol id 0x41727101980
        &[0, 0, 0, 0],                                     // 8: action 0 (connect)
        &[0xde, 0xad, 0xbe, 0xef],                         // 12: transaction id
    ]);
    assert_eq!(req.encode(), expected);
    assert_eq!(ConnectRequest::parse(&expected), Ok(req));
    assert_eq!(parse_request(&expected), Ok(UdpRequest::Connect(req)));
}

#[test]
fn connect_response_layout() {
    let resp = ConnectResponse {
        transaction_id: 0x0102_0304,
        connection_id: 0x1122_3344_5566_7788,
    };
    let expected = cat(&[
        &[0, 0, 0, 0],                                     // 0: action 0
        &[1, 2, 3, 4],                                     // 4: transaction id
        &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88], // 8: connection id
    ]);
    assert_eq!(resp.encode(), expected);
    assert_eq!(
        parse_response(&expected, false),
        Ok(UdpResponse::Connect(resp))
    );
    assert_eq!(
        parse_response(&expected, true),
        Ok(UdpResponse::Connect(resp))
    );
}

fn announce_request() -> AnnounceRequest {
    AnnounceRequest {
        connection_id: 0x1122_3344_5566_7788,
        transaction_id: 0x0a0b_0c0d,
        info_hash: hash(0xaa),
        peer_id: hash(0xbb),
        downloaded: 0x100,
        left: 0x0102_0304_0506_0708,
        uploaded: 7,
        event: Some(Event::Started),
        ip: None,
        key: 0xcafe_babe,
        num_want: None,
        port: 6881,
    }
}

#[test]
fn announce_request_layout() {
    let req = announce_request();
    let expected = cat(&[
        &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88], // 0: connection id
        &[0, 0, 0, 1],                                     // 8: action 1 (announce)
        &[0x0a, 0x0b, 0x0c, 0x0d],                         // 12: transaction id
        &[0xaa; 20],                                       // 16: info hash
        &[0xbb; 20],                                       // 36: peer id
        &[0, 0, 0, 0, 0, 0, 0x01, 0x00],                   // 56: downloaded
        &[1, 2, 3, 4, 5, 6, 7, 8],                         // 64: left
        &[0, 0, 0, 0, 0, 0, 0, 7],                         // 72: uploaded
        &[0, 0, 0, 2],                                     // 80: event 2 (started)
        &[0, 0, 0, 0],                                     // 84: ip 0 (default)
        &[0xca, 0xfe, 0xba, 0xbe],                         // 88: key
        &[0xff, 0xff, 0xff, 0xff],                         // 92: num_want -1 (default)
        &[0x1a, 0xe1],                                     // 96: port 6881
    ]);
    assert_eq!(expected.len(), 98);
    assert_eq!(req.encode(), expected);
    assert_eq!(AnnounceRequest::parse(&expected), Ok(req));
    assert_eq!(parse_request(&expected), Ok(UdpRequest::Announce(req)));
}

#[test]
fn announce_request_events_ip_and_num_want() {
    for (event, code) in [
        (None, 0u8),
        (Some(Event::Completed), 1),
        (Some(Event::Started), 2),
        (Some(Event::Stopped), 3),
    ] {
        let req = AnnounceRequest {
            event,
            ip: Some("10.1.2.3".parse().unwrap()),
            num_want: Some(50),
            ..announce_request()
        };
        let bytes = req.encode();
        assert_eq!(&bytes[80..84], &[0, 0, 0, code]);
        assert_eq!(&bytes[84..88], &[10, 1, 2, 3]);
        assert_eq!(&bytes[92..96], &[0, 0, 0, 50]);
        assert_eq!(AnnounceRequest::parse(&bytes), Ok(req));
    }
    let mut bytes = announce_request().encode();
    bytes[83] = 4;
    assert_eq!(AnnounceRequest::parse(&bytes), Err(UdpError::BadEvent(4)));
    // Any negative num_want means "default".
    let mut bytes = announce_request().encode();
    bytes[92..96].copy_from_slice(&(-5i32).to_be_bytes());
    assert_eq!(AnnounceRequest::parse(&bytes).unwrap().num_want, None);
    // Huge num_want is clamped to what the signed field holds.
    let req = AnnounceRequest {
        num_want: Some(u32::MAX),
        ..announce_request()
    };
    assert_eq!(&req.encode()[92..96], &[0x7f, 0xff, 0xff, 0xff]);
}

#[test]
fn announce_request_with_bep41_options_is_accepted() {
    let req = announce_request();
    let mut bytes = req.encode();
    bytes.extend_from_slice(&[2, 9]); // option 2 (URL data), 9 bytes
    bytes.extend_from_slice(b"/announce");
    bytes.push(0); // end of options
    assert_eq!(parse_request(&bytes), Ok(UdpRequest::Announce(req)));
}

#[test]
fn announce_response_ipv4_layout() {
    let resp = AnnounceResponse {
        transaction_id: 0x0a0b_0c0d,
        interval: 1800,
        leechers: 3,
        seeders: 0x0102_0304,
        peers: vec![
            "192.0.2.1:6881".parse().unwrap(),
            "198.51.100.255:65535".parse().unwrap(),
        ],
    };
    let expected = cat(&[
        &[0, 0, 0, 1],                    // 0: action 1
        &[0x0a, 0x0b, 0x0c, 0x0d],        // 4: transaction id
        &[0, 0, 0x07, 0x08],              // 8: interval 1800
        &[0, 0, 0, 3],                    // 12: leechers
        &[1, 2, 3, 4],                    // 16: seeders
        &[192, 0, 2, 1, 0x1a, 0xe1],      // 20: peer 1 (ip, port)
        &[198, 51, 100, 255, 0xff, 0xff], // 26: peer 2
    ]);
    assert_eq!(resp.encode(false), expected);
    assert_eq!(
        parse_response(&expected, false),
        Ok(UdpResponse::Announce(resp))
    );
    // The same bytes read as IPv6 are 12 peer bytes: not a whole entry.
    assert!(matches!(
        parse_response(&expected, true),
        Err(UdpError::BadLength { len: 32, .. })
    ));
}

#[test]
fn announce_response_ipv6_layout() {
    let peer: SocketAddr = "[2001:db8::1]:51413".parse().unwrap();
    let resp = AnnounceResponse {
        transaction_id: 9,
        interval: 60,
        leechers: 0,
        seeders: 1,
        peers: vec![peer, "192.0.2.1:1".parse().unwrap()],
    };
    let expected = cat(&[
        &[0, 0, 0, 1],                                                 // 0: action 1
        &[0, 0, 0, 9],                                                 // 4: transaction id
        &[0, 0, 0, 60],                                                // 8: interval
        &[0, 0, 0, 0],                                                 // 12: leechers
        &[0, 0, 0, 1],                                                 // 16: seeders
        &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], // 20: IPv6
        &[0xc8, 0xd5],                                                 // 36: port 51413
    ]);
    // The IPv4 peer cannot be expressed in an IPv6 response and is left out.
    assert_eq!(resp.encode(true), expected);
    assert_eq!(
        parse_response(&expected, true),
        Ok(UdpResponse::Announce(AnnounceResponse {
            peers: vec![peer],
            ..resp
        }))
    );
}

#[test]
fn announce_response_drops_port_zero() {
    let mut bytes = AnnounceResponse {
        transaction_id: 1,
        interval: 1,
        leechers: 0,
        seeders: 0,
        peers: vec![],
    }
    .encode(false);
    bytes.extend_from_slice(&[1, 2, 3, 4, 0, 0, 5, 6, 7, 8, 0, 1]);
    let UdpResponse::Announce(r) = parse_response(&bytes, false).unwrap() else {
        panic!()
    };
    assert_eq!(r.peers, vec!["5.6.7.8:1".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn scrape_request_layout() {
    let req = ScrapeRequest {
        connection_id: 0x0102_0304_0506_0708,
        transaction_id: 0x1111_2222,
        info_hashes: vec![hash(0x01), hash(0x02)],
    };
    let expected = cat(&[
        &[1, 2, 3, 4, 5, 6, 7, 8], // 0: connection id
        &[0, 0, 0, 2],             // 8: action 2 (scrape)
        &[0x11, 0x11, 0x22, 0x22], // 12: transaction id
        &[0x01; 20],               // 16: info hash 1
        &[0x02; 20],               // 36: info hash 2
    ]);
    assert_eq!(req.encode(), expected);
    assert_eq!(parse_request(&expected), Ok(UdpRequest::Scrape(req)));
}

#[test]
fn scrape_request_hash_count_bounds() {
    let req = |n: usize| ScrapeRequest {
        connection_id: 1,
        transaction_id: 2,
        info_hashes: (0..n).map(|i| hash(i as u8)).collect(),
    };
    assert_eq!(
        ScrapeRequest::parse(&req(0).encode()),
        Err(UdpError::ScrapeHashCount(0))
    );
    assert_eq!(ScrapeRequest::parse(&req(74).encode()), Ok(req(74)));
    assert_eq!(
        ScrapeRequest::parse(&req(75).encode()),
        Err(UdpError::ScrapeHashCount(75))
    );
    let mut partial = req(1).encode();
    partial.pop();
    assert!(matches!(
        ScrapeRequest::parse(&partial),
        Err(UdpError::BadLength { len: 35, .. })
    ));
}

#[test]
fn scrape_response_layout() {
    let resp = ScrapeResponse {
        transaction_id: 0x1111_2222,
        stats: vec![
            ScrapeStats {
                seeders: 5,
                completed: 0x0100,
                leechers: 2,
            },
            ScrapeStats::default(),
        ],
    };
    let expected = cat(&[
        &[0, 0, 0, 2],             // 0: action 2
        &[0x11, 0x11, 0x22, 0x22], // 4: transaction id
        &[0, 0, 0, 5],             // 8: seeders
        &[0, 0, 1, 0],             // 12: completed
        &[0, 0, 0, 2],             // 16: leechers
        &[0; 12],                  // 20: second torrent
    ]);
    assert_eq!(resp.encode(), expected);
    assert_eq!(
        parse_response(&expected, false),
        Ok(UdpResponse::Scrape(resp))
    );
    assert!(matches!(
        parse_response(&expected[..31], false),
        Err(UdpError::BadLength { len: 31, .. })
    ));
}

#[test]
fn error_response_layout() {
    let resp = ErrorResponse {
        transaction_id: 0x0102_0304,
        message: "torrent not registered".to_owned(),
    };
    let expected = cat(&[
        &[0, 0, 0, 3],             // 0: action 3 (error)
        &[1, 2, 3, 4],             // 4: transaction id
        b"torrent not registered", // 8: message
    ]);
    assert_eq!(resp.encode(), expected);
    assert_eq!(
        parse_response(&expected, false),
        Ok(UdpResponse::Error(resp.clone()))
    );
    assert_eq!(
        parse_response(&expected[..8], false),
        Ok(UdpResponse::Error(ErrorResponse {
            message: String::new(),
            ..resp
        }))
    );
    // Non-UTF-8 messages survive lossily.
    let r = ErrorResponse::parse(&[0, 0, 0, 3, 0, 0, 0, 0, 0xff]).unwrap();
    assert_eq!(r.message, "\u{fffd}");
}

#[test]
fn wrong_sizes_are_errors() {
    let connect = ConnectRequest { transaction_id: 1 }.encode();
    assert!(matches!(
        parse_request(&connect[..15]),
        Err(UdpError::BadLength { len: 15, .. })
    ));
    let mut long = connect.clone();
    long.push(0);
    assert!(matches!(
        parse_request(&long),
        Err(UdpError::BadLength { len: 17, .. })
    ));
    let resp = ConnectResponse {
        transaction_id: 1,
        connection_id: 2,
    }
    .encode();
    assert!(matches!(
        parse_response(&resp[..12], false),
        Err(UdpError::BadLength { len: 12, .. })
    ));
    let announce = announce_request().encode();
    assert_eq!(
        parse_request(&announce[..97]),
        Err(UdpError::BadLength {
            packet: "announce request",
            len: 97,
            expected: "98 (+ BEP 41 options)"
        })
    );
    assert!(matches!(
        parse_response(&[0, 0, 0, 1, 0, 0, 0, 0], false),
        Err(UdpError::BadLength { len: 8, .. })
    ));
    assert!(matches!(
        parse_response(&[0, 0, 0, 3, 0, 0], false),
        Err(UdpError::BadLength { len: 6, .. })
    ));
    // Too short to even carry an action.
    assert!(matches!(
        parse_response(&[0, 0, 0], false),
        Err(UdpError::TooShort { len: 3, .. })
    ));
    assert!(matches!(
        parse_request(&[0; 11]),
        Err(UdpError::TooShort { len: 11, .. })
    ));
    assert!(matches!(
        parse_response(&[], true),
        Err(UdpError::TooShort { len: 0, .. })
    ));
}

#[test]
fn wrong_actions_are_errors() {
    let mut resp = ConnectResponse {
        transaction_id: 1,
        connection_id: 2,
    }
    .encode();
    resp[3] = 4;
    assert_eq!(
        parse_response(&resp, false),
        Err(UdpError::UnknownAction {
            direction: "response",
            action: 4
        })
    );
    let mut req = ConnectRequest { transaction_id: 1 }.encode();
    req[11] = 3; // error is response-only
    assert_eq!(
        parse_request(&req),
        Err(UdpError::UnknownAction {
            direction: "request",
            action: 3
        })
    );
    // A specific parser handed another packet.
    let scrape = ScrapeResponse {
        transaction_id: 1,
        stats: vec![],
    }
    .encode();
    assert_eq!(
        AnnounceResponse::parse(&scrape, false),
        Err(UdpError::WrongAction {
            packet: "announce response",
            expected: 1,
            found: 2
        })
    );
    assert!(matches!(
        ConnectRequest::parse(&announce_request().encode()),
        Err(UdpError::WrongAction { found: 1, .. })
    ));
}

#[test]
fn connect_request_needs_the_magic() {
    let mut bytes = ConnectRequest { transaction_id: 1 }.encode();
    bytes[0] = 1;
    assert_eq!(
        parse_request(&bytes),
        Err(UdpError::BadProtocolId(0x0100_0417_2710_1980))
    );
    assert_eq!(
        UdpError::BadProtocolId(1).to_string(),
        "connect request has protocol id 0x1, expected 0x41727101980"
    );
}

#[test]
fn transaction_ids_are_exposed() {
    let r = parse_response(
        &ErrorResponse {
            transaction_id: 77,
            message: "x".into(),
        }
        .encode(),
        false,
    )
    .unwrap();
    assert_eq!(r.transaction_id(), 77);
    let q = parse_request(&announce_request().encode()).unwrap();
    assert_eq!(q.transaction_id(), 0x0a0b_0c0d);
}

#[test]
fn ipv6_family_from_tracker_address() {
    assert!(!udp_tracker::peers_are_ipv6(&"1.2.3.4:80".parse().unwrap()));
    assert!(udp_tracker::peers_are_ipv6(
        &"[2001:db8::1]:80".parse().unwrap()
    ));
    assert!(!udp_tracker::peers_are_ipv6(
        &"[::ffff:1.2.3.4]:80".parse().unwrap()
    ));
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_response(&data, false);
        let _ = parse_response(&data, true);
        let _ = parse_request(&data);
    }

    #[test]
    fn announce_round_trips(
        ids in any::<(u64, u32, u32)>(),
        counts in any::<(u64, u64, u64)>(),
        event in 0u8..4,
        num_want in proptest::option::of(0u32..=i32::MAX as u32),
        peers in proptest::collection::vec((any::<[u8; 4]>(), 1u16..), 0..20),
        peers6 in proptest::collection::vec((any::<[u8; 16]>(), 1u16..), 0..20),
    ) {
        let req = AnnounceRequest {
            connection_id: ids.0,
            transaction_id: ids.1,
            info_hash: hash(1),
            peer_id: hash(2),
            downloaded: counts.0,
            left: counts.1,
            uploaded: counts.2,
            event: [None, Some(Event::Completed), Some(Event::Started), Some(Event::Stopped)][event as usize],
            ip: None,
            key: ids.2,
            num_want,
            port: 1,
        };
        prop_assert_eq!(parse_request(&req.encode()), Ok(UdpRequest::Announce(req)));
        let v4: Vec<SocketAddr> = peers.iter().map(|&(ip, port)| SocketAddr::from((ip, port))).collect();
        // IPv4-mapped addresses come back as IPv4; keep to real IPv6 ones.
        let v6: Vec<SocketAddr> = peers6
            .iter()
            .map(|&(ip, port)| SocketAddr::from((ip, port)))
            .filter(|a| a.ip().to_canonical().is_ipv6())
            .collect();
        let resp = AnnounceResponse { transaction_id: ids.1, interval: 1, leechers: 2, seeders: 3, peers: v4 };
        prop_assert_eq!(parse_response(&resp.encode(false), false), Ok(UdpResponse::Announce(resp)));
        let resp6 = AnnounceResponse { transaction_id: ids.1, interval: 1, leechers: 2, seeders: 3, peers: v6 };
        prop_assert_eq!(parse_response(&resp6.encode(true), true), Ok(UdpResponse::Announce(resp6)));
    }
}

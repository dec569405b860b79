//! KRPC (BEP 5) datagrams: the published examples of BEP 5 byte for byte
//! in both directions, round trips of every message kind, and rejection of
//! every malformed, truncated or oversized datagram with the reason named.

use std::net::{Ipv4Addr, SocketAddrV4};

use proptest::prelude::*;
use protocol::krpc::{
    Body, CompactNode, ErrorBody, KrpcError, Limits, Message, Method, Query, Response, code, decode,
};

const A: &[u8; 20] = b"abcdefghij0123456789";
const M: &[u8; 20] = b"mnopqrstuvwxyz123456";

fn dec(b: &[u8]) -> Result<Message, KrpcError> {
    decode(b, &Limits::default())
}

fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

/// Decodes `bytes`, checks the body, and checks that encoding it again
/// gives the same bytes (BEP 5's examples are canonical bencode).
fn both_ways(bytes: &[u8], body: Body) {
    let m = dec(bytes).unwrap();
    assert_eq!(m.transaction_id, b"aa");
    assert_eq!(m.body, body);
    assert_eq!(m.encode(), bytes, "{}", String::from_utf8_lossy(bytes));
}

#[test]
fn bep5_ping() {
    both_ways(
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
        Body::Query(Query {
            id: *A,
            method: Method::Ping,
        }),
    );
    both_ways(
        b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
        Body::Response(Response {
            id: *M,
            ..Response::default()
        }),
    );
}

#[test]
fn bep5_find_node() {
    both_ways(
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
        Body::Query(Query {
            id: *A,
            method: Method::FindNode { target: *M },
        }),
    );
    // BEP 5's response example writes `nodes` as the placeholder
    // "def456...", which is not a whole number of compact nodes.
    assert_eq!(
        dec(b"d1:rd2:id20:0123456789abcdefghij5:nodes9:def456...e1:t2:aa1:y1:re"),
        Err(KrpcError::BadNodes(9))
    );
}

#[test]
fn bep5_get_peers() {
    both_ways(
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
        Body::Query(Query {
            id: *A,
            method: Method::GetPeers { info_hash: *M },
        }),
    );
    both_ways(
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
        Body::Response(Response {
            id: *A,
            nodes: vec![],
            values: vec![
                addr(b'a', b'x', b'j', b'e', u16::from_be_bytes(*b".u")),
                addr(b'i', b'd', b'h', b't', u16::from_be_bytes(*b"nm")),
            ],
            token: Some(b"aoeusnth".to_vec()),
        }),
    );
}

#[test]
fn bep5_announce_peer() {
    both_ways(
        b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        Body::Query(Query {
            id: *A,
            method: Method::AnnouncePeer {
                info_hash: *M,
                port: 6881,
                implied_port: true,
                token: b"aoeusnth".to_vec(),
            },
        }),
    );
    // The older form without implied_port.
    both_ways(
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        Body::Query(Query {
            id: *A,
            method: Method::AnnouncePeer {
                info_hash: *M,
                port: 6881,
                implied_port: false,
                token: b"aoeusnth".to_vec(),
            },
        }),
    );
}

#[test]
fn bep5_error() {
    both_ways(
        b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
        Body::Error(ErrorBody {
            code: code::GENERIC,
            message: "A Generic Error Ocurred".into(),
        }),
    );
}

#[test]
fn nodes_round_trip_and_optional_keys() {
    let nodes: Vec<CompactNode> = (0..8u8)
        .map(|i| CompactNode {
            id: [i; 20],
            addr: addr(127, 0, 0, 1, 7000 + u16::from(i)),
        })
        .collect();
    let m = Message {
        transaction_id: vec![0, 1],
        version: Some(b"AT\x00\x01".to_vec()),
        ip: Some(addr(203, 0, 113, 9, 51413)),
        read_only: false,
        body: Body::Response(Response {
            id: [9; 20],
            nodes: nodes.clone(),
            values: vec![addr(10, 0, 0, 1, 1)],
            token: Some(vec![1, 2, 3, 4]),
        }),
    };
    let bytes = m.encode();
    assert_eq!(dec(&bytes).unwrap(), m);
    // A node's compact form: 20 id bytes, 4 address bytes, 2 port bytes.
    let mut compact = Vec::new();
    compact.extend_from_slice(&[0; 20]);
    compact.extend_from_slice(&[127, 0, 0, 1, 0x1b, 0x58]);
    assert!(bytes.windows(26).any(|w| w == compact.as_slice()));
    // `ro` (BEP 43).
    let mut q = Message::query(b"t", [1; 20], Method::Ping);
    q.read_only = true;
    let back = dec(&q.encode()).unwrap();
    assert!(back.read_only);
}

#[test]
fn unknown_methods_are_decoded_for_a_204_answer() {
    let m = dec(
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q3:get1:t2:aa1:y1:qe",
    )
    .unwrap();
    assert_eq!(
        m.body,
        Body::Query(Query {
            id: *A,
            method: Method::Unknown(b"get".to_vec()),
        })
    );
    // A very long method name is kept cut, not refused.
    let long = format!(
        "d1:ad2:id20:abcdefghij0123456789e1:q100:{}1:t2:aa1:y1:qe",
        "x".repeat(100)
    );
    match dec(long.as_bytes()).unwrap().body {
        Body::Query(Query {
            method: Method::Unknown(name),
            ..
        }) => assert_eq!(name.len(), protocol::krpc::MAX_METHOD_LEN),
        other => panic!("{other:?}"),
    }
}

#[test]
fn implied_port_needs_no_port() {
    let m = dec(b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234565:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe").unwrap();
    match m.body {
        Body::Query(Query {
            method:
                Method::AnnouncePeer {
                    implied_port: true,
                    port: 0,
                    ..
                },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn informational_keys_that_are_odd_are_ignored() {
    // An 18-byte `ip` (IPv6) and a 40-byte `v`: ignored, message kept.
    let mut b = b"d2:ip18:".to_vec();
    b.extend_from_slice(&[1; 18]);
    b.extend_from_slice(b"1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:v40:");
    b.extend_from_slice(&[b'v'; 40]);
    b.extend_from_slice(b"1:y1:re");
    let m = dec(&b).unwrap();
    assert_eq!(m.ip, None);
    assert_eq!(m.version, None);
    // IPv6 values and nodes6 are skipped.
    let mut b = b"d1:rd2:id20:mnopqrstuvwxyz1234566:nodes638:".to_vec();
    b.extend_from_slice(&[7; 38]);
    b.extend_from_slice(b"6:valuesl18:");
    b.extend_from_slice(&[8; 18]);
    b.extend_from_slice(b"6:");
    b.extend_from_slice(&[10, 0, 0, 2, 0, 80]);
    b.extend_from_slice(b"ee1:t2:aa1:y1:re");
    match dec(&b).unwrap().body {
        Body::Response(r) => {
            assert_eq!(r.values, vec![addr(10, 0, 0, 2, 80)]);
            assert!(r.nodes.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_datagrams_name_what_is_wrong() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "not_bencode"),
        (b"garbage", "not_bencode"),
        (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:q", "not_bencode"),
        (b"le", "not_a_dict"),
        (b"d1:y1:qe", "missing_key"),
        (b"d1:ti1e1:y1:qe", "wrong_type"),
        (b"d1:t2:aa1:y1:xe", "unknown_type"),
        (b"d1:q4:ping1:t2:aa1:y1:qe", "missing_key"),
        (b"d1:a2:id1:q4:ping1:t2:aa1:y1:qe", "not_a_dict"),
        (b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe", "bad_length"),
        (b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe", "missing_key"),
        (b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti0e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe", "bad_port"),
        (b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe", "bad_port"),
        (b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti1ee1:q13:announce_peer1:t2:aa1:y1:qe", "missing_key"),
        (b"d1:rd2:id20:mnopqrstuvwxyz1234566:valuesl3:abcee1:t2:aa1:y1:re", "bad_peer"),
        (b"d1:rd2:id20:mnopqrstuvwxyz1234566:valuesi1ee1:t2:aa1:y1:re", "wrong_type"),
        (b"d1:e3:bad1:t2:aa1:y1:ee", "bad_error"),
        (b"d1:el3:bade1:t2:aa1:y1:ee", "bad_error"),
        (b"d1:rd2:id20:mnopqrstuvwxyz1234565:tokeni1ee1:t2:aa1:y1:re", "wrong_type"),
    ];
    for (bytes, reason) in cases {
        let e = dec(bytes).expect_err(&String::from_utf8_lossy(bytes));
        assert_eq!(
            e.reason(),
            *reason,
            "{}: {e}",
            String::from_utf8_lossy(bytes)
        );
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn every_cap_is_enforced_before_copying() {
    let limits = Limits::default();
    // Oversized datagram.
    let big = vec![b'x'; limits.max_packet + 1];
    assert_eq!(
        dec(&big),
        Err(KrpcError::TooLarge {
            len: limits.max_packet + 1,
            max: limits.max_packet
        })
    );
    // A node answering with 1000 nodes: refused whole (and over the
    // packet size too, so try it with a raised packet limit).
    let mut b = b"d1:rd2:id20:mnopqrstuvwxyz1234565:nodes26000:".to_vec();
    b.extend(std::iter::repeat_n(7u8, 26_000));
    b.extend_from_slice(b"e1:t2:aa1:y1:re");
    assert!(matches!(dec(&b), Err(KrpcError::TooLarge { .. })));
    let roomy = Limits {
        max_packet: 1 << 20,
        ..limits
    };
    assert_eq!(
        decode(&b, &roomy),
        Err(KrpcError::TooManyNodes {
            count: 1000,
            max: 16
        })
    );
    // Too many values.
    let mut b = b"d1:rd2:id20:mnopqrstuvwxyz1234566:valuesl".to_vec();
    for _ in 0..201 {
        b.extend_from_slice(b"6:abcdef");
    }
    b.extend_from_slice(b"ee1:t2:aa1:y1:re");
    assert_eq!(
        decode(&b, &roomy),
        Err(KrpcError::TooManyValues {
            count: 201,
            max: 200
        })
    );
    // Long transaction id and token.
    let b = format!(
        "d1:rd2:id20:mnopqrstuvwxyz123456e1:t17:{}1:y1:re",
        "t".repeat(17)
    );
    assert!(matches!(
        dec(b.as_bytes()),
        Err(KrpcError::TooLong { key: "t", .. })
    ));
    let b = format!(
        "d1:rd2:id20:mnopqrstuvwxyz1234565:token65:{}e1:t2:aa1:y1:re",
        "k".repeat(65)
    );
    assert!(matches!(
        dec(b.as_bytes()),
        Err(KrpcError::TooLong { key: "token", .. })
    ));
    // Deep nesting inside an ignored key is refused cheaply.
    let mut b = b"d1:x".to_vec();
    b.extend(std::iter::repeat_n(b'l', 100));
    b.extend(std::iter::repeat_n(b'e', 100));
    b.extend_from_slice(b"1:t2:aa1:y1:re");
    assert_eq!(dec(&b).unwrap_err().reason(), "not_bencode");
}

#[test]
fn every_truncation_of_a_valid_message_is_an_error() {
    let full = Message {
        transaction_id: b"ab".to_vec(),
        version: Some(b"AT01".to_vec()),
        ip: Some(addr(1, 2, 3, 4, 5)),
        read_only: false,
        body: Body::Response(Response {
            id: [3; 20],
            nodes: vec![CompactNode {
                id: [4; 20],
                addr: addr(5, 6, 7, 8, 9),
            }],
            values: vec![addr(1, 1, 1, 1, 1)],
            token: Some(b"tok".to_vec()),
        }),
    }
    .encode();
    for n in 0..full.len() {
        assert!(dec(&full[..n]).is_err(), "prefix of {n} bytes");
    }
    assert!(dec(&full).is_ok());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = dec(&data);
    }

    #[test]
    fn queries_round_trip(
        tid in proptest::collection::vec(any::<u8>(), 0..16),
        id in any::<[u8; 20]>(),
        target in any::<[u8; 20]>(),
        port in 1u16..,
        implied in any::<bool>(),
        token in proptest::collection::vec(any::<u8>(), 0..64),
        which in 0u8..4,
    ) {
        let method = match which {
            0 => Method::Ping,
            1 => Method::FindNode { target },
            2 => Method::GetPeers { info_hash: target },
            _ => Method::AnnouncePeer { info_hash: target, port, implied_port: implied, token },
        };
        let m = Message::query(&tid, id, method);
        prop_assert_eq!(dec(&m.encode()).unwrap(), m);
    }
}

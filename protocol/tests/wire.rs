//! Peer wire codec: round trips, incremental decoding at every split point,
//! limits checked before allocation, zero-copy piece payloads, and the BEP 10
//! extended handshake.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol::wire::{
    self, BlockRef, Decoded, ExtendedHandshake, Handshake, Limits, Message, WireError,
    decode_message, piece_header,
};

fn block(index: u32, begin: u32, length: u32) -> BlockRef {
    BlockRef {
        index,
        begin,
        length,
    }
}

/// One of every message, with payloads of several sizes.
fn all_messages() -> Vec<Message> {
    vec![
        Message::KeepAlive,
        Message::Choke,
        Message::Unchoke,
        Message::Interested,
        Message::NotInterested,
        Message::Have(7),
        Message::Bitfield(Bytes::from_static(&[0b1010_0000, 0xff, 0x01])),
        Message::Request(block(3, 16384, 16384)),
        Message::Piece {
            index: 3,
            begin: 16384,
            data: Bytes::from((0..=255u8).cycle().take(1000).collect::<Vec<_>>()),
        },
        Message::Piece {
            index: 0,
            begin: 0,
            data: Bytes::new(),
        },
        Message::Cancel(block(3, 16384, 16384)),
        Message::Port(6881),
        Message::Suggest(9),
        Message::HaveAll,
        Message::HaveNone,
        Message::Reject(block(1, 0, 1)),
        Message::AllowedFast(0xffff_fffe),
        Message::Extended {
            id: 0,
            payload: Bytes::from_static(b"d1:md11:ut_metadatai3eee"),
        },
        Message::Extended {
            id: 3,
            payload: Bytes::new(),
        },
    ]
}

fn encode(msg: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    msg.encode(&mut out);
    out
}

fn encode_all(msgs: &[Message]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out.to_vec()
}

/// Feeds `chunks` one after another, decoding everything available after
/// each; panics on any error.
fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, limits: &Limits) -> Vec<Message> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode_message(&mut buf, limits).expect("valid stream") {
                Decoded::Complete(m) => out.push(m),
                Decoded::NeedMore(n) => {
                    assert!(n >= 1);
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

fn decode_one(bytes: &[u8], limits: &Limits) -> Result<Decoded<Message>, WireError> {
    let mut buf = BytesMut::from(bytes);
    let before = buf.clone();
    let r = decode_message(&mut buf, limits);
    match &r {
        Ok(Decoded::Complete(_)) => assert!(buf.is_empty()),
        // Neither a partial frame nor an invalid one consumes anything.
        _ => assert_eq!(buf, before),
    }
    r
}

fn frame(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(id);
    v.extend_from_slice(payload);
    v
}

#[test]
fn every_message_round_trips_with_exact_length() {
    for msg in all_messages() {
        let bytes = encode(&msg);
        assert_eq!(bytes.len(), msg.encoded_len(), "{msg:?}");
        let declared = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(declared + 4, bytes.len());
        assert_eq!(bytes.get(4).copied(), msg.id());
        let got = decode_one(&bytes, &Limits::default()).unwrap();
        assert_eq!(got, Decoded::Complete(msg));
    }
}

#[test]
fn known_encodings() {
    // Spot checks against the BEP 3 layout.
    assert_eq!(&encode(&Message::KeepAlive)[..], &[0, 0, 0, 0]);
    assert_eq!(&encode(&Message::Interested)[..], &[0, 0, 0, 1, 2]);
    assert_eq!(
        &encode(&Message::Have(0x01020304))[..],
        &[0, 0, 0, 5, 4, 1, 2, 3, 4]
    );
    assert_eq!(
        &encode(&Message::Request(block(1, 0x4000, 0x4000)))[..],
        &[0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
    );
    assert_eq!(
        &encode(&Message::Port(0x1ae1))[..],
        &[0, 0, 0, 3, 9, 0x1a, 0xe1]
    );
    assert_eq!(&encode(&Message::HaveAll)[..], &[0, 0, 0, 1, 14]);
    assert_eq!(
        &encode(&Message::Extended {
            id: 2,
            payload: Bytes::from_static(b"xy")
        })[..],
        &[0, 0, 0, 4, 20, 2, b'x', b'y']
    );
}

#[test]
fn piece_header_matches_encoder() {
    let data = Bytes::from(vec![0xabu8; 16384]);
    let msg = Message::Piece {
        index: 5,
        begin: 32768,
        data: data.clone(),
    };
    let bytes = encode(&msg);
    let header = piece_header(5, 32768, 16384).unwrap();
    assert_eq!(piece_header(0, 0, u32::MAX - 8), None);
    assert_eq!(&bytes[..13], &header);
    assert_eq!(&bytes[13..], &data[..]);
}

#[test]
fn stream_split_at_every_position_decodes_the_same() {
    let msgs = all_messages();
    let stream = encode_all(&msgs);
    let limits = Limits::default();
    for at in 0..=stream.len() {
        let (a, b) = stream.split_at(at);
        assert_eq!(decode_chunks([a, b], &limits), msgs, "split at {at}");
    }
    let one_by_one = decode_chunks(stream.chunks(1), &limits);
    assert_eq!(one_by_one, msgs);
}

#[test]
fn every_prefix_needs_exactly_the_missing_bytes() {
    // NeedMore(n) is a lower bound that is tight for these frames: after the
    // prefix is known, exactly the rest of the frame is asked for.
    for msg in all_messages() {
        let bytes = encode(&msg);
        for cut in 0..bytes.len() {
            let got = decode_one(&bytes[..cut], &Limits::default()).unwrap();
            let want = if cut < 4 { 4 - cut } else { bytes.len() - cut };
            assert_eq!(got, Decoded::NeedMore(want), "{msg:?} cut at {cut}");
        }
    }
}

#[test]
fn oversize_length_rejected_without_allocation() {
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, wire::id::PIECE]);
    let cap = buf.capacity();
    let err = decode_message(&mut buf, &Limits::default()).unwrap_err();
    assert_eq!(
        err,
        WireError::MessageTooLong {
            len: u32::MAX,
            max: wire::DEFAULT_MAX_MESSAGE_LEN
        }
    );
    assert_eq!(buf.capacity(), cap);
    assert_eq!(buf.len(), 5);

    // Just over the limit: rejected once the id byte shows it is no bitfield.
    let limits = Limits::default();
    let over = (limits.max_message_len + 1).to_be_bytes();
    let mut buf = BytesMut::from(&over[..]);
    assert_eq!(
        decode_message(&mut buf, &limits).unwrap(),
        Decoded::NeedMore(1)
    );
    buf.extend_from_slice(&[wire::id::EXTENDED]);
    let cap = buf.capacity();
    assert!(matches!(
        decode_message(&mut buf, &limits),
        Err(WireError::MessageTooLong { .. })
    ));
    assert_eq!(buf.capacity(), cap);

    // Exactly at the limit is fine.
    let at = Message::Extended {
        id: 1,
        payload: Bytes::from(vec![0; limits.max_message_len as usize - 2]),
    };
    assert_eq!(
        decode_one(&encode(&at), &limits).unwrap(),
        Decoded::Complete(at)
    );
}

#[test]
fn large_bitfield_of_known_size_may_exceed_the_limit() {
    let piece_count = 1_000_001u32; // 125 001 bytes, over 64 KiB
    let mut bits = vec![0xffu8; piece_count.div_ceil(8) as usize];
    *bits.last_mut().unwrap() = 0x80; // one piece in the last byte
    let msg = Message::Bitfield(Bytes::from(bits));
    let limits = Limits {
        piece_count: Some(piece_count),
        ..Limits::default()
    };
    assert_eq!(
        decode_one(&encode(&msg), &limits).unwrap(),
        Decoded::Complete(msg.clone())
    );
    // Without a known piece count the same frame is too long.
    assert!(matches!(
        decode_one(&encode(&msg), &Limits::default()),
        Err(WireError::MessageTooLong { .. })
    ));
    // A different id with that length is still too long.
    let mut fake = encode(&msg).to_vec();
    fake[4] = wire::id::EXTENDED;
    assert!(matches!(
        decode_one(&fake, &limits),
        Err(WireError::MessageTooLong { .. })
    ));
}

#[test]
fn fixed_size_messages_with_wrong_length_are_errors() {
    let cases: &[(u8, u32)] = &[
        (wire::id::CHOKE, 1),
        (wire::id::UNCHOKE, 1),
        (wire::id::INTERESTED, 1),
        (wire::id::NOT_INTERESTED, 1),
        (wire::id::HAVE, 5),
        (wire::id::REQUEST, 13),
        (wire::id::CANCEL, 13),
        (wire::id::PORT, 3),
        (wire::id::SUGGEST, 5),
        (wire::id::HAVE_ALL, 1),
        (wire::id::HAVE_NONE, 1),
        (wire::id::REJECT, 13),
        (wire::id::ALLOWED_FAST, 5),
    ];
    for &(id, expected) in cases {
        for len in [expected - 1, expected + 1] {
            if len == 0 {
                continue; // that is a keep-alive
            }
            let bytes = frame(id, &vec![0; len as usize - 1]);
            assert_eq!(
                decode_one(&bytes, &Limits::default()),
                Err(WireError::WrongLength { id, len, expected }),
                "id {id} len {len}"
            );
        }
    }
}

#[test]
fn short_variable_messages_are_errors() {
    assert_eq!(
        decode_one(&frame(wire::id::PIECE, &[0; 7]), &Limits::default()),
        Err(WireError::TooShort {
            id: 7,
            len: 8,
            min: 9
        })
    );
    assert_eq!(
        decode_one(&frame(wire::id::EXTENDED, &[]), &Limits::default()),
        Err(WireError::TooShort {
            id: 20,
            len: 1,
            min: 2
        })
    );
}

#[test]
fn unknown_ids_are_reported_with_their_length() {
    for id in [10u8, 11, 12, 18, 19, 21, 255] {
        assert_eq!(
            decode_one(&frame(id, b"abc"), &Limits::default()),
            Err(WireError::UnknownMessage { id, len: 4 })
        );
    }
}

#[test]
fn bitfield_checked_against_piece_count() {
    let limits = |n| Limits {
        piece_count: Some(n),
        ..Limits::default()
    };
    // 10 pieces: 2 bytes, the low 6 bits of the second are spare.
    let ok = frame(wire::id::BITFIELD, &[0xff, 0b1100_0000]);
    assert!(matches!(
        decode_one(&ok, &limits(10)),
        Ok(Decoded::Complete(_))
    ));
    assert_eq!(
        decode_one(
            &frame(wire::id::BITFIELD, &[0xff, 0b1110_0000]),
            &limits(10)
        ),
        Err(WireError::BitfieldSpareBits { piece_count: 10 })
    );
    assert_eq!(
        decode_one(&frame(wire::id::BITFIELD, &[0xff, 0, 0]), &limits(10)),
        Err(WireError::BitfieldLength {
            len: 3,
            expected: 2,
            piece_count: 10
        })
    );
    assert_eq!(
        decode_one(&frame(wire::id::BITFIELD, &[0xff]), &limits(10)),
        Err(WireError::BitfieldLength {
            len: 1,
            expected: 2,
            piece_count: 10
        })
    );
    // A multiple of 8 has no spare bits.
    assert!(matches!(
        decode_one(&frame(wire::id::BITFIELD, &[0xff]), &limits(8)),
        Ok(Decoded::Complete(_))
    ));
    // Without a piece count any size is passed through.
    assert!(matches!(
        decode_one(
            &frame(wire::id::BITFIELD, &[0xff, 0xff, 0xff]),
            &Limits::default()
        ),
        Ok(Decoded::Complete(_))
    ));
}

#[test]
fn indices_checked_only_when_piece_count_known() {
    let limits = Limits {
        piece_count: Some(10),
        ..Limits::default()
    };
    let out_of_range = [
        Message::Have(10),
        Message::Suggest(10),
        Message::AllowedFast(u32::MAX),
        Message::Request(block(10, 0, 16384)),
        Message::Cancel(block(10, 0, 16384)),
        Message::Reject(block(11, 0, 16384)),
        Message::Piece {
            index: 10,
            begin: 0,
            data: Bytes::from_static(b"x"),
        },
    ];
    for msg in out_of_range {
        let bytes = encode(&msg);
        assert!(
            matches!(
                decode_one(&bytes, &limits),
                Err(WireError::PieceIndexOutOfRange {
                    piece_count: 10,
                    ..
                })
            ),
            "{msg:?}"
        );
        assert_eq!(
            decode_one(&bytes, &Limits::default()).unwrap(),
            Decoded::Complete(msg)
        );
    }
    assert!(matches!(
        decode_one(&encode(&Message::Have(9)), &limits),
        Ok(Decoded::Complete(Message::Have(9)))
    ));
}

#[test]
fn block_lengths_are_bounded() {
    let limits = Limits::default();
    for make in [Message::Request, Message::Cancel, Message::Reject] {
        let id = make(block(0, 0, 1)).id().unwrap();
        assert_eq!(
            decode_one(&encode(&make(block(0, 0, 0))), &limits),
            Err(WireError::BlockLength {
                id,
                length: 0,
                max: 128 * 1024
            })
        );
        assert_eq!(
            decode_one(&encode(&make(block(0, 0, 128 * 1024 + 1))), &limits),
            Err(WireError::BlockLength {
                id,
                length: 128 * 1024 + 1,
                max: 128 * 1024
            })
        );
        assert!(matches!(
            decode_one(&encode(&make(block(0, 0, 128 * 1024))), &limits),
            Ok(Decoded::Complete(_))
        ));
        assert_eq!(
            decode_one(&encode(&make(block(0, u32::MAX, 1))), &limits),
            Err(WireError::BlockOverflow {
                id,
                begin: u32::MAX,
                length: 1
            })
        );
    }
    let small = Limits {
        max_request_len: 16384,
        ..Limits::default()
    };
    assert!(matches!(
        decode_one(&encode(&Message::Request(block(0, 0, 16385))), &small),
        Err(WireError::BlockLength { max: 16384, .. })
    ));
}

#[test]
fn piece_data_shares_the_read_buffer() {
    let blocks = 4usize;
    let mut stream = Vec::new();
    for i in 0..blocks {
        stream.extend_from_slice(&piece_header(i as u32, 0, 16384).unwrap());
        stream.extend(std::iter::repeat_n(i as u8, 16384));
    }
    let mut buf = BytesMut::with_capacity(stream.len());
    buf.extend_from_slice(&stream);
    let start = buf.as_ptr() as usize;
    let range = start..start + buf.len();
    let mut seen = 0;
    while let Decoded::Complete(msg) = decode_message(&mut buf, &Limits::default()).unwrap() {
        let Message::Piece { index, data, .. } = msg else {
            panic!("expected a piece")
        };
        let p = data.as_ptr() as usize;
        // The payload lies inside the original allocation, exactly where the
        // block was read: no copy was made.
        assert!(range.contains(&p) && p + data.len() <= range.end);
        assert_eq!(p - start, index as usize * (16384 + 13) + 13);
        assert!(data.iter().all(|&b| b == index as u8));
        seen += 1;
    }
    assert_eq!(seen, blocks);
}

#[test]
fn handshake_round_trip_and_layout() {
    let mut hs = Handshake::new([0; 8], [0x11; 20], *b"-AT0001-abcdefghijkl");
    hs.set_extended(true);
    hs.set_fast(true);
    hs.set_dht(true);
    assert!(hs.supports_extended() && hs.supports_fast() && hs.supports_dht());
    assert_eq!(hs.reserved, [0, 0, 0, 0, 0, 0x10, 0, 0x05]);
    let mut out = Vec::new();
    hs.encode(&mut out);
    assert_eq!(out.len(), 68);
    assert_eq!(out[0], 19);
    assert_eq!(&out[1..20], b"BitTorrent protocol");
    assert_eq!(&out[20..28], &hs.reserved);
    assert_eq!(&out[28..48], &[0x11; 20]);
    assert_eq!(&out[48..68], b"-AT0001-abcdefghijkl");
    // Trailing bytes (the first message) are not part of the handshake.
    out.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(Handshake::decode(&out).unwrap(), Decoded::Complete(hs));
    for cut in 0..68 {
        assert_eq!(
            Handshake::decode(&out[..cut]).unwrap(),
            Decoded::NeedMore(68 - cut)
        );
    }
    hs.set_fast(false);
    hs.set_extended(false);
    assert!(!hs.supports_fast() && !hs.supports_extended() && hs.supports_dht());
}

#[test]
fn handshake_wrong_protocol_rejected_early() {
    let mut bytes = Handshake::new([0; 8], [0; 20], [0; 20]).to_bytes();
    bytes[5] = b'X';
    // Detected as soon as the bad byte is present, even on partial input.
    assert_eq!(
        Handshake::decode(&bytes[..6]),
        Err(WireError::BadProtocol {
            offset: 5,
            found: b'X'
        })
    );
    assert!(Handshake::decode(&bytes).is_err());
    assert_eq!(
        Handshake::decode(&[18]),
        Err(WireError::BadProtocol {
            offset: 0,
            found: 18
        })
    );
}

#[test]
fn extended_handshake_round_trip() {
    let hs = ExtendedHandshake {
        m: BTreeMap::from([("ut_metadata".to_owned(), 3), ("ut_pex".to_owned(), 0)]),
        v: Some("actorrent 0.1".to_owned()),
        reqq: Some(500),
        yourip: Some("192.0.2.7".parse().unwrap()),
        p: Some(6881),
        ipv6: None,
        metadata_size: Some(31_235),
    };
    let bytes = hs.encode();
    assert_eq!(
        bytes,
        b"d1:md11:ut_metadatai3e6:ut_pexi0ee13:metadata_sizei31235e1:pi6881e4:reqqi500e1:v13:actorrent 0.16:yourip4:\xc0\x00\x02\x07e"
    );
    assert_eq!(ExtendedHandshake::decode(&bytes).unwrap(), hs);
    let Message::Extended { id: 0, payload } = hs.to_message() else {
        panic!("handshake is extended message 0")
    };
    assert_eq!(&payload[..], &bytes[..]);

    let v6 = ExtendedHandshake {
        yourip: Some("2001:db8::1".parse().unwrap()),
        ipv6: Some("2001:db8::2".parse().unwrap()),
        ..ExtendedHandshake::default()
    };
    let bytes = v6.encode();
    assert!(
        bytes.windows(8).any(|w| w == b"4:ipv616"),
        "ipv6 key with a 16-byte value"
    );
    assert_eq!(ExtendedHandshake::decode(&bytes).unwrap(), v6);
    // An `ipv6` of any other length is ignored, not an error.
    let hs = ExtendedHandshake::decode(b"d4:ipv64:\x7f\x00\x00\x01e").unwrap();
    assert_eq!(hs.ipv6, None);
    assert_eq!(ExtendedHandshake::default().encode(), b"d1:mdee");
}

#[test]
fn extended_handshake_ignores_unknown_keys_and_bad_types() {
    let payload = b"d\
        1:ai1e\
        1:md11:ut_metadatai2e3:badi256e3:negi-1e3:str1:x6:ut_pexi1ee\
        13:metadata_sizei-5e\
        1:pi0e\
        4:reqqi4294967296e\
        1:v2:\xff\xfe\
        6:youripi3e\
        e";
    let hs = ExtendedHandshake::decode(payload).unwrap();
    assert_eq!(
        hs.m,
        BTreeMap::from([("ut_metadata".to_owned(), 2), ("ut_pex".to_owned(), 1)])
    );
    assert_eq!(hs.metadata_size, None);
    assert_eq!(hs.p, None);
    assert_eq!(hs.reqq, None);
    assert_eq!(hs.v.as_deref(), Some("\u{fffd}\u{fffd}"));
    assert_eq!(hs.yourip, None);

    // `m` of the wrong type, yourip of a wrong size.
    let hs = ExtendedHandshake::decode(b"d1:mi1e6:yourip3:abce").unwrap();
    assert!(hs.m.is_empty());
    assert_eq!(hs.yourip, None);
    let hs = ExtendedHandshake::decode(
        b"d6:yourip16:\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x7f\x00\x00\x01e",
    )
    .unwrap();
    assert_eq!(
        hs.yourip,
        Some(IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]))
    );
}

#[test]
fn extended_handshake_must_be_a_dictionary() {
    assert_eq!(
        ExtendedHandshake::decode(b"li1ee"),
        Err(WireError::ExtendedHandshakeNotDict)
    );
    assert!(matches!(
        ExtendedHandshake::decode(b"d1:m"),
        Err(WireError::ExtendedHandshakeBencode(_))
    ));
    assert!(matches!(
        ExtendedHandshake::decode(b"de trailing"),
        Err(WireError::ExtendedHandshakeBencode(_))
    ));
}

#[test]
fn errors_say_what_was_wrong() {
    let e = WireError::MessageTooLong {
        len: 4_000_000,
        max: 65536,
    };
    assert_eq!(
        e.to_string(),
        "message length 4000000 exceeds the limit of 65536 bytes"
    );
    let e = WireError::WrongLength {
        id: 4,
        len: 6,
        expected: 5,
    };
    assert_eq!(e.to_string(), "message id 4 must have length 5, got 6");
}

fn arb_block() -> impl Strategy<Value = BlockRef> {
    (any::<u32>(), 0u32..1 << 20, 1u32..=128 * 1024).prop_map(|(index, begin, length)| BlockRef {
        index,
        begin,
        length,
    })
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..600).prop_map(Bytes::from)
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Choke),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::NotInterested),
        Just(Message::HaveAll),
        Just(Message::HaveNone),
        any::<u32>().prop_map(Message::Have),
        any::<u32>().prop_map(Message::Suggest),
        any::<u32>().prop_map(Message::AllowedFast),
        any::<u16>().prop_map(Message::Port),
        arb_bytes().prop_map(Message::Bitfield),
        arb_block().prop_map(Message::Request),
        arb_block().prop_map(Message::Cancel),
        arb_block().prop_map(Message::Reject),
        (any::<u32>(), any::<u32>(), arb_bytes()).prop_map(|(index, begin, data)| Message::Piece {
            index,
            begin,
            data
        }),
        (any::<u8>(), arb_bytes()).prop_map(|(id, payload)| Message::Extended { id, payload }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_messages_round_trip(msgs in proptest::collection::vec(arb_message(), 0..8), split in any::<prop::sample::Index>()) {
        let stream = encode_all(&msgs);
        let total: usize = msgs.iter().map(Message::encoded_len).sum();
        prop_assert_eq!(stream.len(), total);
        let at = split.index(stream.len() + 1);
        let (a, b) = stream.split_at(at);
        prop_assert_eq!(decode_chunks([a, b], &Limits::default()), msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), piece_count in proptest::option::of(0u32..64)) {
        let _ = Handshake::decode(&data);
        let _ = ExtendedHandshake::decode(&data);
        check_garbage(&data, piece_count)?;
    }

    /// Random bytes mostly die on the length prefix; these are frames with
    /// plausible lengths and ids and random contents, to reach every branch.
    #[test]
    fn plausible_garbage_never_panics(
        frames in proptest::collection::vec(
            (0u32..20, prop_oneof![0u8..=21, any::<u8>()], proptest::collection::vec(any::<u8>(), 0..20)),
            0..10,
        ),
        piece_count in proptest::option::of(0u32..64),
    ) {
        let mut data = Vec::new();
        for (len, id, body) in frames {
            data.extend_from_slice(&len.to_be_bytes());
            data.push(id);
            data.extend_from_slice(&body);
        }
        check_garbage(&data, piece_count)?;
    }
}

/// Decodes `data` to the end: no panic, complete messages consume exactly
/// their frame and re-encode to it, errors and partial frames consume nothing.
fn check_garbage(data: &[u8], piece_count: Option<u32>) -> Result<(), TestCaseError> {
    {
        let limits = Limits {
            piece_count,
            max_message_len: 128,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            match decode_message(&mut buf, &limits) {
                Ok(Decoded::Complete(msg)) => {
                    // Every message consumes its frame, and re-encodes to it.
                    prop_assert_eq!(before - buf.len(), msg.encoded_len());
                    let start = data.len() - before;
                    prop_assert_eq!(&encode(&msg)[..], &data[start..start + msg.encoded_len()]);
                }
                Ok(Decoded::NeedMore(n)) => {
                    prop_assert!(n >= 1);
                    break;
                }
                Err(_) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// A request out of range is a content error: the frame is intact, so a
/// lenient peer can skip exactly it and decode what follows; a framing
/// error is not skippable.
#[test]
fn content_errors_can_be_skipped_frame_by_frame() {
    let limits = Limits {
        piece_count: Some(10),
        ..Limits::default()
    };
    let mut bad = frame(6, &[0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0x40, 0]);
    bad.extend(encode(&Message::Have(3)).to_vec());
    let mut buf = BytesMut::from(&bad[..]);
    let e = decode_message(&mut buf, &limits).unwrap_err();
    assert_eq!(e.content_error_id(), Some(6), "{e}");
    assert_eq!(buf.len(), bad.len(), "an error consumes nothing");
    let (id, payload) = protocol::wire::skip_frame(&mut buf, limits.max_message_len).unwrap();
    assert_eq!((id, payload.len()), (6, 12));
    assert_eq!(
        decode_message(&mut buf, &limits).unwrap(),
        Decoded::Complete(Message::Have(3))
    );
    // Zero-length and over-long blocks are content errors too.
    for len in [0u32, 200_000] {
        let mut p = vec![0u8; 8];
        p.extend(len.to_be_bytes());
        let e = decode_one(&frame(16, &p), &limits).unwrap_err();
        assert_eq!(e.content_error_id(), Some(16), "{e}");
    }
    // A wrong fixed length is framing, not content.
    let e = decode_one(&frame(4, &[0, 0]), &limits).unwrap_err();
    assert_eq!(e.content_error_id(), None);
    // skip_frame never takes an incomplete or over-limit frame.
    let mut part = BytesMut::from(&frame(4, &[0, 0, 0, 1])[..4]);
    assert!(protocol::wire::skip_frame(&mut part, 100).is_none());
    let mut big = BytesMut::from(&frame(7, &[0; 200])[..]);
    assert!(protocol::wire::skip_frame(&mut big, 100).is_none());
    assert_eq!(big.len(), 205);
}

//! Bencode decoder and encoder: round trips, every malformed form the
//! decoder must reject (with the offset it reports), resource limits, and
//! property tests.

use std::collections::BTreeMap;

use proptest::prelude::*;
use protocol::bencode::{
    Bencode, DecodeError, Kind, Limits, decode, decode_prefix, decode_with, encode_bytes,
    encode_int,
};

fn dict(entries: &[(&str, Bencode)]) -> Bencode {
    Bencode::Dict(
        entries
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect(),
    )
}

#[test]
fn decodes_each_kind() {
    assert_eq!(decode(b"i42e").unwrap().as_int(), Some(42));
    assert_eq!(decode(b"i-42e").unwrap().as_int(), Some(-42));
    assert_eq!(decode(b"i0e").unwrap().as_int(), Some(0));
    assert_eq!(
        decode(b"i9223372036854775807e").unwrap().as_int(),
        Some(i64::MAX)
    );
    assert_eq!(
        decode(b"i-9223372036854775808e").unwrap().as_int(),
        Some(i64::MIN)
    );
    assert_eq!(decode(b"4:spam").unwrap().as_bytes(), Some(&b"spam"[..]));
    assert_eq!(decode(b"0:").unwrap().as_bytes(), Some(&b""[..]));
    assert_eq!(decode(b"4:spam").unwrap().as_str(), Some("spam"));
    assert_eq!(decode(b"2:\xff\xfe").unwrap().as_str(), None);
    let list = decode(b"l4:spami7ee").unwrap();
    let items = list.as_list().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].as_bytes(), Some(&b"spam"[..]));
    assert_eq!(items[1].as_int(), Some(7));
    assert!(decode(b"le").unwrap().as_list().unwrap().is_empty());
    assert!(decode(b"de").unwrap().as_dict().unwrap().is_empty());
}

#[test]
fn accessors_return_none_for_other_kinds() {
    let v = decode(b"i1e").unwrap();
    assert!(v.as_bytes().is_none() && v.as_list().is_none() && v.as_dict().is_none());
    assert!(v.get(b"a").is_none());
    let s = decode(b"1:a").unwrap();
    assert!(s.as_int().is_none());
    assert!(matches!(s.kind(), Kind::Bytes(b"a")));
}

#[test]
fn dict_lookup_iteration_and_spans() {
    let input = b"d3:bar4:spam3:fooi42e4:infod1:xi1eee";
    let v = decode(input).unwrap();
    assert_eq!(v.get(b"bar").unwrap().as_str(), Some("spam"));
    assert_eq!(v.get(b"foo").unwrap().as_int(), Some(42));
    assert!(v.get(b"baz").is_none());
    let d = v.as_dict().unwrap();
    assert_eq!(d.len(), 3);
    assert!(d.is_sorted());
    let keys: Vec<&[u8]> = d.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![&b"bar"[..], b"foo", b"info"]);
    let info = v.get(b"info").unwrap();
    assert_eq!(info.raw(), b"d1:xi1ee");
    assert_eq!(info.offset(), 27);
    assert_eq!(
        &input[info.offset()..info.offset() + info.raw().len()],
        info.raw()
    );
    assert_eq!(v.raw(), input);
    assert_eq!(v.get(b"foo").unwrap().raw(), b"i42e");
}

#[test]
fn unsorted_keys_are_accepted_and_looked_up() {
    // Documented leniency: real torrents have unsorted keys.
    let v = decode(b"d1:bi2e1:ai1e1:ci3ee").unwrap();
    let d = v.as_dict().unwrap();
    assert!(!d.is_sorted());
    assert_eq!(v.get(b"a").unwrap().as_int(), Some(1));
    assert_eq!(v.get(b"b").unwrap().as_int(), Some(2));
    assert_eq!(v.get(b"c").unwrap().as_int(), Some(3));
    // Input order is kept.
    let keys: Vec<&[u8]> = d.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![&b"b"[..], b"a", b"c"]);
}

#[test]
fn round_trips_a_document() {
    let doc = dict(&[
        ("announce", "http://t/a".into()),
        (
            "list",
            Bencode::List(vec![1.into(), (-5).into(), b"\x00\xff"[..].into()]),
        ),
        (
            "nested",
            dict(&[("empty", Bencode::List(vec![])), ("d", dict(&[]))]),
        ),
    ]);
    let bytes = doc.encode();
    assert_eq!(
        bytes,
        b"d8:announce10:http://t/a4:listli1ei-5e2:\x00\xffe6:nestedd1:dde5:emptyleee".to_vec()
    );
    let decoded = decode(&bytes).unwrap();
    assert_eq!(decoded.to_owned_value(), doc);
    assert_eq!(decoded.raw(), &bytes[..]);
}

#[test]
fn encoder_sorts_keys_and_helpers_match() {
    let mut map = BTreeMap::new();
    map.insert(b"zz".to_vec(), Bencode::Int(1));
    map.insert(b"a".to_vec(), Bencode::Int(2));
    assert_eq!(Bencode::Dict(map).encode(), b"d1:ai2e2:zzi1ee".to_vec());
    let mut out = Vec::new();
    encode_int(&mut out, -17);
    encode_bytes(&mut out, b"hi");
    encode_bytes(&mut out, b"");
    assert_eq!(out, b"i-17e2:hi0:".to_vec());
    // Re-encoding an unsorted dict sorts it.
    let v = decode(b"d1:bi2e1:ai1ee").unwrap();
    assert_eq!(v.to_owned_value().encode(), b"d1:ai1e1:bi2ee".to_vec());
}

fn err(input: &[u8]) -> DecodeError {
    match decode(input) {
        Ok(v) => panic!("{:?} decoded to {v:?}", String::from_utf8_lossy(input)),
        Err(e) => e,
    }
}

#[test]
fn rejects_malformed_integers() {
    assert_eq!(err(b"i03e"), DecodeError::IntegerLeadingZero { offset: 0 });
    assert_eq!(err(b"i00e"), DecodeError::IntegerLeadingZero { offset: 0 });
    assert_eq!(
        err(b"li-03ee"),
        DecodeError::IntegerLeadingZero { offset: 1 }
    );
    assert_eq!(err(b"i-0e"), DecodeError::NegativeZero { offset: 0 });
    assert_eq!(err(b"ie"), DecodeError::EmptyInteger { offset: 0 });
    assert_eq!(
        err(b"i-e"),
        DecodeError::InvalidInteger {
            offset: 2,
            byte: b'e'
        }
    );
    assert_eq!(
        err(b"i--1e"),
        DecodeError::InvalidInteger {
            offset: 2,
            byte: b'-'
        }
    );
    assert_eq!(
        err(b"i1.5e"),
        DecodeError::InvalidInteger {
            offset: 2,
            byte: b'.'
        }
    );
    assert_eq!(
        err(b"i+1e"),
        DecodeError::InvalidInteger {
            offset: 1,
            byte: b'+'
        }
    );
    assert_eq!(
        err(b"i 1e"),
        DecodeError::InvalidInteger {
            offset: 1,
            byte: b' '
        }
    );
    assert_eq!(
        err(b"i9223372036854775808e"),
        DecodeError::IntegerOverflow { offset: 0 }
    );
    assert_eq!(
        err(b"i-9223372036854775809e"),
        DecodeError::IntegerOverflow { offset: 0 }
    );
    assert_eq!(
        err(b"i99999999999999999999999999e"),
        DecodeError::IntegerOverflow { offset: 0 }
    );
}

#[test]
fn rejects_malformed_strings() {
    assert_eq!(err(b"03:abc"), DecodeError::LengthLeadingZero { offset: 0 });
    assert_eq!(err(b"00:"), DecodeError::LengthLeadingZero { offset: 0 });
    assert_eq!(
        err(b"3x:abc"),
        DecodeError::InvalidLength {
            offset: 1,
            byte: b'x'
        }
    );
    assert_eq!(err(b"3"), DecodeError::UnexpectedEnd { offset: 1 });
    assert_eq!(
        err(b"5:abc"),
        DecodeError::LengthExceedsInput {
            offset: 0,
            declared: 5,
            remaining: 3
        }
    );
    assert_eq!(
        err(b"-1:a"),
        DecodeError::UnexpectedByte {
            offset: 0,
            byte: b'-',
            expected: "a value ('i', 'l', 'd' or a digit)"
        }
    );
}

#[test]
fn huge_declared_length_is_rejected_without_allocating() {
    // Nothing is allocated for strings at all (they borrow the input), so the
    // only thing to check is that the length is compared before any read.
    assert_eq!(
        err(b"9999999999999:abc"),
        DecodeError::LengthExceedsInput {
            offset: 0,
            declared: 9_999_999_999_999,
            remaining: 3
        }
    );
    // A length that does not even fit in u64 saturates.
    assert_eq!(
        err(b"99999999999999999999999999:"),
        DecodeError::LengthExceedsInput {
            offset: 0,
            declared: u64::MAX,
            remaining: 0
        }
    );
    assert_eq!(
        err(b"l4:spam9999999999999:x"),
        DecodeError::LengthExceedsInput {
            offset: 7,
            declared: 9_999_999_999_999,
            remaining: 1
        }
    );
}

#[test]
fn rejects_bad_dictionaries() {
    assert_eq!(err(b"di1ei2ee"), DecodeError::NonStringKey { offset: 1 });
    assert_eq!(err(b"dlei1ee"), DecodeError::NonStringKey { offset: 1 });
    assert_eq!(err(b"ddei1ee"), DecodeError::NonStringKey { offset: 1 });
    assert_eq!(
        err(b"d1:ai1e1:ai2ee"),
        DecodeError::DuplicateKey { offset: 7 }
    );
    // Duplicates are caught in unsorted dictionaries too, at the second one.
    assert_eq!(
        err(b"d1:bi1e1:ai1e1:bi2ee"),
        DecodeError::DuplicateKey { offset: 13 }
    );
    assert_eq!(
        err(b"d1:ci1e1:bi1e1:ai1e1:bi2ee"),
        DecodeError::DuplicateKey { offset: 19 }
    );
    assert_eq!(err(b"d1:ae"), DecodeError::MissingValue { offset: 4 });
    assert_eq!(
        err(b"d1:ai1exe"),
        DecodeError::UnexpectedByte {
            offset: 7,
            byte: b'x',
            expected: "a dictionary key (a digit) or 'e'"
        }
    );
    // Nested duplicate, nested dict key.
    assert_eq!(
        err(b"d1:ad1:xi1e1:xi1eee"),
        DecodeError::DuplicateKey { offset: 11 }
    );
}

#[test]
fn rejects_stray_bytes_and_trailing_data() {
    assert_eq!(err(b""), DecodeError::UnexpectedEnd { offset: 0 });
    assert_eq!(
        err(b"e"),
        DecodeError::UnexpectedByte {
            offset: 0,
            byte: b'e',
            expected: "a value ('i', 'l', 'd' or a digit)"
        }
    );
    assert_eq!(err(b"i1ei2e"), DecodeError::TrailingData { offset: 3 });
    assert_eq!(err(b"lee"), DecodeError::TrailingData { offset: 2 });
    assert_eq!(err(b"4:spam\n"), DecodeError::TrailingData { offset: 6 });
    assert!(matches!(
        err(b"lxe"),
        DecodeError::UnexpectedByte {
            offset: 1,
            byte: b'x',
            ..
        }
    ));
}

#[test]
fn every_truncation_of_a_valid_document_is_an_error() {
    let doc = b"d8:announce14:http://t/annce4:infod6:lengthi12345e4:name3:abc12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae4:listli-1e0:lleeee";
    assert!(decode(doc).is_ok());
    for cut in 0..doc.len() {
        let e = decode(&doc[..cut]).expect_err("a strict prefix must not decode");
        match e {
            DecodeError::UnexpectedEnd { offset } => assert_eq!(offset, cut),
            DecodeError::LengthExceedsInput { offset, .. } => assert!(offset < cut),
            other => panic!("cut at {cut}: unexpected {other:?}"),
        }
    }
}

#[test]
fn deep_nesting_is_rejected_without_stack_overflow() {
    let deep = vec![b'l'; 100_000];
    assert_eq!(
        err(&deep),
        DecodeError::TooDeep {
            offset: 64,
            max: 64
        }
    );
    let mut deep_dicts = Vec::new();
    for _ in 0..100_000 {
        deep_dicts.extend_from_slice(b"d1:a");
    }
    assert_eq!(
        err(&deep_dicts),
        DecodeError::TooDeep {
            offset: 64 * 4,
            max: 64
        }
    );
    // Even with no depth limit at all the decoder does not recurse, so a
    // deep but complete document decodes (and drops) without overflowing.
    let unlimited = Limits {
        max_depth: usize::MAX,
        ..Limits::default()
    };
    let mut ok = vec![b'l'; 100_000];
    ok.extend(std::iter::repeat_n(b'e', 100_000));
    let v = decode_with(&ok, &unlimited).unwrap();
    assert_eq!(v.raw().len(), 200_000);
    // Dropping a tree is recursive (Vec's drop glue), which is why
    // max_depth also bounds what is safe to build; drop this one on a
    // thread with a big stack.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(scope, move || drop(v))
            .unwrap()
            .join()
            .unwrap();
    });
}

#[test]
fn depth_limit_is_exact() {
    let limits = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    assert!(decode_with(b"llleee", &limits).is_ok());
    assert!(decode_with(b"ld1:aleee", &limits).is_ok());
    assert_eq!(
        decode_with(b"lllleeee", &limits),
        Err(DecodeError::TooDeep { offset: 3, max: 3 })
    );
    let flat = Limits {
        max_depth: 0,
        ..Limits::default()
    };
    assert!(decode_with(b"i1e", &flat).is_ok());
    assert_eq!(
        decode_with(b"le", &flat),
        Err(DecodeError::TooDeep { offset: 0, max: 0 })
    );
}

#[test]
fn size_limit() {
    let limits = Limits {
        max_input: 4,
        ..Limits::default()
    };
    assert!(decode_with(b"i12e", &limits).is_ok());
    assert_eq!(
        decode_with(b"i123e", &limits),
        Err(DecodeError::TooLarge { offset: 4, max: 4 })
    );
    // decode_prefix bounds the value, not whatever follows it.
    let (v, used) = decode_prefix(b"i12eXXXXXXXX", &limits).unwrap();
    assert_eq!((v.as_int(), used), (Some(12), 4));
    assert_eq!(
        decode_prefix(b"i123eXXXX", &limits),
        Err(DecodeError::TooLarge { offset: 4, max: 4 })
    );
    assert_eq!(
        decode_prefix(b"9:abcdefghi", &limits),
        Err(DecodeError::TooLarge { offset: 4, max: 4 })
    );
}

#[test]
fn decode_prefix_returns_consumed_length() {
    // BEP 9 data message: a dict header followed by raw metadata bytes.
    let msg = b"d8:msg_typei1e5:piecei0e10:total_sizei34256eeRAW-METADATA-BYTES";
    let (v, used) = decode_prefix(msg, &Limits::default()).unwrap();
    assert_eq!(&msg[used..], b"RAW-METADATA-BYTES");
    assert_eq!(v.get(b"msg_type").unwrap().as_int(), Some(1));
    assert_eq!(v.raw(), &msg[..used]);
    // Errors in the prefix are still errors.
    assert!(decode_prefix(b"d1:ae", &Limits::default()).is_err());
    assert_eq!(
        decode_prefix(b"", &Limits::default()),
        Err(DecodeError::UnexpectedEnd { offset: 0 })
    );
}

#[test]
fn error_messages_name_the_problem_and_offset() {
    assert_eq!(
        err(b"li1ei03ee").to_string(),
        "leading zero in integer at byte 4"
    );
    assert_eq!(
        err(b"d1:ai1e1:ai2ee").to_string(),
        "duplicate dictionary key at byte 7"
    );
    assert_eq!(
        err(b"5:abc").to_string(),
        "string at byte 0 declares 5 bytes but only 3 remain"
    );
}

fn arb_bencode() -> impl Strategy<Value = Bencode> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Bencode::Int),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bencode::Bytes),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Bencode::List),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..8),
                inner,
                0..8
            )
            .prop_map(Bencode::Dict),
        ]
    })
}

proptest! {
    #[test]
    fn prop_round_trip(value in arb_bencode()) {
        let bytes = value.encode();
        let decoded = decode(&bytes).unwrap();
        prop_assert_eq!(decoded.raw(), &bytes[..]);
        prop_assert_eq!(decoded.to_owned_value(), value);
    }

    #[test]
    fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
        let _ = decode_prefix(&bytes, &Limits { max_depth: 4, max_input: 32 });
    }

    /// Mutations of valid documents reach deeper into the decoder than
    /// uniformly random bytes do.
    #[test]
    fn prop_mutated_documents_never_panic(
        value in arb_bencode(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = value.encode();
        for (at, byte) in edits {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        if let Ok(v) = decode(&bytes) {
            // Whatever decodes re-encodes to a document that decodes to the same thing.
            let owned = v.to_owned_value();
            prop_assert_eq!(decode(&owned.encode()).unwrap().to_owned_value(), owned);
        }
    }
}

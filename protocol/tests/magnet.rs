//! Magnet link parsing and formatting: hex and base32 hashes (base32 checked
//! against Python's base64.b32decode), names, trackers, peers, and each
//! malformed form.

use protocol::magnet::{Magnet, MagnetError};
use protocol::metainfo::InfoHash;

const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

// python3 -c 'import base64; print(base64.b32decode("XJ4TBOZYEKQMN3F6KMF4YTVZKUFDL5QG").hex())'
const B32: &str = "XJ4TBOZYEKQMN3F6KMF4YTVZKUFDL5QG";
const B32_AS_HEX: &str = "ba7930bb3822a0c6ecbe530bcc4eb9550a35f606";

// python3 -c 'import base64; print(base64.b32decode("MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43U").hex())'
const B32_ASCII: &str = "MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43U";
const B32_ASCII_AS_HEX: &str = "6162636465666768696a6b6c6d6e6f7071727374";

fn hash(hex: &str) -> InfoHash {
    InfoHash::from_hex(hex).unwrap()
}

fn err(uri: &str) -> MagnetError {
    match Magnet::parse(uri) {
        Ok(m) => panic!("{uri} parsed to {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn hex_hash_any_case() {
    let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}")).unwrap();
    assert_eq!(m.info_hash, hash(HEX));
    assert_eq!(m.display_name, None);
    assert!(m.trackers.is_empty() && m.peers.is_empty());
    let upper = Magnet::parse(&format!("MAGNET:?xt=URN:BTIH:{}", HEX.to_uppercase())).unwrap();
    assert_eq!(upper.info_hash, hash(HEX));
}

#[test]
fn base32_hash_any_case() {
    let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{B32}")).unwrap();
    assert_eq!(m.info_hash.to_hex(), B32_AS_HEX);
    let lower = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", B32.to_lowercase())).unwrap();
    assert_eq!(lower.info_hash.to_hex(), B32_AS_HEX);
    let ascii = Magnet::parse(&format!("magnet:?xt=urn:btih:{B32_ASCII}")).unwrap();
    assert_eq!(ascii.info_hash.to_hex(), B32_ASCII_AS_HEX);
}

#[test]
fn display_name_trackers_and_peers() {
    let uri = format!(
        "magnet:?xt=urn:btih:{HEX}&dn=Ubuntu+24.04%20LTS%20%E2%9C%93\
         &tr=udp%3A%2F%2Ftracker.example%3A1337%2Fannounce&tr=http://t.example/a?x=1+2\
         &tr=udp%3A%2F%2Ftracker.example%3A1337%2Fannounce&tr.1=http%3A%2F%2Fthird\
         &x.pe=10.0.0.1:6881&x.pe=%5B2001%3Adb8%3A%3A1%5D%3A51413&x.pe=peer.example:80\
         &xl=12345&ws=http%3A%2F%2Fws&so=0-3&kt=a+b&unknown"
    );
    let m = Magnet::parse(&uri).unwrap();
    assert_eq!(m.display_name.as_deref(), Some("Ubuntu 24.04 LTS ✓"));
    assert_eq!(
        m.trackers,
        vec![
            "udp://tracker.example:1337/announce".to_string(),
            "http://t.example/a?x=1+2".into(), // `+` is literal outside dn
            "http://third".into(),
        ]
    );
    assert_eq!(
        m.peers,
        vec![
            "10.0.0.1:6881".to_string(),
            "[2001:db8::1]:51413".into(),
            "peer.example:80".into()
        ]
    );
}

#[test]
fn repeated_identical_hashes_and_v2_beside_v1_are_fine() {
    let b32_of_hex = format!("magnet:?xt=urn:btih:{B32_AS_HEX}&xt.1=urn:btih:{B32}");
    assert_eq!(
        Magnet::parse(&b32_of_hex).unwrap().info_hash,
        hash(B32_AS_HEX)
    );
    let hybrid = format!(
        "magnet:?xt=urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e\
         &xt=urn:btih:{HEX}"
    );
    assert_eq!(Magnet::parse(&hybrid).unwrap().info_hash, hash(HEX));
    // Unknown URN kinds are skipped.
    let other = format!("magnet:?xt=urn:ed2k:31D6CFE0D16AE931B73C59D7E0C089C0&xt=urn:btih:{HEX}");
    assert_eq!(Magnet::parse(&other).unwrap().info_hash, hash(HEX));
}

#[test]
fn round_trips_through_to_uri() {
    let m = Magnet {
        info_hash: hash(HEX),
        display_name: Some("a name & more+stuff/é".into()),
        trackers: vec!["udp://t:1/a?b=c&d".into(), "http://x/".into()],
        peers: vec!["[::1]:6881".into(), "1.2.3.4:1".into()],
    };
    let uri = m.to_uri();
    assert!(
        uri.starts_with(&format!("magnet:?xt=urn:btih:{HEX}&dn=")),
        "{uri}"
    );
    assert_eq!(Magnet::parse(&uri).unwrap(), m);
    let bare = Magnet {
        info_hash: hash(HEX),
        display_name: None,
        trackers: vec![],
        peers: vec![],
    };
    assert_eq!(bare.to_uri(), format!("magnet:?xt=urn:btih:{HEX}"));
}

#[test]
fn rejects_non_magnets() {
    assert_eq!(err(""), MagnetError::NotMagnet);
    assert_eq!(
        err("http://example.com/?xt=urn:btih:x"),
        MagnetError::NotMagnet
    );
    assert_eq!(err("magnet:"), MagnetError::NotMagnet);
    assert_eq!(
        err(&format!("magnet:xt=urn:btih:{HEX}")),
        MagnetError::NotMagnet
    );
    assert_eq!(err("magnét:?"), MagnetError::NotMagnet);
}

#[test]
fn rejects_missing_or_v2_only_hashes() {
    assert_eq!(err("magnet:?"), MagnetError::MissingInfoHash);
    assert_eq!(
        err("magnet:?dn=x&tr=http://t"),
        MagnetError::MissingInfoHash
    );
    assert_eq!(err("magnet:?xt=urn:sha1:ABC"), MagnetError::MissingInfoHash);
    assert_eq!(
        err(
            "magnet:?xt=urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e"
        ),
        MagnetError::OnlyV2
    );
    assert!(err("magnet:?xt=urn:btmh:1220ab").to_string().contains("v2"));
}

#[test]
fn rejects_bad_hashes() {
    assert_eq!(
        err("magnet:?xt=urn:btih:abc"),
        MagnetError::BadHashLength {
            hash: "abc".into(),
            len: 3
        }
    );
    assert_eq!(
        err("magnet:?xt=urn:btih:"),
        MagnetError::BadHashLength {
            hash: "".into(),
            len: 0
        }
    );
    let long = format!("{HEX}0");
    assert_eq!(
        err(&format!("magnet:?xt=urn:btih:{long}")),
        MagnetError::BadHashLength {
            hash: long.clone(),
            len: 41
        }
    );
    let bad_hex = format!("{}g", &HEX[..39]);
    assert_eq!(
        err(&format!("magnet:?xt=urn:btih:{bad_hex}")),
        MagnetError::BadHex { hash: bad_hex }
    );
    for bad in [
        format!("{}1", &B32[..31]),
        format!("{}=", &B32[..31]),
        format!("{}8", &B32[..31]),
    ] {
        assert_eq!(
            err(&format!("magnet:?xt=urn:btih:{bad}")),
            MagnetError::BadBase32 { hash: bad.clone() }
        );
    }
    assert_eq!(
        err(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{B32}")),
        MagnetError::ConflictingHashes {
            first: hash(HEX),
            second: hash(B32_AS_HEX)
        }
    );
}

#[test]
fn rejects_bad_percent_escapes() {
    for (value, at) in [("%", 0), ("a%2", 1), ("%zz", 0), ("ok%4", 2), ("%%41", 0)] {
        assert_eq!(
            err(&format!("magnet:?xt=urn:btih:{HEX}&dn={value}")),
            MagnetError::BadPercentEncoding {
                param: "dn".into(),
                at
            },
            "{value}"
        );
    }
    assert_eq!(
        err(&format!("magnet:?xt=urn:btih:{HEX}&tr=%ff%fe")),
        MagnetError::NotUtf8 { param: "tr".into() }
    );
    assert_eq!(
        err("magnet:?xt=urn:btih:%zz"),
        MagnetError::BadPercentEncoding {
            param: "xt".into(),
            at: 9
        }
    );
}

#[test]
fn rejects_bad_peers() {
    for peer in [
        "10.0.0.1",
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:-1",
        "10.0.0.1:http",
        ":6881",
        "::1:6881",
        "[::1]",
        "[::1]6881",
        "[not-v6]:6881",
        "300.0.0.1:6881",
        "bad_host!:6881",
        "host name:1",
    ] {
        match err(&format!("magnet:?xt=urn:btih:{HEX}&x.pe={peer}")) {
            MagnetError::BadPeer { value, .. } => assert_eq!(value, peer),
            other => panic!("{peer}: {other:?}"),
        }
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = Magnet::parse(&s);
            let _ = Magnet::parse(&format!("magnet:?{s}"));
        }

        #[test]
        fn to_uri_round_trips(
            hash in any::<[u8; 20]>(),
            dn in proptest::option::of(".{1,40}"),
            trackers in proptest::collection::vec(".{1,40}", 0..4),
            ports in proptest::collection::vec(1u16.., 0..4),
        ) {
            let mut tr: Vec<String> = Vec::new();
            for t in trackers {
                if !tr.contains(&t) {
                    tr.push(t);
                }
            }
            let mut peers: Vec<String> = Vec::new();
            for p in ports {
                let peer = format!("[::1]:{p}");
                if !peers.contains(&peer) {
                    peers.push(peer);
                }
            }
            let m = Magnet { info_hash: InfoHash(hash), display_name: dn, trackers: tr, peers };
            prop_assert_eq!(Magnet::parse(&m.to_uri()).unwrap(), m);
        }
    }
}

//! MSE/PE handshake: the exact bytes against vectors derived independently
//! (tests/data/mse_vectors.py: hashlib, pow and a textbook ARC4), both roles
//! against each other at every chunking, and every kind of bad input a peer
//! can send, each rejected with the error that names it.

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use protocol::mse::{
    Crypto, CryptoSet, DerivedKeys, Detected, Established, Initiator, KEY_LEN, KeyStream,
    MAX_IA_LEN, MAX_PAD, MseError, P_HEX, Responder, Secrets, SkeyLookup, detect, req2_hash,
};
use protocol::wire::Handshake;

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    v.try_into().expect("length")
}

fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// `case.key = hex` lines of mse_vectors.txt, by case.
fn vectors() -> HashMap<String, HashMap<String, Vec<u8>>> {
    let text = std::fs::read_to_string(data_dir().join("mse_vectors.txt")).expect("vectors");
    let mut cases: HashMap<String, HashMap<String, Vec<u8>>> = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(" = ").expect("key = value");
        let (case, field) = key.split_once('.').expect("case.field");
        cases
            .entry(case.to_owned())
            .or_default()
            .insert(field.to_owned(), unhex(value.trim()));
    }
    cases
}

fn bits(v: &[u8]) -> CryptoSet {
    match u32::from_be_bytes(arr(v)) {
        1 => CryptoSet::PLAINTEXT,
        2 => CryptoSet::RC4,
        3 => CryptoSet::BOTH,
        other => panic!("crypto set {other:#x}"),
    }
}

fn lookup_of(info_hashes: &[[u8; 20]]) -> HashMap<[u8; 20], [u8; 20]> {
    info_hashes.iter().map(|h| (req2_hash(h), *h)).collect()
}

fn no_torrents(_: &[u8; 20]) -> Option<[u8; 20]> {
    None
}

/// Feeds all of `bytes` and asserts the machine took every one.
fn feed_all_responder(r: &mut Responder, bytes: &[u8], lookup: &impl SkeyLookup) {
    assert_eq!(r.handle_input(bytes, lookup), Ok(bytes.len()));
}

#[test]
fn vectors_match_the_independent_derivation() {
    let cases = vectors();
    assert_eq!(cases.len(), 2, "both cases present");
    for (name, v) in &cases {
        let info_hash: [u8; 20] = arr(&v["info_hash"]);
        let a = Secrets::new(arr(&v["xa"]), v["pad_a"].clone(), v["pad_c"].clone()).unwrap();
        let b = Secrets::new(arr(&v["xb"]), v["pad_b"].clone(), v["pad_d"].clone()).unwrap();

        // Keys, one by one.
        assert_eq!(a.public_key()[..], v["ya"][..], "{name}: Ya");
        assert_eq!(b.public_key()[..], v["yb"][..], "{name}: Yb");
        let s = a.shared_secret(&arr(&v["yb"])).unwrap();
        assert_eq!(s[..], v["s"][..], "{name}: S from A");
        assert_eq!(
            b.shared_secret(&arr(&v["ya"])).unwrap(),
            s,
            "{name}: S from B"
        );
        let keys = DerivedKeys::new(&s, &info_hash);
        assert_eq!(keys.req1[..], v["req1"][..], "{name}: req1");
        assert_eq!(req2_hash(&info_hash)[..], v["req2"][..], "{name}: req2");
        assert_eq!(
            keys.req2_xor_req3[..],
            v["req2_xor_req3"][..],
            "{name}: req2^req3"
        );
        assert_eq!(keys.key_a[..], v["key_a"][..], "{name}: keyA");
        assert_eq!(keys.key_b[..], v["key_b"][..], "{name}: keyB");
        for (key, want) in [(keys.key_a, "keystream_a"), (keys.key_b, "keystream_b")] {
            let mut ks = [0u8; 32];
            KeyStream::new(&key).apply(&mut ks);
            assert_eq!(
                ks[..],
                v[want][..],
                "{name}: {want} after the 1024-byte discard"
            );
        }

        // The whole transcript, byte for byte.
        let mut init = Initiator::new(info_hash, bits(&v["provide"]), &v["ia"], a).unwrap();
        let mut resp = Responder::new(bits(&v["accept"]), b).unwrap();
        let lookup = lookup_of(&[[0xee; 20], info_hash]);
        let msg1 = init.poll_transmit().unwrap();
        assert_eq!(msg1, v["msg1"], "{name}: message 1");
        assert_eq!(resp.poll_transmit(), None);
        feed_all_responder(&mut resp, &msg1, &lookup);
        let msg2 = resp.poll_transmit().unwrap();
        assert_eq!(msg2, v["msg2"], "{name}: message 2");
        assert_eq!(init.handle_input(&msg2), Ok(msg2.len()));
        let msg3 = init.poll_transmit().unwrap();
        assert_eq!(msg3, v["msg3"], "{name}: message 3");
        assert!(!init.is_established());
        feed_all_responder(&mut resp, &msg3, &lookup);
        assert!(resp.is_established());
        let msg4 = resp.poll_transmit().unwrap();
        assert_eq!(msg4, v["msg4"], "{name}: message 4");
        assert_eq!(init.handle_input(&msg4), Ok(msg4.len()));
        assert!(init.is_established());
        assert_eq!(init.poll_transmit(), None);

        let selected = if v["selected"] == [0, 0, 0, 2] {
            Crypto::Rc4
        } else {
            Crypto::Plaintext
        };
        let mut ea = init.take_established().unwrap();
        let mut eb = resp.take_established().unwrap();
        assert!(init.take_established().is_none(), "taken once");
        for e in [&ea, &eb] {
            assert_eq!(e.info_hash, info_hash);
            assert_eq!(e.crypto, selected);
            assert_eq!(e.ciphers.is_some(), selected == Crypto::Rc4);
        }
        assert!(ea.initial_payload.is_empty());
        assert_eq!(eb.initial_payload, v["ia"], "{name}: IA decrypted");

        // The payload continues the same keystreams (or is left alone).
        let mut wire_a = v["payload_a"].clone();
        let mut wire_b = v["payload_b"].clone();
        if let Some(c) = &mut ea.ciphers {
            c.encrypt.apply(&mut wire_a);
        }
        if let Some(c) = &mut eb.ciphers {
            c.encrypt.apply(&mut wire_b);
        }
        assert_eq!(wire_a, v["wire_a"], "{name}: payload A to B");
        assert_eq!(wire_b, v["wire_b"], "{name}: payload B to A");
        if let Some(c) = &mut eb.ciphers {
            c.decrypt.apply(&mut wire_a);
        }
        assert_eq!(wire_a, v["payload_a"], "{name}: B decrypts A's payload");
    }
}

#[test]
fn python_script_still_prints_the_committed_vectors() {
    let out = std::process::Command::new("python3")
        .arg(data_dir().join("mse_vectors.py"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(data_dir().join("mse_vectors.txt")).unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        committed.trim()
    );
}

/// Secrets from a seed, without an RNG crate: a distinct key per seed.
fn secrets(seed: u8, pad_key: usize, pad_crypto: usize) -> Secrets {
    let key = std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 13) | 1);
    let pad = |n: usize, salt: u8| (0..n).map(|i| (i as u8).wrapping_mul(salt)).collect();
    Secrets::new(key, pad(pad_key, seed | 3), pad(pad_crypto, seed | 5)).unwrap()
}

/// Runs both sides to the end, delivering every message in `chunk`-byte
/// pieces. The responder sends `trailer` as payload right behind message 4,
/// in the same delivery; what the initiator leaves unconsumed is returned
/// (still encrypted, if RC4 was selected).
fn run_pair(
    mut init: Initiator,
    mut resp: Responder,
    lookup: &impl SkeyLookup,
    chunk: usize,
    trailer: &[u8],
) -> Result<(Established, Established, Vec<u8>), MseError> {
    let mut left_for_init = Vec::new();
    let mut eb = None;
    for _ in 0..4 {
        if let Some(out) = init.poll_transmit() {
            for c in out.chunks(chunk) {
                let n = resp.handle_input(c, lookup)?;
                assert_eq!(
                    n,
                    c.len(),
                    "the initiator sends no payload before message 4"
                );
            }
        }
        if let Some(mut out) = resp.poll_transmit() {
            if let Some(mut e) = resp.take_established() {
                let mut payload = trailer.to_vec();
                if let Some(c) = &mut e.ciphers {
                    c.encrypt.apply(&mut payload);
                }
                out.extend_from_slice(&payload);
                eb = Some(e);
            }
            for c in out.chunks(chunk) {
                let n = init.handle_input(c)?;
                left_for_init.extend_from_slice(&c[n..]);
            }
        }
        if let (Some(ea), Some(eb)) = (init.take_established(), eb.take()) {
            return Ok((ea, eb, left_for_init));
        }
    }
    panic!(
        "no progress: initiator {}, responder {}",
        init.state(),
        resp.state()
    );
}

fn set(i: u8) -> CryptoSet {
    [CryptoSet::PLAINTEXT, CryptoSet::RC4, CryptoSet::BOTH][usize::from(i % 3)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any keys, paddings, IA and chunking: both sides agree on the torrent
    /// and the method (RC4 whenever both allow it), the IA arrives, bytes
    /// after message 4 are left as payload, and the payload round-trips.
    #[test]
    fn both_roles_agree_at_every_chunking(
        seed in any::<u8>(),
        pads in (0..=MAX_PAD, 0..=MAX_PAD, 0..=MAX_PAD, 0..=MAX_PAD),
        provide in 0u8..3,
        accept in 0u8..3,
        ia_len in prop_oneof![Just(0usize), Just(Handshake::LEN), 0..=MAX_IA_LEN],
        chunk in prop_oneof![Just(1usize), 2..64usize, 64..2048usize],
        trailer in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let info_hash = [seed ^ 0x5a; 20];
        let ia: Vec<u8> = (0..ia_len).map(|i| i as u8 ^ seed).collect();
        let (provide, accept) = (set(provide), set(accept));
        let init = Initiator::new(info_hash, provide, &ia, secrets(seed, pads.0, pads.1)).unwrap();
        let resp = Responder::new(accept, secrets(seed.wrapping_add(1), pads.2, pads.3)).unwrap();
        let lookup = lookup_of(&[[1; 20], info_hash, [2; 20]]);
        let common = provide.bits() & accept.bits();
        let result = run_pair(init, resp, &lookup, chunk, &trailer);
        if common == 0 {
            prop_assert_eq!(
                result.err(),
                Some(MseError::NoCommonCrypto { provided: provide.bits(), accepted: accept.bits() })
            );
            return Ok(());
        }
        let (mut ea, mut eb, mut left) = result.unwrap();
        let want = if common & 2 != 0 { Crypto::Rc4 } else { Crypto::Plaintext };
        prop_assert_eq!(ea.crypto, want);
        prop_assert_eq!(eb.crypto, want);
        prop_assert_eq!(ea.info_hash, info_hash);
        prop_assert_eq!(eb.info_hash, info_hash);
        prop_assert_eq!(&eb.initial_payload, &ia);
        // The initiator left exactly the trailer's bytes as payload.
        prop_assert_eq!(left.len(), trailer.len());
        prop_assert_eq!(ea.ciphers.is_some(), want == Crypto::Rc4);
        if let (Some(a), Some(b)) = (&mut ea.ciphers, &mut eb.ciphers) {
            a.decrypt.apply(&mut left);
            let mut up = b"request".to_vec();
            a.encrypt.apply(&mut up);
            prop_assert_ne!(&up[..], b"request");
            b.decrypt.apply(&mut up);
            prop_assert_eq!(&up[..], b"request");
        }
        prop_assert_eq!(left, trailer);
    }
}

#[test]
fn the_responder_finds_its_torrent_among_many_by_one_lookup() {
    let torrents: Vec<[u8; 20]> = (0..5000u32)
        .map(|i| std::array::from_fn(|j| (i >> (8 * (j % 4))) as u8 ^ j as u8))
        .collect();
    let map = lookup_of(&torrents);
    let target = torrents[4321];
    let asked = std::cell::Cell::new(0);
    let counting = |req2: &[u8; 20]| {
        asked.set(asked.get() + 1);
        map.find(req2)
    };
    let init = Initiator::new(target, CryptoSet::BOTH, &[], secrets(9, 0, 0)).unwrap();
    let resp = Responder::new(CryptoSet::BOTH, secrets(10, 3, 3)).unwrap();
    let (_, eb, _) = run_pair(init, resp, &counting, 4096, &[]).unwrap();
    assert_eq!(eb.info_hash, target);
    assert_eq!(asked.get(), 1);
}

#[test]
fn detect_tells_plaintext_from_mse_by_the_first_bytes() {
    let hs = Handshake::new([0; 8], [1; 20], [2; 20]).to_bytes();
    assert_eq!(detect(&[]), Detected::NeedMore(20));
    assert_eq!(detect(&hs[..1]), Detected::NeedMore(19));
    assert_eq!(detect(&hs[..12]), Detected::NeedMore(8));
    assert_eq!(detect(&hs[..20]), Detected::Plaintext);
    assert_eq!(detect(&hs), Detected::Plaintext);
    // An MSE key: decided on its first byte unless that is 19.
    assert_eq!(detect(&[0x9c]), Detected::Encrypted);
    assert_eq!(detect(&[19, b'B', b'i', b'X']), Detected::Encrypted);
    let key = secrets(1, 0, 0).public_key();
    assert_eq!(detect(&key), Detected::Encrypted);
}

// ---- Bad input -------------------------------------------------------------

fn p_minus(n: u8) -> [u8; KEY_LEN] {
    let mut p: [u8; KEY_LEN] = arr(&unhex(P_HEX));
    p[KEY_LEN - 1] -= n;
    p
}

#[test]
fn degenerate_or_out_of_range_keys_are_rejected_on_sight() {
    let mut one = [0u8; KEY_LEN];
    one[KEY_LEN - 1] = 1;
    let mut two = [0u8; KEY_LEN];
    two[KEY_LEN - 1] = 2;
    for bad in [[0u8; KEY_LEN], one, p_minus(1), p_minus(0), [0xff; KEY_LEN]] {
        let mut r = Responder::new(CryptoSet::BOTH, secrets(1, 0, 0)).unwrap();
        assert_eq!(
            r.handle_input(&bad, &no_torrents),
            Err(MseError::InvalidPublicKey)
        );
        assert_eq!(r.poll_transmit(), None, "no Yb for a bad Ya");
        let mut i = Initiator::new([1; 20], CryptoSet::BOTH, &[], secrets(2, 0, 0)).unwrap();
        let _ = i.poll_transmit();
        assert_eq!(i.handle_input(&bad), Err(MseError::InvalidPublicKey));
        assert_eq!(i.poll_transmit(), None, "no message 3 for a bad Yb");
    }
    // The edges inside the range are keys like any other.
    for good in [two, p_minus(2)] {
        let mut r = Responder::new(CryptoSet::BOTH, secrets(1, 0, 0)).unwrap();
        assert_eq!(r.handle_input(&good, &no_torrents), Ok(KEY_LEN));
    }
}

/// Garbage bytes that look random (what a non-MSE peer or a corrupt one
/// sends): a linear congruential sequence.
fn garbage(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

#[test]
fn garbage_for_the_initiators_key_fails_the_sync_hash_search() {
    let mut r = Responder::new(CryptoSet::BOTH, secrets(1, 0, 0)).unwrap();
    let junk = garbage(KEY_LEN + MAX_PAD + 20 + 100, 7);
    // Any 96 bytes below P are a key: Yb goes out, then the search runs dry
    // exactly at the end of the window.
    let window_end = KEY_LEN + MAX_PAD + 20;
    assert_eq!(
        r.handle_input(&junk[..window_end - 1], &no_torrents),
        Ok(window_end - 1)
    );
    assert!(r.poll_transmit().is_some());
    assert_eq!(
        r.handle_input(&junk[window_end - 1..], &no_torrents),
        Err(MseError::SyncHashNotFound {
            scanned: MAX_PAD + 20
        })
    );
}

#[test]
fn garbage_for_the_responders_key_fails_the_vc_search() {
    let mut i = Initiator::new([1; 20], CryptoSet::BOTH, &[], secrets(2, 0, 0)).unwrap();
    let junk = garbage(KEY_LEN + MAX_PAD + 8, 11);
    assert_eq!(
        i.handle_input(&junk),
        Err(MseError::VcNotFound {
            scanned: MAX_PAD + 8
        })
    );
}

/// A responder that follows the script up to message 2 and lets a test
/// write message 4 by hand.
struct HandResponder {
    yb: [u8; KEY_LEN],
    encrypt: KeyStream,
}

impl HandResponder {
    /// Answers `init`'s message 1; returns the keys to write message 4.
    fn answer(init: &mut Initiator, info_hash: [u8; 20], pad_b: usize) -> HandResponder {
        let b = secrets(77, 0, 0);
        let ya: [u8; KEY_LEN] = arr(&init.poll_transmit().unwrap()[..KEY_LEN]);
        let s = b.shared_secret(&ya).unwrap();
        let keys = DerivedKeys::new(&s, &info_hash);
        let hand = HandResponder {
            yb: b.public_key(),
            encrypt: KeyStream::new(&keys.key_b),
        };
        let mut msg2 = hand.yb.to_vec();
        msg2.extend(garbage(pad_b, 3));
        assert_eq!(init.handle_input(&msg2), Ok(msg2.len()));
        assert!(init.poll_transmit().is_some(), "message 3 sent");
        hand
    }

    fn msg4(&mut self, vc: [u8; 8], select: u32, pad_len: u16, pad: usize) -> Vec<u8> {
        let mut m = vc.to_vec();
        m.extend(select.to_be_bytes());
        m.extend(pad_len.to_be_bytes());
        m.extend(garbage(pad, 5));
        self.encrypt.apply(&mut m);
        m
    }
}

#[test]
fn padb_of_512_is_accepted_and_513_loses_the_vc() {
    for (pad_b, ok) in [(MAX_PAD, true), (MAX_PAD + 1, false)] {
        let mut i = Initiator::new([4; 20], CryptoSet::BOTH, &[], secrets(2, 0, 0)).unwrap();
        let mut hand = HandResponder::answer(&mut i, [4; 20], pad_b);
        let msg4 = hand.msg4([0; 8], 2, 0, 0);
        let got = i.handle_input(&msg4);
        if ok {
            assert_eq!(got, Ok(msg4.len()));
            assert_eq!(i.take_established().unwrap().crypto, Crypto::Rc4);
        } else {
            assert_eq!(
                got,
                Err(MseError::VcNotFound {
                    scanned: MAX_PAD + 8
                })
            );
        }
    }
}

#[test]
fn pada_of_512_is_accepted_and_513_loses_the_sync_hash() {
    for (pad_a, ok) in [(MAX_PAD, true), (MAX_PAD + 1, false)] {
        let info_hash = [6; 20];
        let a = secrets(3, 0, 0);
        let mut r = Responder::new(CryptoSet::BOTH, secrets(4, 0, 0)).unwrap();
        let mut msg1 = a.public_key().to_vec();
        msg1.extend(garbage(pad_a, 9));
        feed_all_responder(&mut r, &msg1, &lookup_of(&[info_hash]));
        let yb: [u8; KEY_LEN] = arr(&r.poll_transmit().unwrap()[..KEY_LEN]);
        let keys = DerivedKeys::new(&a.shared_secret(&yb).unwrap(), &info_hash);
        let got = r.handle_input(&keys.req1, &lookup_of(&[info_hash]));
        if ok {
            assert_eq!(got, Ok(20));
            assert_eq!(r.state(), "reading the SKEY hash");
        } else {
            assert_eq!(
                got,
                Err(MseError::SyncHashNotFound {
                    scanned: MAX_PAD + 20
                })
            );
        }
    }
}

#[test]
fn padd_declared_past_512_is_rejected() {
    let mut i = Initiator::new([4; 20], CryptoSet::BOTH, &[], secrets(2, 0, 0)).unwrap();
    let mut hand = HandResponder::answer(&mut i, [4; 20], 0);
    let msg4 = hand.msg4([0; 8], 2, 513, 0);
    assert_eq!(
        i.handle_input(&msg4),
        Err(MseError::PadTooLong { len: 513 })
    );
}

#[test]
fn a_crypto_select_we_did_not_offer_is_rejected() {
    for (offered, select) in [
        (CryptoSet::RC4, 1u32),
        (CryptoSet::PLAINTEXT, 2),
        (CryptoSet::BOTH, 3),
        (CryptoSet::BOTH, 0),
        (CryptoSet::BOTH, 4),
    ] {
        let mut i = Initiator::new([4; 20], offered, &[], secrets(2, 0, 0)).unwrap();
        let mut hand = HandResponder::answer(&mut i, [4; 20], 10);
        let msg4 = hand.msg4([0; 8], select, 0, 0);
        assert_eq!(
            i.handle_input(&msg4),
            Err(MseError::SelectNotOffered {
                selected: select,
                offered: offered.bits()
            }),
            "offered {offered:?}, selected {select:#x}"
        );
    }
}

#[test]
fn errors_are_sticky() {
    let mut i = Initiator::new([4; 20], CryptoSet::RC4, &[], secrets(2, 0, 0)).unwrap();
    let mut hand = HandResponder::answer(&mut i, [4; 20], 0);
    let msg4 = hand.msg4([0; 8], 1, 0, 0);
    let err = i.handle_input(&msg4).unwrap_err();
    assert_eq!(i.handle_input(&[0; 10]), Err(err));
    assert_eq!(i.state(), "failed");
    assert!(!i.is_established());
}

/// An initiator that follows the script up to message 2 and lets a test
/// write message 3 by hand.
struct HandInitiator {
    keys: DerivedKeys,
    encrypt: KeyStream,
}

impl HandInitiator {
    /// Sends message 1 to `r` and reads its message 2.
    fn open(r: &mut Responder, info_hash: [u8; 20], lookup: &impl SkeyLookup) -> HandInitiator {
        let a = secrets(55, 0, 0);
        feed_all_responder(r, &a.public_key(), lookup);
        let yb: [u8; KEY_LEN] = arr(&r.poll_transmit().unwrap()[..KEY_LEN]);
        let keys = DerivedKeys::new(&a.shared_secret(&yb).unwrap(), &info_hash);
        HandInitiator {
            encrypt: KeyStream::new(&keys.key_a),
            keys,
        }
    }

    /// Message 3 with the given fields; `ia_len` is declared, `ia` bytes sent.
    fn msg3(&mut self, vc: [u8; 8], provide: u32, pad_len: u16, ia_len: u16, ia: usize) -> Vec<u8> {
        let mut m = self.keys.req1.to_vec();
        m.extend(self.keys.req2_xor_req3);
        let mut enc = vc.to_vec();
        enc.extend(provide.to_be_bytes());
        enc.extend(pad_len.to_be_bytes());
        if usize::from(pad_len) <= MAX_PAD {
            enc.extend(garbage(usize::from(pad_len), 1));
        }
        enc.extend(ia_len.to_be_bytes());
        enc.extend(garbage(ia, 2));
        self.encrypt.apply(&mut enc);
        m.extend(enc);
        m
    }
}

#[test]
fn an_unknown_skey_hash_is_rejected() {
    let mut r = Responder::new(CryptoSet::BOTH, secrets(4, 0, 0)).unwrap();
    let known = lookup_of(&[[1; 20], [2; 20]]);
    let mut hand = HandInitiator::open(&mut r, [3; 20], &known);
    let msg3 = hand.msg3([0; 8], 3, 0, 0, 0);
    assert_eq!(r.handle_input(&msg3, &known), Err(MseError::UnknownSkey));
    assert_eq!(r.poll_transmit(), None, "no message 4");
}

#[test]
fn a_crypto_provide_with_nothing_we_accept_is_rejected() {
    for (accept, provide) in [
        (CryptoSet::RC4, 1u32),
        (CryptoSet::PLAINTEXT, 2),
        (CryptoSet::BOTH, 0),
        (CryptoSet::BOTH, 0x10),
    ] {
        let lookup = lookup_of(&[[3; 20]]);
        let mut r = Responder::new(accept, secrets(4, 0, 0)).unwrap();
        let mut hand = HandInitiator::open(&mut r, [3; 20], &lookup);
        let msg3 = hand.msg3([0; 8], provide, 0, 0, 0);
        assert_eq!(
            r.handle_input(&msg3, &lookup),
            Err(MseError::NoCommonCrypto {
                provided: provide,
                accepted: accept.bits()
            })
        );
    }
}

#[test]
fn padc_declared_past_512_is_rejected() {
    let lookup = lookup_of(&[[3; 20]]);
    let mut r = Responder::new(CryptoSet::BOTH, secrets(4, 0, 0)).unwrap();
    let mut hand = HandInitiator::open(&mut r, [3; 20], &lookup);
    let msg3 = hand.msg3([0; 8], 2, 513, 0, 0);
    assert_eq!(
        r.handle_input(&msg3, &lookup),
        Err(MseError::PadTooLong { len: 513 })
    );
}

#[test]
fn an_initial_payload_past_the_limit_is_rejected() {
    let lookup = lookup_of(&[[3; 20]]);
    let mut r = Responder::new(CryptoSet::BOTH, secrets(4, 0, 0)).unwrap();
    let mut hand = HandInitiator::open(&mut r, [3; 20], &lookup);
    let msg3 = hand.msg3([0; 8], 2, 0, MAX_IA_LEN as u16 + 1, 0);
    assert_eq!(
        r.handle_input(&msg3, &lookup),
        Err(MseError::IaTooLong {
            len: MAX_IA_LEN + 1
        })
    );
}

#[test]
fn a_wrong_verification_constant_is_rejected() {
    let lookup = lookup_of(&[[3; 20]]);
    let mut r = Responder::new(CryptoSet::BOTH, secrets(4, 0, 0)).unwrap();
    let mut hand = HandInitiator::open(&mut r, [3; 20], &lookup);
    let msg3 = hand.msg3([0, 0, 0, 1, 0, 0, 0, 0], 2, 0, 0, 0);
    assert_eq!(
        r.handle_input(&msg3, &lookup),
        Err(MseError::BadVc {
            found: [0, 0, 0, 1, 0, 0, 0, 0]
        })
    );
}

#[test]
fn a_hand_written_message_3_within_the_limits_is_accepted() {
    // The hand-made initiator is right when it stays inside the limits, so
    // the rejections above are the limits' doing.
    let lookup = lookup_of(&[[3; 20]]);
    let mut r = Responder::new(CryptoSet::BOTH, secrets(4, 0, 0)).unwrap();
    let mut hand = HandInitiator::open(&mut r, [3; 20], &lookup);
    let msg3 = hand.msg3([0; 8], 3, MAX_PAD as u16, MAX_IA_LEN as u16, MAX_IA_LEN);
    assert_eq!(r.handle_input(&msg3, &lookup), Ok(msg3.len()));
    let e = r.take_established().unwrap();
    assert_eq!(e.crypto, Crypto::Rc4);
    assert_eq!(e.initial_payload, garbage(MAX_IA_LEN, 2));
}

#[test]
fn unusable_parameters_are_refused() {
    assert!(matches!(
        Secrets::new([1; 20], vec![0; MAX_PAD + 1], vec![]),
        Err(MseError::InvalidParameters(_))
    ));
    assert!(matches!(
        Initiator::new([1; 20], CryptoSet::BOTH, &vec![0; 65536], secrets(1, 0, 0)),
        Err(MseError::InvalidParameters(_))
    ));
}

/// An RNG that counts, to check what `Secrets::generate` draws.
struct Counter(u64);

impl rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.next_u64() as u8;
        }
    }
}

#[test]
fn generated_secrets_are_fresh_and_complete_a_handshake() {
    let mut rng = Counter(1);
    let (a, b) = (Secrets::generate(&mut rng), Secrets::generate(&mut rng));
    assert_ne!(a.public_key(), b.public_key());
    let init = Initiator::new([8; 20], CryptoSet::BOTH, b"ia", a).unwrap();
    let resp = Responder::new(CryptoSet::BOTH, b).unwrap();
    let (ea, eb, _) = run_pair(init, resp, &lookup_of(&[[8; 20]]), 100, &[]).unwrap();
    assert_eq!(
        (ea.crypto, eb.initial_payload),
        (Crypto::Rc4, b"ia".to_vec())
    );
}

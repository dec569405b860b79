//! The MSE stream adapter over in-memory duplex streams: both entry points
//! against each other under every policy, what the wire carries (a tap
//! records it), payload through small buffers with partial writes, the
//! plaintext fallback of `accept`, and the failures: refused kinds, garbage,
//! an unknown torrent, a peer that closes, and a stalled handshake that the
//! timeout ends.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::mse_stream::{Accepted, Encryption, Kind, MseStream, MseStreamError, accept, initiate};
use protocol::mse::{CryptoSet, MseError, Responder, Secrets, req2_hash};
use protocol::wire::Handshake;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};

const TIMEOUT: Duration = Duration::from_secs(10);

fn secrets(seed: u8) -> Secrets {
    let key = std::array::from_fn(|i| seed.wrapping_add(i as u8).wrapping_mul(37) | 1);
    let pad = (0..usize::from(seed) * 2).map(|i| i as u8).collect();
    Secrets::new(key, pad, vec![seed; usize::from(seed)]).unwrap()
}

fn lookup(hashes: &[[u8; 20]]) -> HashMap<[u8; 20], [u8; 20]> {
    hashes.iter().map(|h| (req2_hash(h), *h)).collect()
}

fn our_handshake(info_hash: [u8; 20]) -> [u8; Handshake::LEN] {
    Handshake::new(
        [0, 0, 0, 0, 0, 0x10, 0, 0x04],
        info_hash,
        *b"-AT0001-abcdefghijkl",
    )
    .to_bytes()
}

/// Everything written from one end to the other, as it crossed the "wire".
type Tap = Arc<Mutex<Vec<u8>>>;

/// A pair of streams joined through a relay that records both directions:
/// `(a, b, a_to_b, b_to_a)`. `cap` bounds each duplex buffer, so writes
/// larger than it are partial.
fn tapped(cap: usize) -> (DuplexStream, DuplexStream, Tap, Tap) {
    let (a, a_relay) = duplex(cap);
    let (b, b_relay) = duplex(cap);
    let (a2b, b2a) = (Tap::default(), Tap::default());
    let (ar, aw) = tokio::io::split(a_relay);
    let (br, bw) = tokio::io::split(b_relay);
    tokio::spawn(relay(ar, bw, a2b.clone()));
    tokio::spawn(relay(br, aw, b2a.clone()));
    (a, b, a2b, b2a)
}

async fn relay(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, tap: Tap) {
    let mut buf = vec![0u8; 1500];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        tap.lock().unwrap().extend_from_slice(&buf[..n]);
    }
    let _ = to.shutdown().await;
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn read_len<R: AsyncRead + Unpin>(mut r: R, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    r.read_exact(&mut got).await.unwrap();
    got
}

async fn read_handshake<S: AsyncRead + Unpin>(s: &mut S) -> [u8; Handshake::LEN] {
    let mut hs = [0u8; Handshake::LEN];
    s.read_exact(&mut hs).await.expect("handshake");
    hs
}

/// Dials from `a` with `out_policy`, accepts on `b` with `in_policy`.
async fn connect(
    a: DuplexStream,
    b: DuplexStream,
    info_hash: [u8; 20],
    out_policy: Encryption,
    in_policy: Encryption,
) -> (
    Result<(MseStream<DuplexStream>, Kind), MseStreamError>,
    Result<Accepted<DuplexStream>, MseStreamError>,
) {
    let ia = our_handshake(info_hash);
    let table = lookup(&[[7; 20], info_hash]);
    tokio::join!(
        initiate(a, info_hash, &ia, out_policy, secrets(3), TIMEOUT),
        accept(b, &table, in_policy, secrets(4), TIMEOUT)
    )
}

#[tokio::test]
async fn rc4_both_ways_and_nothing_readable_on_the_wire() {
    let (a, b, a2b, b2a) = tapped(256);
    let info_hash = [9; 20];
    let (out, inc) = connect(a, b, info_hash, Encryption::Prefer, Encryption::Require).await;
    let (mut a, kind) = out.unwrap();
    let inc = inc.unwrap();
    assert_eq!(kind, Kind::MseRc4);
    assert_eq!(inc.kind, Kind::MseRc4);
    assert_eq!(inc.info_hash, Some(info_hash));
    assert_eq!(inc.ia_len, Handshake::LEN);
    let mut b = inc.stream;
    // The initiator's handshake came in the initial payload.
    assert_eq!(read_handshake(&mut b).await, our_handshake(info_hash));

    // 1 MiB each way at once through 256-byte pipes: partial writes, reads
    // in small pieces, and the two directions never wait on each other.
    let up: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let down: Vec<u8> = up.iter().rev().copied().collect();
    let (ar, mut aw) = tokio::io::split(&mut a);
    let (br, mut bw) = tokio::io::split(&mut b);
    let send_up = async {
        // Two slices per write, as the peer's vectored flush sends them.
        for chunk in up.chunks(70_000) {
            let (x, y) = chunk.split_at(chunk.len() / 3);
            let mut done = 0;
            while done < chunk.len() {
                let rest = if done < x.len() {
                    vec![IoSlice::new(&x[done..]), IoSlice::new(y)]
                } else {
                    vec![IoSlice::new(&y[done - x.len()..])]
                };
                done += aw.write_vectored(&rest).await.unwrap();
            }
        }
        aw.flush().await.unwrap();
    };
    let send_down = async {
        bw.write_all(&down).await.unwrap();
        bw.flush().await.unwrap();
    };
    let (_, _, got_up, got_down) = tokio::join!(
        send_up,
        send_down,
        read_len(br, up.len()),
        read_len(ar, down.len())
    );
    assert!(got_up == up, "initiator to responder payload intact");
    assert!(got_down == down, "responder to initiator payload intact");

    let a2b = a2b.lock().unwrap().clone();
    let b2a = b2a.lock().unwrap().clone();
    assert!(a2b.len() > up.len() && b2a.len() > down.len());
    for wire in [&a2b, &b2a] {
        assert!(
            !contains(wire, b"BitTorrent protocol"),
            "handshake encrypted"
        );
        assert!(!contains(wire, &up[1000..1032]), "payload encrypted");
        assert!(!contains(wire, &down[1000..1032]), "payload encrypted");
    }
}

#[tokio::test]
async fn a_plaintext_peer_is_served_its_first_bytes_again() {
    let (mut a, b) = duplex(1024);
    let info_hash = [5; 20];
    let mut sent = our_handshake(info_hash).to_vec();
    sent.extend_from_slice(b"\0\0\0\x01\x02 then messages");
    a.write_all(&sent).await.unwrap();
    let inc = accept(
        b,
        &lookup(&[info_hash]),
        Encryption::Prefer,
        secrets(1),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(inc.kind, Kind::Plaintext);
    assert_eq!(inc.info_hash, None);
    let mut b = inc.stream;
    let mut got = vec![0u8; sent.len()];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(got, sent);
    // And it writes through untouched.
    b.write_all(b"plain reply").await.unwrap();
    b.flush().await.unwrap();
    let mut reply = [0u8; 11];
    a.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"plain reply");
}

#[tokio::test]
async fn a_plaintext_selection_obfuscates_only_the_handshake() {
    // A responder that accepts plaintext payload only (libtorrent does this
    // with allowed_enc_level = plaintext).
    let (a, b, a2b, _) = tapped(4096);
    let info_hash = [6; 20];
    let responder = tokio::spawn(async move {
        let mut b = b;
        let mut r = Responder::new(CryptoSet::PLAINTEXT, secrets(8)).unwrap();
        let table = lookup(&[info_hash]);
        let mut buf = vec![0u8; 4096];
        while !r.is_established() {
            let n = b.read(&mut buf).await.unwrap();
            r.handle_input(&buf[..n], &table).unwrap();
            while let Some(out) = r.poll_transmit() {
                b.write_all(&out).await.unwrap();
            }
        }
        let e = r.take_established().unwrap();
        let mut rest = vec![0u8; 5];
        b.read_exact(&mut rest).await.unwrap();
        (e.initial_payload, rest)
    });
    let ia = our_handshake(info_hash);
    let (mut a, kind) = initiate(a, info_hash, &ia, Encryption::Prefer, secrets(2), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(kind, Kind::MsePlaintext);
    a.write_all(b"hello").await.unwrap();
    a.flush().await.unwrap();
    let (got_ia, rest) = responder.await.unwrap();
    assert_eq!(got_ia, ia, "the IA is RC4 even when the payload is not");
    assert_eq!(&rest, b"hello");
    let wire = a2b.lock().unwrap().clone();
    assert!(!contains(&wire, b"BitTorrent protocol"));
    assert!(wire.ends_with(b"hello"), "payload in the clear");
}

#[tokio::test]
async fn policies_refuse_what_they_must() {
    let info_hash = [1; 20];
    // Require: an incoming plaintext handshake is refused.
    let (mut a, b) = duplex(1024);
    a.write_all(&our_handshake(info_hash)).await.unwrap();
    let got = accept(
        b,
        &lookup(&[info_hash]),
        Encryption::Require,
        secrets(1),
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(got, Err(MseStreamError::PlaintextRefused)),
        "{got:?}"
    );

    // Disable: an incoming MSE connection is refused, and dialing with MSE
    // is the caller's mistake.
    let (a, b) = duplex(1024);
    let (out, inc) = connect(a, b, info_hash, Encryption::Prefer, Encryption::Disable).await;
    assert!(
        matches!(inc, Err(MseStreamError::EncryptedRefused)),
        "{inc:?}"
    );
    assert!(out.is_err(), "the dialer sees the connection drop");
    let (a, _b) = duplex(1024);
    let got = initiate(a, info_hash, &[], Encryption::Disable, secrets(1), TIMEOUT).await;
    assert!(matches!(got, Err(MseStreamError::Disabled)));

    // Prefer dials, Require accepts: RC4, the one method both allow.
    let (a, b) = duplex(1024);
    let (out, inc) = connect(a, b, info_hash, Encryption::Require, Encryption::Prefer).await;
    assert_eq!(out.unwrap().1, Kind::MseRc4);
    assert_eq!(inc.unwrap().kind, Kind::MseRc4);
}

#[tokio::test]
async fn an_unknown_torrent_is_refused() {
    let (a, b) = duplex(4096);
    let ia = our_handshake([2; 20]);
    let table = lookup(&[[3; 20]]);
    let (out, inc) = tokio::join!(
        initiate(a, [2; 20], &ia, Encryption::Prefer, secrets(3), TIMEOUT),
        accept(b, &table, Encryption::Prefer, secrets(4), TIMEOUT)
    );
    assert!(
        matches!(inc, Err(MseStreamError::Protocol(MseError::UnknownSkey))),
        "{inc:?}"
    );
    assert!(matches!(out, Err(MseStreamError::Closed)), "{out:?}");
}

/// Bytes that look random: what a peer speaking something else sends.
fn garbage(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn garbage_instead_of_a_key_is_refused_both_ways() {
    // Incoming: garbage where Ya and the sync hash should be.
    let (mut a, b) = duplex(4096);
    a.write_all(&garbage(1000)).await.unwrap();
    let got = accept(
        b,
        &lookup(&[[1; 20]]),
        Encryption::Prefer,
        secrets(1),
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(
            got,
            Err(MseStreamError::Protocol(MseError::SyncHashNotFound { .. }))
        ),
        "{got:?}"
    );
    // Outgoing: the remote answers our key with garbage.
    let (a, mut b) = duplex(4096);
    let remote = tokio::spawn(async move {
        let mut ya = [0u8; 96];
        b.read_exact(&mut ya).await.unwrap();
        b.write_all(&garbage(1000)).await.unwrap();
        b
    });
    let got = initiate(a, [1; 20], &[], Encryption::Prefer, secrets(0), TIMEOUT).await;
    assert!(
        matches!(
            got,
            Err(MseStreamError::Protocol(MseError::VcNotFound { .. }))
        ),
        "{got:?}"
    );
    drop(remote.await.unwrap());
}

#[tokio::test]
async fn a_peer_that_closes_mid_handshake_is_reported_as_closed() {
    let (a, mut b) = duplex(4096);
    tokio::spawn(async move {
        let mut ya = [0u8; 10];
        let _ = b.read_exact(&mut ya).await;
        // A plaintext-only client drops what is not a BitTorrent handshake.
    });
    let got = initiate(a, [1; 20], &[], Encryption::Prefer, secrets(0), TIMEOUT).await;
    assert!(matches!(got, Err(MseStreamError::Closed)), "{got:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_handshake_ends_at_the_timeout() {
    let timeout = Duration::from_secs(20);
    // Incoming: the peer sends half a key and nothing more.
    let (mut a, b) = duplex(4096);
    a.write_all(&garbage(50)).await.unwrap();
    let started = tokio::time::Instant::now();
    let got = accept(
        b,
        &lookup(&[[1; 20]]),
        Encryption::Prefer,
        secrets(1),
        timeout,
    )
    .await;
    assert!(matches!(got, Err(MseStreamError::Timeout)), "{got:?}");
    assert_eq!(started.elapsed(), timeout);
    // Outgoing: the peer reads our key and never answers.
    let (c, _silent) = duplex(4096);
    let started = tokio::time::Instant::now();
    let got = initiate(c, [1; 20], &[], Encryption::Require, secrets(2), timeout).await;
    assert!(matches!(got, Err(MseStreamError::Timeout)), "{got:?}");
    assert_eq!(started.elapsed(), timeout);
    drop(a);
}

#[test]
fn the_policy_reads_from_config_text() {
    #[derive(serde::Deserialize)]
    struct Cfg {
        #[serde(default)]
        encryption: Encryption,
    }
    let parse = |s: &str| serde_json::from_str::<Cfg>(s).map(|c| c.encryption);
    assert_eq!(parse("{}").unwrap(), Encryption::Prefer);
    assert_eq!(
        parse(r#"{"encryption":"require"}"#).unwrap(),
        Encryption::Require
    );
    assert_eq!(
        parse(r#"{"encryption":"disable"}"#).unwrap(),
        Encryption::Disable
    );
    assert_eq!(
        parse(r#"{"encryption":"prefer"}"#).unwrap(),
        Encryption::Prefer
    );
    assert!(parse(r#"{"encryption":"forced"}"#).is_err());
}

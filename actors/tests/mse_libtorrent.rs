//! MSE/PE against a real libtorrent (python3-libtorrent through
//! tests/support/lt_peer.py) with `out_enc_policy` and `in_enc_policy`
//! forced and `allowed_enc_level` rc4, over TCP on 127.0.0.1, both ways:
//!
//! - we dial libtorrent's seed as MSE initiator, our BitTorrent handshake
//!   in the initial payload;
//! - libtorrent's seed dials our listener and we answer as MSE responder,
//!   its BitTorrent handshake arriving in the initial payload.
//!
//! Each time the BitTorrent handshake, libtorrent's have-all and a 16 KiB
//! block (compared with the payload) cross the connection through RC4. A
//! control shows the policy is real: libtorrent drops a plaintext dial.

#[allow(dead_code)]
#[path = "../../tests/support/lt.rs"]
mod lt;
#[allow(dead_code)]
#[path = "../../tests/support/torrent.rs"]
mod torrent;

use std::collections::HashMap;
use std::time::Duration;

use actors::mse_stream::{Encryption, Kind, MseStream, accept, initiate};
use bytes::BytesMut;
use lt::LtPeer;
use protocol::mse::{Secrets, req2_hash};
use protocol::wire::{self, BlockRef, Decoded, Handshake, Limits, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use torrent::TestTorrent;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const PEER_ID: [u8; 20] = *b"-AT0001-mse-interop1";

/// A 96 KiB torrent in 32 KiB pieces, its payload on disk, and a libtorrent
/// seed of it with encryption forced (`extra` adds arguments).
fn forced_seed(dir: &std::path::Path, extra: &[&str]) -> (TestTorrent, LtPeer) {
    let t = TestTorrent::single(dir, "mse.bin", 32 * 1024, 96 * 1024, 15);
    t.write_payload(dir);
    let mut args: Vec<String> = [
        "--timeout",
        "120",
        "--encryption",
        "forced",
        "--enc-level",
        "rc4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let seed = LtPeer::spawn("seed", &t.path, dir, &args);
    (t, seed)
}

fn our_handshake(info_hash: [u8; 20]) -> Handshake {
    let mut h = Handshake::new([0; 8], info_hash, PEER_ID);
    h.set_extended(true);
    h.set_fast(true);
    h
}

fn secrets() -> Secrets {
    Secrets::generate(&mut rand::rng())
}

async fn read_message<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Message {
    let limits = Limits::default();
    loop {
        match wire::decode_message(buf, &limits) {
            Ok(Decoded::Complete(m)) => return m,
            Ok(Decoded::NeedMore(n)) => {
                buf.reserve(n);
                let read = s.read_buf(buf).await.expect("read");
                assert!(read > 0, "libtorrent closed the connection");
            }
            Err(wire::WireError::UnknownMessage { len, .. }) => {
                // libtorrent may send messages this codec does not know.
                let _ = buf.split_to(4 + len as usize);
            }
            Err(e) => panic!("bad message from libtorrent: {e}"),
        }
    }
}

/// After both BitTorrent handshakes: reads until libtorrent says it has
/// everything, asks for the first block and checks it against the payload.
async fn fetch_first_block<S>(s: &mut MseStream<S>, t: &TestTorrent)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let seen = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(s, t))
        .await
        .expect("block in time");
    assert!(
        seen.iter()
            .any(|m| m.starts_with("HaveAll") || m.starts_with("Bitfield")),
        "{seen:?}"
    );
}

/// The messages' names in the order they came, up to the block.
async fn exchange<S>(s: &mut MseStream<S>, t: &TestTorrent) -> Vec<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    Message::HaveNone.encode(&mut out);
    Message::Interested.encode(&mut out);
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    let mut seen = Vec::new();
    let mut has_all = false;
    let mut requested = false;
    let block = BlockRef {
        index: 0,
        begin: 0,
        length: wire::BLOCK_SIZE,
    };
    loop {
        let m = read_message(s, &mut buf).await;
        seen.push(format!("{m:?}").chars().take(24).collect::<String>());
        match m {
            Message::HaveAll => has_all = true,
            Message::Bitfield(b) => {
                has_all = b.len() == t.piece_count().div_ceil(8) as usize
                    && b.iter().take(b.len() - 1).all(|&x| x == 0xff)
            }
            Message::Unchoke if !requested => {
                requested = true;
                let mut out = BytesMut::new();
                Message::Request(block).encode(&mut out);
                s.write_all(&out).await.unwrap();
                s.flush().await.unwrap();
            }
            Message::Piece { index, begin, data } => {
                assert_eq!((index, begin), (0, 0));
                assert!(
                    data == t.block(&block).unwrap(),
                    "block 0 matches the payload"
                );
                assert!(has_all, "have-all or a full bitfield came first: {seen:?}");
                return seen;
            }
            _ => {}
        }
    }
}

#[test]
fn we_dial_a_forced_libtorrent_as_mse_initiator() {
    let dir = tempfile::tempdir().unwrap();
    let (t, mut seed) = forced_seed(dir.path(), &[]);
    let port: u16 = seed
        .expect_line("PORT ", Duration::from_secs(60))
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = ("127.0.0.1", port);

        // Control: libtorrent with pe_forced drops a plaintext handshake.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(&our_handshake(t.info_hash).to_bytes())
            .await
            .unwrap();
        let mut b = [0u8; 68];
        let got = tokio::time::timeout(EXCHANGE_TIMEOUT, plain.read(&mut b)).await;
        assert!(
            matches!(got, Ok(Ok(0)) | Ok(Err(_))),
            "a forced libtorrent must not answer plaintext: {got:?}"
        );

        // `prefer` offers RC4 and plaintext; libtorrent allows only RC4.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let ia = our_handshake(t.info_hash).to_bytes();
        let (mut s, kind) = initiate(
            tcp,
            t.info_hash,
            &ia,
            Encryption::Prefer,
            secrets(),
            HANDSHAKE_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("MSE with libtorrent: {e}\n{}", seed.stderr_text()));
        assert_eq!(kind, Kind::MseRc4);
        let mut hs = [0u8; Handshake::LEN];
        tokio::time::timeout(EXCHANGE_TIMEOUT, s.read_exact(&mut hs))
            .await
            .expect("libtorrent's handshake in time")
            .expect("libtorrent's handshake");
        let theirs = Handshake::decode(&hs).unwrap().complete().unwrap();
        assert_eq!(theirs.info_hash, t.info_hash);
        assert!(theirs.supports_fast());
        fetch_first_block(&mut s, &t).await;
    });
    assert!(seed.finish(Duration::from_secs(20)).is_some());
}

#[test]
fn a_forced_libtorrent_dials_our_mse_responder() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let ours = listener.local_addr().unwrap();
    let (t, mut seed) = forced_seed(dir.path(), &["--peer", &ours.to_string()]);
    seed.expect_line("PORT ", Duration::from_secs(60));
    let torrents: HashMap<[u8; 20], [u8; 20]> = [[0x42; 20], t.info_hash]
        .iter()
        .map(|h| (req2_hash(h), *h))
        .collect();
    rt.block_on(async {
        let (tcp, _) = tokio::time::timeout(EXCHANGE_TIMEOUT, listener.accept())
            .await
            .expect("libtorrent dials in time")
            .unwrap();
        let inc = accept(
            tcp,
            &torrents,
            Encryption::Require,
            secrets(),
            HANDSHAKE_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("MSE from libtorrent: {e}\n{}", seed.stderr_text()));
        assert_eq!(inc.kind, Kind::MseRc4);
        assert_eq!(inc.info_hash, Some(t.info_hash), "found by its SKEY hash");
        assert_eq!(
            inc.ia_len,
            Handshake::LEN,
            "libtorrent's handshake came as the IA"
        );
        let mut s = inc.stream;
        let mut hs = [0u8; Handshake::LEN];
        s.read_exact(&mut hs).await.unwrap();
        let theirs = Handshake::decode(&hs).unwrap().complete().unwrap();
        assert_eq!(theirs.info_hash, t.info_hash);
        assert_ne!(theirs.peer_id, PEER_ID);
        s.write_all(&our_handshake(t.info_hash).to_bytes())
            .await
            .unwrap();
        s.flush().await.unwrap();
        fetch_first_block(&mut s, &t).await;
    });
    assert!(seed.finish(Duration::from_secs(20)).is_some());
}

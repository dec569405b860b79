//! The peer actor over an in-memory duplex stream, with the test playing
//! both the remote peer (raw wire bytes) and the torrent (its mailbox): the
//! connection code is generic over `AsyncRead + AsyncWrite`, so no socket is
//! needed to check what it sends and what it hands the torrent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::budget::{BudgetConfig, BufferBudget};
use actors::config::ClientConfig;
use actors::peer::{self, PeerCmd, PeerContext};
use actors::picker::{Bitfield, Block, PeerId};
use actors::torrent::{ExchangeReply, PeerFault, TorrentMsg};
use bytes::{Bytes, BytesMut};
use protocol::bencode::Bencode;
use protocol::metainfo::Metainfo;
use protocol::wire::{self, BlockRef, Decoded, Handshake, Limits, Message};
use storage::{DiskIo, DiskIoConfig, Storage, StorageConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PIECE: usize = 32 * 1024;

fn meta(pieces: usize) -> Metainfo {
    let mut info = BTreeMap::new();
    info.insert(b"name".to_vec(), Bencode::from("duplex.bin"));
    info.insert(b"length".to_vec(), Bencode::Int((pieces * PIECE) as i64));
    info.insert(b"piece length".to_vec(), Bencode::Int(PIECE as i64));
    info.insert(b"pieces".to_vec(), Bencode::Bytes(vec![0; 20 * pieces]));
    let mut top = BTreeMap::new();
    top.insert(b"info".to_vec(), Bencode::Dict(info));
    Metainfo::from_bytes(&Bencode::Dict(top).encode()).unwrap()
}

async fn next_msg(remote: &mut DuplexStream, buf: &mut BytesMut) -> Message {
    let limits = Limits {
        piece_count: Some(2),
        ..Limits::default()
    };
    loop {
        if let Ok(Decoded::Complete(m)) = wire::decode_message(buf, &limits) {
            if m != Message::KeepAlive {
                return m;
            }
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), remote.read_buf(buf))
            .await
            .expect("peer went silent")
            .unwrap();
        assert!(n > 0, "peer closed the stream");
    }
}

async fn next_event(rx: &mut mpsc::Receiver<TorrentMsg>) -> TorrentMsg {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event from the peer")
        .expect("peer dropped its torrent sender")
}

/// Answers an exchange with these requests (the peer may be gone).
fn answer(reply: tokio::sync::oneshot::Sender<ExchangeReply>, requests: Vec<Block>) {
    let _ = reply.send(ExchangeReply {
        requests,
        violation: None,
    });
}

/// One test's torrent side: metadata of `pieces` pieces, its storage in a
/// temporary directory, the torrent's mailbox and the buffer budget.
struct Fixture {
    meta: Metainfo,
    _dir: tempfile::TempDir,
    torrent_rx: mpsc::Receiver<TorrentMsg>,
    budget: Arc<BufferBudget>,
}

/// A fixture and peer `n`'s context on it: no limits, no extensions but
/// the protocol's own, nothing of ours to serve.
fn fixture(pieces: usize, n: u64, config: ClientConfig) -> (Fixture, PeerContext) {
    let meta = meta(pieces);
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_info(
        &DiskIo::new(DiskIoConfig::default()),
        &meta.info,
        dir.path(),
        &StorageConfig::default(),
    )
    .unwrap();
    let (torrent, torrent_rx) = mpsc::channel(16);
    let budget = Arc::new(BufferBudget::new(BudgetConfig::default()).unwrap());
    let mut our_id = *b"-AR0001-duplextest00";
    our_id[18..].copy_from_slice(format!("{:02}", n % 100).as_bytes());
    let pieces = meta.info.piece_count();
    let ctx = PeerContext {
        id: PeerId(n),
        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        info_hash: meta.info_hash.0,
        our_id,
        piece_count: pieces,
        have: Bitfield::new(pieces),
        torrent,
        budget: budget.clone(),
        config: Arc::new(config),
        cancel: CancellationToken::new(),
        storage,
        up_limits: Vec::new(),
        down_limits: Vec::new(),
        conn: Default::default(),
        metadata: None,
        pex: false,
        dht: None,
        listen: None,
    };
    let f = Fixture {
        meta,
        _dir: dir,
        torrent_rx,
        budget,
    };
    (f, ctx)
}

/// The remote's half of the handshake: reads ours (returned) and answers
/// with a fast-extension handshake and then `after` (have-all, unchoke).
async fn remote_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    remote: &mut S,
    info_hash: [u8; 20],
    peer_id: &[u8; 20],
    after: &[Message],
) -> [u8; Handshake::LEN] {
    let mut hs = [0u8; Handshake::LEN];
    remote.read_exact(&mut hs).await.unwrap();
    let mut mine = Handshake::new([0; 8], info_hash, *peer_id);
    mine.set_fast(true);
    let mut out = BytesMut::new();
    mine.encode(&mut out);
    for m in after {
        m.encode(&mut out);
    }
    remote.write_all(&out).await.unwrap();
    hs
}

#[tokio::test]
async fn peer_requests_what_the_torrent_hands_out_and_drops_a_bad_frame() {
    let (mut f, ctx) = fixture(2, 7, ClientConfig::default());
    let (local, mut remote) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(peer::run(local, None, ctx));

    // The handshake: ours carries the extension and fast bits.
    let hs = remote_handshake(
        &mut remote,
        f.meta.info_hash.0,
        b"-SCRIPT-remote000000",
        &[Message::HaveAll, Message::Unchoke],
    )
    .await;
    let theirs = Handshake::decode(&hs).unwrap().complete().unwrap();
    assert!(theirs.supports_fast() && theirs.supports_extended());
    assert_eq!(theirs.info_hash, f.meta.info_hash.0);
    let mut out = BytesMut::new();

    let cmds = match next_event(&mut f.torrent_rx).await {
        TorrentMsg::PeerConnected { id, cmds, .. } => {
            assert_eq!(id, PeerId(7));
            cmds
        }
        other => panic!("expected PeerConnected, got {other:?}"),
    };
    assert!(matches!(
        next_event(&mut f.torrent_rx).await,
        TorrentMsg::HaveAll { id: PeerId(7) }
    ));
    // We have nothing: the peer says so with have-none (both sides fast).
    let mut buf = BytesMut::new();
    assert_eq!(next_msg(&mut remote, &mut buf).await, Message::HaveNone);

    // The torrent finds it interesting; the peer (unchoked) asks the
    // torrent what to request, then tells the remote both in one write.
    cmds.try_send(PeerCmd::Interested(true)).unwrap();
    let block = Block {
        piece: 1,
        begin: 16384,
        length: 16384,
    };
    loop {
        match next_event(&mut f.torrent_rx).await {
            TorrentMsg::Exchange { want, reply, .. } if want > 0 => {
                answer(reply, vec![block]);
                break;
            }
            TorrentMsg::Exchange { reply, .. } => answer(reply, Vec::new()),
            _ => {}
        }
    }
    assert_eq!(next_msg(&mut remote, &mut buf).await, Message::Interested);
    assert_eq!(
        next_msg(&mut remote, &mut buf).await,
        Message::Request(BlockRef {
            index: 1,
            begin: 16384,
            length: 16384
        })
    );
    assert!(f.budget.in_use() >= 16384, "the request holds budget");

    // The remote answers; the block reaches the torrent unchanged.
    let data = Bytes::from((0..16384u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    out.clear();
    Message::Piece {
        index: 1,
        begin: 16384,
        data: data.clone(),
    }
    .encode(&mut out);
    remote.write_all(&out).await.unwrap();
    loop {
        match next_event(&mut f.torrent_rx).await {
            TorrentMsg::Exchange { blocks, reply, .. } if !blocks.is_empty() => {
                assert_eq!(blocks.len(), 1);
                assert_eq!(blocks[0].0, block);
                assert_eq!(blocks[0].1, data);
                answer(reply, Vec::new());
                break;
            }
            TorrentMsg::Exchange { reply, .. } => answer(reply, Vec::new()),
            _ => {}
        }
    }

    // A length prefix of 1 GiB: the connection ends, the address refused
    // for good, and nothing of that size is ever allocated.
    remote.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    remote.write_all(&[7]).await.unwrap();
    let gone = loop {
        match next_event(&mut f.torrent_rx).await {
            TorrentMsg::PeerGone { fault, reason, .. } => break (fault, reason),
            TorrentMsg::Exchange { reply, .. } => answer(reply, Vec::new()),
            _ => {}
        }
    };
    assert_eq!(gone.0, PeerFault::Refused, "reason: {}", gone.1);
    task.await.unwrap();
    // The block's budget travelled to the (fake) torrent, which holds it;
    // nothing else is left reserved by the peer.
    assert_eq!(f.budget.in_use(), 16384);
}

/// What one socket read cannot hold (a read fills a quarter of
/// `read_buffer`, 64 KiB and room for a partial frame) but the socket has
/// ready at once goes to the torrent a `read_buffer` (256 KiB, sixteen
/// blocks) per exchange, not a read per exchange; the end of the stream
/// right behind those blocks loses none of them.
#[tokio::test]
async fn blocks_ready_together_go_to_the_torrent_a_read_buffer_per_exchange() {
    const BLOCKS: u32 = 48; // 768 KiB: three exchanges' worth, 9 reads'
    let config = ClientConfig::default();
    assert_eq!(config.read_buffer, 256 * 1024, "the sizes below assume it");
    let (mut f, ctx) = fixture(BLOCKS as usize / 2, 8, config);
    let (local, mut remote) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(peer::run(local, None, ctx));
    remote_handshake(
        &mut remote,
        f.meta.info_hash.0,
        b"-SCRIPT-remote000001",
        &[Message::HaveAll],
    )
    .await;
    let mut out = BytesMut::new();
    let mut buf = BytesMut::new();
    assert_eq!(next_msg(&mut remote, &mut buf).await, Message::HaveNone);

    // Every block of the torrent, then the end of the stream, in one go.
    let payload = |i: u32| Bytes::from(vec![i as u8; 16384]);
    out.clear();
    for i in 0..BLOCKS {
        Message::Piece {
            index: i / 2,
            begin: (i % 2) * 16384,
            data: payload(i),
        }
        .encode(&mut out);
    }
    remote.write_all(&out).await.unwrap();
    remote.shutdown().await.unwrap();

    let mut exchanges = Vec::new();
    let mut _cmds = None; // held: a dropped sender would end the peer
    let gone = loop {
        match next_event(&mut f.torrent_rx).await {
            TorrentMsg::PeerConnected { cmds, .. } => _cmds = Some(cmds),
            TorrentMsg::Exchange { blocks, reply, .. } => {
                if !blocks.is_empty() {
                    exchanges.push(blocks);
                }
                answer(reply, Vec::new());
            }
            TorrentMsg::PeerGone { fault, reason, .. } => break (fault, reason),
            _ => {}
        }
    };
    task.await.unwrap();
    assert_eq!(gone.0, PeerFault::Network, "reason: {}", gone.1);
    assert!(gone.1.contains("closed by the peer"), "reason: {}", gone.1);
    let sizes: Vec<usize> = exchanges.iter().map(Vec::len).collect();
    // A turn ends once it read 256 KiB (15.99 block messages, the last
    // of them maybe partial and carried into the next turn): at least 15
    // blocks in every exchange but the last, so 3 exchanges (a read per
    // exchange would make 9).
    assert!(sizes.len() <= 3, "blocks per exchange: {sizes:?}");
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&n| n >= 15),
        "blocks per exchange: {sizes:?}"
    );
    let all: Vec<&(Block, Bytes)> = exchanges.iter().flatten().collect();
    assert_eq!(all.len(), BLOCKS as usize, "blocks per exchange: {sizes:?}");
    for (i, (block, data)) in all.into_iter().enumerate() {
        let i = i as u32;
        assert_eq!(
            *block,
            Block {
                piece: i / 2,
                begin: (i % 2) * 16384,
                length: 16384
            }
        );
        assert_eq!(*data, payload(i));
    }
    // Unrequested, each took its own budget, which travelled with it.
    assert_eq!(f.budget.in_use(), u64::from(BLOCKS) * 16384);
}

/// Under a download limit the bytes the remote already sent wait unread in
/// the socket until the limit grants them: that is not the remote being
/// late, so none of its requests times out meanwhile (the tick runs during
/// the wait, the limit being a `select!` arm of its own).
#[tokio::test]
async fn requests_do_not_time_out_while_the_download_limit_holds_the_reads() {
    // 384 KiB: the 256 KiB burst, then a read the 16 KiB/s limit holds
    // for 4 s, twice the 2 s floor of the request timeout.
    const BLOCKS: u32 = 24;
    let (mut f, mut ctx) = fixture(BLOCKS as usize / 2, 9, ClientConfig::default());
    ctx.down_limits = vec![actors::ratelimit::fixed(16 * 1024)];
    let (local, mut remote) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(peer::run(local, None, ctx));

    // The remote: handshake, have-all, unchoke, then every request answered
    // at once.
    let info_hash = f.meta.info_hash.0;
    let remote_task = tokio::spawn(async move {
        let after = [Message::HaveAll, Message::Unchoke];
        remote_handshake(&mut remote, info_hash, b"-SCRIPT-remote000002", &after).await;
        let (mut rd, mut wr) = tokio::io::split(remote);
        let mut out = BytesMut::new();
        let limits = Limits {
            piece_count: Some(BLOCKS / 2),
            ..Limits::default()
        };
        let mut buf = BytesMut::new();
        loop {
            while let Ok(Decoded::Complete(m)) = wire::decode_message(&mut buf, &limits) {
                if let Message::Request(r) = m {
                    out.clear();
                    Message::Piece {
                        index: r.index,
                        begin: r.begin,
                        data: Bytes::from(vec![r.index as u8; r.length as usize]),
                    }
                    .encode(&mut out);
                    wr.write_all(&out).await.unwrap();
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });

    let mut to_ask: Vec<Block> = (0..BLOCKS)
        .rev()
        .map(|i| Block {
            piece: i / 2,
            begin: (i % 2) * 16384,
            length: 16384,
        })
        .collect();
    let mut got = 0u32;
    let mut timed_out = 0usize;
    let mut cmds = None; // held: a dropped sender would end the peer
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got < BLOCKS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{got} blocks in 60 s"
        );
        match next_event(&mut f.torrent_rx).await {
            TorrentMsg::PeerConnected { cmds: c, .. } => {
                c.try_send(PeerCmd::Interested(true)).unwrap();
                cmds = Some(c);
            }
            TorrentMsg::Exchange {
                blocks,
                want,
                reply,
                ..
            } => {
                got += blocks.len() as u32;
                for (b, data) in &blocks {
                    assert_eq!(data.len(), 16384);
                    assert!(data.iter().all(|&x| x == b.piece as u8));
                }
                let n = (want as usize).min(to_ask.len());
                let asked = to_ask.split_off(to_ask.len() - n);
                answer(reply, asked);
            }
            TorrentMsg::TimedOut { blocks, .. } => {
                timed_out += blocks.len();
                to_ask.extend(blocks);
            }
            TorrentMsg::PeerGone { reason, .. } => panic!("peer gone: {reason}"),
            _ => {}
        }
    }
    assert_eq!(
        timed_out, 0,
        "requests timed out while our limit held the reads"
    );
    drop(cmds);
    let _ = task.await;
    remote_task.abort();
}

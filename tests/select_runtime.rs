//! The API the daemon drives, in process against a scripted seed: file
//! priorities changed while the torrent runs (a file selected later is
//! created and its bytes already held in the part file move into place
//! without being fetched again), and streams opened on the torrent handle
//! (their bound, their close, and a stream of a skipped file, whose bytes
//! are fetched as time-critical and kept in the part file).

mod support;

use std::sync::Arc;
use std::time::Duration;

use actors::config::ClientConfig;
use actors::picker::{Priority, Strategy};
use actors::session::Session;
use actors::stream::{FileStream, StreamError};
use actors::torrent::{
    SetPrioritiesError, Target, TorrentHandle, TorrentParams, TorrentState, TorrentStats,
};
use protocol::metainfo::Metainfo;
use storage::Layout;
use support::scripted::{Script, Seed};
use support::torrent::TestTorrent;

use Priority::{High, Normal, Skip};

async fn until(
    handle: &TorrentHandle,
    what: &str,
    cond: impl Fn(&TorrentStats) -> bool,
) -> TorrentStats {
    let mut rx = handle.stats();
    let wait = async {
        loop {
            {
                let s = rx.borrow_and_update();
                if let TorrentState::Error(e) = &s.state {
                    panic!("torrent failed: {e}");
                }
                if cond(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("the torrent stopped before {what}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within 60 s"))
}

fn selection_done(s: &TorrentStats) -> bool {
    s.state == TorrentState::Seeding && s.done_bytes == s.wanted_bytes
}

async fn read_all(stream: &mut FileStream) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < stream.len() {
        let chunk = stream.read_at(out.len() as u64, 1 << 20).await.unwrap();
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_change_while_running_and_streams_open_on_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::multi(
        dir.path(),
        "five",
        32 * 1024,
        &[
            ("a.bin", 100_000),
            ("b.bin", 150_001),
            ("sub/c.bin", 90_000),
            ("d.bin", 200_003),
            ("e.nfo", 50_000),
        ],
        23,
    );
    let seed = Seed::start(&t, Script::new());
    let meta = Arc::new(Metainfo::from_bytes(&std::fs::read(&t.path).unwrap()).unwrap());
    let layout = Layout::new_files(
        storage::layout::specs_from_info(&meta.info),
        meta.info.piece_length,
    )
    .unwrap();
    let out = dir.path().join("out");
    let session = Session::start(ClientConfig::default()).unwrap();
    let handle = session
        .add_torrent(TorrentParams {
            meta: meta.clone(),
            target: Target::Directory(out.clone()),
            resume_file: out.join(".state/five.resume"),
            peers: vec![seed.addr()],
            strategy: Strategy::RarestFirst,
            seed: true,
            upload_limit: None,
            download_limit: None,
            priorities: Some(vec![Skip, Normal, Skip, Skip, Skip]),
            dht: None,
        })
        .await
        .unwrap();
    let first = until(&handle, "file b", selection_done).await;
    assert_eq!(first.wanted_bytes, 150_001);
    let root = t.output_root(&out);
    assert!(root.join("b.bin").exists());
    assert!(!root.join("sub").exists());

    // The daemon's `torrent-set`: a wrong count is refused, then c is
    // selected at high priority.
    assert_eq!(
        handle.set_file_priorities(vec![Normal]).await,
        Err(SetPrioritiesError::Count {
            got: 1,
            expected: 5
        })
    );
    handle
        .set_file_priorities(vec![Skip, Normal, High, Skip, Skip])
        .await
        .unwrap();
    let second = until(&handle, "file c", |s| {
        selection_done(s) && s.wanted_bytes == 150_001 + 90_000
    })
    .await;
    assert_eq!(std::fs::read(root.join("sub/c.bin")).unwrap(), t.files[2].1);
    assert_eq!(std::fs::read(root.join("b.bin")).unwrap(), t.files[1].1);
    // Only c's pieces that b did not need were fetched: the one they share
    // came out of the part file.
    let b_pieces: Vec<u32> = layout.pieces_of_file(1).collect();
    let fresh: u64 = layout
        .pieces_of_file(2)
        .filter(|p| !b_pieces.contains(p))
        .map(|p| layout.piece_len(p).unwrap())
        .sum();
    assert_eq!(second.bytes_down - first.bytes_down, fresh);
    assert!(!root.join("a.bin").exists() && !root.join("d.bin").exists());

    // Streams: a bad index, the bound on readers, and closing.
    assert_eq!(
        FileStream::open(&handle, 5).await.unwrap_err(),
        StreamError::NoSuchFile(5)
    );
    let max = ClientConfig::default().stream.max_readers;
    let mut open = Vec::new();
    for _ in 0..max {
        open.push(FileStream::open(&handle, 2).await.unwrap());
    }
    assert_eq!(
        FileStream::open(&handle, 2).await.unwrap_err(),
        StreamError::TooManyReaders(max)
    );
    assert_eq!(read_all(&mut open[0]).await, t.files[2].1);
    drop(open);
    until(&handle, "streams closed", |s| s.stream_readers == 0).await;

    // A stream of a skipped file fetches what it reads; the bytes go to the
    // part file, the file is not created.
    let mut e = FileStream::open(&handle, 4).await.unwrap();
    assert_eq!(e.name(), "e.nfo");
    assert_eq!(read_all(&mut e).await, t.files[4].1);
    assert!(!root.join("e.nfo").exists());
    drop(e);
    let last = until(&handle, "streams closed", |s| s.stream_readers == 0).await;
    assert_eq!(last.done_bytes, last.wanted_bytes);
    session.shutdown().await;
}

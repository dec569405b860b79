//! Disk writer behaviour on real files: ordering, coalescing (checked on the
//! writer's own counters), IOV_MAX splitting, read-back, seeding reads.

mod common;

use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Barrier};

use bytes::Bytes;
use common::*;
use storage::{
    DiskIo, DiskIoConfig, FileSpec, Preallocation, ReadJob, Storage, StorageConfig, WriteJob,
    WriterConfig,
};

fn io_with(writer: WriterConfig) -> DiskIo {
    DiskIo::new(DiskIoConfig {
        writer,
        ..DiskIoConfig::default()
    })
}

fn read_all(root: &std::path::Path, files: &[FileSpec]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in files {
        let p = f.path.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let d = std::fs::read(&p).unwrap();
        assert_eq!(d.len() as u64, f.length, "{p:?}");
        v.extend_from_slice(&d);
    }
    v
}

#[test]
fn out_of_order_pieces_multi_file_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        FileSpec::new(["t", "a.bin"], 100_000),
        FileSpec::new(["t", "empty"], 0),
        FileSpec::new(["t", "sub", "b.bin"], 300_001),
        FileSpec::new(["t", "c.bin"], 7),
        FileSpec::new(["t", "d.bin"], 250_000),
    ];
    let total: u64 = files.iter().map(|f| f.length).sum();
    let all = Bytes::from(data(total as usize, 1));
    let io = io_with(WriterConfig::default());
    let st = Storage::open_files(
        &io,
        dir.path(),
        files.clone(),
        64 * 1024,
        &StorageConfig::default(),
    )
    .unwrap();
    let layout = st.layout().clone();
    assert!(dir.path().join("t/empty").is_file());
    write_shuffled(&st, &all, 7);
    assert_eq!(read_all(dir.path(), &files), &all[..]);
    // Reads through the storage agree, across file boundaries too.
    let b = st.read_blocking(1, 30_000, 16_384).unwrap();
    let off = 64 * 1024 + 30_000;
    assert_eq!(&b[..], &all[off..off + 16_384]);
    let stats = io.writer_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].1.jobs_written, u64::from(layout.piece_count()));
    assert_eq!(stats[0].1.bytes_written, total);
    assert_eq!(stats[0].1.errors, 0);
}

/// Holds the writer busy inside a reply so that the next jobs pile up and
/// are taken in one wake-up; then checks the counters.
#[test]
fn adjacent_pieces_coalesced_into_one_pwritev() {
    let dir = tempfile::tempdir().unwrap();
    let piece_len = 256 * 1024u32;
    let n = 32u32;
    let files = vec![FileSpec::new(
        ["img"],
        u64::from(piece_len) * u64::from(n + 2),
    )];
    let all = Bytes::from(data(files[0].length as usize, 2));
    let io = io_with(WriterConfig {
        queue_capacity: 64,
        batch_limit: 64,
        max_iovecs: 1024,
        max_bytes_per_sec: None,
    });
    let st = Storage::open_files(
        &io,
        dir.path(),
        files.clone(),
        piece_len,
        &StorageConfig::default(),
    )
    .unwrap();
    let layout = st.layout().clone();

    let (entered_tx, entered_rx) = sync_channel(1);
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let (tx, rx) = sync_channel(64);
    let tx0 = tx.clone();
    // The gate piece: last one, not adjacent to 0..n.
    st.write(WriteJob {
        piece: verified(&layout, &all, n + 1),
        reply: Box::new(move |d| {
            entered_tx.send(()).unwrap();
            g.wait();
            tx0.send(d).unwrap();
        }),
    })
    .unwrap();
    entered_rx.recv().unwrap();
    for p in shuffled(n, 3) {
        let tx = tx.clone();
        st.try_write(WriteJob {
            piece: verified(&layout, &all, p),
            reply: Box::new(move |d| tx.send(d).unwrap()),
        })
        .unwrap();
    }
    gate.wait();
    for _ in 0..=n {
        rx.recv().unwrap().result.unwrap();
    }
    let s = st.writer_stats()[0];
    let blocks_per_piece = u64::from(piece_len) / BLOCK as u64;
    assert_eq!(s.jobs_written, u64::from(n) + 1);
    assert_eq!(s.batches, 2, "{s:?}");
    assert_eq!(s.runs_written, 2, "{s:?}");
    assert_eq!(s.pwritev_calls, 2, "{s:?}");
    assert_eq!(s.max_blocks_per_run, u64::from(n) * blocks_per_piece);
    assert_eq!(s.blocks_written, u64::from(n + 1) * blocks_per_piece);
    let back = std::fs::read(dir.path().join("img")).unwrap();
    let done = (n as usize) * piece_len as usize;
    assert_eq!(&back[..done], &all[..done]);
    assert!(
        back[done..done + piece_len as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(
        &back[done + piece_len as usize..],
        &all[done + piece_len as usize..]
    );
}

#[test]
fn runs_split_at_max_iovecs_and_at_file_edges() {
    let dir = tempfile::tempdir().unwrap();
    // Two files; one piece of 8 blocks spans the edge 3 blocks in.
    let files = vec![
        FileSpec::new(["t", "a"], 3 * BLOCK as u64),
        FileSpec::new(["t", "b"], 5 * BLOCK as u64),
    ];
    let all = Bytes::from(data(8 * BLOCK, 4));
    let io = io_with(WriterConfig {
        max_iovecs: 2,
        ..WriterConfig::default()
    });
    let cfg = StorageConfig {
        preallocation: Preallocation::Sparse,
        ..StorageConfig::default()
    };
    let st = Storage::open_files(&io, dir.path(), files.clone(), 8 * BLOCK as u32, &cfg).unwrap();
    let layout = st.layout().clone();
    st.write_blocking(verified(&layout, &all, 0)).unwrap();
    let s = st.writer_stats()[0];
    assert_eq!(s.runs_written, 2); // one per file
    assert_eq!(s.pwritev_calls, 2 + 3); // ceil(3/2) + ceil(5/2)
    assert_eq!(s.max_blocks_per_run, 5);
    assert_eq!(read_all(dir.path(), &files), &all[..]);
}

#[test]
fn wrong_length_piece_is_refused_through_reply() {
    let dir = tempfile::tempdir().unwrap();
    let io = io_with(WriterConfig::default());
    let st = Storage::open_files(
        &io,
        dir.path(),
        vec![FileSpec::new(["x"], 40_000)],
        32_768,
        &StorageConfig::default(),
    )
    .unwrap();
    let blocks = vec![Bytes::from(vec![1u8; 100])];
    let h = storage::sha1_of(&blocks);
    let v = storage::VerifiedPiece::verify(1, blocks, &h).unwrap();
    let e = st.write_blocking(v).unwrap_err();
    assert!(
        matches!(e, storage::StorageError::PieceLength { .. }),
        "{e}"
    );
}

#[test]
fn reader_pool_serves_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        FileSpec::new(["t", "a"], 50_000),
        FileSpec::new(["t", "b"], 50_000),
    ];
    let all = Bytes::from(data(100_000, 5));
    let io = io_with(WriterConfig::default());
    let st =
        Storage::open_files(&io, dir.path(), files, 32_768, &StorageConfig::default()).unwrap();
    write_in_order(&st, &all);
    let (tx, rx) = sync_channel(16);
    for (piece, begin, length) in [(0u32, 0u32, 16_384u32), (1, 16_384, 16_384), (3, 0, 1_696)] {
        let tx = tx.clone();
        let job = ReadJob {
            piece,
            begin,
            length,
            reply: Box::new(move |d| tx.send(d).unwrap()),
        };
        match st.try_read(job) {
            Ok(()) => {}
            Err(e) => st.read(e.into_inner()).unwrap(),
        }
    }
    let tx2 = tx.clone();
    st.read(ReadJob {
        piece: 3,
        begin: 0,
        length: 5000,
        reply: Box::new(move |d| tx2.send(d).unwrap()),
    })
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rx.recv().unwrap());
    }
    for d in got {
        let start = d.piece as usize * 32_768 + d.begin as usize;
        match d.result {
            Ok(b) => assert_eq!(&b[..], &all[start..start + b.len()]),
            Err(e) => {
                // Only the out-of-piece read fails.
                assert!(
                    matches!(e, storage::StorageError::RangeOutOfPiece { .. }),
                    "{e}"
                );
            }
        }
    }
}

/// Reads one piece through the reader threads, waiting for it.
fn read_piece(st: &Storage, piece: u32, length: u32) -> Bytes {
    let (tx, rx) = sync_channel(1);
    st.read(ReadJob {
        piece,
        begin: 0,
        length,
        reply: Box::new(move |d| tx.send(d).unwrap()),
    })
    .unwrap();
    rx.recv().unwrap().result.unwrap()
}

/// A piece read for upload goes into a buffer that came back from an
/// earlier read once all of its slices were dropped, and every byte of it
/// is the new piece's: padding is zeroed over the old data, a short piece
/// shows nothing past its end. A live slice keeps its buffer out of the
/// pool; a pool of 0 bytes reuses nothing.
#[test]
fn read_buffers_are_reused_and_never_show_an_earlier_read() {
    let dir = tempfile::tempdir().unwrap();
    let pl = 65_536usize;
    let mut pad = FileSpec::new([".pad", "65536"], pl as u64);
    pad.padding = true;
    let files = vec![
        FileSpec::new(["t", "a.bin"], pl as u64),
        pad,
        FileSpec::new(["t", "b.bin"], pl as u64 + 40_000),
    ];
    let mut all = data(4 * pl, 11);
    all[pl..2 * pl].fill(0);
    all.truncate(3 * pl + 40_000);
    let all = Bytes::from(all);
    let io = io_with(WriterConfig::default());
    let st = Storage::open_files(
        &io,
        dir.path(),
        files.clone(),
        pl as u32,
        &StorageConfig::default(),
    )
    .unwrap();
    write_in_order(&st, &all);
    st.sync_blocking().unwrap();
    let start = io.read_pool_stats();
    let piece = |p: usize| &all[p * pl..((p + 1) * pl).min(all.len())];

    let first = read_piece(&st, 0, pl as u32);
    assert_eq!(&first[..], piece(0));
    let block = first.slice(16_384..32_768);
    drop(first);
    // The block still pins the buffer: the next read allocates.
    let second = read_piece(&st, 2, pl as u32);
    assert_eq!(&second[..], piece(2));
    drop(second);
    drop(block);
    let s = io.read_pool_stats();
    assert_eq!((s.hits - start.hits, s.misses - start.misses), (0, 2));
    assert_eq!(s.idle_bytes, 2 * pl as u64);
    // Padding over a reused buffer reads as zeros; the short last piece
    // reuses one too.
    let padding = read_piece(&st, 1, pl as u32);
    assert!(padding.iter().all(|&b| b == 0));
    let last = read_piece(&st, 3, 40_000);
    assert_eq!(&last[..], piece(3));
    let s = io.read_pool_stats();
    assert_eq!((s.hits - start.hits, s.misses - start.misses), (2, 2));
    assert_eq!(s.idle_bytes, 0);
    drop((padding, last));
    assert_eq!(io.read_pool_stats().idle_bytes, 2 * pl as u64);

    let off = DiskIo::new(DiskIoConfig {
        read_pool_bytes: 0,
        ..DiskIoConfig::default()
    });
    let st = Storage::open_files(
        &off,
        dir.path(),
        files,
        pl as u32,
        &StorageConfig::default(),
    )
    .unwrap();
    for p in [0, 0, 2] {
        assert_eq!(&read_piece(&st, p, pl as u32)[..], piece(p as usize));
    }
    let s = off.read_pool_stats();
    assert_eq!((s.hits, s.returned, s.idle_bytes), (0, 0, 0));
}

#[test]
fn padding_only_pieces_need_no_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut pad = FileSpec::new([".pad", "100"], 100);
    pad.padding = true;
    let io = io_with(WriterConfig::default());
    let st =
        Storage::open_files(&io, dir.path(), vec![pad], 64, &StorageConfig::default()).unwrap();
    let layout = st.layout().clone();
    let zeros = Bytes::from(vec![0u8; 100]);
    for p in 0..layout.piece_count() {
        st.write_blocking(verified(&layout, &zeros, p)).unwrap();
    }
    st.sync_blocking().unwrap();
    assert_eq!(st.read_blocking(1, 0, 36).unwrap(), vec![0u8; 36]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// `write_here_or_queue` writes on the calling thread when the writer is
/// parked (no hand-over), queues while it is busy, and a sync after both
/// covers them; every byte lands either way.
#[test]
fn idle_writer_lets_the_caller_write_busy_writer_takes_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![FileSpec::new(["t", "a.bin"], 8 * 65_536)];
    let all = Bytes::from(data(8 * 65_536, 3));
    let io = io_with(WriterConfig::default());
    let st = Storage::open_files(
        &io,
        dir.path(),
        files.clone(),
        65_536,
        &StorageConfig::default(),
    )
    .unwrap();
    let layout = st.layout().clone();
    // Let the writer thread start and park.
    let mut parked = false;
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let me = std::thread::current().id();
        let (tx, rx) = sync_channel(1);
        st.write_here_or_queue(WriteJob {
            piece: verified(&layout, &all, 0),
            reply: Box::new(move |d| tx.send((d, std::thread::current().id())).unwrap()),
        })
        .unwrap();
        let (d, on) = rx.recv().unwrap();
        d.result.unwrap();
        if on == me {
            parked = true;
            break;
        }
    }
    assert!(parked, "a parked writer never let the caller write");
    assert!(io.writer_stats()[0].1.inline_batches >= 1);
    // A writer busy with a held reply: the next piece is queued, not
    // written here, and waits for it.
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    st.write(WriteJob {
        piece: verified(&layout, &all, 1),
        reply: Box::new(move |d| {
            d.result.unwrap();
            g.wait();
        }),
    })
    .unwrap();
    // The writer may not have popped it yet; either way it is not parked.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let me = std::thread::current().id();
    let (tx, rx) = sync_channel(8);
    for p in 2..8 {
        let tx = tx.clone();
        st.write_here_or_queue(WriteJob {
            piece: verified(&layout, &all, p),
            reply: Box::new(move |d| tx.send((d, std::thread::current().id())).unwrap()),
        })
        .unwrap();
    }
    gate.wait();
    for _ in 2..8 {
        let (d, on) = rx.recv().unwrap();
        d.result.unwrap();
        assert_ne!(on, me, "written here while the writer was busy");
    }
    st.sync_blocking().unwrap();
    assert_eq!(read_all(dir.path(), &files), &all[..]);
    let s = io.writer_stats()[0].1;
    assert_eq!(
        s.inline_batches, 1,
        "only the one piece written while parked"
    );
    assert_eq!(s.errors, 0);
}

/// A rate-limited writer is never bypassed: its limit is what slows the
/// download.
#[test]
fn rate_limited_writer_always_takes_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![FileSpec::new(["t", "a.bin"], 4 * 65_536)];
    let all = Bytes::from(data(4 * 65_536, 4));
    let io = io_with(WriterConfig {
        max_bytes_per_sec: Some(64 << 20),
        ..WriterConfig::default()
    });
    let st = Storage::open_files(
        &io,
        dir.path(),
        files.clone(),
        65_536,
        &StorageConfig::default(),
    )
    .unwrap();
    let layout = st.layout().clone();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let me = std::thread::current().id();
    for p in 0..4 {
        let (tx, rx) = sync_channel(1);
        st.write_here_or_queue(WriteJob {
            piece: verified(&layout, &all, p),
            reply: Box::new(move |d| tx.send((d, std::thread::current().id())).unwrap()),
        })
        .unwrap();
        let (d, on) = rx.recv().unwrap();
        d.result.unwrap();
        assert_ne!(on, me);
    }
    assert_eq!(io.writer_stats()[0].1.inline_batches, 0);
    assert_eq!(read_all(dir.path(), &files), &all[..]);
}

/// Syncs run on the device's sync thread, handed over after the writes of
/// their batch: every write queued before a sync has replied when the sync
/// replies, and the bytes are on disk.
#[test]
fn sync_replies_after_every_write_queued_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![FileSpec::new(["t", "a.bin"], 16 * 65_536)];
    let all = Bytes::from(data(16 * 65_536, 5));
    let io = io_with(WriterConfig::default());
    let st = Storage::open_files(
        &io,
        dir.path(),
        files.clone(),
        65_536,
        &StorageConfig::default(),
    )
    .unwrap();
    let layout = st.layout().clone();
    let (tx, rx) = sync_channel(32);
    for round in 0..2u32 {
        for p in round * 8..round * 8 + 8 {
            let tx = tx.clone();
            st.write(WriteJob {
                piece: verified(&layout, &all, p),
                reply: Box::new(move |d| tx.send(Ok(d.piece)).unwrap()),
            })
            .unwrap();
        }
        let tx = tx.clone();
        st.sync(Box::new(move |r| tx.send(Err(r.is_ok())).unwrap()));
    }
    let mut written = 0;
    for round in 1..=2 {
        loop {
            match rx.recv().unwrap() {
                Ok(_) => written += 1,
                Err(ok) => {
                    assert!(ok, "sync failed");
                    break;
                }
            }
        }
        // Writes queued after a sync may reply first: they do not wait
        // for its fdatasync.
        assert!(
            written >= 8 * round,
            "a sync replied before the writes queued ahead of it"
        );
    }
    assert_eq!(read_all(dir.path(), &files), &all[..]);
    let s = io.writer_stats()[0].1;
    assert_eq!((s.syncs, s.errors), (2, 0));
}

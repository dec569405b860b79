//! Recheck on real files: a corrupted byte is found in the right piece,
//! short files read as bad pieces, subsets and small read sizes work.

mod common;

use bytes::Bytes;
use common::*;
use std::io::{Seek, SeekFrom, Write};
use storage::{
    DiskIo, DiskIoConfig, FileSpec, HashPool, HashPoolConfig, Preallocation, RecheckConfig,
    Storage, StorageConfig, recheck,
};

fn setup(dir: &std::path::Path) -> (Storage, Bytes, Vec<[u8; 20]>) {
    let files = vec![
        FileSpec::new(["t", "a"], 200_000),
        FileSpec::new(["t", "b"], 0),
        FileSpec::new(["t", "c"], 333_333),
    ];
    let all = Bytes::from(data(533_333, 41));
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_files(&io, dir, files, 16 * 1024, &StorageConfig::default()).unwrap();
    let layout = st.layout().clone();
    write_in_order(&st, &all);
    let h = hashes(&layout, &all);
    (st, all, h)
}

#[test]
fn corrupted_byte_found_in_the_right_piece() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _all, h) = setup(dir.path());
    let pool = HashPool::new(HashPoolConfig {
        workers: 2,
        queue_capacity: 8,
    })
    .unwrap();
    let n = st.layout().piece_count() as usize;
    let r = recheck(&st, &h, None, &pool.handle(), &RecheckConfig::default()).unwrap();
    assert!(r.good.iter().all(|g| *g));
    assert_eq!(r.bytes_read, 533_333);

    // Flip one byte at offset 150_000 of c: torrent offset 350_000.
    let mut f = std::fs::File::options()
        .write(true)
        .read(true)
        .open(dir.path().join("t/c"))
        .unwrap();
    f.seek(SeekFrom::Start(150_000)).unwrap();
    f.write_all(&[0xFF ^ data(533_333, 41)[350_000]]).unwrap();
    drop(f);
    let bad = 350_000 / (16 * 1024);
    // Small reads and a small in-flight bound exercise the flow control.
    let cfg = RecheckConfig {
        read_size: 40_000,
        max_in_flight: 64 * 1024,
    };
    let r = recheck(&st, &h, None, &pool.handle(), &cfg).unwrap();
    for (p, g) in r.good.iter().enumerate() {
        assert_eq!(*g, p != bad, "piece {p}");
    }
    assert_eq!(r.good.len(), n);
    // A subset: only those pieces are reported good.
    let r = recheck(&st, &h, Some(&[bad as u32, 0, 1]), &pool.handle(), &cfg).unwrap();
    assert!(r.good[0] && r.good[1] && !r.good[bad] && !r.good[2]);
}

#[test]
fn short_file_reads_as_bad_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _all, h) = setup(dir.path());
    drop(st);
    // Truncate a; reopen sparse (which restores the size with zeros) and
    // also check a file that is really short at recheck time.
    let a = dir.path().join("t/a");
    std::fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(100_000)
        .unwrap();
    let io = DiskIo::new(DiskIoConfig::default());
    let files = vec![
        FileSpec::new(["t", "a"], 200_000),
        FileSpec::new(["t", "b"], 0),
        FileSpec::new(["t", "c"], 333_333),
    ];
    let st = Storage::open_files(
        &io,
        dir.path(),
        files,
        16 * 1024,
        &StorageConfig {
            preallocation: Preallocation::Sparse,
            ..StorageConfig::default()
        },
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(100_000)
        .unwrap();
    let pool = HashPool::new(HashPoolConfig::default()).unwrap();
    let r = recheck(&st, &h, None, &pool.handle(), &RecheckConfig::default()).unwrap();
    let first_bad = 100_000 / (16 * 1024);
    let last_bad = (200_000 - 1) / (16 * 1024);
    for (p, g) in r.good.iter().enumerate() {
        assert_eq!(*g, !(first_bad..=last_bad).contains(&p), "piece {p}");
    }
    assert!(r.read_errors.is_empty(), "{:?}", r.read_errors);
}

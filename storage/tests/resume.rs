//! Resume data on real files: atomic save, interrupted saves ignored,
//! changed size or mtime forcing a recheck of exactly the affected pieces.

mod common;

use std::fs::File;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::*;
use storage::{
    DiskIo, DiskIoConfig, FileSpec, ResumeError, ResumePolicy, ResumeTracker, Storage,
    StorageConfig, recheck, resume,
};

const HASH: [u8; 20] = [0x42; 20];

struct Fixture {
    dir: tempfile::TempDir,
    st: Storage,
    all: Bytes,
    files: Vec<FileSpec>,
}

/// Three files, pieces of 32 KiB; every piece written and checkpointed.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        FileSpec::new(["t", "a"], 100_000),
        FileSpec::new(["t", "b"], 64 * 1024),
        FileSpec::new(["t", "c"], 90_000),
    ];
    let total: u64 = files.iter().map(|f| f.length).sum();
    let all = Bytes::from(data(total as usize, 31));
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_files(
        &io,
        &dir.path().join("data"),
        files.clone(),
        32 * 1024,
        &StorageConfig::default(),
    )
    .unwrap();
    let layout = st.layout().clone();
    let now = Instant::now();
    let mut t = ResumeTracker::new(
        vec![false; layout.piece_count() as usize],
        ResumePolicy {
            every_pieces: 4,
            every: Duration::from_secs(60),
        },
        now,
    );
    let path = dir.path().join("resume");
    for p in 0..layout.piece_count() {
        st.write_blocking(verified(&layout, &all, p)).unwrap();
        t.written(p);
        if t.due(now) {
            t.checkpoint_blocking(&st, &HASH, &path, now).unwrap();
        }
    }
    t.checkpoint_blocking(&st, &HASH, &path, now).unwrap();
    assert!(t.have().iter().all(|h| *h));
    Fixture {
        dir,
        st,
        all,
        files,
    }
}

#[test]
fn clean_resume_is_trusted() {
    let f = fixture();
    let loaded = resume::load(&f.dir.path().join("resume"));
    let c = resume::validate(&f.st, &HASH, loaded).unwrap();
    assert!(c.recheck.is_empty());
    assert!(c.have.iter().all(|h| *h));
    assert!(c.reason.is_none());
    // Another torrent's resume data is not.
    let loaded = resume::load(&f.dir.path().join("resume"));
    let c = resume::validate(&f.st, &[0; 20], loaded).unwrap();
    assert_eq!(c.recheck.len(), c.have.len());
    assert!(c.reason.unwrap().contains("info hash"));
}

#[test]
fn interrupted_save_leaves_old_file_in_force() {
    let f = fixture();
    let path = f.dir.path().join("resume");
    let good = std::fs::read(&path).unwrap();
    // A crash mid-save leaves a partial temp file; it must be ignored.
    std::fs::write(f.dir.path().join("resume.tmp"), &good[..good.len() / 2]).unwrap();
    let loaded = resume::load(&path).unwrap().unwrap();
    assert_eq!(loaded.encode(), good);
    let c = resume::validate(&f.st, &HASH, Ok(Some(loaded))).unwrap();
    assert!(c.recheck.is_empty());
    // A torn main file (no rename protection) is refused and means a full
    // recheck, with the reason stated.
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let loaded = resume::load(&path);
    assert!(matches!(loaded, Err(ResumeError::Length { .. })));
    let c = resume::validate(&f.st, &HASH, loaded).unwrap();
    assert_eq!(c.recheck.len(), c.have.len());
    assert!(c.have.iter().all(|h| !*h));
    assert!(c.reason.unwrap().contains("length"));
    // No file at all: full recheck.
    let c = resume::validate(&f.st, &HASH, resume::load(&f.dir.path().join("nope"))).unwrap();
    assert_eq!(c.recheck.len(), c.have.len());
}

#[test]
fn changed_size_or_mtime_forces_recheck_of_affected_pieces() {
    let f = fixture();
    let path = f.dir.path().join("resume");
    let layout = f.st.layout().clone();
    let data = f.dir.path().join("data/t");
    // b (torrent bytes [100000, 165536)) gets a new mtime.
    let b = File::options().write(true).open(data.join("b")).unwrap();
    b.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let c = resume::validate(&f.st, &HASH, resume::load(&path)).unwrap();
    let pieces_b: Vec<u32> = layout.pieces_of_file(1).collect();
    assert_eq!(pieces_b, vec![3, 4, 5]);
    assert_eq!(c.recheck, pieces_b);
    for p in 0..layout.piece_count() {
        assert_eq!(c.have[p as usize], !pieces_b.contains(&p), "piece {p}");
    }
    assert!(c.reason.unwrap().contains("1 file"));

    // c grows by a byte: its pieces too.
    let cf = File::options().write(true).open(data.join("c")).unwrap();
    cf.set_len(f.files[2].length + 1).unwrap();
    let c = resume::validate(&f.st, &HASH, resume::load(&path)).unwrap();
    let mut want: Vec<u32> = pieces_b.clone();
    want.extend(layout.pieces_of_file(2));
    want.dedup();
    assert_eq!(c.recheck, want);
    // The recheck of those pieces finds them good (the data did not change).
    let pool = storage::HashPool::new(storage::HashPoolConfig::default()).unwrap();
    let hashes = hashes(&layout, &f.all);
    let r = recheck(
        &f.st,
        &hashes,
        Some(&c.recheck),
        &pool.handle(),
        &storage::RecheckConfig::default(),
    )
    .unwrap();
    for p in &c.recheck {
        assert!(r.good[*p as usize], "piece {p}");
    }
}

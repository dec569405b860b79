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

#[test]
fn write_journal_trusts_saved_pieces_after_an_unclean_stop() {
    let f = fixture();
    let path = f.dir.path().join("resume");
    let n = f.st.layout().piece_count();
    let data = f.dir.path().join("data/t");
    // Our own later writes moved b's mtime (size unchanged); the journal
    // lists the pieces they were.
    let b = File::options().write(true).open(data.join("b")).unwrap();
    b.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let mut j = resume::WriteJournal::new(&path, HASH, n);
    j.note(4).unwrap();
    j.note(4).unwrap();
    j.note(n + 7).unwrap(); // out of range: never recorded
    let listed = resume::load_journal(&path, &HASH, n).unwrap();
    assert_eq!(listed, vec![4], "each piece once");
    let c =
        resume::validate_with_journal(&f.st, &HASH, resume::load(&path), Some(&listed)).unwrap();
    assert!(c.have.iter().all(|h| *h), "saved pieces trusted");
    assert!(c.recheck.is_empty(), "piece 4 is saved already");
    assert!(c.reason.unwrap().contains("unclean stop"));
    // Without the journal the same change means rechecking b's pieces.
    let c = resume::validate(&f.st, &HASH, resume::load(&path)).unwrap();
    assert_eq!(c.recheck, vec![3, 4, 5]);
    // A size change is never explained by the journal.
    std::fs::OpenOptions::new()
        .write(true)
        .open(data.join("c"))
        .unwrap()
        .set_len(1)
        .unwrap();
    let c =
        resume::validate_with_journal(&f.st, &HASH, resume::load(&path), Some(&listed)).unwrap();
    let pieces_c: Vec<u32> = f.st.layout().pieces_of_file(2).collect();
    assert!(pieces_c.iter().all(|&p| !c.have[p as usize]));
    assert!(pieces_c.iter().all(|p| c.recheck.contains(p)));
    j.clear().unwrap();
    assert!(resume::load_journal(&path, &HASH, n).is_none());
}

#[test]
fn a_hostile_write_journal_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resume");
    let journal = dir.path().join("resume.writing");
    let mut ok = HASH.to_vec();
    ok.extend_from_slice(&3u32.to_le_bytes());
    ok.extend_from_slice(&[1, 0]); // a torn last entry
    std::fs::write(&journal, &ok).unwrap();
    assert_eq!(resume::load_journal(&path, &HASH, 8), Some(vec![3]));
    // Another torrent's, a piece out of range, too large for the torrent.
    assert_eq!(resume::load_journal(&path, &[1; 20], 8), None);
    let mut bad = HASH.to_vec();
    bad.extend_from_slice(&9u32.to_le_bytes());
    std::fs::write(&journal, &bad).unwrap();
    assert_eq!(resume::load_journal(&path, &HASH, 8), None);
    let mut big = HASH.to_vec();
    big.resize(20 + 4 * 9, 0);
    std::fs::write(&journal, &big).unwrap();
    assert_eq!(resume::load_journal(&path, &HASH, 8), None);
    std::fs::write(&journal, b"short").unwrap();
    assert_eq!(resume::load_journal(&path, &HASH, 8), None);
}

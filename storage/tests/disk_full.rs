//! Disk full on a real file system that fills up: a 1 MiB tmpfs mounted for
//! the test (needs root). Set ACTORRENT_SKIP_MOUNT_TESTS to skip where
//! mounting is impossible; otherwise a failed mount fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use storage::{
    DiskIo, DiskIoConfig, FileSpec, Preallocation, ResumePolicy, ResumeTracker, Storage,
    StorageConfig, StorageError, resume,
};

/// Unmounts (lazily, so a busy mount cannot wedge the test) on drop, even
/// when the test panics.
struct TmpfsGuard {
    dir: tempfile::TempDir,
}

impl TmpfsGuard {
    fn mount(size: &str) -> Option<TmpfsGuard> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let ok = matches!(&out, Ok(o) if o.status.success());
        if !ok {
            if std::env::var_os("ACTORRENT_SKIP_MOUNT_TESTS").is_some() {
                eprintln!("skipping: cannot mount tmpfs ({out:?})");
                return None;
            }
            panic!(
                "cannot mount a tmpfs for the disk-full test ({out:?}); run as root or set ACTORRENT_SKIP_MOUNT_TESTS"
            );
        }
        Some(TmpfsGuard { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn disk_full_is_reported_earlier_data_intact_and_not_claimed() {
    let Some(fs) = TmpfsGuard::mount("1m") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let resume_path: PathBuf = state.path().join("t.resume");
    let info_hash = [0xAB; 20];

    // 2 MiB torrent on a 1 MiB file system, sparse so that the writes (not
    // the preallocation) hit the wall.
    let piece = 64 * 1024u32;
    let files = vec![
        FileSpec::new(["t", "first"], 700_000),
        FileSpec::new(["t", "second"], 2 * 1024 * 1024 - 700_000),
    ];
    let all = Bytes::from(data(2 * 1024 * 1024, 21));
    let io = DiskIo::new(DiskIoConfig::default());
    let cfg = StorageConfig {
        preallocation: Preallocation::Sparse,
        ..StorageConfig::default()
    };
    let st = Storage::open_files(&io, fs.path(), files, piece, &cfg).unwrap();
    let layout = st.layout().clone();
    let now = Instant::now();
    let mut tracker = ResumeTracker::new(
        vec![false; layout.piece_count() as usize],
        ResumePolicy::default(),
        now,
    );
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for p in 0..layout.piece_count() {
        match st.write_blocking(verified(&layout, &all, p)) {
            Ok(()) => {
                ok.push(p);
                tracker.written(p);
            }
            Err(e) => {
                assert!(e.is_disk_full(), "piece {p}: {e}");
                let StorageError::DiskFull { path, .. } = &e else {
                    unreachable!()
                };
                assert!(path.starts_with(fs.path()), "{path:?}");
                assert!(e.to_string().contains("disk full"), "{e}");
                failed.push(p);
            }
        }
    }
    assert!(ok.len() >= 8, "some pieces fit: {ok:?}");
    assert!(!failed.is_empty(), "the file system must fill up");
    let s = st.writer_stats()[0];
    assert_eq!(s.errors as usize, failed.len());

    // Checkpoint: sync, then save; only written pieces are claimed.
    tracker
        .checkpoint_blocking(&st, &info_hash, &resume_path, now)
        .unwrap();
    let loaded = resume::load(&resume_path).unwrap().unwrap();
    for p in 0..layout.piece_count() {
        assert_eq!(
            loaded.have[p as usize],
            ok.contains(&p),
            "piece {p} claim mismatch"
        );
    }
    for p in &failed {
        assert!(!loaded.have[*p as usize]);
    }
    // The data written before the wall is intact.
    for &p in &ok {
        let len = layout.piece_len(p).unwrap();
        let b = st.read_blocking(p, 0, len).unwrap();
        let o = layout.piece_offset(p) as usize;
        assert_eq!(&b[..], &all[o..o + len as usize], "piece {p}");
    }
    let check = resume::validate(&st, &info_hash, Ok(Some(loaded))).unwrap();
    assert!(check.recheck.is_empty(), "{:?}", check.reason);
    for &p in &failed {
        assert!(!check.have[p as usize]);
    }

    // Full preallocation on the full file system fails at open, by name.
    let r = Storage::open_files(
        &io,
        fs.path(),
        vec![FileSpec::new(["big"], 4 << 20)],
        piece,
        &StorageConfig::default(),
    );
    assert!(
        matches!(r, Err(StorageError::DiskFull { .. })),
        "{:?}",
        r.err()
    );
    drop(st);
}

#[test]
fn read_only_file_system_is_reported_by_name() {
    let Some(fs) = TmpfsGuard::mount("1m") else {
        return;
    };
    let st = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.path())
        .status()
        .unwrap();
    assert!(st.success(), "remount read-only");
    let io = DiskIo::new(DiskIoConfig::default());
    let r = Storage::open_files(
        &io,
        fs.path(),
        vec![FileSpec::new(["x"], 10)],
        16,
        &StorageConfig::default(),
    );
    let e = r.err().unwrap();
    assert!(matches!(e, StorageError::ReadOnly { .. }), "{e}");
    assert!(e.to_string().contains("read-only"), "{e}");
}

/// A subdirectory that is a mount point puts the torrent on two devices:
/// each gets its own writer, and a piece spanning both is split between
/// them and reported once.
#[test]
fn two_devices_two_writers_and_split_pieces() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("t/m")).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(root.path().join("t/m"))
        .output();
    if !matches!(&out, Ok(o) if o.status.success()) {
        if std::env::var_os("ACTORRENT_SKIP_MOUNT_TESTS").is_some() {
            return;
        }
        panic!("cannot mount tmpfs: {out:?}");
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(root.path().join("t/m"));

    let files = vec![
        FileSpec::new(["t", "a"], 100_000),
        FileSpec::new(["t", "m", "b"], 100_000),
    ];
    let all = Bytes::from(data(200_000, 61));
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_files(
        &io,
        root.path(),
        files,
        32 * 1024,
        &StorageConfig::default(),
    )
    .unwrap();
    let layout = st.layout().clone();
    for p in shuffled(layout.piece_count(), 9) {
        st.write_blocking(verified(&layout, &all, p)).unwrap();
    }
    let stats = io.writer_stats();
    assert_eq!(stats.len(), 2, "one writer per device");
    let bytes: u64 = stats.iter().map(|s| s.1.bytes_written).sum();
    assert_eq!(bytes, 200_000);
    assert!(stats.iter().all(|s| s.1.bytes_written == 100_000));
    // Piece 3 spans the two files: a job on each writer.
    let jobs: u64 = stats.iter().map(|s| s.1.jobs_written).sum();
    assert_eq!(jobs, u64::from(layout.piece_count()) + 1);
    st.sync_blocking().unwrap();
    let a = std::fs::read(root.path().join("t/a")).unwrap();
    let b = std::fs::read(root.path().join("t/m/b")).unwrap();
    assert_eq!([a, b].concat(), &all[..]);
    drop(st);
}

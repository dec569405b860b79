//! The process-wide cap on open torrent files (`max_open_files`): many
//! torrents of many files through one `DiskIo` keep at most the cap open,
//! closed files reopen on use with their data intact, and a file deleted
//! while closed is an error naming it, never a new empty file.

mod common;

use std::path::Path;
use std::sync::mpsc::sync_channel;

use bytes::Bytes;
use common::*;
use storage::{DiskIo, DiskIoConfig, FileSpec, Storage, StorageConfig, WriteJob};

/// Descriptors of this process open on files below `dir`.
fn fds_below(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[test]
fn many_files_stay_under_the_cap_and_reopen_intact() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let cap = 3;
    let io = DiskIo::new(DiskIoConfig {
        max_open_files: cap,
        ..DiskIoConfig::default()
    });
    // Four torrents of five files each: 20 files through one cache.
    let mut torrents = Vec::new();
    for t in 0..4u64 {
        let files: Vec<FileSpec> = (0..5)
            .map(|f| FileSpec::new([format!("t{t}"), format!("f{f}.bin")], 40_000 + 777 * f))
            .collect();
        let total: u64 = files.iter().map(|f| f.length).sum();
        let all = Bytes::from(data(total as usize, 10 + t));
        let st = Storage::open_files(
            &io,
            &root,
            files.clone(),
            16 * 1024,
            &StorageConfig::default(),
        )
        .unwrap();
        assert!(
            fds_below(&root) <= cap,
            "{} files open after opening torrent {t}",
            fds_below(&root)
        );
        torrents.push((st, files, all));
    }
    for (i, (st, _, all)) in torrents.iter().enumerate() {
        write_shuffled(st, all, i as u64);
        assert!(fds_below(&root) <= cap, "{} open", fds_below(&root));
    }
    // Every byte is where it belongs, on disk and read back through the
    // storage (which reopens closed files).
    for (st, files, all) in &torrents {
        let mut on_disk = Vec::new();
        for f in files {
            let p = f.path.iter().fold(root.clone(), |p, c| p.join(c));
            on_disk.extend(std::fs::read(p).unwrap());
        }
        assert_eq!(&on_disk[..], &all[..]);
        let layout = st.layout();
        for piece in 0..layout.piece_count() {
            let len = layout.piece_len(piece).unwrap();
            let got = st.read_blocking(piece, 0, len).unwrap();
            let at = layout.piece_offset(piece) as usize;
            assert_eq!(&got[..], &all[at..at + len as usize], "piece {piece}");
        }
    }
    let s = io.open_files();
    assert!(s.open <= cap, "{s:?}");
    assert_eq!(s.capacity, cap);
    assert!(s.reopened > 0 && s.evicted > 0, "{s:?}");
    assert!(fds_below(&root) <= cap);
    drop(torrents);
    assert_eq!(io.open_files().open, 0, "dropped storages leave no entry");
    assert_eq!(fds_below(&root), 0);
}

#[test]
fn a_file_deleted_while_closed_is_an_error_not_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let io = DiskIo::new(DiskIoConfig {
        max_open_files: 1,
        ..DiskIoConfig::default()
    });
    let files = vec![
        FileSpec::new(["t", "a.bin"], 16 * 1024),
        FileSpec::new(["t", "b.bin"], 16 * 1024),
    ];
    let all = Bytes::from(data(32 * 1024, 3));
    let st = Storage::open_files(&io, &root, files, 16 * 1024, &StorageConfig::default()).unwrap();
    // Opening b closed a; delete a behind the storage's back.
    let a = root.join("t/a.bin");
    std::fs::remove_file(&a).unwrap();
    let layout = st.layout().clone();
    let (tx, rx) = sync_channel(1);
    st.write(WriteJob {
        piece: verified(&layout, &all, 0),
        reply: Box::new(move |d| tx.send(d).unwrap()),
    })
    .unwrap();
    let err = rx.recv().unwrap().result.unwrap_err().to_string();
    assert!(
        err.contains("a.bin"),
        "the error does not name the file: {err}"
    );
    assert!(!a.exists(), "the deleted file was created again");
}

//! `torrent-set-location` with `move: true`: moves exactly the torrent's
//! own files from one download directory to another. Each file is renamed
//! when both are on one filesystem, else copied (its modification time
//! kept, so the resume data still matches and nothing is rechecked),
//! synced and only then removed. Nothing is overwritten: a file already at
//! the destination stops the move before anything changes. The paths come
//! from the metainfo (each component a plain name); symlinks are not
//! followed. Blocking: run it on a blocking thread.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use protocol::metainfo::Info;

/// The torrent's files relative to its download directory.
fn relative_paths(info: &Info) -> Vec<PathBuf> {
    info.files
        .iter()
        .filter(|f| !f.padding)
        .map(|f| {
            let mut rel = PathBuf::new();
            if info.multi_file {
                rel.push(&info.name);
            }
            for c in &f.path {
                rel.push(c);
            }
            rel
        })
        .collect()
}

/// Whether `rel` under `base` is a regular file reached through real
/// directories only (no symlink on the way or in its place).
fn plain_file(base: &Path, rel: &Path) -> bool {
    let mut cur = base.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    std::fs::symlink_metadata(base.join(rel)).is_ok_and(|m| m.is_file())
}

/// Moves the payload of `info` from `from` to `to`; returns how many files
/// moved. On failure, files already moved are moved back where possible.
pub fn move_payload(info: &Info, from: &Path, to: &Path) -> Result<usize, String> {
    let files: Vec<PathBuf> = relative_paths(info)
        .into_iter()
        .filter(|rel| plain_file(from, rel))
        .collect();
    for rel in &files {
        let dest = to.join(rel);
        if std::fs::symlink_metadata(&dest).is_ok() {
            return Err(format!(
                "{} exists already; nothing was moved",
                dest.display()
            ));
        }
    }
    let mut done: Vec<&PathBuf> = Vec::new();
    for rel in &files {
        if let Err(e) = move_file(&from.join(rel), &to.join(rel)) {
            let why = format!(
                "moving {} to {}: {e}",
                from.join(rel).display(),
                to.join(rel).display()
            );
            for back in done.into_iter().rev() {
                let _ = move_file(&to.join(back), &from.join(back));
            }
            return Err(why);
        }
        done.push(rel);
    }
    // The source directories of the torrent's tree left empty, deepest
    // first (one that still holds something is kept).
    let mut dirs = BTreeSet::new();
    for rel in &files {
        let mut p = rel.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(from.join(d));
            p = d.parent();
        }
    }
    let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(&d);
    }
    Ok(files.len())
}

/// Renames `src` to `dst`, or across filesystems copies it (keeping its
/// modification time), syncs the copy and its directory, then removes
/// `src`.
fn move_file(src: &Path, dst: &Path) -> io::Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::rename(src, dst) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => return Err(e),
    }
    let copied = (|| {
        let mut input = std::fs::File::open(src)?;
        let mtime = input.metadata()?.modified()?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)?;
        io::copy(&mut input, &mut out)?;
        out.set_modified(mtime)?;
        out.sync_all()?;
        if let Some(parent) = dst.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(dst);
        return Err(e);
    }
    std::fs::remove_file(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(files: &[(&[&str], u64)]) -> Info {
        let mut offset = 0;
        Info {
            name: "t".into(),
            piece_length: 16384,
            pieces: vec![[0; 20]],
            files: files
                .iter()
                .map(|(p, len)| {
                    let e = protocol::metainfo::FileEntry {
                        path: p.iter().map(|s| s.to_string()).collect(),
                        length: *len,
                        offset,
                        padding: false,
                    };
                    offset += len;
                    e
                })
                .collect(),
            total_length: offset,
            private: false,
            multi_file: true,
        }
    }

    #[test]
    fn moves_only_the_torrents_files_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(a.join("t/sub")).unwrap();
        std::fs::write(a.join("t/x"), b"xx").unwrap();
        std::fs::write(a.join("t/sub/y"), b"y").unwrap();
        std::fs::write(a.join("t/mine"), b"keep").unwrap();
        let i = info(&[(&["x"], 2), (&["sub", "y"], 1)]);
        assert_eq!(move_payload(&i, &a, &b).unwrap(), 2);
        assert_eq!(std::fs::read(b.join("t/x")).unwrap(), b"xx");
        assert_eq!(std::fs::read(b.join("t/sub/y")).unwrap(), b"y");
        assert!(a.join("t/mine").exists(), "not the torrent's: stays");
        assert!(!a.join("t/sub").exists(), "emptied directory removed");
        // Back to a place where one of its files exists: refused, nothing
        // moved.
        std::fs::write(a.join("t/x"), b"other").unwrap();
        let err = move_payload(&i, &b, &a).unwrap_err();
        assert!(err.contains("exists already"), "{err}");
        assert_eq!(std::fs::read(a.join("t/x")).unwrap(), b"other");
        assert!(b.join("t/sub/y").exists());
    }

    #[test]
    fn a_copy_keeps_the_modification_time() {
        // /dev/shm is another filesystem than the temp dir on most
        // machines; where it is not, the rename path runs instead.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let src_dir = tempfile::tempdir().unwrap();
        let dst_dir = tempfile::tempdir_in(shm).unwrap();
        let src = src_dir.path().join("f");
        std::fs::write(&src, vec![7u8; 100_000]).unwrap();
        let old =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(1_000_000, 123_456_789);
        std::fs::File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let dst = dst_dir.path().join("sub/f");
        move_file(&src, &dst).unwrap();
        assert!(!src.exists());
        assert_eq!(std::fs::read(&dst).unwrap(), vec![7u8; 100_000]);
        assert_eq!(std::fs::metadata(&dst).unwrap().modified().unwrap(), old);
    }
}

//! `torrent-remove` with `delete-local-data`: removes exactly the
//! torrent's own files under its download directory, and then the
//! directories of the torrent's tree that are left empty. Never anything
//! else: the paths come from the metainfo (each component already checked
//! to be a plain name), a symlinked directory on the way is not entered,
//! a symlink in a file's place is removed as a link (its target is left
//! alone), and a directory that still holds something is kept.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use protocol::metainfo::Info;
use tracing::{info, warn};

/// Deletes the payload of `info` under `dir`; returns how many files went.
pub fn delete_payload(info: &Info, dir: &Path) -> usize {
    let mut removed = 0;
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for f in &info.files {
        let mut rel = PathBuf::new();
        if info.multi_file {
            rel.push(&info.name);
        }
        for c in &f.path {
            rel.push(c);
        }
        // Every directory between `dir` and the file must be a real one.
        let mut ok = true;
        let mut cur = dir.to_path_buf();
        let comps: Vec<_> = rel.components().collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            cur.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {
                    dirs.insert(cur.clone());
                }
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let path = dir.join(&rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() || m.file_type().is_symlink() => match std::fs::remove_file(&path)
            {
                Ok(()) => removed += 1,
                Err(e) => warn!(path = %path.display(), error = %e, "deleting a torrent file"),
            },
            _ => {}
        }
    }
    // Deepest first, so a parent is tried after its children.
    let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        // Fails (and keeps it) unless empty.
        let _ = std::fs::remove_dir(&d);
    }
    info!(dir = %dir.display(), files = removed, "local data deleted");
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(multi: bool, files: &[&[&str]]) -> Info {
        let mut offset = 0;
        Info {
            name: "t".into(),
            piece_length: 16384,
            pieces: vec![[0; 20]],
            files: files
                .iter()
                .map(|p| {
                    let e = protocol::metainfo::FileEntry {
                        path: p.iter().map(|s| s.to_string()).collect(),
                        length: 1,
                        offset,
                        padding: false,
                    };
                    offset += 1;
                    e
                })
                .collect(),
            total_length: files.len() as u64,
            private: false,
            multi_file: multi,
        }
    }

    #[test]
    fn removes_only_the_torrents_files_and_its_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("t/sub")).unwrap();
        std::fs::write(d.join("t/a"), b"x").unwrap();
        std::fs::write(d.join("t/sub/b"), b"x").unwrap();
        std::fs::write(d.join("t/mine"), b"keep").unwrap();
        std::fs::write(d.join("other"), b"keep").unwrap();
        let n = delete_payload(&info(true, &[&["a"], &["sub", "b"]]), d);
        assert_eq!(n, 2);
        assert!(!d.join("t/sub").exists());
        assert!(d.join("t/mine").exists(), "a file not in the torrent stays");
        assert!(d.join("other").exists());
    }

    #[test]
    fn a_symlinked_directory_is_not_entered() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("a"), b"keep").unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("t")).unwrap();
        assert_eq!(delete_payload(&info(true, &[&["a"]]), tmp.path()), 0);
        assert!(outside.path().join("a").exists());
    }
}

//! `disk.preallocation`: `Full` (the default) reserves a new file's
//! blocks, `Sparse` only sizes it, on the disk and on tmpfs; either way the
//! pieces written land intact.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use common::*;
use storage::{DiskIo, DiskIoConfig, FileSpec, Preallocation, Storage, StorageConfig};

const LEN: u64 = 4 << 20;
const PIECE: u32 = 256 * 1024;

/// Whether `dir` is on tmpfs, and whether on tmpfs or ramfs (`statfs`).
fn memory_fs(dir: &Path) -> (bool, bool) {
    let d = std::fs::File::open(dir).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills `st` on success, checked before reading it.
    let r = unsafe { libc::fstatfs(d.as_raw_fd(), st.as_mut_ptr()) };
    assert_eq!(r, 0, "fstatfs {}", dir.display());
    // SAFETY: initialised by the successful call.
    let kind = unsafe { st.assume_init() }.f_type;
    let tmpfs = kind == libc::TMPFS_MAGIC;
    // RAMFS_MAGIC of linux/magic.h (not in libc).
    (tmpfs, tmpfs || kind == 0x8584_58f6)
}

/// Opens a one-file torrent below `root` with `mode`; returns the storage
/// and the bytes its file has allocated (st_blocks x 512).
fn open(io: &DiskIo, root: &Path, mode: Preallocation) -> (Storage, u64) {
    let st = Storage::open_files(
        io,
        root,
        vec![FileSpec::new(["t", "f.bin"], LEN)],
        PIECE,
        &StorageConfig {
            preallocation: mode,
            ..StorageConfig::default()
        },
    )
    .unwrap();
    let meta = std::fs::metadata(root.join("t").join("f.bin")).unwrap();
    assert_eq!(meta.len(), LEN, "sized either way");
    (st, meta.blocks() * 512)
}

fn write_all_and_check(st: &Storage, root: &Path) {
    let all = Bytes::from(data(LEN as usize, 3));
    write_shuffled(st, &all, 5);
    let on_disk = std::fs::read(root.join("t").join("f.bin")).unwrap();
    assert!(on_disk == all[..], "the file holds the pieces written");
}

/// Both modes below `base`: what each reserves, and that the writes land.
fn full_reserves_sparse_does_not(base: &Path) {
    assert_eq!(StorageConfig::default().preallocation, Preallocation::Full);
    let io = DiskIo::new(DiskIoConfig::default());
    let full = tempfile::tempdir_in(base).unwrap();
    let (st, reserved) = open(&io, full.path(), Preallocation::Full);
    assert!(reserved >= LEN, "full reserves: {reserved}");
    write_all_and_check(&st, full.path());
    let sparse = tempfile::tempdir_in(base).unwrap();
    let (st, reserved) = open(&io, sparse.path(), Preallocation::Sparse);
    assert_eq!(reserved, 0, "sparse reserves nothing");
    write_all_and_check(&st, sparse.path());
}

#[test]
fn on_tmpfs() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() || !memory_fs(shm).0 {
        eprintln!("SKIP preallocation on_tmpfs: /dev/shm is not a tmpfs here");
        return;
    }
    full_reserves_sparse_does_not(shm);
}

#[test]
fn on_a_disk_file_system() {
    // The build's own scratch space: on the machine's disk, normally.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if memory_fs(base).1 {
        eprintln!("SKIP preallocation on_a_disk_file_system: the target dir is in memory");
        return;
    }
    full_reserves_sparse_does_not(base);
}

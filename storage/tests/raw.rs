//! Raw-disk mode (EZIO): a torrent of hex-offset "files" written into one
//! image file at those offsets; the gaps between extents are left untouched.

mod common;

use bytes::Bytes;
use common::*;
use storage::{DiskIo, DiskIoConfig, FileSpec, Storage, StorageConfig, StorageError};

#[test]
fn extents_land_at_their_offsets_and_gaps_stay_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    // Pre-fill the image with a pattern that must survive in the gaps.
    let size = 4 << 20;
    std::fs::write(&image, vec![0xEEu8; size]).unwrap();
    // Extents listed out of disk order, with gaps, one past the old end
    // (the image grows), and a piece boundary falling inside extents.
    let extents: [(u64, u64); 4] = [
        (0x0000000000100000, 300_000),
        (0x0000000000000000, 70_000),
        (0x0000000000300000, 123_457),
        (0x0000000000500000, 65_536),
    ];
    let files: Vec<FileSpec> = extents
        .iter()
        .map(|&(o, l)| FileSpec::new(["disk", &format!("0x{o:016x}")], l))
        .collect();
    let total: u64 = extents.iter().map(|e| e.1).sum();
    let all = Bytes::from(data(total as usize, 11));
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_raw(&io, &image, files, 32 * 1024, &StorageConfig::default()).unwrap();
    let layout = st.layout().clone();
    assert!(layout.is_raw());
    for p in shuffled(layout.piece_count(), 5) {
        st.write_blocking(verified(&layout, &all, p)).unwrap();
    }
    let img = std::fs::read(&image).unwrap();
    assert_eq!(img.len() as u64, 0x500000 + 65_536);
    let mut torrent_pos = 0usize;
    let mut covered = vec![false; img.len()];
    for &(o, l) in &extents {
        let (o, l) = (o as usize, l as usize);
        assert_eq!(
            &img[o..o + l],
            &all[torrent_pos..torrent_pos + l],
            "extent {o:#x}"
        );
        covered[o..o + l].iter_mut().for_each(|c| *c = true);
        torrent_pos += l;
    }
    for (i, b) in img.iter().enumerate() {
        if !covered[i] {
            let want = if i < size { 0xEE } else { 0 };
            assert_eq!(*b, want, "gap byte {i:#x} changed");
        }
    }
    // Reads for seeding come from the same offsets.
    let b = st.read_blocking(2, 0, 16_384).unwrap();
    assert_eq!(&b[..], &all[65_536..65_536 + 16_384]);
}

#[test]
fn overlapping_and_bad_names_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0xEEu8; 8192]).unwrap();
    let io = DiskIo::new(DiskIoConfig::default());
    let files = vec![
        FileSpec::new(["0x0000000000000000"], 4096),
        FileSpec::new(["0x0000000000000800"], 4096),
    ];
    let r = Storage::open_raw(&io, &image, files, 4096, &StorageConfig::default());
    let e = r.err().unwrap();
    assert!(matches!(e, StorageError::RawOverlap { .. }), "{e}");
    assert!(e.to_string().contains("overlap"));
    let r = Storage::open_raw(
        &io,
        &image,
        vec![FileSpec::new(["sector-1"], 10)],
        4096,
        &StorageConfig::default(),
    );
    assert!(matches!(r, Err(StorageError::BadRawOffset { .. })));
    // Nothing was written.
    assert_eq!(std::fs::read(&image).unwrap(), vec![0xEEu8; 8192]);
}

/// A real block device (a loop device over a 1 MiB file; needs root, skipped
/// only with ACTORRENT_SKIP_MOUNT_TESTS): its size bounds the extents, and
/// data lands at the offsets.
#[test]
fn block_device_target_bounds_extents() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    std::fs::write(&backing, vec![0x55u8; 1 << 20]).unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output();
    let dev = match &out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            if std::env::var_os("ACTORRENT_SKIP_MOUNT_TESTS").is_some() {
                return;
            }
            panic!("cannot set up a loop device: {out:?}");
        }
    };
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _guard = Detach(dev.clone());
    let dev = std::path::PathBuf::from(dev);
    let io = DiskIo::new(DiskIoConfig::default());
    let r = Storage::open_raw(
        &io,
        &dev,
        vec![FileSpec::new(["0x00000000000ff000"], 0x2000)],
        4096,
        &StorageConfig::default(),
    );
    let e = r.err().unwrap();
    assert!(
        matches!(
            e,
            StorageError::RawOutOfRange {
                capacity: 0x100000,
                ..
            }
        ),
        "{e}"
    );
    let all = Bytes::from(data(0x3000, 71));
    let st = Storage::open_raw(
        &io,
        &dev,
        vec![
            FileSpec::new(["0x00000000000fe000"], 0x2000),
            FileSpec::new(["0x0000000000001000"], 0x1000),
        ],
        4096,
        &StorageConfig::default(),
    )
    .unwrap();
    write_in_order(&st, &all);
    st.sync_blocking().unwrap();
    drop(st);
    drop(_guard);
    let img = std::fs::read(&backing).unwrap();
    assert_eq!(&img[0xfe000..0x100000], &all[..0x2000]);
    assert_eq!(&img[0x1000..0x2000], &all[0x2000..]);
    assert!(img[..0x1000].iter().all(|&b| b == 0x55));
    assert!(img[0x2000..0xfe000].iter().all(|&b| b == 0x55));
}

/// Whether this process has `path` open with O_DIRECT (/proc/self/fdinfo).
fn open_with_o_direct(path: &std::path::Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|fd| {
            std::fs::read_link(fd.path()).ok().as_deref() == Some(path)
                && std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .ok()
                .and_then(|i| {
                    i.lines()
                        .find_map(|l| l.strip_prefix("flags:"))
                        .and_then(|v| u64::from_str_radix(v.trim(), 8).ok())
                })
                .is_some_and(|f| f & libc::O_DIRECT as u64 != 0)
        })
}

/// `direct_io` on an image file (ext4 under the temp dir): extents that
/// start and end off the 4 KiB grid, so every run has an unaligned head
/// and tail written buffered around an O_DIRECT middle. The bytes land,
/// nothing around them changes, and reads (seeding, recheck) of any range
/// give them back.
#[test]
fn direct_io_writes_and_reads_around_unaligned_edges() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let size = 3 << 20;
    std::fs::write(&image, vec![0xEEu8; size]).unwrap();
    let extents: [(u64, u64); 3] = [(100, 70_000), (0x100000, 300_001), (0x200000 + 4095, 9)];
    let files: Vec<FileSpec> = extents
        .iter()
        .map(|&(o, l)| FileSpec::new([format!("0x{o:016x}")], l))
        .collect();
    let total: u64 = extents.iter().map(|e| e.1).sum();
    let all = Bytes::from(data(total as usize, 3));
    let io = DiskIo::new(DiskIoConfig {
        direct_io: true,
        ..DiskIoConfig::default()
    });
    let st = Storage::open_raw(&io, &image, files, 16 * 1024, &StorageConfig::default()).unwrap();
    assert!(open_with_o_direct(&image), "no O_DIRECT descriptor");
    let layout = st.layout().clone();
    for p in shuffled(layout.piece_count(), 9) {
        st.write_blocking(verified(&layout, &all, p)).unwrap();
    }
    st.sync_blocking().unwrap();
    let img = std::fs::read(&image).unwrap();
    assert_eq!(img.len(), size);
    let mut expect = vec![0xEEu8; size];
    let mut at = 0usize;
    for &(o, l) in &extents {
        expect[o as usize..(o + l) as usize].copy_from_slice(&all[at..at + l as usize]);
        at += l as usize;
    }
    assert!(img == expect, "image differs");
    // Reads through O_DIRECT: whole pieces, odd blocks, the whole torrent.
    let pl = layout.piece_length() as u64;
    for p in 0..layout.piece_count() {
        let len = layout.piece_len(p).unwrap();
        let got = st.read_blocking(p, 0, len).unwrap();
        let start = (p as u64 * pl) as usize;
        assert_eq!(&got[..], &all[start..start + len as usize], "piece {p}");
        if len > 7 {
            let got = st.read_blocking(p, 3, len - 7).unwrap();
            assert_eq!(&got[..], &all[start + 3..start + len as usize - 4]);
        }
    }
    let mut back = vec![0u8; total as usize];
    st.read_range_into(0, &mut back).unwrap();
    assert!(back[..] == all[..]);
}

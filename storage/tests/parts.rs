//! The part file on real files: unselected files are never created, the
//! bytes of boundary pieces that belong to them land in the part file, the
//! resume data records it, and selecting a file later moves its bytes into
//! place without fetching anything.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use storage::{
    DiskIo, DiskIoConfig, FileSpec, Layout, ResumeData, ResumePolicy, ResumeTracker, Selection,
    Storage, StorageConfig, StorageError, relocate_blocking, resume,
};

const HASH: [u8; 20] = [0x17; 20];
const PIECE: u32 = 32 * 1024;

fn files() -> Vec<FileSpec> {
    // Piece boundaries at 32 KiB multiples; every file boundary but the
    // last falls inside a piece.
    vec![
        FileSpec::new(["t", "a"], 40_000),
        FileSpec::new(["t", "b"], 50_000),
        FileSpec::new(["t", "c"], 30_000),
        FileSpec::new(["t", "d"], 70_000),
        FileSpec::new(["t", "e"], 10_000),
    ]
}

fn open(dir: &std::path::Path, wanted: &[bool], slots: Vec<storage::SlotRecord>) -> Storage {
    let io = DiskIo::new(DiskIoConfig::default());
    Storage::open_files(
        &io,
        &dir.join("data"),
        files(),
        PIECE,
        &StorageConfig {
            selection: Some(Selection {
                wanted: wanted.to_vec(),
                part_path: dir.join("state/x.parts"),
                slots,
            }),
            ..StorageConfig::default()
        },
    )
    .unwrap()
}

/// Pieces holding a byte of a wanted file.
fn wanted_pieces(layout: &Layout, wanted: &[bool]) -> Vec<u32> {
    let mut v: Vec<u32> = (0..layout.files().len())
        .filter(|&f| wanted[f])
        .flat_map(|f| layout.pieces_of_file(f))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn file_bytes<'a>(layout: &Layout, all: &'a Bytes, f: usize) -> &'a [u8] {
    let e = &layout.files()[f];
    &all[e.torrent_offset as usize..(e.torrent_offset + e.length) as usize]
}

#[test]
fn unwanted_bytes_go_to_the_part_file_and_move_into_place_later() {
    let dir = tempfile::tempdir().unwrap();
    let wanted = [false, true, false, true, false];
    let st = open(dir.path(), &wanted, Vec::new());
    let layout = st.layout().clone();
    let total: u64 = files().iter().map(|f| f.length).sum();
    let all = Bytes::from(data(total as usize, 5));
    let hashes = hashes(&layout, &all);
    let pieces = wanted_pieces(&layout, &wanted);
    let now = Instant::now();
    let mut t = ResumeTracker::new(
        vec![false; layout.piece_count() as usize],
        ResumePolicy {
            every_pieces: 100,
            every: Duration::from_secs(60),
        },
        now,
    );
    for &p in &pieces {
        st.write_blocking(verified(&layout, &all, p)).unwrap();
        t.written(p);
    }
    let resume_path = dir.path().join("state/x.resume");
    t.checkpoint_blocking(&st, &HASH, &resume_path, now)
        .unwrap();

    // Exactly the wanted files exist, byte-identical.
    let root = dir.path().join("data/t");
    for (f, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let path = root.join(name);
        if wanted[f] {
            assert_eq!(std::fs::read(&path).unwrap(), file_bytes(&layout, &all, f));
        } else {
            assert!(!path.exists(), "{name} was created");
        }
    }
    // The boundary pieces' other bytes are in their slots.
    let part = std::fs::read(dir.path().join("state/x.parts")).unwrap();
    let records = st.slot_records();
    let boundary: Vec<u32> = pieces
        .iter()
        .copied()
        .filter(|&p| {
            layout
                .piece_slices(p)
                .unwrap()
                .iter()
                .any(|s| !wanted[s.file])
        })
        .collect();
    assert_eq!(
        records.iter().map(|r| r.piece).collect::<Vec<_>>(),
        boundary
    );
    for r in &records {
        for s in layout.piece_slices(r.piece).unwrap() {
            if wanted[s.file] {
                continue;
            }
            assert!(r.files.contains(&(s.file as u32)));
            let at = (r.slot as u64 * u64::from(PIECE) + s.range_offset) as usize;
            let src = (layout.piece_offset(r.piece) + s.range_offset) as usize;
            assert_eq!(
                &part[at..at + s.length as usize],
                &all[src..src + s.length as usize]
            );
        }
        // Served whole, parked bytes from the part file.
        let len = layout.piece_len(r.piece).unwrap();
        let back = st.read_blocking(r.piece, 0, len).unwrap();
        assert_eq!(storage::sha1_of(&[back]), hashes[r.piece as usize]);
    }
    // A piece of unwanted files only has nowhere to be read from.
    let unwanted_only = (0..layout.piece_count())
        .find(|p| !pieces.contains(p))
        .unwrap();
    assert!(matches!(
        st.read_blocking(unwanted_only, 0, 10),
        Err(StorageError::NotStored { .. })
    ));
    drop(st);

    // The resume data is trusted as saved.
    let loaded = resume::load(&resume_path).unwrap().unwrap();
    assert_eq!(loaded.slots, records);
    let st = open(dir.path(), &wanted, loaded.slots.clone());
    let c = resume::validate(&st, &HASH, Ok(Some(loaded.clone()))).unwrap();
    assert!(c.recheck.is_empty(), "{:?}", c.reason);
    for p in 0..layout.piece_count() {
        assert_eq!(c.have[p as usize], pieces.contains(&p), "piece {p}");
    }
    drop(st);

    // Select c as well: its boundary bytes move into place from the part
    // file, verified, with nothing fetched.
    let wider = [false, true, true, true, false];
    let st = open(dir.path(), &wider, loaded.slots.clone());
    assert!(root.join("c").exists());
    let pending = st.relocation_pending();
    let c_pieces: Vec<u32> = layout.pieces_of_file(2).collect();
    assert!(!pending.is_empty());
    assert!(pending.iter().all(|p| c_pieces.contains(p)));
    assert!(
        relocate_blocking(&st, &hashes, &pending)
            .unwrap()
            .is_empty()
    );
    assert!(st.relocation_pending().is_empty());
    // Write c's own pieces (the ones not shared with b or d).
    for p in c_pieces {
        if !pieces.contains(&p) {
            st.write_blocking(verified(&layout, &all, p)).unwrap();
        }
    }
    st.sync_blocking().unwrap();
    assert_eq!(
        std::fs::read(root.join("c")).unwrap(),
        file_bytes(&layout, &all, 2)
    );
    // Slots still hold what a and e need; c's bytes left them.
    for r in st.slot_records() {
        assert!(!r.files.contains(&2), "{r:?}");
    }
    assert!(!root.join("a").exists() && !root.join("e").exists());
}

#[test]
fn a_damaged_part_file_is_rechecked_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let wanted = [true, false, false, false, false];
    let st = open(dir.path(), &wanted, Vec::new());
    let layout = st.layout().clone();
    let total: u64 = files().iter().map(|f| f.length).sum();
    let all = Bytes::from(data(total as usize, 9));
    let pieces = wanted_pieces(&layout, &wanted);
    for &p in &pieces {
        st.write_blocking(verified(&layout, &all, p)).unwrap();
    }
    st.sync_blocking().unwrap();
    let mut have = vec![false; layout.piece_count() as usize];
    for &p in &pieces {
        have[p as usize] = true;
    }
    let data = ResumeData::of(&st, HASH, have, vec![2, 0, 0, 0, 0]).unwrap();
    let slots = data.slots.clone();
    assert_eq!(slots.len(), 1, "one boundary piece");
    drop(st);
    // Something else writes to the part file.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dir.path().join("state/x.parts"), b"garbage").unwrap();
    let st = open(dir.path(), &wanted, slots.clone());
    let c = resume::validate(&st, &HASH, Ok(Some(data))).unwrap();
    assert_eq!(c.recheck, vec![slots[0].piece]);
    assert!(!c.have[slots[0].piece as usize]);
    // The pieces wholly in file a are still trusted.
    for &p in &pieces {
        if p != slots[0].piece {
            assert!(c.have[p as usize]);
        }
    }
}

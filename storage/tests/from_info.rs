//! Opening storage from a parsed torrent (`protocol::metainfo::Info`): the
//! normal layout under `<out>/<name>`, and raw-disk mode from hex names.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use protocol::bencode::Bencode;
use protocol::metainfo::Info;
use storage::{DiskIo, DiskIoConfig, Storage, StorageConfig};

fn bytes(s: &str) -> Bencode {
    Bencode::Bytes(s.as_bytes().to_vec())
}

fn info_dict(name: &str, piece_length: u32, files: &[(&[&str], u64)], all: &[u8]) -> Info {
    let pieces: Vec<u8> = all
        .chunks(piece_length as usize)
        .flat_map(|c| storage::sha1_of(&[Bytes::copy_from_slice(c)]))
        .collect();
    let mut d = BTreeMap::new();
    d.insert(b"name".to_vec(), bytes(name));
    d.insert(
        b"piece length".to_vec(),
        Bencode::Int(i64::from(piece_length)),
    );
    d.insert(b"pieces".to_vec(), Bencode::Bytes(pieces));
    let list = files
        .iter()
        .map(|(path, len)| {
            let mut f = BTreeMap::new();
            f.insert(b"length".to_vec(), Bencode::Int(*len as i64));
            f.insert(
                b"path".to_vec(),
                Bencode::List(path.iter().map(|c| bytes(c)).collect()),
            );
            Bencode::Dict(f)
        })
        .collect();
    d.insert(b"files".to_vec(), Bencode::List(list));
    Info::from_bytes(&Bencode::Dict(d).encode()).expect("valid info dict")
}

#[test]
fn multi_file_info_goes_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let all = data(70_000, 51);
    let info = info_dict(
        "movie",
        16_384,
        &[(&["a.bin"], 30_000), (&["sub", "b.bin"], 40_000)],
        &all,
    );
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_info(&io, &info, dir.path(), &StorageConfig::default()).unwrap();
    let layout = st.layout().clone();
    let all = Bytes::from(all);
    for p in 0..layout.piece_count() {
        let blocks = blocks_of(&layout, &all, p);
        let v = storage::VerifiedPiece::verify(p, blocks, info.piece_hash(p).unwrap()).unwrap();
        st.write_blocking(v).unwrap();
    }
    let a = std::fs::read(dir.path().join("movie/a.bin")).unwrap();
    let b = std::fs::read(dir.path().join("movie/sub/b.bin")).unwrap();
    assert_eq!([a, b].concat(), &all[..]);
}

#[test]
fn raw_info_writes_at_hex_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let all = data(40_000, 52);
    let info = info_dict(
        "disk",
        16_384,
        &[
            (&["sda", "0x0000000000010000"], 20_000),
            (&["sda", "0x0000000000000000"], 20_000),
        ],
        &all,
    );
    let image = dir.path().join("img");
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_info_raw(&io, &info, &image, &StorageConfig::default()).unwrap();
    let all = Bytes::from(all);
    write_in_order(&st, &all);
    let img = std::fs::read(&image).unwrap();
    assert_eq!(&img[0x10000..0x10000 + 20_000], &all[..20_000]);
    assert_eq!(&img[..20_000], &all[20_000..]);
    assert!(img[20_000..0x10000].iter().all(|&b| b == 0));
}

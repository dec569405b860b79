//! Metainfo parsing cost for a large torrent: 100 000 pieces (2 MB of piece
//! hashes) across several files, the size of a ~25 GiB torrent with 256 KiB
//! pieces. Reports the whole `Metainfo::from_bytes` (bencode decode,
//! validation, SHA-1 of the info dictionary) and the bencode decode alone,
//! so the split between parsing and hashing is visible.

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use protocol::bencode::{self, Bencode};
use protocol::metainfo::Metainfo;

fn main() {
    divan::main();
}

const PIECES: u64 = 100_000;
const PIECE_LENGTH: u64 = 256 * 1024;

/// A multi-file torrent with `PIECES` pieces, the last one short, and files
/// whose boundaries fall mid-piece.
fn synthetic_torrent() -> Vec<u8> {
    let total = PIECES * PIECE_LENGTH - 1000;
    let sizes = [total / 3, 12_345, total / 4, 0, total / 5, 999_999];
    let used: u64 = sizes.iter().sum();
    let files: Vec<Bencode> = sizes
        .iter()
        .copied()
        .chain([total - used])
        .enumerate()
        .map(|(i, len)| {
            let path = vec![
                Bencode::from(format!("dir{}", i % 3)),
                Bencode::from(format!("file{i}.bin")),
            ];
            dict([
                ("length", Bencode::Int(len as i64)),
                ("path", Bencode::List(path)),
            ])
        })
        .collect();
    // Deterministic, non-repeating "hashes" (xorshift) so nothing compresses
    // or short-circuits.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let pieces: Vec<u8> = (0..PIECES * 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let info = dict([
        ("files", Bencode::List(files)),
        ("name", Bencode::from("synthetic")),
        ("piece length", Bencode::Int(PIECE_LENGTH as i64)),
        ("pieces", Bencode::Bytes(pieces)),
    ]);
    dict([
        ("announce", Bencode::from("http://tracker.example/announce")),
        ("created by", Bencode::from("actorrent bench")),
        ("info", info),
    ])
    .encode()
}

fn dict<const N: usize>(entries: [(&str, Bencode); N]) -> Bencode {
    Bencode::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

#[divan::bench]
fn from_bytes_100k_pieces(bencher: Bencher) {
    let bytes = synthetic_torrent();
    let parsed = Metainfo::from_bytes(&bytes).expect("synthetic torrent is valid");
    assert_eq!(u64::from(parsed.info.piece_count()), PIECES);
    bencher
        .counter(BytesCount::new(bytes.len()))
        .bench(|| Metainfo::from_bytes(black_box(&bytes)));
}

#[divan::bench]
fn bencode_decode_100k_pieces(bencher: Bencher) {
    let bytes = synthetic_torrent();
    bencher
        .counter(BytesCount::new(bytes.len()))
        .bench(|| bencode::decode(black_box(&bytes)).map(|v| v.raw().len()));
}

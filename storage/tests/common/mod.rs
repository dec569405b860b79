//! Helpers shared by the storage integration tests: deterministic data,
//! pieces cut into 16 KiB blocks, their hashes, and writing them all.
#![allow(dead_code)]

use std::sync::mpsc::sync_channel;

use bytes::Bytes;
use storage::{Layout, Storage, VerifiedPiece, WriteJob, sha1_of};

pub const BLOCK: usize = 16 * 1024;

/// xorshift64*: deterministic bytes without a rand dependency.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The blocks of piece `p` of `all` (the torrent's whole byte space).
pub fn blocks_of(layout: &Layout, all: &Bytes, p: u32) -> Vec<Bytes> {
    let start = layout.piece_offset(p) as usize;
    let len = layout.piece_len(p).unwrap() as usize;
    let piece = all.slice(start..start + len);
    (0..len)
        .step_by(BLOCK)
        .map(|o| piece.slice(o..(o + BLOCK).min(len)))
        .collect()
}

pub fn hashes(layout: &Layout, all: &Bytes) -> Vec<[u8; 20]> {
    (0..layout.piece_count())
        .map(|p| sha1_of(&blocks_of(layout, all, p)))
        .collect()
}

pub fn verified(layout: &Layout, all: &Bytes, p: u32) -> VerifiedPiece {
    let blocks = blocks_of(layout, all, p);
    let h = sha1_of(&blocks);
    VerifiedPiece::verify(p, blocks, &h).unwrap()
}

/// A deterministic permutation of 0..n.
pub fn shuffled(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let r = data(n as usize * 8, seed);
    for i in (1..v.len()).rev() {
        let k = u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().unwrap()) as usize % (i + 1);
        v.swap(i, k);
    }
    v
}

/// Queues every piece of `all` to the writer in a shuffled order (`seed`)
/// and waits until each is written.
pub fn write_shuffled(st: &Storage, all: &Bytes, seed: u64) {
    let layout = st.layout().clone();
    let (tx, rx) = sync_channel(layout.piece_count() as usize);
    for p in shuffled(layout.piece_count(), seed) {
        let tx = tx.clone();
        st.write(WriteJob {
            piece: verified(&layout, all, p),
            reply: Box::new(move |d| tx.send(d).unwrap()),
        })
        .unwrap();
    }
    for _ in 0..layout.piece_count() {
        rx.recv().unwrap().result.unwrap();
    }
}

/// Writes every piece of `all` in order, each call waiting for its write.
pub fn write_in_order(st: &Storage, all: &Bytes) {
    let layout = st.layout().clone();
    for p in 0..layout.piece_count() {
        st.write_blocking(verified(&layout, all, p)).unwrap();
    }
}

//! Peer wire decoding throughput: a read buffer holding N `piece` messages
//! with 16 KiB blocks, decoded to the end with `decode_message`, the way a
//! peer actor drains one large socket read. Reports bytes of stream per
//! second; since blocks are sliced out of the buffer rather than copied, this
//! measures framing and validation overhead, not memcpy.

use bytes::BytesMut;
use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use protocol::wire::{self, Decoded, Limits, Message, decode_message, piece_header};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

fn main() {
    divan::main();
}

const BLOCK: usize = wire::BLOCK_SIZE as usize;

/// N consecutive 16 KiB blocks of random data, framed as `piece` messages.
fn piece_stream(n: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut block = vec![0u8; BLOCK];
    let mut out = Vec::with_capacity(n * (13 + BLOCK));
    for i in 0..n {
        rng.fill_bytes(&mut block);
        let (index, begin) = ((i / 16) as u32, ((i % 16) * BLOCK) as u32);
        out.extend_from_slice(&piece_header(index, begin, BLOCK as u32).unwrap());
        out.extend_from_slice(&block);
    }
    out
}

/// Decodes a buffer of `n` piece messages. The buffer is built outside the
/// timed region and freed outside it too, so only decoding is measured.
#[divan::bench(args = [16, 256, 4096])]
fn decode_pieces(bencher: Bencher, n: usize) {
    let stream = piece_stream(n);
    let limits = Limits {
        piece_count: Some((n as u32).div_ceil(16)),
        ..Limits::default()
    };
    bencher
        .counter(BytesCount::new(stream.len()))
        .counter(ItemsCount::new(n))
        .with_inputs(|| BytesMut::from(&stream[..]))
        .bench_local_refs(|buf| {
            let mut blocks = 0usize;
            while let Ok(Decoded::Complete(msg)) = decode_message(buf, &limits) {
                if let Message::Piece { data, .. } = msg {
                    blocks += data.len();
                    black_box(data);
                }
            }
            assert_eq!(blocks, n * BLOCK);
        });
}

/// The same stream fed the way a peer actor sees it: 64 KiB "socket reads"
/// copied into one reused read buffer (standing in for the kernel's copy),
/// decoding everything complete after each read and dropping the blocks.
/// This is the realistic per-connection ceiling: memcpy plus framing.
#[divan::bench(args = [256, 4096])]
fn read_and_decode_pieces(bencher: Bencher, n: usize) {
    const READ: usize = 64 * 1024;
    let stream = piece_stream(n);
    let limits = Limits::default();
    let mut buf = BytesMut::with_capacity(4 * READ);
    bencher
        .counter(BytesCount::new(stream.len()))
        .bench_local(|| {
            let mut blocks = 0usize;
            for read in stream.chunks(READ) {
                buf.reserve(read.len());
                buf.extend_from_slice(read);
                while let Ok(Decoded::Complete(msg)) = decode_message(&mut buf, &limits) {
                    if let Message::Piece { data, .. } = msg {
                        blocks += data.len();
                        black_box(data);
                    }
                }
            }
            assert_eq!(blocks, n * BLOCK);
        });
}

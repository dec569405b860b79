//! What MSE/PE costs: RC4 over payload buffers (bytes per second; the CPU
//! cost in s/GiB is its inverse, one core), the same payload through the
//! `MseStream` adapter with RC4 and in plaintext (the hot-path cost with
//! and without encryption, both ends of the connection in one thread), and
//! the Diffie-Hellman handshake (one exponentiation; a whole in-process
//! handshake, both roles, as handshakes per second).

use std::collections::HashMap;
use std::time::Duration;

use actors::mse_stream::{self, Encryption, MseStream};
use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use protocol::mse::{CryptoSet, Initiator, KeyStream, Responder, Secrets, req2_hash};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn main() {
    divan::main();
}

const INFO_HASH: [u8; 20] = [0xab; 20];

fn secrets(seed: u8) -> Secrets {
    Secrets::new([seed | 1; 20], vec![seed; 100], vec![seed; 50]).unwrap()
}

/// RC4 applied in place to a buffer of `len` bytes.
#[divan::bench(args = [16 * 1024, 1024 * 1024])]
fn rc4_apply(bencher: Bencher, len: usize) {
    let mut ks = KeyStream::new(&[7; 20]);
    let mut buf = vec![0x5au8; len];
    bencher
        .counter(BytesCount::new(len))
        .bench_local(|| ks.apply(black_box(&mut buf)));
}

/// A connected pair of streams after an MSE handshake (RC4 selected), or
/// plaintext ones.
fn pair(
    rt: &tokio::runtime::Runtime,
    rc4: bool,
) -> (MseStream<DuplexStream>, MseStream<DuplexStream>) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    if !rc4 {
        return (MseStream::plaintext(a), MseStream::plaintext(b));
    }
    let table: HashMap<[u8; 20], [u8; 20]> = [(req2_hash(&INFO_HASH), INFO_HASH)].into();
    rt.block_on(async {
        let t = Duration::from_secs(10);
        let (out, inc) = tokio::join!(
            mse_stream::initiate(a, INFO_HASH, &[], Encryption::Require, secrets(1), t),
            mse_stream::accept(b, &table, Encryption::Require, secrets(2), t)
        );
        (out.unwrap().0, inc.unwrap().stream)
    })
}

/// 16 MiB written in 16 KiB blocks (two slices each, as the peer writes a
/// header and a block) through one stream and read from the other: the
/// adapter's whole cost per payload byte, both directions' work on one core.
#[divan::bench(args = [false, true])]
fn stream_transfer(bencher: Bencher, rc4: bool) {
    const TOTAL: usize = 16 << 20;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let block = vec![0x33u8; 16 * 1024];
    bencher
        .counter(BytesCount::new(TOTAL))
        .with_inputs(|| pair(&rt, rc4))
        .bench_local_values(|(mut a, mut b)| {
            rt.block_on(async {
                let send = async {
                    let header = [0u8; 13];
                    for _ in 0..TOTAL / block.len() {
                        let mut slices = [&header[..], &block[..]];
                        let mut left = header.len() + block.len();
                        while left > 0 {
                            let io: Vec<std::io::IoSlice<'_>> =
                                slices.iter().map(|s| std::io::IoSlice::new(s)).collect();
                            let mut n = a.write_vectored(&io).await.unwrap();
                            left -= n;
                            for s in slices.iter_mut() {
                                let k = n.min(s.len());
                                *s = &s[k..];
                                n -= k;
                            }
                        }
                    }
                    a.flush().await.unwrap();
                };
                let recv = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = 0;
                    while got < TOTAL / block.len() * (13 + block.len()) {
                        got += b.read(&mut buf).await.unwrap();
                    }
                    black_box(&buf);
                };
                tokio::join!(send, recv);
            });
        });
}

/// One exponentiation: computing our public key.
#[divan::bench]
fn dh_public_key(bencher: Bencher) {
    let s = secrets(3);
    bencher.bench_local(|| black_box(&s).public_key());
}

/// A whole handshake, initiator and responder in process: four
/// exponentiations, the hashes, the RC4 key schedules and discards.
#[divan::bench]
fn handshake_pair(bencher: Bencher) {
    let table: HashMap<[u8; 20], [u8; 20]> = [(req2_hash(&INFO_HASH), INFO_HASH)].into();
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let mut i = Initiator::new(INFO_HASH, CryptoSet::BOTH, &[0x13; 68], secrets(4)).unwrap();
        let mut r = Responder::new(CryptoSet::BOTH, secrets(5)).unwrap();
        while !(i.is_established() && r.is_established()) {
            if let Some(m) = i.poll_transmit() {
                r.handle_input(&m, &table).unwrap();
            }
            if let Some(m) = r.poll_transmit() {
                i.handle_input(&m).unwrap();
            }
        }
        black_box((i.take_established(), r.take_established()))
    });
}

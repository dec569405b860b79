//! Hash pool throughput: 1 GiB of 256 KiB pieces through the pool with 1
//! and N workers, against SHA-1 on the calling thread and against
//! `openssl speed -evp sha1` on the same machine (the goal: each worker at
//! 90% or more of openssl's single-thread rate).
//!
//! `ACTORRENT_BENCH_MIB` changes the size.

use std::process::Command;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use storage::{HashJob, HashPool, HashPoolConfig, sha1_of};

const PIECE: usize = 256 * 1024;
const BLOCK: usize = 16 * 1024;
const DISTINCT: usize = 256;

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e9 / d.as_secs_f64()
}

fn blocks(pool: &Bytes, p: usize) -> Vec<Bytes> {
    let base = (p % DISTINCT) * PIECE;
    (0..PIECE)
        .step_by(BLOCK)
        .map(|o| pool.slice(base + o..base + o + BLOCK))
        .collect()
}

/// Single-thread SHA-1 rate of openssl in bytes/s, for 256 KiB inputs.
fn openssl_rate() -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-evp", "sha1", "-seconds", "3", "-bytes", "262144"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with("sha1"))?;
    let k = line.split_whitespace().last()?.strip_suffix('k')?;
    k.parse::<f64>().ok().map(|v| v * 1000.0)
}

fn run_pool(workers: usize, pool_data: &Bytes, hashes: &[[u8; 20]], pieces: usize) -> f64 {
    let pool = HashPool::new(HashPoolConfig {
        workers,
        queue_capacity: 64,
    })
    .expect("pool");
    let h = pool.handle();
    let jobs: Vec<(Vec<Bytes>, [u8; 20])> = (0..pieces)
        .map(|p| (blocks(pool_data, p), hashes[p % DISTINCT]))
        .collect();
    let (tx, rx) = sync_channel(pieces);
    let t0 = Instant::now();
    for (p, (b, expected)) in jobs.into_iter().enumerate() {
        let tx = tx.clone();
        h.submit(HashJob {
            piece: p as u32,
            blocks: b,
            expected,
            reply: Box::new(move |d| {
                let _ = tx.send(d.is_ok());
            }),
        })
        .expect("pool running");
    }
    let mut ok = 0;
    for _ in 0..pieces {
        ok += usize::from(rx.recv().expect("reply"));
    }
    let t = t0.elapsed();
    assert_eq!(ok, pieces);
    gbps((pieces * PIECE) as u64, t)
}

fn main() {
    let mib: usize = std::env::var("ACTORRENT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let pieces = (mib << 20) / PIECE;
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rng = SmallRng::seed_from_u64(9);
    let mut data = vec![0u8; DISTINCT * PIECE];
    rng.fill_bytes(&mut data);
    let data = Bytes::from(data);
    let hashes: Vec<[u8; 20]> = (0..DISTINCT).map(|p| sha1_of(&blocks(&data, p))).collect();

    let t0 = Instant::now();
    for p in 0..pieces {
        std::hint::black_box(sha1_of(&blocks(&data, p)));
    }
    let inline = gbps((pieces * PIECE) as u64, t0.elapsed());

    let one = run_pool(1, &data, &hashes, pieces);
    let many = run_pool(n, &data, &hashes, pieces);
    let openssl = openssl_rate().map(|r| r / 1e9);

    println!("SHA-1 of {mib} MiB in 256 KiB pieces (16 KiB blocks), {n} cores");
    println!("  sha1 crate, calling thread : {inline:.2} GB/s");
    println!("  hash pool, 1 worker        : {one:.2} GB/s");
    println!(
        "  hash pool, {n} workers       : {many:.2} GB/s ({:.2} GB/s per worker)",
        many / n as f64
    );
    match openssl {
        Some(o) => {
            println!("  openssl speed -evp sha1    : {o:.2} GB/s (one thread, 256 KiB)");
            println!(
                "  per worker vs openssl      : 1 worker {:.0}%, {n} workers {:.0}%",
                100.0 * one / o,
                100.0 * many / n as f64 / o
            );
        }
        None => println!("  openssl speed: not available"),
    }
}

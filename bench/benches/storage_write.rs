//! Write path benchmark: 1 GiB arriving as verified 256 KiB pieces of 16 KiB
//! blocks, written through the storage writer, against a baseline of one
//! `pwrite` per block. Reports MB/s (into the page cache, and including the
//! final fdatasync) and write syscalls per MiB, counted twice: by the
//! writer's own counters and by the kernel (`syscw` in /proc/self/io).
//!
//! A plain program rather than divan: the interesting numbers are syscall
//! counts, not just time. `ACTORRENT_BENCH_MIB` changes the size;
//! `ACTORRENT_BENCH_DIR` the directory (default: the system temp dir).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use storage::{
    DiskIo, DiskIoConfig, FileSpec, Preallocation, Storage, StorageConfig, VerifiedPiece, WriteJob,
    sha1_of,
};

const PIECE: usize = 256 * 1024;
const BLOCK: usize = 16 * 1024;
/// Distinct piece contents (64 MiB of random data, reused).
const DISTINCT: usize = 256;

fn syscw() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("syscw:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

struct Input {
    pool: Bytes,
    hashes: Vec<[u8; 20]>,
    pieces: usize,
}

impl Input {
    fn blocks(&self, p: usize) -> Vec<Bytes> {
        let base = (p % DISTINCT) * PIECE;
        (0..PIECE)
            .step_by(BLOCK)
            .map(|o| self.pool.slice(base + o..base + o + BLOCK))
            .collect()
    }
}

fn run_storage(dir: &Path, input: &Input, order: &[usize], label: &str) -> (f64, f64) {
    let total = (input.pieces * PIECE) as u64;
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_files(
        &io,
        dir,
        vec![FileSpec::new([format!("{label}.bin")], total)],
        PIECE as u32,
        &StorageConfig {
            preallocation: Preallocation::Sparse,
            ..StorageConfig::default()
        },
    )
    .expect("open storage");
    // Verified before the clock starts: the hash pool has its own benchmark.
    let verified: Vec<VerifiedPiece> = order
        .iter()
        .map(|&p| {
            VerifiedPiece::verify(p as u32, input.blocks(p), &input.hashes[p % DISTINCT])
                .expect("piece verifies")
        })
        .collect();
    let (tx, rx) = sync_channel(input.pieces);
    let w0 = syscw();
    let t0 = Instant::now();
    for v in verified {
        let tx = tx.clone();
        st.write(WriteJob {
            piece: v,
            reply: Box::new(move |d| {
                let _ = tx.send(d.result.is_ok());
            }),
        })
        .expect("writer running");
    }
    let mut ok = 0;
    for _ in 0..input.pieces {
        ok += usize::from(rx.recv().expect("reply"));
    }
    let t_write = t0.elapsed();
    st.sync_blocking().expect("sync");
    let t_sync = t0.elapsed();
    let w = syscw() - w0;
    assert_eq!(ok, input.pieces, "all writes succeed");
    let s = st.writer_stats()[0];
    let mib = total as f64 / (1 << 20) as f64;
    println!(
        "storage writer ({label}): {:.0} MB/s to page cache, {:.0} MB/s incl. fdatasync",
        mbps(total, t_write),
        mbps(total, t_sync)
    );
    println!(
        "  pwritev calls: {} ({:.2}/MiB, {:.2} per 256 KiB); kernel syscw: {} ({:.2}/MiB)",
        s.pwritev_calls,
        s.pwritev_calls as f64 / mib,
        s.pwritev_calls as f64 / (total as f64 / PIECE as f64),
        w,
        w as f64 / mib
    );
    println!(
        "  batches {}, runs {}, blocks/run avg {:.1} max {}",
        s.batches,
        s.runs_written,
        s.blocks_written as f64 / s.runs_written.max(1) as f64,
        s.max_blocks_per_run
    );
    drop(st);
    let _ = std::fs::remove_file(dir.join(format!("{label}.bin")));
    (mbps(total, t_write), mbps(total, t_sync))
}

fn run_baseline(dir: &Path, input: &Input, order: &[usize]) -> (f64, f64) {
    let total = (input.pieces * PIECE) as u64;
    let path = dir.join("baseline.bin");
    let f = File::create(&path).expect("create");
    f.set_len(total).expect("size");
    let w0 = syscw();
    let t0 = Instant::now();
    let mut calls = 0u64;
    for &p in order {
        for (i, b) in input.blocks(p).iter().enumerate() {
            f.write_all_at(b, (p * PIECE + i * BLOCK) as u64)
                .expect("pwrite");
            calls += 1;
        }
    }
    let t_write = t0.elapsed();
    f.sync_data().expect("sync");
    let t_sync = t0.elapsed();
    let w = syscw() - w0;
    let mib = total as f64 / (1 << 20) as f64;
    println!(
        "baseline pwrite per block (shuffled): {:.0} MB/s to page cache, {:.0} MB/s incl. fdatasync",
        mbps(total, t_write),
        mbps(total, t_sync)
    );
    println!(
        "  pwrite calls: {calls} ({:.2}/MiB); kernel syscw: {w} ({:.2}/MiB)",
        calls as f64 / mib,
        w as f64 / mib
    );
    drop(f);
    let _ = std::fs::remove_file(&path);
    (mbps(total, t_write), mbps(total, t_sync))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mib: usize = std::env::var("ACTORRENT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let pieces = (mib << 20) / PIECE;
    let mut rng = SmallRng::seed_from_u64(7);
    let mut pool = vec![0u8; DISTINCT * PIECE];
    rng.fill_bytes(&mut pool);
    let pool = Bytes::from(pool);
    let hashes = (0..DISTINCT)
        .map(|i| sha1_of(&[pool.slice(i * PIECE..(i + 1) * PIECE)]))
        .collect();
    let input = Input {
        pool,
        hashes,
        pieces,
    };
    let mut order: Vec<usize> = (0..pieces).collect();
    order.shuffle(&mut rng);
    let in_order: Vec<usize> = (0..pieces).collect();

    let base = std::env::var_os("ACTORRENT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    println!(
        "{mib} MiB as {pieces} pieces of 256 KiB in 16 KiB blocks, dir {:?}",
        dir.path()
    );
    // Interleaved repetitions: page-cache writeback and other load on the
    // machine make single runs noisy; medians are reported at the end.
    let reps: usize = std::env::var("ACTORRENT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut results: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    for _ in 0..reps {
        let r = [
            run_baseline(dir.path(), &input, &order),
            run_storage(dir.path(), &input, &order, "shuffled"),
            run_storage(dir.path(), &input, &in_order, "in-order"),
        ];
        for (acc, (w, s)) in results.iter_mut().zip(r) {
            acc.0.push(w);
            acc.1.push(s);
        }
    }
    println!("median of {reps}: MB/s to page cache / incl. fdatasync");
    for (name, (w, s)) in [
        "baseline pwrite per block",
        "storage writer shuffled",
        "storage writer in-order",
    ]
    .iter()
    .zip(results.iter_mut())
    {
        println!("  {name:<28} {:>6.0} / {:>6.0}", median(w), median(s));
    }
}

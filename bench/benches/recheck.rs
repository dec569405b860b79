//! Recheck of a 1 GiB torrent (four files) with the hash pool: GB/s with a
//! warm page cache, and with a cold one when the page cache can be dropped
//! (root: `/proc/sys/vm/drop_caches`).
//!
//! `ACTORRENT_BENCH_MIB` changes the size; `ACTORRENT_BENCH_DIR` the
//! directory.

use std::io::Write;
use std::time::Instant;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use storage::{
    DiskIo, DiskIoConfig, FileSpec, HashPool, HashPoolConfig, RecheckConfig, Storage,
    StorageConfig, recheck, sha1_of,
};

const PIECE: usize = 256 * 1024;
const DISTINCT: usize = 256;

fn drop_caches() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .and_then(|mut f| f.write_all(b"1"))
        .is_ok()
}

fn main() {
    let mib: usize = std::env::var("ACTORRENT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let total = mib << 20;
    let pieces = total / PIECE;
    let mut rng = SmallRng::seed_from_u64(5);
    let mut pool = vec![0u8; DISTINCT * PIECE];
    rng.fill_bytes(&mut pool);
    let pool = Bytes::from(pool);
    let hashes: Vec<[u8; 20]> = (0..pieces)
        .map(|p| {
            let b = (p % DISTINCT) * PIECE;
            sha1_of(&[pool.slice(b..b + PIECE)])
        })
        .collect();

    let base = std::env::var_os("ACTORRENT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    // Four files of a quarter each, so reads cross file boundaries.
    let quarter = (total / 4) as u64;
    let files: Vec<FileSpec> = (0..4)
        .map(|i| FileSpec::new(["t".to_string(), format!("part{i}")], quarter))
        .collect();
    // Write the data with plain writes (this benchmark is about reading).
    std::fs::create_dir_all(dir.path().join("t")).expect("mkdir");
    for i in 0..4 {
        let mut f = std::fs::File::create(dir.path().join(format!("t/part{i}"))).expect("create");
        let first = i * (pieces / 4);
        for p in first..first + pieces / 4 {
            let b = (p % DISTINCT) * PIECE;
            f.write_all(&pool[b..b + PIECE]).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let io = DiskIo::new(DiskIoConfig::default());
    let st = Storage::open_files(
        &io,
        dir.path(),
        files,
        PIECE as u32,
        &StorageConfig::default(),
    )
    .expect("open");
    let hp = HashPool::new(HashPoolConfig::default()).expect("pool");
    let n = hp.workers();
    let cfg = RecheckConfig::default();

    let run = |label: &str| {
        let t0 = Instant::now();
        let r = recheck(&st, &hashes, None, &hp.handle(), &cfg).expect("recheck");
        let t = t0.elapsed();
        assert!(r.good.iter().all(|g| *g), "every piece good");
        println!(
            "  recheck {label:<16}: {:.2} GB/s ({} MiB in {:.2} s)",
            r.bytes_read as f64 / 1e9 / t.as_secs_f64(),
            r.bytes_read >> 20,
            t.as_secs_f64()
        );
    };
    println!(
        "recheck of {mib} MiB, 4 files, 256 KiB pieces, {n} hash workers, reads of {} MiB",
        cfg.read_size >> 20
    );
    run("warm cache");
    run("warm cache");
    if drop_caches() {
        run("cold cache");
    } else {
        println!("  (cannot drop the page cache: cold run skipped)");
    }
}

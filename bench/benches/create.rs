//! `actorrent create` against `mktorrent` on the same file: hashing
//! throughput for a 1 GiB file whose pages are already cached, both with
//! the same piece size and two hash threads (`--hash-workers 2`, `-t 2`).
//! Each tool runs three times, interleaved; the best run is reported as MB/s
//! of file data, and the mean CPU time (user + system) as seconds per GiB,
//! which the other load on a shared machine disturbs less. Both must give
//! the same info-hash (the same pieces).
//!
//! `cargo bench --bench create` runs it on 1 GiB (`ACTORRENT_BENCH_MIB`
//! changes the size). Under `cargo test` (no `--bench` argument) it runs on
//! 16 MiB once, as a smoke test that both tools still agree.
//!
//! It is a target of the root package, not of `actorrent-bench`, because it
//! runs the `actorrent` binary and only that package's targets are told
//! where Cargo built it.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PIECE_LOG2: u32 = 19; // 512 KiB: what `auto` picks for 1 GiB
const THREADS: &str = "2";

fn fill(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create data file"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).expect("write data file");
    }
    f.flush().expect("flush data file");
}

/// Reads the file once so both tools find it in the page cache.
fn warm(path: &Path) {
    let mut f = std::fs::File::open(path).expect("open data file");
    let mut buf = vec![0u8; 8 << 20];
    while f.read(&mut buf).expect("read data file") > 0 {}
}

/// CPU time (user + system) of all waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall time and CPU time of one run. The machine is shared, so wall time
/// is noisy; CPU time per GiB says what the work costs.
fn time(mut cmd: Command) -> (Duration, Duration) {
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let t = t0.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (t, children_cpu() - cpu0)
}

fn info_hash(torrent: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_actorrent"))
        .args(["info", "--json"])
        .arg(torrent)
        .output()
        .expect("run actorrent info");
    assert!(out.status.success(), "info failed on {}", torrent.display());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = text.find("\"info_hash\":\"").expect("info_hash field") + 13;
    text[at..at + 40].to_string()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mib: usize = if bench {
        std::env::var("ACTORRENT_BENCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024)
    } else {
        16
    };
    let runs = if bench { 3 } else { 1 };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let data = dir.path().join("data.bin");
    fill(&data, mib);
    warm(&data);
    let ours = dir.path().join("ours.torrent");
    let theirs = dir.path().join("mktorrent.torrent");

    let mut best_ours = Duration::MAX;
    let mut best_mk = Duration::MAX;
    let mut cpu_ours = Duration::ZERO;
    let mut cpu_mk = Duration::ZERO;
    for _ in 0..runs {
        let mut c = Command::new(env!("CARGO_BIN_EXE_actorrent"));
        c.arg("create")
            .arg(&data)
            .arg("--output")
            .arg(&ours)
            .args(["--force", "--hash-workers", THREADS, "--piece-size"])
            .arg((1u64 << PIECE_LOG2).to_string());
        let (wall, cpu) = time(c);
        best_ours = best_ours.min(wall);
        cpu_ours += cpu;

        let _ = std::fs::remove_file(&theirs); // mktorrent will not overwrite
        let mut c = Command::new("mktorrent");
        c.args(["-l", &PIECE_LOG2.to_string(), "-t", THREADS, "-o"])
            .arg(&theirs)
            .arg(&data);
        let (wall, cpu) = time(c);
        best_mk = best_mk.min(wall);
        cpu_mk += cpu;
    }
    assert_eq!(
        info_hash(&ours),
        info_hash(&theirs),
        "actorrent and mktorrent disagree on the pieces"
    );
    let mb = (mib as f64) * 1048576.0 / 1e6;
    let rate = |d: Duration| mb / d.as_secs_f64();
    println!(
        "create vs mktorrent: {mib} MiB file, page cache warm, {} KiB pieces, {THREADS} hash threads, best of {runs}",
        1 << (PIECE_LOG2 - 10)
    );
    let per_gib = |cpu: Duration| cpu.as_secs_f64() / runs as f64 / (mib as f64 / 1024.0);
    println!(
        "  actorrent create : {:8.1} MB/s ({:.3} s), {:.2} CPU s/GiB",
        rate(best_ours),
        best_ours.as_secs_f64(),
        per_gib(cpu_ours)
    );
    println!(
        "  mktorrent        : {:8.1} MB/s ({:.3} s), {:.2} CPU s/GiB",
        rate(best_mk),
        best_mk.as_secs_f64(),
        per_gib(cpu_mk)
    );
}

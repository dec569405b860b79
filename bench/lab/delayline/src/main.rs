//! `delayline`: the swarm lab's latency and jitter, for kernels without
//! netem. The lab routes every packet between its hosts through a TUN
//! device in its router namespace; this program reads each packet from it,
//! holds it for its delay (+- jitter, order kept per flow), and writes it
//! back, from where the kernel routes it on to its destination.
//!
//! Bounded in memory (`--capacity` packets of at most `--mtu` bytes; a full
//! queue drops) and in time (`--max-seconds`). It prints `ready` once
//! attached, and on SIGINT, SIGTERM or the time limit one JSON line with
//! what it did (packets in, out, dropped, how late releases came).

mod line;
mod tun;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::SeedableRng;

use line::{Config, DelayLine, Offer};

/// Holds every packet of a TUN device for a delay, then releases it.
#[derive(Parser, Debug)]
struct Args {
    /// The TUN device to attach to (created if missing).
    #[arg(long)]
    tun: String,
    /// One-way delay added to each packet, microseconds.
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Each delay is drawn uniformly from delay +- jitter, microseconds.
    #[arg(long, default_value_t = 0)]
    jitter_us: u64,
    /// Packets held at most; more are dropped.
    #[arg(long, default_value_t = 16384)]
    capacity: usize,
    /// Largest packet, bytes (the device's MTU).
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Exit after this many seconds whatever happens.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
    /// Seed of the jitter's random numbers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a handler that only stores to an atomic; no SA_RESTART,
        // so a signal wakes ppoll.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Packets read per wake-up before due ones are released again, so a flood
/// in cannot starve the releases.
const READ_BATCH: usize = 256;
/// Longest sleep while idle (signals and the time limit are seen sooner).
const IDLE: Duration = Duration::from_millis(100);

fn main() {
    let args = Args::parse();
    if !(68..=65535).contains(&args.mtu) || args.capacity == 0 {
        eprintln!("delayline: --mtu must be 68..=65535 and --capacity at least 1");
        std::process::exit(2);
    }
    install_signals();
    // Sleeps end when asked, not up to 50 µs later: at 0.5 ms of delay the
    // default timer slack would be a tenth of it.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let tun = match tun::Tun::attach(&args.tun) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("delayline: attaching to {}: {e}", args.tun);
            std::process::exit(1);
        }
    };
    let mut line = DelayLine::new(
        Config {
            delay: Duration::from_micros(args.delay_us),
            jitter: Duration::from_micros(args.jitter_us),
            capacity: args.capacity,
        },
        rand::rngs::SmallRng::seed_from_u64(args.seed),
    );
    println!("ready");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    // Buffers come back here after release: at most `capacity` + 1 exist.
    let mut free: Vec<Vec<u8>> = Vec::new();
    let mut read_errors = 0u64;
    let mut write_errors = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            eprintln!("delayline: --max-seconds reached");
            break;
        }
        for _ in 0..READ_BATCH {
            let mut buf = free.pop().unwrap_or_default();
            buf.resize(args.mtu, 0);
            match tun.read(&mut buf) {
                Ok(Some(n)) => {
                    buf.truncate(n);
                    if let Offer::Dropped(b) = line.offer(Instant::now(), buf) {
                        free.push(b);
                    }
                }
                Ok(None) => {
                    free.push(buf);
                    break;
                }
                Err(_) => {
                    read_errors += 1;
                    free.push(buf);
                    break;
                }
            }
        }
        let now = Instant::now();
        while let Some(p) = line.pop_due(now) {
            if tun.write(&p).is_err() {
                write_errors += 1;
            }
            free.push(p);
        }
        let wait = line
            .next_due()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(IDLE)
            .min(IDLE);
        if !wait.is_zero() {
            tun.wait(wait);
        }
    }
    let c = line.counters();
    let mean = c.late_us_sum.checked_div(c.released).unwrap_or(0);
    println!(
        "{{\"received\":{},\"received_bytes\":{},\"released\":{},\"released_bytes\":{},\
         \"dropped_full\":{},\"dropped_at_exit\":{},\"not_ipv4\":{},\"max_queue\":{},\
         \"late_us_mean\":{},\"late_us_max\":{},\"read_errors\":{},\"write_errors\":{},\
         \"seconds\":{:.1}}}",
        c.received,
        c.received_bytes,
        c.released,
        c.released_bytes,
        c.dropped_full,
        line.len(),
        c.not_ipv4,
        c.max_queue,
        mean,
        c.late_us_max,
        read_errors,
        write_errors,
        started.elapsed().as_secs_f64()
    );
}

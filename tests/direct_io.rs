//! `--direct-io` on a real block device: a loop device over a file, written
//! by `download --raw-target --direct-io` from a real `seed` over loopback,
//! then rechecked and served by `seed --raw-target --direct-io`. Needs root
//! for `losetup` (skipped only with ACTORRENT_SKIP_MOUNT_TESTS).
//!
//! The payload ends 4321 bytes past a 4 KiB boundary, so the last piece's
//! tail cannot go through O_DIRECT: it must land exactly, and the device's
//! bytes after it must stay untouched.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// `O_DIRECT` as /proc/PID/fdinfo prints `flags` (octal, x86-64 value).
const O_DIRECT_FLAG: u64 = libc::O_DIRECT as u64;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn loop_device(backing: &Path) -> Option<Loop> {
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(backing)
        .output();
    match &out {
        Ok(o) if o.status.success() => {
            Some(Loop(String::from_utf8_lossy(&o.stdout).trim().to_string()))
        }
        _ => {
            if std::env::var_os("ACTORRENT_SKIP_MOUNT_TESTS").is_some() {
                return None;
            }
            panic!("cannot set up a loop device: {out:?}");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn actorrent(args: &[&str], log: &Path) -> Reaped {
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_actorrent"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap())
            .spawn()
            .expect("run actorrent"),
    )
}

/// Whether process `pid` has `dev` open with O_DIRECT, from
/// /proc/PID/fd and /proc/PID/fdinfo.
fn has_direct_fd(pid: u32, dev: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    for fd in fds.flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() != Some(dev) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0);
        if flags & O_DIRECT_FLAG != 0 {
            return true;
        }
    }
    false
}

/// Waits for `child` to exit (bounded), asserting success; meanwhile
/// notes whether it ever held `dev` with O_DIRECT.
fn wait_ok(child: &mut Reaped, log: &Path, dev: Option<&Path>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = false;
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            assert!(
                st.success(),
                "actorrent failed: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return seen;
        }
        if let Some(d) = dev {
            seen |= has_direct_fd(child.0.id(), d);
        }
        assert!(Instant::now() < deadline, "not done within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn downloads_into_and_seeds_from_a_loop_device_with_o_direct() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 8 * MIB + 4321;
    let data = payload(size as usize, 7);
    let image = tmp.path().join("src.img");
    std::fs::write(&image, &data).unwrap();
    let torrent = tmp.path().join("src.torrent");
    let out = Command::new(env!("CARGO_BIN_EXE_actorrent"))
        .args(["create", "--raw", s(&image), "-o", s(&torrent)])
        .args(["--piece-size", "256K"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The device is larger than the payload; its bytes past the payload
    // must survive.
    let backing = tmp.path().join("backing");
    std::fs::write(&backing, vec![0xEEu8; (9 * MIB) as usize]).unwrap();
    let Some(lo) = loop_device(&backing) else {
        return;
    };
    let dev = PathBuf::from(&lo.0);

    let port_a = free_port();
    let _seed_a = actorrent(
        &[
            "seed",
            s(&torrent),
            "--raw-target",
            s(&image),
            "--listen",
            &format!("127.0.0.1:{port_a}"),
        ],
        &tmp.path().join("seed_a.log"),
    );
    // Limited so the run lasts long enough to look at its descriptors.
    let log = tmp.path().join("download.log");
    let mut d = actorrent(
        &[
            "download",
            s(&torrent),
            "--raw-target",
            s(&dev),
            "--direct-io",
            "--resume-file",
            s(&tmp.path().join("d.resume")),
            "--download-limit",
            "4000000",
            "--no-dht",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            &format!("127.0.0.1:{port_a}"),
        ],
        &log,
    );
    let seen = wait_ok(&mut d, &log, Some(&dev));
    assert!(
        seen,
        "the download never held {} with O_DIRECT",
        dev.display()
    );
    let mut back = vec![0u8; (9 * MIB) as usize];
    File::open(&dev)
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    assert!(back[..size as usize] == data[..], "device bytes differ");
    assert!(
        back[size as usize..].iter().all(|&b| b == 0xEE),
        "bytes past the payload were written"
    );

    // A fresh resume file: the seed rechecks the device through O_DIRECT
    // reads, then serves from it.
    let port_b = free_port();
    let log_b = tmp.path().join("seed_b.log");
    let mut seed_b = actorrent(
        &[
            "seed",
            s(&torrent),
            "--raw-target",
            s(&dev),
            "--direct-io",
            "--resume-file",
            s(&tmp.path().join("b.resume")),
            "--no-dht",
            "--listen",
            &format!("127.0.0.1:{port_b}"),
        ],
        &log_b,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_direct_fd(seed_b.0.id(), &dev) {
        assert!(
            seed_b.0.try_wait().unwrap().is_none(),
            "seed exited: {}",
            std::fs::read_to_string(&log_b).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "seed never opened O_DIRECT");
        std::thread::sleep(Duration::from_millis(20));
    }
    let copy = tmp.path().join("copy.img");
    File::create(&copy).unwrap().set_len(size).unwrap();
    let log_c = tmp.path().join("copy.log");
    let mut c = actorrent(
        &[
            "download",
            s(&torrent),
            "--raw-target",
            s(&copy),
            "--resume-file",
            s(&tmp.path().join("c.resume")),
            "--no-dht",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            &format!("127.0.0.1:{port_b}"),
        ],
        &log_c,
    );
    wait_ok(&mut c, &log_c, None);
    assert!(
        std::fs::read(&copy).unwrap() == data,
        "the copy served through O_DIRECT differs"
    );
    assert!(has_direct_fd(seed_b.0.id(), &dev));
    drop(seed_b);
}

//! The short swarm-lab run (`bench/lab/lab.py ci`): four `actorrent
//! download --seed-after` leechers, one `actorrent seed` and opentracker,
//! each in its own network namespace on 100 Mbit/s links with 0.5 ms of
//! delay (the lab's delay line), a 32 MiB payload; one leecher is killed
//! with SIGKILL mid-download and restarted. The lab asserts that the
//! restart keeps every piece verified on disk and downloads exactly the
//! rest, and that every leecher ends byte-identical to the source.
//!
//! It needs root and `ip netns`; where a namespace cannot be created it
//! prints why and passes. The lab removes everything it made on every exit
//! path; if it has to be killed, this test runs `lab.py cleanup` for its
//! own namespace prefix.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_actorrent");
/// The lab bounds every wait itself; this is the backstop.
const LIMIT: Duration = Duration::from_secs(240);
/// `lab.py`'s exit status when the lab cannot run on this machine.
const SKIP: i32 = 3;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lab_script() -> PathBuf {
    root().join("bench/lab/lab.py")
}

/// Why namespaces cannot be made here, if they cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    let name = format!("atci{}-canary", std::process::id());
    match Command::new("ip").args(["netns", "add", &name]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            None
        }
        Ok(o) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("no `ip` command: {e}")),
    }
}

/// Builds the delay line (a workspace member the root package's tests do
/// not otherwise build) into this test's own target directory and profile.
fn delayline() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/lab-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "actorrent-lab-delayline",
        "--bin",
        "delayline",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(root());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo to build the delay line");
    assert!(status.success(), "building the delay line failed: {status}");
    profile_dir.join("delayline")
}

/// Removes what a lab with `prefix` left, if this test had to kill it.
struct Cleanup {
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("/usr/bin/python3")
            .arg(lab_script())
            .args(["cleanup", "--prefix", &self.prefix])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lab_four_leechers_one_killed_and_restarted_all_byte_identical() {
    if let Some(why) = cannot_run() {
        eprintln!("skipping the lab run: {why}");
        return;
    }
    let delayline = delayline();
    let prefix = format!("atci{}", std::process::id());
    let cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let out = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut child = Command::new("/usr/bin/python3")
        .arg(lab_script())
        .args(["ci", "--prefix", &prefix, "--actorrent", BIN])
        .arg("--delayline")
        .arg(&delayline)
        .args(["--timeout", "120"])
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(out.reopen().unwrap())
        .spawn()
        .expect("/usr/bin/python3 runs the lab (scripts/test.sh installs it)");
    let status = match wait_bounded(&mut child, LIMIT) {
        Some(s) => s,
        None => {
            // SIGTERM lets the lab undo what it made; then the backstop.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if wait_bounded(&mut child, Duration::from_secs(30)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            drop(cleanup);
            panic!(
                "the lab did not finish within {LIMIT:?}:\n{}",
                std::fs::read_to_string(out.path()).unwrap_or_default()
            );
        }
    };
    let text = std::fs::read_to_string(out.path()).unwrap_or_default();
    eprintln!("{text}");
    eprintln!("lab run took {:.1} s", started.elapsed().as_secs_f64());
    if status.code() == Some(SKIP) {
        eprintln!("skipping: the lab says it cannot run here");
        return;
    }
    assert!(status.success(), "the lab run failed ({status}):\n{text}");
    for what in [
        "a leecher was killed -9 mid-download",
        "the restart keeps every verified piece",
        "the restart downloads only the rest, byte-identical",
        "every leecher completes byte-identical",
    ] {
        assert!(
            text.contains(&format!("PASS [ci] {what}")),
            "no PASS for `{what}`:\n{text}"
        );
    }
    assert!(!text.contains("FAIL"), "{text}");
    // The lab removed its namespaces itself (the guard would hide it).
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(&prefix)),
        "namespaces left behind: {left}"
    );
    drop(cleanup);
}

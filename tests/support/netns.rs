//! Network namespaces for the tests that need several hosts (binding, the
//! SOCKS5 proxy): `ip` with its stderr in the panic, commands inside a
//! namespace, and creating one or saying why the test is skipped.

use std::process::Command;

/// Runs `ip <args>`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` inside namespace `ns` (`ip netns exec`).
pub fn in_ns(ns: &str, cmd: &[&str]) {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    ip(&args);
}

/// Creates namespace `name` with its loopback up; `false` (with the reason
/// printed: not root, no `ip`, `ip netns add` refused) when the test is to
/// be skipped.
pub fn add(name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root (network namespaces need CAP_SYS_ADMIN)");
        return false;
    }
    match Command::new("ip").args(["netns", "add", name]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: `ip netns add` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return false;
        }
        Err(e) => {
            eprintln!("skipped: no `ip` command: {e}");
            return false;
        }
    }
    in_ns(name, &["ip", "link", "set", "lo", "up"]);
    true
}

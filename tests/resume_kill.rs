//! A downloader killed with SIGKILL mid-download resumes without hashing
//! everything again: its resume data's pieces are trusted (the write
//! journal it left says the file's new mtime is its own writing), only the
//! pieces written since the last save are rechecked, and the final bytes
//! are right. Real processes on 127.0.0.1: `actorrent seed` (upload capped
//! so the download takes several seconds) and `actorrent download`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::process::{Actorrent, strip_ansi};
use support::torrent::TestTorrent;

const START: Duration = Duration::from_secs(120);
const DONE: Duration = Duration::from_secs(240);

fn downloader(name: &str, t: &TestTorrent, out: &Path, seed_port: u16) -> Actorrent {
    let peer = ([127, 0, 0, 1], seed_port).into();
    // Saves every 16 pieces, so a kill finds many saved and some not.
    let env = [("ACTORRENT_RESUME_EVERY_PIECES", "16")];
    Actorrent::download_env(name, &t.path, out, &[peer], &[], &env)
}

/// `key=<number>` in the first line of `log` containing `marker`.
fn logged_number(log: &str, marker: &str, key: &str) -> Option<u64> {
    let plain = log.lines().map(strip_ansi).find(|l| l.contains(marker))?;
    let at = plain.find(&format!("{key}="))? + key.len() + 1;
    plain[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[test]
fn kill_9_mid_download_resumes_without_a_full_recheck() {
    let dir = tempfile::tempdir().unwrap();
    // 32 MiB in 256 pieces; the seed sends 4 MiB/s: about 8 s in all.
    let t = TestTorrent::single(dir.path(), "killed", 128 * 1024, 32 << 20, 99);
    let n = t.piece_count() as u64;
    let data = dir.path().join("seed");
    t.write_payload(&data);
    let mut seed = Actorrent::seed("seed", &t.path, &data, &["--upload-limit", "4194304"]);
    let port = seed.listen_port(START);
    let out = dir.path().join("out");

    let mut first = downloader("first run", &t, &out, port);
    let s = first.wait_stats(DONE, "a third of the pieces", |v| {
        v["pieces_done"].as_u64().is_some_and(|d| d * 3 >= n)
    });
    let done_at_kill = s["pieces_done"].as_u64().unwrap();
    assert!(done_at_kill < n, "finished before the kill: {s}");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) }, 0);
    let status = first.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "killed: {status}");
    let resume = out.join(".actorrent");
    let journal = std::fs::read_dir(&resume)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".writing"));
    assert!(
        journal,
        "the killed run left its write journal; {:?} holds {:?}; its log:\n{}",
        resume,
        std::fs::read_dir(&resume)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect::<Vec<_>>(),
        first.log_tail(30)
    );

    let mut second = downloader("second run", &t, &out, port);
    let s = second.wait_stats(DONE, "every piece", |v| v["pieces_done"] == n);
    assert_eq!(s["hash_failures"], 0, "{s}");
    t.assert_downloaded(&out);
    let log = strip_ansi(&second.log());
    let have = logged_number(&log, "checked have=", "have").expect("a `checked` line");
    let rechecked = logged_number(&log, "rechecking", "pieces").unwrap_or(0);
    eprintln!(
        "killed at {done_at_kill}/{n} pieces; restart had {have} after its check, rechecked {rechecked}; bytes_down {}",
        s["bytes_down"]
    );
    assert!(
        log.lines()
            .any(|l| l.contains("rechecking") && l.contains("unclean stop")),
        "the restart names the unclean stop:\n{}",
        second.log_tail(40)
    );
    assert!(have > 0, "saved pieces were trusted");
    // Every piece is readable (the file has its full size): a full recheck
    // would hash all n. Only those written since the last save are.
    assert!(
        rechecked * 2 < n,
        "hashed {rechecked} of {n} pieces again: that is no resume"
    );
    // Nothing verified before is fetched again: what the restart took from
    // the network (less waste) fits in the pieces it lacked.
    let down = s["bytes_down"].as_u64().unwrap() - s["bytes_wasted"].as_u64().unwrap_or(0);
    assert!(
        down <= (n - have) * u64::from(t.piece_length),
        "downloaded {down} bytes for {} missing pieces",
        n - have
    );
    second.stop(Duration::from_secs(30));
    let left = std::fs::read_dir(&resume)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".writing"));
    assert!(!left, "a completed download removes its journal");
    seed.stop(Duration::from_secs(30));
}

//! A download whose file system fills up (issue 14, the disk-full fault):
//! the torrent stops with "disk full" as the stats' `error`, the resume data
//! claims exactly the pieces verified on disk (also those verified after the
//! last periodic save: the save at the stop must succeed on the full disk),
//! and once space is freed a restart keeps them all and fetches only the
//! rest.
//!
//! The file system is a real one that fills: a small ext2 image on a loop
//! device (ext2 has no fallocate, so the preallocation falls back to sparse
//! files and the disk fills while pieces arrive, as on any file system
//! without it), and a small tmpfs with `disk.preallocation = "sparse"`.
//! Mounting needs root (and `mkfs.ext2` and a loop device for ext2);
//! without them the test says why and passes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha1::{Digest, Sha1};
use support::client::Client;
use support::process::strip_ansi;
use support::scripted::{Script, Seed};
use support::torrent::TestTorrent;

const STEP: Duration = Duration::from_secs(60);
const PIECE: u32 = 64 * 1024;
const PIECES: usize = 96;

/// A mounted ext2 image, unmounted (and its loop device freed) on drop.
struct Mount {
    dir: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

/// An ext2 file system of `kib` KiB mounted at `dir`, or why not.
fn mount_ext2(image: &Path, dir: &Path, kib: u64) -> Result<Mount, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root (mounting a loop device needs it)".into());
    }
    std::fs::File::create(image)
        .and_then(|f| f.set_len(kib * 1024))
        .map_err(|e| e.to_string())?;
    run(Command::new("mkfs.ext2")
        .args(["-q", "-F", "-m", "0", "-b", "1024"])
        .arg(image))?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(image)
        .arg(dir))?;
    Ok(Mount {
        dir: dir.to_path_buf(),
    })
}

/// Pieces whose bytes on disk hash right.
fn verified_on_disk(t: &TestTorrent, file: &Path) -> Vec<bool> {
    let data = std::fs::read(file).unwrap_or_default();
    (0..PIECES)
        .map(|i| {
            let at = i * PIECE as usize;
            let want = &t.payload[at..at + PIECE as usize];
            data.get(at..at + PIECE as usize)
                .is_some_and(|got| Sha1::digest(got) == Sha1::digest(want))
        })
        .collect()
}

/// A tmpfs of `kib` KiB mounted at `dir`, or why not.
fn mount_tmpfs(dir: &Path, kib: u64) -> Result<Mount, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
        .arg(dir))?;
    Ok(Mount {
        dir: dir.to_path_buf(),
    })
}

#[test]
fn a_full_disk_stops_the_torrent_and_keeps_every_verified_piece() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    // 8 MiB of file system, a 6 MiB payload: the filler leaves room for
    // about half of it.
    let mount = match mount_ext2(&dir.path().join("fs.img"), &mnt, 8 * 1024) {
        Ok(m) => m,
        Err(why) => {
            eprintln!(
                "SKIP a_full_disk_stops_the_torrent: cannot mount a small file system: {why}"
            );
            return;
        }
    };
    fill_then_free(dir.path(), &mnt, &[]);
    drop(mount);
}

/// The same on a tmpfs with sparse files (`disk.preallocation`), so here
/// too the disk fills while pieces arrive.
#[test]
fn a_full_tmpfs_stops_the_torrent_and_keeps_every_verified_piece() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let mount = match mount_tmpfs(&mnt, 8 * 1024) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIP a_full_tmpfs_stops_the_torrent: cannot mount a tmpfs: {why}");
            return;
        }
    };
    let config = dir.path().join("sparse.toml");
    std::fs::write(&config, "[disk]\npreallocation = \"sparse\"\n").unwrap();
    fill_then_free(dir.path(), &mnt, &["--config", config.to_str().unwrap()]);
    drop(mount);
}

/// Fills most of the file system mounted at `mnt`, downloads into it until
/// it is full, checks the stop and the resume data, frees the room and
/// finishes the download from where it stopped. The torrent lives in `dir`;
/// `args` go to both downloads.
fn fill_then_free(dir: &Path, mnt: &Path, args: &[&str]) {
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 4 << 20]).unwrap();

    let t = TestTorrent::single(dir, "image.bin", PIECE, PIECE as usize * PIECES, 14);
    let seed = Seed::start(&t, Script::new());
    let out = mnt.join("out");
    let first = Client::download(&t.path, &out, &[seed.addr()], args).wait(STEP);
    assert!(
        !first.status.success(),
        "the download succeeded on a full disk\n{}",
        support::client::tail(&first.stderr, 30)
    );
    let last = first.stats().last().cloned().expect("no stats lines");
    assert_eq!(last["state"], "error", "{last}");
    assert_eq!(last["event"], "error", "{last}");
    let reason = last["error"].as_str().unwrap_or_default();
    assert!(reason.contains("disk full"), "error: {last}");
    assert!(
        first.stderr_mentions("disk full"),
        "the log does not say why"
    );

    let file = t.output_root(&out);
    let on_disk = verified_on_disk(&t, &file);
    let held = on_disk.iter().filter(|v| **v).count();
    assert!(
        held > 0 && held < PIECES,
        "{held} of {PIECES} pieces on disk: the disk did not fill half-way"
    );
    let hex: String = t.info_hash.iter().map(|b| format!("{b:02x}")).collect();
    let resume_file = out.join(".actorrent").join(format!("{hex}.resume"));
    let resume = storage::resume::load(&resume_file)
        .unwrap_or_else(|e| panic!("resume data unreadable: {e}"))
        .unwrap_or_else(|| panic!("no resume data at {}", resume_file.display()));
    let claimed: Vec<usize> = (0..PIECES).filter(|&i| resume.have[i]).collect();
    let verified: Vec<usize> = (0..PIECES).filter(|&i| on_disk[i]).collect();
    assert_eq!(
        claimed, verified,
        "the resume data must claim exactly the pieces verified on disk"
    );

    // Room again: the restart trusts the resume data and fetches the rest.
    std::fs::remove_file(&filler).unwrap();
    let second = Client::download(&t.path, &out, &[seed.addr()], args).wait(STEP);
    second.assert_success();
    let done = second.final_stats();
    let missing = (PIECES - held) as u64 * u64::from(PIECE);
    assert_eq!(
        done["bytes_down"], missing,
        "the restart fetched a verified piece again: {done}"
    );
    assert!(
        strip_ansi(&second.stderr).contains(&format!("checked have={held} ")),
        "the restart did not start from the {held} recorded pieces\n{}",
        support::client::tail(&second.stderr, 200)
    );
    t.assert_downloaded(&out);
}

//! The daemon's state directory: what it keeps so a restart brings every
//! torrent back as it was.
//!
//! ```text
//!   <state>/settings.json              session settings (download dir, ...)
//!   <state>/torrents/<hash>.torrent    the metainfo, as added
//!   <state>/torrents/<hash>.magnet     a magnet link until its metadata is known
//!   <state>/torrents/<hash>.json       the torrent's settings (TorrentSettings)
//!   <state>/resume/<hash>.resume       resume data (written by the torrent actor)
//!   <state>/resume/<hash>.parts        bytes of unselected files (ditto)
//! ```
//!
//! Every file here is written atomically (temp file, fsync, rename, fsync
//! of the directory). Loading reads each torrent on its own: a file that
//! does not parse is reported by name and that torrent is skipped, its
//! files left in place for the operator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actors::picker::Priority;
use anyhow::{Context, anyhow};
use protocol::metainfo::Metainfo;
use serde::{Deserialize, Serialize};

/// Longest `.torrent` the daemon accepts (from the RPC, the watch directory
/// or its own state). 16 MiB holds the piece hashes of a 1 TiB torrent
/// with 1 MiB pieces.
pub const MAX_TORRENT_FILE: usize = 16 << 20;

/// Longest settings file read back; ours are a few hundred bytes.
const MAX_SETTINGS_FILE: u64 = 1 << 20;

/// What the daemon keeps about one torrent besides its metainfo and resume
/// data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TorrentSettings {
    /// The RPC's number for it (kept across restarts).
    pub id: i64,
    /// Where its payload goes (`<dir>/<torrent name>`).
    pub download_dir: PathBuf,
    /// Stopped by the user.
    pub paused: bool,
    /// When it was added, seconds since the epoch.
    pub added_date: i64,
    /// When its wanted files were first complete, 0 if never.
    pub done_date: i64,
    /// Free-form labels.
    pub labels: Vec<String>,
    /// Its own upload limit, bytes per second, when limited.
    pub upload_limit: Option<u64>,
    /// Its own download limit, bytes per second, when limited.
    pub download_limit: Option<u64>,
    /// Seed ratio limit and mode (0 the session's, 1 this one, 2
    /// unlimited), as Transmission keeps them.
    pub seed_ratio_limit: f64,
    pub seed_ratio_mode: i64,
    /// Seed idle limit (minutes) and mode (as for the ratio).
    pub seed_idle_limit: i64,
    pub seed_idle_mode: i64,
    /// Stopped because it reached its seed ratio or idle limit
    /// (Transmission's `isFinished`); cleared when started again.
    pub finished: bool,
    /// The file selection the user asked for (one per file); `None` keeps
    /// what the resume data records.
    pub priorities: Option<Vec<Priority>>,
    /// Bytes uploaded and downloaded in earlier runs.
    pub uploaded_ever: u64,
    pub downloaded_ever: u64,
}

impl Default for TorrentSettings {
    fn default() -> Self {
        TorrentSettings {
            id: 0,
            download_dir: PathBuf::new(),
            paused: false,
            added_date: 0,
            done_date: 0,
            labels: Vec::new(),
            upload_limit: None,
            download_limit: None,
            seed_ratio_limit: 2.0,
            seed_ratio_mode: 0,
            seed_idle_limit: 30,
            seed_idle_mode: 0,
            finished: false,
            priorities: None,
            uploaded_ever: 0,
            downloaded_ever: 0,
        }
    }
}

/// Session settings kept across restarts (what `session-set` changed;
/// `None`: the default). Speeds are in Transmission's kB/s (1000 bytes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// Where new torrents go unless `torrent-add` says otherwise.
    pub download_dir: Option<PathBuf>,
    /// Whether new torrents start paused.
    pub start_added_torrents: Option<bool>,
    /// The session's seed ratio, for torrents whose ratio mode is 0.
    pub seed_ratio_limit: Option<f64>,
    pub seed_ratio_limited: Option<bool>,
    /// The session's idle seeding limit in minutes, likewise.
    pub idle_seeding_limit: Option<i64>,
    pub idle_seeding_limit_enabled: Option<bool>,
    /// Process-wide speed limits.
    pub speed_limit_up: Option<u64>,
    pub speed_limit_up_enabled: Option<bool>,
    pub speed_limit_down: Option<u64>,
    pub speed_limit_down_enabled: Option<bool>,
    /// Alternative ("turtle") limits, which replace the others while
    /// enabled.
    pub alt_speed_up: Option<u64>,
    pub alt_speed_down: Option<u64>,
    pub alt_speed_enabled: Option<bool>,
    /// Connections, process-wide and per torrent.
    pub peer_limit_global: Option<u64>,
    pub peer_limit_per_torrent: Option<u64>,
    /// The log filter (as `--log-level`), replacing the one the daemon
    /// started with (an actorrent extension).
    pub log_filter: Option<String>,
}

impl SessionSettings {
    /// Takes every value `new` sets.
    pub fn merge(&mut self, new: SessionSettings) {
        macro_rules! take {
            ($($f:ident),*) => { $( if new.$f.is_some() { self.$f = new.$f; } )* };
        }
        take!(
            download_dir,
            start_added_torrents,
            seed_ratio_limit,
            seed_ratio_limited,
            idle_seeding_limit,
            idle_seeding_limit_enabled,
            speed_limit_up,
            speed_limit_up_enabled,
            speed_limit_down,
            speed_limit_down_enabled,
            alt_speed_up,
            alt_speed_down,
            alt_speed_enabled,
            peer_limit_global,
            peer_limit_per_torrent,
            log_filter
        );
    }

    /// The seed ratio limit of the session, when set.
    pub fn ratio_limit(&self) -> Option<f64> {
        self.seed_ratio_limited
            .unwrap_or(false)
            .then(|| self.seed_ratio_limit.unwrap_or(2.0))
    }

    /// The idle seeding limit of the session in minutes, when set.
    pub fn idle_limit(&self) -> Option<i64> {
        self.idle_seeding_limit_enabled
            .unwrap_or(false)
            .then(|| self.idle_seeding_limit.unwrap_or(30))
    }

    /// The process-wide (upload, download) limits in bytes per second:
    /// the alternative ones while enabled.
    pub fn rate_limits(&self) -> (Option<u64>, Option<u64>) {
        const KB: u64 = 1000;
        if self.alt_speed_enabled.unwrap_or(false) {
            return (
                Some(self.alt_speed_up.unwrap_or(50).saturating_mul(KB)),
                Some(self.alt_speed_down.unwrap_or(50).saturating_mul(KB)),
            );
        }
        let pick = |on: Option<bool>, v: Option<u64>| {
            on.unwrap_or(false)
                .then(|| v.unwrap_or(100).saturating_mul(KB))
        };
        (
            pick(self.speed_limit_up_enabled, self.speed_limit_up),
            pick(self.speed_limit_down_enabled, self.speed_limit_down),
        )
    }
}

/// One torrent read back from the state directory.
pub struct Stored {
    /// The metainfo, or `None` for a magnet link still without metadata.
    pub meta: Option<Arc<Metainfo>>,
    /// The magnet link, while its metadata is not known.
    pub magnet: Option<protocol::magnet::Magnet>,
    pub settings: TorrentSettings,
}

/// Longest magnet link kept.
pub const MAX_MAGNET: usize = 64 * 1024;

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Creates the directory and its parts if needed.
    pub fn open(root: &Path) -> anyhow::Result<StateDir> {
        for sub in ["torrents", "resume"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory itself (`config-dir` in `session-get`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn torrent_path(&self, hex: &str) -> PathBuf {
        self.root.join("torrents").join(format!("{hex}.torrent"))
    }

    fn magnet_path(&self, hex: &str) -> PathBuf {
        self.root.join("torrents").join(format!("{hex}.magnet"))
    }

    /// Writes a new magnet link and its settings (as [`StateDir::add`]).
    pub fn add_magnet(
        &self,
        hex: &str,
        uri: &str,
        settings: &TorrentSettings,
    ) -> anyhow::Result<()> {
        write_synced(&self.magnet_path(hex), uri.as_bytes())?;
        write_synced(&self.settings_path(hex), &encode(settings)?)?;
        sync_dir(&self.root.join("torrents"))
    }

    /// The metadata of a magnet is known: the .torrent replaces the link.
    pub fn magnet_resolved(&self, hex: &str, torrent: &[u8]) -> anyhow::Result<()> {
        write(&self.torrent_path(hex), torrent)?;
        let _ = std::fs::remove_file(self.magnet_path(hex));
        Ok(())
    }

    fn settings_path(&self, hex: &str) -> PathBuf {
        self.root.join("torrents").join(format!("{hex}.json"))
    }

    /// Where the torrent actor keeps this torrent's resume data.
    pub fn resume_path(&self, hex: &str) -> PathBuf {
        self.root.join("resume").join(format!("{hex}.resume"))
    }

    /// Writes a new torrent's metainfo and settings, each atomically
    /// (temp file, fsync, rename), then syncs their directory once for
    /// both renames: three fsyncs, not four. A crash before that sync
    /// loses the add, or keeps the metainfo alone, which loads with
    /// default settings.
    pub fn add(&self, hex: &str, torrent: &[u8], settings: &TorrentSettings) -> anyhow::Result<()> {
        write_synced(&self.torrent_path(hex), torrent)?;
        write_synced(&self.settings_path(hex), &encode(settings)?)?;
        sync_dir(&self.root.join("torrents"))
    }

    /// Rewrites a torrent's settings.
    pub fn save_settings(&self, hex: &str, settings: &TorrentSettings) -> anyhow::Result<()> {
        write(&self.settings_path(hex), &encode(settings)?)
    }

    /// Rewrites several torrents' settings, each atomically, with one sync
    /// of their directory for all. Returns the failures.
    pub fn save_settings_many(&self, all: &[(&str, &TorrentSettings)]) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        for (hex, s) in all {
            if let Err(e) = encode(s).and_then(|j| write_synced(&self.settings_path(hex), &j)) {
                errors.push(e);
            }
        }
        if !all.is_empty()
            && let Err(e) = sync_dir(&self.root.join("torrents"))
        {
            errors.push(e);
        }
        errors
    }

    /// Forgets a torrent: its metainfo, settings, resume data and part file.
    pub fn remove(&self, hex: &str) {
        let resume = self.resume_path(hex);
        for p in [
            self.settings_path(hex),
            self.torrent_path(hex),
            self.magnet_path(hex),
            resume.with_extension("parts"),
            resume,
        ] {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "removing state file");
            }
        }
    }

    /// Drops the resume data so the next start rechecks every piece.
    pub fn forget_resume(&self, hex: &str) {
        let _ = std::fs::remove_file(self.resume_path(hex));
    }

    /// The session settings (defaults when the file is missing).
    pub fn load_session(&self) -> anyhow::Result<SessionSettings> {
        let p = self.root.join("settings.json");
        match read_bounded(&p, MAX_SETTINGS_FILE) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SessionSettings::default()),
            Err(e) => Err(anyhow!("{}: {e}", p.display())),
        }
    }

    /// Saves the session settings.
    pub fn save_session(&self, s: &SessionSettings) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(s).context("encoding session settings")?;
        write(&self.root.join("settings.json"), &json)
    }

    /// Every torrent kept here, and for each one that could not be read,
    /// the file and why.
    pub fn load_all(&self) -> (Vec<Stored>, Vec<String>) {
        let mut stored = Vec::new();
        let mut skipped = Vec::new();
        let dir = self.root.join("torrents");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                skipped.push(format!("{}: {e}", dir.display()));
                return (stored, skipped);
            }
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "torrent" || x == "magnet")
            })
            .collect();
        names.sort();
        // A magnet whose .torrent was written (resolved before a crash
        // removed the link) loads as the torrent.
        let torrents: std::collections::HashSet<PathBuf> = names
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
            .map(|p| p.with_extension(""))
            .collect();
        names.retain(|p| {
            p.extension().is_some_and(|x| x == "torrent")
                || !torrents.contains(&p.with_extension(""))
        });
        for path in names {
            match self.load_one(&path) {
                Ok(s) => stored.push(s),
                Err(e) => skipped.push(format!("{e:#}")),
            }
        }
        stored.sort_by_key(|s| s.settings.id);
        (stored, skipped)
    }

    fn load_one(&self, path: &Path) -> anyhow::Result<Stored> {
        let is_magnet = path.extension().is_some_and(|x| x == "magnet");
        let max = if is_magnet {
            MAX_MAGNET
        } else {
            MAX_TORRENT_FILE
        };
        let bytes =
            read_bounded(path, max as u64).with_context(|| format!("{}", path.display()))?;
        let (meta, magnet, hex) = if is_magnet {
            let uri =
                String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8", path.display()))?;
            let uri = uri.trim().to_owned();
            let m = protocol::magnet::Magnet::parse(&uri)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let hex = m.info_hash.to_hex();
            (None, Some(m), hex)
        } else {
            let meta = Metainfo::from_bytes(&bytes)
                .map_err(|e| anyhow!("{}: not a valid torrent: {e}", path.display()))?;
            let hex = meta.info_hash.to_hex();
            (Some(Arc::new(meta)), None, hex)
        };
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != hex {
            return Err(anyhow!(
                "{}: holds torrent {hex}, not {stem}",
                path.display()
            ));
        }
        let sp = self.settings_path(&hex);
        let settings = match read_bounded(&sp, MAX_SETTINGS_FILE) {
            Ok(b) => serde_json::from_slice::<TorrentSettings>(&b)
                .map_err(|e| anyhow!("{}: {e}", sp.display()))?,
            // Metainfo written, settings not: added just before a crash.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TorrentSettings::default(),
            Err(e) => return Err(anyhow!("{}: {e}", sp.display())),
        };
        Ok(Stored {
            meta,
            magnet,
            settings,
        })
    }
}

fn encode(settings: &TorrentSettings) -> anyhow::Result<Vec<u8>> {
    serde_json::to_vec_pretty(settings).context("encoding settings")
}

/// Temp file, fsync, rename: never a torn file, but the rename is durable
/// only once the directory is synced ([`sync_dir`]).
fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    storage::write_atomic(path, bytes).map_err(|(p, e)| anyhow!("writing {}: {e}", p.display()))
}

/// Reads a file of at most `max` bytes (a longer one is an error, never
/// read whole).
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(buf)
}

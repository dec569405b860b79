//! The Transmission RPC methods: a parsed [`Request`] turned into calls on
//! the daemon actor, and the answers into Transmission's JSON. Holds no
//! torrent state of its own. Every refusal is a `result` string that says
//! what was wrong; nothing here panics on input.

use std::path::PathBuf;

use actors::picker::Priority;
use actors::torrent::{FileProgress, PeerInfo, TorrentState};
use protocol::metainfo::Metainfo;
use protocol::trpc::{Args, Ids, Request, RpcError};
use serde_json::{Map, Value, json};

use super::registry::{Action, Change, DaemonHandle, View};
use super::state::{MAX_TORRENT_FILE, SessionSettings, read_bounded};

/// Transmission 4.0's protocol version, which the tools check.
pub const RPC_VERSION: i64 = 17;
/// Transmission's bytes per "kB" in speed limits (`speed-bytes`).
const SPEED_UNIT: u64 = 1000;

/// What the HTTP layer needs besides the daemon.
pub struct Context {
    pub daemon: DaemonHandle,
    pub session_id: String,
    /// Fired by `session-close`.
    pub stop: tokio_util::sync::CancellationToken,
    /// Fetches `.torrent` URLs of `torrent-add` (bound and proxied as the
    /// session is, with a timeout: see [`url_client`]).
    pub http: reqwest::Client,
}

/// Longest `.torrent` URL accepted.
const MAX_URL: usize = 8 * 1024;
/// Whole-fetch and connect timeouts of a `.torrent` URL.
const URL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const URL_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The client for `.torrent` URLs: through the session's binding and
/// proxy, at most 5 redirects, the timeouts above.
pub fn url_client(binding: &actors::net::Binding) -> Result<reqwest::Client, reqwest::Error> {
    binding
        .http(reqwest::Client::builder().no_proxy())?
        .timeout(URL_TIMEOUT)
        .connect_timeout(URL_CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("actorrent/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A `.torrent` from `url`, at most `MAX_TORRENT_FILE` bytes (a longer
/// one is refused without reading it whole), or why not.
async fn fetch_torrent(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    if url.len() > MAX_URL {
        return Err(format!("URL longer than {MAX_URL} bytes"));
    }
    let what = |err: &reqwest::Error| {
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        if err.is_timeout() {
            msg = format!("timed out after {} s", URL_TIMEOUT.as_secs());
        }
        format!("fetching {}: {msg}", clip(url))
    };
    let mut resp = client.get(url).send().await.map_err(|e| what(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("fetching {}: HTTP {status}", clip(url)));
    }
    let too_long = || {
        format!(
            "fetching {}: longer than {MAX_TORRENT_FILE} bytes",
            clip(url)
        )
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_TORRENT_FILE as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| what(&e))? {
        if body.len() + chunk.len() > MAX_TORRENT_FILE {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A method's arguments: a JSON value, or JSON text written directly
/// (`torrent-get`, whose answer for thousands of torrents would otherwise
/// be built as a tree of values first).
pub enum Reply {
    Value(Value),
    Raw(Vec<u8>),
}

impl From<Value> for Reply {
    fn from(v: Value) -> Reply {
        Reply::Value(v)
    }
}

/// The response body for `req`: always a JSON object with `result`.
pub async fn answer(ctx: &Context, req: Request) -> Vec<u8> {
    let tag = req.tag;
    let (result, arguments) = match dispatch(ctx, &req.method, &req.arguments).await {
        Ok(args) => ("success".to_owned(), args),
        Err(e) => (e, Reply::Value(Value::Object(Map::new()))),
    };
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"arguments\":");
    match arguments {
        Reply::Value(v) => {
            let _ = serde_json::to_writer(&mut out, &v);
        }
        Reply::Raw(raw) => out.extend_from_slice(&raw),
    }
    out.extend_from_slice(b",\"result\":");
    let _ = serde_json::to_writer(&mut out, &result);
    if let Some(t) = tag {
        out.extend_from_slice(format!(",\"tag\":{t}").as_bytes());
    }
    out.push(b'}');
    out
}

/// The response to a body that did not parse.
pub fn refusal(e: &RpcError) -> Value {
    json!({ "result": e.to_string(), "arguments": {} })
}

fn e(err: RpcError) -> String {
    err.to_string()
}

async fn dispatch(ctx: &Context, method: &str, args: &Args) -> Result<Reply, String> {
    if method == "torrent-get" {
        return torrent_get(&ctx.daemon, args).await.map(Reply::Raw);
    }
    value_method(ctx, method, args).await.map(Reply::Value)
}

async fn value_method(ctx: &Context, method: &str, args: &Args) -> Result<Value, String> {
    let d = &ctx.daemon;
    if method == "torrent-add" {
        return torrent_add(d, &ctx.http, args).await;
    }
    match method {
        "session-get" => session_get(ctx, args).await,
        "session-set" => session_set(d, args).await,
        "session-stats" => session_stats(d).await,
        "session-close" => {
            ctx.stop.cancel();
            Ok(json!({}))
        }
        "torrent-start" | "torrent-start-now" => act(d, args, Action::Start).await,
        "torrent-stop" => act(d, args, Action::Stop).await,
        "torrent-verify" => act(d, args, Action::Verify).await,
        "torrent-remove" => {
            let delete_data = args.bool("delete-local-data").map_err(e)?.unwrap_or(false);
            act(d, args, Action::Remove { delete_data }).await
        }
        "torrent-set" => torrent_set(d, args).await,
        // Announces are the tracker session's to schedule; queues are not
        // built (every torrent runs): accepted, nothing to do.
        "torrent-reannounce" | "queue-move-top" | "queue-move-up" | "queue-move-down"
        | "queue-move-bottom" => {
            args.ids().map_err(e)?;
            Ok(json!({}))
        }
        "torrent-set-location" => set_location(d, args).await,
        "torrent-rename-path" => Err("torrent-rename-path is not supported".into()),
        "free-space" => free_space(args),
        // Reachability cannot be tested from inside: say so honestly.
        "port-test" => Ok(json!({ "port-is-open": false })),
        "blocklist-update" => Err("blocklists are not supported".into()),
        other => Err(format!("method name not recognized: {}", clip(other))),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn version() -> String {
    format!("4.0.6 (actorrent {})", env!("CARGO_PKG_VERSION"))
}

async fn session_get(ctx: &Context, args: &Args) -> Result<Value, String> {
    let s = ctx.daemon.session().await?;
    let set = &s.settings;
    let dir = s.download_dir.display().to_string();
    let free = free_bytes(&s.download_dir).unwrap_or(-1);
    let all = json!({
        "alt-speed-down": set.alt_speed_down.unwrap_or(50),
        "alt-speed-enabled": set.alt_speed_enabled.unwrap_or(false), "alt-speed-time-begin": 540,
        "alt-speed-time-day": 127, "alt-speed-time-enabled": false, "alt-speed-time-end": 1020,
        "alt-speed-up": set.alt_speed_up.unwrap_or(50), "blocklist-enabled": false, "blocklist-size": 0, "blocklist-url": "",
        "cache-size-mb": 4, "config-dir": s.config_dir.display().to_string(),
        "dht-enabled": false, "download-dir": dir, "download-dir-free-space": free,
        "download-queue-enabled": false, "download-queue-size": 5, "encryption": "preferred",
        "idle-seeding-limit": set.idle_seeding_limit.unwrap_or(30),
        "idle-seeding-limit-enabled": set.idle_seeding_limit_enabled.unwrap_or(false),
        "incomplete-dir": dir, "incomplete-dir-enabled": false, "lpd-enabled": false,
        "peer-limit-global": s.peer_limits.0, "peer-limit-per-torrent": s.peer_limits.1, "peer-port": s.peer_port,
        "peer-port-random-on-start": false, "pex-enabled": false,
        "port-forwarding-enabled": false, "queue-stalled-enabled": false,
        "queue-stalled-minutes": 30, "rename-partial-files": false,
        "rpc-version": RPC_VERSION, "rpc-version-minimum": 14, "rpc-version-semver": "5.3.0",
        "script-torrent-done-enabled": false, "script-torrent-done-filename": "",
        "seed-queue-enabled": false, "seed-queue-size": 10, "seedRatioLimit": set.seed_ratio_limit.unwrap_or(2.0),
        "seedRatioLimited": set.seed_ratio_limited.unwrap_or(false), "session-id": ctx.session_id,
        "speed-limit-down": set.speed_limit_down.unwrap_or(100),
        "speed-limit-down-enabled": set.speed_limit_down_enabled.unwrap_or(false),
        "speed-limit-up": set.speed_limit_up.unwrap_or(100),
        "speed-limit-up-enabled": set.speed_limit_up_enabled.unwrap_or(false),
        "start-added-torrents": s.start_added_torrents, "trash-original-torrent-files": false,
        "units": {
            "speed-units": ["kB/s", "MB/s", "GB/s", "TB/s"], "speed-bytes": SPEED_UNIT,
            "size-units": ["kB", "MB", "GB", "TB"], "size-bytes": 1000,
            "memory-units": ["KiB", "MiB", "GiB", "TiB"], "memory-bytes": 1024
        },
        "utp-enabled": false, "version": version(),
    });
    // `fields` (rpc-version 16+) narrows the answer.
    match args.strings("fields").map_err(e)? {
        Some(fields) if !fields.is_empty() => {
            let mut out = Map::new();
            for f in fields {
                if let Some(v) = all.get(f) {
                    out.insert(f.to_owned(), v.clone());
                }
            }
            Ok(Value::Object(out))
        }
        _ => Ok(all),
    }
}

async fn session_set(d: &DaemonHandle, args: &Args) -> Result<Value, String> {
    let mut s = SessionSettings::default();
    if let Some(dir) = args.str("download-dir").map_err(e)? {
        let p = PathBuf::from(dir);
        if !p.is_absolute() {
            return Err(format!("download-dir {dir} is not an absolute path"));
        }
        s.download_dir = Some(p);
    }
    s.start_added_torrents = args.bool("start-added-torrents").map_err(e)?;
    s.seed_ratio_limit = ratio_arg(args, "seedRatioLimit")?;
    s.seed_ratio_limited = args.bool("seedRatioLimited").map_err(e)?;
    s.idle_seeding_limit = int_in(args, "idle-seeding-limit", 0, MAX_IDLE_MINUTES)?;
    s.idle_seeding_limit_enabled = args.bool("idle-seeding-limit-enabled").map_err(e)?;
    let speed = |key: &str| int_in(args, key, 0, MAX_SPEED_KB).map(|v| v.map(|v| v as u64));
    s.speed_limit_up = speed("speed-limit-up")?;
    s.speed_limit_up_enabled = args.bool("speed-limit-up-enabled").map_err(e)?;
    s.speed_limit_down = speed("speed-limit-down")?;
    s.speed_limit_down_enabled = args.bool("speed-limit-down-enabled").map_err(e)?;
    s.alt_speed_up = speed("alt-speed-up")?;
    s.alt_speed_down = speed("alt-speed-down")?;
    s.alt_speed_enabled = args.bool("alt-speed-enabled").map_err(e)?;
    let peers = |key: &str| int_in(args, key, 1, 65_535).map(|v| v.map(|v| v as u64));
    s.peer_limit_global = peers("peer-limit-global")?;
    s.peer_limit_per_torrent = peers("peer-limit-per-torrent")?;
    if let Some(f) = args.str("log-filter").map_err(e)? {
        // Checked here so a bad one refuses the call.
        if f.len() > 1024 {
            return Err("log-filter longer than 1024 bytes".into());
        }
        crate::check_level(f).map_err(|err| format!("log-filter: {err}"))?;
        tracing_subscriber::EnvFilter::try_new(f)
            .map_err(|err| format!("log-filter `{}`: {err}", clip(f)))?;
        s.log_filter = Some(f.to_owned());
    }
    if args.bool("alt-speed-time-enabled").map_err(e)? == Some(true) {
        return Err("alt-speed-time-enabled: the alternative speed schedule is not supported; turn alt speeds on and off with alt-speed-enabled".into());
    }
    d.session_set(s).await?;
    Ok(json!({}))
}

/// Longest idle seeding limit, minutes (Transmission keeps a u16).
const MAX_IDLE_MINUTES: i64 = 65_535;
/// Highest speed limit, kB/s (about 4 GB/s: a u32 of bytes per second).
const MAX_SPEED_KB: i64 = 4_000_000;

/// An integer argument within `lo..=hi`.
fn int_in(args: &Args, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, String> {
    match args.int(key).map_err(e)? {
        Some(v) if !(lo..=hi).contains(&v) => {
            Err(format!("argument \"{key}\": {v} is not within {lo}..={hi}"))
        }
        v => Ok(v),
    }
}

/// A seed ratio: finite, not negative, at most 10^6.
fn ratio_arg(args: &Args, key: &str) -> Result<Option<f64>, String> {
    match args.float(key).map_err(e)? {
        Some(v) if !(v.is_finite() && (0.0..=1e6).contains(&v)) => Err(format!(
            "argument \"{key}\": {v} is not a ratio within 0..=1000000"
        )),
        v => Ok(v),
    }
}

async fn session_stats(d: &DaemonHandle) -> Result<Value, String> {
    let s = d.session().await?;
    let current = json!({
        "uploadedBytes": s.uploaded, "downloadedBytes": s.downloaded,
        "filesAdded": 0, "sessionCount": 1, "secondsActive": s.seconds_active,
    });
    Ok(json!({
        "activeTorrentCount": s.active, "pausedTorrentCount": s.paused,
        "torrentCount": s.torrents, "downloadSpeed": s.rate_down, "uploadSpeed": s.rate_up,
        "cumulative-stats": current, "current-stats": current,
    }))
}

async fn torrent_add(
    d: &DaemonHandle,
    http: &reqwest::Client,
    args: &Args,
) -> Result<Value, String> {
    let bytes = match (
        args.str("metainfo").map_err(e)?,
        args.str("filename").map_err(e)?,
    ) {
        (Some(b64), _) => protocol::trpc::decode_base64(b64, MAX_TORRENT_FILE).map_err(e)?,
        (None, Some(name)) if name.starts_with("magnet:") => {
            return torrent_add_magnet(d, args, name).await;
        }
        (None, Some(name)) if name.starts_with("http://") || name.starts_with("https://") => {
            fetch_torrent(http, name).await?
        }
        (None, Some(name)) => read_bounded(std::path::Path::new(name), MAX_TORRENT_FILE as u64)
            .map_err(|err| format!("reading {}: {err}", clip(name)))?,
        (None, None) => return Err("torrent-add needs \"filename\" or \"metainfo\"".into()),
    };
    let meta = Metainfo::from_bytes(&bytes)
        .map_err(|err| format!("invalid or corrupt torrent file: {err}"))?;
    let dir = args.str("download-dir").map_err(e)?.map(PathBuf::from);
    let paused = args.bool("paused").map_err(e)?;
    let labels = args
        .strings("labels")
        .map_err(e)?
        .map(|l| l.into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    let added = d.add(bytes, meta, dir, paused, labels).await?;
    let key = if added.duplicate {
        "torrent-duplicate"
    } else {
        "torrent-added"
    };
    Ok(json!({ key: { "id": added.id, "name": added.name, "hashString": added.hash } }))
}

/// Longest magnet link accepted.
const MAX_MAGNET: usize = super::state::MAX_MAGNET;

async fn torrent_add_magnet(d: &DaemonHandle, args: &Args, uri: &str) -> Result<Value, String> {
    if uri.len() > MAX_MAGNET {
        return Err(format!("magnet link longer than {MAX_MAGNET} bytes"));
    }
    let link = protocol::magnet::Magnet::parse(uri)
        .map_err(|err| format!("invalid magnet link: {err}"))?;
    let dir = args.str("download-dir").map_err(e)?.map(PathBuf::from);
    let paused = args.bool("paused").map_err(e)?;
    let labels = args
        .strings("labels")
        .map_err(e)?
        .map(|l| l.into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    let added = d
        .add_magnet(uri.to_owned(), link, dir, paused, labels)
        .await?;
    let key = if added.duplicate {
        "torrent-duplicate"
    } else {
        "torrent-added"
    };
    Ok(json!({ key: { "id": added.id, "name": added.name, "hashString": added.hash } }))
}

async fn act(d: &DaemonHandle, args: &Args, action: Action) -> Result<Value, String> {
    let ids = args.ids().map_err(e)?;
    d.act(ids, action).await?;
    Ok(json!({}))
}

async fn torrent_set(d: &DaemonHandle, args: &Args) -> Result<Value, String> {
    let ids = args.ids().map_err(e)?;
    // File indices are checked against each torrent's file count; the
    // smallest count among the targets bounds them.
    let views = d.get(ids.clone()).await?;
    let files = views
        .iter()
        .map(|v| v.meta.info.files.iter().filter(|f| !f.padding).count())
        .min()
        .unwrap_or(0);
    let mut c = Change::default();
    for (key, want) in [("files-wanted", true), ("files-unwanted", false)] {
        if let Some(list) = args.file_indices(key, files).map_err(e)? {
            c.wanted.extend(list.into_iter().map(|i| (i, want)));
        }
    }
    for (key, level) in [
        ("priority-high", Priority::High),
        ("priority-normal", Priority::Normal),
        ("priority-low", Priority::Low),
    ] {
        if let Some(list) = args.file_indices(key, files).map_err(e)? {
            c.priority.extend(list.into_iter().map(|i| (i, level)));
        }
    }
    let limit = |value: &str, flag: &str| -> Result<Option<Option<u64>>, String> {
        let v = args.int(value).map_err(e)?;
        let on = args.bool(flag).map_err(e)?;
        if let Some(n) = v
            && n < 0
        {
            return Err(format!("argument \"{value}\": negative"));
        }
        Ok(match (v, on) {
            (_, Some(false)) => Some(None),
            (Some(n), _) => Some(Some((n as u64).saturating_mul(SPEED_UNIT)).filter(|b| *b > 0)),
            (None, _) => None,
        })
    };
    c.upload_limit = limit("uploadLimit", "uploadLimited")?;
    c.download_limit = limit("downloadLimit", "downloadLimited")?;
    c.labels = args
        .strings("labels")
        .map_err(e)?
        .map(|l| l.into_iter().map(str::to_owned).collect());
    c.seed_ratio_limit = ratio_arg(args, "seedRatioLimit")?;
    c.seed_ratio_mode = int_in(args, "seedRatioMode", 0, 2)?;
    c.seed_idle_limit = int_in(args, "seedIdleLimit", 0, MAX_IDLE_MINUTES)?;
    c.seed_idle_mode = int_in(args, "seedIdleMode", 0, 2)?;
    for unsupported in [
        "location",
        "trackerAdd",
        "trackerRemove",
        "trackerReplace",
        "trackerList",
    ] {
        if args.has(unsupported) {
            return Err(format!("torrent-set: \"{unsupported}\" is not supported"));
        }
    }
    d.set(ids, c).await?;
    Ok(json!({}))
}

/// `torrent-set-location`: with `move: true` (`transmission-remote
/// --move`) the data moves there; with `move: false` (`--find`) it is
/// already there. Either way each torrent continues from its resume data.
async fn set_location(d: &DaemonHandle, args: &Args) -> Result<Value, String> {
    let ids = args.ids().map_err(e)?;
    let dir = args
        .str("location")
        .map_err(e)?
        .ok_or("torrent-set-location needs \"location\"")?;
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(format!(
            "location {} is not an absolute path",
            dir.display()
        ));
    }
    if args.bool("move").map_err(e)?.unwrap_or(false) {
        d.relocate(ids, dir).await?;
        return Ok(json!({}));
    }
    d.set(
        ids,
        Change {
            location: Some(dir),
            ..Change::default()
        },
    )
    .await?;
    Ok(json!({}))
}

fn free_space(args: &Args) -> Result<Value, String> {
    let path = args
        .str("path")
        .map_err(e)?
        .ok_or("free-space needs \"path\"")?;
    let free =
        free_bytes(std::path::Path::new(path)).map_err(|err| format!("{}: {err}", clip(path)))?;
    Ok(json!({ "path": path, "size-bytes": free }))
}

fn free_bytes(path: &std::path::Path) -> Result<i64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| "NUL in path")?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statvfs.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64) as i64)
}

/// Fields that need each torrent's per-file progress (a round trip to its
/// actor).
const FILE_FIELDS: [&str; 4] = ["files", "fileStats", "priorities", "wanted"];

async fn torrent_get(d: &DaemonHandle, args: &Args) -> Result<Vec<u8>, String> {
    let ids = args.ids().map_err(e)?;
    let fields: Vec<String> = args
        .strings("fields")
        .map_err(e)?
        .ok_or("torrent-get needs \"fields\"")?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let table = args.str("format").map_err(e)? == Some("table");
    let recent = ids == Ids::RecentlyActive;
    let views = d.get(ids).await?;
    let want_files = fields.iter().any(|f| FILE_FIELDS.contains(&f.as_str()));
    let want_peers = fields.iter().any(|f| f == "peers");
    // Each field's name written once, escaped, for the object form.
    let keys: Vec<Vec<u8>> = fields
        .iter()
        .map(|f| serde_json::to_vec(f).unwrap_or_default())
        .collect();
    let mut out = Vec::with_capacity(256 + views.len() * 64 * fields.len().max(1));
    out.extend_from_slice(b"{\"torrents\":[");
    if table {
        let _ = serde_json::to_writer(&mut out, &fields);
    }
    for (i, v) in views.iter().enumerate() {
        let progress = if want_files {
            file_progress(v).await
        } else {
            None
        };
        let peers = match &v.handle {
            Some(h) if want_peers => h.peers(MAX_PEERS_LISTED).await.unwrap_or_default(),
            _ => Vec::new(),
        };
        if i > 0 || table {
            out.push(b',');
        }
        out.push(if table { b'[' } else { b'{' });
        render(
            v,
            &fields,
            &keys,
            table,
            progress.as_ref(),
            &peers,
            &mut out,
        );
        out.push(if table { b']' } else { b'}' });
    }
    out.push(b']');
    if recent {
        out.extend_from_slice(b",\"removed\":[]");
    }
    out.push(b'}');
    Ok(out)
}

/// Most peers listed per torrent in `peers` (the busiest first), so an
/// answer stays small whatever the swarm.
const MAX_PEERS_LISTED: usize = 200;

/// A client's name from its peer id (Azureus style `-XXvvvv-`, as
/// Transmission shows it), or "" when it follows no known convention.
/// Only ASCII letters and digits of the id are used.
fn client_name(id: Option<&[u8; 20]>) -> String {
    let Some(id) = id else {
        return String::new();
    };
    if id[0] != b'-' || id[7] != b'-' || !id[1..7].iter().all(u8::is_ascii_alphanumeric) {
        return String::new();
    }
    let code = [id[1], id[2]];
    let name = match &code {
        b"AR" => "actorrent",
        b"TR" => "Transmission",
        b"LT" => "libtorrent (Rasterbar)",
        b"lt" => "libTorrent (Rakshasa)",
        b"qB" => "qBittorrent",
        b"DE" => "Deluge",
        b"UT" => "\u{b5}Torrent",
        b"UM" => "\u{b5}Torrent Mac",
        b"BT" => "BitTorrent",
        b"AZ" => "Azureus / Vuze",
        b"BI" => "BiglyBT",
        b"KT" => "KTorrent",
        b"A2" => "aria2",
        b"FD" => "Free Download Manager",
        b"WW" => "WebTorrent",
        b"LW" => "WebTorrent Desktop",
        b"TX" => "Tixati",
        b"RT" => "rTorrent",
        _ => {
            return format!(
                "{}{} {}",
                code[0] as char,
                code[1] as char,
                peer_version(&id[3..7])
            );
        }
    };
    format!("{name} {}", peer_version(&id[3..7]))
}

/// `vvvv` of an Azureus-style id as dotted digits.
fn peer_version(v: &[u8]) -> String {
    v.iter()
        .map(|c| (*c as char).to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// Transmission's peer flags: D/d downloading from it / interested, U/u
/// uploading to it / it is interested, K it unchokes us unasked, ? we
/// unchoke it unasked, E encrypted, I it dialled us.
fn flag_str(p: &PeerInfo) -> String {
    let mut f = String::new();
    if p.we_interested && !p.peer_choking {
        f.push('D');
    } else if p.we_interested {
        f.push('d');
    }
    if p.peer_interested && !p.we_choking {
        f.push('U');
    } else if p.peer_interested {
        f.push('u');
    }
    if !p.peer_choking && !p.we_interested {
        f.push('K');
    }
    if !p.we_choking && !p.peer_interested {
        f.push('?');
    }
    if p.encrypted {
        f.push('E');
    }
    if p.incoming {
        f.push('I');
    }
    f
}

fn peer_json(p: &PeerInfo) -> Value {
    json!({
        "address": p.addr.ip().to_string(),
        "port": p.addr.port(),
        "clientName": client_name(p.peer_id.as_ref()),
        "clientIsChoked": p.peer_choking,
        "clientIsInterested": p.we_interested,
        "peerIsChoked": p.we_choking,
        "peerIsInterested": p.peer_interested,
        "isDownloadingFrom": p.we_interested && !p.peer_choking,
        "isUploadingTo": p.peer_interested && !p.we_choking,
        "isEncrypted": p.encrypted,
        "isIncoming": p.incoming,
        "isUTP": false,
        "flagStr": flag_str(p),
        "progress": p.progress,
        "rateToClient": p.rate_to_us,
        "rateToPeer": p.rate_to_peer,
    })
}

/// Per-file progress from the torrent actor, or worked out from the stats
/// of a stopped torrent (whole files only when complete).
async fn file_progress(v: &View) -> Option<FileProgress> {
    if let Some(h) = &v.handle
        && let Ok(p) = h.progress().await
    {
        return Some(p);
    }
    let files: Vec<_> = v.meta.info.files.iter().filter(|f| !f.padding).collect();
    let priorities = v
        .settings
        .priorities
        .clone()
        .filter(|p| p.len() == files.len())
        .unwrap_or_else(|| vec![Priority::Normal; files.len()]);
    let complete = v.stats.pieces_done == v.stats.pieces_total;
    Some(FileProgress {
        done: files
            .iter()
            .map(|f| if complete { f.length } else { 0 })
            .collect(),
        priorities,
    })
}

/// Transmission's status numbers.
fn status(v: &View) -> i64 {
    if !v.running {
        return 0;
    }
    match v.stats.state {
        TorrentState::Checking => 2,
        TorrentState::Downloading => 4,
        TorrentState::Seeding | TorrentState::Complete => 6,
        TorrentState::Error(_) => 0,
    }
}

fn error_string(v: &View) -> String {
    match &v.stats.state {
        TorrentState::Error(e) => e.clone(),
        _ => String::new(),
    }
}

fn file_name(meta: &Metainfo, f: &protocol::metainfo::FileEntry) -> String {
    if meta.info.multi_file {
        format!("{}/{}", meta.info.name, f.path.join("/"))
    } else {
        meta.info.name.clone()
    }
}

fn magnet(v: &View) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let mut m = format!(
        "magnet:?xt=urn:btih:{}&dn={}",
        v.hash,
        enc(&v.meta.info.name)
    );
    for t in v.meta.trackers.iter().flatten() {
        m.push_str("&tr=");
        m.push_str(&enc(t));
    }
    m
}

fn level(p: Priority) -> i64 {
    match p {
        Priority::High => 1,
        Priority::Low => -1,
        Priority::Normal | Priority::Skip => 0,
    }
}

/// Writes one torrent's `fields` into `out`: as `"key":value` pairs
/// (unknown names left out, as Transmission does) or, for the table form,
/// as values in order (`null` for unknown names).
fn render(
    v: &View,
    fields: &[String],
    keys: &[Vec<u8>],
    table: bool,
    progress: Option<&FileProgress>,
    peers: &[PeerInfo],
    out: &mut Vec<u8>,
) {
    let s = &v.stats;
    let info = &v.meta.info;
    let left = s.wanted_bytes.saturating_sub(s.done_bytes);
    // Before a torrent has read its resume data and selection (no report
    // yet, or still checking) `wanted_bytes` is 0, which is not "nothing
    // wanted" (Transmission's 100 %): a client waiting for 1.0 would see a
    // torrent that has not started as done.
    let known = s.pieces_total != 0 && !matches!(s.state, TorrentState::Checking);
    let percent = if !known {
        0.0
    } else if s.wanted_bytes == 0 {
        1.0
    } else {
        s.done_bytes as f64 / s.wanted_bytes as f64
    };
    let have_valid = super::registry::have_valid(&v.meta, s.pieces_done);
    let ratio = super::registry::ratio(s.bytes_up, s.bytes_down, have_valid);
    let eta = if left == 0 || !v.running {
        -1
    } else {
        left.checked_div(s.rate_down).map_or(-2, |t| t as i64)
    };
    let user_files: Vec<_> = info.files.iter().filter(|f| !f.padding).collect();
    let kb = |b: Option<u64>| b.map_or(100, |b| b / SPEED_UNIT);
    let mut first = true;
    for (f, key) in fields.iter().zip(keys) {
        let val = match f.as_str() {
            "id" => json!(v.id),
            "hashString" => json!(v.hash),
            "name" => json!(info.name),
            "downloadDir" => json!(v.settings.download_dir.display().to_string()),
            "totalSize" => json!(info.total_length),
            "sizeWhenDone" => json!(s.wanted_bytes),
            "leftUntilDone" => json!(left),
            "desiredAvailable" => json!(left),
            "percentDone" => json!(percent),
            "percentComplete" => json!(if info.total_length == 0 {
                1.0
            } else {
                have_valid as f64 / info.total_length as f64
            }),
            "haveValid" => json!(have_valid),
            "haveUnchecked" => json!(0),
            "isFinished" => json!(v.settings.finished),
            "isStalled" => json!(false),
            "isPrivate" => json!(info.private),
            "eta" | "etaIdle" => json!(eta),
            "status" => json!(status(v)),
            "error" => json!(if error_string(v).is_empty() { 0 } else { 3 }),
            "errorString" => json!(error_string(v)),
            "rateDownload" => json!(s.rate_down),
            "rateUpload" => json!(s.rate_up),
            "uploadedEver" => json!(s.bytes_up),
            "downloadedEver" => json!(s.bytes_down),
            "corruptEver" => json!(s.hash_failures * u64::from(info.piece_length)),
            "uploadRatio" => json!(ratio),
            "secondsDownloading" | "secondsSeeding" => json!(0),
            "seedRatioLimit" => json!(v.settings.seed_ratio_limit),
            "seedRatioMode" => json!(v.settings.seed_ratio_mode),
            "seedIdleLimit" => json!(v.settings.seed_idle_limit),
            "seedIdleMode" => json!(v.settings.seed_idle_mode),
            "fileCount" => json!(user_files.len()),
            "files" => {
                let done = progress.map(|p| p.done.as_slice()).unwrap_or(&[]);
                json!(
                    user_files
                        .iter()
                        .enumerate()
                        .map(|(i, fe)| json!({
                            "name": file_name(&v.meta, fe),
                            "length": fe.length,
                            "bytesCompleted": done.get(i).copied().unwrap_or(0),
                        }))
                        .collect::<Vec<_>>()
                )
            }
            "fileStats" => {
                let (done, prio) = progress.map_or((&[][..], &[][..]), |p| {
                    (p.done.as_slice(), p.priorities.as_slice())
                });
                json!(
                    (0..user_files.len())
                        .map(|i| {
                            let p = prio.get(i).copied().unwrap_or(Priority::Normal);
                            json!({ "bytesCompleted": done.get(i).copied().unwrap_or(0),
                            "wanted": p != Priority::Skip, "priority": level(p) })
                        })
                        .collect::<Vec<_>>()
                )
            }
            "priorities" => {
                let prio = progress.map(|p| p.priorities.as_slice()).unwrap_or(&[]);
                json!(
                    (0..user_files.len())
                        .map(|i| level(prio.get(i).copied().unwrap_or(Priority::Normal)))
                        .collect::<Vec<_>>()
                )
            }
            "wanted" => {
                let prio = progress.map(|p| p.priorities.as_slice()).unwrap_or(&[]);
                json!(
                    (0..user_files.len())
                        .map(|i| prio.get(i).is_none_or(|p| *p != Priority::Skip))
                        .collect::<Vec<_>>()
                )
            }
            "peers" => Value::Array(peers.iter().map(peer_json).collect()),
            "peersConnected" => json!(s.peers),
            "peersGettingFromUs" => json!(if s.rate_up > 0 { s.peers } else { 0 }),
            "peersSendingToUs" => json!(if s.rate_down > 0 { s.peers } else { 0 }),
            "peersFrom" => json!({ "fromCache": 0, "fromDht": 0, "fromIncoming": 0, "fromLpd": 0,
                                   "fromLtep": 0, "fromPex": 0, "fromTracker": 0 }),
            "webseedsSendingToUs" => json!(0),
            "webseeds" => json!(v.meta.url_list),
            "maxConnectedPeers" => json!(50),
            "trackers" => json!(
                v.meta
                    .trackers
                    .iter()
                    .enumerate()
                    .flat_map(|(tier, urls)| { urls.iter().map(move |u| (tier, u)) })
                    .enumerate()
                    .map(|(id, (tier, u))| json!({
                        "announce": u, "id": id, "scrape": "", "tier": tier,
                    }))
                    .collect::<Vec<_>>()
            ),
            "trackerStats" => json!(v.meta.trackers.iter().enumerate().flat_map(|(tier, urls)| {
                urls.iter().map(move |u| (tier, u))
            }).enumerate().map(|(id, (tier, u))| json!({
                "announce": u, "id": id, "tier": tier, "host": u, "scrape": "",
                "announceState": 0, "downloadCount": -1, "hasAnnounced": false, "hasScraped": false,
                "isBackup": false, "lastAnnouncePeerCount": 0, "lastAnnounceResult": "",
                "lastAnnounceStartTime": 0, "lastAnnounceSucceeded": false, "lastAnnounceTime": 0,
                "lastAnnounceTimedOut": false, "lastScrapeResult": "", "lastScrapeStartTime": 0,
                "lastScrapeSucceeded": false, "lastScrapeTime": 0, "lastScrapeTimedOut": false,
                "leecherCount": -1, "nextAnnounceTime": 0, "nextScrapeTime": 0, "scrapeState": 0,
                "seederCount": -1,
            })).collect::<Vec<_>>()),
            "labels" => json!(v.settings.labels),
            "addedDate" => json!(v.settings.added_date),
            "doneDate" => json!(v.settings.done_date),
            "activityDate" => json!(v.activity_date),
            "startDate" | "editDate" | "manualAnnounceTime" => json!(0),
            "dateCreated" => json!(v.meta.creation_date.unwrap_or(0)),
            "queuePosition" => json!(v.id - 1),
            "metadataPercentComplete" => json!(v.metadata.unwrap_or(1.0)),
            "magnetLink" => json!(magnet(v)),
            "comment" => json!(v.meta.comment.clone().unwrap_or_default()),
            "creator" => json!(v.meta.created_by.clone().unwrap_or_default()),
            "pieceCount" => json!(info.piece_count()),
            "pieceSize" => json!(info.piece_length),
            "recheckProgress" => json!(if matches!(s.state, TorrentState::Checking) {
                0.0
            } else {
                1.0
            }),
            "downloadLimit" => json!(kb(v.settings.download_limit)),
            "downloadLimited" => json!(v.settings.download_limit.is_some()),
            "uploadLimit" => json!(kb(v.settings.upload_limit)),
            "uploadLimited" => json!(v.settings.upload_limit.is_some()),
            "honorsSessionLimits" => json!(true),
            "bandwidthPriority" => json!(0),
            "torrentFile" => json!(""),
            "primary-mime-type" => json!("application/octet-stream"),
            _ if table => Value::Null,
            _ => continue,
        };
        if !first {
            out.push(b',');
        }
        first = false;
        if !table {
            out.extend_from_slice(key);
            out.push(b':');
        }
        let _ = serde_json::to_writer(&mut *out, &val);
    }
}

//! Where the client's configuration comes from: the defaults of
//! [`ClientConfig`], then a TOML file (`--config`), then environment
//! variables, then command-line flags (applied by each command). Also the
//! `actorrent config` command that prints it.
//!
//! Environment rule: every key of the file has a variable named
//! `ACTORRENT_` + its dotted path with dots replaced by `_`, upper-cased:
//! `pipeline.max_pipeline` is `ACTORRENT_PIPELINE_MAX_PIPELINE`,
//! `disk.writer.batch_limit` is `ACTORRENT_DISK_WRITER_BATCH_LIMIT`,
//! top-level `peer_mailbox` is `ACTORRENT_PEER_MAILBOX`. The value is read
//! as a TOML value (`4`, `"sequential"`, `rarest_first` also works as a bare
//! word). The names are derived from the keys, not parsed, so underscores
//! inside key names are not ambiguous. A variable that starts with a
//! section's prefix (`ACTORRENT_PIPELINE_`) but names no key is an error;
//! other `ACTORRENT_*` variables are left alone (tests use some).

use std::collections::BTreeMap;
use std::path::Path;

use actors::config::ClientConfig;
use anyhow::{Context, anyhow};

use crate::Failure;

/// `actorrent config`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["print_default", "print"])))]
pub struct ConfigArgs {
    /// Print the defaults as TOML (a valid config file).
    #[arg(long)]
    pub print_default: bool,
    /// Print the configuration in effect (defaults, then `--config`, then
    /// environment) as TOML.
    #[arg(long)]
    pub print: bool,
}

pub fn run(args: &ConfigArgs, file: Option<&Path>) -> Result<(), Failure> {
    let config = if args.print_default {
        ClientConfig::default()
    } else {
        load(file)?
    };
    print!("{}", to_toml(&config).map_err(Failure::Runtime)?);
    Ok(())
}

/// The config as a TOML document.
pub fn to_toml(config: &ClientConfig) -> anyhow::Result<String> {
    toml::to_string(config).context("writing the config as TOML")
}

/// Reads a config from TOML text alone (no environment), naming the key of
/// any unknown field or bad value.
#[cfg(test)]
fn from_toml(text: &str) -> anyhow::Result<ClientConfig> {
    let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("{}", e.message()))?;
    from_table(table, &BTreeMap::new())
}

/// Defaults, then the file at `path` if given, then the environment.
pub fn load(path: Option<&Path>) -> Result<ClientConfig, Failure> {
    let mut table = match path {
        None => toml::Table::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))
                .map_err(Failure::BadInput)?;
            toml::from_str(&text)
                .map_err(|e| anyhow!("config {}: {}", p.display(), e.message().trim()))
                .map_err(Failure::BadInput)?
        }
    };
    let from_env = apply_env(
        &mut table,
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
    .map_err(Failure::BadInput)?;
    from_table(table, &from_env).map_err(|e| match path {
        Some(p) => Failure::BadInput(e.context(format!("config {}", p.display()))),
        None => Failure::BadInput(e),
    })
}

/// Deserializes, naming the key (and the environment variable that set it,
/// if one did) in errors.
fn from_table(
    table: toml::Table,
    from_env: &BTreeMap<String, String>,
) -> anyhow::Result<ClientConfig> {
    let config: ClientConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| {
            let key = e.path().to_string();
            let inner = e.inner().message().trim().to_string();
            match from_env.get(&key) {
                Some(var) => anyhow!("key `{key}` (from {var}): {inner}"),
                None => anyhow!("key `{key}`: {inner}"),
            }
        })?;
    validate(&config)?;
    Ok(config)
}

/// Values that parse but cannot work (a zero-capacity mailbox would panic
/// tokio, inverted watermarks would never resume).
fn validate(c: &ClientConfig) -> anyhow::Result<()> {
    let nonzero = [
        ("session_mailbox", c.session_mailbox),
        ("torrent_mailbox", c.torrent_mailbox),
        ("peer_mailbox", c.peer_mailbox),
        ("hash_queue", c.hash_queue),
        ("max_peers_per_torrent", c.max_peers_per_torrent),
        ("max_connections", c.max_connections),
        ("max_known_addrs_per_torrent", c.max_known_addrs_per_torrent),
        ("read_buffer", c.read_buffer),
        ("max_pending_handshakes", c.max_pending_handshakes),
        ("disk.writer.queue_capacity", c.disk.writer.queue_capacity),
        ("disk.writer.batch_limit", c.disk.writer.batch_limit),
        ("disk.writer.max_iovecs", c.disk.writer.max_iovecs),
        ("disk.readers_per_device", c.disk.readers_per_device),
        ("disk.reader_queue_capacity", c.disk.reader_queue_capacity),
        ("disk.max_open_files", c.disk.max_open_files),
        ("recheck.read_size", c.recheck.read_size),
        ("pipeline.block_size", c.pipeline.block_size as usize),
        ("pipeline.max_pipeline", c.pipeline.max_pipeline as usize),
        ("pipeline.rate_buckets", c.pipeline.rate_buckets as usize),
        ("tracker.mailbox_capacity", c.tracker.mailbox_capacity),
        (
            "tracker.max_concurrent_announces",
            c.tracker.max_concurrent_announces,
        ),
        (
            "tracker.max_in_flight_per_tracker",
            c.tracker.max_in_flight_per_tracker,
        ),
        (
            "tracker.dns.mailbox_capacity",
            c.tracker.dns.mailbox_capacity,
        ),
        ("stream.max_readers", c.stream.max_readers),
        ("stream.chunk_size", c.stream.chunk_size),
        ("stream.http_max_connections", c.stream.http_max_connections),
    ];
    for (key, v) in nonzero {
        if v == 0 {
            return Err(anyhow!("key `{key}`: must be at least 1"));
        }
    }
    if c.disk.writer.max_iovecs > 1024 {
        return Err(anyhow!(
            "key `disk.writer.max_iovecs`: at most 1024 (IOV_MAX)"
        ));
    }
    if c.peer_tick.is_zero() || c.stats_interval.is_zero() {
        let key = if c.peer_tick.is_zero() {
            "peer_tick_ms"
        } else {
            "stats_interval_ms"
        };
        return Err(anyhow!("key `{key}`: must be at least 1 ms"));
    }
    if c.stream.chunk_size > 16 << 20 {
        return Err(anyhow!("key `stream.chunk_size`: at most 16777216"));
    }
    actors::budget::BufferBudget::new(c.budget).map_err(|e| anyhow!("key `budget`: {e}"))?;
    Ok(())
}

/// Every leaf key of the config, as dotted paths.
fn leaf_keys() -> Vec<Vec<String>> {
    fn walk(prefix: &mut Vec<String>, table: &toml::Table, out: &mut Vec<Vec<String>>) {
        for (k, v) in table {
            prefix.push(k.clone());
            match v {
                toml::Value::Table(t) => walk(prefix, t, out),
                _ => out.push(prefix.clone()),
            }
            prefix.pop();
        }
    }
    let defaults = toml::Table::try_from(ClientConfig::default()).unwrap_or_default();
    let mut out = Vec::new();
    walk(&mut Vec::new(), &defaults, &mut out);
    out
}

/// The environment variable of a key path.
pub fn env_name(path: &[String]) -> String {
    format!("ACTORRENT_{}", path.join("_").to_uppercase())
}

/// Sets every key named by a variable in `vars` into `table`. Returns
/// dotted key -> variable name, for error messages.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let keys = leaf_keys();
    let by_name: BTreeMap<String, &Vec<String>> = keys.iter().map(|k| (env_name(k), k)).collect();
    let sections: Vec<String> = keys
        .iter()
        .filter(|k| k.len() > 1)
        .map(|k| env_name(&k[..k.len() - 1]) + "_")
        .collect();
    let mut applied = BTreeMap::new();
    for (name, raw) in vars {
        let Some(path) = by_name.get(&name) else {
            if sections.iter().any(|s| name.starts_with(s.as_str())) {
                return Err(anyhow!("{name} names no config key"));
            }
            continue;
        };
        let value = parse_env_value(&raw);
        let mut t = &mut *table;
        for part in &path[..path.len() - 1] {
            let entry = t
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            t = match entry {
                toml::Value::Table(inner) => inner,
                _ => {
                    return Err(anyhow!(
                        "{name}: key `{part}` in the config file is not a table"
                    ));
                }
            };
        }
        t.insert(path[path.len() - 1].clone(), value);
        applied.insert(path.join("."), name);
    }
    Ok(applied)
}

/// A TOML value, or the raw text as a string when it is not one (so
/// `sequential` works as well as `"sequential"`).
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = to_toml(&ClientConfig::default()).unwrap();
        assert_eq!(from_toml(&text).unwrap(), ClientConfig::default());
        // And a changed config round-trips too, `None`s included.
        let mut c = ClientConfig::default();
        c.choker.slots = None;
        c.upload_limit = Some(1 << 20);
        c.socket_recv_buffer = Some(4 << 20);
        c.pipeline.queue_time = std::time::Duration::from_millis(1500);
        c.picker.strategy = actors::picker::Strategy::Sequential;
        assert_eq!(from_toml(&to_toml(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = from_toml(
            "[pipeline]
max_pipelin = 3
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pipeline") && e.contains("max_pipelin"), "{e}");
        let e = from_toml(
            "[disk.writer]
batch_limit = \"many\"
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("disk.writer.batch_limit"), "{e}");
        let e = from_toml(
            "peer_mailbox = 0
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("peer_mailbox"), "{e}");
        let e = from_toml(
            "[budget]
low_watermark_percent = 95
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("budget"), "{e}");
        let e = from_toml(
            "[picker]
strategy = \"random\"
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("picker.strategy"), "{e}");
        // A preallocation mode that is none: the key and the choices named.
        let e = from_toml(
            "[disk]
preallocation = \"fast\"
",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("disk.preallocation") && e.contains("full") && e.contains("sparse"),
            "{e}"
        );
    }

    #[test]
    fn env_names_are_unique() {
        let keys = leaf_keys();
        let names: std::collections::BTreeSet<String> = keys.iter().map(|k| env_name(k)).collect();
        assert_eq!(names.len(), keys.len());
        assert!(names.contains("ACTORRENT_DISK_WRITER_BATCH_LIMIT"));
        assert!(names.contains("ACTORRENT_PEER_MAILBOX"));
    }

    #[test]
    fn env_sets_nested_keys_and_typed_values() {
        let mut t: toml::Table = toml::from_str("[pipeline]\nmax_pipeline = 100\n").unwrap();
        let applied = apply_env(
            &mut t,
            vars(&[
                ("ACTORRENT_PIPELINE_MAX_PIPELINE", "64"),
                ("ACTORRENT_DISK_WRITER_BATCH_LIMIT", "8"),
                ("ACTORRENT_PICKER_STRATEGY", "sequential"),
                ("ACTORRENT_DISK_PREALLOCATION", "sparse"),
                ("ACTORRENT_TEST_BIN", "/elsewhere"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(applied.len(), 4);
        let c = from_table(t, &applied).unwrap();
        assert_eq!(c.pipeline.max_pipeline, 64);
        assert_eq!(c.disk.writer.batch_limit, 8);
        assert_eq!(c.picker.strategy, actors::picker::Strategy::Sequential);
        assert_eq!(c.disk.preallocation, storage::Preallocation::Sparse);
    }

    #[test]
    fn a_misspelt_section_variable_is_an_error() {
        let mut t = toml::Table::new();
        let e = apply_env(&mut t, vars(&[("ACTORRENT_PIPELINE_MAX_PIPELIN", "4")])).unwrap_err();
        assert!(
            e.to_string().contains("ACTORRENT_PIPELINE_MAX_PIPELIN"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_env_value_names_the_key_and_the_variable() {
        let mut t = toml::Table::new();
        let applied = apply_env(&mut t, vars(&[("ACTORRENT_RTT_MIN_TIMEOUT_MS", "soon")])).unwrap();
        let e = from_table(t, &applied).unwrap_err().to_string();
        assert!(
            e.contains("rtt.min_timeout_ms") && e.contains("ACTORRENT_RTT_MIN_TIMEOUT_MS"),
            "{e}"
        );
    }
}

//! The `actorrent` command line: parses arguments, wires the crates together
//! and maps failures to exit statuses (2 for bad input, 1 for runtime
//! failures). All protocol and storage logic lives in the library crates.

// The big `json!` literals of the RPC answers nest deeply.
#![recursion_limit = "256"]

mod config;
mod create;
mod daemon;
mod demo;
mod download;
mod info;
mod magnet;
mod metrics;
mod select;
mod stream;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A BitTorrent client built from actors that share nothing.
#[derive(Parser, Debug)]
#[command(name = "actorrent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TOML config file (see `actorrent config --print-default`); the
    /// environment (`ACTORRENT_<SECTION>_<KEY>`) and flags override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// Log level: off, error, warn, info, debug, trace, or a filter such as
    /// `warn,actors=debug`. `RUST_LOG`, when set, wins.
    #[arg(long, global = true, value_name = "LEVEL", default_value = "warn")]
    log_level: String,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print what a torrent file or magnet link describes.
    Info(info::InfoArgs),
    /// Download a torrent from peers, verify every piece and write it.
    Download(download::DownloadArgs),
    /// Serve a torrent whose data is complete on disk.
    Seed(download::SeedArgs),
    /// Make a .torrent from a file, a directory, or (--raw) a disk image.
    Create(create::CreateArgs),
    /// Run many torrents in one process, driven through the Transmission
    /// RPC (`transmission-remote`, the Transmission web UI) and kept across
    /// restarts.
    Daemon(daemon::DaemonArgs),
    /// Print the configuration as TOML.
    Config(config::ConfigArgs),
    /// Seed a temporary payload to N leechers over loopback in this
    /// process, verify every byte and print the throughput.
    Demo(demo::DemoArgs),
}

/// A failure the user caused (bad input, exit status 2) or one the client hit
/// while running (exit status 1).
#[derive(Debug)]
pub enum Failure {
    BadInput(anyhow::Error),
    Runtime(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's own exit code is 2 for usage errors and 0 for --help.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    if let Err(e) = init_logging(&cli.log_level, cli.log_format) {
        eprintln!("actorrent: --log-level: {e}");
        return ExitCode::from(2);
    }
    let file = cli.config.as_deref();
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Download(args) => config::load(file).and_then(|c| download::run(&args, c)),
        Command::Seed(args) => config::load(file).and_then(|c| download::seed(&args, c)),
        Command::Daemon(args) => config::load(file).and_then(|c| daemon::run(&args, c, file)),
        Command::Config(args) => config::run(&args, file),
        Command::Demo(args) => config::load(file).and_then(|c| demo::run(&args, c)),
        Command::Create(args) => create::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => {
            eprintln!("actorrent: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("actorrent: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` when set, else by
/// `--log-level`. The filter is checked before an event is built, so a
/// disabled `debug!` in a hot path costs one comparison.
fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    check_level(level)?;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| format!("`{level}`: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let h = b.reload_handle();
            if b.try_init().is_ok() {
                let _ = LOG_FILTER.set(Box::new(move |f| h.reload(f).map_err(|e| e.to_string())));
            }
        }
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let h = b.reload_handle();
            if b.try_init().is_ok() {
                let _ = LOG_FILTER.set(Box::new(move |f| h.reload(f).map_err(|e| e.to_string())));
            }
        }
    }
    Ok(())
}

use tracing_subscriber::EnvFilter;

/// Replaces the filter of the running process's log (set once logging is
/// up).
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static LOG_FILTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

/// A lone word that is not a level would parse as a target name and
/// silently log nothing: refuse it.
pub(crate) fn check_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if !level.contains(['=', ',', ':']) && !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        return Err(format!("`{level}` is not one of {}", LEVELS.join(", ")));
    }
    Ok(())
}

/// Changes the log filter of the running process (the daemon's
/// `session-set` and SIGHUP), checked as `--log-level` is.
pub fn set_log_filter(filter: &str) -> Result<(), String> {
    check_level(filter)?;
    let f = EnvFilter::try_new(filter).map_err(|e| format!("`{filter}`: {e}"))?;
    let set = LOG_FILTER.get().ok_or("logging is not set up")?;
    set(f)
}

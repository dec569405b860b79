//! The `actorrent` command line: parses arguments, wires the crates together
//! and maps failures to exit statuses (2 for bad input, 1 for runtime
//! failures). All protocol and storage logic lives in the library crates.

mod create;
mod download;
mod info;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A BitTorrent client built from actors that share nothing.
#[derive(Parser, Debug)]
#[command(name = "actorrent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    init_logging();
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Download(args) => download::run(&args),
        Command::Seed(args) => download::seed(&args),
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

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

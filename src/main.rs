//! The `actorrent` command line: parses arguments, wires the crates together
//! and maps failures to exit statuses (2 for bad input, 1 for runtime
//! failures). All protocol and storage logic lives in the library crates.

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
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
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

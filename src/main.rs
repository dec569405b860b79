//! The `actorrent` command line: parses arguments, wires the crates together
//! and maps failures to exit statuses (2 for bad input, 1 for runtime
//! failures). The first subcommand, `info`, lands with the protocol crate's
//! metainfo and magnet parsers (see src/info.rs.pending).

use std::process::ExitCode;

use clap::Parser;

/// A BitTorrent client built from actors that share nothing.
#[derive(Parser, Debug)]
#[command(name = "actorrent", version, about, long_about = None)]
struct Cli {}

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = e.print();
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

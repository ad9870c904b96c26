//! `shm-restore`: run a program whose state lives in a shared memory region,
//! persist consistent snapshots of it, and restore the newest one before
//! every relaunch.

mod child;
mod cli;
mod hang;
mod lag;
mod leftovers;
mod region;
mod snapshotter;
mod supervise;
mod systemd;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

/// Exit status for a supervisor failure (store, region, signals).
const EXIT_FAILURE: u8 = 1;
/// Exit status for bad arguments.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = match cli::Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("shm-restore: {} (see --help)", one_line(&e.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(args.verbose, args.quiet);
    match supervise::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shm-restore: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Clap's message without its "error:" prefix, usage and tips, on one line.
fn one_line(message: &str) -> String {
    let first_paragraph = message.split("\n\n").next().unwrap_or(message);
    let text = first_paragraph.strip_prefix("error: ").unwrap_or(first_paragraph);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Logs go to stderr, one line per event; the program's own stdout and
/// stderr pass through untouched. `RUST_LOG` overrides -v/-q.
fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (2.., _) => "trace",
        (_, 1) => "warn",
        (_, _) => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .compact()
        .init();
}

//! `shm-restore`: run a program whose state lives in a shared memory region,
//! persist consistent snapshots of it, and restore the newest one before
//! every relaunch.

mod chaos;
mod child;
mod cli;
mod config;
mod group;
mod hang;
mod lag;
mod leftovers;
mod memory;
mod ops;
mod region;
mod replica;
mod restore;
mod snapshotter;
mod status;
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
    // A subcommand, or the run form exactly as it always parsed.
    if ops::args::is_subcommand(std::env::args_os().nth(1).as_deref()) {
        // Subcommands print to stdout like any Unix tool: a closed pipe
        // (`inspect DIR | head`) ends them quietly instead of a panic.
        // SAFETY: restores the default disposition before any thread
        // starts; no handler runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        return match parsed(ops::args::Cli::try_parse()) {
            Ok(ops::args::Cli { op: Some(op), .. }) => report(ops::run(op)),
            // Without a subcommand the first argument was help or version,
            // handled by the parser; a run form cannot get here.
            Ok(_) => ExitCode::from(EXIT_USAGE),
            Err(code) => code,
        };
    }
    let args = match parsed(cli::Args::try_parse()) {
        Ok(args) => args,
        Err(code) => return code,
    };
    init_logging(args.verbose, args.quiet);
    report(supervise::run(config::Config::resolve(args)))
}

/// A parse result, or the exit status after printing help, the version or
/// a one-line usage error.
fn parsed<T>(result: Result<T, clap::Error>) -> Result<T, ExitCode> {
    match result {
        Ok(value) => Ok(value),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("shm-restore: {} (see --help)", one_line(&e.to_string()));
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// The exit status of a finished run, printing its error if it failed.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
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
    // The object-store client logs each retry of each request: a server
    // that is down would flood the log the supervisor keeps to one line
    // per episode. Its warnings and errors stay.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},object_store=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .compact()
        .init();
}

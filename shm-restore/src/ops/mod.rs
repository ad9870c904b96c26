//! The operator subcommands: look at, check, copy, trim and clean a store,
//! and watch a running supervisor. Read-only ones never take the store's
//! lock and work while a supervisor writes; the ones that change the store
//! take it and refuse a store in use.

pub mod args;
mod cleanup;
mod export;
mod import;
mod inspect;
mod load;
mod prune;
mod replica;
mod show;
mod store;
mod tails;
mod verify;
mod watch;

use std::process::ExitCode;

use anyhow::Result;

pub use args::Op;

/// Runs a subcommand; its output goes to stdout, problems to stderr.
pub fn run(op: Op) -> Result<ExitCode> {
    match op {
        Op::Inspect(a) if a.watch => watch::run(&args::Watch {
            dir: a.dir.unwrap_or_default(),
            once: false,
        }),
        Op::Inspect(a) => match (&a.replica, &a.dir) {
            (Some(url), dir) => replica::inspect(url, dir.as_deref(), a.json),
            (None, Some(dir)) => inspect::run(&a, dir),
            (None, None) => unreachable!("clap requires DIR without --replica"),
        },
        Op::Pull(a) => replica::pull(&a),
        Op::Verify(a) => verify::run(&a),
        Op::Export(a) => export::run(&a),
        Op::Import(a) => import::run(&a),
        Op::Prune(a) => prune::run(&a),
        Op::Watch(a) => watch::run(&a),
        Op::Cleanup(a) => cleanup::run(&a),
    }
}

//! relaunch: the relaunch benchmark (BENCHMARKS.md, "Relaunch after a
//! kill"). For each region size it runs `shm-restore` over
//! `bench-child --announce`, SIGKILLs the program many times and times each
//! relaunch from the kill to the new program's first instruction after
//! `exec`; then it runs chaos mode with every relaunch restored from disk and
//! reads its restore times. One Markdown table on stdout; progress and errors
//! on stderr.
//!
//! It builds nothing: it runs `<target>/release/shm-restore`,
//! `<target>/release/bench-child` and `<target>/release/primes-snapshot`:
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p shm-snapshot-bench --bin relaunch
//! ```
//!
//! Exit status: 0 when every case was measured (a supervisor that gave up
//! relaunching is a measured outcome, shown in the table), 1 if a case could
//! not be measured, 2 for bad arguments.

mod chaos;
mod intervals;
mod kills;
mod table;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use shm_snapshot_bench::disk;
use shm_snapshot_bench::locate::{binary, release_dir};
use shm_snapshot_bench::stats::Spread;
use tempfile::TempDir;

use crate::table::{Measured, Row};

/// Relaunch benchmark of shm-restore: time from a SIGKILL of the program to
/// the relaunched program's exec, and chaos mode's restores from disk.
#[derive(Debug, Parser)]
#[command(version, after_help = "Build first: cargo build --release --workspace")]
struct Args {
    /// Region sizes to kill the program at, comma-separated, as shm-restore's --size takes them (bytes or 64MiB, 1GiB).
    #[arg(
        long,
        value_name = "SIZES",
        value_delimiter = ',',
        default_value = "64MiB,1GiB"
    )]
    sizes: Vec<String>,

    /// SIGKILLs per region size, each 10-100 ms after the program's start and after its first commit.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    kills: u32,

    /// Chaos kills of the disk-restore run (64 MiB region, 20-60 ms after each start); 0 skips it.
    #[arg(long, value_name = "N", default_value_t = 100)]
    chaos_runs: u64,

    /// Seed of the intervals before the kills, and chaos mode's --seed.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Passed on to every shm-restore as --fsync: sync each generation (always) or never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = Fsync::Always)]
    fsync: Fsync,

    /// One more flag for every shm-restore started, before `--` (repeatable; e.g. --supervisor-arg=--backoff=1ms). [default: none]
    #[arg(long = "supervisor-arg", value_name = "FLAG", allow_hyphen_values = true)]
    supervisor_args: Vec<String>,

    /// Directory for the runs' temporary stores; put it on the disk to measure. [default: the system temporary directory]
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
}

/// shm-restore's `--fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Sync every generation before it counts.
    Always,
    /// Never sync.
    Never,
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fsync::Always => "always",
            Fsync::Never => "never",
        })
    }
}

/// Where and how the cases run, resolved from the flags.
#[derive(Debug)]
pub struct Settings {
    /// The supervisor binary.
    pub shm_restore: PathBuf,
    /// The program of the kill-to-exec runs.
    pub bench_child: PathBuf,
    /// The program of the chaos run.
    pub primes_snapshot: PathBuf,
    /// Parent of each run's temporary directory.
    pub tmp_root: PathBuf,
    /// shm-restore's `--fsync`.
    pub fsync: Fsync,
    /// Extra shm-restore flags.
    pub supervisor_args: Vec<String>,
    /// Kills per region size.
    pub kills: u32,
    /// Seed of the kill intervals and of chaos mode.
    pub seed: u64,
}

impl Settings {
    /// A fresh temporary directory for one run, removed when dropped.
    pub fn temp_dir(&self) -> Result<TempDir> {
        tempfile::Builder::new()
            .prefix("shm-relaunch-")
            .tempdir_in(&self.tmp_root)
            .with_context(|| format!("creating a temporary directory in {}", self.tmp_root.display()))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relaunch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let release = release_dir()?;
    let settings = Settings {
        shm_restore: binary(&release, "shm-restore")?,
        bench_child: binary(&release, "bench-child")?,
        primes_snapshot: binary(&release, "primes-snapshot")?,
        tmp_root: args.tmp_dir.unwrap_or_else(std::env::temp_dir),
        fsync: args.fsync,
        supervisor_args: args.supervisor_args,
        kills: args.kills,
        seed: args.seed,
    };
    let tmpfs = disk::is_tmpfs(&settings.tmp_root)
        .with_context(|| format!("checking the file system of {}", settings.tmp_root.display()))?;
    if tmpfs {
        eprintln!(
            "relaunch: warning: {} is on tmpfs, where fsync costs nothing; pass --tmp-dir on the disk to measure",
            settings.tmp_root.display()
        );
    }

    let cases = args.sizes.len() + usize::from(args.chaos_runs > 0);
    let mut rows = Vec::with_capacity(cases);
    for size in &args.sizes {
        let case = format!("kill to exec, {size}");
        eprintln!(
            "relaunch: [{}/{cases}] {case}: {} kills",
            rows.len() + 1,
            settings.kills
        );
        let measured = match kills::run(size, &settings) {
            Ok(outcome) => Some(kill_row(&case, outcome)),
            Err(e) => {
                eprintln!("relaunch: {case} failed: {e:#}");
                None
            }
        };
        rows.push(Row { case, measured });
    }
    if args.chaos_runs > 0 {
        let case = format!("chaos, {}, from disk (kill to spawn)", chaos::SIZE);
        eprintln!("relaunch: [{cases}/{cases}] {case}: {} kills", args.chaos_runs);
        let measured = match chaos::run(args.chaos_runs, &settings) {
            Ok(outcome) => Some(chaos_row(outcome)),
            Err(e) => {
                eprintln!("relaunch: {case} failed: {e:#}");
                None
            }
        };
        rows.push(Row { case, measured });
    }

    print!("{}", table::render(&rows));
    println!();
    let extra = if settings.supervisor_args.is_empty() {
        "none".to_string()
    } else {
        format!("`{}`", settings.supervisor_args.join(" "))
    };
    println!(
        "Kill to exec: each kill {}-{} ms after the program's start (seed {}) and after its first \
         commit, the first after 1 s; bench-child at 1000 commits/s. Chaos: `--chaos-kill={}`, \
         primes-snapshot, restore time as the supervisor reports it. `--fsync={}`; extra shm-restore \
         flags: {extra}; stores in {}{}.",
        kills::KILL_AFTER_MIN.as_millis(),
        kills::KILL_AFTER_MAX.as_millis(),
        settings.seed,
        chaos::KILL_RANGE,
        settings.fsync,
        settings.tmp_root.display(),
        if tmpfs { " (tmpfs)" } else { "" }
    );
    let failed = rows.iter().any(|r| r.measured.is_none());
    if failed {
        println!(
            "{}: the case could not be measured; its error is on stderr.",
            table::FAILED
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn kill_row(case: &str, outcome: kills::Outcome) -> Measured {
    let end = match outcome.end {
        kills::End::Completed => "completed".to_string(),
        kills::End::GaveUp => {
            eprintln!(
                "relaunch: {case}: shm-restore gave up after {} kills (restart limit reached)",
                outcome.kills
            );
            format!("gave up after {} kills: restart limit reached", outcome.kills)
        }
    };
    Measured {
        kills: u64::from(outcome.kills),
        timed: outcome.samples.len() as u64,
        spread: Spread::of_nanos(&outcome.samples),
        end,
    }
}

fn chaos_row(outcome: chaos::Outcome) -> Measured {
    let mut end = if outcome.completed {
        "completed".to_string()
    } else {
        "stopped before the last planned kill".to_string()
    };
    if outcome.disk_refused > 0 {
        end += &format!(
            ", {} kept in memory (the disk lacked units)",
            outcome.disk_refused
        );
    }
    if outcome.failures > 0 {
        end += &format!(", {} runs failed by themselves", outcome.failures);
    }
    Measured {
        kills: outcome.kills,
        timed: outcome.from_disk,
        spread: outcome.restore,
        end,
    }
}

//! e2e: the end-to-end benchmark (BENCHMARKS.md, "End-to-end"). It measures
//! the disk's own sync latency where the stores go; then for each load case
//! it runs `shm-restore` over `bench-child` in a fresh temporary directory,
//! measures the supervisor, stops it with SIGTERM and makes one row of a
//! table; then it times restores from disk at start. Markdown tables and a
//! JSON line on stdout; progress and notes on stderr.
//!
//! It builds nothing: it runs `<target>/release/shm-restore`,
//! `<target>/release/bench-child` and `<target>/release/primes-snapshot`, so
//! build them first:
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p shm-snapshot-bench --bin e2e -- [--quick]
//! ```

mod case;
mod cpu;
mod report;
mod restore;
mod summary;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use shm_snapshot_bench::disk;
use shm_snapshot_bench::locate::{binary, release_dir};
use shm_snapshot_bench::sync_latency::{self, Probe};
use tempfile::TempDir;

use crate::case::CASES;
use crate::restore::RestoreCase;
use crate::table::{DiskRow, RestoreRow, Row};

/// Measured window of each load case: the issue's "max over a 60 s
/// window", and thousands of generations for the percentiles.
const WINDOW: Duration = Duration::from_secs(60);
/// Measured window with `--quick`: a check that every case runs, not a
/// figure to quote (one CPU tick is 0.3 % of it).
const QUICK_WINDOW: Duration = Duration::from_secs(3);
/// Restores timed per restore case; a 1 GiB restore takes up to a second.
const RESTORES: usize = 10;
/// Restores per case with `--quick`.
const QUICK_RESTORES: usize = 3;
/// Samples of each sync probe: a few hundred, so the p99 is the third
/// largest of 300, taken in a second or two on a disk that syncs in
/// milliseconds.
const SYNC_SAMPLES: usize = 300;

/// End-to-end benchmark of shm-restore: the disk's sync latency; supervisor
/// CPU, generation rate, lag, bytes and files while bench-child commits at
/// a fixed rate; restore time at start.
#[derive(Debug, Parser)]
#[command(version, after_help = "Build first: cargo build --release --workspace")]
struct Args {
    /// Measure each load case for 3 s instead of 60 s (after the same 1 s warm-up), and time 3 restores per restore case instead of 10.
    #[arg(long)]
    quick: bool,

    /// Directory for the temporary stores and the sync probes; put it on the disk to measure. [default: the system temporary directory]
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,

    /// Passed on to every shm-restore as --interval (minimum spacing between generations, e.g. 10ms). [default: shm-restore's]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
}

/// Where and how the cases run, resolved from the flags.
#[derive(Debug)]
pub struct Settings {
    /// The supervisor binary.
    pub shm_restore: PathBuf,
    /// The synthetic program.
    pub bench_child: PathBuf,
    /// The program whose store the restore cases read.
    pub primes_snapshot: PathBuf,
    /// Parent of each case's temporary directory.
    pub tmp_root: PathBuf,
    /// Measured window of a load case.
    pub window: Duration,
    /// Restores timed per restore case.
    pub restores: usize,
    /// `--interval` for the supervisor, if given.
    pub interval: Option<Duration>,
}

impl Settings {
    /// A fresh temporary directory for one case, removed when dropped.
    fn temp_dir(&self) -> Result<TempDir> {
        tempfile::Builder::new()
            .prefix("shm-e2e-")
            .tempdir_in(&self.tmp_root)
            .with_context(|| format!("creating a temporary directory in {}", self.tmp_root.display()))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("e2e: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    let release = release_dir()?;
    let settings = Settings {
        shm_restore: binary(&release, "shm-restore")?,
        bench_child: binary(&release, "bench-child")?,
        primes_snapshot: binary(&release, "primes-snapshot")?,
        tmp_root: args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
        window: if args.quick { QUICK_WINDOW } else { WINDOW },
        restores: if args.quick { QUICK_RESTORES } else { RESTORES },
        interval: args.interval,
    };
    let ticks_per_second = cpu::ticks_per_second();
    let tmpfs = disk::is_tmpfs(&settings.tmp_root)
        .with_context(|| format!("checking the file system of {}", settings.tmp_root.display()))?;
    if tmpfs {
        eprintln!(
            "e2e: warning: {} is on tmpfs, where fsync costs nothing; pass --tmp-dir on the disk to measure",
            settings.tmp_root.display()
        );
    }

    let mut disk_rows = probe_disk(&settings.tmp_root, "before the cases");
    let mut rows = Vec::with_capacity(CASES.len());
    let mut restores = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        eprintln!(
            "e2e: [{}/{}] {}: {} s warm-up, {} s measured",
            i + 1,
            CASES.len(),
            case.name,
            case::WARM_UP.as_secs(),
            settings.window.as_secs()
        );
        let outcome = settings.temp_dir().and_then(|dir| {
            let store = dir.path().join("state");
            let outcome = case::run(case, &settings, &store, ticks_per_second)?;
            if case.restore_after {
                let restore_case = RestoreCase {
                    name: format!("{}, the store of \"{}\"", pretty(case.size), case.name),
                    size: case.size,
                };
                restores.push(time_restores(&restore_case, &settings, &store));
            }
            Ok(outcome)
        });
        if let Err(e) = &outcome {
            eprintln!("e2e: {} failed: {e:#}", case.name);
        }
        rows.push(Row {
            case: case.name,
            rate: case.rate,
            outcome: outcome.ok(),
        });
    }
    for restore_case in restore::primes_cases() {
        eprintln!(
            "e2e: restore at start, {}: a {} s run, then {} restores",
            restore_case.name,
            restore::PRIMES_RUN.as_secs(),
            settings.restores
        );
        let row = match settings.temp_dir() {
            Err(e) => {
                eprintln!("e2e: {} failed: {e:#}", restore_case.name);
                RestoreRow {
                    case: restore_case.name,
                    outcome: None,
                }
            }
            Ok(dir) => {
                let store = dir.path().join("state");
                match restore::primes_run(&settings, restore_case.size, &store) {
                    Ok(()) => time_restores(&restore_case, &settings, &store),
                    Err(e) => {
                        eprintln!("e2e: {} failed: {e:#}", restore_case.name);
                        RestoreRow {
                            case: restore_case.name,
                            outcome: None,
                        }
                    }
                }
            }
        };
        restores.push(row);
    }
    disk_rows.extend(probe_disk(&settings.tmp_root, "after the cases"));

    println!("Disk sync latency, in {}:", settings.tmp_root.display());
    println!();
    print!("{}", table::render_disk(&disk_rows));
    println!();
    println!("Load cases:");
    println!();
    print!("{}", table::render(&rows));
    println!();
    println!("Restore from disk at start:");
    println!();
    print!("{}", table::render_restores(&restores));
    println!();
    println!(
        "Window {} s after {} s warm-up per load case; `--fsync=always`; {} restores per restore case; \
         stores in {}{}; CPU in ticks of 1/{ticks_per_second} s.",
        settings.window.as_secs(),
        case::WARM_UP.as_secs(),
        settings.restores,
        settings.tmp_root.display(),
        if tmpfs { " (tmpfs)" } else { "" }
    );
    for note in table::notes(&rows) {
        println!("{note}");
    }
    let failed = disk_rows.iter().any(|r| r.spread.is_none())
        || rows.iter().any(|r| r.outcome.is_none())
        || restores.iter().any(|r| r.outcome.is_none());
    if failed {
        println!(
            "{}: the case could not be measured; its error is on stderr.",
            table::FAILED
        );
    }
    println!(
        "{}",
        report::render(&report::Context {
            window_s: settings.window.as_secs(),
            warm_up_s: case::WARM_UP.as_secs(),
            stores: settings.tmp_root.display().to_string(),
            tmpfs,
            interval: settings
                .interval
                .map(|d| humantime::format_duration(d).to_string()),
            restores: settings.restores,
            cases: &rows,
            disk: &disk_rows,
            restore: &restores,
        })
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Both sync probes in `dir`'s file system, each a row.
fn probe_disk(dir: &Path, when: &'static str) -> Vec<DiskRow> {
    Probe::ALL
        .into_iter()
        .map(|probe| {
            eprintln!("e2e: disk, {when}: {} x {}", SYNC_SAMPLES, probe.describe());
            let spread = sync_latency::measure(probe, dir, SYNC_SAMPLES)
                .inspect_err(|e| eprintln!("e2e: disk probe `{}` failed: {e:#}", probe.describe()))
                .ok();
            DiskRow {
                probe,
                when,
                samples: SYNC_SAMPLES,
                spread,
            }
        })
        .collect()
}

/// Times the restores of `case` on `store`, as a row (errors on stderr).
fn time_restores(case: &RestoreCase, settings: &Settings, store: &Path) -> RestoreRow {
    eprintln!(
        "e2e: restore at start, {}: {} restores",
        case.name, settings.restores
    );
    let outcome = restore::time_restores(settings, case.size, store, settings.restores)
        .inspect_err(|e| eprintln!("e2e: {} failed: {e:#}", case.name))
        .ok();
    RestoreRow {
        case: case.name.clone(),
        outcome,
    }
}

/// `64MiB` as `64 MiB`.
fn pretty(size: &str) -> String {
    size.replace("MiB", " MiB").replace("GiB", " GiB")
}

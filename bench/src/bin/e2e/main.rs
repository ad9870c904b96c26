//! e2e: the end-to-end benchmark (BENCHMARKS.md, "End-to-end"). For each
//! case it runs `shm-restore` over `bench-child` in a fresh temporary
//! directory, measures the supervisor, stops it with SIGTERM and prints one
//! row of a Markdown table on stdout; progress and notes go to stderr.
//!
//! It builds nothing: it runs `<target>/release/shm-restore` and
//! `<target>/release/bench-child`, so build them first:
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p shm-snapshot-bench --bin e2e -- [--quick]
//! ```

mod case;
mod cpu;
mod summary;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use shm_snapshot_bench::disk;
use shm_snapshot_bench::locate::{binary, release_dir};

use crate::case::{CASES, Settings};

/// Measured window of each case; a generation every few milliseconds gives
/// thousands of samples, and CPU time in 10 ms ticks resolves 0.1 %.
const WINDOW: Duration = Duration::from_secs(10);
/// Measured window with `--quick`.
const QUICK_WINDOW: Duration = Duration::from_secs(3);

/// End-to-end benchmark of shm-restore: supervisor CPU, generation rate, lag
/// and bytes per generation while bench-child commits at a fixed rate.
#[derive(Debug, Parser)]
#[command(version, after_help = "Build first: cargo build --release --workspace")]
struct Args {
    /// Measure each case for 3 s instead of 10 s (after the same 1 s warm-up).
    #[arg(long)]
    quick: bool,

    /// Directory for the cases' temporary stores; put it on the disk to measure. [default: the system temporary directory]
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,

    /// Passed on to shm-restore as --interval (minimum spacing between generations, e.g. 10ms). [default: shm-restore's]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
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
        tmp_root: args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
        window: if args.quick { QUICK_WINDOW } else { WINDOW },
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

    let mut rows = Vec::with_capacity(CASES.len());
    let mut failed = false;
    for (i, case) in CASES.iter().enumerate() {
        eprintln!(
            "e2e: [{}/{}] {}: {} s warm-up, {} s measured",
            i + 1,
            CASES.len(),
            case.name,
            case::WARM_UP.as_secs(),
            settings.window.as_secs()
        );
        let outcome = case::run(case, &settings, ticks_per_second);
        if let Err(e) = &outcome {
            eprintln!("e2e: {} failed: {e:#}", case.name);
            failed = true;
        }
        rows.push(table::Row {
            case: case.name,
            outcome: outcome.ok(),
        });
    }

    print!("{}", table::render(&rows));
    println!();
    println!(
        "Window {} s after {} s warm-up per case; `--fsync=always`; stores in {}{}; \
         CPU in ticks of 1/{ticks_per_second} s.",
        settings.window.as_secs(),
        case::WARM_UP.as_secs(),
        settings.tmp_root.display(),
        if tmpfs { " (tmpfs)" } else { "" }
    );
    for note in table::notes(&rows) {
        println!("{note}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

//! Chaos mode's disk restores: `shm-restore --chaos-kill` over
//! primes-snapshot with every relaunch rebuilding the region from the
//! store, and the restore times from its JSON report.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use shm_snapshot_bench::stats::Spread;
use shm_snapshot_bench::supervisor::{Next, Supervisor, describe};

use crate::Settings;

/// Region size of the run.
pub const SIZE: &str = "64MiB";
/// When chaos mode kills each run, after its start.
pub const KILL_RANGE: &str = "20ms..60ms";
/// Time allowed per chaos kill: the run (at most 60 ms), the post-mortem
/// and the restore from disk, with room for a loaded machine.
const PATIENCE_PER_RUN: Duration = Duration::from_secs(1);
/// Time allowed on top: starting, the last run's first commit, the report.
const PATIENCE_FIXED: Duration = Duration::from_secs(30);
/// Exit status of a chaos run in which some run failed by itself.
const SOME_RUN_FAILED: i32 = 4;

/// What the chaos report says.
#[derive(Debug)]
pub struct Outcome {
    /// Chaos kills made.
    pub kills: u64,
    /// Relaunches whose region was rebuilt from disk.
    pub from_disk: u64,
    /// Relaunches kept in memory although planned from disk (the disk lacked units).
    pub disk_refused: u64,
    /// Runs that failed by themselves.
    pub failures: u64,
    /// Every planned kill was made.
    pub completed: bool,
    /// Kill to the next run's spawn, as the supervisor measures it.
    pub restore: Option<Spread>,
}

/// Runs `runs` chaos kills and reads the report.
pub fn run(runs: u64, settings: &Settings) -> Result<Outcome> {
    let dir = settings.temp_dir()?;
    let report = dir.path().join("report.json");
    let mut snapshot = OsString::from("--snapshot=");
    snapshot.push(dir.path().join("state"));
    let mut report_flag = OsString::from("--report=");
    report_flag.push(&report);
    let mut command = Command::new(&settings.shm_restore);
    command
        .arg(snapshot)
        .arg(format!("--size={SIZE}"))
        .arg(format!("--chaos-kill={KILL_RANGE}"))
        .arg(format!("--chaos-runs={runs}"))
        .arg("--chaos-restore=disk")
        .arg(format!("--seed={}", settings.seed))
        .arg(report_flag)
        .arg(format!("--fsync={}", settings.fsync))
        .args(&settings.supervisor_args)
        .arg("--")
        .arg(&settings.primes_snapshot)
        .current_dir(dir.path())
        .env("RUST_LOG", "info");
    let mut supervisor = Supervisor::spawn(command)?;
    let patience = PATIENCE_FIXED + PATIENCE_PER_RUN * u32::try_from(runs).unwrap_or(u32::MAX);
    let deadline = Instant::now() + patience;
    let status = loop {
        // primes-snapshot's own lines are read and dropped.
        match supervisor.next(deadline) {
            Ok(Next::Out(_)) => {}
            Ok(Next::Exited(status)) => break status,
            Err(e) => {
                let e = e.context(format!(
                    "shm-restore did not finish {runs} chaos kills within {patience:?}"
                ));
                return Err(anyhow!("{e:#}\n{}", supervisor.tail()));
            }
        }
    };
    if !(status.success() || status.code() == Some(SOME_RUN_FAILED)) {
        bail!(
            "shm-restore ended with {}\n{}",
            describe(status),
            supervisor.tail()
        );
    }
    read_report(&report)
}

/// The fields of the report (`shm-restore/src/chaos/report.rs`) the table shows.
fn read_report(path: &Path) -> Result<Outcome> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let count = |pointer: &str| {
        json.pointer(pointer)
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: no count at {pointer}", path.display()))
    };
    let millis = |field: &str| {
        json.pointer(&format!("/restore_ms/{field}"))
            .and_then(Value::as_f64)
            .with_context(|| format!("{}: no number at /restore_ms/{field}", path.display()))
    };
    let restore = match json.get("restore_ms") {
        None | Some(Value::Null) => None,
        Some(_) => Some(Spread {
            p50: millis("p50")?,
            p99: millis("p99")?,
            max: millis("max")?,
        }),
    };
    Ok(Outcome {
        kills: count("/kills")?,
        from_disk: count("/restore_from/disk")?,
        disk_refused: count("/restore_from/disk_refused")?,
        failures: count("/failures/total")?,
        completed: json
            .get("completed")
            .and_then(Value::as_bool)
            .with_context(|| format!("{}: no boolean at /completed", path.display()))?,
        restore,
    })
}

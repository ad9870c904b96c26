//! The chaos report: what it holds, its log lines at the end of a run, and
//! its JSON file (`--report`). The field names are its format: tests and
//! the README read them.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use tracing::{error, info};

use super::schedule::Planned;

#[derive(Debug, Default, Serialize)]
pub(super) struct Caught {
    pub(super) caught: u64,
    pub(super) fell_back: u64,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct MidWrite {
    pub(super) caught: u64,
    /// Caught kills after which the commit count had still not moved.
    pub(super) landed_mid_commit: u64,
    pub(super) fell_back: u64,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct Kinds {
    pub(super) timer: u64,
    pub(super) after_commit: Caught,
    pub(super) mid_write: MidWrite,
}

/// Where the region of each relaunch after a chaos kill came from:
/// `memory + disk` is the number of such relaunches (one per kill, but for
/// a kill after which the supervisor was stopped).
#[derive(Debug, Default, Serialize)]
pub(super) struct Sources {
    pub(super) memory: u64,
    pub(super) disk: u64,
    /// Planned from disk but kept in memory (and counted there): the
    /// post-mortem generation could not be persisted, or did not load back
    /// as the newest, so the region held units the disk lacked.
    pub(super) disk_refused: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct FailedRun {
    /// Which start of the program (1 = the first).
    pub(super) run: u64,
    pub(super) status: String,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct Failures {
    pub(super) total: u64,
    pub(super) inconsistent: u64,
    pub(super) other: u64,
    pub(super) runs: Vec<FailedRun>,
}

#[derive(Debug, Serialize)]
pub(super) struct Millis {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct LastRun {
    /// It committed after its start (or, false, the wait for it ran out).
    pub(super) committed: bool,
}

/// The report, logged at the end and written as JSON by `--report`.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) seed: u64,
    pub(super) repeat: String,
    /// Every planned kill was made and the run after the last one was stopped.
    pub(super) completed: bool,
    pub(super) duration_ms: u64,
    pub(super) kills: u64,
    pub(super) kinds: Kinds,
    /// Every start after the first: after a chaos kill (`restore_from`
    /// says from where) or after a failure (`relaunches_after_failures`).
    pub(super) relaunches: u64,
    pub(super) relaunches_after_failures: u64,
    pub(super) restore_from: Sources,
    pub(super) generations_persisted: u64,
    /// From a kill to the next run's start: post-mortem generation, restore, spawn.
    pub(super) restore_ms: Option<Millis>,
    pub(super) failures: Failures,
    pub(super) last_run: Option<LastRun>,
    pub(super) exit_status: u8,
    pub(super) schedule: Vec<Planned>,
}

/// Logs the report: kills by kind, relaunches by cause, restore times,
/// failures, and how to repeat the run.
pub(super) fn log_report(r: &Report, path: Option<&Path>) {
    let k = &r.kinds;
    info!(
        "chaos report: {} kills (timer {}, after-commit {} + {} fell back, mid-write {} + {} fell back, {} landed before the count moved), {} relaunches ({} after kills: {} from disk, {} from memory{}; {} after failures){}",
        r.kills,
        k.timer,
        k.after_commit.caught,
        k.after_commit.fell_back,
        k.mid_write.caught,
        k.mid_write.fell_back,
        k.mid_write.landed_mid_commit,
        r.relaunches,
        r.restore_from.disk + r.restore_from.memory,
        r.restore_from.disk,
        r.restore_from.memory,
        if r.restore_from.disk_refused > 0 {
            format!(
                ", {} of them kept in memory as the disk lacked units",
                r.restore_from.disk_refused
            )
        } else {
            String::new()
        },
        r.relaunches_after_failures,
        match r
            .kills
            .saturating_sub(r.restore_from.disk + r.restore_from.memory)
        {
            0 => String::new(),
            n => format!("; stopped after {n} kill(s) without relaunching"),
        }
    );
    let restore = r.restore_ms.as_ref().map_or("n/a".to_owned(), |m| {
        format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", m.p50, m.p99, m.max)
    });
    info!(
        "chaos report: restore {restore}; {} generations persisted in {:.1} s",
        r.generations_persisted,
        r.duration_ms as f64 / 1000.0
    );
    let failures = format!(
        "{} failed runs ({} inconsistent, {} other)",
        r.failures.total, r.failures.inconsistent, r.failures.other
    );
    if r.failures.total > 0 {
        error!("chaos report: {failures}: {:?}", r.failures.runs);
    } else {
        info!("chaos report: {failures}");
    }
    info!(
        "chaos report: seed {} (repeat with {}){}{}",
        r.seed,
        r.repeat,
        if r.completed {
            ""
        } else {
            "; stopped before the last planned kill"
        },
        path.map_or(String::new(), |p| format!("; JSON in {}", p.display()))
    );
}

/// Writes `report` to a temporary file beside `path`, syncs it, and renames
/// it over `path`: a reader sees the old report or the whole new one.
pub(super) fn write_atomically(path: &Path, report: &Report) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or("report".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> Result<()> {
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut file, report)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

//! The Markdown tables of results (the disk's sync latency, the load
//! cases, the restores at start) and the notes under them.

use shm_snapshot_bench::stats::Spread;
use shm_snapshot_bench::sync_latency::Probe;

use crate::case::Outcome;
use crate::restore;

/// One sync-latency probe's row.
#[derive(Debug)]
pub struct DiskRow {
    /// What it timed.
    pub probe: Probe,
    /// When in the run: before or after the cases.
    pub when: &'static str,
    /// Samples taken.
    pub samples: usize,
    /// Their times; `None` if the probe failed.
    pub spread: Option<Spread>,
}

const DISK_HEADER: [&str; 6] = ["probe", "when", "samples", "p50 (ms)", "p99 (ms)", "max (ms)"];

/// The disk's table, header first.
pub fn render_disk(rows: &[DiskRow]) -> String {
    let mut out = header(&DISK_HEADER);
    for row in rows {
        let mut cells = vec![row.probe.describe().to_string(), row.when.to_string()];
        match &row.spread {
            None => cells.extend((2..DISK_HEADER.len()).map(|_| FAILED.to_string())),
            Some(s) => cells.extend([
                row.samples.to_string(),
                format!("{:.3}", s.p50),
                format!("{:.3}", s.p99),
                format!("{:.3}", s.max),
            ]),
        }
        out += &line(cells.into_iter());
    }
    out
}

/// One restore case's row.
#[derive(Debug)]
pub struct RestoreRow {
    /// The case's name.
    pub case: String,
    /// Its measurements; `None` if it failed.
    pub outcome: Option<restore::Outcome>,
}

const RESTORE_HEADER: [&str; 8] = [
    "case",
    "store files",
    "store size",
    "units restored",
    "restores",
    "start to exec p50 (ms)",
    "max (ms)",
    "empty store, start to exec p50 (ms)",
];

/// The restores' table, header first.
pub fn render_restores(rows: &[RestoreRow]) -> String {
    let mut out = header(&RESTORE_HEADER);
    for row in rows {
        let mut cells = vec![row.case.clone()];
        match &row.outcome {
            None => cells.extend((1..RESTORE_HEADER.len()).map(|_| FAILED.to_string())),
            Some(o) => {
                let spread = Spread::of_nanos(&o.samples);
                let ms = |pick: fn(&Spread) -> f64| {
                    spread
                        .as_ref()
                        .map_or(ABSENT.into(), |s| format!("{:.2}", pick(s)))
                };
                cells.extend([
                    o.store.files.to_string(),
                    bytes(o.store.bytes),
                    o.units.to_string(),
                    o.samples.len().to_string(),
                    ms(|s| s.p50),
                    ms(|s| s.max),
                    Spread::of_nanos(&o.empty).map_or(ABSENT.into(), |s| format!("{:.2}", s.p50)),
                ]);
            }
        }
        out += &line(cells.into_iter());
    }
    out
}

/// One case's row: its name, and what it measured (`None` if it failed).
#[derive(Debug)]
pub struct Row {
    /// The case's name.
    pub case: &'static str,
    /// The program's planned commits per second (0: idle, no rate to show).
    pub rate: u32,
    /// Its measurements.
    pub outcome: Option<Outcome>,
}

const HEADER: [&str; 13] = [
    "case",
    "commits/s",
    "generations/s",
    "lag p50 (ms)",
    "lag p99 (ms)",
    "lag max (ms)",
    "disk bytes/generation",
    "changed bytes/generation",
    "written/changed",
    "supervisor CPU %",
    "supervisor private max",
    "store files",
    "store at exit",
];

/// Shown where the supervisor reported nothing to compute a column from.
const ABSENT: &str = "n/a";
/// Shown in every measured column of a case that failed.
pub const FAILED: &str = "failed";

/// The load cases' table, header first.
pub fn render(rows: &[Row]) -> String {
    let mut out = header(&HEADER);
    for row in rows {
        let mut cells = vec![row.case.to_string()];
        match &row.outcome {
            None => cells.extend((1..HEADER.len()).map(|_| FAILED.to_string())),
            Some(outcome) => {
                let s = outcome.summary.clone().unwrap_or_default();
                cells.extend([
                    number(outcome.commits_per_second, 0),
                    number(s.per_second, 1),
                    number(s.lag_p50_ms, 2),
                    number(s.lag_p99_ms, 2),
                    number(s.lag_max_ms, 2),
                    number(s.written_per_generation(), 0),
                    number(s.changed_per_generation(), 0),
                    number(s.written_per_changed(), 2),
                    format!("{:.1}", outcome.cpu_percent),
                    outcome.private_max.map_or(ABSENT.into(), bytes),
                    outcome.store.files.to_string(),
                    bytes(outcome.store.bytes),
                ]);
            }
        }
        out += &line(cells.into_iter());
    }
    out
}

/// Lines explaining the table's `n/a`, `failed` and unusual values.
pub fn notes(rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    let without_summary: Vec<&str> = rows
        .iter()
        .filter(|r| r.outcome.as_ref().is_some_and(|o| o.summary.is_none()))
        .map(|r| r.case)
        .collect();
    if !without_summary.is_empty() {
        notes.push(format!(
            "{ABSENT}: the supervisor logged no `snapshot summary` line ({}).",
            without_summary.join("; ")
        ));
    }
    for row in rows {
        let Some(s) = row.outcome.as_ref().and_then(|o| o.summary.as_ref()) else {
            continue;
        };
        let columns = [
            s.per_second,
            s.lag_p50_ms,
            s.lag_p99_ms,
            s.lag_max_ms,
            s.written_per_generation(),
            s.changed_per_generation(),
            s.written_per_changed(),
        ];
        if columns.iter().any(Option::is_none) {
            let shown = |v: Option<u64>| v.map_or_else(|| ABSENT.to_string(), |n| n.to_string());
            notes.push(format!(
                "{}: {ABSENT} where the summary lacks the field or has zero to divide by \
                 (generations={}, bytes_changed={}).",
                row.case,
                shown(s.generations),
                shown(s.bytes_changed),
            ));
        }
        if let Some(skipped) = s.skipped.filter(|&n| n > 0) {
            notes.push(format!(
                "{}: the supervisor reported skipped={skipped}.",
                row.case
            ));
        }
    }
    let no_rate: Vec<&str> = rows
        .iter()
        .filter(|r| r.rate > 0 && r.outcome.as_ref().is_some_and(|o| o.commits_per_second.is_none()))
        .map(|r| r.case)
        .collect();
    if !no_rate.is_empty() {
        notes.push(format!(
            "commits/s {ABSENT}: the program printed fewer than two progress lines in the window ({}).",
            no_rate.join("; ")
        ));
    }
    notes
}

fn header(names: &[&str]) -> String {
    line(names.iter().map(|h| h.to_string())) + &line(names.iter().map(|_| "---".to_string()))
}

fn line(cells: impl Iterator<Item = String>) -> String {
    let cells: Vec<String> = cells.collect();
    format!("| {} |\n", cells.join(" | "))
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| ABSENT.to_string(), |v| format!("{v:.decimals$}"))
}

fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n < KIB {
        format!("{n} B")
    } else if n < KIB * KIB {
        format!("{:.1} KiB", n / KIB)
    } else {
        format!("{:.1} MiB", n / (KIB * KIB))
    }
}

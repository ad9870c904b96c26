//! The Markdown table of results and the notes under it.

use crate::case::Outcome;

/// One case's row: its name, and what it measured (`None` if it failed).
#[derive(Debug)]
pub struct Row {
    /// The case's name.
    pub case: &'static str,
    /// Its measurements.
    pub outcome: Option<Outcome>,
}

const HEADER: [&str; 10] = [
    "case",
    "generations/s",
    "lag p50 (ms)",
    "lag p99 (ms)",
    "lag max (ms)",
    "disk bytes/generation",
    "changed bytes/generation",
    "written/changed",
    "supervisor CPU %",
    "store at exit",
];

/// Shown where the supervisor reported nothing to compute a column from.
const ABSENT: &str = "n/a";
/// Shown in every measured column of a case that failed.
const FAILED: &str = "failed";

/// The table, header first.
pub fn render(rows: &[Row]) -> String {
    let mut out = line(HEADER.iter().map(|h| h.to_string()));
    out += &line(HEADER.iter().map(|_| "---".to_string()));
    for row in rows {
        let mut cells = vec![row.case.to_string()];
        match &row.outcome {
            None => cells.extend((1..HEADER.len()).map(|_| FAILED.to_string())),
            Some(outcome) => {
                let s = outcome.summary.clone().unwrap_or_default();
                cells.extend([
                    number(s.per_second, 1),
                    number(s.lag_p50_ms, 2),
                    number(s.lag_p99_ms, 2),
                    number(s.lag_max_ms, 2),
                    number(s.written_per_generation(), 0),
                    number(s.changed_per_generation(), 0),
                    number(s.written_per_changed(), 2),
                    format!("{:.1}", outcome.cpu_percent),
                    bytes(outcome.store_bytes),
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
    if rows.iter().any(|r| r.outcome.is_none()) {
        notes.push(format!(
            "{FAILED}: the case could not be measured; its error is on stderr."
        ));
    }
    notes
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

//! The Markdown table of results.

use shm_snapshot_bench::stats::Spread;

/// One row: a case's name and what it measured (`None` if it failed).
#[derive(Debug)]
pub struct Row {
    /// The case's name.
    pub case: String,
    /// Its measurements.
    pub measured: Option<Measured>,
}

/// The measured columns of a row.
#[derive(Debug)]
pub struct Measured {
    /// Kills sent.
    pub kills: u64,
    /// Relaunches timed.
    pub timed: u64,
    /// Their times; `None` if none was timed.
    pub spread: Option<Spread>,
    /// How the run ended.
    pub end: String,
}

const HEADER: [&str; 7] = [
    "case",
    "kills",
    "relaunches timed",
    "p50 (ms)",
    "p99 (ms)",
    "max (ms)",
    "run",
];

/// Shown where there is no time to show.
const ABSENT: &str = "n/a";
/// Shown in every measured column of a case that failed.
pub const FAILED: &str = "failed";

/// The table, header first.
pub fn render(rows: &[Row]) -> String {
    let mut out = line(HEADER.iter().map(|h| h.to_string()));
    out += &line(HEADER.iter().map(|_| "---".to_string()));
    for row in rows {
        let mut cells = vec![row.case.clone()];
        match &row.measured {
            None => cells.extend((1..HEADER.len()).map(|_| FAILED.to_string())),
            Some(m) => {
                let ms = |pick: fn(&Spread) -> f64| {
                    m.spread
                        .as_ref()
                        .map_or(ABSENT.into(), |s| format!("{:.2}", pick(s)))
                };
                cells.extend([
                    m.kills.to_string(),
                    m.timed.to_string(),
                    ms(|s| s.p50),
                    ms(|s| s.p99),
                    ms(|s| s.max),
                    m.end.clone(),
                ]);
            }
        }
        out += &line(cells.into_iter());
    }
    out
}

fn line(cells: impl Iterator<Item = String>) -> String {
    let cells: Vec<String> = cells.collect();
    format!("| {} |\n", cells.join(" | "))
}

//! The run as one line of JSON, printed last on stdout for scripts (the
//! same figures as the tables, unrounded; `null` where a table shows `n/a`,
//! an `"error"` where it shows `failed`).

use serde_json::{Value, json};
use shm_snapshot_bench::stats::Spread;

use crate::table::{DiskRow, RestoreRow, Row};

/// What the run was and where, for the report's head.
#[derive(Debug)]
pub struct Context<'a> {
    /// Measured window of each load case, in seconds.
    pub window_s: u64,
    /// Unmeasured time before it, in seconds.
    pub warm_up_s: u64,
    /// Where the stores went.
    pub stores: String,
    /// Whether that is tmpfs.
    pub tmpfs: bool,
    /// shm-restore's `--interval`, as passed, if it was.
    pub interval: Option<String>,
    /// Restores timed per restore case.
    pub restores: usize,
    /// The cases' rows, in order.
    pub cases: &'a [Row],
    /// The sync probes' rows.
    pub disk: &'a [DiskRow],
    /// The restore cases' rows.
    pub restore: &'a [RestoreRow],
}

/// The JSON line.
pub fn render(run: &Context<'_>) -> String {
    let spread = |s: &Option<Spread>| match s {
        None => json!({ "error": "not measured" }),
        Some(s) => json!({ "p50_ms": s.p50, "p99_ms": s.p99, "max_ms": s.max }),
    };
    let disk: Vec<Value> = run
        .disk
        .iter()
        .map(|d| {
            json!({
                "probe": d.probe.key(),
                "when": d.when,
                "samples": d.samples,
                "latency": spread(&d.spread),
            })
        })
        .collect();
    let cases: Vec<Value> = run
        .cases
        .iter()
        .map(|row| match &row.outcome {
            None => json!({ "case": row.case, "error": "not measured" }),
            Some(o) => {
                let s = o.summary.clone().unwrap_or_default();
                json!({
                    "case": row.case,
                    "planned_commits_per_second": row.rate,
                    "commits_per_second": o.commits_per_second,
                    "generations": s.generations,
                    "generations_per_second": s.per_second,
                    "lag_p50_ms": s.lag_p50_ms,
                    "lag_p99_ms": s.lag_p99_ms,
                    "lag_max_ms": s.lag_max_ms,
                    "disk_bytes_per_generation": s.written_per_generation(),
                    "changed_bytes_per_generation": s.changed_per_generation(),
                    "written_per_changed": s.written_per_changed(),
                    "skipped": s.skipped,
                    "supervisor_cpu_percent": o.cpu_percent,
                    "supervisor_private_max_bytes": o.private_max,
                    "store_files": o.store.files,
                    "store_bytes": o.store.bytes,
                })
            }
        })
        .collect();
    let restores: Vec<Value> = run
        .restore
        .iter()
        .map(|row| match &row.outcome {
            None => json!({ "case": row.case, "error": "not measured" }),
            Some(o) => json!({
                "case": row.case,
                "store_files": o.store.files,
                "store_bytes": o.store.bytes,
                "units_restored": o.units,
                "start_to_exec_ms": o.samples.iter().map(|&ns| ns as f64 / 1e6).collect::<Vec<f64>>(),
                "start_to_exec": spread(&Spread::of_nanos(&o.samples)),
                "empty_store_start_to_exec": spread(&Spread::of_nanos(&o.empty)),
            }),
        })
        .collect();
    json!({
        "bench": "e2e",
        "window_s": run.window_s,
        "warm_up_s": run.warm_up_s,
        "fsync": "always",
        "stores": run.stores,
        "tmpfs": run.tmpfs,
        "interval": run.interval,
        "restores_per_case": run.restores,
        "disk_sync": disk,
        "cases": cases,
        "restore_at_start": restores,
    })
    .to_string()
}

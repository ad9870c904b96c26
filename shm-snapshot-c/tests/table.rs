//! The C example, built against the library: alone, on a region whose
//! table does not validate, and under hundreds of real SIGKILLs.
//!
//! `SHM_C_CHAOS_KILLS=N` sets the kill count of the chaos test (200 by
//! default).

mod support;

use std::process::Command;
use std::time::Duration;

use shm_snapshot_tests::chaos::run_supervisor;
use shm_snapshot_tests::table::{Progress, check_chaos_run, fold, mix, progress, region_claiming};
use shm_snapshot_tests::{run_with_region, workdir};
use support::table;

#[test]
fn the_example_runs_alone_on_a_private_region() {
    let out = Command::new(table())
        .args(["--limit", "256", "--batch", "64", "--interval-ms", "0"])
        .env_remove("LISTEN_FDS")
        .output()
        .expect("running the example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no supervisor"), "{stderr}");
    assert_eq!(
        progress(&String::from_utf8_lossy(&out.stdout)),
        [
            Progress::Restored(0),
            Progress::Committed(64),
            Progress::Committed(128),
            Progress::Committed(192),
            Progress::Committed(256)
        ]
    );
}

#[test]
fn a_restored_table_that_does_not_validate_exits_with_status_3() {
    let good: Vec<u64> = (0..4).map(mix).collect();
    let (code, out, err) = run_with_region(
        table(),
        &region_claiming(4, fold(&good), &good),
        &["--limit", "4"],
    );
    assert_eq!(code, Some(0), "the true table validates: {err}");
    assert_eq!(out, "restored entries=4\n");

    let mut torn = good.clone();
    torn[2] = 0;
    let (code, _, err) = run_with_region(table(), &region_claiming(4, fold(&good), &torn), &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.starts_with("inconsistent: entry 2 is 0000000000000000"),
        "{err}"
    );

    let (code, _, err) = run_with_region(table(), &region_claiming(4, fold(&good) ^ 1, &good), &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.starts_with("inconsistent: the 4 entries fold to"), "{err}");
}

#[test]
fn the_example_survives_chaos_kills_with_nothing_committed_lost() {
    let kills: u64 = std::env::var("SHM_C_CHAOS_KILLS")
        .ok()
        .map(|v| v.parse().expect("SHM_C_CHAOS_KILLS is a number"))
        .unwrap_or(200);
    let dir = workdir();
    let runs = format!("--chaos-runs={kills}");
    let finished = run_supervisor(
        dir.path(),
        &[
            "--snapshot=state",
            "--report=report.json",
            "--size=8MiB",
            "--fsync=never",
            "--chaos-kill=20ms..60ms",
            &runs,
            "--",
            table().to_str().expect("a UTF-8 path"),
            "--batch",
            "16",
            "--interval-ms",
            "2",
        ],
        Duration::from_secs(60) + Duration::from_millis(500) * kills as u32,
    );
    check_chaos_run(&finished, dir.path(), kills, "C example");
}

//! Chaos mode across real processes: hundreds of real SIGKILLs of
//! primes-snapshot under shm-restore, each restart checked against what was
//! committed before it, and the report checked against what was observed.
//!
//! `SHM_SOAK_KILLS=N` sets the kill count of the first test (300 by
//! default); the README gives the 10,000-kill soak command.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shm_snapshot_tests::chaos::{
    LOG, Progress, check_nothing_lost, progress, run_supervisor, started_pids, wait_until_spinning,
};
use shm_snapshot_tests::{bin, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

/// Kills in the default suite: enough that every kill kind and both restore
/// sources come up many times, in about half a minute.
const DEFAULT_KILLS: u64 = 300;

/// A small region keeps each post-mortem generation and disk restore cheap;
/// no fsync, as on tmpfs: the disk path is exercised, the disk's speed is not.
const STORE: &[&str] = &["--size=8MiB", "--fsync=never", "--backoff=10ms"];

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("the report was written");
    serde_json::from_str(&text).expect("the report is JSON")
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {path} in the report:\n{v:#}"))
}

fn args<'a>(extra: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--snapshot=state", "--report=report.json"];
    all.extend(STORE);
    all.extend(extra);
    all.push("--");
    all.extend(command);
    all
}

#[test]
fn random_kills_never_lose_a_committed_unit_nor_restore_an_inconsistent_one() {
    let kills: u64 = std::env::var("SHM_SOAK_KILLS")
        .ok()
        .map(|v| v.parse().expect("SHM_SOAK_KILLS is a number"))
        .unwrap_or(DEFAULT_KILLS);
    let dir = workdir();
    let runs = format!("--chaos-runs={kills}");
    let primes = bin("primes-snapshot");
    // A commit every 2 ms or so, small batches: a run of 20..60 ms commits
    // a dozen or two times, and the table grows slowly enough that a
    // 10,000-kill soak stays well within the region (about 300,000 primes
    // of the 8 MiB region's 900,000).
    let finished = run_supervisor(
        dir.path(),
        &args(
            &["--chaos-kill=20ms..60ms", &runs],
            &[primes.to_str().unwrap(), "--interval=2ms", "--batch=20"],
        ),
        Duration::from_secs(60) + Duration::from_millis(500) * kills as u32,
    );
    let log = finished.transcript();
    assert!(
        !finished.err.lines().any(|l| l.starts_with("inconsistent")),
        "a start found its restored state inconsistent:\n{log}"
    );
    let lines = progress(&finished.out);
    let starts = check_nothing_lost(&lines).unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(
        matches!(lines.first(), Some(Progress::Restored { primes: 0, last: 0 })),
        "the first start begins on an empty store:\n{log}"
    );
    assert_eq!(finished.status.code(), Some(0), "{log}");

    let r = report(dir.path());
    assert_eq!(u(&r, "/kills"), kills, "{r:#}");
    let child_starts = finished.err.matches("child started").count() as u64;
    assert_eq!(u(&r, "/relaunches"), child_starts - 1, "{r:#}");
    // One relaunch per `restored` line after the first, but for a run
    // killed before it printed one: on a loaded machine a start can take
    // longer than the shortest interval (20 ms). A silent start hides no
    // loss (the next printed restore is checked against the last commit
    // printed before it); the bound only makes sure most starts are checked.
    let silent = child_starts.saturating_sub(starts as u64);
    assert!(
        starts as u64 <= child_starts && silent <= child_starts / 4,
        "{starts} `restored` lines for {child_starts} starts:\n{r:#}"
    );
    assert_eq!(u(&r, "/failures/total"), 0, "{r:#}");
    assert_eq!(r["completed"], Value::Bool(true), "{r:#}");
    assert_eq!(r["last_run"]["committed"], Value::Bool(true), "{r:#}");
    let (disk, memory) = (u(&r, "/restore_from/disk"), u(&r, "/restore_from/memory"));
    assert!(disk > 0 && memory > 0, "both restore sources are used:\n{r:#}");
    assert_eq!(disk + memory, kills, "one restore source per kill:\n{r:#}");
    assert_eq!(
        disk + memory + u(&r, "/relaunches_after_failures"),
        u(&r, "/relaunches"),
        "every relaunch is after a kill or a failure:\n{r:#}"
    );
    let by_kind = u(&r, "/kinds/timer")
        + u(&r, "/kinds/after_commit/caught")
        + u(&r, "/kinds/after_commit/fell_back")
        + u(&r, "/kinds/mid_write/caught")
        + u(&r, "/kinds/mid_write/fell_back");
    assert_eq!(by_kind, kills, "every kill has a kind:\n{r:#}");
    assert!(
        u(&r, "/kinds/after_commit/caught") > 0,
        "some kills land right after a commit:\n{r:#}"
    );
    assert_eq!(r["schedule"].as_array().map(Vec::len), Some(kills as usize));
    let generations = u(&r, "/generations_persisted");
    assert!(
        generations >= kills,
        "a post-mortem generation per kill at least:\n{r:#}"
    );

    let restored = lines
        .iter()
        .filter(|l| matches!(l, Progress::Restored { .. }))
        .count();
    let last = lines.iter().rev().find_map(|l| match l {
        Progress::Committed { primes, .. } => Some(*primes),
        _ => None,
    });
    println!(
        "chaos: {kills} kills, {} failures, restore p50 {} ms, p99 {} ms, max {} ms; \
         kinds timer {}, after-commit {}+{} fell back, mid-write {}+{} fell back ({} before the count moved); \
         {disk} from disk, {memory} from memory; {generations} generations; {restored} starts \
         ({silent} killed before printing); primes {last:?}; {} s",
        u(&r, "/failures/total"),
        r["restore_ms"]["p50"],
        r["restore_ms"]["p99"],
        r["restore_ms"]["max"],
        u(&r, "/kinds/timer"),
        u(&r, "/kinds/after_commit/caught"),
        u(&r, "/kinds/after_commit/fell_back"),
        u(&r, "/kinds/mid_write/caught"),
        u(&r, "/kinds/mid_write/fell_back"),
        u(&r, "/kinds/mid_write/landed_mid_commit"),
        u(&r, "/duration_ms") as f64 / 1000.0,
    );
}

#[test]
fn mid_write_kills_land_inside_a_slow_commit() {
    // Batches of 100,000 candidates: each commit writes some 60 KiB of new
    // primes into the arena, tens of microseconds between the first byte
    // and the publish, so a kill sent on sight of the write lands before
    // the commit count moves. Seed 5 plans 11 mid-write kills of 30.
    let dir = workdir();
    let primes = bin("primes-snapshot");
    let finished = run_supervisor(
        dir.path(),
        &args(
            &["--chaos-kill=20ms..60ms", "--chaos-runs=30", "--seed=5"],
            &[primes.to_str().unwrap(), "--interval=0", "--batch=100000"],
        ),
        Duration::from_secs(120),
    );
    let log = finished.transcript();
    assert_eq!(finished.status.code(), Some(0), "{log}");
    assert!(
        !finished.err.lines().any(|l| l.starts_with("inconsistent")),
        "{log}"
    );
    check_nothing_lost(&progress(&finished.out)).unwrap_or_else(|e| panic!("{e}\n{log}"));
    let r = report(dir.path());
    let planned = r["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "mid-write")
        .count();
    assert_eq!(planned, 11, "{r:#}");
    assert_eq!(
        u(&r, "/kinds/mid_write/caught") + u(&r, "/kinds/mid_write/fell_back"),
        11,
        "{r:#}"
    );
    let landed = u(&r, "/kinds/mid_write/landed_mid_commit");
    assert!(
        landed > 0 && landed <= u(&r, "/kinds/mid_write/caught"),
        "mid-write kills caught commits in progress:\n{r:#}"
    );
}

/// A program that fails by itself twice: with status 3 on its first start
/// after a chaos kill, and with status 7 on its first start after a second
/// kill; otherwise it commits and sleeps until killed. A kill is due some
/// time after a start whatever the start has done by then, so it may land
/// before the script has done anything: the script counts neither its
/// starts nor its failures itself, it reads the kills and failures so far
/// from the supervisor's log, which has each end in it before the next
/// start. A start that gets to decide appends `<pid> <decision>` to
/// `decisions` (a failing start that is killed before it exits is followed
/// by another that decides the same).
fn flaky_program(dir: &Path) -> String {
    let script = dir.join("flaky.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             seen() {{ grep -c \"$1\" {LOG}; }}\n\
             kills=$(seen 'killed by SIGKILL')\n\
             if [ $kills -ge 1 ] && [ $(seen 'exited with status 3') -eq 0 ]; then echo \"$$ 3\" >> decisions; exit 3; fi\n\
             if [ $kills -ge 2 ] && [ $(seen 'exited with status 7') -eq 0 ]; then echo \"$$ 7\" >> decisions; exit 7; fi\n\
             echo \"$$ run\" >> decisions\n\
             exec {CHILD} --commit 1 --then sleep\n"
        ),
    )
    .expect("writing the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    script.to_str().expect("utf-8 path").to_owned()
}

/// The start number (1 = the first, per the supervisor's log) of the last
/// start of the flaky program that decided `decision`.
fn decided(dir: &Path, log: &str, decision: &str) -> u64 {
    let decisions = std::fs::read_to_string(dir.join("decisions")).expect("the script's decisions");
    let pid: i32 = decisions
        .lines()
        .filter_map(|l| l.split_once(' '))
        .rfind(|(_, d)| *d == decision)
        .and_then(|(pid, _)| pid.parse().ok())
        .unwrap_or_else(|| panic!("no start decided {decision}:\n{decisions}"));
    let started = started_pids(log);
    let at = started.iter().position(|&p| p == pid);
    at.unwrap_or_else(|| panic!("pid {pid} is not among the starts {started:?}")) as u64 + 1
}

#[test]
fn a_program_that_fails_by_itself_is_counted_and_fails_the_run() {
    let dir = workdir();
    let program = flaky_program(dir.path());
    let finished = run_supervisor(
        dir.path(),
        &args(
            &["--chaos-kill=30ms..60ms", "--chaos-runs=3", "--seed=1"],
            &[&program],
        ),
        Duration::from_secs(60),
    );
    let log = finished.transcript();
    assert_eq!(
        finished.status.code(),
        Some(4),
        "a failed run makes chaos mode fail:\n{log}"
    );
    let r = report(dir.path());
    assert_eq!(u(&r, "/kills"), 3, "{r:#}");
    assert_eq!(u(&r, "/failures/total"), 2, "{r:#}");
    assert_eq!(u(&r, "/failures/inconsistent"), 1, "{r:#}");
    assert_eq!(u(&r, "/failures/other"), 1, "{r:#}");
    // Which starts failed depends on where the kills landed: the 2nd and
    // the 4th when every start gets to decide before its kill is due.
    let (failed_3, failed_7) = (
        decided(dir.path(), &finished.err, "3"),
        decided(dir.path(), &finished.err, "7"),
    );
    assert!(failed_3 >= 2 && failed_7 > failed_3, "{r:#}");
    assert_eq!(r["failures"]["runs"][0]["run"], failed_3, "{r:#}");
    assert_eq!(
        r["failures"]["runs"][0]["status"], "exited with status 3",
        "{r:#}"
    );
    assert_eq!(r["failures"]["runs"][1]["run"], failed_7, "{r:#}");
    assert_eq!(
        r["failures"]["runs"][1]["status"], "exited with status 7",
        "{r:#}"
    );
    // Starts: three killed, two failed, the last one stopped.
    assert_eq!(started_pids(&finished.err).len(), 6, "{log}");
    assert_eq!(u(&r, "/relaunches"), 5, "{r:#}");
    assert_eq!(u(&r, "/relaunches_after_failures"), 2, "{r:#}");
    let (disk, memory) = (u(&r, "/restore_from/disk"), u(&r, "/restore_from/memory"));
    assert_eq!(disk + memory, 3, "{r:#}");
    let said =
        format!("5 relaunches (3 after kills: {disk} from disk, {memory} from memory; 2 after failures)");
    assert!(finished.err.contains(&said), "no `{said}`:\n{log}");
    assert_eq!(r["exit_status"], 4, "{r:#}");
    assert!(
        finished.err.contains("2 failed runs (1 inconsistent, 1 other)"),
        "{log}"
    );
}

#[test]
fn a_seed_repeats_the_schedule_and_a_random_one_is_logged() {
    let dir = workdir();
    let primes = bin("primes-snapshot");
    let primes = primes.to_str().unwrap();
    let run = |flags: &[&str]| {
        let _ = std::fs::remove_dir_all(dir.path().join("state"));
        let mut all = vec!["--chaos-kill=10ms..30ms", "--chaos-runs=12"];
        all.extend(flags);
        let finished = run_supervisor(
            dir.path(),
            &args(&all, &[primes, "--interval=1ms", "--batch=50"]),
            Duration::from_secs(60),
        );
        assert_eq!(finished.status.code(), Some(0), "{}", finished.transcript());
        (report(dir.path()), finished.err)
    };
    let (a, _) = run(&["--seed=42"]);
    let (b, _) = run(&["--seed=42"]);
    let (c, log) = run(&["--chaos-restore=disk"]);
    assert_eq!(a["seed"], 42);
    assert_eq!(a["schedule"], b["schedule"], "same seed, same schedule");
    assert_eq!(a["schedule"].as_array().map(Vec::len), Some(12));
    // The restore sources of c are all disk by its mode: the seed shows in
    // the intervals and kinds.
    let times = |r: &Value| -> Vec<(Value, Value)> {
        r["schedule"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["after_us"].clone(), k["kind"].clone()))
            .collect()
    };
    assert_ne!(times(&a), times(&c), "another seed, another schedule");
    let seed = u(&c, "/seed");
    assert!(
        log.contains(&format!("repeat with --seed {seed}")),
        "the random seed is logged:\n{log}"
    );
    assert_eq!(u(&c, "/restore_from/disk"), 12, "{c:#}");
    let all_disk = c["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["restore"] == "disk");
    assert!(all_disk, "{c:#}");
}

#[test]
fn bad_chaos_flags_are_usage_errors() {
    let dir = workdir();
    for (flags, says) in [
        (
            &["--chaos-kill=500ms..20ms"][..],
            "MIN 500ms is longer than MAX 20ms",
        ),
        (&["--chaos-kill=20ms"][..], "is not MIN..MAX"),
        (&["--chaos-kill=20ms..soon"][..], "MAX `soon`"),
        (&["--chaos-runs=3"][..], "--chaos-kill"),
        (&["--seed=3"][..], "--chaos-kill"),
        (&["--report=r.json"][..], "--chaos-kill"),
        (&["--chaos-restore=disk"][..], "--chaos-kill"),
        (&["--chaos-kill=1s..2s", "--chaos-restore=tape"][..], "tape"),
    ] {
        let mut all = vec!["--snapshot=state"];
        all.extend(flags);
        all.extend(["--", "true"]);
        let finished = run_supervisor(dir.path(), &all, Duration::from_secs(30));
        assert_eq!(finished.status.code(), Some(2), "{flags:?}: {}", finished.err);
        let lines: Vec<&str> = finished.err.lines().collect();
        assert_eq!(lines.len(), 1, "{flags:?}: one line: {}", finished.err);
        assert!(
            lines[0].starts_with("shm-restore: ") && lines[0].contains(says),
            "{flags:?}: {}",
            lines[0]
        );
        assert!(
            !dir.path().join("state").exists(),
            "{flags:?}: nothing is created"
        );
    }
}

/// Seed 42 plans an after-commit kill first (and a mid-write one second):
/// a kill that spins for its moment, which a program that never commits
/// never gives it.
const SPINNING_SEED: &str = "--seed=42";

fn first_kind(r: &Value) -> &str {
    r["schedule"][0]["kind"].as_str().unwrap_or_default()
}

#[test]
fn a_stop_signal_ends_a_kill_that_waits_for_its_moment() {
    // The kill is due 1 s after the start and then waits up to 1 s for a
    // commit that never comes, spinning; SIGTERM arrives once it is seen
    // spinning, in that wait.
    let dir = workdir();
    let mut sup = shm_snapshot_tests::Proc::supervise(
        dir.path(),
        "state",
        &[
            "--report=report.json",
            "--size=8MiB",
            "--fsync=never",
            "--chaos-kill=1s..1s",
            "--chaos-runs=1",
            SPINNING_SEED,
        ],
        &[CHILD, "--commit", "0", "--then", "sleep"],
    );
    sup.expect_out("done");
    wait_until_spinning(sup.pid(), Duration::from_millis(50), Duration::from_secs(10));
    let signalled = std::time::Instant::now();
    sup.signal(libc::SIGTERM);
    let status = sup.wait();
    let took = signalled.elapsed();
    let log = sup.transcript();
    let r = report(dir.path());
    assert_eq!(first_kind(&r), "after-commit", "{r:#}");
    assert_eq!(u(&r, "/kills"), 0, "the stop came first; no kill:\n{r:#}\n{log}");
    assert!(!log.contains("a plain kill instead"), "{log}");
    assert!(log.contains("killed by SIGTERM"), "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    // Acted on at once, not when the wait ran out (most of 1 s later).
    assert!(took < Duration::from_millis(500), "took {took:?}:\n{log}");
}

#[test]
fn a_hang_found_while_a_kill_waits_for_its_moment_is_a_failure_not_a_kill() {
    // The kill is due 400 ms after each start and waits up to 400 ms more;
    // the program never lays the region out, let alone beats, so the hang
    // watch's clock runs from the start however slowly the program starts,
    // and takes it for hung at 500 ms, inside that wait.
    let dir = workdir();
    let finished = run_supervisor(
        dir.path(),
        &args(
            &[
                "--chaos-kill=400ms..400ms",
                "--chaos-runs=1",
                SPINNING_SEED,
                "--hang-timeout=500ms",
                "--restart-limit=1",
            ],
            &["sleep", "600"],
        ),
        Duration::from_secs(60),
    );
    let log = finished.transcript();
    let r = report(dir.path());
    assert_eq!(first_kind(&r), "after-commit", "{r:#}");
    assert_eq!(finished.status.code(), Some(4), "{log}");
    assert_eq!(u(&r, "/kills"), 0, "{r:#}\n{log}");
    assert_eq!(u(&r, "/failures/total"), 2, "{r:#}");
    for run in 0..2 {
        let status = r["failures"]["runs"][run]["status"].as_str().unwrap_or_default();
        assert!(
            status.starts_with("hung: heartbeat unchanged for") && status.ends_with("killed by SIGKILL"),
            "{r:#}"
        );
    }
}

#[test]
fn a_last_run_that_never_commits_fails_the_chaos_run() {
    // Every run lays the region out and never commits: the run after the
    // only kill starts on a blank region (nothing was ever committed), and
    // laying it out again is no commit. The wait for it is 10 s.
    let dir = workdir();
    let finished = run_supervisor(
        dir.path(),
        &args(
            &["--chaos-kill=20ms..40ms", "--chaos-runs=1"],
            &[CHILD, "--commit", "0", "--then", "sleep"],
        ),
        Duration::from_secs(60),
    );
    let log = finished.transcript();
    let r = report(dir.path());
    assert_eq!(r["last_run"]["committed"], Value::Bool(false), "{r:#}");
    assert_eq!(finished.status.code(), Some(4), "{log}");
    assert_eq!(r["exit_status"], 4, "{r:#}");
    assert_eq!(u(&r, "/kills"), 1, "{r:#}");
    assert_eq!(u(&r, "/failures/total"), 1, "{r:#}");
    assert_eq!(u(&r, "/failures/other"), 1, "{r:#}");
    assert_eq!(r["failures"]["runs"][0]["run"], 2, "{r:#}");
    let status = r["failures"]["runs"][0]["status"].as_str().unwrap_or_default();
    assert!(status.starts_with("made no commit within 10s"), "{r:#}");
    assert!(
        finished.err.contains("1 failed runs (0 inconsistent, 1 other)"),
        "{log}"
    );
}

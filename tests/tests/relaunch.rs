//! Kill -9 loops from outside the supervisor, with the default restart
//! flags: a program that makes progress is relaunched every time and loses
//! nothing; one that never commits meets the restart limit; one that
//! commits and dies at once is paced, not spun.

use std::time::{Duration, Instant};

use shm_snapshot_tests::chaos::{check_nothing_lost, progress};
use shm_snapshot_tests::{Proc, Stream, bin, generations, send, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

/// Kills in the loop; `SHM_KILL_LOOP_KILLS` runs a longer one.
fn kills() -> usize {
    std::env::var("SHM_KILL_LOOP_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

/// Lines of `stream` seen so far that start with `prefix`.
fn count(sup: &Proc, stream: Stream, prefix: &str) -> usize {
    sup.seen
        .iter()
        .filter(|(s, l)| *s == stream && l.starts_with(prefix))
        .count()
}

/// Reads on until `n` lines of `stream` contain `text`.
fn wait_for(sup: &mut Proc, stream: Stream, text: &str, n: usize) {
    while sup
        .seen
        .iter()
        .filter(|(s, l)| *s == stream && l.contains(text))
        .count()
        < n
    {
        sup.expect(stream, |l| l.contains(text), text);
    }
}

/// The pid in the `n`th (1-based) `child started pid=N` log line.
fn started_pid(sup: &Proc, n: usize) -> i32 {
    let line = sup
        .seen
        .iter()
        .filter(|(s, l)| *s == Stream::Err && l.contains("child started"))
        .nth(n - 1)
        .map(|(_, l)| l.clone())
        .expect("the start was seen");
    line.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// A small generator for the kill intervals; the seed is printed so a
/// failing run can be told apart, but a run does not depend on it.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn a_kill_loop_from_outside_relaunches_every_time_and_loses_nothing() {
    let dir = workdir();
    let kills = kills();
    // The restart flags are the defaults (limit 5, backoff 100ms); a small
    // region and no fsync keep the test fast.
    let primes = bin("primes-snapshot");
    let primes = primes.to_str().expect("a UTF-8 path");
    let mut sup = Proc::supervise(dir.path(), "state", &["--size=8MiB", "--fsync=never"], &[primes]);
    let mut seed = u64::from(std::process::id()) | 1;
    eprintln!("kill intervals seeded with {seed}");
    for k in 1..=kills {
        // Run k has started and restored...
        wait_for(&mut sup, Stream::Out, "restored ", k);
        let started = Instant::now();
        wait_for(&mut sup, Stream::Err, "child started", k);
        let pid = started_pid(&sup, k);
        // ...and committed since: the death shows progress. Every stdout
        // line before run k's `restored` has been seen, so the next
        // `committed` is run k's.
        let restored_at = sup
            .seen
            .iter()
            .enumerate()
            .filter(|(_, (s, l))| *s == Stream::Out && l.starts_with("restored "))
            .nth(k - 1)
            .map(|(i, _)| i)
            .expect("seen");
        if !sup.seen[restored_at..]
            .iter()
            .any(|(s, l)| *s == Stream::Out && l.starts_with("committed "))
        {
            sup.expect_out("committed ");
        }
        let interval = Duration::from_millis(10 + next(&mut seed) % 91);
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
        send(pid, libc::SIGKILL);
    }
    // The last relaunch runs and commits; the supervisor never gave up.
    wait_for(&mut sup, Stream::Out, "restored ", kills + 1);
    sup.expect_out("committed ");
    sup.signal(libc::SIGTERM);
    let status = sup.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", tail(&sup));
    let err = sup.lines(Stream::Err);
    assert!(
        !err.iter().any(|l| l.contains("restart limit reached")),
        "{}",
        tail(&sup)
    );
    let at_once = err.iter().filter(|l| l.contains("relaunching at once")).count()
        + err
            .iter()
            .filter(|l| l.contains("relaunching after a pause"))
            .count();
    assert_eq!(
        at_once,
        kills,
        "every kill relaunched without a backoff:\n{}",
        tail(&sup)
    );
    let out = sup.lines(Stream::Out).join("\n");
    let starts = check_nothing_lost(&progress(&out)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(starts, kills + 1);
    assert_eq!(count(&sup, Stream::Out, "restored "), kills + 1);
}

#[test]
fn a_program_that_never_commits_stops_at_the_restart_limit() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--fsync=never"],
        &[CHILD, "--then", "exit:1"],
    );
    let status = sup.wait();
    assert_eq!(status.code(), Some(1), "{}", sup.transcript());
    let err = sup.lines(Stream::Err);
    assert_eq!(
        err.iter().filter(|l| l.contains("child started")).count(),
        6,
        "the first start and the 5 relaunches --restart-limit allows:\n{}",
        sup.transcript()
    );
    assert_eq!(
        err.iter()
            .filter(|l| l.contains("no commit since its start: relaunching after a backoff"))
            .count(),
        5,
        "{}",
        sup.transcript()
    );
    assert!(
        err.iter()
            .any(|l| l.contains("restart limit reached") && l.contains("without committing")),
        "{}",
        sup.transcript()
    );
}

#[test]
fn a_program_that_commits_and_dies_at_once_is_paced_not_spun() {
    let dir = workdir();
    // The supervisor's pacing allows a burst of 40 relaunches at once and
    // 20 a second after that, counted from its own start: whatever the
    // machine's speed, start 81 comes 2 s after it at the earliest.
    let began = Instant::now();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--fsync=never", "--size=4MiB"],
        &[CHILD, "--commit", "1", "--then", "exit:1"],
    );
    wait_for(&mut sup, Stream::Err, "child started", 81);
    let elapsed = began.elapsed();
    sup.signal(libc::SIGTERM);
    sup.wait();
    assert!(
        elapsed >= Duration::from_secs(2),
        "81 starts in {elapsed:?}: relaunches were not paced"
    );
    let err = sup.lines(Stream::Err);
    assert!(
        err.iter().any(|l| l.contains("relaunching after a pause")),
        "{}",
        tail(&sup)
    );
    assert!(!err.iter().any(|l| l.contains("restart limit reached")));
    // Every run committed the unit after the newest it recovered: nothing
    // committed before a death was lost (a lost unit would be committed
    // again with the same number).
    let numbers: Vec<u64> = sup
        .lines(Stream::Out)
        .iter()
        .filter_map(|l| l.strip_prefix("committed "))
        .map(|rest| {
            let payload = rest.split(' ').nth(1).expect("id payload");
            payload
                .trim_end_matches('.')
                .trim_start_matches("unit-")
                .parse()
                .expect("unit-<k>")
        })
        .collect();
    assert!(numbers.len() >= 80, "{}", tail(&sup));
    assert_eq!(
        numbers,
        (0..numbers.len() as u64).collect::<Vec<_>>(),
        "{}",
        tail(&sup)
    );
    assert!(!generations(&dir.path().join("state")).is_empty());
}

/// The last lines seen, for failure messages.
fn tail(sup: &Proc) -> String {
    let all = sup.transcript();
    let lines: Vec<&str> = all.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[test]
fn a_restart_that_commits_nothing_writes_no_generation() {
    let dir = workdir();
    let state = dir.path().join("state");
    let flags = ["--fsync=never", "--size=4MiB"];
    let mut first = Proc::supervise(
        dir.path(),
        "state",
        &flags,
        &[CHILD, "--commit", "2", "--then", "sleep"],
    );
    first.expect_out("done");
    first.signal(libc::SIGTERM);
    first.wait();
    let before = generations(&state);
    assert!(!before.is_empty(), "{}", first.transcript());
    // The same units again: restored, proven by the snapshot thread and by
    // the stop's post-mortem, and never persisted a second time.
    let mut second = Proc::supervise(dir.path(), "state", &flags, &[CHILD, "--then", "sleep"]);
    second.expect_out("done");
    second.signal(libc::SIGTERM);
    second.wait();
    assert_eq!(
        second
            .lines(Stream::Out)
            .iter()
            .filter(|l| l.starts_with("recovered "))
            .count(),
        2,
        "{}",
        second.transcript()
    );
    assert!(
        second
            .lines(Stream::Err)
            .iter()
            .any(|l| l.contains("nothing committed since the last generation")),
        "{}",
        second.transcript()
    );
    assert_eq!(generations(&state), before, "{}", second.transcript());
}

//! `--hang-timeout`: a program whose heartbeat stops is killed and
//! relaunched; one that stays busy and beats is left alone.

use std::time::{Duration, Instant};

use shm_snapshot_tests::{Proc, Stream, is_gone, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

fn child_pid(line: &str) -> i32 {
    line.strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .expect("pid line")
}

fn hung_lines(proc: &Proc) -> Vec<String> {
    proc.lines(Stream::Err)
        .into_iter()
        .filter(|l| l.contains("child hung"))
        .collect()
}

#[test]
fn child_that_stops_committing_is_killed_after_the_timeout_and_recovers_its_units() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--hang-timeout=400ms", "--backoff=10ms", "--fsync=never"],
        &[CHILD, "--commit", "3", "--then", "sleep"],
    );
    let first = child_pid(&sup.expect_out("pid "));
    sup.expect_out("done");
    let quiet_since = Instant::now();
    let hung = sup.expect_err("child hung");
    // The last commit came before `done`: at least the timeout later, less
    // the time the line took to arrive.
    assert!(
        quiet_since.elapsed() >= Duration::from_millis(350),
        "killed {:?} after the last commit",
        quiet_since.elapsed()
    );
    assert!(hung.contains("heartbeat unchanged for"), "{hung}");
    sup.seen_or_expect(Stream::Err, |l| l.contains("killed by SIGKILL"), "the kill");
    // The second run (stdout is one ordered stream; on a loaded machine
    // later runs' lines may have been read already while waiting for the
    // log, so they are picked out of what was seen).
    let first_line = format!("pid {first}");
    let second = child_pid(&sup.seen_or_expect(
        Stream::Out,
        |l| l.starts_with("pid ") && l != first_line,
        "the second run's pid",
    ));
    assert_ne!(second, first);
    assert!(is_gone(first));
    let second_line = format!("pid {second}");
    let second_run = |sup: &Proc| -> Option<Vec<String>> {
        let out = sup.lines(Stream::Out);
        let start = out.iter().position(|l| *l == second_line)?;
        let end = start + out[start..].iter().position(|l| l == "ready")?;
        Some(out[start..end].to_vec())
    };
    while second_run(&sup).is_none() {
        sup.expect_out("ready");
    }
    let recovered: Vec<String> = second_run(&sup)
        .expect("seen")
        .iter()
        .filter_map(|l| l.strip_prefix("recovered "))
        .map(|r| r.split_once(' ').expect("id payload").1.to_owned())
        .collect();
    assert_eq!(recovered, ["unit-0", "unit-1", "unit-2"]);
    sup.signal(libc::SIGTERM);
    sup.wait();
}

#[test]
fn busy_child_that_beats_without_committing_is_not_killed() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--hang-timeout=300ms", "--fsync=never"],
        &[CHILD, "--commit", "1", "--then", "heartbeat"],
    );
    let pid = child_pid(&sup.expect_out("pid "));
    sup.expect_out("done");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!is_gone(pid), "a beating program lives:\n{}", sup.transcript());
    sup.signal(libc::SIGTERM);
    sup.wait();
    assert_eq!(hung_lines(&sup), Vec::<String>::new(), "{}", sup.transcript());
    let starts = sup
        .lines(Stream::Out)
        .iter()
        .filter(|l| l.starts_with("pid "))
        .count();
    assert_eq!(starts, 1, "{}", sup.transcript());
}

#[test]
fn child_that_never_opens_its_region_is_taken_for_hung() {
    let dir = workdir();
    let started = Instant::now();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--hang-timeout=300ms", "--restart=never", "--fsync=never"],
        &["sleep", "1000"],
    );
    sup.expect_err("child hung");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let status = sup.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "{}", sup.transcript());
}

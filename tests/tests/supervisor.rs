//! The supervisor across real processes: real memfds, real SIGKILL, real
//! stores on disk.

use std::path::Path;

use shm_snapshot_tests::torture::{flip_byte, record, truncate};
use shm_snapshot_tests::{Proc, Stream, generations, is_gone, send, wait_gone, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

/// Fast relaunches so tests do not wait on backoff.
const FAST: &[&str] = &["--backoff=10ms", "--backoff-max=50ms", "--fsync=never"];

fn committed(proc: &Proc) -> Vec<String> {
    payloads(proc, "committed ")
}

fn recovered_after(proc: &Proc, ready_count: usize) -> Vec<String> {
    // The `recovered` lines that precede the `ready_count`-th `ready`.
    let mut readies = 0;
    let mut current = Vec::new();
    for line in proc.lines(Stream::Out) {
        if line == "ready" {
            readies += 1;
            if readies == ready_count {
                return current;
            }
            current.clear();
        } else if let Some(rest) = line.strip_prefix("recovered ") {
            current.push(rest.split_once(' ').expect("id payload").1.to_owned());
        }
    }
    panic!("fewer than {ready_count} starts:\n{}", proc.transcript());
}

fn payloads(proc: &Proc, prefix: &str) -> Vec<String> {
    proc.lines(Stream::Out)
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|rest| rest.split_once(' ').expect("id payload").1.to_owned())
        .collect()
}

fn child_pid(line: &str) -> i32 {
    line.strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .expect("pid line")
}

fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    FAST.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn killed_child_is_relaunched_and_recovers_every_committed_unit() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        FAST,
        &[CHILD, "--commit", "5", "--then", "sleep"],
    );
    let pid = child_pid(&sup.expect_out("pid "));
    sup.expect_out("done");
    send(pid, libc::SIGKILL);
    // The relaunch comes first; the generation taken after the death is
    // persisted once the program runs again.
    let second = child_pid(&sup.expect_out("pid "));
    assert_ne!(second, pid);
    sup.seen_or_expect(
        Stream::Err,
        shm_snapshot_tests::units_in_store_after_death,
        "the units committed before the death in the store",
    );
    while sup.lines(Stream::Out).iter().filter(|l| *l == "done").count() < 2 {
        sup.expect_out("done");
    }
    assert_eq!(recovered_after(&sup, 2), committed(&sup)[..5]);
    assert_eq!(
        committed(&sup).len(),
        10,
        "the relaunched child carries on after unit-4"
    );
    assert_eq!(committed(&sup)[5], "unit-5");
    sup.signal(libc::SIGTERM);
    let status = sup.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", sup.transcript());
    // The store, not only the region, holds every unit committed.
    let loaded = shm_snapshot_tests::torture::open_store(&dir.path().join("state"))
        .load_newest()
        .unwrap()
        .expect("a generation");
    let stored: Vec<String> = shm_snapshot_tests::torture::units_of(&loaded)
        .iter()
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .collect();
    assert_eq!(stored, committed(&sup), "{}", sup.transcript());
}

#[test]
fn units_that_overflowed_the_ring_are_not_recovered_but_the_newest_are() {
    // 100 units of 20 KiB in a 1 MiB ring: the oldest are overwritten.
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        FAST,
        &[
            CHILD,
            "--commit",
            "100",
            "--unit-bytes",
            "20480",
            "--then",
            "sleep",
        ],
    );
    let pid = child_pid(&sup.expect_out("pid "));
    sup.expect_out("done");
    send(pid, libc::SIGKILL);
    sup.expect_out("pid ");
    sup.expect_out("ready");
    let recovered = recovered_after(&sup, 2);
    let all = committed(&sup);
    assert!(
        recovered.len() >= 40 && recovered.len() < 100,
        "{} recovered",
        recovered.len()
    );
    assert_eq!(
        recovered[..],
        all[all.len() - recovered.len()..],
        "the newest units survive, in order"
    );
}

#[test]
fn restarted_supervisor_restores_its_newest_generation() {
    let dir = workdir();
    let mut first = Proc::supervise(dir.path(), "state", FAST, &[CHILD, "--commit", "3"]);
    assert_eq!(first.wait().code(), Some(0), "{}", first.transcript());
    let mut second = Proc::supervise(dir.path(), "state", FAST, &[CHILD]);
    second.expect_err("generation restored");
    assert_eq!(second.wait().code(), Some(0), "{}", second.transcript());
    assert_eq!(recovered_after(&second, 1), ["unit-0", "unit-1", "unit-2"]);
}

/// Generations only at exits, so each run below makes exactly one.
fn at_exit_only() -> Vec<&'static str> {
    flags(&["--no-continuous"])
}

/// Two supervisor runs of 2 and 3 commits: generations 1 (a base file)
/// and 2 (a delta, in a segment) hold units 0-1 and 0-4.
fn two_generations(dir: &Path) {
    for commits in ["2", "3"] {
        let mut run = Proc::supervise(dir, "state", &at_exit_only(), &[CHILD, "--commit", commits]);
        assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    }
    assert_eq!(generations(&dir.join("state")), [1, 2]);
}

/// A start restores generation 1, after a warning containing `warning`.
fn assert_falls_back_to_first_generation(dir: &Path, warning: &str) {
    let mut run = Proc::supervise(dir, "state", &at_exit_only(), &[CHILD]);
    run.expect_err(warning);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    assert_eq!(recovered_after(&run, 1), ["unit-0", "unit-1"]);
}

#[test]
fn corrupted_newest_generation_falls_back_to_the_one_before_with_a_message() {
    let dir = workdir();
    two_generations(dir.path());
    // The middle of its record: among its pages.
    let newest = record(&dir.path().join("state"), 2);
    flip_byte(&newest.path, (newest.offset + newest.bytes / 2) as i64);
    assert_falls_back_to_first_generation(dir.path(), "skipping a damaged generation");
}

#[test]
fn truncated_newest_generation_falls_back_to_the_one_before_with_a_message() {
    let dir = workdir();
    two_generations(dir.path());
    // Its segment cut inside it, as an append a crash interrupted leaves
    // it: the record is no generation, and the start says where its
    // segment stops being readable.
    let newest = record(&dir.path().join("state"), 2);
    truncate(&newest.path, newest.offset + newest.bytes - 100);
    let segment = newest.path.file_name().unwrap().to_string_lossy().into_owned();
    assert_falls_back_to_first_generation(dir.path(), &format!("segment state/{segment} ends in"));
}

#[test]
fn second_supervisor_on_a_locked_store_fails_clearly() {
    let dir = workdir();
    let mut first = Proc::supervise(dir.path(), "state", FAST, &[CHILD, "--then", "sleep"]);
    first.expect_out("ready");
    let mut second = Proc::supervise(dir.path(), "state", FAST, &[CHILD]);
    assert_eq!(second.wait().code(), Some(1), "{}", second.transcript());
    let errors = second.lines(Stream::Err);
    let last = errors.last().expect("an error line");
    assert!(
        last.starts_with("shm-restore: ") && last.contains("locked"),
        "{last}"
    );
    assert!(
        second.lines(Stream::Out).is_empty(),
        "no child may start: {}",
        second.transcript()
    );
    // The first supervisor is unharmed.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait().code(), Some(128 + libc::SIGTERM));
}

#[test]
fn crash_loop_stops_at_the_restart_limit_with_a_clear_message() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &flags(&["--restart-limit=3"]),
        &[CHILD, "--then", "exit:9"],
    );
    let status = sup.wait();
    assert_eq!(status.code(), Some(9), "{}", sup.transcript());
    assert_eq!(
        sup.lines(Stream::Out).iter().filter(|l| *l == "ready").count(),
        4,
        "first start + 3 relaunches"
    );
    assert!(
        sup.lines(Stream::Err)
            .iter()
            .any(|l| l.contains("restart limit reached")),
        "{}",
        sup.transcript()
    );
}

#[test]
fn exit_status_passes_through_and_on_failure_ends_at_status_0() {
    let dir = workdir();
    let mut never = Proc::supervise(
        dir.path(),
        "a",
        &flags(&["--restart=never"]),
        &[CHILD, "--then", "exit:7"],
    );
    assert_eq!(never.wait().code(), Some(7));
    let mut ok = Proc::supervise(dir.path(), "b", FAST, &[CHILD, "--then", "exit:0"]);
    assert_eq!(ok.wait().code(), Some(0));
    assert_eq!(
        ok.lines(Stream::Out).iter().filter(|l| *l == "ready").count(),
        1,
        "no relaunch after status 0"
    );
}

#[test]
fn stop_signal_is_forwarded_then_sigkill_after_grace_and_a_final_generation_is_kept() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &flags(&["--grace=200ms"]),
        &[CHILD, "--commit", "2", "--then", "ignore-term"],
    );
    sup.expect_out("done");
    sup.signal(libc::SIGTERM);
    sup.expect_err("grace period");
    assert_eq!(
        sup.wait().code(),
        Some(128 + libc::SIGKILL),
        "{}",
        sup.transcript()
    );
    // The final generation: persisted at the stop, or already persisted
    // while the program ran (then the stop has nothing new to persist).
    assert!(
        sup.lines(Stream::Err)
            .iter()
            .any(|l| l.contains("generation persisted")
                || l.contains("nothing committed since the last generation")),
        "{}",
        sup.transcript()
    );
    let mut again = Proc::supervise(dir.path(), "state", FAST, &[CHILD]);
    assert_eq!(again.wait().code(), Some(0));
    assert_eq!(recovered_after(&again, 1), ["unit-0", "unit-1"]);
}

#[test]
fn no_child_outlives_a_killed_supervisor() {
    let dir = workdir();
    let mut sup = Proc::supervise(dir.path(), "state", FAST, &[CHILD, "--then", "sleep"]);
    let pid = child_pid(&sup.expect_out("pid "));
    sup.expect_out("ready");
    sup.signal(libc::SIGKILL);
    sup.wait();
    assert!(wait_gone(pid), "child {pid} outlived its supervisor");
}

#[test]
fn the_childs_whole_process_group_is_killed_when_it_dies() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        FAST,
        &[CHILD, "--grandchild", "--then", "sleep"],
    );
    let pid = child_pid(&sup.expect_out("pid "));
    let grandchild: i32 = sup.expect_out("grandchild ")["grandchild ".len()..]
        .parse()
        .unwrap();
    assert!(!is_gone(grandchild));
    send(pid, libc::SIGKILL);
    sup.expect_out("pid ");
    assert!(
        wait_gone(grandchild),
        "grandchild {grandchild} survived the group kill"
    );
}

#[test]
fn store_files_are_private_to_the_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = workdir();
    let mut run = Proc::supervise(dir.path(), "state", FAST, &[CHILD, "--commit", "1"]);
    assert_eq!(run.wait().code(), Some(0));
    let store = dir.path().join("state");
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for file in std::fs::read_dir(&store).unwrap() {
        let file = file.unwrap().path();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            file.display()
        );
    }
}

#[test]
fn the_child_gets_the_region_at_fd_3_its_own_listen_pid_and_no_other_descriptor() {
    use std::os::unix::process::CommandExt;
    let dir = workdir();
    // The supervisor itself inherits a descriptor without close-on-exec, as
    // from a careless parent; it must not reach the program.
    let stray = std::fs::File::open("/dev/null").unwrap();
    let stray_fd = std::os::fd::AsRawFd::as_raw_fd(&stray);
    let mut command = std::process::Command::new(shm_snapshot_tests::bin("shm-restore"));
    command
        .args(["--snapshot=state", "--fsync=never", "--", CHILD, "--list-fds"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null());
    // SAFETY: fcntl on a descriptor this process owns; async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::fcntl(stray_fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .expect("pid line");
    assert!(stdout.contains("\nfds 0 1 2 3\n"), "{stdout}");
    assert!(stdout.contains(&format!("env LISTEN_PID={pid}\n")), "{stdout}");
}

#[test]
fn a_supervisor_killed_by_sigkill_leaves_nothing_running_once_the_next_one_starts() {
    let dir = workdir();
    let mut first = Proc::supervise(
        dir.path(),
        "state",
        FAST,
        &[CHILD, "--grandchild", "--then", "sleep"],
    );
    let pid = child_pid(&first.expect_out("pid "));
    let grandchild: i32 = first.expect_out("grandchild ")["grandchild ".len()..]
        .parse()
        .unwrap();
    first.signal(libc::SIGKILL);
    first.wait();
    assert!(wait_gone(pid), "the program dies with its supervisor");
    assert!(
        !is_gone(grandchild),
        "only a supervisor can kill the group; this one is dead"
    );
    let mut second = Proc::supervise(dir.path(), "state", FAST, &[CHILD]);
    second.expect_err("left running");
    assert!(
        wait_gone(grandchild),
        "grandchild {grandchild} survived the next supervisor's start"
    );
    assert_eq!(second.wait().code(), Some(0), "{}", second.transcript());
}

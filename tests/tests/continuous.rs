//! Continuous snapshots across real processes: generations persisted while
//! the program runs are consistent, and a supervisor killed mid-generation
//! leaves a store that opens to a verified one.

use std::path::Path;
use std::time::Duration;

use shm_snapshot::snapshot;
use shm_snapshot_tests::torture::{copy_store, every_generation};
use shm_snapshot_tests::{PATIENCE, Proc, Stream, bin, generations, run_with_region, wait_gone, workdir};

/// A small region keeps restoring each generation cheap.
const SIZE: &str = "--size=8MiB";

/// Restores every generation the store at `dir` lists into a fresh region,
/// one by one from the newest, each loaded on its own (its chain verified),
/// and has primes-snapshot validate each. Returns the progress (primes)
/// each restored. The store may be one a supervisor is writing: what is
/// listed when it is read must load.
fn validate_every_generation(dir: &Path) -> Vec<u64> {
    let mut progress = Vec::new();
    for loaded in every_generation(dir) {
        let region = shm_snapshot::Region::anonymous(loaded.image.len() as u64).unwrap();
        snapshot::restore(region.file(), &loaded).unwrap();
        let (code, stdout, stderr) =
            run_with_region(&bin("primes-snapshot"), region.file(), &["--limit", "0"]);
        assert_eq!(
            code,
            Some(0),
            "generation {} fails validation: {stderr}",
            loaded.number
        );
        let primes = stdout
            .lines()
            .find_map(|l| l.strip_prefix("restored primes="))
            .and_then(|rest| rest.split(' ').next()?.parse().ok())
            .expect("restored line");
        progress.push(primes);
    }
    progress
}

#[test]
fn every_generation_persisted_while_the_program_runs_flat_out_restores_consistent() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        // Spaced so that validating every generation (each a chain from the
        // base) stays quick; the program itself commits flat out.
        &[SIZE, "--fsync=never", "--interval=10ms", "--keep=100000"],
        &[
            bin("primes-snapshot").to_str().unwrap(),
            "--interval=0",
            "--batch=50",
        ],
    );
    sup.expect_out("restored primes=0");
    // Run until 20 generations exist: how long that takes depends on the
    // machine's load, the outcome must not.
    let store = dir.path().join("state");
    let deadline = std::time::Instant::now() + PATIENCE;
    while generations(&store).len() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} generations within {PATIENCE:?}:\n{}",
            generations(&store).len(),
            sup.transcript()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sup.signal(libc::SIGTERM);
    sup.wait();
    let progress = validate_every_generation(&store);
    assert!(progress.len() >= 20, "only {} generations", progress.len());
    // Newest first: progress never increases going back in time.
    assert!(progress.windows(2).all(|w| w[0] >= w[1]), "{progress:?}");
    assert!(progress[0] > 0);
}

#[test]
fn generations_are_persisted_while_the_program_runs_not_only_when_it_dies() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &[SIZE, "--fsync=always"],
        &[
            bin("primes-snapshot").to_str().unwrap(),
            "--interval=20ms",
            "--batch=500",
        ],
    );
    sup.expect_out("committed primes=");
    // A copy of the store taken while the program still runs restores to
    // recent progress.
    let store = dir.path().join("state");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while generations(&store).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no generations while running:\n{}",
            sup.transcript()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let copy = workdir();
    let progress = validate_every_generation(&copy_store(&store, &copy.path().join("state")));
    assert!(progress.iter().any(|p| *p > 0), "{progress:?}");
    sup.signal(libc::SIGTERM);
    sup.wait();
    let summary = sup
        .lines(Stream::Err)
        .into_iter()
        .find(|l| l.contains("snapshot summary"))
        .expect("summary line");
    assert!(summary.contains("lag_p50_ms="), "{summary}");
}

#[test]
fn supervisor_killed_mid_generation_leaves_a_store_that_opens_to_a_verified_generation() {
    let dir = workdir();
    let primes = bin("primes-snapshot");
    let child = [primes.to_str().unwrap(), "--interval=0", "--batch=200"];
    let mut last_restored = 0;
    for round in 0..8u64 {
        let mut sup = Proc::supervise(
            dir.path(),
            "state",
            &[SIZE, "--fsync=always", "--interval=5ms"],
            &child,
        );
        let line = sup.expect_out("restored primes=");
        let restored: u64 = line["restored primes=".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            !sup.lines(Stream::Err)
                .iter()
                .any(|l| l.contains("skipping a damaged generation")),
            "round {round}: {}",
            sup.transcript()
        );
        assert!(
            restored >= last_restored,
            "round {round}: progress went back from {last_restored} to {restored}"
        );
        last_restored = restored;
        let child_pid: i32 = {
            let started = sup.seen_or_expect(Stream::Err, |l| l.contains("child started"), "child started");
            started
                .split("pid=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        // Generations land every few milliseconds and take about one: kills
        // at varying moments fall inside some of them.
        std::thread::sleep(Duration::from_millis(150 + 37 * round));
        sup.signal(libc::SIGKILL);
        sup.wait();
        assert!(wait_gone(child_pid), "the program outlived its supervisor");
    }
    let progress = validate_every_generation(&dir.path().join("state"));
    assert!(!progress.is_empty());
}

//! The supervisor itself killed with SIGKILL at random moments, again and
//! again, and restarted on the same store: every start opens to a verified
//! generation, the program's own validation of what it restored passes,
//! and progress never falls below a generation that was reported written.
//! A generation is reported once its record is appended (or its base file
//! named); a SIGKILL of the supervisor leaves the page cache intact, so
//! every generation reported must be found after the kill, synced or not.
//!
//! `TORTURE_KILLS=N` runs N rounds instead of the default;
//! `TORTURE_SEED=S` replays the random kill moments of a failed run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use shm_snapshot_tests::torture::{every_generation, generation_field, open_store, primes_of};
use shm_snapshot_tests::{Proc, Stream, bin, wait_gone, workdir};

/// Rounds by default: the issue asks for at least 50.
const DEFAULT_KILLS: u64 = 56;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// Starts the supervisor with one log line per generation written
/// (`generation appended`, at debug level).
fn supervise(dir: &Path, fsync: &str, interval: &str) -> Proc {
    let mut command = Command::new(bin("shm-restore"));
    command
        .current_dir(dir)
        .env("RUST_LOG", "debug")
        .arg("--snapshot=state")
        .arg("--size=8MiB")
        .arg(format!("--fsync={fsync}"))
        .arg(format!("--interval={interval}"))
        .arg("--")
        .arg(bin("primes-snapshot"))
        .args(["--interval=1ms", "--batch=300"]);
    Proc::spawn(command)
}

fn restored_primes(line: &str) -> u64 {
    line["restored primes=".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line}"))
}

fn child_pid(sup: &mut Proc) -> i32 {
    let started = sup.seen_or_expect(Stream::Err, |l| l.contains("child started"), "child started");
    started
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .expect("pid in the child started line")
}

#[test]
fn supervisor_killed_at_random_moments_always_restarts_on_its_durable_progress() {
    let kills = env_u64("TORTURE_KILLS").unwrap_or(DEFAULT_KILLS);
    let seed = env_u64("TORTURE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = workdir();
    let state = dir.path().join("state");
    let started = Instant::now();
    // What the store held when the previous supervisor died: the newest
    // verified generation's number and progress.
    let mut on_disk: Option<(u64, u64)> = None;
    let mut generations_logged = 0;
    for round in 0..kills {
        let context = format!("round {round} of {kills}, TORTURE_SEED={seed}");
        // Half the rounds sync every generation, half write as fast as the
        // page cache takes it: both paths of the store run under the kills.
        // A SIGKILL of the supervisor leaves the page cache intact, so
        // these rounds cannot tell fsync from no fsync; durability across
        // power loss is not what they check.
        let fsync = if round % 2 == 0 { "always" } else { "never" };
        let interval = ["0", "1ms", "5ms"][(round % 3) as usize];
        let mut sup = supervise(dir.path(), fsync, interval);
        let restored = restored_primes(&sup.expect_out("restored primes="));
        let durable = on_disk.map_or(0, |(_, primes)| primes);
        assert_eq!(
            restored,
            durable,
            "{context}: the start restored {restored} primes, but the store's newest verified generation holds {durable}:\n{}",
            sup.transcript()
        );
        let child = child_pid(&mut sup);
        // Kill moments from just after the start (the first generation of
        // the run in progress) to well into steady snapshotting.
        let wait = if rng.random_bool(0.25) {
            rng.random_range(0..30)
        } else {
            rng.random_range(30..600)
        };
        std::thread::sleep(Duration::from_millis(wait));
        sup.signal(libc::SIGKILL);
        sup.wait();
        assert!(wait_gone(child), "{context}: the program outlived its supervisor");
        for line in sup.lines(Stream::Err) {
            assert!(
                !line.contains("inconsistent")
                    && !line.starts_with("shm-restore:")
                    && !line.contains("skipping a damaged"),
                "{context}: {line}\n{}",
                sup.transcript()
            );
        }
        let logged: Vec<u64> = sup
            .lines(Stream::Err)
            .iter()
            .filter(|l| l.contains("generation appended"))
            .filter_map(|l| generation_field(l))
            .collect();
        generations_logged += logged.len();
        let mut store = open_store(&state);
        let Some(loaded) = store
            .load_newest()
            .unwrap_or_else(|e| panic!("{context}: the store does not open to a verified generation: {e}"))
        else {
            assert!(
                logged.is_empty(),
                "{context}: generations {logged:?} logged, none on disk"
            );
            continue;
        };
        assert!(
            loaded.skipped.is_empty(),
            "{context}: a kill left damaged generations: {:?}",
            loaded.skipped
        );
        if let Some(&newest_logged) = logged.iter().max() {
            assert!(
                loaded.number >= newest_logged,
                "{context}: generation {newest_logged} was reported appended, but the store opens to {}",
                loaded.number
            );
        }
        let primes = primes_of(&loaded);
        if let Some((number, before)) = on_disk {
            assert!(
                loaded.number >= number && primes >= before,
                "{context}: the store went back from generation {number} ({before} primes) to {} ({primes})",
                loaded.number
            );
        }
        on_disk = Some((loaded.number, primes));
    }
    let (_, primes) = on_disk.expect("no generation in the whole run");
    assert!(primes > 0, "no progress in {kills} rounds");
    assert!(
        generations_logged >= kills as usize,
        "only {generations_logged} generations logged"
    );
    // Every generation left, newest first, restores and never holds more
    // progress than a newer one.
    let progress: Vec<u64> = every_generation(&state).iter().map(primes_of).collect();
    assert!(progress.windows(2).all(|w| w[0] >= w[1]), "{progress:?}");
    eprintln!(
        "{kills} kills in {:.1} s, {generations_logged} generations logged, {primes} primes at the end (TORTURE_SEED={seed})",
        started.elapsed().as_secs_f64()
    );
}

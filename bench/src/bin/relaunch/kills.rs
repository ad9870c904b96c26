//! Kill to exec: start the supervisor over `bench-child --announce`, SIGKILL
//! the program again and again, and time each relaunch from the killer's
//! clock read just before `kill` to the relaunched program's first clock read
//! after `exec` (both CLOCK_MONOTONIC, the same clock in every process).

use std::ffi::OsString;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rustix::process::{Pid, Signal, kill_process};

use shm_snapshot_bench::announce::{self, COMMITTED, STARTED, Started};
use shm_snapshot_bench::clock::{monotonic_ns, sleep_until};
use shm_snapshot_bench::supervisor::{Next, Supervisor, describe};

use crate::Settings;
use crate::intervals::Intervals;

/// bench-child's load, as in the end-to-end benchmark: a commit every
/// millisecond, each a 64 B unit and 4 KiB of fresh arena data, so each
/// post-mortem generation has some changes to persist.
const CHILD_LOAD: [&str; 6] = ["--rate", "1000", "--unit-bytes", "64", "--arena-write", "4096"];

/// Shortest time from a program's start to its kill: it commits within it
/// (bench-child commits every millisecond), so every death shows progress.
pub const KILL_AFTER_MIN: Duration = Duration::from_millis(10);
/// Longest time from a start to its kill: long enough that the supervisor's
/// snapshot thread persists generations between kills, short enough for 200
/// kills in about 12 s plus the relaunches.
pub const KILL_AFTER_MAX: Duration = Duration::from_millis(100);
/// Unmeasured time before the first kill: the supervisor's first
/// generation (the base of the whole region) and the first page faults, as
/// in the end-to-end benchmark.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long the supervisor may take to start the program the first time:
/// reserving a 1 GiB region takes a moment on a slow machine.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long a program may take to commit, or to be relaunched after a kill.
/// The default backoff after five quick deaths is 1.6 s, well inside it.
const STEP_PATIENCE: Duration = Duration::from_secs(30);
/// How long the supervisor may take to stop: the program dies at once on
/// SIGTERM, then a final generation.
const STOP_PATIENCE: Duration = Duration::from_secs(30);
/// Exit status of the supervisor whose program SIGTERM killed (128 + 15).
const STOPPED_BY_SIGTERM: i32 = 128 + 15;

/// How a kill-to-exec run ended.
#[derive(Debug)]
pub enum End {
    /// Every kill was followed by a relaunch.
    Completed,
    /// The supervisor stopped relaunching: its restart limit.
    GaveUp,
}

/// What one region size measured.
#[derive(Debug)]
pub struct Outcome {
    /// Kills sent.
    pub kills: u32,
    /// Kill to exec of each relaunch, in nanoseconds.
    pub samples: Vec<u64>,
    /// How the run ended.
    pub end: End,
}

/// Runs the kills at region size `size`; an error says why it could not be
/// measured, with the end of the supervisor's log.
pub fn run(size: &str, settings: &Settings) -> Result<Outcome> {
    let dir = settings.temp_dir()?;
    let mut snapshot = OsString::from("--snapshot=");
    snapshot.push(dir.path().join("state"));
    let mut command = Command::new(&settings.shm_restore);
    command
        .arg(snapshot)
        .arg(format!("--size={size}"))
        .arg(format!("--fsync={}", settings.fsync))
        .args(&settings.supervisor_args)
        .arg("--")
        .arg(&settings.bench_child)
        .arg("--announce")
        .args(CHILD_LOAD)
        .current_dir(dir.path())
        .env("RUST_LOG", "info");
    let mut supervisor = Supervisor::spawn(command)?;
    measure(&mut supervisor, settings).map_err(|e| anyhow!("{e:#}\n{}", supervisor.tail()))
}

fn measure(supervisor: &mut Supervisor, settings: &Settings) -> Result<Outcome> {
    let mut intervals = Intervals::new(settings.seed);
    let mut run = match next_start(supervisor, START_PATIENCE).context("waiting for the program's start")? {
        Start::Announced(run) => run,
        Start::Exited(status) => bail!(
            "shm-restore exited with {} before the program started",
            describe(status)
        ),
    };
    let warm = Instant::now() + WARM_UP;
    let mut samples = Vec::with_capacity(settings.kills as usize);
    for kill in 1..=settings.kills {
        wait_for_commit(supervisor).with_context(|| format!("waiting for the first commit of run {kill}"))?;
        let after = intervals.between(KILL_AFTER_MIN, KILL_AFTER_MAX);
        sleep_until(run.ns + after.as_nanos() as u64);
        if kill == 1 {
            std::thread::sleep(warm.saturating_duration_since(Instant::now()));
        }
        let killed_ns = monotonic_ns();
        let pid = Pid::from_raw(run.pid).with_context(|| format!("bench-child announced pid {}", run.pid))?;
        kill_process(pid, Signal::KILL)
            .with_context(|| format!("kill {kill}: SIGKILL to the program (pid {})", run.pid))?;
        let waited = next_start(supervisor, STEP_PATIENCE)
            .with_context(|| format!("waiting for the relaunch after kill {kill}"))?;
        let next = match waited {
            Start::Announced(next) => next,
            Start::Exited(_) if supervisor.gave_up() => {
                return Ok(Outcome {
                    kills: kill,
                    samples,
                    end: End::GaveUp,
                });
            }
            Start::Exited(status) => bail!("shm-restore exited with {} after kill {kill}", describe(status)),
        };
        ensure!(
            next.pid != run.pid && next.ns > killed_ns,
            "after kill {kill} the program announced pid {} at {} ns, not a relaunch \
             (killed pid {} at {killed_ns} ns)",
            next.pid,
            next.ns,
            run.pid
        );
        samples.push(next.ns - killed_ns);
        run = next;
    }
    let status = supervisor.stop(STOP_PATIENCE)?;
    if !(status.success() || status.code() == Some(STOPPED_BY_SIGTERM)) {
        bail!("shm-restore ended with {} after SIGTERM", describe(status));
    }
    Ok(Outcome {
        kills: settings.kills,
        samples,
        end: End::Completed,
    })
}

/// What came instead of the program's next start, if anything.
enum Start {
    /// A `started` line.
    Announced(Started),
    /// The supervisor exited.
    Exited(ExitStatus),
}

/// Reads stdout up to the next `started` line, or the supervisor's exit.
fn next_start(supervisor: &mut Supervisor, patience: Duration) -> Result<Start> {
    let deadline = Instant::now() + patience;
    loop {
        match supervisor.next(deadline) {
            Ok(Next::Out(line)) => {
                if let Some(started) = announce::started(&line)? {
                    return Ok(Start::Announced(started));
                }
            }
            Ok(Next::Exited(status)) => return Ok(Start::Exited(status)),
            Err(e) => return Err(e.context(format!("no `started` line within {patience:?}"))),
        }
    }
}

/// Reads stdout up to the `committed` line of the current run.
fn wait_for_commit(supervisor: &mut Supervisor) -> Result<()> {
    let deadline = Instant::now() + STEP_PATIENCE;
    loop {
        match supervisor.next(deadline) {
            Ok(Next::Out(line)) if line.starts_with(COMMITTED) => return Ok(()),
            Ok(Next::Out(line)) if line.starts_with(STARTED) => {
                bail!("the program started again without being killed: {line}")
            }
            Ok(Next::Out(_)) => {}
            Ok(Next::Exited(status)) => bail!("shm-restore exited with {}", describe(status)),
            Err(e) => return Err(e.context(format!("no `committed` line within {STEP_PATIENCE:?}"))),
        }
    }
}

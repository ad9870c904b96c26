//! One load case: start the supervisor over bench-child in a given
//! directory, sample its CPU time over the measured window, stop it with
//! SIGTERM, and collect its summary, the rate the program kept and the
//! files the store holds.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use shm_snapshot_bench::announce;
use shm_snapshot_bench::clock::monotonic_ns;
use shm_snapshot_bench::disk::{self, Tree};
use shm_snapshot_bench::private;
use shm_snapshot_bench::supervisor::{Next, Supervisor, describe};

use crate::Settings;
use crate::cpu;
use crate::summary::Summary;

/// What each case runs.
#[derive(Debug)]
pub struct Case {
    /// Name in the table.
    pub name: &'static str,
    /// `--size` of the region.
    pub size: &'static str,
    /// bench-child's commits per second; 0 is idle.
    pub rate: u32,
    /// Whether the restore-at-start figures are also taken on the store this
    /// case leaves (see `restore.rs`).
    pub restore_after: bool,
    /// Bytes of data bench-child writes into the arena before its first
    /// commit (`--fill`), so the region starts full of data; 0 for none.
    pub fill: u64,
}

/// The cases, in the order they run and appear in the table.
pub const CASES: [Case; 6] = [
    Case {
        name: "64 MiB, 1000 commits/s",
        size: "64MiB",
        rate: 1000,
        restore_after: true,
        fill: 0,
    },
    Case {
        name: "1 GiB, 1000 commits/s",
        size: "1GiB",
        rate: 1000,
        restore_after: false,
        fill: 0,
    },
    Case {
        name: "1 GiB, 512 MiB of it filled first, 1000 commits/s",
        size: "1GiB",
        rate: 1000,
        restore_after: false,
        fill: 512 << 20,
    },
    Case {
        name: "8 GiB, 1000 commits/s",
        size: "8GiB",
        rate: 1000,
        restore_after: true,
        fill: 0,
    },
    Case {
        name: "64 MiB, 10000 commits/s",
        size: "64MiB",
        rate: 10_000,
        restore_after: false,
        fill: 0,
    },
    Case {
        name: "64 MiB, idle",
        size: "64MiB",
        rate: 0,
        restore_after: false,
        fill: 0,
    },
];

/// How often the supervisor's private memory is read.
const PRIVATE_EVERY: Duration = Duration::from_millis(20);

/// Bytes of each unit bench-child commits.
const UNIT_BYTES: &str = "64";
/// Bytes of arena data each of its commits writes.
const ARENA_WRITE: &str = "4096";
/// How often bench-child reports its commit count: 30 lines in a 3 s
/// window, so the rate over the window is exact to within the commits of
/// one period at each end out of thousands.
const PROGRESS_EVERY: &str = "100ms";

/// Time after the program starts that is not measured: the supervisor's
/// first generations (the base of the whole region) and page faults.
pub const WARM_UP: Duration = Duration::from_secs(1);
/// How long the supervisor may take to start the program: reserving a
/// 1 GiB region and restoring a store take a moment on a slow machine.
pub const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long the supervisor may take to exit after SIGTERM: its default
/// `--grace` of 10 s, plus a final generation of a 1 GiB region.
pub const EXIT_PATIENCE: Duration = Duration::from_secs(60);

/// Exit status of the supervisor whose program SIGTERM killed (128 + 15).
pub const STOPPED_BY_SIGTERM: i32 = 128 + 15;

/// What a case measured.
#[derive(Debug)]
pub struct Outcome {
    /// The supervisor's summary line, if it logged one.
    pub summary: Option<Summary>,
    /// The supervisor's CPU time over the window, in percent of one core.
    pub cpu_percent: f64,
    /// Commits per second the program made over the window, from its
    /// `progress` lines; `None` without two of them in the window.
    pub commits_per_second: Option<f64>,
    /// The files in the store once the supervisor has exited.
    pub store: Tree,
    /// The most private memory (`RssAnon`) the supervisor had, from its
    /// start to its exit, in bytes.
    pub private_max: Option<u64>,
}

/// Runs `case` with its store at `store` (a directory the supervisor
/// creates); an error says why it could not be measured, with the end of
/// the supervisor's log.
pub fn run(case: &Case, settings: &Settings, store: &Path, ticks_per_second: u64) -> Result<Outcome> {
    let mut snapshot = OsString::from("--snapshot=");
    snapshot.push(store);
    let mut command = Command::new(&settings.shm_restore);
    command
        .arg(snapshot)
        .arg(format!("--size={}", case.size))
        .arg("--fsync=always");
    if let Some(interval) = settings.interval {
        command.arg(format!("--interval={}", humantime::format_duration(interval)));
    }
    command
        .arg("--")
        .arg(&settings.bench_child)
        .args(["--rate", &case.rate.to_string()])
        .args(["--unit-bytes", UNIT_BYTES, "--arena-write", ARENA_WRITE])
        .args(["--announce", "--progress-every", PROGRESS_EVERY]);
    if case.fill > 0 {
        command.arg(format!("--fill={}", case.fill));
    }
    if let Some(dir) = store.parent() {
        command.current_dir(dir);
    }
    // The summary is an INFO line, whatever the caller's RUST_LOG says.
    command.env("RUST_LOG", "info");
    let mut supervisor = Supervisor::spawn(command)?;
    let sampler = private::Sampler::start(supervisor.pid(), PRIVATE_EVERY);
    let measured = measure(&mut supervisor, settings, ticks_per_second);
    let private_max = sampler.finish();
    let (cpu_percent, commits_per_second) = measured.map_err(|e| anyhow!("{e:#}\n{}", supervisor.tail()))?;
    let summary = Summary::find(supervisor.log());
    let store = disk::tree(store).with_context(|| format!("measuring the store {}", store.display()))?;
    Ok(Outcome {
        summary,
        cpu_percent,
        commits_per_second,
        store,
        private_max,
    })
}

/// Waits for the program, measures the window and stops the supervisor
/// (its log is then complete). Returns the CPU percentage and the
/// program's commit rate.
fn measure(
    supervisor: &mut Supervisor,
    settings: &Settings,
    ticks_per_second: u64,
) -> Result<(f64, Option<f64>)> {
    wait_for_start(supervisor)?;
    std::thread::sleep(WARM_UP);
    let before = cpu::sample(supervisor.pid())?;
    let from_ns = monotonic_ns();
    std::thread::sleep(settings.window);
    let after = cpu::sample(supervisor.pid())?;
    let to_ns = monotonic_ns();
    if let Some(status) = supervisor.exited()? {
        bail!(
            "shm-restore ended during the measured window ({})",
            describe(status)
        );
    }
    let mut progress = Vec::new();
    for line in supervisor.received() {
        if let Some(p) = announce::progress(&line)? {
            progress.push(p);
        }
    }
    let status = supervisor.stop(EXIT_PATIENCE)?;
    if !(status.success() || status.code() == Some(STOPPED_BY_SIGTERM)) {
        bail!("shm-restore ended with {} after SIGTERM", describe(status));
    }
    Ok((
        cpu::percent(&before, &after, ticks_per_second),
        commit_rate(&progress, from_ns, to_ns),
    ))
}

/// Reads the program's stdout up to its `started` line.
pub fn wait_for_start(supervisor: &mut Supervisor) -> Result<announce::Started> {
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        match supervisor.next(deadline) {
            Ok(Next::Out(line)) => {
                if let Some(started) = announce::started(&line)? {
                    return Ok(started);
                }
            }
            Ok(Next::Exited(status)) => bail!(
                "shm-restore ended with {} before the program started",
                describe(status)
            ),
            Err(e) => return Err(e.context(format!("no `started` line within {START_PATIENCE:?}"))),
        }
    }
}

/// Commits per second between the first and the last progress line whose
/// clock reading falls in `from_ns..=to_ns`.
fn commit_rate(progress: &[announce::Progress], from_ns: u64, to_ns: u64) -> Option<f64> {
    let mut inside = progress.iter().filter(|p| (from_ns..=to_ns).contains(&p.ns));
    let first = inside.next()?;
    let last = inside.next_back()?;
    let seconds = (last.ns - first.ns) as f64 / 1e9;
    (seconds > 0.0).then(|| last.commits.saturating_sub(first.commits) as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_snapshot_bench::announce::Progress;

    #[test]
    fn the_rate_comes_from_the_progress_lines_inside_the_window() {
        let lines = [(100, 1), (1000, 2), (2000, 3), (5000, 4)].map(|(commits, s)| Progress {
            commits,
            ns: s * 1_000_000_000,
        });
        assert_eq!(commit_rate(&lines, 1_500_000_000, 4_000_000_000), Some(2000.0));
        assert_eq!(commit_rate(&lines, 0, 3_000_000_000), Some(950.0));
        assert_eq!(
            commit_rate(&lines, 2_500_000_000, 3_500_000_000),
            None,
            "one line"
        );
        assert_eq!(commit_rate(&[], 0, u64::MAX), None);
    }
}

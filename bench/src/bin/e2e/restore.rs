//! Restore from disk at start: the time from starting `shm-restore` on an
//! existing store to its program's first instruction after `exec`, and the
//! store it read. The program is `bench-child --announce --rate 0`: its
//! `started` line carries the CLOCK_MONOTONIC reading it takes first thing
//! in `main`, and its `recovered` line how many units the restored region
//! held (a restore that came back empty is an error, not a fast sample).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use shm_snapshot_bench::announce;
use shm_snapshot_bench::clock::monotonic_ns;
use shm_snapshot_bench::disk::{self, Tree};
use shm_snapshot_bench::supervisor::{Next, Supervisor, describe};

use crate::Settings;
use crate::case::{EXIT_PATIENCE, START_PATIENCE, STOPPED_BY_SIGTERM, wait_for_start};

/// How long primes-snapshot runs to leave a store behind: the issue's
/// "6 s primes-snapshot run".
pub const PRIMES_RUN: Duration = Duration::from_secs(6);
/// primes-snapshot's pause between commits in that run: a commit every
/// 2 ms, the load of the supervisor-kill test.
pub const PRIMES_INTERVAL: &str = "2ms";

/// A restore case: a region size and a name that says where its store
/// comes from (a load case that ran before, or a primes-snapshot run).
#[derive(Debug)]
pub struct RestoreCase {
    /// Name in the table.
    pub name: String,
    /// `--size` of the region, the one the store was written with.
    pub size: &'static str,
}

/// The restore cases that run on the store of a primes-snapshot run of
/// [`PRIMES_RUN`], in order.
pub fn primes_cases() -> Vec<RestoreCase> {
    ["64MiB", "1GiB"]
        .into_iter()
        .map(|size| RestoreCase {
            name: format!(
                "{}, {} s primes-snapshot run",
                size.replace("MiB", " MiB").replace("GiB", " GiB"),
                PRIMES_RUN.as_secs()
            ),
            size,
        })
        .collect()
}

/// What a restore case measured.
#[derive(Debug)]
pub struct Outcome {
    /// The store's files before the first restore.
    pub store: Tree,
    /// Start of `shm-restore` to the program's exec, each restore, in
    /// nanoseconds.
    pub samples: Vec<u64>,
    /// Units the program found in its region, the first restore.
    pub units: u64,
    /// Start of `shm-restore` to the program's exec on an empty store with
    /// the same `--size`, each start: making and reserving the region
    /// alone, in nanoseconds.
    pub empty: Vec<u64>,
}

/// Leaves a store at `store`: primes-snapshot under shm-restore for
/// [`PRIMES_RUN`] from the program's start, then SIGTERM.
pub fn primes_run(settings: &Settings, size: &str, store: &Path) -> Result<()> {
    let mut command = supervisor_command(settings, size, store);
    command
        .arg(&settings.primes_snapshot)
        .arg(format!("--interval={PRIMES_INTERVAL}"));
    let mut supervisor = Supervisor::spawn(command)?;
    let result = (|| {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            match supervisor.next(deadline) {
                Ok(Next::Out(line)) if line.starts_with("restored ") => break,
                Ok(Next::Out(_)) => {}
                Ok(Next::Exited(status)) => bail!(
                    "shm-restore ended with {} before primes-snapshot restored",
                    describe(status)
                ),
                Err(e) => return Err(e.context("no `restored` line from primes-snapshot")),
            }
        }
        std::thread::sleep(PRIMES_RUN);
        if let Some(status) = supervisor.exited()? {
            bail!("shm-restore ended during the run ({})", describe(status));
        }
        supervisor.received();
        stopped(supervisor.stop(EXIT_PATIENCE)?)
    })();
    result.map_err(|e| anyhow!("{e:#}\n{}", supervisor.tail()))
}

/// Starts shm-restore `times` times on the existing store at `store`, each
/// time over `bench-child --rate 0`, and stops it once the program runs.
pub fn time_restores(settings: &Settings, size: &str, store: &Path, times: usize) -> Result<Outcome> {
    let files = disk::tree(store).with_context(|| format!("measuring the store {}", store.display()))?;
    ensure!(files.files > 0, "the store {} holds no file", store.display());
    let mut samples = Vec::with_capacity(times);
    let mut units = 0;
    for i in 0..times {
        let mut command = supervisor_command(settings, size, store);
        command
            .arg(&settings.bench_child)
            .args(["--announce", "--rate", "0"]);
        let spawned_ns = monotonic_ns();
        let mut supervisor = Supervisor::spawn(command)?;
        let (sample, recovered) = one_restore(&mut supervisor, spawned_ns)
            .with_context(|| format!("restore {} of {times}", i + 1))
            .map_err(|e| anyhow!("{e:#}\n{}", supervisor.tail()))?;
        samples.push(sample);
        if i == 0 {
            units = recovered;
        }
    }
    let mut empty = Vec::with_capacity(times);
    for i in 0..times {
        let dir = tempfile::Builder::new()
            .prefix("empty-")
            .tempdir_in(store.parent().unwrap_or(Path::new(".")))
            .context("a directory for an empty store")?;
        let mut command = supervisor_command(settings, size, &dir.path().join("state"));
        command
            .arg(&settings.bench_child)
            .args(["--announce", "--rate", "0"]);
        let spawned_ns = monotonic_ns();
        let mut supervisor = Supervisor::spawn(command)?;
        let started = wait_for_start(&mut supervisor)
            .and_then(|started| stopped(supervisor.stop(EXIT_PATIENCE)?).map(|()| started))
            .with_context(|| format!("start {} of {times} on an empty store", i + 1))
            .map_err(|e| anyhow!("{e:#}\n{}", supervisor.tail()))?;
        empty.push(started.ns.saturating_sub(spawned_ns));
    }
    Ok(Outcome {
        store: files,
        samples,
        units,
        empty,
    })
}

/// Times one start: its sample in nanoseconds, and the units recovered.
fn one_restore(supervisor: &mut Supervisor, spawned_ns: u64) -> Result<(u64, u64)> {
    let started = wait_for_start(supervisor)?;
    ensure!(
        started.ns > spawned_ns,
        "the program's start ({} ns) is before shm-restore's ({spawned_ns} ns)",
        started.ns
    );
    let deadline = Instant::now() + START_PATIENCE;
    let units = loop {
        match supervisor.next(deadline) {
            Ok(Next::Out(line)) => {
                if let Some(units) = announce::recovered(&line)? {
                    break units;
                }
            }
            Ok(Next::Exited(status)) => bail!("shm-restore ended with {}", describe(status)),
            Err(e) => return Err(e.context("no `recovered` line from bench-child")),
        }
    };
    ensure!(
        units > 0,
        "the program found no unit in its region: nothing was restored"
    );
    stopped(supervisor.stop(EXIT_PATIENCE)?)?;
    Ok((started.ns - spawned_ns, units))
}

/// `shm-restore --snapshot=<store> --size=<size> --fsync=always
/// [--interval=D] --`, the program to be added.
fn supervisor_command(settings: &Settings, size: &str, store: &Path) -> Command {
    let mut snapshot = OsString::from("--snapshot=");
    snapshot.push(store);
    let mut command = Command::new(&settings.shm_restore);
    command
        .arg(snapshot)
        .arg(format!("--size={size}"))
        .arg("--fsync=always");
    if let Some(interval) = settings.interval {
        command.arg(format!("--interval={}", humantime::format_duration(interval)));
    }
    command.arg("--").env("RUST_LOG", "info");
    if let Some(dir) = store.parent() {
        command.current_dir(dir);
    }
    command
}

/// An error unless the supervisor exited as one whose program SIGTERM
/// stopped.
fn stopped(status: std::process::ExitStatus) -> Result<()> {
    if status.success() || status.code() == Some(STOPPED_BY_SIGTERM) {
        Ok(())
    } else {
        bail!("shm-restore ended with {} after SIGTERM", describe(status))
    }
}

//! Setting the supervisor up (store, region, threads) around the
//! lifecycle, and tearing it down.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use shm_snapshot::snapshot::Snapshotter;
use shm_snapshot::store::Store;

use super::events::Events;
use super::lifecycle::Supervisor;
use crate::child::Launcher;
use crate::config::Config;
use crate::leftovers;
use crate::region::HostRegion;
use crate::restore::{self, When};
use crate::snapshotter::{self, Shared, SnapshotThread};
use crate::status::Reporter;
use crate::systemd::Systemd;

/// Runs the supervisor until the program is done, the restart limit is
/// reached, or a signal stops it. Returns the exit status to end with.
pub fn run(mut config: Config) -> Result<ExitCode> {
    // SAFETY: the supervisor's first step: no thread has been started yet.
    let mut systemd = unsafe { Systemd::from_env() };
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("becoming the reaper of the program's orphans")?;
    let store = Store::open(&config.store_dir, config.store)?;
    // Holding the store's lock, no other supervisor can be using the group.
    let _ = leftovers::kill_recorded(store.dir());
    let mut launcher = Launcher::new(&config.command)?;
    let mut snapshotter = Snapshotter::new(config.snapshots.arena_scan);
    // Only `--arena-scan=check` finds unmarked writes; one line, once.
    snapshotter.on_unmarked_write(|found| tracing::warn!("{found}"));
    let mut shared = Shared {
        store,
        snapshotter,
        stats: Default::default(),
    };
    let (region, replacing) = match systemd.take_inherited() {
        Some(file) => {
            let (region, taken) = restore::take_back(&mut shared, file, config.size, config.on_damage)?;
            (region, !taken)
        }
        None => {
            let region = HostRegion::create(config.size)?;
            restore::restore(&mut shared, &region, config.on_damage, When::AtStart)?;
            (region, false)
        }
    };
    systemd.store_region(region.file(), replacing);
    let events = Events::start()?;
    let file = region
        .file()
        .try_clone()
        .context("duplicating the region descriptor")?;
    let snapshots = SnapshotThread::start(
        file,
        Arc::new(Mutex::new(shared)),
        config.snapshots.interval,
        config.snapshots.continuous,
    )
    .context("starting the snapshot thread")?;
    // Dropped at the end of this function, whatever way it ends: removes
    // the status file.
    let reporter = Reporter::start(&config.store_dir, snapshots.shared(), systemd.status_sink())
        .context("starting the status reporter")?;
    systemd.start()?;

    let mut supervisor = Supervisor {
        restart: config.restart,
        grace: config.grace,
        hang_timeout: config.hang_timeout,
        on_damage: config.on_damage,
        store_dir: config.store_dir.clone(),
        status: reporter.board(),
        snapshots,
        region,
        events,
        stop: None,
        launches: Vec::new(),
        quick: Default::default(),
        chaos: config.chaos.take(),
        systemd,
    };
    let code = supervisor.lifecycle(&mut launcher);
    supervisor.systemd.stopping();
    supervisor.snapshots.shutdown();
    let generations = {
        let shared = supervisor.snapshots.shared();
        let mut shared = snapshotter::lock(&shared);
        // A generation the last post-mortem took and no run followed.
        shared.persist_staged();
        shared.stats.log_summary();
        shared.stats.generations
    };
    match supervisor.chaos.take() {
        Some(chaos) => chaos.finish(code, generations),
        None => code,
    }
}

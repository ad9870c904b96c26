//! Setting the supervisor up (store, region, threads) around the
//! lifecycle, and tearing it down.

use std::fs::File;
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
use crate::memory::{self, Refusal, Room};
use crate::replica::{self, upload::Uploader};
use crate::restore;
use crate::snapshotter::{self, Shared, SnapshotThread};
use crate::status::Reporter;
use crate::systemd::Systemd;

/// Where the region comes from.
enum Start {
    /// The one systemd handed back, if it is trusted.
    TakeBack(File),
    /// A fresh one, for which there is room.
    Fresh(Room),
}

/// Runs the supervisor until the program is done, the restart limit is
/// reached, or a signal stops it. Returns the exit status to end with.
pub fn run(mut config: Config) -> Result<ExitCode> {
    // SAFETY: the supervisor's first step: no thread has been started yet.
    let mut systemd = unsafe { Systemd::from_env() };
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("becoming the reaper of the program's orphans")?;
    // A fresh region is checked against the memory available before
    // anything exists (store directory, lock, memfd), so a size the machine
    // cannot hold changes nothing. A region systemd hands back exists
    // already: its memory is in use, not to be found.
    let start = match systemd.take_inherited() {
        Some(file) => Start::TakeBack(file),
        None => {
            Start::Fresh(memory::ensure_room(config.size, &config.store_dir).map_err(Refusal::of_size_flag)?)
        }
    };
    let store = Store::open(&config.store_dir, config.store)?;
    // The replica is joined before anything is restored: an empty store is
    // pulled from it, and a store it does not continue is refused.
    let (store, replica) = match &config.replica {
        Some(options) => {
            let keep = config.store.keep as u64;
            let (store, start) = replica::join(options, keep, store, config.store)?;
            (store, Some(start))
        }
        None => (store, None),
    };
    restore::report_tails(&store);
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
        replica: None,
    };
    let (region, replacing) = match start {
        Start::TakeBack(file) => {
            let (region, taken) = restore::take_back(&mut shared, file, config.size, config.on_damage)?;
            (region, !taken)
        }
        Start::Fresh(room) => {
            let region = restore::restore_into_new(&mut shared, room, config.on_damage)?;
            (region, false)
        }
    };
    let uploader = match replica {
        Some(start) => {
            let uploader =
                Uploader::start(start, &mut shared.store).context("starting the replica's uploader")?;
            shared.replica = Some(uploader.feed());
            Some(uploader)
        }
        None => None,
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
        // Everything appended is durable before the supervisor exits.
        if let Err(e) = shared.store.sync() {
            tracing::error!("the newest generations may not be durable: {e}");
        }
        shared.feed_replica();
        shared.stats.log_summary();
        shared.stats.generations
    };
    // After the store's final sync: the generations not yet in the replica
    // go up now, for a bounded time.
    if let Some(uploader) = uploader {
        replica::upload::log_summary(&uploader.finish(replica::upload::FINAL_UPLOAD));
    }
    match supervisor.chaos.take() {
        Some(chaos) => chaos.finish(code, generations),
        None => code,
    }
}

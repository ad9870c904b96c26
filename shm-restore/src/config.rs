//! The supervisor's configuration: the command line resolved once into
//! what each part of the supervisor needs, checked before any work starts.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use shm_snapshot::snapshot::ArenaScan;
use shm_snapshot::store::StoreOptions;

use crate::chaos::Chaos;
use crate::cli::{Args, Fsync, Restart};
use crate::group::Ended;
use crate::replica::ReplicaOptions;
use crate::restore::OnDamage;

/// Everything the supervisor's run needs, resolved from [`Args`].
pub struct Config {
    /// The store's directory.
    pub store_dir: PathBuf,
    /// How the store is opened.
    pub store: StoreOptions,
    /// The region's length in bytes.
    pub size: u64,
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// When and how fast the program is started again.
    pub restart: RestartPolicy,
    /// How long a stopped program has before SIGKILL.
    pub grace: Duration,
    /// Continuous snapshots.
    pub snapshots: Snapshots,
    /// Kill the program when its heartbeat stands still this long.
    pub hang_timeout: Option<Duration>,
    /// What a store with nothing restorable leads to.
    pub on_damage: OnDamage,
    /// Chaos mode, with `--chaos-kill`.
    pub chaos: Option<Chaos>,
    /// Replication, with `--replica`.
    pub replica: Option<ReplicaOptions>,
}

/// When and how fast the program is started again.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// After which endings.
    pub when: Restart,
    /// Relaunches allowed within `window`.
    pub limit: u32,
    /// The window of `limit`.
    pub window: Duration,
    /// The first relaunch delay, doubled after each quick death.
    pub backoff: Duration,
    /// The longest relaunch delay.
    pub backoff_max: Duration,
}

/// How the snapshot thread works while the program runs.
#[derive(Debug, Clone, Copy)]
pub struct Snapshots {
    /// Least spacing between generations.
    pub interval: Duration,
    /// Whether generations are taken while the program runs (not only
    /// after it ends).
    pub continuous: bool,
    /// How changed arena chunks are found.
    pub arena_scan: ArenaScan,
}

impl RestartPolicy {
    /// Whether a program that ended so is started again (the limit aside).
    pub fn relaunches(&self, ended: Ended) -> bool {
        match self.when {
            Restart::Never => false,
            Restart::OnFailure => ended != Ended::Exited(0),
            Restart::Always => true,
        }
    }
}

impl Config {
    /// Resolves the command line (clap has checked each flag).
    pub fn resolve(args: Args) -> Config {
        Config {
            store: StoreOptions {
                keep: usize::try_from(args.keep).unwrap_or(usize::MAX),
                fsync: args.fsync == Fsync::Always,
                // The snapshot thread appends and goes on; the store's sync
                // thread makes generations durable in groups, and the
                // snapshot thread learns when from `take_synced`.
                wait_for_sync: false,
                ..StoreOptions::default()
            },
            store_dir: args.snapshot,
            size: args.size,
            restart: RestartPolicy {
                when: args.restart,
                limit: args.restart_limit,
                window: args.restart_window,
                backoff: args.backoff,
                backoff_max: args.backoff_max,
            },
            grace: args.grace,
            snapshots: Snapshots {
                interval: args.interval,
                continuous: !args.no_continuous,
                arena_scan: args.arena_scan.into(),
            },
            hang_timeout: args.hang_timeout,
            on_damage: match args.start_empty_if_damaged {
                true => OnDamage::StartEmpty,
                false => OnDamage::Stop,
            },
            chaos: Chaos::new(&args.chaos),
            replica: args.replica.map(|url| ReplicaOptions {
                url,
                interval: args.replica_interval,
                lease: args.replica_lease,
                take_over: args.take_over,
            }),
            command: args.command,
        }
    }
}

//! The counts chaos mode keeps as the program runs, and the report they
//! make at the end.

use std::fs::File;
use std::time::{Duration, Instant};

use shm_snapshot::snapshot::observe_file;

use super::killer::Strike;
use super::report::{FailedRun, Failures, Kinds, LastRun, Millis, Report, Sources};
use super::schedule::{KillKind, Planned};
use crate::lag::LagHistogram;

/// Failures listed one by one in the report; past it they are only counted.
const MAX_LISTED_FAILURES: usize = 100;

/// Where a relaunch after a chaos kill got its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Relaunched {
    Memory,
    Disk,
    /// Planned from disk, kept in memory.
    Refused,
}

/// What happened so far, for the report.
pub(super) struct Tally {
    started: Instant,
    /// Starts of the program: the current run's number (1 = the first).
    pub(super) starts: u64,
    /// Runs ended by a chaos kill.
    pub(super) kills: u64,
    pub(super) relaunches_after_failures: u64,
    kinds: Kinds,
    pub(super) sources: Sources,
    restore_times: LagHistogram,
    pub(super) failures: Failures,
    last_run: Option<LastRun>,
    completed: bool,
}

impl Tally {
    /// Nothing yet; the report's duration counts from now.
    pub(super) fn new() -> Tally {
        Tally {
            started: Instant::now(),
            starts: 0,
            kills: 0,
            relaunches_after_failures: 0,
            kinds: Kinds::default(),
            sources: Sources::default(),
            restore_times: LagHistogram::default(),
            failures: Failures::default(),
            last_run: None,
            completed: false,
        }
    }

    /// A start at `now`: `killed_at` is when the chaos kill before it was
    /// sent, `source` where its region came from after that kill (neither:
    /// the first start, or a start after a failure).
    pub(super) fn started(&mut self, now: Instant, killed_at: Option<Instant>, source: Option<Relaunched>) {
        self.starts += 1;
        if let Some(killed) = killed_at {
            self.restore_times.record(now - killed, 1);
        }
        match source {
            Some(Relaunched::Memory) => self.sources.memory += 1,
            Some(Relaunched::Disk) => self.sources.disk += 1,
            Some(Relaunched::Refused) => {
                self.sources.memory += 1;
                self.sources.disk_refused += 1;
            }
            None if self.starts > 1 => self.relaunches_after_failures += 1,
            None => {}
        }
    }

    /// A run ended by `strike`, its group dead and the region as it left it
    /// in `region`.
    pub(super) fn killed(&mut self, strike: &Strike, region: &File) {
        self.kills += 1;
        match (strike.kind, strike.caught) {
            (KillKind::Timer, _) => self.kinds.timer += 1,
            (KillKind::AfterCommit, true) => self.kinds.after_commit.caught += 1,
            (KillKind::AfterCommit, false) => self.kinds.after_commit.fell_back += 1,
            (KillKind::MidWrite, true) => {
                self.kinds.mid_write.caught += 1;
                let dead = observe_file(region).ok().flatten();
                if let (Some(o), Some(before)) = (dead, &strike.sighting)
                    && before.landed_in(&o)
                {
                    self.kinds.mid_write.landed_mid_commit += 1;
                }
            }
            (KillKind::MidWrite, false) => self.kinds.mid_write.fell_back += 1,
        }
    }

    /// A failure of the current run.
    pub(super) fn failed(&mut self, status: String, inconsistent: bool) {
        self.failures.total += 1;
        if inconsistent {
            self.failures.inconsistent += 1;
        } else {
            self.failures.other += 1;
        }
        if self.failures.runs.len() < MAX_LISTED_FAILURES {
            self.failures.runs.push(FailedRun {
                run: self.starts,
                status,
            });
        }
    }

    /// The last run is over: it `committed`, or the wait for it ran out.
    /// Every planned kill was made.
    pub(super) fn last_run(&mut self, committed: bool) {
        self.last_run = Some(LastRun { committed });
        self.completed = true;
    }

    /// The report of a run with `seed` and `schedule`, in which the store
    /// persisted `generations`, ending with `exit_status`.
    pub(super) fn into_report(
        self,
        seed: u64,
        schedule: Vec<Planned>,
        generations: u64,
        exit_status: u8,
    ) -> Report {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let restore_ms = (!self.restore_times.is_empty()).then(|| Millis {
            p50: ms(self.restore_times.quantile(0.50)),
            p99: ms(self.restore_times.quantile(0.99)),
            max: ms(self.restore_times.max()),
        });
        Report {
            seed,
            repeat: format!("--seed {seed}"),
            completed: self.completed,
            duration_ms: self.started.elapsed().as_millis() as u64,
            kills: self.kills,
            kinds: self.kinds,
            relaunches: self.starts.saturating_sub(1),
            relaunches_after_failures: self.relaunches_after_failures,
            restore_from: self.sources,
            generations_persisted: generations,
            restore_ms,
            failures: self.failures,
            last_run: self.last_run,
            exit_status,
            schedule,
        }
    }
}

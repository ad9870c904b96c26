//! The snapshot thread: following each run of the program.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shm_snapshot::snapshot::{self, Outcome, SnapshotError};
use shm_snapshot::store::Store;
use shm_snapshot::{Anomalies, Observer};
use tracing::{debug, error, info, warn};

use super::control::{Control, Phase};
use super::shared::{Shared, StagedPersist, Stats, lock};

/// Polling delays while the commit count stands still: start short so a
/// burst of commits is followed closely; past `POLL_MAX` of quiet, sleep on
/// the futex instead.
const POLL_MIN: Duration = Duration::from_micros(50);
const POLL_MAX: Duration = Duration::from_millis(1);
/// Longest futex sleep: bounds how late a commit whose wake was lost (see
/// the client's commit) is noticed, and how late a pause is seen.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Wait before retrying after the store failed (disk full, I/O error).
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Wait before looking again at a region whose header is unusable.
const REGION_RETRY: Duration = Duration::from_millis(100);

pub(super) struct Worker {
    file: File,
    shared: Arc<Mutex<Shared>>,
    control: Arc<Control>,
    interval: Duration,
    /// Commit counts first seen, and when, not yet covered by a generation.
    pending: VecDeque<(u64, Instant)>,
    /// Whether a store failure was already reported in this episode.
    store_failing: bool,
    /// Generations persisted (by anyone: this thread or a post-mortem) when
    /// the store failure was reported; a failure after more were persisted
    /// starts a new episode.
    failing_after: u64,
    /// Whether a region problem was already reported in this episode.
    region_failing: bool,
    /// Whether corrupt unit-table entries were already reported in this
    /// episode (it ends with a generation whose table was sound).
    table_failing: bool,
    /// Consecutive starved attempts.
    starved: u64,
    /// The last commit count whose lag was recorded.
    last_counted: Option<u64>,
    /// Generations appended and not yet known durable, with the commit
    /// count each covers: their commits' lag ends when the store's sync
    /// covering them returns.
    awaiting: VecDeque<(u64, u64)>,
    /// Whether the store syncs what it writes.
    fsync: bool,
}

impl Worker {
    pub(super) fn new(
        file: File,
        shared: Arc<Mutex<Shared>>,
        control: Arc<Control>,
        interval: Duration,
    ) -> Worker {
        let fsync = lock(&shared).store.options().fsync;
        Worker {
            file,
            shared,
            control,
            interval,
            pending: VecDeque::new(),
            store_failing: false,
            failing_after: 0,
            region_failing: false,
            table_failing: false,
            starved: 0,
            last_counted: None,
            awaiting: VecDeque::new(),
            fsync,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let run = match self.control.wait_unpaused(Duration::from_secs(3600)) {
                Phase::Shutdown => return,
                Phase::Paused => continue,
                Phase::Running(run) => run,
            };
            self.pending.clear();
            self.awaiting.clear();
            self.last_counted = None;
            // A new program: its region and table problems are its own.
            self.region_failing = false;
            self.table_failing = false;
            self.follow(run);
        }
    }

    /// Snapshots run `run` of the program until it ends.
    fn follow(&mut self, run: u64) {
        self.persist_staged(run);
        let still_running = |control: &Control| control.get() == Phase::Running(run);
        // The program lays the region out when it opens it; until then there
        // is nothing to observe.
        let observer = loop {
            if !still_running(&self.control) {
                return;
            }
            match snapshot::observe_file(&self.file) {
                Ok(Some(observer)) => break observer,
                Ok(None) => std::thread::sleep(POLL_MAX),
                Err(e) => {
                    self.region_problem(&e.to_string());
                    self.control.sleep_while_running(run, REGION_RETRY);
                }
            }
        };
        let observer = Arc::new(observer);
        self.control.sleeping_on(Some(observer.clone()));
        let mut seen = observer.commit_count();
        let mut last_generation: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut delay = POLL_MIN;
        let mut sleeping = false;
        // The region as restored may hold units no generation covers yet
        // (a program that committed then died before any snapshot): take
        // one snapshot straight away.
        let mut due = true;
        while still_running(&self.control) {
            if !self.awaiting.is_empty() {
                let shared = self.shared.clone();
                let mut shared = lock(&shared);
                let Shared { store, stats, .. } = &mut *shared;
                self.record_durable(store, stats);
                shared.feed_replica();
            }
            let count = observer.commit_count();
            if count != seen {
                // Bounded while generations fail (a full disk): past the
                // cap the newest entry absorbs new counts, keeping its
                // earlier time, so lag is overstated, never memory.
                let full = self.pending.len() >= MAX_PENDING;
                match self.pending.back_mut() {
                    Some(newest) if full => newest.0 = count,
                    _ => self.pending.push_back((count, Instant::now())),
                }
                seen = count;
                due = true;
            }
            if retry_at.is_some_and(|t| Instant::now() >= t) {
                retry_at = None;
                due = true;
            }
            if !due {
                if delay < POLL_MAX {
                    std::thread::sleep(delay);
                    delay *= 2;
                } else {
                    sleeping = true;
                    // Under the phase lock: the lifecycle's pause waits for
                    // this sleep (at most IDLE_WAIT), so the flag is never
                    // set in a region it has since cleared or restored.
                    let slept = self
                        .control
                        .while_running(run, || observer.wait_for_commit(seen, IDLE_WAIT));
                    if let Some(Err(e)) = slept {
                        self.region_problem(&e.to_string());
                        self.control.sleep_while_running(run, IDLE_WAIT);
                    }
                }
                continue;
            }
            if sleeping {
                let _ = observer.stop_waiting();
                sleeping = false;
            }
            delay = POLL_MIN;
            // The spacing holds while the last generation's sync is still
            // running (what is appended meanwhile waits for the next sync
            // anyway, so one generation may as well cover more commits);
            // once it is durable, a new commit is taken at once. Without
            // fsync there is no sync to wait for: the spacing always holds.
            let in_flight = !self.awaiting.is_empty() || !self.fsync;
            if let Some(at) = last_generation.filter(|_| in_flight) {
                let next = at + self.interval;
                let now = Instant::now();
                if next > now {
                    self.control.sleep_while_running(run, next - now);
                    continue;
                }
            }
            due = false;
            match self.snapshot(&observer, run) {
                Attempt::Persisted => last_generation = Some(Instant::now()),
                Attempt::Nothing => {}
                Attempt::RetryLater(after) => retry_at = Some(Instant::now() + after),
            }
        }
        if sleeping {
            let _ = observer.stop_waiting();
        }
        self.control.sleeping_on(None);
    }

    /// Persists the generation the post-mortem staged, now
    /// that the next run has started on a region that holds it.
    fn persist_staged(&mut self, run: u64) {
        let shared = self.shared.clone();
        let mut shared = lock(&shared);
        if self.control.get() != Phase::Running(run) || !shared.snapshotter.has_staged() {
            return;
        }
        match shared.persist_staged() {
            StagedPersist::Persisted => self.store_failing = false,
            StagedPersist::Failed => {
                self.store_failing = true;
                self.failing_after = shared.stats.generations;
            }
            StagedPersist::Nothing => {}
        }
    }

    fn snapshot(&mut self, observer: &Observer, run: u64) -> Attempt {
        let shared = self.shared.clone();
        let mut shared = lock(&shared);
        // The lifecycle may have paused us while we waited for the lock.
        if self.control.get() != Phase::Running(run) {
            return Attempt::Nothing;
        }
        let started = Instant::now();
        let Shared {
            store,
            snapshotter,
            stats,
            replica,
        } = &mut *shared;
        match snapshotter.take(observer, store) {
            Ok(outcome @ Outcome::Persisted { .. }) => {
                stats.persisted(&outcome);
                let Outcome::Persisted {
                    persisted,
                    units,
                    covers,
                    bytes_scanned,
                    anomalies,
                    ..
                } = &outcome
                else {
                    unreachable!("matched above")
                };
                if let Some(covered) = covers {
                    self.awaiting.push_back((persisted.number, *covered));
                }
                for e in persisted.base_errors.iter().chain(&persisted.prune_errors) {
                    warn!(
                        "{e}; the generations written go on, the store may hold more files until this clears"
                    );
                }
                let lag = self.record_durable(store, stats);
                if let Some(feed) = replica {
                    feed.feed(store);
                }
                if self.store_failing {
                    info!(generation = persisted.number, "snapshots are persisted again");
                    self.store_failing = false;
                }
                self.region_failing = false;
                self.table_problem(anomalies);
                if self.starved >= STARVED_REPORT {
                    info!(
                        attempts = self.starved,
                        "a generation was persisted after starved attempts"
                    );
                }
                self.starved = 0;
                debug!(
                    generation = persisted.number,
                    units,
                    bytes_written = persisted.bytes_written,
                    bytes_scanned,
                    base = persisted.base,
                    ms = started.elapsed().as_millis() as u64,
                    durable = persisted.durable,
                    lag_ms = lag.map(|l| format!("{:.3}", l.as_secs_f64() * 1000.0)),
                    "generation persisted"
                );
                Attempt::Persisted
            }
            Ok(Outcome::NoConsistentUnit { pre_units, anomalies }) => {
                self.table_problem(&anomalies);
                if pre_units > 0 {
                    stats.skipped += 1;
                    self.starved += 1;
                    debug!(
                        units = pre_units,
                        "every unit changed during the copy; trying again"
                    );
                    if self.starved == STARVED_REPORT {
                        warn!(
                            attempts = self.starved,
                            "snapshots keep missing: the program reuses every unit slot during a copy"
                        );
                    }
                    // The commits that invalidated the units moved the count:
                    // the loop tries again at once.
                }
                Attempt::Nothing
            }
            // Outcome is non-exhaustive; every outcome known today is above.
            Ok(_) => Attempt::Nothing,
            // The staging area's file is in the store's directory: its
            // failures are the store's disk failing.
            Err(e @ (SnapshotError::Store(_) | SnapshotError::Staging { .. } | SnapshotError::NeedsFull)) => {
                if !self.store_failing || stats.generations != self.failing_after {
                    error!("could not persist a generation: {e}; the last good generation stands, retrying");
                    self.store_failing = true;
                    self.failing_after = stats.generations;
                }
                Attempt::RetryLater(STORE_RETRY)
            }
            Err(e) => {
                self.region_problem(&e.to_string());
                Attempt::RetryLater(REGION_RETRY)
            }
        }
    }

    /// Records the lag of the commits covered by generations the store has
    /// made durable since the last call: from when each commit count was
    /// first seen to when the sync covering its generation returned.
    /// Returns the largest lag recorded.
    fn record_durable(&mut self, store: &mut Store, stats: &mut Stats) -> Option<Duration> {
        let mut lag: Option<Duration> = None;
        for synced in store.take_synced() {
            while let Some(&(number, covered)) = self.awaiting.front() {
                if number > synced.number {
                    break;
                }
                self.awaiting.pop_front();
                while let Some(&(count, seen_at)) = self.pending.front() {
                    if count > covered {
                        break;
                    }
                    self.pending.pop_front();
                    // The commits this sighting stands for: those since the
                    // previous one (one, for the first of a run).
                    let weight = self.last_counted.map_or(1, |p| count.saturating_sub(p)).max(1);
                    self.last_counted = Some(count);
                    let l = synced.at.saturating_duration_since(seen_at);
                    lag = Some(lag.map_or(l, |m| m.max(l)));
                    stats.lags.record(l, weight);
                }
            }
        }
        lag
    }

    /// Reports corrupt unit-table entries (left out of any generation)
    /// once per episode; a sound table ends the episode.
    fn table_problem(&mut self, anomalies: &Anomalies) {
        if anomalies.is_clean() {
            self.table_failing = false;
        } else if !self.table_failing {
            warn!(
                ?anomalies,
                "the program's unit table has corrupt entries; they are not persisted"
            );
            self.table_failing = true;
        }
    }

    fn region_problem(&mut self, what: &str) {
        if !self.region_failing {
            warn!("the program's region is not usable right now ({what}); nothing from it is persisted");
            self.region_failing = true;
        }
    }
}

/// Most commit counts awaiting a generation that are remembered one by one.
const MAX_PENDING: usize = 4096;

/// Consecutive starved attempts before a warning.
const STARVED_REPORT: u64 = 10;

enum Attempt {
    Persisted,
    Nothing,
    RetryLater(Duration),
}

//! Continuous snapshots while the program runs: a thread that waits for
//! the program to commit, then persists a generation of the live region
//! (Pre, copy what changed, Post), at most one per `--interval`.
//!
//! The thread never makes the program wait. It polls the region's commit
//! count, backing off from 50 µs while nothing moves, and after about a
//! millisecond of quiet sleeps on a futex the program wakes after its next
//! commit (it makes that system call only while the header says the host
//! sleeps). An idle program costs the supervisor a wake-up every
//! [`IDLE_WAIT`]; a commit after a quiet spell is noticed at once.
//!
//! Lag is measured from the moment the thread first sees a commit count to
//! the moment a generation covering it is durable (synced, renamed, and
//! its directory synced): it undercounts the true commit-to-durable time by
//! at most the polling delay, and keeps clock reads off the program's path.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shm_snapshot::snapshot::{self, Outcome, SnapshotError, Snapshotter};
use shm_snapshot::store::Store;
use shm_snapshot::{Anomalies, Observer};
use tracing::{debug, error, info, warn};

use crate::lag::LagHistogram;

/// What the lifecycle and the snapshot thread share: one owner of the store
/// at a time.
pub struct Shared {
    /// The store.
    pub store: Store,
    /// The incremental snapshotter (what the newest generation covers).
    pub snapshotter: Snapshotter,
    /// Counters for the summary.
    pub stats: Stats,
}

/// Totals for the summary at exit.
#[derive(Debug, Default)]
pub struct Stats {
    /// Generations persisted (while running and after deaths).
    pub generations: u64,
    /// Bytes the store wrote.
    pub bytes_written: u64,
    /// Bytes of data the store found changed and wrote.
    pub bytes_changed: u64,
    /// Attempts in which every unit changed during the copy.
    pub skipped: u64,
    /// Commit-to-durable lag, weighted by commits.
    lags: LagHistogram,
    started: Option<Instant>,
}

impl Stats {
    /// Counts a persisted generation.
    pub fn persisted(&mut self, outcome: &Outcome) {
        if let Outcome::Persisted { persisted, .. } = outcome {
            self.generations += 1;
            self.bytes_written += persisted.bytes_written;
            self.bytes_changed += persisted.pages_written * shm_snapshot::store::PAGE_BYTES;
        }
    }

    /// Commit-to-durable lags so far.
    pub fn lags(&self) -> &LagHistogram {
        &self.lags
    }

    /// Logs the summary line.
    pub fn log_summary(&self) {
        let elapsed = self
            .started
            .map_or(Duration::ZERO, |t| t.elapsed())
            .as_secs_f64()
            .max(1e-9);
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        let (p50, p99, max) = if self.lags.is_empty() {
            ("n/a".to_owned(), "n/a".to_owned(), "n/a".to_owned())
        } else {
            (
                ms(self.lags.quantile(0.50)),
                ms(self.lags.quantile(0.99)),
                ms(self.lags.max()),
            )
        };
        info!(
            generations = self.generations,
            per_second = format!("{:.1}", self.generations as f64 / elapsed),
            lag_p50_ms = p50,
            lag_p99_ms = p99,
            lag_max_ms = max,
            bytes_written = self.bytes_written,
            bytes_changed = self.bytes_changed,
            skipped = self.skipped,
            "snapshot summary"
        );
    }
}

/// Whether the snapshot thread may snapshot, and for which run of the
/// program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No program runs, or the lifecycle is working on the region.
    Paused,
    /// A program runs; the number tells runs apart.
    Running(u64),
    /// The supervisor is ending.
    Shutdown,
}

/// Starts, pauses and stops the snapshot thread.
pub struct Control {
    phase: Mutex<Phase>,
    changed: Condvar,
    /// Set while `set` waits for the phase lock: the thread does not start
    /// another sleep under it, so a pause waits for one sleep at most
    /// instead of losing the lock to the thread again and again.
    leaving: AtomicBool,
    /// The observer the thread sleeps on while it follows a run, so `set`
    /// can end that sleep at once.
    sleeper: Mutex<Option<Arc<Observer>>>,
}

impl Control {
    fn set(&self, phase: Phase) {
        // ORDERING: SeqCst store, read under the phase lock by
        // `while_running`; the lock itself orders the rest.
        self.leaving.store(true, Ordering::SeqCst);
        if let Some(observer) = &*self.sleeper.lock().unwrap_or_else(|e| e.into_inner()) {
            // A wake that comes just before the thread's futex wait is lost;
            // that sleep then ends by its own timeout (IDLE_WAIT).
            observer.interrupt_wait();
        }
        let mut guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *guard = phase;
        self.leaving.store(false, Ordering::SeqCst);
        drop(guard);
        self.changed.notify_all();
    }

    /// Makes `observer` the one `set` wakes (`None` when the run ends).
    fn sleeping_on(&self, observer: Option<Arc<Observer>>) {
        *self.sleeper.lock().unwrap_or_else(|e| e.into_inner()) = observer;
    }

    fn get(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` while the phase is still `Running(run)`, holding the phase
    /// lock throughout: once `pause` has returned, nothing run this way can
    /// still touch the region. (The thread's `stop_waiting` after such a
    /// sleep runs outside the lock and may still clear the host's flag word
    /// after `pause` returned; clear is what a restore leaves there anyway.)
    /// `None` if the run has ended.
    fn while_running<T>(&self, run: u64, f: impl FnOnce() -> T) -> Option<T> {
        let guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        (*guard == Phase::Running(run) && !self.leaving.load(Ordering::SeqCst)).then(f)
    }

    /// Sleeps `duration` unless the phase leaves `Running(run)` first.
    fn sleep_while_running(&self, run: u64, duration: Duration) {
        let guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .changed
            .wait_timeout_while(guard, duration, |p| *p == Phase::Running(run))
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Waits until the phase is not `Paused`, or `timeout` passes.
    fn wait_unpaused(&self, timeout: Duration) -> Phase {
        let guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |p| *p == Phase::Paused)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// The snapshot thread's handle.
pub struct SnapshotThread {
    control: Arc<Control>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
    runs: u64,
}

/// Locks the shared state, surviving a panic of the other holder (the
/// state stays usable: the store is only ever changed by whole generations).
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl SnapshotThread {
    /// Starts the thread, paused, on the region in `file`.
    pub fn start(
        file: File,
        shared: Arc<Mutex<Shared>>,
        interval: Duration,
        enabled: bool,
    ) -> std::io::Result<Self> {
        lock(&shared).stats.started = Some(Instant::now());
        let control = Arc::new(Control {
            phase: Mutex::new(Phase::Paused),
            changed: Condvar::new(),
            leaving: AtomicBool::new(false),
            sleeper: Mutex::new(None),
        });
        let thread = if enabled {
            let (control, shared) = (control.clone(), shared.clone());
            Some(
                std::thread::Builder::new()
                    .name("snapshots".into())
                    .spawn(move || {
                        Worker::new(file, shared, control, interval).run();
                    })?,
            )
        } else {
            None
        };
        Ok(SnapshotThread {
            control,
            shared,
            thread,
            runs: 0,
        })
    }

    /// Whether snapshots are taken while the program runs (not only after
    /// it ends, by the lifecycle).
    pub fn is_continuous(&self) -> bool {
        self.thread.is_some()
    }

    /// Lets the thread snapshot a newly started program.
    pub fn resume(&mut self) {
        self.runs += 1;
        self.control.set(Phase::Running(self.runs));
    }

    /// Stops snapshotting and returns the shared state once any snapshot in
    /// progress has finished.
    pub fn pause(&self) -> MutexGuard<'_, Shared> {
        self.control.set(Phase::Paused);
        lock(&self.shared)
    }

    /// The shared state.
    pub fn shared(&self) -> Arc<Mutex<Shared>> {
        self.shared.clone()
    }

    /// Stops the thread for good.
    pub fn shutdown(&mut self) {
        self.control.set(Phase::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SnapshotThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

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

struct Worker {
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
}

impl Worker {
    fn new(file: File, shared: Arc<Mutex<Shared>>, control: Arc<Control>, interval: Duration) -> Worker {
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
        }
    }

    fn run(mut self) {
        loop {
            let run = match self.control.wait_unpaused(Duration::from_secs(3600)) {
                Phase::Shutdown => return,
                Phase::Paused => continue,
                Phase::Running(run) => run,
            };
            self.pending.clear();
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
            if let Some(at) = last_generation {
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

    /// Persists the generation the post-mortem took into the shadow, now
    /// that the next run has started on a region that holds it.
    fn persist_staged(&mut self, run: u64) {
        let shared = self.shared.clone();
        let mut shared = lock(&shared);
        if self.control.get() != Phase::Running(run) || !shared.snapshotter.has_staged() {
            return;
        }
        let started = Instant::now();
        let Shared {
            store,
            snapshotter,
            stats,
        } = &mut *shared;
        match persist_staged(snapshotter, store, stats) {
            Ok(Some(generation)) => info!(
                generation,
                ms = started.elapsed().as_millis() as u64,
                "generation persisted (taken after the death, persisted after the relaunch)"
            ),
            Ok(None) => {}
            Err(e) => {
                error!(
                    "could not persist the generation taken after the death: {e}; the region is ahead of the store (nothing is lost while the supervisor runs)"
                );
                self.store_failing = true;
                self.failing_after = stats.generations;
            }
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
        } = &mut *shared;
        match snapshotter.take(observer, store) {
            Ok(outcome @ Outcome::Persisted { .. }) => {
                let durable = Instant::now();
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
                let mut lag = None;
                if let Some(covered) = covers {
                    while let Some(&(count, seen_at)) = self.pending.front() {
                        if count > *covered {
                            break;
                        }
                        self.pending.pop_front();
                        // The commits this sighting stands for: those since the
                        // previous one (one, for the first of a run).
                        let weight = self.last_counted.map_or(1, |p| count.saturating_sub(p)).max(1);
                        self.last_counted = Some(count);
                        let l = durable.saturating_duration_since(seen_at);
                        lag = Some(lag.map_or(l, |m: Duration| m.max(l)));
                        stats.lags.record(l, weight);
                    }
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
            Err(SnapshotError::Store(e)) => {
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

/// Persists the generation staged in `snapshotter`, if any, counting it:
/// its number.
pub fn persist_staged(
    snapshotter: &mut Snapshotter,
    store: &mut Store,
    stats: &mut Stats,
) -> Result<Option<u64>, SnapshotError> {
    let Some(outcome) = snapshotter.persist_staged(store)? else {
        return Ok(None);
    };
    stats.persisted(&outcome);
    Ok(match outcome {
        Outcome::Persisted { persisted, .. } => Some(persisted.number),
        _ => None,
    })
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

//! The status a running supervisor publishes for `shm-restore watch`:
//! `status.json` in the store directory, rewritten about once a second
//! (and at once when the program starts or ends) by writing a temporary
//! file and renaming it over the old one, so a reader never sees half of
//! one. It is removed when the supervisor exits; one left by a supervisor
//! that was killed names a pid that is gone, which is how `watch` knows.
//!
//! Publishing never makes snapshots wait: the publisher only *tries* the
//! lock of the state it shares with the snapshot thread, and reuses the
//! previous figures when that is busy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::lag::LagHistogram;
use crate::snapshotter::Shared;

/// The status file's name in the store directory.
pub const STATUS_FILE: &str = "status.json";
/// Prefix of the status file's temporary names (`status.json.<pid>.tmp`).
pub const STATUS_TEMP_PREFIX: &str = "status.json.";
/// How often the status is rewritten.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Attempts, a millisecond apart, to read the snapshot figures while a
/// snapshot holds them; past them the previous figures are published.
const LOCK_TRIES: u32 = 50;
/// Version of the status file's shape.
const VERSION: u64 = 1;

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Restoring the store; no program started yet.
    Starting,
    /// The program runs.
    Running,
    /// The program ended; the supervisor persists, restores and relaunches.
    Restarting,
    /// A stop signal came: the program is being stopped for good.
    Stopping,
}

impl State {
    /// The word `watch` shows.
    pub fn word(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Stopping => "stopping",
        }
    }
}

/// The contents of `status.json`. Times are milliseconds since the Unix
/// epoch; rates and lag cover the interval since the previous status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Shape version, 1.
    pub version: u64,
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// When the supervisor started.
    pub supervisor_started_ms: u64,
    /// What it is doing.
    pub state: State,
    /// The running program's pid.
    pub child_pid: Option<i32>,
    /// When the running program started.
    pub child_started_ms: Option<u64>,
    /// Relaunches so far.
    pub restarts: u64,
    /// The newest generation persisted or restored.
    pub newest_generation: Option<u64>,
    /// When that generation was begun.
    pub newest_generation_ms: Option<u64>,
    /// Generations persisted since the supervisor started.
    pub generations: u64,
    /// Generations persisted per second over the interval.
    pub generations_per_second: f64,
    /// Bytes the store wrote per second over the interval.
    pub bytes_per_second: f64,
    /// Median commit-to-durable lag over the interval, if a commit was covered.
    pub lag_p50_ms: Option<f64>,
    /// 99th percentile of that lag.
    pub lag_p99_ms: Option<f64>,
    /// When this status was written.
    pub updated_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads the status file in `dir`: `Ok(None)` when there is none.
pub fn read(dir: &Path) -> std::io::Result<Option<Status>> {
    match std::fs::read(dir.join(STATUS_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `name` is one of the status file's temporary names.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(STATUS_TEMP_PREFIX) && name.ends_with(".tmp")
}

/// What the lifecycle reports, and the publisher's wake-up.
#[derive(Debug)]
pub struct Board {
    inner: Mutex<Lifecycle>,
    changed: Condvar,
}

#[derive(Debug, Clone, Copy)]
struct Lifecycle {
    state: State,
    child_pid: Option<i32>,
    child_started_ms: Option<u64>,
    restarts: u64,
    /// Programs started so far.
    launches: u64,
    /// The publisher should stop.
    done: bool,
    /// Something changed since the last publication.
    dirty: bool,
}

impl Board {
    fn update(&self, f: impl FnOnce(&mut Lifecycle)) {
        let mut l = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut l);
        l.dirty = true;
        self.changed.notify_all();
    }

    /// The program started with `pid`.
    pub fn child_started(&self, pid: i32) {
        self.update(|l| {
            l.launches += 1;
            l.restarts = l.launches - 1;
            l.state = State::Running;
            l.child_pid = Some(pid);
            l.child_started_ms = Some(now_ms());
        });
    }

    /// The program ended; unless stopping, a relaunch follows.
    pub fn child_ended(&self) {
        self.update(|l| {
            l.child_pid = None;
            l.child_started_ms = None;
            if l.state != State::Stopping {
                l.state = State::Restarting;
            }
        });
    }

    /// A stop signal came.
    pub fn stopping(&self) {
        self.update(|l| l.state = State::Stopping);
    }

    /// The running program's pid (`None` between runs) and the restarts so
    /// far, for other reporters (systemd's `STATUS=`).
    pub fn program(&self) -> (Option<i32>, u64) {
        let l = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (l.child_pid, l.restarts)
    }
}

/// Writes `status.json` about once a second until dropped, then removes it.
pub struct Publisher {
    board: Arc<Board>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    /// Held so the store, and with it the store's lock, outlives the
    /// removal of the status file: the writer thread's may be the last
    /// other reference, and a supervisor that takes the lock in between
    /// would see the status it just wrote removed. Dropped after `Drop`
    /// removed the file.
    _shared: Arc<Mutex<Shared>>,
}

impl Publisher {
    /// Starts publishing the status of the supervisor on the store in
    /// `dir`, whose snapshot statistics are in `shared`. Status files a
    /// dead supervisor left are replaced (their temporary files removed).
    pub fn start(dir: &Path, shared: Arc<Mutex<Shared>>) -> std::io::Result<Publisher> {
        remove_temp_files(dir);
        let board = Arc::new(Board {
            inner: Mutex::new(Lifecycle {
                state: State::Starting,
                child_pid: None,
                child_started_ms: None,
                restarts: 0,
                launches: 0,
                done: false,
                dirty: true,
            }),
            changed: Condvar::new(),
        });
        let mut writer = Writer {
            dir: dir.to_owned(),
            shared: shared.clone(),
            started_ms: now_ms(),
            last: None,
            figures: Figures::default(),
        };
        let thread = {
            let board = board.clone();
            std::thread::Builder::new()
                .name("status".into())
                .spawn(move || writer.run(&board))?
        };
        Ok(Publisher {
            board,
            thread: Some(thread),
            path: dir.join(STATUS_FILE),
            _shared: shared,
        })
    }

    /// Where the lifecycle reports.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.board.update(|l| l.done = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Still holding the store (self._shared): no other supervisor can
        // have written a status of its own yet.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes status temporary files a killed supervisor left in `dir`; the
/// names removed.
pub fn remove_temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_temp_name))
        .map(|e| e.path())
        .filter(|p| std::fs::remove_file(p).is_ok())
        .collect()
}

/// The snapshot figures of the last publication.
#[derive(Default)]
struct Figures {
    newest: Option<(u64, u64)>,
    generations: u64,
    bytes_written: u64,
    lags: LagHistogram,
}

/// The snapshot figures in `shared` now.
fn figures(shared: &Shared) -> Figures {
    Figures {
        newest: shared
            .store
            .newest_verified_info()
            .map(|g| (g.number, g.created_ms)),
        generations: shared.stats.generations,
        bytes_written: shared.stats.bytes_written,
        lags: shared.stats.lags().clone(),
    }
}

struct Writer {
    dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
    started_ms: u64,
    /// When the previous figures were read, and them.
    last: Option<(Instant, u64, u64, LagHistogram)>,
    figures: Figures,
}

impl Writer {
    fn run(&mut self, board: &Board) {
        loop {
            let lifecycle = {
                let guard = board.inner.lock().unwrap_or_else(|e| e.into_inner());
                let (mut guard, _) = board
                    .changed
                    .wait_timeout_while(guard, PERIOD, |l| !l.dirty && !l.done)
                    .unwrap_or_else(|e| e.into_inner());
                guard.dirty = false;
                *guard
            };
            if lifecycle.done {
                return;
            }
            let status = self.status(&lifecycle);
            if let Err(e) = self.write(&status) {
                debug!("cannot write the status file: {e}");
            }
        }
    }

    fn status(&mut self, l: &Lifecycle) -> Status {
        // Only try: a snapshot or a restore in progress keeps the previous
        // figures for this publication.
        let shared = self.shared.clone();
        for _ in 0..LOCK_TRIES {
            match shared.try_lock() {
                Ok(shared) => self.figures = figures(&shared),
                Err(TryLockError::Poisoned(p)) => self.figures = figures(&p.into_inner()),
                Err(TryLockError::WouldBlock) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            break;
        }
        let now = Instant::now();
        let f = &self.figures;
        let (mut gps, mut bps, mut p50, mut p99) = (0.0, 0.0, None, None);
        if let Some((at, generations, bytes, lags)) = &self.last {
            let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
            gps = f.generations.saturating_sub(*generations) as f64 / secs;
            bps = f.bytes_written.saturating_sub(*bytes) as f64 / secs;
            let recent = f.lags.since(lags);
            if !recent.is_empty() {
                p50 = Some(recent.quantile(0.50).as_secs_f64() * 1000.0);
                p99 = Some(recent.quantile(0.99).as_secs_f64() * 1000.0);
            }
        }
        self.last = Some((now, f.generations, f.bytes_written, f.lags.clone()));
        Status {
            version: VERSION,
            supervisor_pid: std::process::id(),
            supervisor_started_ms: self.started_ms,
            state: l.state,
            child_pid: l.child_pid,
            child_started_ms: l.child_started_ms,
            restarts: l.restarts,
            newest_generation: f.newest.map(|(n, _)| n),
            newest_generation_ms: f.newest.map(|(_, ms)| ms),
            generations: f.generations,
            generations_per_second: gps,
            bytes_per_second: bps,
            lag_p50_ms: p50,
            lag_p99_ms: p99,
            updated_ms: now_ms(),
        }
    }

    fn write(&self, status: &Status) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let temp = self
            .dir
            .join(format!("{STATUS_TEMP_PREFIX}{}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        let written = serde_json::to_writer(&mut file, status)
            .map_err(std::io::Error::other)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| std::fs::rename(&temp, self.dir.join(STATUS_FILE)));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::time::Instant;

    use rustix::fs::{FlockOperation, flock};
    use shm_snapshot::snapshot::{ArenaScan, Snapshotter};
    use shm_snapshot::store::{LOCK_FILE, Store, StoreOptions};

    use super::*;
    use crate::snapshotter::Stats;

    /// A fresh directory under the system's temporary directory, removed
    /// when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_status_file_is_gone_before_the_store_lock_is_free() {
        let dir = Scratch(std::env::temp_dir().join(format!("shm-restore-status-{}", std::process::id())));
        std::fs::create_dir(&dir.0).unwrap();
        let status = dir.0.join(STATUS_FILE);
        // The window is short (a thread's exit and a join): several rounds
        // catch it on a busy machine too.
        for round in 0..20 {
            let options = StoreOptions {
                fsync: false,
                ..StoreOptions::default()
            };
            let shared = Arc::new(Mutex::new(Shared {
                store: Store::open(&dir.0, options).unwrap(),
                snapshotter: Snapshotter::new(ArenaScan::Hash),
                stats: Stats::default(),
            }));
            // The publisher gets the only reference, as in the supervisor
            // once the snapshot thread has ended.
            let publisher = Publisher::start(&dir.0, shared).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !status.exists() {
                assert!(Instant::now() < deadline, "no status file written");
                std::thread::sleep(Duration::from_millis(1));
            }
            // A second owner trying to take the lock as fast as it can, and
            // looking for a status file the moment it has it.
            let lock = File::open(dir.0.join(LOCK_FILE)).unwrap();
            let left = status.clone();
            let contender = std::thread::spawn(move || {
                loop {
                    if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
                        return left.exists();
                    }
                    assert!(Instant::now() < deadline, "the lock was never released");
                }
            });
            drop(publisher);
            assert!(
                !contender.join().unwrap(),
                "round {round}: the store's lock was free while the status file was still there"
            );
        }
    }
}

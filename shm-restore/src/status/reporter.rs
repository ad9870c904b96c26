//! The one status reporter: a thread that reads the snapshot figures and
//! the lifecycle's board, rewrites `status.json` about once a second (and
//! at once when the program starts or ends), and tells a service manager
//! the same state in its `STATUS=` line when that changes.
//!
//! Reporting never makes snapshots wait: the reporter only *tries* the
//! lock of the state it shares with the snapshot thread, and reuses the
//! previous figures when that is busy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use tracing::debug;

use super::board::{Board, Lifecycle};
use super::file::{self, Status, VERSION, now_ms, remove_temp_files};
use crate::lag::LagHistogram;
use crate::snapshotter::Shared;
use crate::systemd::StatusSink;

/// How often the status file is rewritten.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Least time between two looks for a `STATUS=` update: a program
/// committing thousands of generations a second must not flood the
/// service manager.
pub const STATUS_SPACING: Duration = Duration::from_millis(250);
/// Attempts, a millisecond apart, to read the snapshot figures while a
/// snapshot holds them; past them the previous figures are reported.
const LOCK_TRIES: u32 = 50;

/// Reports until dropped, then removes the status file.
pub struct Reporter {
    board: Arc<Board>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    /// Held so the store, and with it the store's lock, outlives the
    /// removal of the status file: the reporter thread's may be the last
    /// other reference, and a supervisor that takes the lock in between
    /// would see the status it just wrote removed. Dropped after `Drop`
    /// removed the file.
    _shared: Arc<Mutex<Shared>>,
}

impl Reporter {
    /// Starts reporting the status of the supervisor on the store in `dir`,
    /// whose snapshot figures are in `shared`, to the status file and to
    /// `sink` if a service manager listens. Status files a dead supervisor
    /// left are replaced (their temporary files removed).
    pub fn start(
        dir: &Path,
        shared: Arc<Mutex<Shared>>,
        sink: Option<StatusSink>,
    ) -> std::io::Result<Reporter> {
        remove_temp_files(dir);
        let board = Arc::new(Board::default());
        let mut worker = Worker {
            dir: dir.to_owned(),
            shared: shared.clone(),
            started_ms: now_ms(),
            last: None,
            figures: Figures::default(),
            sink,
            last_line: String::new(),
        };
        // Before the first program starts (and is announced with the
        // board's summary), the generation restored is known.
        worker.read_figures();
        board.set_generation(worker.figures.newest.map(|(n, _)| n));
        let thread = {
            let board = board.clone();
            std::thread::Builder::new()
                .name("status".into())
                .spawn(move || worker.run(&board))?
        };
        Ok(Reporter {
            board,
            thread: Some(thread),
            path: dir.join(file::STATUS_FILE),
            _shared: shared,
        })
    }

    /// Where the lifecycle reports.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.board.done();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Still holding the store (self._shared): no other supervisor can
        // have written a status of its own yet.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The snapshot figures of the last look.
#[derive(Default)]
struct Figures {
    newest: Option<(u64, u64)>,
    generations: u64,
    bytes_written: u64,
    lags: LagHistogram,
    replica: Option<crate::replica::upload::ReplicaFigures>,
}

/// The snapshot figures in `shared` now.
fn figures(shared: &Shared) -> Figures {
    Figures {
        newest: shared
            .store
            .current_generation_info()
            .map(|g| (g.number, g.created_ms)),
        generations: shared.stats.generations,
        bytes_written: shared.stats.bytes_written,
        lags: shared.stats.lags().clone(),
        replica: shared.replica.as_ref().map(|r| r.figures()),
    }
}

struct Worker {
    dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
    started_ms: u64,
    /// When the figures were last written to the file, and them.
    last: Option<(Instant, u64, u64, LagHistogram)>,
    figures: Figures,
    sink: Option<StatusSink>,
    /// The last `STATUS=` text sent.
    last_line: String,
}

impl Worker {
    fn run(&mut self, board: &Board) {
        let mut next_file = Instant::now();
        loop {
            let until_file = next_file.saturating_duration_since(Instant::now());
            let wait = match self.sink {
                Some(_) => until_file.min(STATUS_SPACING),
                None => until_file,
            };
            let (lifecycle, changed) = board.wait(wait);
            if lifecycle.done {
                return;
            }
            self.read_figures();
            board.set_generation(self.figures.newest.map(|(n, _)| n));
            let lifecycle = board.now();
            if changed || Instant::now() >= next_file {
                let status = self.status(&lifecycle);
                if let Err(e) = file::write(&self.dir, &status) {
                    debug!("cannot write the status file: {e}");
                }
                next_file = Instant::now() + PERIOD;
            }
            if let Some(sink) = &self.sink {
                let mut line = lifecycle.summary();
                if let Some(r) = &self.figures.replica {
                    line.push_str(&format!(", {}", r.summary()));
                }
                if line != self.last_line && sink.status(&line) {
                    self.last_line = line;
                }
            }
        }
    }

    /// Reads the snapshot figures, unless a snapshot or a restore holds
    /// them for longer than [`LOCK_TRIES`] tries: then the previous stand.
    fn read_figures(&mut self) {
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
            return;
        }
    }

    fn status(&mut self, l: &Lifecycle) -> Status {
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
            replica: f.replica.clone(),
        }
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
    use crate::status::file::STATUS_FILE;

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
                stats: Default::default(),
                replica: None,
            }));
            // The reporter gets the only reference, as in the supervisor
            // once the snapshot thread has ended.
            let reporter = Reporter::start(&dir.0, shared, None).unwrap();
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
            drop(reporter);
            assert!(
                !contender.join().unwrap(),
                "round {round}: the store's lock was free while the status file was still there"
            );
        }
    }
}

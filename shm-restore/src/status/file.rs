//! The status file, `status.json` in the store directory: its shape, and
//! writing and reading it. A writer replaces it whole (a temporary file
//! renamed over it), so a reader never sees half of one. One left by a
//! supervisor that was killed names a pid that is gone, which is how
//! `watch` knows.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The status file's name in the store directory.
pub const STATUS_FILE: &str = "status.json";
/// Prefix of the status file's temporary names (`status.json.<pid>.tmp`).
pub const STATUS_TEMP_PREFIX: &str = "status.json.";
/// Version of the status file's shape.
pub const VERSION: u64 = 1;

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
    /// The replica, with `--replica`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<crate::replica::upload::ReplicaFigures>,
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

/// Writes `status` as the status file in `dir`, atomically.
pub fn write(dir: &Path, status: &Status) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = dir.join(format!("{STATUS_TEMP_PREFIX}{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    let written = serde_json::to_writer(&mut file, status)
        .map_err(std::io::Error::other)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| std::fs::rename(&temp, dir.join(STATUS_FILE)));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

//! One case: start the supervisor over bench-child in a fresh temporary
//! directory, sample its CPU time over the measured window, stop it with
//! SIGTERM, and collect its summary and the store's size.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use shm_snapshot_bench::disk;

use crate::cpu;
use crate::summary::Summary;

/// What each case runs.
#[derive(Debug)]
pub struct Case {
    /// Name in the table.
    pub name: &'static str,
    /// `--size` of the region.
    pub size: &'static str,
    /// bench-child's commits per second; 0 is idle.
    pub rate: u32,
}

/// The cases, in the order they run and appear in the table.
pub const CASES: [Case; 3] = [
    Case {
        name: "64 MiB, 1000 commits/s",
        size: "64MiB",
        rate: 1000,
    },
    Case {
        name: "1 GiB, 1000 commits/s",
        size: "1GiB",
        rate: 1000,
    },
    Case {
        name: "64 MiB, idle",
        size: "64MiB",
        rate: 0,
    },
];

/// Bytes of each unit bench-child commits.
const UNIT_BYTES: &str = "64";
/// Bytes of arena data each of its commits writes.
const ARENA_WRITE: &str = "4096";

/// Time after the program starts that is not measured: the supervisor's
/// first generations (the base of the whole region) and page faults.
pub const WARM_UP: Duration = Duration::from_secs(1);
/// How long the supervisor may take to start the program: reserving a
/// 1 GiB region and restoring a store take a moment on a slow machine.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long the supervisor may take to exit after SIGTERM: its default
/// `--grace` of 10 s, plus a final generation of a 1 GiB region.
const EXIT_PATIENCE: Duration = Duration::from_secs(60);
/// How long to wait for the rest of its log once it has exited.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);

/// The supervisor's log line announcing that the program runs.
const CHILD_STARTED: &str = "child started";
/// Exit status of the supervisor whose program SIGTERM killed (128 + 15).
const STOPPED_BY_SIGTERM: i32 = 128 + 15;

/// Where and how the cases run.
#[derive(Debug)]
pub struct Settings {
    /// The supervisor binary.
    pub shm_restore: PathBuf,
    /// The synthetic program.
    pub bench_child: PathBuf,
    /// Parent of each case's temporary directory.
    pub tmp_root: PathBuf,
    /// Measured window.
    pub window: Duration,
    /// `--interval` for the supervisor, if given.
    pub interval: Option<Duration>,
}

/// What a case measured.
#[derive(Debug)]
pub struct Outcome {
    /// The supervisor's summary line, if it logged one.
    pub summary: Option<Summary>,
    /// The supervisor's CPU time over the window, in percent of one core.
    pub cpu_percent: f64,
    /// Bytes of the files in the store once the supervisor has exited.
    pub store_bytes: u64,
}

/// Runs `case`; an error says why it could not be measured, with the end of
/// the supervisor's log.
pub fn run(case: &Case, settings: &Settings, ticks_per_second: u64) -> Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("shm-e2e-")
        .tempdir_in(&settings.tmp_root)
        .with_context(|| {
            format!(
                "creating a temporary directory in {}",
                settings.tmp_root.display()
            )
        })?;
    let store = dir.path().join("state");
    let mut snapshot = OsString::from("--snapshot=");
    snapshot.push(&store);

    let mut command = Command::new(&settings.shm_restore);
    command
        .arg(snapshot)
        .arg(format!("--size={}", case.size))
        .arg("--fsync=always");
    if let Some(interval) = settings.interval {
        command.arg(format!("--interval={}", humantime::format_duration(interval)));
    }
    command
        .arg("--")
        .arg(&settings.bench_child)
        .args(["--rate", &case.rate.to_string()])
        .args(["--unit-bytes", UNIT_BYTES, "--arena-write", ARENA_WRITE])
        .current_dir(dir.path())
        // The summary is an INFO line, whatever the caller's RUST_LOG says.
        .env("RUST_LOG", "info");
    let mut supervisor = Supervisor::spawn(command)?;
    let (cpu_percent, summary) = measure(&mut supervisor, settings, ticks_per_second)
        .map_err(|e| anyhow!("{e:#}\n{}", supervisor.tail()))?;
    let store_bytes =
        disk::tree_bytes(&store).with_context(|| format!("measuring the store {}", store.display()))?;
    Ok(Outcome {
        summary,
        cpu_percent,
        store_bytes,
    })
}

/// Waits for the program, measures the window, stops the supervisor and
/// finds its summary line. Returns the CPU percentage and the summary.
fn measure(
    supervisor: &mut Supervisor,
    settings: &Settings,
    ticks_per_second: u64,
) -> Result<(f64, Option<Summary>)> {
    supervisor.wait_for_line(CHILD_STARTED, START_PATIENCE)?;
    std::thread::sleep(WARM_UP);
    let before = cpu::sample(supervisor.pid())?;
    std::thread::sleep(settings.window);
    let after = cpu::sample(supervisor.pid())?;
    if let Some(status) = supervisor.child.try_wait()? {
        bail!(
            "shm-restore ended during the measured window ({})",
            describe(status)
        );
    }
    supervisor.terminate();
    let status = supervisor.wait(EXIT_PATIENCE)?;
    if !(status.success() || status.code() == Some(STOPPED_BY_SIGTERM)) {
        bail!("shm-restore ended with {} after SIGTERM", describe(status));
    }
    supervisor.drain(DRAIN_PATIENCE);
    let summary = Summary::find(&supervisor.seen);
    Ok((cpu::percent(&before, &after, ticks_per_second), summary))
}

/// "status N" or "signal N".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The running supervisor, its stderr read line by line on a thread so the
/// pipe never fills.
struct Supervisor {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line received so far.
    seen: Vec<String>,
}

impl Supervisor {
    fn spawn(mut command: Command) -> Result<Supervisor> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", command.get_program().to_string_lossy()))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Supervisor {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `text`.
    fn wait_for_line(&mut self, text: &str, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no log line containing `{text}` within {patience:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "shm-restore ended with {} before logging `{text}`",
                        describe(status)
                    )
                }
            }
        }
    }

    /// Sends SIGTERM to the supervisor, which forwards it to the program.
    fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            // It may have exited already; the caller finds out when it waits.
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Waits for the supervisor to exit; SIGKILL and an error after `patience`.
    fn wait(&mut self, patience: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.signal(rustix::process::Signal::KILL);
                bail!("shm-restore did not exit within {patience:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Collects log lines until the pipe closes or `patience` passes.
    fn drain(&mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }

    /// The last log lines, for a failure message.
    fn tail(&mut self) -> String {
        self.drain(Duration::from_millis(100));
        shm_snapshot_bench::log::tail(&self.seen)
    }
}

impl Drop for Supervisor {
    /// A case that failed half-way leaves nothing running: the supervisor is
    /// killed, and its program dies with it (PDEATHSIG).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

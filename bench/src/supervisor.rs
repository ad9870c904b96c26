//! A running `shm-restore`, as the runners drive it: its stdout (where its
//! program's lines arrive) and stderr (its log) read on threads so neither
//! pipe fills, every wait bounded, and nothing left running when it is
//! dropped.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process};

/// How long the supervisor may take to exit once both its pipes closed.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(5);
/// The supervisor's log line when it stops relaunching (`shm-restore/src/supervise/lifecycle.rs`).
const RESTART_LIMIT: &str = "restart limit reached";

/// A line from one of the supervisor's pipes.
enum Piped {
    Out(String),
    Err(String),
}

/// What a wait on the supervisor ended with.
#[derive(Debug)]
pub enum Next {
    /// A line on its stdout: its program's output.
    Out(String),
    /// It exited (and its pipes closed).
    Exited(ExitStatus),
}

/// The supervisor process.
pub struct Supervisor {
    child: Child,
    lines: Receiver<Piped>,
    /// Every stderr line received so far.
    log: Vec<String>,
    /// Its exit status, once it has exited.
    exited: Option<ExitStatus>,
}

impl Supervisor {
    /// Starts `command` with stdin closed and both output pipes read.
    pub fn spawn(mut command: Command) -> Result<Supervisor> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", command.get_program().to_string_lossy()))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("stdout is piped")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        forward(stdout, tx.clone(), Piped::Out);
        forward(stderr, tx, Piped::Err);
        Ok(Supervisor {
            child,
            lines,
            log: Vec::new(),
            exited: None,
        })
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context("checking on shm-restore")?;
        }
        Ok(self.exited)
    }

    /// The stdout lines received so far and not yet returned by
    /// [`Supervisor::next`], without waiting; log lines are collected on the
    /// way.
    pub fn received(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(piped) = self.lines.try_recv() {
            match piped {
                Piped::Out(line) => out.push(line),
                Piped::Err(line) => self.log.push(line),
            }
        }
        out
    }

    /// Its log lines (stderr) received so far.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// The next stdout line, or the supervisor's exit; an error if neither
    /// comes by `deadline`. Log lines are collected on the way.
    pub fn next(&mut self, deadline: Instant) -> Result<Next> {
        if let Some(status) = self.exited {
            return Ok(Next::Exited(status));
        }
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Piped::Out(line)) => return Ok(Next::Out(line)),
                Ok(Piped::Err(line)) => self.log.push(line),
                Err(RecvTimeoutError::Timeout) => bail!("timed out"),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait(EXIT_AFTER_EOF).context("its pipes closed")?;
                    return Ok(Next::Exited(status));
                }
            }
        }
    }

    /// Whether it logged that it gave up relaunching the program.
    pub fn gave_up(&self) -> bool {
        self.log.iter().any(|l| l.contains(RESTART_LIMIT))
    }

    /// Sends SIGTERM (it stops its program, persists a final generation and
    /// exits) and waits up to `patience`; then SIGKILL and an error.
    pub fn stop(&mut self, patience: Duration) -> Result<ExitStatus> {
        if self.exited.is_none() {
            self.signal(Signal::TERM);
        }
        let deadline = Instant::now() + patience;
        loop {
            match self.next(deadline) {
                Ok(Next::Exited(status)) => return Ok(status),
                Ok(Next::Out(_)) => {}
                Err(_) => {
                    self.signal(Signal::KILL);
                    bail!("shm-restore did not exit within {patience:?} of SIGTERM; killed it");
                }
            }
        }
    }

    /// Waits for the process itself, SIGKILL and an error after `patience`.
    fn wait(&mut self, patience: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.signal(Signal::KILL);
                bail!("shm-restore did not exit within {patience:?}; killed it");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            // It may have exited already; the caller finds out when it waits.
            let _ = kill_process(pid, signal);
        }
    }

    /// The last log lines, for a failure message.
    pub fn tail(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_millis(100);
        while let Ok(piped) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Piped::Err(line) = piped {
                self.log.push(line);
            }
        }
        crate::log::tail(&self.log)
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

/// Sends each line of `pipe` on `tx`, wrapped by `wrap`, until either end closes.
fn forward(pipe: impl Read + Send + 'static, tx: Sender<Piped>, wrap: fn(String) -> Piped) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(wrap(line)).is_err() {
                break;
            }
        }
    });
}

/// "status N" or "signal N".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

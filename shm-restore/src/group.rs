//! The program's process group: how the program ended, reaping it and its
//! orphans, and signalling or killing the whole group.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal, WaitOptions};
use tracing::warn;

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl Ended {
    /// The exit status the supervisor passes on: the status, or 128+N.
    pub fn code(self) -> u8 {
        match self {
            Ended::Exited(code) => code as u8,
            Ended::Signaled(signal) => 128u8.wrapping_add(signal as u8),
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited with status {code}"),
            Ended::Signaled(signal) => write!(f, "killed by {}", signal_name(*signal)),
        }
    }
}

/// A signal's name for messages.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        n => format!("signal {n}"),
    }
}

/// Reaps every child that has ended (orphans included: the supervisor is
/// their subreaper) and returns how `pid` ended if it did.
pub fn reap(pid: libc::pid_t) -> Result<Option<Ended>> {
    let mut ended = None;
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((who, status))) => {
                if who.as_raw_nonzero().get() == pid {
                    if let Some(code) = status.exit_status() {
                        ended = Some(Ended::Exited(code));
                    } else if let Some(signal) = status.terminating_signal() {
                        ended = Some(Ended::Signaled(signal));
                    }
                }
            }
            Ok(None) | Err(rustix::io::Errno::CHILD) => return Ok(ended),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("waiting for the program"),
        }
    }
}

/// Sends `signal` to the process group `pgid` (the program's), ignoring a
/// group that is already gone.
pub fn signal_group(pgid: libc::pid_t, signal: i32) {
    let (Some(pgid), Some(signal)) = (Pid::from_raw(pgid), Signal::from_named_raw(signal)) else {
        return;
    };
    let _ = rustix::process::kill_process_group(pgid, signal);
}

/// How long the supervisor waits for the program's group to vanish after
/// SIGKILL before snapshotting anyway. Killed processes are gone within
/// milliseconds unless stuck in uninterruptible I/O.
const GROUP_EXIT_WAIT: Duration = Duration::from_secs(5);

/// Kills what is left of the program's process group and waits until it is
/// gone, so the region is quiet before the post-mortem snapshot.
pub fn kill_group(pgid: libc::pid_t) {
    signal_group(pgid, libc::SIGKILL);
    let Some(group) = Pid::from_raw(pgid) else { return };
    let deadline = Instant::now() + GROUP_EXIT_WAIT;
    loop {
        let _ = reap(0);
        if rustix::process::test_kill_process_group(group).is_err() {
            return;
        }
        if Instant::now() > deadline {
            warn!(
                pgid,
                "processes of the program's group survive SIGKILL; snapshotting anyway"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

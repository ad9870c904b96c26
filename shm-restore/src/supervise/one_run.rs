//! One run of the program: start it, then wait for it to end while
//! forwarding stop signals, enforcing the grace period, watching for
//! hangs, feeding systemd's watchdog and letting chaos mode strike.
//!
//! The loop reads top to bottom: reap, act on a hang, find the next
//! deadline, wait for a signal or that deadline, act on what came.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use std::os::fd::AsFd;
use tracing::{info, warn};

use super::events::Event;
use super::lifecycle::Supervisor;
use crate::chaos::{Chaos, Tick};
use crate::child::Launcher;
use crate::group::{Ended, kill_group, reap, signal_group, signal_name};
use crate::hang::HangWatch;
use crate::leftovers;

/// The region's commit count: 0 while it is not laid out.
fn commit_count(region: &std::fs::File) -> u64 {
    shm_snapshot::snapshot::observe_file(region)
        .ok()
        .flatten()
        .map_or(0, |o| o.commit_count())
}

/// What the loop waits for besides signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The stopped program's grace period is over: SIGKILL.
    GraceOver,
    /// Chaos mode has a kill (or a look at the last run) to make.
    Chaos,
    /// The hang watch's next look.
    HangCheck,
    /// The lifecycle loop must go round for systemd's watchdog.
    WatchdogRound,
}

/// How a run ended, and whether it made progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunEnd {
    /// How the program ended.
    pub ended: Ended,
    /// Commits the region shows since the run started (untrusted: the
    /// program writes the count; only used to pace relaunches).
    pub commits: u64,
}

/// The state of one run.
struct Run {
    pid: libc::pid_t,
    /// The region's commit count when the run started.
    commits_at_start: u64,
    /// Watching the heartbeat, with `--hang-timeout`, until the program is
    /// killed or stopped.
    hang: Option<HangWatch>,
    /// When a stopped program gets SIGKILL.
    grace_over: Option<Instant>,
    /// What the hang watch found and the loop has yet to act on.
    hung: Option<Duration>,
}

impl Run {
    /// Looks at the heartbeat, unless a hang is already found.
    fn look_for_hang(&mut self) {
        if self.hung.is_none() {
            self.hung = self.hang.as_mut().and_then(HangWatch::check);
        }
    }
}

impl Supervisor {
    /// Starts the program and waits for it to end.
    pub(super) fn run_child(&mut self, launcher: &mut Launcher) -> Result<RunEnd> {
        let mut run = self.start_run(launcher)?;
        loop {
            self.systemd.round();
            if let Some(ended) = reap(run.pid)? {
                return Ok(self.run_ended(&run, ended));
            }
            run.look_for_hang();
            if let Some(stalled) = run.hung.take() {
                self.kill_hung(&mut run, stalled);
            }
            let due = self.next_due(&run);
            match self.events.next(due.map(|(at, _)| at))? {
                Event::Signal(libc::SIGCHLD) => {}
                Event::Signal(signal) => self.stop_signal(&mut run, signal),
                Event::Deadline => match due.map(|(_, what)| what) {
                    Some(Due::GraceOver) => {
                        warn!(grace = %humantime::format_duration(self.grace), "child did not exit within the grace period: SIGKILL");
                        signal_group(run.pid, libc::SIGKILL);
                        run.grace_over = None;
                    }
                    Some(Due::Chaos) => self.chaos_tick(&mut run),
                    // Looked at on the next turn.
                    Some(Due::HangCheck | Due::WatchdogRound) | None => {}
                },
            }
        }
    }

    fn start_run(&mut self, launcher: &mut Launcher) -> Result<Run> {
        if let Some(chaos) = &mut self.chaos {
            chaos.launching(self.region.file());
        }
        let commits_at_start = commit_count(self.region.file());
        let pid = launcher.spawn(self.region.file().as_fd())?;
        if let Some(chaos) = &mut self.chaos {
            chaos.started(pid);
        }
        leftovers::record(&self.store_dir, pid);
        self.status.child_started(pid);
        info!(pid, program = launcher.display(), "child started");
        self.snapshots.resume();
        self.systemd.child_started(&self.status.summary());
        let hang = match self.hang_timeout {
            Some(timeout) => {
                Some(HangWatch::start(self.region.file(), timeout).context("watching for hangs")?)
            }
            None => None,
        };
        Ok(Run {
            pid,
            commits_at_start,
            hang,
            grace_over: None,
            hung: None,
        })
    }

    /// The program ended: its group goes too, so the region is quiet.
    fn run_ended(&mut self, run: &Run, ended: Ended) -> RunEnd {
        info!(pid = run.pid, status = %ended, "child ended");
        kill_group(run.pid);
        leftovers::clear(&self.store_dir);
        self.status.child_ended();
        RunEnd {
            ended,
            commits: commit_count(self.region.file()).saturating_sub(run.commits_at_start),
        }
    }

    /// The earliest deadline, and what it is for.
    fn next_due(&self, run: &Run) -> Option<(Instant, Due)> {
        let chaos = self
            .chaos
            .as_ref()
            .filter(|_| self.stop.is_none())
            .and_then(Chaos::next_wake);
        [
            (run.grace_over, Due::GraceOver),
            (chaos, Due::Chaos),
            (run.hang.as_ref().map(HangWatch::next_check), Due::HangCheck),
            (
                self.systemd.round_interval().map(|d| Instant::now() + d),
                Due::WatchdogRound,
            ),
        ]
        .into_iter()
        .filter_map(|(at, what)| Some((at?, what)))
        .min_by_key(|&(at, _)| at)
    }

    fn kill_hung(&mut self, run: &mut Run, stalled: Duration) {
        if let Some(chaos) = &mut self.chaos {
            chaos.hung(stalled);
        }
        warn!(
            pid = run.pid,
            "child hung: heartbeat unchanged for {}; killing it",
            humantime::format_duration(Duration::from_millis(stalled.as_millis() as u64))
        );
        signal_group(run.pid, libc::SIGKILL);
        run.hang = None;
    }

    /// A stop signal: the first is forwarded to the group and starts the
    /// grace period; a second kills the group at once.
    fn stop_signal(&mut self, run: &mut Run, signal: i32) {
        if self.stop.is_some() {
            warn!(signal = %signal_name(signal), "second stop signal: killing the child's group now");
            signal_group(run.pid, libc::SIGKILL);
            return;
        }
        self.stop = Some(signal);
        self.status.stopping();
        self.systemd.stopping();
        run.hang = None;
        info!(
            signal = %signal_name(signal),
            grace = %humantime::format_duration(self.grace),
            "stopping: signal forwarded to the child's group"
        );
        signal_group(run.pid, signal);
        run.grace_over = Some(Instant::now() + self.grace);
    }

    /// Lets chaos mode do what is due. While a kill waits for its moment,
    /// the lifecycle's own work goes on: the watchdog is fed, and a stop
    /// signal or a hang ends the wait (the signal is held for the loop).
    fn chaos_tick(&mut self, run: &mut Run) {
        let Some(chaos) = &mut self.chaos else { return };
        let (events, systemd) = (&mut self.events, &self.systemd);
        let mut interrupt = || {
            systemd.round();
            let stop = events.hold_pending();
            run.look_for_hang();
            stop || run.hung.is_some()
        };
        if chaos.tick(self.region.file(), &mut interrupt) == Tick::Stop {
            // The last run proved healthy (or failed to): stop it as a stop
            // signal would.
            self.stop = Some(libc::SIGTERM);
            signal_group(run.pid, libc::SIGTERM);
            run.grace_over = Some(Instant::now() + self.grace);
        }
    }
}

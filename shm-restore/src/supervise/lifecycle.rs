//! The relaunch loop: after each run, the post-mortem, then the restart
//! policy (limit, backoff) or chaos mode's own relaunch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use shm_snapshot::restore::Restorable;
use tracing::{error, info};

use super::events::{Event, Events};
use super::one_run::RunEnd;
use super::pace::{QUICK_PER_SECOND, QuickRelaunches};
use crate::chaos::{self, Chaos};
use crate::child::Launcher;
use crate::config::RestartPolicy;
use crate::group::{Ended, reap, signal_name};
use crate::region::HostRegion;
use crate::restore::{self, Left, OnDamage, Persist, When};
use crate::snapshotter::SnapshotThread;
use crate::status::Board;
use crate::systemd::Systemd;

/// The supervisor while the program runs and between its runs.
pub(super) struct Supervisor {
    pub restart: RestartPolicy,
    /// How long a stopped program has before SIGKILL.
    pub grace: Duration,
    pub hang_timeout: Option<Duration>,
    pub on_damage: OnDamage,
    /// Where the program's group is recorded for a later supervisor.
    pub store_dir: PathBuf,
    /// What the status reporter is told.
    pub status: Arc<Board>,
    pub snapshots: SnapshotThread,
    pub region: HostRegion,
    pub events: Events,
    /// The stop signal received, if any: no relaunch after it.
    pub stop: Option<i32>,
    /// When each recent launch happened, for the restart limit.
    pub launches: Vec<Instant>,
    /// Pacing of relaunches after deaths with progress.
    pub quick: QuickRelaunches,
    /// Chaos mode, with `--chaos-kill`.
    pub chaos: Option<Chaos>,
    /// Notifications to systemd, if it runs the supervisor.
    pub systemd: Systemd,
}

impl Supervisor {
    /// Starts the program and relaunches it per the policy until it is done.
    pub fn lifecycle(&mut self, launcher: &mut Launcher) -> Result<ExitCode> {
        let policy = self.restart;
        let mut quick_deaths = 0u32;
        loop {
            let started = Instant::now();
            self.launches.push(started);
            let RunEnd { ended, commits } = self.run_child(launcher)?;
            let stopping = self.stop.is_some();
            let chaos_kill =
                (self.chaos.as_mut()).is_some_and(|c| c.ended(ended, stopping, self.region.file()));
            // The disk stays off the relaunch's path when a relaunch follows
            // at once (a chaos kill, or a death after progress that the
            // policy relaunches) and the snapshot thread will follow it to
            // persist the generation. Otherwise (a stop, a backoff, the end,
            // chaos mode reading the next region back from disk, no
            // snapshot thread) it is persisted now.
            let relaunch_at_once = match chaos_kill {
                true => !self.chaos.as_ref().is_some_and(Chaos::plans_disk_relaunch),
                false => commits > 0 && policy.relaunches(ended),
            };
            let persist = match !stopping && relaunch_at_once && self.snapshots.is_continuous() {
                true => Persist::Later,
                false => Persist::Now,
            };
            let left = self.post_mortem(persist)?;
            if chaos_kill && !stopping {
                // Intentional: no restart limit, no backoff.
                self.launches.pop();
                self.chaos_relaunch(left)?;
                // A stop signal that came during the post-mortem or the
                // restore ends it here, not after another start.
                if self.stop_pending()? {
                    return Ok(ExitCode::from(ended.code()));
                }
                continue;
            }
            if self.stop.is_some() {
                return Ok(ExitCode::from(ended.code()));
            }
            let success = ended == Ended::Exited(0);
            if !policy.relaunches(ended) {
                return Ok(ExitCode::from(ended.code()));
            }
            if commits > 0 {
                // Progress: a kill or a crash of a working program.
                self.launches.pop();
                quick_deaths = 0;
                let pause = self.quick.take();
                if pause.is_zero() {
                    info!(
                        commits,
                        "the program committed since its start: relaunching at once"
                    );
                } else {
                    info!(
                        commits,
                        after_ms = pause.as_millis() as u64,
                        "the program committed since its start, but dies faster than {QUICK_PER_SECOND} times a second: relaunching after a pause"
                    );
                }
                if !self.sleep(pause)? {
                    return Ok(ExitCode::from(ended.code()));
                }
                continue;
            }
            let window = policy.window;
            self.launches.retain(|t| t.elapsed() < window);
            if self.launches.len() > policy.limit as usize {
                error!(
                    relaunches = policy.limit,
                    window = %humantime::format_duration(window),
                    last = %ended,
                    "restart limit reached: the program died {} times within {} without committing; giving up",
                    self.launches.len(),
                    humantime::format_duration(window)
                );
                return Ok(ExitCode::from(if success { 1 } else { ended.code().max(1) }));
            }
            quick_deaths = if started.elapsed() > policy.backoff_max {
                0
            } else {
                quick_deaths + 1
            };
            let delay = policy
                .backoff
                .saturating_mul(1 << quick_deaths.saturating_sub(1).min(16))
                .min(policy.backoff_max);
            info!(
                after_ms = delay.as_millis() as u64,
                "no commit since its start: relaunching after a backoff"
            );
            if !self.sleep(delay)? {
                return Ok(ExitCode::from(ended.code()));
            }
        }
    }

    /// The post-mortem of the run that just ended. When it may be persisted
    /// later and the snapshot thread is in the middle of a generation, it
    /// does not wait for that generation (a base of a large region takes
    /// seconds): the region is made to hold what it proves and the units
    /// reach the store with the thread's next generation.
    fn post_mortem(&mut self, persist: Persist) -> Result<Left> {
        if persist == Persist::Later {
            match self.snapshots.try_pause() {
                Some(mut shared) => {
                    return restore::post_mortem(&mut shared, &self.region, self.on_damage, persist);
                }
                None => {
                    if let Some(left) = restore::post_mortem_while_busy(&self.region)? {
                        return Ok(left);
                    }
                }
            }
        }
        let mut shared = self.snapshots.pause();
        restore::post_mortem(&mut shared, &self.region, self.on_damage, persist)
    }

    /// After a chaos kill's post-mortem: rebuilds the region from the
    /// newest generation on disk if the schedule says so and nothing the
    /// region holds would be lost by it.
    fn chaos_relaunch(&mut self, left: Left) -> Result<()> {
        let Some(chaos) = &mut self.chaos else {
            return Ok(());
        };
        let Some(require) = chaos.relaunch_from_disk(left) else {
            return Ok(());
        };
        let mut shared = self.snapshots.pause();
        let restorable = restore::newest(&mut shared, self.region.len())?;
        let replace = match (&restorable, require) {
            // The post-mortem restored what the store gives: again.
            (_, None) => true,
            (Restorable::Generation(g), Some(_)) => chaos::may_replace(require, Some(g.number)),
            (Restorable::Empty, Some(_)) => chaos::may_replace(require, None),
            (Restorable::Damaged(_) | Restorable::OtherSize { .. }, Some(_)) => false,
        };
        if replace {
            restore::apply(
                &mut shared,
                restorable,
                &self.region,
                self.on_damage,
                When::AfterDeath,
            )?;
        }
        chaos.restored_from_disk(replace);
        Ok(())
    }

    /// Whether a stop signal is waiting (reaping orphans on the way, as
    /// [`Supervisor::sleep`] does); if so it is taken as the stop.
    fn stop_pending(&mut self) -> Result<bool> {
        while let Event::Signal(signal) = self.events.next(Some(Instant::now()))? {
            if signal == libc::SIGCHLD {
                let _ = reap(0);
                continue;
            }
            info!(signal = %signal_name(signal), "stopping before the relaunch");
            self.stop = Some(signal);
            self.status.stopping();
            return Ok(true);
        }
        Ok(false)
    }

    /// Sleeps `delay` unless a stop signal comes first; false if one did.
    fn sleep(&mut self, delay: Duration) -> Result<bool> {
        let until = Instant::now() + delay;
        loop {
            self.systemd.round();
            let round = self.systemd.round_interval().map(|r| Instant::now() + r);
            let wake = round.map_or(until, |r| r.min(until));
            match self.events.next(Some(wake))? {
                Event::Signal(libc::SIGCHLD) => {
                    let _ = reap(0);
                }
                Event::Signal(signal) => {
                    info!(signal = %signal_name(signal), "stopping during the relaunch delay");
                    self.stop = Some(signal);
                    self.status.stopping();
                    return Ok(false);
                }
                Event::Deadline if Instant::now() < until => {}
                Event::Deadline => return Ok(true),
            }
        }
    }
}

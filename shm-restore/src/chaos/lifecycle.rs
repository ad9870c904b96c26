//! Chaos mode as the supervisor's lifecycle sees it: hooks called around
//! each start and end of the program, which plan and send the kills, watch
//! the last run for health, and count everything for the report.

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shm_snapshot::Observer;
use shm_snapshot::snapshot::observe_file;
use tracing::{error, info, warn};

use super::flags::{ChaosFlags, KillRange};
use super::killer::{self, MOMENT_WAIT, Strike, Target};
use super::report::{log_report, write_atomically};
use super::schedule::{Planned, Schedule, Source};
use super::tally::{Relaunched, Tally};
use crate::group::Ended;
use crate::restore::Left;

/// Exit status in chaos mode when any run of the program failed (ended by
/// itself, not by a chaos kill, with a status other than 0).
pub const EXIT_CHILD_FAILED: u8 = 4;

/// The program's status for an inconsistent restore (primes-snapshot's
/// convention, which the report counts apart).
const STATUS_INCONSISTENT: i32 = 3;

/// The longest wait for the last run to prove healthy (its first commit),
/// when `MAX` is shorter: a program restoring a large state needs time.
const HEALTH_WAIT: Duration = Duration::from_secs(10);

/// How often the last run's commit count is looked at.
const HEALTH_POLL: Duration = Duration::from_millis(2);

/// The current run of the program, as chaos sees it.
struct Run {
    /// The process the kill goes to, and the region as it watches it.
    target: Target,
    /// The kill planned for this run (`None`: the last run, watched for health).
    kill: Option<(Instant, Planned)>,
    /// When the last run must have proven healthy by.
    health_by: Instant,
    /// The region's commit count before the run started.
    baseline: Option<u64>,
    /// The kill sent to this run, if any.
    struck: Option<Strike>,
    /// The hang watch took this run for hung (heartbeat still for so long):
    /// no chaos kill for it, and its death is a failure.
    hung: Option<Duration>,
}

/// What the lifecycle does after a tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing.
    Nothing,
    /// The last run proved healthy (or ran out of time to): stop it like a SIGTERM.
    Stop,
}

/// Chaos mode's state: the schedule, the killer, the counts for the report.
pub struct Chaos {
    seed: u64,
    range: KillRange,
    runs_wanted: Option<u64>,
    report_to: Option<PathBuf>,
    schedule: Schedule,
    run: Option<Run>,
    /// Baseline commit count read before the next spawn.
    next_baseline: Option<u64>,
    /// When the last chaos kill was sent, until the next run starts.
    killed_at: Option<Instant>,
    /// Where the next run's region comes from, after a chaos kill; counted
    /// when that run starts.
    next_source: Option<Relaunched>,
    tally: Tally,
}

impl Chaos {
    /// Chaos mode per `flags`, or `None` without `--chaos-kill`.
    pub fn new(flags: &ChaosFlags) -> Option<Chaos> {
        let range = flags.chaos_kill?;
        let seed = flags.seed.unwrap_or_else(rand::random);
        info!(
            seed,
            kill = %format_args!("{}..{}", humantime::format_duration(range.min), humantime::format_duration(range.max)),
            runs = flags.chaos_runs,
            restore = format!("{:?}", flags.chaos_restore).to_lowercase(),
            "chaos mode (repeat with --seed {seed})"
        );
        Some(Chaos {
            seed,
            range,
            runs_wanted: flags.chaos_runs,
            report_to: flags.report.clone(),
            schedule: Schedule::new(seed, range, flags.chaos_restore),
            run: None,
            next_baseline: None,
            killed_at: None,
            next_source: None,
            tally: Tally::new(),
        })
    }

    /// Before a start: notes the region's commit count, so the last run's
    /// first commit can be told from what it restored.
    pub fn launching(&mut self, region: &File) {
        self.next_baseline = observe_file(region).ok().flatten().map(|o| o.commit_count());
    }

    /// After a start: plans this run's kill, or its health watch if every
    /// planned kill is done.
    pub fn started(&mut self, pid: libc::pid_t) {
        let now = Instant::now();
        self.tally
            .started(now, self.killed_at.take(), self.next_source.take());
        let kill = if self.runs_wanted.is_some_and(|n| self.tally.kills >= n) {
            info!("chaos: every planned kill is done; waiting for this run's first commit");
            None
        } else {
            let plan = self.schedule.get(self.tally.kills as usize);
            Some((now + Duration::from_micros(plan.after_us), plan))
        };
        self.run = Some(Run {
            target: Target::new(pid),
            kill,
            health_by: now + self.range.max.max(HEALTH_WAIT),
            baseline: self.next_baseline.take(),
            struck: None,
            hung: None,
        });
    }

    /// When [`Chaos::tick`] has something to do for the current run.
    pub fn next_wake(&self) -> Option<Instant> {
        let run = self.run.as_ref()?;
        if run.struck.is_some() {
            return None;
        }
        Some(match run.kill {
            Some((due, _)) => due,
            None => Instant::now() + HEALTH_POLL,
        })
    }

    /// Does what is due: a kill (waiting up to `MAX` or [`MOMENT_WAIT`] for
    /// its moment), or a look at whether the last run has committed. While
    /// a kill waits, `interrupt` is called every
    /// [`PEEK_EVERY`](killer::PEEK_EVERY); when it returns true the wait
    /// ends without a kill (which stays due).
    pub fn tick(&mut self, region: &File, interrupt: &mut dyn FnMut() -> bool) -> Tick {
        let Some(run) = self.run.as_mut() else {
            return Tick::Nothing;
        };
        if run.struck.is_some() || run.hung.is_some() {
            return Tick::Nothing;
        }
        let now = Instant::now();
        match run.kill {
            Some((due, plan)) if now >= due => {
                let until = now + self.range.max.min(MOMENT_WAIT);
                run.struck = killer::strike(&mut run.target, plan.kind, region, until, interrupt);
                if let Some(strike) = &run.struck {
                    self.killed_at = Some(strike.at);
                }
                Tick::Nothing
            }
            Some(_) => Tick::Nothing,
            None => {
                // A blank region (no baseline) counts from 0: laying it out
                // is no commit.
                let count = run.target.observer(region).map(Observer::commit_count);
                let committed = count.is_some_and(|c| c > run.baseline.unwrap_or(0));
                if committed || now >= run.health_by {
                    if committed {
                        info!("chaos: the last run committed; stopping it");
                    } else {
                        let waited = humantime::format_duration(self.range.max.max(HEALTH_WAIT));
                        error!(%waited, "chaos: the last run made no commit in time; stopping it");
                        self.tally
                            .failed(format!("made no commit within {waited} of its start"), false);
                    }
                    self.tally.last_run(committed);
                    self.run = None;
                    return Tick::Stop;
                }
                Tick::Nothing
            }
        }
    }

    /// The hang watch took the current run for hung and kills it: no chaos
    /// kill for it, and its end counts as a failure.
    pub fn hung(&mut self, stalled: Duration) {
        if let Some(run) = &mut self.run {
            run.hung = Some(stalled);
        }
    }

    /// After the run ended (its group dead, before the post-mortem): whether
    /// a chaos kill ended it. Any other end that is not a stop the
    /// supervisor asked for, nor status 0, counts as a failure.
    pub fn ended(&mut self, ended: Ended, stopping: bool, region: &File) -> bool {
        let run = self.run.take();
        let struck = run.as_ref().and_then(|r| r.struck.as_ref());
        if let Some(strike) = struck
            && ended == Ended::Signaled(libc::SIGKILL)
        {
            self.tally.killed(strike, region);
            return true;
        }
        // A run killed (or about to be) that ended some other way first.
        self.killed_at = None;
        if stopping || ended == Ended::Exited(0) {
            return false;
        }
        let status = match run.and_then(|r| r.hung) {
            Some(stalled) => format!(
                "hung: heartbeat unchanged for {}, then {ended}",
                humantime::format_duration(Duration::from_millis(stalled.as_millis() as u64))
            ),
            None => ended.to_string(),
        };
        error!(run = self.tally.starts, %status, "chaos: the program failed by itself");
        self.tally
            .failed(status, ended == Ended::Exited(STATUS_INCONSISTENT));
        false
    }

    /// After a chaos kill's post-mortem (which `left` the region as it
    /// says): whether the next run's region is to be rebuilt from disk,
    /// and if so, which generation it must load for the region to be
    /// replaced (`Some(None)`: whatever it loads; the post-mortem left the
    /// region as the store gives it). Never when the post-mortem generation
    /// could not be persisted: the region then holds units the store lacks,
    /// and replacing it with an older state would lose them. Follow with
    /// [`Chaos::restored_from_disk`].
    pub fn relaunch_from_disk(&mut self, left: Left) -> Option<Option<u64>> {
        let plan = self.schedule.get(self.tally.kills.saturating_sub(1) as usize);
        match (plan.restore, left) {
            (Source::Memory, _) => {
                self.next_source = Some(Relaunched::Memory);
                None
            }
            (Source::Disk, Left::Ahead | Left::Staged | Left::Unchanged(None)) => {
                self.refused();
                None
            }
            (Source::Disk, Left::Persisted(number) | Left::Unchanged(Some(number))) => Some(Some(number)),
            (Source::Disk, Left::Restored) => Some(None),
        }
    }

    /// Before the post-mortem of the run that just ended by a chaos kill:
    /// whether the next run's region is planned to come from disk, so the
    /// post-mortem generation must be persisted before the relaunch, not
    /// after.
    pub fn plans_disk_relaunch(&self) -> bool {
        let plan = self.schedule.peek(self.tally.kills.saturating_sub(1) as usize);
        plan.is_some_and(|p| p.restore == Source::Disk)
    }

    /// After a relaunch planned from disk: whether the region was replaced
    /// (else the generation loaded was not the one required, and the
    /// region is kept in memory).
    pub fn restored_from_disk(&mut self, replaced: bool) {
        if replaced {
            self.next_source = Some(Relaunched::Disk);
        } else {
            self.refused();
        }
    }

    fn refused(&mut self) {
        warn!("chaos: the store lacks units the region holds; relaunching from memory, not disk");
        self.next_source = Some(Relaunched::Refused);
    }

    /// Ends chaos mode: logs the report, writes it to `--report`, and turns
    /// the lifecycle's exit status into chaos mode's: [`EXIT_CHILD_FAILED`]
    /// if any run failed, else 0.
    pub fn finish(mut self, code: Result<ExitCode>, generations: u64) -> Result<ExitCode> {
        let status = match &code {
            // What the process exits with (main prints the error).
            Err(_) => 1,
            Ok(_) if self.tally.failures.total > 0 => EXIT_CHILD_FAILED,
            Ok(_) => 0,
        };
        if let Some(n) = self.runs_wanted {
            // The whole plan, even when stopped early.
            self.schedule.get(n.saturating_sub(1) as usize);
        }
        let planned = self.runs_wanted.map_or(self.tally.kills as usize, |n| n as usize);
        let schedule = self.schedule.drawn().iter().take(planned).copied().collect();
        let report = self.tally.into_report(self.seed, schedule, generations, status);
        log_report(&report, self.report_to.as_deref());
        if let Some(path) = &self.report_to {
            write_atomically(path, &report)
                .with_context(|| format!("writing the report to {}", path.display()))?;
        }
        code?;
        Ok(ExitCode::from(status))
    }
}

/// Whether a relaunch from disk that requires generation `require` (see
/// [`Chaos::relaunch_from_disk`]) may replace the region with generation
/// `loaded` (`None`: a blank region, the store being empty). The region
/// holds exactly the post-mortem generation: anything else the store gives
/// (an older one, when that one is damaged on reading back or refused) would
/// lose units.
pub fn may_replace(require: Option<u64>, loaded: Option<u64>) -> bool {
    require.is_none_or(|number| loaded == Some(number))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::flags::{RestoreFrom, range};

    fn chaos(from: RestoreFrom) -> Chaos {
        let flags = ChaosFlags {
            chaos_kill: Some(range(20, 60)),
            chaos_runs: None,
            seed: Some(1),
            chaos_restore: from,
            report: None,
        };
        let mut chaos = Chaos::new(&flags).unwrap();
        // As after the first kill.
        chaos.tally.kills = 1;
        chaos
    }

    #[test]
    fn a_disk_relaunch_replaces_the_region_only_with_the_post_mortem_generation() {
        let mut c = chaos(RestoreFrom::Disk);
        // The post-mortem could not persist: memory, whatever the plan.
        assert_eq!(c.relaunch_from_disk(Left::Ahead), None);
        c.started(1);
        // It persisted 7: only 7 itself may replace the region.
        assert_eq!(c.relaunch_from_disk(Left::Persisted(7)), Some(Some(7)));
        assert!(may_replace(Some(7), Some(7)));
        assert!(!may_replace(Some(7), Some(6)), "an older generation loses units");
        assert!(!may_replace(Some(7), None), "a blank region loses units");
        c.restored_from_disk(false);
        c.started(1);
        assert_eq!(c.relaunch_from_disk(Left::Persisted(8)), Some(Some(8)));
        c.restored_from_disk(true);
        c.started(1);
        // The post-mortem restored from the store already: anything goes.
        assert_eq!(c.relaunch_from_disk(Left::Restored), Some(None));
        assert!(may_replace(None, Some(6)) && may_replace(None, None));
        c.restored_from_disk(true);
        c.started(1);
        let s = &c.tally.sources;
        assert_eq!((s.disk, s.memory, s.disk_refused), (2, 2, 2));
        assert_eq!(c.tally.relaunches_after_failures, 0);
        // A start with no chaos kill before it: after a failure.
        c.started(1);
        assert_eq!(c.tally.relaunches_after_failures, 1);

        let mut m = chaos(RestoreFrom::Memory);
        assert_eq!(m.relaunch_from_disk(Left::Persisted(7)), None);
        m.started(1);
        assert_eq!((m.tally.sources.memory, m.tally.sources.disk_refused), (1, 0));
    }
}

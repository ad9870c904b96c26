//! Chaos mode: SIGKILL the program's group at random moments, relaunch it,
//! and report what survived, so users can test their own program's crash
//! recovery with `kill -9` loops.
//!
//! A seeded schedule fixes, for each kill, the interval after the start of
//! the run it ends, its kind (the moment it aims for), and where the next
//! run's region comes from. The seed fixes the schedule, not the program's
//! timing: two runs with one seed kill at the same offsets, but what the
//! program was doing then differs.
//!
//! Kill kinds, decided when a kill is due:
//!
//! - `timer`: at once.
//! - `after-commit`: the moment the region's commit count moves, by
//!   spinning on it through the read-only observer.
//! - `mid-write`: the moment a commit is seen started but not counted: the
//!   ring word at the cursor, the tag of the next unit's slot, the cursor,
//!   `next_seq` or an arena chunk's write counter moved while the commit
//!   count did not (FORMAT.md, "Committing a unit" and "Chunk write
//!   counters"). A fast commit may complete between the sighting and the
//!   signal; whether the commit count was still unmoved once the group was
//!   dead is counted separately.
//!
//! A worst-moment kill that does not find its moment within [`MOMENT_WAIT`]
//! (or `MAX` if shorter) falls back to a plain kill and is counted as such.
//! While it spins, the lifecycle is asked every [`PEEK_EVERY`] whether it
//! has something to do first (a stop signal, a hang): if so the spin ends
//! without a kill, and the lifecycle acts as it would without chaos mode.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use serde::Serialize;
use shm_snapshot::Observer;
use shm_snapshot::layout::slot;
use shm_snapshot::snapshot::observe_file;
use tracing::{error, info, warn};

use crate::group::Ended;
use crate::lag::LagHistogram;
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

/// Failures listed one by one in the report; past it they are only counted.
const MAX_LISTED_FAILURES: usize = 100;

/// Spin iterations between clock reads and checks that the program lives
/// (a clock read costs tens of nanoseconds, an iteration a few).
const SPIN_CHECK_EVERY: u64 = 64;

/// The longest a worst-moment kill spins for its moment. Spinning keeps a
/// core busy, and a program that commits less often than this is served
/// by the plain kill the spin falls back to.
const MOMENT_WAIT: Duration = Duration::from_secs(1);

/// How often a spinning kill asks the lifecycle whether it must act first:
/// stop signals and hangs wait at most this long for it.
const PEEK_EVERY: Duration = Duration::from_millis(1);

/// Spin iterations between reads of every arena chunk counter (a thousand
/// loads for a 64 MiB region; the ring word and the tag are read every time).
const COUNTERS_EVERY: u64 = 16;

/// Chaos-mode flags.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Chaos mode")]
pub struct ChaosFlags {
    /// SIGKILL the program's group at uniformly random times MIN..MAX after each start (e.g. 20ms..500ms), and relaunch it. [default: off]
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_kill_range)]
    pub chaos_kill: Option<KillRange>,

    /// Stop after N chaos kills: relaunch once more, wait for that run's first commit, stop it and report. [default: until stopped]
    #[arg(long, value_name = "N", requires = "chaos_kill", value_parser = clap::value_parser!(u64).range(1..))]
    pub chaos_runs: Option<u64>,

    /// Seed of the chaos schedule (intervals, kill kinds, restore sources). [default: random, logged]
    #[arg(long, value_name = "N", requires = "chaos_kill")]
    pub seed: Option<u64>,

    /// Where a run after a chaos kill gets its region: as left in memory, rebuilt from the newest generation on disk, or a seeded half-and-half mix.
    #[arg(long, value_enum, value_name = "FROM", default_value_t = RestoreFrom::Mixed, requires = "chaos_kill")]
    pub chaos_restore: RestoreFrom,

    /// Also write the chaos report as JSON to FILE (replaced atomically).
    #[arg(long, value_name = "FILE", requires = "chaos_kill")]
    pub report: Option<PathBuf>,
}

/// The range chaos kills are drawn from, after each start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillRange {
    /// Shortest time from a start to its kill.
    pub min: Duration,
    /// Longest time from a start to its kill; also how long a worst-moment
    /// kill waits for its moment, up to [`MOMENT_WAIT`].
    pub max: Duration,
}

fn parse_kill_range(s: &str) -> Result<KillRange, String> {
    let (min, max) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}` is not MIN..MAX (e.g. 20ms..500ms)"))?;
    let parse = |what: &str, d: &str| {
        humantime::parse_duration(d.trim())
            .map_err(|e| format!("{what} `{d}`: {e} (expected e.g. 20ms..500ms)"))
    };
    let (min, max) = (parse("MIN", min)?, parse("MAX", max)?);
    if min > max {
        return Err(format!(
            "MIN {} is longer than MAX {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    if max.is_zero() {
        return Err("MAX must be longer than 0".into());
    }
    Ok(KillRange { min, max })
}

/// Where a run after a chaos kill gets its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreFrom {
    /// About half the runs, drawn by the seed, from disk; the rest from memory.
    Mixed,
    /// Every run from the newest generation on disk.
    Disk,
    /// Every run from the region as the killed run left it.
    Memory,
}

/// The moment a kill aims for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillKind {
    /// When the interval is up.
    Timer,
    /// The moment the commit count moves, once the interval is up.
    AfterCommit,
    /// The moment a commit is seen started and not yet counted.
    MidWrite,
}

/// Where the region of the run after a kill is planned to come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The region as the killed run left it (after its post-mortem generation).
    Memory,
    /// The newest generation in the store, written over the whole region.
    Disk,
}

/// Where a relaunch after a chaos kill got its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relaunched {
    Memory,
    Disk,
    /// Planned from disk, kept in memory.
    Refused,
}

/// One planned kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// Microseconds from the start of the run to when the kill is due.
    pub after_us: u64,
    /// The moment it aims for.
    pub kind: KillKind,
    /// Where the next run's region comes from.
    pub restore: Source,
}

/// The plan, drawn from the seed one kill at a time, in order: kill `i` is
/// the same for a seed whatever happened before it.
struct Schedule {
    rng: ChaCha8Rng,
    range: KillRange,
    from: RestoreFrom,
    planned: Vec<Planned>,
}

impl Schedule {
    fn new(seed: u64, range: KillRange, from: RestoreFrom) -> Schedule {
        Schedule {
            // ChaCha8's stream is portable and fixed across versions; every
            // draw below is made from its raw words by hand (not by rand's
            // range sampling, whose algorithm may change between versions),
            // so a seed repeats a schedule across versions, builds and
            // machines.
            rng: ChaCha8Rng::seed_from_u64(seed),
            range,
            from,
            planned: Vec::new(),
        }
    }

    fn get(&mut self, index: usize) -> Planned {
        while self.planned.len() <= index {
            let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            let (min, max) = (us(self.range.min), us(self.range.max));
            // The modulo's bias is below span / 2^64: nothing at the spans
            // of a kill range in microseconds.
            let span = (max - min).saturating_add(1);
            let after_us = min + self.rng.next_u64() % span;
            let kind = match self.rng.next_u64() % 3 {
                0 => KillKind::Timer,
                1 => KillKind::AfterCommit,
                _ => KillKind::MidWrite,
            };
            // Drawn in every mode, so the intervals and kinds of a seed do
            // not depend on --chaos-restore.
            let coin = self.rng.next_u64() & 1 == 1;
            let restore = match self.from {
                RestoreFrom::Disk => Source::Disk,
                RestoreFrom::Memory => Source::Memory,
                RestoreFrom::Mixed if coin => Source::Disk,
                RestoreFrom::Mixed => Source::Memory,
            };
            self.planned.push(Planned {
                after_us,
                kind,
                restore,
            });
        }
        self.planned[index]
    }
}

/// What became of a worst-moment kill's wait.
enum Moment {
    /// Found: what the region showed before the moment.
    Caught(Option<Sighting>),
    /// Not found within the bound: kill anyway.
    FellBack,
    /// The program ended by itself first: no kill.
    Gone,
    /// The lifecycle has something to do first: no kill for now.
    Interrupted,
}

/// The current run of the program, as chaos sees it.
struct Run {
    pid: libc::pid_t,
    /// The kill planned for this run (`None`: the last run, watched for health).
    kill: Option<(Instant, Planned)>,
    /// When the last run must have proven healthy by.
    health_by: Instant,
    /// The region's commit count before the run started.
    baseline: Option<u64>,
    /// The kill sent to this run, if any.
    struck: Option<Strike>,
    /// The read-only observer of the region, made once the run has laid it out.
    observer: Option<Observer>,
    /// The hang watch took this run for hung (heartbeat still for so long):
    /// no chaos kill for it, and its death is a failure.
    hung: Option<Duration>,
}

struct Strike {
    kind: KillKind,
    caught: bool,
    /// For a caught mid-write kill: the region before the write was seen.
    sighting: Option<Sighting>,
    at: Instant,
}

/// What the lifecycle does after a tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing.
    Nothing,
    /// The last run proved healthy (or ran out of time to): stop it like a SIGTERM.
    Stop,
}

#[derive(Debug, Default, Serialize)]
struct Caught {
    caught: u64,
    fell_back: u64,
}

#[derive(Debug, Default, Serialize)]
struct MidWrite {
    caught: u64,
    /// Caught kills after which the commit count had still not moved.
    landed_mid_commit: u64,
    fell_back: u64,
}

#[derive(Debug, Default, Serialize)]
struct Kinds {
    timer: u64,
    after_commit: Caught,
    mid_write: MidWrite,
}

/// Where the region of each relaunch after a chaos kill came from:
/// `memory + disk` is the number of such relaunches (one per kill, but for
/// a kill after which the supervisor was stopped).
#[derive(Debug, Default, Serialize)]
struct Sources {
    memory: u64,
    disk: u64,
    /// Planned from disk but kept in memory (and counted there): the
    /// post-mortem generation could not be persisted, or did not load back
    /// as the newest, so the region held units the disk lacked.
    disk_refused: u64,
}

#[derive(Debug, Serialize)]
struct FailedRun {
    /// Which start of the program (1 = the first).
    run: u64,
    status: String,
}

#[derive(Debug, Default, Serialize)]
struct Failures {
    total: u64,
    inconsistent: u64,
    other: u64,
    runs: Vec<FailedRun>,
}

#[derive(Debug, Serialize)]
struct Millis {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct LastRun {
    /// It committed after its start (or, false, the wait for it ran out).
    committed: bool,
}

/// The report, logged at the end and written as JSON by `--report`.
#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    repeat: String,
    /// Every planned kill was made and the run after the last one was stopped.
    completed: bool,
    duration_ms: u64,
    kills: u64,
    kinds: Kinds,
    /// Every start after the first: after a chaos kill (`restore_from`
    /// says from where) or after a failure (`relaunches_after_failures`).
    relaunches: u64,
    relaunches_after_failures: u64,
    restore_from: Sources,
    generations_persisted: u64,
    /// From a kill to the next run's start: post-mortem generation, restore, spawn.
    restore_ms: Option<Millis>,
    failures: Failures,
    last_run: Option<LastRun>,
    exit_status: u8,
    schedule: Vec<Planned>,
}

/// Chaos mode's state: the schedule, the killer, the counts for the report.
pub struct Chaos {
    seed: u64,
    range: KillRange,
    runs_wanted: Option<u64>,
    report_to: Option<PathBuf>,
    schedule: Schedule,
    started: Instant,
    run: Option<Run>,
    /// Baseline commit count read before the next spawn.
    next_baseline: Option<u64>,
    /// When the last chaos kill was sent, until the next run starts.
    killed_at: Option<Instant>,
    /// Where the next run's region comes from, after a chaos kill; counted
    /// when that run starts.
    next_source: Option<Relaunched>,
    relaunches_after_failures: u64,
    starts: u64,
    kills: u64,
    kinds: Kinds,
    sources: Sources,
    restore_times: LagHistogram,
    failures: Failures,
    last_run: Option<LastRun>,
    completed: bool,
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
            started: Instant::now(),
            run: None,
            next_baseline: None,
            killed_at: None,
            next_source: None,
            relaunches_after_failures: 0,
            starts: 0,
            kills: 0,
            kinds: Kinds::default(),
            sources: Sources::default(),
            restore_times: LagHistogram::default(),
            failures: Failures::default(),
            last_run: None,
            completed: false,
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
        self.starts += 1;
        if let Some(killed) = self.killed_at.take() {
            self.restore_times.record(now - killed, 1);
        }
        match self.next_source.take() {
            Some(Relaunched::Memory) => self.sources.memory += 1,
            Some(Relaunched::Disk) => self.sources.disk += 1,
            Some(Relaunched::Refused) => {
                self.sources.memory += 1;
                self.sources.disk_refused += 1;
            }
            None if self.starts > 1 => self.relaunches_after_failures += 1,
            None => {}
        }
        let kill = if self.runs_wanted.is_some_and(|n| self.kills >= n) {
            info!("chaos: every planned kill is done; waiting for this run's first commit");
            None
        } else {
            let plan = self.schedule.get(self.kills as usize);
            Some((now + Duration::from_micros(plan.after_us), plan))
        };
        self.run = Some(Run {
            pid,
            kill,
            health_by: now + self.range.max.max(HEALTH_WAIT),
            baseline: self.next_baseline.take(),
            struck: None,
            observer: None,
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
    /// a kill waits, `interrupt` is called every [`PEEK_EVERY`]; when it
    /// returns true the wait ends without a kill (which stays due).
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
                strike(run, plan.kind, region, until, interrupt);
                if let Some(strike) = &run.struck {
                    self.killed_at = Some(strike.at);
                }
                Tick::Nothing
            }
            Some(_) => Tick::Nothing,
            None => {
                // A blank region (no baseline) counts from 0: laying it out
                // is no commit.
                let count = observer(run, region).map(Observer::commit_count);
                let committed = count.is_some_and(|c| c > run.baseline.unwrap_or(0));
                if committed || now >= run.health_by {
                    if committed {
                        info!("chaos: the last run committed; stopping it");
                    } else {
                        let waited = humantime::format_duration(self.range.max.max(HEALTH_WAIT));
                        error!(%waited, "chaos: the last run made no commit in time; stopping it");
                        self.failed(format!("made no commit within {waited} of its start"), false);
                    }
                    self.last_run = Some(LastRun { committed });
                    self.completed = true;
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
            self.kills += 1;
            match (strike.kind, strike.caught) {
                (KillKind::Timer, _) => self.kinds.timer += 1,
                (KillKind::AfterCommit, true) => self.kinds.after_commit.caught += 1,
                (KillKind::AfterCommit, false) => self.kinds.after_commit.fell_back += 1,
                (KillKind::MidWrite, true) => {
                    self.kinds.mid_write.caught += 1;
                    let dead = observe_file(region).ok().flatten();
                    if let (Some(o), Some(before)) = (dead, &strike.sighting)
                        && before.landed_in(&o)
                    {
                        self.kinds.mid_write.landed_mid_commit += 1;
                    }
                }
                (KillKind::MidWrite, false) => self.kinds.mid_write.fell_back += 1,
            }
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
        error!(run = self.starts, %status, "chaos: the program failed by itself");
        self.failed(status, ended == Ended::Exited(STATUS_INCONSISTENT));
        false
    }

    /// Counts a failure of the current run.
    fn failed(&mut self, status: String, inconsistent: bool) {
        self.failures.total += 1;
        if inconsistent {
            self.failures.inconsistent += 1;
        } else {
            self.failures.other += 1;
        }
        if self.failures.runs.len() < MAX_LISTED_FAILURES {
            self.failures.runs.push(FailedRun {
                run: self.starts,
                status,
            });
        }
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
        let plan = self.schedule.get(self.kills.saturating_sub(1) as usize);
        match (plan.restore, left) {
            (Source::Memory, _) => {
                self.next_source = Some(Relaunched::Memory);
                None
            }
            (Source::Disk, Left::Ahead) => {
                self.refused();
                None
            }
            (Source::Disk, Left::Persisted(number)) => Some(Some(number)),
            (Source::Disk, Left::Restored) => Some(None),
        }
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
            Ok(_) if self.failures.total > 0 => EXIT_CHILD_FAILED,
            Ok(_) => 0,
        };
        if let Some(n) = self.runs_wanted {
            // The whole plan, even when stopped early.
            self.schedule.get(n.saturating_sub(1) as usize);
        }
        let report = self.report(generations, status);
        log_report(&report, self.report_to.as_deref());
        if let Some(path) = &self.report_to {
            write_atomically(path, &report)
                .with_context(|| format!("writing the report to {}", path.display()))?;
        }
        code?;
        Ok(ExitCode::from(status))
    }

    fn report(&mut self, generations: u64, exit_status: u8) -> Report {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let restore_ms = (!self.restore_times.is_empty()).then(|| Millis {
            p50: ms(self.restore_times.quantile(0.50)),
            p99: ms(self.restore_times.quantile(0.99)),
            max: ms(self.restore_times.max()),
        });
        let planned = self.runs_wanted.map_or(self.kills as usize, |n| n as usize);
        Report {
            seed: self.seed,
            repeat: format!("--seed {}", self.seed),
            completed: self.completed,
            duration_ms: self.started.elapsed().as_millis() as u64,
            kills: self.kills,
            kinds: std::mem::take(&mut self.kinds),
            relaunches: self.starts.saturating_sub(1),
            relaunches_after_failures: self.relaunches_after_failures,
            restore_from: std::mem::take(&mut self.sources),
            generations_persisted: generations,
            restore_ms,
            failures: std::mem::take(&mut self.failures),
            last_run: self.last_run.take(),
            exit_status,
            schedule: self.schedule.planned.iter().take(planned).copied().collect(),
        }
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

/// The region's observer for `run`, made once the run has laid it out.
fn observer<'a>(run: &'a mut Run, region: &File) -> Option<&'a Observer> {
    if run.observer.is_none() {
        run.observer = observe_file(region).ok().flatten();
    }
    run.observer.as_ref()
}

/// Whether the program's process has ended (it stays unreaped: the
/// lifecycle reaps it and learns how).
fn has_ended(pid: libc::pid_t) -> bool {
    let Some(pid) = Pid::from_raw(pid) else {
        return true;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    !matches!(rustix::process::waitid(WaitId::Pid(pid), options), Ok(None))
}

/// Kills `run` at the moment `kind` aims for, waiting until `until` at most
/// unless `interrupt` says the lifecycle must act first.
fn strike(run: &mut Run, kind: KillKind, region: &File, until: Instant, interrupt: &mut dyn FnMut() -> bool) {
    let moment = match kind {
        KillKind::Timer => Moment::FellBack,
        KillKind::AfterCommit | KillKind::MidWrite => watch(run, kind, region, until, interrupt),
    };
    let (caught, sighting) = match moment {
        Moment::Gone | Moment::Interrupted => return,
        Moment::Caught(sighting) => (true, sighting),
        Moment::FellBack => (false, None),
    };
    if kind != KillKind::Timer && !caught {
        info!(kind = ?kind, "chaos: no such moment in time; a plain kill instead");
    }
    if let Some(pgid) = Pid::from_raw(run.pid) {
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    }
    run.struck = Some(Strike {
        kind,
        caught,
        sighting,
        at: Instant::now(),
    });
}

/// The region words that move when a commit starts (FORMAT.md, "Committing
/// a unit"): the ring word at the cursor (step 3), the tag of the next
/// unit's slot (step 2 when the slot is reused, step 4), the cursor and
/// `next_seq` (step 4, before the count). All untrusted hints, read through
/// the observer's bounds-checked copy.
#[derive(Debug, PartialEq, Eq)]
struct Marks {
    cursor: u64,
    next_seq: u64,
    ring_word: u64,
    tag: u64,
}

/// The region as a mid-write kill saw it before the write it aimed at.
struct Sighting {
    count: u64,
    marks: Marks,
    counters: Vec<u64>,
}

impl Sighting {
    /// Whether the dead program's region still shows the write begun and
    /// not counted: the kill landed inside the commit.
    fn landed_in(&self, o: &Observer) -> bool {
        let mut counters = Vec::new();
        o.chunk_counters(&mut counters);
        o.commit_count() == self.count && (marks(o) != self.marks || counters != self.counters)
    }
}

fn marks(o: &Observer) -> Marks {
    let g = o.geometry();
    let word = |at: u64| {
        let mut bytes = [0u8; 8];
        // In bounds by construction (ring_at masks, slot_of masks); a
        // failure would read as 0, which only weakens the hint.
        let _ = o.copy_range(at, &mut bytes);
        u64::from_le_bytes(bytes)
    };
    let (cursor, next_seq) = (o.cursor(), o.next_seq());
    Marks {
        cursor,
        next_seq,
        ring_word: word(g.ring_at(cursor)),
        tag: word(g.slot_field(g.slot_of(next_seq), slot::TAG)),
    }
}

/// Spins until the moment `kind` aims for, the bound, the program's end, or
/// `interrupt` returning true.
fn watch(
    run: &mut Run,
    kind: KillKind,
    region: &File,
    until: Instant,
    interrupt: &mut dyn FnMut() -> bool,
) -> Moment {
    let pid = run.pid;
    let mut spins = 0u64;
    let mut base: Option<(u64, Marks, Vec<u64>)> = None;
    let mut counters = Vec::new();
    let mut peek_at = Instant::now();
    loop {
        if spins.is_multiple_of(SPIN_CHECK_EVERY) {
            if has_ended(pid) {
                return Moment::Gone;
            }
            let now = Instant::now();
            if now >= peek_at {
                if interrupt() {
                    return Moment::Interrupted;
                }
                peek_at = now + PEEK_EVERY;
            }
            if now >= until {
                return Moment::FellBack;
            }
        }
        spins += 1;
        let Some(o) = observer(run, region) else {
            // Not laid out yet: nothing to watch until it is.
            std::thread::sleep(Duration::from_micros(100));
            continue;
        };
        let count = o.commit_count();
        let Some((base_count, base_marks, base_counters)) = &mut base else {
            let m = marks(o);
            o.chunk_counters(&mut counters);
            base = Some((count, m, counters.clone()));
            continue;
        };
        if count != *base_count {
            if kind == KillKind::AfterCommit {
                return Moment::Caught(None);
            }
            // A commit completed: watch for the next one to start.
            *base_count = count;
            *base_marks = marks(o);
            o.chunk_counters(base_counters);
            continue;
        }
        if kind != KillKind::MidWrite {
            std::hint::spin_loop();
            continue;
        }
        let now = marks(o);
        let mut moved = now != *base_marks;
        if !moved && spins.is_multiple_of(COUNTERS_EVERY) {
            o.chunk_counters(&mut counters);
            moved = counters != *base_counters;
        }
        // Only a write the count has not caught up with is mid-commit.
        if moved && o.commit_count() == count {
            return Moment::Caught(Some(Sighting {
                count,
                marks: std::mem::replace(base_marks, now),
                counters: std::mem::take(base_counters),
            }));
        }
        std::hint::spin_loop();
    }
}

fn log_report(r: &Report, path: Option<&Path>) {
    let k = &r.kinds;
    info!(
        "chaos report: {} kills (timer {}, after-commit {} + {} fell back, mid-write {} + {} fell back, {} landed before the count moved), {} relaunches ({} after kills: {} from disk, {} from memory{}; {} after failures){}",
        r.kills,
        k.timer,
        k.after_commit.caught,
        k.after_commit.fell_back,
        k.mid_write.caught,
        k.mid_write.fell_back,
        k.mid_write.landed_mid_commit,
        r.relaunches,
        r.restore_from.disk + r.restore_from.memory,
        r.restore_from.disk,
        r.restore_from.memory,
        if r.restore_from.disk_refused > 0 {
            format!(
                ", {} of them kept in memory as the disk lacked units",
                r.restore_from.disk_refused
            )
        } else {
            String::new()
        },
        r.relaunches_after_failures,
        match r
            .kills
            .saturating_sub(r.restore_from.disk + r.restore_from.memory)
        {
            0 => String::new(),
            n => format!("; stopped after {n} kill(s) without relaunching"),
        }
    );
    let restore = r.restore_ms.as_ref().map_or("n/a".to_owned(), |m| {
        format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", m.p50, m.p99, m.max)
    });
    info!(
        "chaos report: restore {restore}; {} generations persisted in {:.1} s",
        r.generations_persisted,
        r.duration_ms as f64 / 1000.0
    );
    let failures = format!(
        "{} failed runs ({} inconsistent, {} other)",
        r.failures.total, r.failures.inconsistent, r.failures.other
    );
    if r.failures.total > 0 {
        error!("chaos report: {failures}: {:?}", r.failures.runs);
    } else {
        info!("chaos report: {failures}");
    }
    info!(
        "chaos report: seed {} (repeat with {}){}{}",
        r.seed,
        r.repeat,
        if r.completed {
            ""
        } else {
            "; stopped before the last planned kill"
        },
        path.map_or(String::new(), |p| format!("; JSON in {}", p.display()))
    );
}

/// Writes `report` to a temporary file beside `path`, syncs it, and renames
/// it over `path`: a reader sees the old report or the whole new one.
fn write_atomically(path: &Path, report: &Report) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or("report".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> Result<()> {
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut file, report)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u64, max: u64) -> KillRange {
        KillRange {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        }
    }

    #[test]
    fn kill_ranges_take_human_durations_and_refuse_bad_forms() {
        assert_eq!(parse_kill_range("20ms..500ms"), Ok(range(20, 500)));
        assert_eq!(parse_kill_range("1s..1s"), Ok(range(1000, 1000)));
        assert!(parse_kill_range("500ms").unwrap_err().contains("MIN..MAX"));
        assert!(
            parse_kill_range("500ms..20ms")
                .unwrap_err()
                .contains("longer than MAX")
        );
        assert!(
            parse_kill_range("soon..later")
                .unwrap_err()
                .contains("MIN `soon`")
        );
        assert!(parse_kill_range("0..0").is_err());
    }

    #[test]
    fn a_seed_fixes_the_schedule_and_draws_stay_in_range() {
        let plan = |seed, from| {
            let mut s = Schedule::new(seed, range(20, 500), from);
            (0..200).map(|i| s.get(i)).collect::<Vec<_>>()
        };
        let a = plan(7, RestoreFrom::Mixed);
        assert_eq!(a, plan(7, RestoreFrom::Mixed));
        assert_ne!(a, plan(8, RestoreFrom::Mixed));
        assert!(a.iter().all(|p| (20_000..=500_000).contains(&p.after_us)));
        for kind in [KillKind::Timer, KillKind::AfterCommit, KillKind::MidWrite] {
            assert!(
                a.iter().filter(|p| p.kind == kind).count() > 30,
                "{kind:?} drawn too rarely"
            );
        }
        let disk = a.iter().filter(|p| p.restore == Source::Disk).count();
        assert!((60..=140).contains(&disk), "about half from disk, got {disk}");
        let all_disk = plan(7, RestoreFrom::Disk);
        assert!(all_disk.iter().all(|p| p.restore == Source::Disk));
        let same_times = |b: &[Planned]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x.after_us, x.kind) == (y.after_us, y.kind))
        };
        assert!(same_times(&all_disk), "the restore mode does not move the kills");
    }

    #[test]
    fn a_seed_draws_the_same_schedule_in_every_version() {
        // Pinned: these follow from ChaCha8's fixed stream and the draws
        // made from it by hand, and must never change.
        let mut s = Schedule::new(42, range(20, 500), RestoreFrom::Mixed);
        let got: Vec<_> = (0..3).map(|i| s.get(i)).collect();
        let plan = |after_us, kind| Planned {
            after_us,
            kind,
            restore: Source::Memory,
        };
        assert_eq!(
            got,
            [
                plan(68_626, KillKind::AfterCommit),
                plan(409_425, KillKind::MidWrite),
                plan(482_563, KillKind::Timer),
            ]
        );
    }

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
        chaos.kills = 1;
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
        let s = &c.sources;
        assert_eq!((s.disk, s.memory, s.disk_refused), (2, 2, 2));
        assert_eq!(c.relaunches_after_failures, 0);
        // A start with no chaos kill before it: after a failure.
        c.started(1);
        assert_eq!(c.relaunches_after_failures, 1);

        let mut m = chaos(RestoreFrom::Memory);
        assert_eq!(m.relaunch_from_disk(Left::Persisted(7)), None);
        m.started(1);
        assert_eq!((m.sources.memory, m.sources.disk_refused), (1, 0));
    }
}

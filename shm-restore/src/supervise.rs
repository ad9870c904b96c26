//! The supervisor's lifecycle: restore, start the program, and at every
//! death kill its group, take a post-mortem generation of the quiet region,
//! and start it again per policy.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, WaitOptions};
use std::sync::{Arc, Mutex};

use shm_snapshot::snapshot::{self, Outcome, Snapshotter};
use shm_snapshot::store::{Store, StoreError, StoreOptions};
use tracing::{error, info, warn};

use crate::chaos::{self, Chaos, Tick};
use crate::child::Launcher;
use crate::cli::{Args, Fsync, Restart};
use crate::hang::HangWatch;
use crate::leftovers;
use crate::region::{HostRegion, human};
use crate::snapshotter::{self, Shared, SnapshotThread};
use crate::status;
use crate::systemd::{self, Systemd};

/// What a post-mortem left in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Exactly this generation, just persisted.
    Persisted(u64),
    /// What restoring the newest generation gave (or a blank region).
    Restored,
    /// The region as the program left it, ahead of the store: persisting
    /// its units failed.
    Ahead,
}

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

fn signal_name(signal: i32) -> String {
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

/// Signals the supervisor acts on, delivered by a thread as events.
fn signal_events() -> Result<Receiver<i32>> {
    use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
        .context("installing signal handlers")?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(rx)
}

/// Runs the supervisor until the program is done, the restart limit is
/// reached, or a signal stops it. Returns the exit status to end with.
pub fn run(args: Args) -> Result<ExitCode> {
    // SAFETY: the supervisor's first step: no thread has been started yet.
    let mut systemd = unsafe { Systemd::from_env() };
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("becoming the reaper of the program's orphans")?;
    let options = StoreOptions {
        keep: args.keep as usize,
        fsync: args.fsync == Fsync::Always,
        // Bases come from the chain's weight (the store writes one when the
        // deltas since the last outweigh the region), not from a count: at
        // hundreds of generations a second a count would mean a full copy
        // every few milliseconds.
        full_every: u32::MAX,
    };
    let store = Store::open(&args.snapshot, options)?;
    // Holding the store's lock, no other supervisor can be using the group.
    let _ = leftovers::kill_recorded(store.dir());
    let mut launcher = Launcher::new(&args.command)?;
    let mut shared = Shared {
        store,
        snapshotter: Snapshotter::new(args.arena_scan.into()),
        stats: Default::default(),
    };
    let (region, replacing) = match systemd.take_inherited() {
        Some(file) => {
            let (region, taken) =
                systemd::take_back(&mut shared, file, args.size, args.start_empty_if_damaged)?;
            (region, !taken)
        }
        None => {
            let region = HostRegion::create(args.size)?;
            restore_at_start(&mut shared, &region, args.start_empty_if_damaged)?;
            (region, false)
        }
    };
    systemd.store_region(region.file(), replacing);
    let events = signal_events()?;
    let file = region
        .file()
        .try_clone()
        .context("duplicating the region descriptor")?;
    let snapshots = SnapshotThread::start(
        file,
        Arc::new(Mutex::new(shared)),
        args.interval,
        !args.no_continuous,
    )
    .context("starting the snapshot thread")?;
    // Dropped at the end of this function, whatever way it ends: removes
    // the status file.
    let status = status::Publisher::start(&args.snapshot, snapshots.shared())
        .context("starting the status publisher")?;
    systemd.start(snapshots.shared(), status.board())?;

    let mut supervisor = Supervisor {
        status: status.board(),
        args: &args,
        snapshots,
        region,
        events,
        held: VecDeque::new(),
        stop: None,
        launches: Vec::new(),
        chaos: Chaos::new(&args.chaos),
        systemd,
    };
    let code = supervisor.lifecycle(&mut launcher);
    supervisor.systemd.stopping();
    supervisor.snapshots.shutdown();
    let generations = {
        let shared = supervisor.snapshots.shared();
        let shared = snapshotter::lock(&shared);
        shared.stats.log_summary();
        shared.stats.generations
    };
    match supervisor.chaos.take() {
        Some(chaos) => chaos.finish(code, generations),
        None => code,
    }
}

impl Supervisor<'_> {
    /// Starts the program and relaunches it per the policy until it is done.
    fn lifecycle(&mut self, launcher: &mut Launcher) -> Result<ExitCode> {
        let args = self.args;
        let mut quick_deaths = 0u32;
        loop {
            let started = Instant::now();
            self.launches.push(started);
            let ended = self.run_child(launcher)?;
            let stopping = self.stop.is_some();
            let chaos_kill =
                (self.chaos.as_mut()).is_some_and(|c| c.ended(ended, stopping, self.region.file()));
            let left = self.post_mortem()?;
            if chaos_kill && !stopping {
                // Intentional: no restart limit, no backoff.
                self.launches.pop();
                self.chaos_relaunch(left)?;
                // A stop signal that came during the post-mortem or the
                // restore ends it here, not after another start.
                if self.stop_pending() {
                    return Ok(ExitCode::from(ended.code()));
                }
                continue;
            }
            if self.stop.is_some() {
                return Ok(ExitCode::from(ended.code()));
            }
            let success = ended == Ended::Exited(0);
            match args.restart {
                Restart::Never => return Ok(ExitCode::from(ended.code())),
                Restart::OnFailure if success => return Ok(ExitCode::SUCCESS),
                _ => {}
            }
            let window = args.restart_window;
            self.launches.retain(|t| t.elapsed() < window);
            if self.launches.len() > args.restart_limit as usize {
                error!(
                    relaunches = args.restart_limit,
                    window = %humantime::format_duration(window),
                    last = %ended,
                    "restart limit reached: the program died {} times within {}; giving up",
                    self.launches.len(),
                    humantime::format_duration(window)
                );
                return Ok(ExitCode::from(if success { 1 } else { ended.code().max(1) }));
            }
            quick_deaths = if started.elapsed() > args.backoff_max {
                0
            } else {
                quick_deaths + 1
            };
            let delay = args
                .backoff
                .saturating_mul(1 << quick_deaths.saturating_sub(1).min(16))
                .min(args.backoff_max);
            info!(after_ms = delay.as_millis() as u64, "relaunching");
            if !self.sleep(delay) {
                return Ok(ExitCode::from(ended.code()));
            }
        }
    }
}

struct Supervisor<'a> {
    args: &'a Args,
    /// What `shm-restore watch` is told.
    status: Arc<status::Board>,
    snapshots: SnapshotThread,
    region: HostRegion,
    events: Receiver<i32>,
    /// Events taken from `events` early (while a chaos kill waited for its
    /// moment), handed out before anything new.
    held: VecDeque<i32>,
    /// The stop signal received, if any: no relaunch after it.
    stop: Option<i32>,
    /// When each recent launch happened, for the restart limit.
    launches: Vec<Instant>,
    /// Chaos mode, with `--chaos-kill`.
    chaos: Option<Chaos>,
    /// Notifications to systemd, if it runs the supervisor.
    systemd: Systemd,
}

impl Supervisor<'_> {
    /// Starts the program and waits for it to end, forwarding stop signals
    /// to its group and killing it after the grace period.
    fn run_child(&mut self, launcher: &mut Launcher) -> Result<Ended> {
        if let Some(chaos) = &mut self.chaos {
            chaos.launching(self.region.file());
        }
        let pid = launcher.spawn(self.region.file().as_fd())?;
        if let Some(chaos) = &mut self.chaos {
            chaos.started(pid);
        }
        leftovers::record(&self.args.snapshot, pid);
        self.status.child_started(pid);
        info!(pid, program = launcher.display(), "child started");
        self.snapshots.resume();
        self.systemd.child_started();
        let mut hang = match self.args.hang_timeout {
            Some(timeout) => {
                Some(HangWatch::start(self.region.file(), timeout).context("watching for hangs")?)
            }
            None => None,
        };
        let mut kill_at: Option<Instant> = None;
        // What the hang watch found, if it found it while a chaos kill
        // waited for its moment.
        let mut hung: Option<Duration> = None;
        loop {
            self.systemd.round();
            if let Some(ended) = reap(pid)? {
                info!(pid, status = %ended, "child ended");
                kill_group(pid);
                leftovers::clear(&self.args.snapshot);
                self.status.child_ended();
                return Ok(ended);
            }
            if hung.is_none() {
                hung = hang.as_mut().and_then(HangWatch::check);
            }
            if let Some(stalled) = hung.take() {
                if let Some(chaos) = &mut self.chaos {
                    chaos.hung(stalled);
                }
                warn!(
                    pid,
                    "child hung: heartbeat unchanged for {}; killing it",
                    humantime::format_duration(round_ms(stalled))
                );
                signal_group(pid, libc::SIGKILL);
                hang = None;
            }
            let chaos_at = self
                .chaos
                .as_ref()
                .filter(|_| self.stop.is_none())
                .and_then(Chaos::next_wake);
            let wake = [
                kill_at,
                chaos_at,
                hang.as_ref().map(HangWatch::next_check),
                self.systemd.round_interval().map(|d| Instant::now() + d),
            ]
            .into_iter()
            .flatten()
            .min();
            let event = self.next_event(wake.map(|at| at.saturating_duration_since(Instant::now())));
            match event {
                Ok(libc::SIGCHLD) => {}
                Ok(signal) => {
                    if self.stop.is_none() {
                        self.stop = Some(signal);
                        self.status.stopping();
                        self.systemd.stopping();
                        hang = None;
                        info!(
                            signal = %signal_name(signal),
                            grace = %humantime::format_duration(self.args.grace),
                            "stopping: signal forwarded to the child's group"
                        );
                        signal_group(pid, signal);
                        kill_at = Some(Instant::now() + self.args.grace);
                    } else {
                        warn!(signal = %signal_name(signal), "second stop signal: killing the child's group now");
                        signal_group(pid, libc::SIGKILL);
                    }
                }
                Err(RecvTimeoutError::Timeout) if kill_at.is_none_or(|at| Instant::now() < at) => {
                    // While a kill waits for its moment, the lifecycle's own
                    // work goes on: the watchdog is fed, and a stop signal or
                    // a hang ends the wait (the signal is kept for the loop).
                    let (events, held, systemd) = (&self.events, &mut self.held, &self.systemd);
                    let mut interrupt = || {
                        systemd.round();
                        while let Ok(event) = events.try_recv() {
                            held.push_back(event);
                        }
                        if hung.is_none() {
                            hung = hang.as_mut().and_then(HangWatch::check);
                        }
                        hung.is_some() || held.iter().any(|&e| e != libc::SIGCHLD)
                    };
                    if self.stop.is_none()
                        && let Some(chaos) = &mut self.chaos
                        && chaos.tick(self.region.file(), &mut interrupt) == Tick::Stop
                    {
                        self.stop = Some(libc::SIGTERM);
                        signal_group(pid, libc::SIGTERM);
                        kill_at = Some(Instant::now() + self.args.grace);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    warn!(grace = %humantime::format_duration(self.args.grace), "child did not exit within the grace period: SIGKILL");
                    signal_group(pid, libc::SIGKILL);
                    kill_at = None;
                }
                Err(RecvTimeoutError::Disconnected) => bail!("the signal thread stopped"),
            }
        }
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
        let replaced = match require {
            None => {
                restore_after_death(&mut shared, &self.region, self.args.start_empty_if_damaged)?;
                true
            }
            Some(_) => match restore_newest_if(&mut shared, &self.region, false, |loaded| {
                chaos::may_replace(require, loaded)
            }) {
                Ok(replaced) => replaced,
                Err(e) if matches!(e.downcast_ref(), Some(StoreError::NoVerifiedGeneration { .. })) => false,
                Err(e) => return Err(e),
            },
        };
        chaos.restored_from_disk(replaced);
        Ok(())
    }

    /// Whether a stop signal is waiting (reaping orphans on the way, as
    /// [`Supervisor::sleep`] does); if so it is taken as the stop.
    fn stop_pending(&mut self) -> bool {
        while let Ok(event) = self.next_event(Some(Duration::ZERO)) {
            if event == libc::SIGCHLD {
                let _ = reap(0);
                continue;
            }
            info!(signal = %signal_name(event), "stopping before the relaunch");
            self.stop = Some(event);
            self.status.stopping();
            return true;
        }
        false
    }

    /// The next signal: one held back first, else one within `timeout`
    /// (`None`: no limit).
    fn next_event(&mut self, timeout: Option<Duration>) -> Result<i32, RecvTimeoutError> {
        if let Some(event) = self.held.pop_front() {
            return Ok(event);
        }
        match timeout {
            Some(timeout) => self.events.recv_timeout(timeout),
            None => self.events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        }
    }

    /// Sleeps `delay` unless a stop signal comes first; false if one did.
    fn sleep(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            self.systemd.round();
            let left = until.saturating_duration_since(Instant::now());
            let wait = self.systemd.round_interval().map_or(left, |r| r.min(left));
            match self.next_event(Some(wait)) {
                Ok(libc::SIGCHLD) => {
                    let _ = reap(0);
                }
                Ok(signal) => {
                    info!(signal = %signal_name(signal), "stopping during the relaunch delay");
                    self.stop = Some(signal);
                    self.status.stopping();
                    return false;
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < until => {}
                Err(_) => return true,
            }
        }
    }

    /// After a death: the group is gone, so every valid unit in the region
    /// is consistent. Persists them as a generation and leaves the region
    /// holding exactly the newest generation (or blank if there is none).
    fn post_mortem(&mut self) -> Result<Left> {
        let started = Instant::now();
        let start_empty = self.args.start_empty_if_damaged;
        let mut shared = self.snapshots.pause();
        let shared = &mut *shared;
        let taken = match snapshot::observe_file(self.region.file()) {
            Ok(Some(observer)) => shared.snapshotter.take(&observer, &mut shared.store),
            Ok(None) => {
                info!("the program never laid out the region: nothing to persist");
                return restore_after_death(shared, &self.region, start_empty).map(|()| Left::Restored);
            }
            Err(e) => Err(e.into()),
        };
        if let Ok(outcome) = &taken {
            shared.stats.persisted(outcome);
        }
        match taken {
            Ok(Outcome::Persisted {
                persisted,
                units,
                anomalies,
                meta,
                geometry,
                ..
            }) => {
                info!(
                    generation = persisted.number,
                    units,
                    bytes_written = persisted.bytes_written,
                    base = persisted.base,
                    ms = started.elapsed().as_millis() as u64,
                    "generation persisted"
                );
                if !anomalies.is_clean() {
                    warn!(
                        ?anomalies,
                        "the region's unit table had corrupt entries; they were not persisted"
                    );
                }
                snapshot::apply_meta(self.region.file(), &geometry, &meta)
                    .context("making the region hold the persisted generation")?;
                Ok(Left::Persisted(persisted.number))
            }
            Ok(Outcome::NoConsistentUnit { anomalies, .. }) => {
                if !anomalies.is_clean() {
                    warn!(?anomalies, "the region's unit table had corrupt entries");
                }
                info!("no committed unit in the region: nothing new to persist");
                restore_after_death(shared, &self.region, start_empty).map(|()| Left::Restored)
            }
            Ok(other) => bail!("unexpected snapshot outcome {other:?}"),
            Err(snapshot::SnapshotError::Region(e)) => {
                warn!("the region is not usable ({e}); restoring the newest generation");
                restore_after_death(shared, &self.region, start_empty).map(|()| Left::Restored)
            }
            Err(snapshot::SnapshotError::Meta(e)) => {
                warn!("the region is not usable ({e}); restoring the newest generation");
                restore_after_death(shared, &self.region, start_empty).map(|()| Left::Restored)
            }
            Err(e @ snapshot::SnapshotError::Store(_)) => {
                // The region still holds every committed unit; the program
                // recovers them from memory, and the store keeps its last
                // good generation.
                error!("could not persist a generation: {e}; the region is kept as it is");
                Ok(Left::Ahead)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// At start: [`restore_newest`]. When generations exist but none verifies
/// and restores, stops with an error having changed nothing, or, with
/// `--start-empty-if-damaged`, leaves the damaged files in place and starts
/// on a blank region (the next generation is a base numbered after them).
pub(crate) fn restore_at_start(
    shared: &mut Shared,
    region: &HostRegion,
    start_empty_if_damaged: bool,
) -> Result<()> {
    restore_or_start_empty(shared, region, true, start_empty_if_damaged)
}

/// After a death, when the region is not to be kept: like
/// [`restore_at_start`], so a store that could only start with
/// `--start-empty-if-damaged` goes on the same way when the program dies
/// before its first generation.
fn restore_after_death(shared: &mut Shared, region: &HostRegion, start_empty_if_damaged: bool) -> Result<()> {
    restore_or_start_empty(shared, region, false, start_empty_if_damaged)
}

fn restore_or_start_empty(
    shared: &mut Shared,
    region: &HostRegion,
    at_start: bool,
    start_empty_if_damaged: bool,
) -> Result<()> {
    let err = match restore_newest(shared, region, at_start) {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    let Some(StoreError::NoVerifiedGeneration { dir, tried }) = err.downcast_ref::<StoreError>() else {
        return Err(err);
    };
    let damaged: Vec<String> = shared
        .store
        .last_load_skipped()
        .iter()
        .map(|(number, why)| {
            warn!(generation = number, "damaged generation: {why}");
            number.to_string()
        })
        .collect();
    if !start_empty_if_damaged {
        bail!(
            "no generation in {} verifies ({tried} damaged: {}); nothing was changed. Check the store with `shm-restore verify`, or pass --start-empty-if-damaged to start the program on a blank region",
            dir.display(),
            damaged.join(", ")
        );
    }
    warn!(
        dir = %dir.display(),
        damaged = damaged.join(", "),
        "no generation verifies: the program starts on a blank region (--start-empty-if-damaged); the damaged generations stay in place"
    );
    region.clear()
}

/// What a generation must pass to be restored into a region of
/// `region_len` bytes ([`snapshot::restorable`]). A generation of another
/// size passes: that is not its fault, and the caller refuses it with an
/// error naming `--size`.
pub(crate) fn restorable_in(region_len: u64) -> impl FnMut(&[u8], &[u8]) -> Result<(), String> {
    move |image, meta| {
        if image.len() as u64 != region_len {
            return Ok(());
        }
        snapshot::restorable(image, meta)
    }
}

/// Puts the newest generation that verifies and restores into the region,
/// or makes it blank when the store is empty. A generation that verifies
/// but whose unit table or header cannot be restored is skipped like a
/// damaged one.
pub(crate) fn restore_newest(shared: &mut Shared, region: &HostRegion, at_start: bool) -> Result<()> {
    restore_newest_if(shared, region, at_start, |_| true).map(drop)
}

/// [`restore_newest`], once `wanted` has agreed to the generation found
/// (its number; `None` when the store is empty and the region would be
/// made blank). When it does not, the region is left as it is and the
/// result is false.
fn restore_newest_if(
    shared: &mut Shared,
    region: &HostRegion,
    at_start: bool,
    wanted: impl FnOnce(Option<u64>) -> bool,
) -> Result<bool> {
    let started = Instant::now();
    // The region is about to be rewritten: the next snapshot compares it all.
    shared.snapshotter.forget();
    let store = &mut shared.store;
    let loaded = store.load_newest_with(restorable_in(region.len()))?;
    let Some(loaded) = loaded else {
        if !wanted(None) {
            return Ok(false);
        }
        if at_start {
            info!(dir = %store.dir().display(), "empty store: the program starts on a blank region");
        }
        return region.clear().map(|()| true);
    };
    for (number, why) in &loaded.skipped {
        warn!(generation = number, "skipping a damaged generation: {why}");
    }
    if !wanted(Some(loaded.number)) {
        return Ok(false);
    }
    if loaded.image.len() as u64 != region.len() {
        bail!(
            "the newest generation holds a region of {} but --size is {}; run with --size={}",
            human(loaded.image.len() as u64),
            human(region.len()),
            loaded.image.len()
        );
    }
    let restored = snapshot::restore(region.file(), &loaded)
        .with_context(|| format!("restoring generation {}", loaded.number))?;
    info!(
        generation = restored.number,
        units = restored.units,
        bytes = restored.bytes,
        ms = started.elapsed().as_millis() as u64,
        "generation restored"
    );
    Ok(true)
}

/// `d` to whole milliseconds, for messages.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Reaps every child that has ended (orphans included: the supervisor is
/// their subreaper) and returns how `pid` ended if it did.
fn reap(pid: libc::pid_t) -> Result<Option<Ended>> {
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
fn signal_group(pgid: libc::pid_t, signal: i32) {
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
fn kill_group(pgid: libc::pid_t) {
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

//! Running under systemd: readiness, status and watchdog notifications, and
//! the region kept in systemd's file descriptor store so that a restart of
//! the supervisor itself keeps the program's state in memory.
//!
//! The notify protocol (sd_notify(3)): datagrams of `KEY=value` lines to the
//! unix socket named by `NOTIFY_SOCKET` (a path, or an abstract name written
//! `@name`), descriptors attached with SCM_RIGHTS. Without `NOTIFY_SOCKET`
//! nothing here sends anything.
//!
//! - `READY=1` once the first program is running, with a `STATUS=` line.
//! - `STATUS=running pid N, generation G, restarts R`, sent again when one
//!   of them changes, at most every [`STATUS_SPACING`].
//! - `WATCHDOG=1` every half `WATCHDOG_USEC` (when `WATCHDOG_PID` is unset or
//!   ours), only if the lifecycle loop has gone round since the previous
//!   ping. That loop reaps the program, forwards signals, relaunches, and
//!   waits for the snapshot thread to pause: a supervisor stuck there (in a
//!   deadlock, or behind a store that never answers) stops pinging and
//!   systemd restarts it. A timer alone would prove only that a timer runs.
//! - `STOPPING=1` when a stop signal arrives or the supervisor ends.
//! - `FDSTORE=1`, `FDNAME=SHM_SHARED_FD` with the region's memfd, once the
//!   region exists.
//!
//! At start, a region systemd hands back (`LISTEN_FDS`, `LISTEN_FDNAMES`,
//! `LISTEN_PID`) is taken back only if its content verifies (see
//! [`take_back`]). The supervisor's own `LISTEN_*`, `NOTIFY_SOCKET` and
//! `WATCHDOG_*` are removed from its environment, so the program never sees
//! them (it gets its own `LISTEN_*`).

use std::ffi::OsStr;
use std::fs::File;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use shm_snapshot::Observer;
use shm_snapshot::layout::{Geometry, UnitRef};
use shm_snapshot::snapshot::{self, Meta, Outcome};
use shm_snapshot::store::{Store, StoreError};
use tracing::{debug, info, warn};

use crate::region::{HostRegion, human};
use crate::snapshotter::Shared;
use crate::status::Board;
use crate::supervise::restore_at_start;

/// The region's name in the file descriptor store, the same the program
/// finds it under.
const FD_NAME: &str = shm_snapshot::FD_NAME;

/// The first descriptor passed by the `LISTEN_FDS` convention.
const LISTEN_FDS_START: RawFd = 3;

/// More passed descriptors than this is not a file descriptor store of ours
/// (`FileDescriptorStoreMax=1` is what the docs ask for).
const MAX_LISTEN_FDS: u32 = 1024;

/// Least time between two `STATUS=` updates: a program committing
/// thousands of generations a second must not flood the service manager.
pub const STATUS_SPACING: Duration = Duration::from_millis(250);

/// What the supervisor took from its environment at start.
pub struct Systemd {
    notifier: Option<Arc<Notifier>>,
    /// Half the watchdog period, when systemd asked for pings.
    ping_every: Option<Duration>,
    /// The region descriptor handed back by the service manager.
    inherited: Option<File>,
    state: Arc<State>,
    /// The store's owner, for the newest generation's number.
    shared: Option<Arc<Mutex<Shared>>>,
    /// The lifecycle's report: the program's pid and restarts.
    board: Option<Arc<Board>>,
    thread: Option<JoinHandle<()>>,
}

/// What the lifecycle tells the status and watchdog thread.
#[derive(Default)]
struct State {
    /// Rounds of the lifecycle loop.
    rounds: AtomicU64,
    ready_sent: AtomicBool,
    stopping_sent: AtomicBool,
    shutdown: Mutex<bool>,
    wake: Condvar,
}

impl Systemd {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC`/`WATCHDOG_PID` and
    /// `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`, takes the descriptors
    /// passed (only when `LISTEN_PID` is our pid), and removes all six
    /// variables from the environment.
    ///
    /// # Safety
    ///
    /// No other thread may be running: it changes the environment.
    pub unsafe fn from_env() -> Systemd {
        let var = |name| std::env::var_os(name);
        let notify_socket = var("NOTIFY_SOCKET");
        let watchdog_usec = var("WATCHDOG_USEC");
        let watchdog_pid = var("WATCHDOG_PID");
        let listen = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
        for name in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
        ] {
            // SAFETY: the caller guarantees no other thread runs, so nothing
            // reads the environment concurrently.
            unsafe { std::env::remove_var(name) };
        }
        let names_us = |pid: &OsStr| pid.to_str().and_then(|p| p.parse().ok()) == Some(std::process::id());
        // sd_watchdog_enabled(3): an unset WATCHDOG_PID means any process.
        let watchdog = watchdog_usec
            .and_then(|usec| usec.to_str()?.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && watchdog_pid.as_deref().is_none_or(names_us))
            .map(Duration::from_micros);
        // sd_listen_fds(3): descriptors are ours only when LISTEN_PID names
        // us. systemd always sets it; without it the variables were meant
        // for another process (one that exec'd this one keeps its pid, so
        // only an exact match tells), and its descriptors 3.. are left
        // alone, neither taken nor closed.
        let (listen_pid, listen_fds, listen_fdnames) = listen;
        let inherited = match (listen_fds, listen_pid) {
            (None, _) => None,
            (Some(n), Some(pid)) if names_us(&pid) => take_listen_fds(&n, listen_fdnames.as_deref()),
            (Some(_), Some(_)) => {
                debug!("LISTEN_PID names another process: its descriptors are not taken");
                None
            }
            (Some(_), None) => {
                debug!("LISTEN_FDS without LISTEN_PID: the descriptors are not taken");
                None
            }
        };
        // Only now: a socket opened before the descriptors are taken could
        // land on a number LISTEN_FDS announces but that was not open, and
        // be taken (and closed) as one of them.
        let notifier = notify_socket.and_then(|addr| match Notifier::connect(&addr) {
            Ok(notifier) => Some(Arc::new(notifier)),
            Err(e) => {
                warn!(socket = %addr.to_string_lossy(), "cannot reach the service manager's notify socket ({e}); not notifying it");
                None
            }
        });
        Systemd {
            ping_every: watchdog.filter(|_| notifier.is_some()).map(|w| w / 2),
            notifier,
            inherited,
            state: Arc::default(),
            shared: None,
            board: None,
            thread: None,
        }
    }

    /// The region descriptor systemd handed back, once.
    pub fn take_inherited(&mut self) -> Option<File> {
        self.inherited.take()
    }

    /// How often the lifecycle loop must go round for the watchdog to be
    /// fed: twice per ping.
    pub fn round_interval(&self) -> Option<Duration> {
        self.ping_every.map(|p| p / 2)
    }

    /// The lifecycle loop went round.
    pub fn round(&self) {
        // ORDERING: relaxed; the watchdog thread only compares counts and
        // reads nothing else on the strength of one.
        self.state.rounds.fetch_add(1, Relaxed);
    }

    /// Puts the region into the file descriptor store. `replacing` when a
    /// region systemd handed back was not taken: it is removed first, so
    /// `FileDescriptorStoreMax=1` has room for this one.
    pub fn store_region(&self, region: &File, replacing: bool) {
        let Some(notifier) = &self.notifier else { return };
        if replacing {
            notifier.send(&format!("FDSTOREREMOVE=1\nFDNAME={FD_NAME}\n"), &[]);
        }
        notifier.send(&format!("FDSTORE=1\nFDNAME={FD_NAME}\n"), &[region.as_fd()]);
    }

    /// Starts the status and watchdog thread, which reads the newest
    /// generation from `shared` when the snapshot thread lets go of it, and
    /// the program's pid and restarts from `board`.
    pub fn start(&mut self, shared: Arc<Mutex<Shared>>, board: Arc<Board>) -> Result<()> {
        let Some(notifier) = self.notifier.clone() else {
            return Ok(());
        };
        self.shared = Some(shared.clone());
        self.board = Some(board.clone());
        let state = self.state.clone();
        let ping_every = self.ping_every;
        let thread = std::thread::Builder::new()
            .name("systemd".into())
            .spawn(move || status_loop(&notifier, &state, &shared, &board, ping_every))
            .context("starting the systemd notification thread")?;
        self.thread = Some(thread);
        Ok(())
    }

    /// A program started (the status board already says so): the first
    /// time, tells systemd the service is ready.
    pub fn child_started(&self) {
        if let (Some(notifier), Some(board)) = (&self.notifier, &self.board)
            && !self.state.ready_sent.swap(true, Relaxed)
        {
            let generation = self
                .shared
                .as_ref()
                .and_then(|s| s.try_lock().ok()?.store.newest_verified());
            notifier.send(
                &format!("READY=1\nSTATUS={}\n", status_line(board.program(), generation)),
                &[],
            );
        }
    }

    /// The supervisor is stopping; said once.
    pub fn stopping(&self) {
        if let Some(notifier) = &self.notifier
            && !self.state.stopping_sent.swap(true, Relaxed)
        {
            notifier.send("STOPPING=1\nSTATUS=stopping\n", &[]);
        }
    }

    /// Stops the thread.
    pub fn shutdown(&mut self) {
        *self.state.shutdown.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.state.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Takes the descriptors passed by `LISTEN_FDS`: returns the one named
/// [`FD_NAME`] (or the only one, when no names are given) and closes the
/// others. All of them are made close-on-exec first.
fn take_listen_fds(count: &OsStr, names: Option<&OsStr>) -> Option<File> {
    let Some(count) = count.to_str().and_then(|n| n.parse::<u32>().ok()) else {
        warn!(value = %count.to_string_lossy(), "LISTEN_FDS is not a count; no descriptor taken");
        return None;
    };
    if count > MAX_LISTEN_FDS {
        warn!(count, "LISTEN_FDS is implausibly large; no descriptor taken");
        return None;
    }
    let wanted = match names {
        Some(names) => names
            .as_bytes()
            .split(|b| *b == b':')
            .position(|n| n == FD_NAME.as_bytes()),
        None => (count == 1).then_some(0),
    };
    let mut region = None;
    for index in 0..count {
        let raw = LISTEN_FDS_START + index as RawFd;
        // SAFETY: F_GETFD takes a plain integer and reads no memory of
        // ours; on a descriptor that is not open it fails with EBADF.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } == -1 {
            warn!(fd = raw, "a descriptor LISTEN_FDS announces is not open");
            continue;
        }
        // SAFETY: the LISTEN_FDS convention hands descriptors 3.. to this
        // process, it is open (checked above), and nothing else in the
        // supervisor has taken it: this runs before anything opens a file.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
        if Some(index as usize) == wanted {
            region = Some(File::from(owned));
        }
    }
    if region.is_none() && count > 0 {
        debug!(count, "no descriptor named {FD_NAME} among those passed");
    }
    region
}

/// Takes back a region systemd kept in its file descriptor store, or, if
/// it does not verify, restores the newest generation on disk into a fresh
/// region. Returns the region and whether the handed-back one was taken.
///
/// Trusted only if: a memfd sealed as [`HostRegion::create`] seals one, of
/// `--size` bytes; its header verifies; every valid unit passes the slot
/// checks and the chain rule (nothing corrupt); at least one unit; and it
/// descends from the store's newest generation that restores (see
/// [`descends`]). Its old program is gone by now (the recorded group was
/// killed; systemd kills the unit's cgroup), so every valid unit is
/// consistent. Units newer than the store's are then persisted as a
/// generation, as after a death, and the region is made to hold exactly it.
///
/// The store is read as a normal start reads it: generations that verify
/// but do not restore are skipped. When generations exist but none
/// verifies, a region that verifies on its own is taken back (the disk has
/// nothing usable that it could contradict, and the region is the only
/// state left); the damaged generations stay in place.
///
/// A region that is not trusted is left alone (whoever else holds it may
/// still write it) and a fresh one takes its place.
pub fn take_back(
    shared: &mut Shared,
    file: File,
    size: u64,
    start_empty_if_damaged: bool,
) -> Result<(HostRegion, bool)> {
    match adopt(shared, file, size) {
        Ok(region) => Ok((region, true)),
        Err(Refused::Store(e)) => Err(e),
        Err(Refused::Region(why)) => {
            warn!(
                "the region in systemd's file descriptor store is not taken back: {why}; restoring the newest generation on disk"
            );
            let region = HostRegion::create(size)?;
            restore_at_start(shared, &region, start_empty_if_damaged)?;
            Ok((region, false))
        }
    }
}

enum Refused {
    /// The region does not verify: why.
    Region(String),
    /// The store cannot say what it holds.
    Store(anyhow::Error),
}

fn adopt(shared: &mut Shared, file: File, size: u64) -> Result<HostRegion, Refused> {
    let region = HostRegion::adopt(file, size).map_err(Refused::Region)?;
    let observer = match snapshot::observe_file(region.file()) {
        Ok(Some(observer)) => observer,
        Ok(None) => return Err(Refused::Region("the program never laid it out".into())),
        Err(e) => return Err(Refused::Region(format!("its header does not verify: {e}"))),
    };
    let (mut pre, mut kept) = (Vec::new(), Vec::new());
    let anomalies = observer.pre(&mut pre);
    let broken = observer.post(&pre, &mut kept);
    if !anomalies.is_clean() || !broken.is_clean() {
        return Err(Refused::Region(format!(
            "its unit table has {} corrupt slots and {} units out of chain",
            anomalies.corrupt_slots, broken.broken_chain
        )));
    }
    let Some(newest) = kept.last().map(|u| u.seq()) else {
        return Err(Refused::Region("it holds no committed unit".into()));
    };
    let stored = match newest_stored(&mut shared.store, size).map_err(Refused::Store)? {
        Stored::Empty => None,
        Stored::Damaged { tried } => {
            warn!(
                tried,
                "no generation on disk verifies; the region, which does, is taken back and the damaged generations stay in place"
            );
            None
        }
        Stored::OtherSize { number, len } => {
            // The restore that follows stops on it, as a normal start does.
            return Err(Refused::Region(format!(
                "generation {number} holds a region of {} but --size is {}",
                human(len),
                human(size)
            )));
        }
        Stored::Generation(generation) => {
            descends(&observer, &kept, &generation).map_err(Refused::Region)?;
            Some(generation.meta.units.last().map_or(0, |u| u.seq()))
        }
    };
    shared.snapshotter.forget();
    if stored == Some(newest) {
        info!(
            units = kept.len(),
            "region taken back from the fd store (the store already holds its newest unit)"
        );
        return Ok(region);
    }
    match shared.snapshotter.take(&observer, &mut shared.store) {
        Ok(outcome @ Outcome::Persisted { .. }) => {
            shared.stats.persisted(&outcome);
            let Outcome::Persisted {
                persisted,
                units,
                meta,
                geometry,
                ..
            } = outcome
            else {
                unreachable!("matched above")
            };
            snapshot::apply_meta(region.file(), &geometry, &meta)
                .map_err(|e| Refused::Region(format!("it cannot be rewritten: {e}")))?;
            info!(
                generation = persisted.number,
                units, "region taken back from the fd store; its newer units persisted"
            );
        }
        Ok(other) => {
            return Err(Refused::Region(format!("it could not be snapshotted: {other:?}")));
        }
        Err(snapshot::SnapshotError::Store(e)) => {
            // The region holds the state; the store keeps its last good
            // generation and catches up with the next snapshot.
            warn!(
                units = kept.len(),
                "region taken back from the fd store, but its units could not be persisted: {e}"
            );
        }
        Err(e) => return Err(Refused::Region(format!("it could not be snapshotted: {e}"))),
    }
    Ok(region)
}

/// What the store holds, read as a normal start reads it.
enum Stored {
    /// No generation at all.
    Empty,
    /// Generations, none of which verifies and restores.
    Damaged { tried: usize },
    /// The newest generation that verifies holds a region of `len` bytes,
    /// not `--size`.
    OtherSize { number: u64, len: u64 },
    /// The newest generation that verifies and restores.
    Generation(StoredGeneration),
}

/// The store's newest generation that verifies and restores, decoded.
struct StoredGeneration {
    number: u64,
    image: Vec<u8>,
    geometry: Geometry,
    meta: Meta,
}

/// The store's newest generation that verifies and restores, accepted as
/// `restore_newest` (supervise.rs) accepts one, so that a generation a
/// normal start would skip is skipped here too.
fn newest_stored(store: &mut Store, size: u64) -> Result<Stored> {
    let loaded = store.load_newest_with(crate::supervise::restorable_in(size));
    let loaded = match loaded {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return Ok(Stored::Empty),
        Err(StoreError::NoVerifiedGeneration { tried, .. }) => {
            for (number, why) in store.last_load_skipped() {
                warn!(generation = number, "damaged generation: {why}");
            }
            return Ok(Stored::Damaged { tried });
        }
        Err(e) => return Err(e.into()),
    };
    for (number, why) in &loaded.skipped {
        warn!(generation = number, "skipping a damaged generation: {why}");
    }
    if loaded.image.len() as u64 != size {
        return Ok(Stored::OtherSize {
            number: loaded.number,
            len: loaded.image.len() as u64,
        });
    }
    // Accepted above, so this decodes; an error is the store's to report.
    let geometry = snapshot::image_geometry(&loaded.image)
        .with_context(|| format!("reading generation {}", loaded.number))?;
    let meta = Meta::decode(&loaded.meta, &geometry)
        .with_context(|| format!("reading generation {}", loaded.number))?;
    Ok(Stored::Generation(StoredGeneration {
        number: loaded.number,
        image: loaded.image,
        geometry,
        meta,
    }))
}

/// Whether the region's history continues the store's newest generation
/// `stored`, rather than some other run's: a region with as many units or
/// more may still hold a different history (another supervisor ran on the
/// store while this region waited in the fd store), and taking it back
/// would replace that run's persisted units. Sequence numbers alone cannot
/// tell; the units can.
///
/// - Same layout (geometry) as the generation's image.
/// - Every unit of the generation that the region's ring still holds (same
///   sequence number) has the same offset, length and bytes as in the
///   generation's image.
/// - The region holds the generation's newest unit: the one the region's
///   newer units, if any, were written after.
///
/// A region whose program moved on so far that the generation's newest
/// unit has left its ring (its slot or ring bytes reused) is refused too:
/// nothing left in it shows that it descends from the generation, and the
/// disk is a sound fallback. With continuous snapshots the store trails the
/// region by far less than a ring.
fn descends(observer: &Observer, kept: &[UnitRef], stored: &StoredGeneration) -> Result<(), String> {
    let number = stored.number;
    if *observer.geometry() != stored.geometry {
        return Err(format!("its layout differs from generation {number}'s"));
    }
    let Some(stored_newest) = stored.meta.units.last() else {
        return Ok(());
    };
    let region_newest = kept.last().map_or(0, |u| u.seq());
    if region_newest < stored_newest.seq() {
        return Err(format!(
            "it is older than the store (unit {region_newest}; generation {number} has unit {})",
            stored_newest.seq()
        ));
    }
    for unit in &stored.meta.units {
        let Some(ours) = kept.iter().find(|u| u.seq() == unit.seq()) else {
            continue;
        };
        let same = ours.offset == unit.offset
            && ours.len == unit.len
            && image_unit(&stored.image, &stored.geometry, unit)
                .is_some_and(|b| b == observer.copy_unit(ours));
        if !same {
            return Err(format!(
                "its unit {} differs from generation {number}'s: another run wrote the store meanwhile",
                unit.seq()
            ));
        }
    }
    if !kept.iter().any(|u| u.seq() == stored_newest.seq()) {
        return Err(format!(
            "generation {number}'s newest unit {} is no longer in its ring, so nothing shows it continues that generation",
            stored_newest.seq()
        ));
    }
    Ok(())
}

/// The bytes of `unit` in a generation's image, from the ring (wrapping);
/// `None` if they do not lie inside the image.
fn image_unit(image: &[u8], g: &Geometry, unit: &UnitRef) -> Option<Vec<u8>> {
    let len = usize::try_from(unit.len).ok()?;
    let at = unit.offset & (g.ring_bytes - 1);
    let first = len.min(usize::try_from(g.ring_bytes - at).ok()?);
    let ring = |from: u64, n: usize| -> Option<&[u8]> {
        let from = usize::try_from(g.ring_offset.checked_add(from)?).ok()?;
        image.get(from..from.checked_add(n)?)
    };
    let mut bytes = ring(at, first)?.to_vec();
    bytes.extend_from_slice(ring(0, len - first)?);
    Some(bytes)
}

/// The `STATUS=` text.
fn status_line((pid, restarts): (Option<i32>, u64), generation: Option<u64>) -> String {
    let generation = generation.map_or_else(|| "none".to_owned(), |g| g.to_string());
    match pid {
        None => format!("between runs, generation {generation}, restarts {restarts}"),
        Some(pid) => format!("running pid {pid}, generation {generation}, restarts {restarts}"),
    }
}

/// Sends `STATUS=` when it changes and `WATCHDOG=1` while the lifecycle
/// loop goes round, until shutdown.
fn status_loop(
    notifier: &Notifier,
    state: &State,
    shared: &Mutex<Shared>,
    board: &Board,
    ping_every: Option<Duration>,
) {
    let mut next_ping = ping_every.map(|p| Instant::now() + p);
    let mut rounds_at_ping = state.rounds.load(Relaxed);
    let mut withheld = false;
    let mut generation = None;
    let mut last_status = String::new();
    let mut guard = state.shutdown.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let wait = next_ping.map_or(STATUS_SPACING, |at| {
            at.saturating_duration_since(Instant::now()).min(STATUS_SPACING)
        });
        guard = state
            .wake
            .wait_timeout_while(guard, wait, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if *guard {
            return;
        }
        if let (Some(every), Some(at)) = (ping_every, next_ping)
            && Instant::now() >= at
        {
            let rounds = state.rounds.load(Relaxed);
            if rounds != rounds_at_ping {
                notifier.send("WATCHDOG=1\n", &[]);
                rounds_at_ping = rounds;
                withheld = false;
            } else if !withheld {
                warn!(
                    "the lifecycle loop has not gone round for {}; withholding the watchdog ping",
                    humantime::format_duration(every)
                );
                withheld = true;
            }
            // A steady cadence; after a stall (a slow send), from now.
            let now = Instant::now();
            next_ping = Some(if at + every > now { at + every } else { now + every });
        }
        // Never waits for the store: while a snapshot holds it, the last
        // generation known stands.
        if let Ok(shared) = shared.try_lock() {
            generation = shared.store.newest_verified().or(generation);
        }
        if !state.ready_sent.load(Relaxed) || state.stopping_sent.load(Relaxed) {
            continue;
        }
        let status = status_line(board.program(), generation);
        if status != last_status {
            notifier.send(&format!("STATUS={status}\n"), &[]);
            last_status = status;
        }
    }
}

/// A datagram socket connected to the service manager's notify socket.
struct Notifier {
    socket: UnixDatagram,
    /// A send failed already; later failures are logged at debug level.
    failing: AtomicBool,
}

impl Notifier {
    /// Connects to `addr`: a path, or `@name` for an abstract socket.
    fn connect(addr: &OsStr) -> std::io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        match addr.as_bytes() {
            [b'@', name @ ..] => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.connect_addr(&addr)?;
            }
            [b'/', ..] => socket.connect(addr)?,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "only path and abstract (@) sockets are supported",
                ));
            }
        }
        // A service manager that stops reading must not stall the lifecycle.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            failing: AtomicBool::new(false),
        })
    }

    /// Sends one datagram with `fds` attached; failures are logged, never
    /// fatal (the service manager may be restarting).
    fn send(&self, message: &str, fds: &[BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            warn!(fds = fds.len(), "too many descriptors for one notification");
            return;
        }
        let sent = rustix::net::sendmsg(
            &self.socket,
            &[IoSlice::new(message.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL,
        );
        match sent {
            Ok(n) if n == message.len() => {
                debug!(
                    message = message.trim_end().replace('\n', " "),
                    "notified systemd"
                );
            }
            Ok(_) | Err(_) => {
                let why = sent.map_or_else(|e| e.to_string(), |_| "short write".into());
                if self.failing.swap(true, Relaxed) {
                    debug!(
                        fd = self.socket.as_raw_fd(),
                        "notifying systemd failed again: {why}"
                    );
                } else {
                    warn!("notifying systemd failed: {why}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("shm-restore-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.send("READY=1\n", &[]);
        assert_eq!(receive(&listener), "READY=1\n");
    }

    #[test]
    fn relative_and_unknown_socket_addresses_are_refused() {
        assert!(Notifier::connect(OsStr::new("relative/path")).is_err());
        assert!(Notifier::connect(OsStr::new("vsock:2:1234")).is_err());
    }

    #[test]
    fn a_unit_that_wraps_the_ring_is_read_from_both_ends_of_the_image() {
        let g = Geometry::derive(4 << 20, 256, 1 << 20, 64 << 10).unwrap();
        let mut image = vec![0u8; g.region_len as usize];
        let end = (g.ring_offset + g.ring_bytes) as usize;
        image[end - 8..end].copy_from_slice(b"unit-12-");
        image[g.ring_offset as usize..g.ring_offset as usize + 4].copy_from_slice(b"tail");
        let unit = UnitRef {
            slot: 3,
            tag: shm_snapshot::layout::Tag(3 << 2),
            // The third lap of the stream, 8 bytes before the ring's end.
            offset: 3 * g.ring_bytes - 8,
            len: 12,
        };
        assert_eq!(
            image_unit(&image, &g, &unit).as_deref(),
            Some(&b"unit-12-tail"[..])
        );
        let short = &image[..end - 1];
        assert_eq!(image_unit(short, &g, &unit), None, "outside the image");
    }

    #[test]
    fn status_names_pid_generation_and_restarts() {
        assert_eq!(
            status_line((None, 0), None),
            "between runs, generation none, restarts 0"
        );
        assert_eq!(
            status_line((Some(42), 2), Some(7)),
            "running pid 42, generation 7, restarts 2"
        );
    }
}

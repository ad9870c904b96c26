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
//! - `STATUS=` lines from the status reporter (`crate::status`) through a
//!   [`StatusSink`], between `READY=1` and `STOPPING=1`.
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
//! At start, the region systemd hands back (`LISTEN_FDS`, `LISTEN_FDNAMES`,
//! `LISTEN_PID`) is taken here; whether it is trusted is the restore's
//! decision (`crate::restore::take_back`). The supervisor's own `LISTEN_*`, `NOTIFY_SOCKET` and
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
use tracing::{debug, warn};

/// The region's name in the file descriptor store, the same the program
/// finds it under.
const FD_NAME: &str = shm_snapshot::FD_NAME;

/// The first descriptor passed by the `LISTEN_FDS` convention.
const LISTEN_FDS_START: RawFd = 3;

/// More passed descriptors than this is not a file descriptor store of ours
/// (`FileDescriptorStoreMax=1` is what the docs ask for).
const MAX_LISTEN_FDS: u32 = 1024;

/// What the supervisor took from its environment at start.
pub struct Systemd {
    notifier: Option<Arc<Notifier>>,
    /// Half the watchdog period, when systemd asked for pings.
    ping_every: Option<Duration>,
    /// The region descriptor handed back by the service manager.
    inherited: Option<File>,
    state: Arc<State>,
    /// The watchdog thread.
    thread: Option<JoinHandle<()>>,
}

/// What the lifecycle tells the watchdog thread and the status sink.
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

    /// Where the status reporter sends `STATUS=` lines, when a service
    /// manager listens.
    pub fn status_sink(&self) -> Option<StatusSink> {
        Some(StatusSink {
            notifier: self.notifier.clone()?,
            state: self.state.clone(),
        })
    }

    /// Starts the watchdog thread, when systemd asked for pings.
    pub fn start(&mut self) -> Result<()> {
        let (Some(notifier), Some(every)) = (self.notifier.clone(), self.ping_every) else {
            return Ok(());
        };
        let state = self.state.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog(&notifier, &state, every))
            .context("starting the systemd watchdog thread")?;
        self.thread = Some(thread);
        Ok(())
    }

    /// A program started: the first time, tells systemd the service is
    /// ready, with `status` (the reporter's line).
    pub fn child_started(&self, status: &str) {
        if let Some(notifier) = &self.notifier
            && !self.state.ready_sent.swap(true, Relaxed)
        {
            notifier.send(&format!("READY=1\nSTATUS={status}\n"), &[]);
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

/// Where `STATUS=` lines go: sent only between `READY=1` and
/// `STOPPING=1`.
#[derive(Clone)]
pub struct StatusSink {
    notifier: Arc<Notifier>,
    state: Arc<State>,
}

impl StatusSink {
    /// Sends `STATUS=status`; false when it is not the time for one
    /// (before `READY=1`, or once stopping).
    pub fn status(&self, status: &str) -> bool {
        if !self.state.ready_sent.load(Relaxed) || self.state.stopping_sent.load(Relaxed) {
            return false;
        }
        self.notifier.send(&format!("STATUS={status}\n"), &[]);
        true
    }
}

/// Sends `WATCHDOG=1` every `every` while the lifecycle loop goes round,
/// until shutdown.
fn watchdog(notifier: &Notifier, state: &State, every: Duration) {
    let mut next_ping = Instant::now() + every;
    let mut rounds_at_ping = state.rounds.load(Relaxed);
    let mut withheld = false;
    let mut guard = state.shutdown.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let wait = next_ping.saturating_duration_since(Instant::now());
        guard = state
            .wake
            .wait_timeout_while(guard, wait, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if *guard {
            return;
        }
        if Instant::now() < next_ping {
            continue;
        }
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
        next_ping = if next_ping + every > now {
            next_ping + every
        } else {
            now + every
        };
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
}

//! A stand-in for systemd's side of the notify protocol: a real unix
//! datagram socket the supervisor sends to, read with `recvmsg` so that
//! descriptors passed with SCM_RIGHTS arrive as descriptors; and a way to
//! start the supervisor with a descriptor handed back as systemd does
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` = its own pid).

use std::fs::File;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use crate::{PATIENCE, Proc, bin};

/// One datagram the supervisor sent.
#[derive(Debug)]
pub struct Notification {
    /// Its text, `KEY=value` lines.
    pub text: String,
    /// Descriptors that came with it.
    pub fds: Vec<OwnedFd>,
    /// When it arrived.
    pub at: Instant,
}

impl Notification {
    /// Whether it has the line `line`.
    pub fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    /// The value of its `key=` line, if any.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

/// A notify socket bound to a path, read by a thread.
pub struct NotifySocket {
    path: PathBuf,
    received: Receiver<Notification>,
    /// Everything received so far, in order.
    pub seen: Vec<Notification>,
}

impl Drop for NotifySocket {
    /// Unlinks a path socket, so the next one can bind the same path (the
    /// reading thread keeps its descriptor; nothing sends to it any more).
    fn drop(&mut self) {
        if !self.path.to_string_lossy().starts_with('@') {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        NotifySocket::read(socket, path)
    }

    /// Binds the abstract socket `name`; [`NotifySocket::path`] is then
    /// `@name`, as `NOTIFY_SOCKET` writes it.
    pub fn bind_abstract(name: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("an abstract socket name");
        let socket = UnixDatagram::bind_addr(&addr).expect("binding the abstract notify socket");
        NotifySocket::read(socket, PathBuf::from(format!("@{name}")))
    }

    fn read(socket: UnixDatagram, path: PathBuf) -> NotifySocket {
        let (tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut buf = vec![0u8; 4096];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = rustix::net::recvmsg(
                    &socket,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                );
                let Ok(got) = got else { break };
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = message {
                        fds.extend(rights);
                    }
                }
                let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
                let notification = Notification {
                    text,
                    fds,
                    at: Instant::now(),
                };
                if tx.send(notification).is_err() {
                    break;
                }
            }
        });
        NotifySocket {
            path,
            received,
            seen: Vec::new(),
        }
    }

    /// The socket's address, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a notification matching `want` and returns its index in
    /// [`NotifySocket::seen`]. Panics with everything received if none
    /// comes within [`PATIENCE`].
    pub fn expect(&mut self, want: impl Fn(&Notification) -> bool, what: &str) -> usize {
        if let Some(i) = self.seen.iter().position(&want) {
            return i;
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(n) => {
                    let matches = want(&n);
                    self.seen.push(n);
                    if matches {
                        return self.seen.len() - 1;
                    }
                }
                Err(_) => panic!("no {what} within {PATIENCE:?}; received:\n{}", self.transcript()),
            }
        }
    }

    /// Collects whatever arrives during `time`.
    pub fn collect_for(&mut self, time: Duration) {
        let until = Instant::now() + time;
        while let Ok(n) = self
            .received
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.seen.push(n);
        }
    }

    /// Everything received, for failure messages.
    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|n| format!("{:?} (+{} fds)\n", n.text, n.fds.len()))
            .collect()
    }
}

/// Whether `fd` is a memfd (its /proc link says `/memfd:...`).
pub fn is_memfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:"))
}

/// Starts the supervisor in `dir` with `args`, `region` handed over at
/// fd 3 as systemd hands back its file descriptor store: `LISTEN_FDS=1`,
/// `LISTEN_FDNAMES=SHM_SHARED_FD` and `LISTEN_PID` set to the supervisor's
/// own pid (by a shell that then execs it); `NOTIFY_SOCKET` when `notify`
/// is given.
pub fn supervise_with_stored_region(dir: &Path, region: &File, notify: Option<&Path>, args: &[&str]) -> Proc {
    Proc::spawn(handed_over(addressed(), dir, region, notify, args))
}

/// [`supervise_with_stored_region`] without `LISTEN_PID`: `LISTEN_FDS=1`
/// and `LISTEN_FDNAMES` name a descriptor at fd 3 that is not addressed to
/// the supervisor.
pub fn supervise_with_unaddressed_region(
    dir: &Path,
    region: &File,
    notify: Option<&Path>,
    args: &[&str],
) -> Proc {
    let mut command = Command::new(bin("shm-restore"));
    command.env_remove("LISTEN_PID");
    Proc::spawn(handed_over(command, dir, region, notify, args))
}

/// [`supervise_with_stored_region`] where `LISTEN_FDS=2` announces a
/// second descriptor, fd 4 (named `gone`), that is not open.
pub fn supervise_with_stored_region_and_a_closed_fd(
    dir: &Path,
    region: &File,
    notify: Option<&Path>,
    args: &[&str],
) -> Proc {
    use std::os::unix::process::CommandExt;
    let mut command = handed_over(addressed(), dir, region, notify, args);
    command
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", format!("{}:gone", shm_snapshot::FD_NAME));
    // SAFETY: close is async-signal-safe and touches only the child's
    // descriptor table; it runs after the region is moved to fd 3.
    unsafe {
        command.pre_exec(|| {
            libc::close(4);
            Ok(())
        });
    }
    Proc::spawn(command)
}

/// The supervisor, started by a shell that sets `LISTEN_PID` to its own
/// pid and execs it, so the pid stays.
fn addressed() -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(bin("shm-restore"));
    command
}

/// `command` with `region` at fd 3 announced by `LISTEN_FDS=1` and
/// `LISTEN_FDNAMES`, and `NOTIFY_SOCKET` when `notify` is given.
fn handed_over(
    mut command: Command,
    dir: &Path,
    region: &File,
    notify: Option<&Path>,
    args: &[&str],
) -> Command {
    command
        .args(args)
        .current_dir(dir)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", shm_snapshot::FD_NAME)
        .env_remove("NOTIFY_SOCKET");
    if let Some(notify) = notify {
        command.env("NOTIFY_SOCKET", notify);
    }
    crate::region_at_fd_3(&mut command, region);
    command
}

/// A new memfd holding a copy of `region`'s bytes, sealed with `seals`
/// (`F_SEAL_*` bits), as a stand-in for a region some other process put
/// into the file descriptor store.
pub fn resealed_copy(region: &File, seals: libc::c_int) -> File {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileExt;
    let len = region.metadata().expect("fstat").len();
    let mut bytes = vec![0u8; len as usize];
    region.read_exact_at(&mut bytes, 0).expect("reading the region");
    // SAFETY: the name is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::memfd_create(c"resealed".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    let copy = unsafe { File::from_raw_fd(fd) };
    copy.write_all_at(&bytes, 0).expect("copying the region");
    // SAFETY: F_ADD_SEALS takes an integer and reads no memory of ours.
    let sealed = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(sealed, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    copy
}

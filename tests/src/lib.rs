//! Helpers for the cross-process tests: find the workspace's binaries, run
//! them in a temporary directory, and read their output line by line with
//! time limits, so a hung process fails a test instead of hanging it.

pub mod chaos;
pub mod ops;

pub mod systemd;
pub mod table;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// How long a test waits for a line it expects. Generous: CI machines are
/// slow and shared; a healthy run answers in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A workspace binary, built by `cargo test --workspace` into the same
/// target directory as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (the supervised program's, passed through).
    Out,
    /// Standard error (the supervisor's log and the program's errors).
    Err,
}

/// A running process whose output is read line by line.
pub struct Proc {
    child: Option<Child>,
    lines: Receiver<(Stream, String, Instant)>,
    /// Every line seen so far, in arrival order.
    pub seen: Vec<(Stream, String)>,
    /// When each line of `seen` was read from its pipe.
    arrived: Vec<Instant>,
}

/// Sends each line of `stream` on `tx` with the instant it was read from
/// the pipe: never before the process wrote it, and later only by the time
/// this thread waited for a core.
fn forward(stream: impl Read + Send + 'static, which: Stream, tx: mpsc::Sender<(Stream, String, Instant)>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send((which, line, Instant::now())).is_err() {
                break;
            }
        }
    });
}

impl Proc {
    /// Starts `program` with `args` in `dir`.
    pub fn start(dir: &Path, program: &Path, args: &[&str]) -> Proc {
        let mut command = Command::new(program);
        command.args(args).current_dir(dir);
        Proc::spawn(command)
    }

    /// Starts a prepared command, its output piped and read line by line.
    pub fn spawn(mut command: Command) -> Proc {
        // Info-level logs unless the command sets its own level.
        if !command.get_envs().any(|(key, _)| key == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        forward(child.stdout.take().expect("piped"), Stream::Out, tx.clone());
        forward(child.stderr.take().expect("piped"), Stream::Err, tx);
        Proc {
            child: Some(child),
            lines,
            seen: Vec::new(),
            arrived: Vec::new(),
        }
    }

    /// Starts the supervisor on store `store` with extra `flags`, running `command`.
    pub fn supervise(dir: &Path, store: &str, flags: &[&str], command: &[&str]) -> Proc {
        let snapshot = format!("--snapshot={store}");
        let mut args = vec![snapshot.as_str()];
        args.extend(flags);
        args.push("--");
        args.extend(command);
        Proc::start(dir, &bin("shm-restore"), &args)
    }

    /// The process's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Waits for a line of `stream` matching `want`, returning it. Panics
    /// with everything seen if none comes within [`PATIENCE`].
    pub fn expect(&mut self, stream: Stream, want: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((which, line, at)) => {
                    self.record(which, line.clone(), at);
                    if which == stream && want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what} within {PATIENCE:?}; saw:\n{}", self.transcript()),
            }
        }
    }

    /// A line of `stream` matching `want`, among those seen already or, if
    /// none is, the next to come (streams race each other, so a line of one
    /// may arrive after a later line of the other).
    pub fn seen_or_expect(&mut self, stream: Stream, want: impl Fn(&str) -> bool, what: &str) -> String {
        if let Some((_, line)) = self.seen.iter().find(|(s, l)| *s == stream && want(l)) {
            return line.clone();
        }
        self.expect(stream, want, what)
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn expect_out(&mut self, prefix: &str) -> String {
        self.expect(
            Stream::Out,
            |l| l.starts_with(prefix),
            &format!("stdout line `{prefix}…`"),
        )
    }

    /// Waits for a stderr line containing `text`.
    pub fn expect_err(&mut self, text: &str) -> String {
        self.expect(
            Stream::Err,
            |l| l.contains(text),
            &format!("stderr line containing `{text}`"),
        )
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        send(self.pid(), signal);
    }

    /// Waits for the process to exit, collecting the rest of its output.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let child = self.child.as_mut().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "process did not exit within {PATIENCE:?}; saw:\n{}",
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The pipes close when the process and its children are gone.
        while let Ok((which, line, at)) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.record(which, line, at);
        }
        self.child = None;
        status
    }

    fn record(&mut self, which: Stream, line: String, at: Instant) {
        self.seen.push((which, line));
        self.arrived.push(at);
    }

    /// The lines of `stream` seen so far, each with the instant it was read
    /// from the pipe (at or after the process wrote it).
    pub fn stamped_lines(&self, stream: Stream) -> Vec<(Instant, String)> {
        self.seen
            .iter()
            .zip(&self.arrived)
            .filter(|((s, _), _)| *s == stream)
            .map(|((_, l), at)| (*at, l.clone()))
            .collect()
    }

    /// The lines of `stream` seen so far.
    pub fn lines(&self, stream: Stream) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Everything seen so far, for failure messages.
    pub fn transcript(&self) -> String {
        self.seen.iter().map(|(s, l)| format!("{s:?}: {l}\n")).collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to process `pid`.
pub fn send(pid: i32, signal: i32) {
    let pid = rustix::process::Pid::from_raw(pid).expect("positive pid");
    let signal = rustix::process::Signal::from_named_raw(signal).expect("named signal");
    let _ = rustix::process::kill_process(pid, signal);
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
pub fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits until process `pid` is gone; false if it is still alive after [`PATIENCE`].
pub fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if is_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

pub mod torture;

/// A temporary working directory for one test.
pub fn workdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// Makes `command`'s process get `region` at fd 3, inheritable, as the
/// `LISTEN_FDS` convention hands a descriptor over (the caller sets the
/// environment).
pub fn region_at_fd_3(command: &mut Command, region: &std::fs::File) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = region.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe and touch only the
    // child's descriptor table; `fd` stays open in this process until the
    // command is spawned, as the caller holds `region`.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `program` with `region` handed over at fd 3 by the supervisor's
/// convention (no `LISTEN_PID`, which the convention allows), and returns
/// its exit code and output.
pub fn run_with_region(
    program: &Path,
    region: &std::fs::File,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", shm_snapshot::FD_NAME)
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null());
    region_at_fd_3(&mut command, region);
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The files of the store at `store` that hold generations, by name:
/// segments (`seg-<seq>.log`), base files (`base-<n>.snap`) and files a
/// version 2 store wrote (`gen-<n>.snap`) (STORE.md, "The directory"). The
/// lock, the status file and temporary files are left out. Empty when the
/// directory does not exist (yet).
pub fn store_files(store: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(store) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_store_file_name)
        })
        .collect();
    files.sort();
    files
}

/// Whether `name` is the name of a segment, a base file or a version 2
/// generation file: a prefix, 20 digits, a suffix.
fn is_store_file_name(name: &str) -> bool {
    [("seg-", ".log"), ("base-", ".snap"), ("gen-", ".snap")]
        .iter()
        .any(|(prefix, suffix)| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .is_some_and(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The numbers of the generations the store at `store` lists, oldest
/// first, as a reader without the lock sees them (`inspect` reads the same
/// way): nothing in the store is changed, and a supervisor may be writing
/// it. Empty when the directory does not exist (yet).
pub fn generations(store: &Path) -> Vec<u64> {
    if !store.is_dir() {
        return Vec::new();
    }
    let store = shm_snapshot::store::Store::open_read_only(store)
        .unwrap_or_else(|e| panic!("reading the store {}: {e}", store.display()));
    store.generations().iter().map(|g| g.number).collect()
}

/// Whether a supervisor's log line says the units a program committed
/// before its death are in the store or on their way there: a generation
/// persisted, nothing new since the last one, or (while the snapshot thread
/// was writing one) units that come with its next generation.
pub fn units_in_store_after_death(line: &str) -> bool {
    line.contains("generation persisted")
        || line.contains("nothing committed since the last generation")
        || line.contains("these units reach the store with its next one")
}

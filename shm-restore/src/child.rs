//! Starting the program: its own process group, the region at fd 3, the
//! hand-over variables, death with its supervisor.
//!
//! `LISTEN_PID` must be the child's own pid, known only once it exists, so
//! the child is started with clone(CLONE_VM | CLONE_VFORK) and execve rather
//! than `std::process::Command` (which builds the environment before
//! starting it). The child shares the supervisor's memory until it execs,
//! so nothing of the supervisor's is copied (a fork's page-table copy grows
//! with the supervisor's memory). Everything the child does before exec is an
//! async-signal-safe system call on memory prepared before the clone, and of
//! the shared memory it writes only its own pid's digits, its stack and the
//! calling thread's `errno`: the supervisor is multi-threaded, so a lock held
//! by another thread (the allocator's, say) would never be released in the
//! child.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// The fd the region is handed over at (systemd's `SD_LISTEN_FDS_START`).
const REGION_FD: libc::c_int = 3;

/// Room for the decimal digits of any pid (pids are at most 2^22 on Linux;
/// 20 digits hold any u64) and a NUL.
const PID_DIGITS: usize = 21;

/// Which step of the child's set-up failed, reported through the error pipe.
const STEPS: [&str; 6] = [
    "creating its process group",
    "asking to die with the supervisor",
    "resetting its signal mask",
    "placing the region at fd 3",
    "running it",
    "resetting its signal handlers",
];

/// A command ready to start: every buffer the child needs, built up front.
pub struct Launcher {
    path: CString,
    /// Kept alive for `argv`'s pointers.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    /// The environment's entries, pointed to by the child's envp.
    env: Vec<CString>,
    /// `LISTEN_PID=` followed by room for the digits, written in the child.
    listen_pid: Vec<u8>,
    display: String,
}

impl Launcher {
    /// Resolves `command[0]` (through `PATH` when it has no slash) and builds
    /// argv and the environment: ours, minus any `LISTEN_*`, plus the
    /// hand-over variables.
    pub fn new(command: &[OsString]) -> Result<Launcher> {
        let program = command.first().ok_or_else(|| anyhow!("no command to run"))?;
        let path = resolve(program)?;
        let display = program.to_string_lossy().into_owned();
        let cstring = |s: &OsStr| {
            CString::new(s.as_bytes()).with_context(|| format!("argument {s:?} contains a NUL byte"))
        };
        let args = command.iter().map(|a| cstring(a)).collect::<Result<Vec<_>>>()?;
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());

        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            if key.as_bytes().starts_with(b"LISTEN_") {
                continue;
            }
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend(value.as_bytes());
            // A variable with a NUL cannot be passed on; the OS never gives one.
            if let Ok(entry) = CString::new(entry) {
                env.push(entry);
            }
        }
        env.push(CString::new("LISTEN_FDS=1").expect("no NUL"));
        env.push(CString::new(format!("LISTEN_FDNAMES={}", shm_snapshot::FD_NAME)).expect("no NUL"));
        let mut listen_pid = b"LISTEN_PID=".to_vec();
        listen_pid.resize(listen_pid.len() + PID_DIGITS, 0);
        Ok(Launcher {
            path: cstring(path.as_os_str())?,
            _args: args,
            argv,
            env,
            listen_pid,
            display,
        })
    }

    /// The program as the user named it, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Starts the program with `region` at fd 3, in its own process
    /// group (pgid = its pid), killed by SIGKILL if the supervisor dies.
    /// Returns its pid once it has exec'd, or the step that failed.
    pub fn spawn(&mut self, region: BorrowedFd<'_>) -> Result<libc::pid_t> {
        let (read_end, low_write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .context("creating the start-up pipe")?;
        // Above the region's fd 3, so placing the region cannot clobber it.
        // The original must close, or the read below never sees EOF.
        let write_end = rustix::io::fcntl_dupfd_cloexec(&low_write_end, REGION_FD + 1)
            .context("moving the start-up pipe above fd 3")?;
        drop(low_write_end);
        // Every pointer the child uses, taken while allocation is still fine.
        // Both pointers into `listen_pid` come from one mutable pointer, so
        // neither invalidates the other.
        let listen_pid = self.listen_pid.as_mut_ptr();
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|e| e.as_ptr()).collect();
        envp.push(listen_pid.cast_const().cast());
        envp.push(std::ptr::null());
        let digits = listen_pid.wrapping_add(b"LISTEN_PID=".len());
        let child = ChildSetup {
            path: self.path.as_ptr(),
            argv: self.argv.as_ptr(),
            envp: envp.as_ptr(),
            digits,
            region: region.as_raw_fd(),
            report: write_end.as_raw_fd(),
            last_signal: libc::SIGRTMIN(),
            // SAFETY: getpid has no preconditions.
            supervisor: unsafe { libc::getpid() },
        };

        // Block every signal across the clone so no handler of the
        // supervisor's runs in the child (on the shared memory) before it
        // resets them.
        let mut all: libc::sigset_t = unsafe_zeroed_sigset();
        let mut old: libc::sigset_t = unsafe_zeroed_sigset();
        // SAFETY: both sets are valid, initialised sigset_t values.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        // The child shares the supervisor's memory until it execs
        // (CLONE_VM | CLONE_VFORK, as posix_spawn does): a fork would copy
        // the page tables of the supervisor's memory, which for a large
        // region costs milliseconds per relaunch (tens of them when the
        // supervisor kept a copy of the region), all thrown away by the
        // exec. The supervisor's calling thread waits meanwhile.
        let mut stack = vec![0u8; CHILD_STACK];
        let top = stack.as_mut_ptr().wrapping_add(CHILD_STACK);
        let top = top.wrapping_sub(top as usize % 16);
        // The child runs only `child_main`, which runs `ChildSetup::run`:
        // async-signal-safe system calls on memory prepared above, and never
        // returns. Of the memory it shares with this process it writes only
        // the pid digits, its stack (`stack`, ours, unused by anything else)
        // and, through libc, this thread's `errno` (it has no thread pointer
        // of its own); none of them is read by this thread while it waits,
        // and `errno` is read below only when the clone itself failed, when
        // no child ran.
        // SAFETY: as argued above; CLONE_VFORK suspends this thread until the
        // child has exec'd or exited, so `stack` and every buffer it reads
        // outlive it.
        let pid = unsafe {
            libc::clone(
                child_main,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&child).cast_mut().cast(),
            )
        };
        let fork_error = io::Error::last_os_error();
        drop(stack);
        // SAFETY: `old` is the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        drop(write_end);
        if pid < 0 {
            return Err(fork_error).context("starting a process for the program");
        }
        // The child closes its copy of the pipe by exec'ing (CLOEXEC), or
        // writes [step, errno] and exits.
        let mut report = [0u8; 8];
        let mut got = 0;
        loop {
            match rustix::io::read(&read_end, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e).context("reading the start-up pipe"),
            }
        }
        if got == 0 {
            return Ok(pid);
        }
        // The child failed before exec and has exited: reap it.
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let step = STEPS.get(report[0] as usize).copied().unwrap_or("starting it");
        let errno = i32::from_le_bytes(report[4..8].try_into().expect("4 bytes"));
        Err(anyhow!(
            "cannot start {}: {step}: {}",
            self.display,
            io::Error::from_raw_os_error(errno)
        ))
    }
}

fn unsafe_zeroed_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data for which all-zero is a valid (empty)
    // value; it is filled by sigfillset/pthread_sigmask before being read.
    unsafe { std::mem::zeroed() }
}

/// Stack of the child between clone and exec: `run` and the system calls
/// it makes need a few kilobytes.
const CHILD_STACK: usize = 64 << 10;

/// The child's entry point after clone.
extern "C" fn child_main(setup: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `setup` is the `ChildSetup` the parent passed to clone, alive
    // while the parent waits for the exec; we are the child; see `run`.
    unsafe { (*setup.cast::<ChildSetup>()).run() }
}

/// What the child needs after clone: raw pointers into buffers the parent
/// built, in the address space the child shares with it until exec.
struct ChildSetup {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    digits: *mut u8,
    region: libc::c_int,
    report: libc::c_int,
    /// Signals below this one get their default disposition back.
    last_signal: libc::c_int,
    supervisor: libc::pid_t,
}

impl ChildSetup {
    /// # Safety
    ///
    /// Must be called only in the child of a clone(CLONE_VM | CLONE_VFORK),
    /// with every pointer valid (they point into the parent's buffers, which
    /// the child shares). Makes only async-signal-safe calls, writes no
    /// shared memory but `digits`, its stack and the caller's `errno`, and
    /// never returns.
    unsafe fn run(&self) -> ! {
        // Signal dispositions and the descriptor table changed below are the
        // child's own (no CLONE_SIGHAND, no CLONE_FILES).
        // SAFETY: every call below is an async-signal-safe system call
        // (POSIX's list, plus Linux's prctl/dup3) on valid arguments; the
        // buffers behind the pointers were built before the clone.
        unsafe {
            if libc::setpgid(0, 0) != 0 {
                self.fail(0);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                self.fail(1);
            }
            // The supervisor may have died before PDEATHSIG was set.
            if libc::getppid() != self.supervisor {
                libc::_exit(1);
            }
            // Handlers the supervisor installed would otherwise run here
            // until exec; ignored signals (SIGPIPE: Rust ignores it) would
            // stay ignored in the program.
            for signal in 1..self.last_signal {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                self.fail(2);
            }
            if self.region == REGION_FD {
                if libc::fcntl(REGION_FD, libc::F_SETFD, 0) != 0 {
                    self.fail(3);
                }
            } else if libc::dup2(self.region, REGION_FD) != REGION_FD {
                self.fail(3);
            }
            // No other descriptor reaches the program, not even one the
            // supervisor inherited without close-on-exec. The report pipe
            // stays open until exec closes it.
            close_from(REGION_FD + 1, self.report);
            write_decimal(self.digits, libc::getpid() as u64);
            libc::execve(self.path, self.argv, self.envp);
            self.fail(4);
        }
    }

    /// Reports `[step, errno]` through the pipe and exits 127.
    ///
    /// # Safety
    ///
    /// As `run`.
    unsafe fn fail(&self, step: u8) -> ! {
        // SAFETY: async-signal-safe calls on a stack buffer.
        unsafe {
            let errno = *libc::__errno_location();
            let mut report = [0u8; 8];
            report[0] = step;
            report[4..8].copy_from_slice(&errno.to_le_bytes());
            libc::write(self.report, report.as_ptr().cast(), report.len());
            libc::_exit(127);
        }
    }
}

/// Closes every descriptor from `first` up, except `keep`, with
/// close_range(2) where the kernel has it (5.9+), else one by one up to the
/// descriptor limit. Async-signal-safe: system calls only.
///
/// # Safety
///
/// Only in the child between clone and exec: it closes descriptors other
/// code may own.
unsafe fn close_from(first: libc::c_int, keep: libc::c_int) {
    let ranges = [(first, keep - 1), (keep + 1, libc::c_int::MAX)];
    for (low, high) in ranges {
        if low > high {
            continue;
        }
        // SAFETY: close_range only closes descriptors; the caller owns them all.
        let done = unsafe { libc::syscall(libc::SYS_close_range, low as u32, high as u32, 0u32) } == 0;
        if !done {
            // SAFETY: getrlimit writes only into `limit`; close only closes.
            unsafe {
                let mut limit: libc::rlimit = std::mem::zeroed();
                let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur.min(1 << 20) as libc::c_int
                } else {
                    4096
                };
                for fd in low..high.min(max.saturating_sub(1)).saturating_add(1) {
                    libc::close(fd);
                }
            }
        }
    }
}

/// Writes `n` in decimal followed by a NUL at `out`, which has room for
/// [`PID_DIGITS`] bytes. No allocation, no formatting machinery.
///
/// # Safety
///
/// `out` must be valid for writes of [`PID_DIGITS`] bytes.
unsafe fn write_decimal(out: *mut u8, mut n: u64) {
    let mut digits = [0u8; PID_DIGITS - 1];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    // SAFETY: `len` + 1 <= PID_DIGITS bytes at `out`, valid per the contract.
    unsafe {
        std::ptr::copy_nonoverlapping(digits[i..].as_ptr(), out, len);
        *out.add(len) = 0;
    }
}

/// Finds the program as `execvp` would, so a missing program is reported
/// before anything is started.
fn resolve(program: &OsStr) -> Result<PathBuf> {
    let as_path = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        if !as_path.exists() {
            bail!("cannot start {}: no such file", as_path.display());
        }
        return Ok(as_path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if rustix::fs::access(&candidate, rustix::fs::Access::EXEC_OK).is_ok() && candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("cannot start {}: not found in PATH", as_path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_written_without_allocation_and_nul_terminated() {
        let mut buf = [0xffu8; PID_DIGITS];
        // SAFETY: `buf` has PID_DIGITS bytes.
        unsafe { write_decimal(buf.as_mut_ptr(), 4194304) };
        assert_eq!(&buf[..8], b"4194304\0");
        // SAFETY: as above.
        unsafe { write_decimal(buf.as_mut_ptr(), u64::MAX) };
        assert_eq!(&buf[..21], b"18446744073709551615\0");
    }

    #[test]
    fn missing_program_is_reported_before_starting() {
        let err = resolve(OsStr::new("no-such-program-anywhere")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot start no-such-program-anywhere: not found in PATH"
        );
        assert!(resolve(OsStr::new("sh")).is_ok());
    }
}

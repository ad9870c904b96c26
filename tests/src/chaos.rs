//! Helpers for the chaos-mode tests: run the supervisor to its end with a
//! time limit that grows with the kills asked for, and read primes-snapshot's
//! progress out of what it printed.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a supervisor run left: its status, its stdout (the programs'),
/// its stderr (the log), and the JSON report if it wrote one.
pub struct Finished {
    /// How the supervisor ended.
    pub status: ExitStatus,
    /// Standard output: the supervised programs' lines, passed through.
    pub out: String,
    /// Standard error: the supervisor's log and the programs' errors.
    pub err: String,
}

impl Finished {
    /// Both streams, for failure messages (the log's tail, which holds the report).
    pub fn transcript(&self) -> String {
        let tail: Vec<&str> = self.err.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "status {:?}\n--- stderr (tail) ---\n{}",
            self.status,
            tail.join("\n")
        )
    }
}

/// The file in its directory that [`run_supervisor`] writes the
/// supervisor's log to, as it goes: a supervised program may read it to
/// learn what the supervisor has seen of the program's earlier runs.
pub const LOG: &str = "stderr.txt";

/// Runs `shm-restore` in `dir` with `args` until it exits. Its log goes to
/// [`LOG`] (a long chaos run logs a lot); the programs' stdout comes
/// through a pipe, where a line (one `write` of under `PIPE_BUF` bytes) is
/// whole or absent however its writer dies: written to a regular file, a
/// SIGKILL can cut it at a page boundary of the file. Panics, after
/// killing it, if it is still running after `limit`.
pub fn run_supervisor(dir: &Path, args: &[&str], limit: Duration) -> Finished {
    let err_path = dir.join(LOG);
    let mut child = Command::new(crate::bin("shm-restore"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).expect("log file"))
        .spawn()
        .expect("starting shm-restore");
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).expect("reading the programs' stdout");
        out
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!(
                "shm-restore still running after {limit:?}; its log ends:\n{}",
                tail(&err, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        out: reader.join().expect("the stdout reader"),
        err: std::fs::read_to_string(&err_path).expect("stderr file"),
    }
}

/// The pids of the programs the supervisor started, in order, from the
/// `child started` lines of its log: a pid's start number (1 = the first)
/// is its index plus one.
pub fn started_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter(|l| l.contains("child started"))
        .map(|l| {
            l.split("pid=")
                .nth(1)
                .and_then(|rest| rest.split(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {l:?}"))
        })
        .collect()
}

/// CPU time, user and system, that the main thread of process `pid` has
/// used so far (in clock ticks, usually 10 ms, from `/proc`).
fn main_thread_cpu(pid: i32) -> Duration {
    let path = format!("/proc/{pid}/task/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    // The fields after the command name, which is in parentheses and may
    // hold spaces; the first of them is field 3 (`state`) of proc(5), so
    // `utime` and `stime` (fields 14 and 15) are at 11 and 12.
    let after_name = stat.rfind(") ").map_or("", |at| &stat[at + 2..]);
    let fields: Vec<&str> = after_name.split(' ').collect();
    let field = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("no field {} in {path}: {stat}", i + 3))
    };
    // SAFETY: sysconf reads a configuration value; it touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz)
        .ok()
        .filter(|&hz| hz > 0)
        .expect("clock ticks per second");
    Duration::from_millis((field(11) + field(12)) * 1000 / hz)
}

/// Waits until the main thread of the supervisor `pid` has spun for `busy`
/// of CPU time since the call, which is where a chaos kill that waits for
/// its moment spins; nothing else there uses a core while the program runs
/// (it sleeps until its next event). Panics if it has not within `limit`.
pub fn wait_until_spinning(pid: i32, busy: Duration, limit: Duration) {
    let (before, since) = (main_thread_cpu(pid), Instant::now());
    while main_thread_cpu(pid).saturating_sub(before) < busy {
        assert!(
            since.elapsed() < limit,
            "the supervisor's main thread did not spin for {busy:?} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One line of primes-snapshot's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `restored primes=N last=P`: a start, and what it restored.
    Restored {
        /// Final table entries.
        primes: u64,
        /// Last candidate checked.
        last: u64,
    },
    /// `committed primes=N last=P`: a commit published.
    Committed {
        /// Final table entries.
        primes: u64,
        /// Last candidate checked.
        last: u64,
    },
}

/// primes-snapshot's progress lines in `out`, in order; panics on any
/// other line (a torn or foreign line is a finding, not noise).
pub fn progress(out: &str) -> Vec<Progress> {
    out.lines()
        .map(|line| {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let field = |name: &str| -> u64 {
                rest.split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name}= in stdout line {line:?}"))
            };
            let (primes, last) = (field("primes"), field("last"));
            match word {
                "restored" => Progress::Restored { primes, last },
                "committed" => Progress::Committed { primes, last },
                _ => panic!("unexpected stdout line {line:?}"),
            }
        })
        .collect()
}

/// Checks that no start restored less than was committed before it: every
/// `restored` is at least the last `committed` before it, in primes and in
/// last candidate. Returns the number of starts.
pub fn check_nothing_lost(lines: &[Progress]) -> Result<usize, String> {
    let mut committed = (0, 0);
    let mut starts = 0;
    for (i, line) in lines.iter().enumerate() {
        match *line {
            Progress::Committed { primes, last } => committed = (primes, last),
            Progress::Restored { primes, last } => {
                starts += 1;
                if primes < committed.0 || last < committed.1 {
                    return Err(format!(
                        "start {starts} (stdout line {}) restored primes={primes} last={last}, but primes={} last={} had been committed",
                        i + 1,
                        committed.0,
                        committed.1
                    ));
                }
                committed = (primes, last);
            }
        }
    }
    Ok(starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_behind_the_last_commit_is_reported() {
        let out = "restored primes=0 last=0\ncommitted primes=25 last=100\nrestored primes=25 last=100\n\
                   committed primes=46 last=200\nrestored primes=25 last=100\n";
        let err = check_nothing_lost(&progress(out)).unwrap_err();
        assert!(err.starts_with("start 3 (stdout line 5)"), "{err}");
        let ahead = "restored primes=0 last=0\ncommitted primes=25 last=100\nrestored primes=46 last=200\n";
        assert_eq!(check_nothing_lost(&progress(ahead)), Ok(2));
    }

    #[test]
    #[should_panic(expected = "stdout line")]
    fn a_line_that_is_not_progress_is_a_finding() {
        progress("restored primes=0 last=0\ncommitted primes=x restored primes=0 last=0\n");
    }
}

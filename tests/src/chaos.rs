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

/// Runs `shm-restore` in `dir` with `args` until it exits, its output in
/// files (a long chaos run prints a lot). Panics, after killing it, if it
/// is still running after `limit`.
pub fn run_supervisor(dir: &Path, args: &[&str], limit: Duration) -> Finished {
    let out_path = dir.join("stdout.txt");
    let err_path = dir.join("stderr.txt");
    let file = |p: &Path| std::fs::File::create(p).expect("output file");
    let mut child = Command::new(crate::bin("shm-restore"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .spawn()
        .expect("starting shm-restore");
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
        out: std::fs::read_to_string(&out_path).expect("stdout file"),
        err: std::fs::read_to_string(&err_path).expect("stderr file"),
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

/// Whether `fragment` is the start of a progress line cut short: a run
/// SIGKILLed inside its `write` to a file stops at a page boundary of the
/// file, and the next run's first line follows on the same line.
fn is_torn_progress_line(fragment: &str) -> bool {
    ["committed primes=# last=#", "restored primes=# last=#"]
        .iter()
        .any(|template| {
            let mut rest = fragment;
            for t in template.chars() {
                if rest.is_empty() {
                    return true;
                }
                if t == '#' {
                    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                    if digits == 0 {
                        return false;
                    }
                    rest = &rest[digits..];
                } else if let Some(r) = rest.strip_prefix(t) {
                    rest = r;
                } else {
                    return false;
                }
            }
            rest.is_empty()
        })
}

/// primes-snapshot's progress lines in `out`, in order; panics on any
/// other line (a foreign line is a finding, not noise). A line cut short
/// by a kill (see [`is_torn_progress_line`]) is dropped, the start of the
/// next run that follows it kept; the commit whose line was cut is then
/// not checked (its successor in the file usually is).
pub fn progress(out: &str) -> Vec<Progress> {
    out.lines()
        .map(|line| match line.rfind("restored primes=") {
            Some(at) if at > 0 && is_torn_progress_line(&line[..at]) => &line[at..],
            _ => line,
        })
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
    fn a_line_cut_by_a_kill_is_dropped_and_the_next_start_kept() {
        for torn in [
            "commit",
            "committed primes=4",
            "committed primes=46 last=",
            "restored primes=1",
        ] {
            let out = format!(
                "restored primes=0 last=0\ncommitted primes=25 last=100\n{torn}restored primes=25 last=100\n"
            );
            assert_eq!(
                progress(&out),
                [
                    Progress::Restored { primes: 0, last: 0 },
                    Progress::Committed {
                        primes: 25,
                        last: 100
                    },
                    Progress::Restored {
                        primes: 25,
                        last: 100
                    },
                ],
                "{torn:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "stdout line")]
    fn a_foreign_prefix_before_a_start_is_still_a_finding() {
        progress("restored primes=0 last=0\ncommitted primes=x restored primes=0 last=0\n");
    }
}

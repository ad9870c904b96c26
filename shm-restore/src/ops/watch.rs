//! `shm-restore watch DIR`: a live view of the supervisor running on a
//! store, from the status file it rewrites every second. On a terminal the
//! view is redrawn in place; otherwise (a pipe, a log, ssh without a tty)
//! one block is printed per second. Reads only.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use shm_snapshot::store::GenerationKind;

use super::args::Watch;
use super::show::{self, human};
use super::store::{check_is_store, open_read_only};
use crate::status::{self, Status};

/// Clears an ANSI terminal and puts the cursor home.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Runs `watch`. With `--once`: one view, exit 0 if a supervisor is
/// running, 1 if none is.
pub fn run(a: &Watch) -> Result<ExitCode> {
    check_is_store(&a.dir)?;
    let tty = std::io::stdout().is_terminal();
    loop {
        let (view, running) = view(&a.dir)?;
        let mut out = std::io::stdout().lock();
        if a.once {
            write!(out, "{view}")?;
            return Ok(if running {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        let written = if tty {
            write!(out, "{CLEAR}{view}")
        } else {
            writeln!(out, "{view}")
        };
        // A closed pipe (`watch | head`) ends the view quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        drop(out);
        std::thread::sleep(status::PERIOD);
    }
}

/// Whether process `pid` exists and is not a zombie (a killed supervisor
/// whose parent has not reaped it yet is dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// The view of the store in `dir` now, and whether a supervisor runs.
fn view(dir: &Path) -> Result<(String, bool)> {
    let now = status::now_ms();
    let since = |ms: u64| show::age(Duration::from_millis(now.saturating_sub(ms)));
    let status = status::read(dir).with_context(|| format!("cannot read the status in {}", dir.display()))?;
    let mut v = format!("shm-restore watch {}  ({} UTC)\n", dir.display(), show::time(now));
    match status {
        Some(s) if alive(s.supervisor_pid) => {
            lines(&mut v, &s, &since);
            Ok((v, true))
        }
        _ => {
            v.push_str(&format!("no supervisor running on {}\n", dir.display()));
            let store = open_read_only(dir)?;
            match store.generations().last() {
                Some(g) => v.push_str(&format!(
                    "newest generation on disk: {} ({} ago, {} in {}, region {})\n",
                    g.number,
                    since(g.created_ms),
                    match g.kind {
                        GenerationKind::Base => "base".to_owned(),
                        GenerationKind::Delta { parent } => format!("delta on {parent}"),
                    },
                    g.path
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    human(g.region_len)
                )),
                None => v.push_str("no generations on disk\n"),
            }
            Ok((v, false))
        }
    }
}

/// The lines about a running supervisor.
fn lines(v: &mut String, s: &Status, since: &dyn Fn(u64) -> String) {
    v.push_str(&format!(
        "supervisor  pid {}, up {}, {}\n",
        s.supervisor_pid,
        since(s.supervisor_started_ms),
        s.state.word()
    ));
    match (s.child_pid, s.child_started_ms) {
        (Some(pid), Some(started)) => v.push_str(&format!(
            "child       pid {pid}, up {}, {} restarts\n",
            since(started),
            s.restarts
        )),
        _ => v.push_str(&format!("child       not running, {} restarts\n", s.restarts)),
    }
    match (s.newest_generation, s.newest_generation_ms) {
        (Some(n), Some(ms)) => v.push_str(&format!(
            "newest      generation {n}, {} ago ({} persisted by this supervisor)\n",
            since(ms),
            s.generations
        )),
        _ => v.push_str("newest      no generation yet\n"),
    }
    let ms = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.3} ms"));
    v.push_str(&format!(
        "lag         p50 {}, p99 {} (commit to durable, last second)\n",
        ms(s.lag_p50_ms),
        ms(s.lag_p99_ms)
    ));
    v.push_str(&format!(
        "writes      {}/s, {:.1} generations/s\n",
        human(s.bytes_per_second as u64),
        s.generations_per_second
    ));
    if let Some(r) = &s.replica {
        let last = r
            .last_upload_ms
            .map_or_else(|| "none yet".to_owned(), |t| format!("{} ago", since(t)));
        v.push_str(&format!(
            "replica     {}, generation {}, {} behind ({:.1} s), last upload {last}\n",
            r.url,
            r.newest_generation
                .map_or_else(|| "none".to_owned(), |g| g.to_string()),
            r.behind_generations,
            r.behind_seconds
        ));
        v.push_str(&format!(
            "            lease {}, {} PUTs, {} uploaded, lag p50 {}, p99 {} (durable to replicated){}\n",
            r.lease.word(),
            r.puts,
            human(r.bytes_uploaded),
            ms(r.lag_p50_ms),
            ms(r.lag_p99_ms),
            r.error
                .as_ref()
                .map_or_else(String::new, |e| format!("; failing: {e}"))
        ));
    }
    let stale = status::now_ms().saturating_sub(s.updated_ms);
    if stale > 5 * status::PERIOD.as_millis() as u64 {
        v.push_str(&format!(
            "(status last updated {} ago: the supervisor may be stuck)\n",
            show::age(Duration::from_millis(stale))
        ));
    }
}

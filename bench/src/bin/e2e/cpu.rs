//! The supervisor's CPU time, from `/proc/<pid>/stat`: user plus system
//! time of all its threads (fields 14 `utime` and 15 `stime`, see proc(5)),
//! in clock ticks. Its program's time is not included: a child's time
//! appears only in `cutime`/`cstime`, and only once it has been reaped.

use std::time::Instant;

use anyhow::{Context, Result};

/// One reading of a process's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// When it was read.
    at: Instant,
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times: the value
/// `sysconf(_SC_CLK_TCK)` returns (the kernel's `AT_CLKTCK`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// Reads process `pid`'s CPU time now.
pub fn sample(pid: u32) -> Result<Sample> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = utime_plus_stime(&stat).with_context(|| format!("parsing {path}: {stat:?}"))?;
    Ok(Sample {
        ticks,
        at: Instant::now(),
    })
}

/// CPU use between two samples, in percent of one core.
pub fn percent(before: &Sample, after: &Sample, ticks_per_second: u64) -> f64 {
    let cpu_seconds = after.ticks.saturating_sub(before.ticks) as f64 / ticks_per_second as f64;
    let wall_seconds = after.at.duration_since(before.at).as_secs_f64();
    100.0 * cpu_seconds / wall_seconds
}

/// utime + stime from the text of `/proc/<pid>/stat`. The command name,
/// field 2, is in parentheses and may hold spaces and parentheses itself, so
/// the fields are counted from its last `)`: field 3 (the state) comes first.
fn utime_plus_stime(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 37 5 0 0 20 0 3 0 123 0 0";
        assert_eq!(utime_plus_stime(stat), Some(42));
    }

    #[test]
    fn a_truncated_stat_line_gives_nothing() {
        assert_eq!(utime_plus_stime("4242 (sh) S 1 4242"), None);
        assert_eq!(utime_plus_stime("no parenthesis"), None);
    }

    #[test]
    fn this_process_has_a_readable_cpu_time() {
        assert!(sample(std::process::id()).is_ok());
    }
}

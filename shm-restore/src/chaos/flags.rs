//! Chaos mode's flags: the kill range, the run count, the seed, where
//! relaunches get their region, and the report file.

use std::path::PathBuf;
use std::time::Duration;

/// Chaos-mode flags.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Chaos mode")]
pub struct ChaosFlags {
    /// SIGKILL the program's group at uniformly random times MIN..MAX after each start (e.g. 20ms..500ms), and relaunch it. [default: off]
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_kill_range)]
    pub chaos_kill: Option<KillRange>,

    /// Stop after N chaos kills: relaunch once more, wait for that run's first commit, stop it and report. [default: until stopped]
    #[arg(long, value_name = "N", requires = "chaos_kill", value_parser = clap::value_parser!(u64).range(1..))]
    pub chaos_runs: Option<u64>,

    /// Seed of the chaos schedule (intervals, kill kinds, restore sources). [default: random, logged]
    #[arg(long, value_name = "N", requires = "chaos_kill")]
    pub seed: Option<u64>,

    /// Where a run after a chaos kill gets its region: as left in memory, rebuilt from the newest generation on disk, or a seeded half-and-half mix.
    #[arg(long, value_enum, value_name = "FROM", default_value_t = RestoreFrom::Mixed, requires = "chaos_kill")]
    pub chaos_restore: RestoreFrom,

    /// Also write the chaos report as JSON to FILE (replaced atomically).
    #[arg(long, value_name = "FILE", requires = "chaos_kill")]
    pub report: Option<PathBuf>,
}

/// The range chaos kills are drawn from, after each start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillRange {
    /// Shortest time from a start to its kill.
    pub min: Duration,
    /// Longest time from a start to its kill; also how long a worst-moment
    /// kill waits for its moment, up to
    /// [`MOMENT_WAIT`](super::killer::MOMENT_WAIT).
    pub max: Duration,
}

fn parse_kill_range(s: &str) -> Result<KillRange, String> {
    let (min, max) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}` is not MIN..MAX (e.g. 20ms..500ms)"))?;
    let parse = |what: &str, d: &str| {
        humantime::parse_duration(d.trim())
            .map_err(|e| format!("{what} `{d}`: {e} (expected e.g. 20ms..500ms)"))
    };
    let (min, max) = (parse("MIN", min)?, parse("MAX", max)?);
    if min > max {
        return Err(format!(
            "MIN {} is longer than MAX {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    if max.is_zero() {
        return Err("MAX must be longer than 0".into());
    }
    Ok(KillRange { min, max })
}

/// Where a run after a chaos kill gets its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreFrom {
    /// About half the runs, drawn by the seed, from disk; the rest from memory.
    Mixed,
    /// Every run from the newest generation on disk.
    Disk,
    /// Every run from the region as the killed run left it.
    Memory,
}

#[cfg(test)]
pub(super) fn range(min: u64, max: u64) -> KillRange {
    KillRange {
        min: Duration::from_millis(min),
        max: Duration::from_millis(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_ranges_take_human_durations_and_refuse_bad_forms() {
        assert_eq!(parse_kill_range("20ms..500ms"), Ok(range(20, 500)));
        assert_eq!(parse_kill_range("1s..1s"), Ok(range(1000, 1000)));
        assert!(parse_kill_range("500ms").unwrap_err().contains("MIN..MAX"));
        assert!(
            parse_kill_range("500ms..20ms")
                .unwrap_err()
                .contains("longer than MAX")
        );
        assert!(
            parse_kill_range("soon..later")
                .unwrap_err()
                .contains("MIN `soon`")
        );
        assert!(parse_kill_range("0..0").is_err());
    }
}

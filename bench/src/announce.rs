//! The lines bench-child prints on stdout when asked to (see
//! `bench/src/bin/bench-child.rs`), parsed: `started <ns> <pid>` at its
//! start, `recovered <units>` once its region is open, `committed <ns>`
//! after its first commit, and `progress <commits> <ns>` now and then.

use anyhow::{Context, Result, bail};

/// Prefix of the line bench-child prints first thing in `main`.
pub const STARTED: &str = "started ";
/// Prefix of the line it prints once its region is open.
pub const RECOVERED: &str = "recovered ";
/// Prefix of the line it prints after its first commit.
pub const COMMITTED: &str = "committed ";
/// Prefix of its progress lines.
pub const PROGRESS: &str = "progress ";

/// A `started <ns> <pid>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// CLOCK_MONOTONIC in nanoseconds, read first thing after `exec`.
    pub ns: u64,
    /// The program's pid.
    pub pid: i32,
}

/// A `progress <commits> <ns>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Commits the program made since its start.
    pub commits: u64,
    /// CLOCK_MONOTONIC in nanoseconds, read after the last of them.
    pub ns: u64,
}

/// The `started` line `line`, `None` if it is another line, an error if it
/// is a malformed one.
pub fn started(line: &str) -> Result<Option<Started>> {
    let Some([ns, pid]) = fields(line, STARTED, "started <ns> <pid>")? else {
        return Ok(None);
    };
    Ok(Some(Started {
        ns: ns
            .parse()
            .with_context(|| format!("the clock reading `{ns}` of `{line}`"))?,
        pid: pid
            .parse()
            .with_context(|| format!("the pid `{pid}` of `{line}`"))?,
    }))
}

/// The unit count of a `recovered` line, `None` for another line.
pub fn recovered(line: &str) -> Result<Option<u64>> {
    let Some([units]) = fields(line, RECOVERED, "recovered <units>")? else {
        return Ok(None);
    };
    Ok(Some(
        units
            .parse()
            .with_context(|| format!("the count `{units}` of `{line}`"))?,
    ))
}

/// The `progress` line `line`, `None` for another line.
pub fn progress(line: &str) -> Result<Option<Progress>> {
    let Some([commits, ns]) = fields(line, PROGRESS, "progress <commits> <ns>")? else {
        return Ok(None);
    };
    Ok(Some(Progress {
        commits: commits
            .parse()
            .with_context(|| format!("the count `{commits}` of `{line}`"))?,
        ns: ns
            .parse()
            .with_context(|| format!("the clock reading `{ns}` of `{line}`"))?,
    }))
}

/// The `N` whitespace-separated fields after `prefix`; `None` if `line`
/// does not start with it, an error if it has more or fewer fields.
fn fields<'a, const N: usize>(line: &'a str, prefix: &str, shape: &str) -> Result<Option<[&'a str; N]>> {
    let Some(rest) = line.strip_prefix(prefix) else {
        return Ok(None);
    };
    let found: Vec<&str> = rest.split_ascii_whitespace().collect();
    match <[&str; N]>::try_from(found) {
        Ok(fields) => Ok(Some(fields)),
        Err(_) => bail!("bench-child printed `{line}`, expected `{shape}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_line_gives_the_clock_reading_and_the_pid() {
        let started = started("started 123456789 4242").expect("a well-formed line");
        assert_eq!(
            started,
            Some(Started {
                ns: 123_456_789,
                pid: 4242
            })
        );
    }

    #[test]
    fn a_line_with_a_field_missing_extra_or_unreadable_is_an_error() {
        assert!(started("started 123456789").is_err());
        assert!(started("started 123456789 4242 7").is_err());
        assert!(started("started soon 4242").is_err());
        assert!(recovered("recovered 1 2").is_err());
        assert!(progress("progress 12").is_err());
        assert!(progress("progress -1 5").is_err());
    }

    #[test]
    fn recovered_and_progress_lines_give_their_numbers() {
        assert_eq!(recovered("recovered 256").expect("well-formed"), Some(256));
        assert_eq!(
            progress("progress 1000 5000000").expect("well-formed"),
            Some(Progress {
                commits: 1000,
                ns: 5_000_000
            })
        );
    }

    #[test]
    fn other_lines_are_none_of_these() {
        assert_eq!(started("committed 123").expect("not an error"), None);
        assert_eq!(recovered("started 1 2").expect("not an error"), None);
        assert_eq!(progress("committed 123").expect("not an error"), None);
    }
}

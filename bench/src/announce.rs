//! The lines bench-child prints on stdout when asked to (see
//! `bench/src/bin/bench-child.rs`), parsed: `started <ns> <pid>` at its
//! start, `committed <ns>` after its first commit.

use anyhow::{Context, Result, bail};

/// Prefix of the line bench-child prints first thing in `main`.
pub const STARTED: &str = "started ";
/// Prefix of the line it prints after its first commit.
pub const COMMITTED: &str = "committed ";

/// A `started <ns> <pid>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// CLOCK_MONOTONIC in nanoseconds, read first thing after `exec`.
    pub ns: u64,
    /// The program's pid.
    pub pid: i32,
}

/// The `started` line `line`, `None` if it is another line, an error if it
/// is a malformed one.
pub fn started(line: &str) -> Result<Option<Started>> {
    let Some(rest) = line.strip_prefix(STARTED) else {
        return Ok(None);
    };
    let mut fields = rest.split_ascii_whitespace();
    let (Some(ns), Some(pid), None) = (fields.next(), fields.next(), fields.next()) else {
        bail!("bench-child printed `{line}`, expected `started <ns> <pid>`");
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
    fn a_started_line_with_a_field_missing_or_extra_is_an_error() {
        assert!(started("started 123456789").is_err());
        assert!(started("started 123456789 4242 7").is_err());
        assert!(started("started soon 4242").is_err());
    }

    #[test]
    fn other_lines_are_not_started_lines() {
        assert_eq!(started("committed 123").expect("not an error"), None);
    }
}

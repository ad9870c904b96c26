//! How subcommands show things: times, sizes, hex, aligned tables.

use std::time::{Duration, UNIX_EPOCH};

pub use crate::region::human;

/// The first millisecond of the year 10000, which RFC 3339 cannot write
/// (humantime panics on it).
const YEAR_10000_MS: u64 = 253_402_300_800_000;

/// Milliseconds since the Unix epoch as UTC, to the millisecond. A time
/// RFC 3339 cannot write (a damaged header can still carry a consistent
/// hash) is shown as the raw milliseconds.
pub fn time(ms: u64) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(t) if ms < YEAR_10000_MS => humantime::format_rfc3339_millis(t).to_string(),
        _ => format!("{ms} ms after the epoch"),
    }
}

/// A duration for people: `3m 12s`, `850ms`.
pub fn age(d: Duration) -> String {
    // Whole seconds past a minute, milliseconds below a second.
    let d = if d >= Duration::from_secs(60) {
        Duration::from_secs(d.as_secs())
    } else if d >= Duration::from_secs(1) {
        Duration::from_millis(d.as_millis() as u64 / 100 * 100)
    } else {
        Duration::from_millis(d.as_millis() as u64)
    };
    humantime::format_duration(d).to_string()
}

/// `n thing` or `n things`.
pub fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// Bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders rows as columns separated by two spaces; columns whose header
/// is in `right` are right-aligned. Trailing spaces are trimmed.
pub fn table(headers: &[&str], right: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right.contains(&headers[i]) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["1".to_owned(), "base".to_owned()],
            vec!["100".to_owned(), "delta".to_owned()],
        ];
        assert_eq!(
            table(&["N", "KIND"], &["N"], &rows),
            "  N  KIND\n  1  base\n100  delta\n"
        );
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(hex(&[0, 0xab, 7]), "00ab07");
    }

    #[test]
    fn times_past_year_9999_show_as_raw_milliseconds() {
        assert_eq!(time(YEAR_10000_MS - 1), "9999-12-31T23:59:59.999Z");
        assert_eq!(time(YEAR_10000_MS), "253402300800000 ms after the epoch");
        assert_eq!(time(u64::MAX), format!("{} ms after the epoch", u64::MAX));
    }
}

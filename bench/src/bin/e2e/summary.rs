//! The supervisor's summary line, logged once at exit when it takes
//! continuous snapshots:
//!
//! ```text
//! ... INFO snapshot summary generations=123 per_second=45.6 lag_p50_ms=0.9 lag_p99_ms=1.8
//!     lag_max_ms=3.2 bytes_written=123456 bytes_changed=65432 skipped=0
//! ```
//!
//! (one line; fields in any order). A supervisor without continuous
//! snapshots logs no such line, and a field it does not log stays `None`.

/// Text that marks the summary line.
const MARKER: &str = "snapshot summary";

/// The fields of the summary line.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Generations persisted.
    pub generations: Option<u64>,
    /// Generations per second.
    pub per_second: Option<f64>,
    /// Median lag from commit to durable, in milliseconds.
    pub lag_p50_ms: Option<f64>,
    /// 99th percentile of the lag, in milliseconds.
    pub lag_p99_ms: Option<f64>,
    /// Largest lag, in milliseconds.
    pub lag_max_ms: Option<f64>,
    /// Bytes the store wrote.
    pub bytes_written: Option<u64>,
    /// Bytes the snapshots found changed in the region.
    pub bytes_changed: Option<u64>,
    /// As reported under `skipped`.
    pub skipped: Option<u64>,
}

impl Summary {
    /// The last summary line among `lines`, parsed.
    pub fn find(lines: &[String]) -> Option<Summary> {
        lines.iter().rev().find_map(|line| Summary::parse(line))
    }

    /// Parses a summary line; `None` if `line` is not one.
    pub fn parse(line: &str) -> Option<Summary> {
        let (_, fields) = line.split_once(MARKER)?;
        let mut summary = Summary::default();
        for (key, value) in fields
            .split_whitespace()
            .filter_map(|field| field.split_once('='))
        {
            let value = value.trim_matches('"');
            let int = || value.parse::<u64>().ok();
            let float = || value.parse::<f64>().ok().filter(|v| v.is_finite());
            match key {
                "generations" => summary.generations = int(),
                "per_second" => summary.per_second = float(),
                "lag_p50_ms" => summary.lag_p50_ms = float(),
                "lag_p99_ms" => summary.lag_p99_ms = float(),
                "lag_max_ms" => summary.lag_max_ms = float(),
                "bytes_written" => summary.bytes_written = int(),
                "bytes_changed" => summary.bytes_changed = int(),
                "skipped" => summary.skipped = int(),
                _ => {}
            }
        }
        Some(summary)
    }

    /// Bytes written per generation.
    pub fn written_per_generation(&self) -> Option<f64> {
        per(self.bytes_written?, self.generations?)
    }

    /// Bytes found changed per generation.
    pub fn changed_per_generation(&self) -> Option<f64> {
        per(self.bytes_changed?, self.generations?)
    }

    /// Bytes written per byte changed.
    pub fn written_per_changed(&self) -> Option<f64> {
        per(self.bytes_written?, self.bytes_changed?)
    }
}

/// `a / b`, or `None` when `b` is zero.
fn per(a: u64, b: u64) -> Option<f64> {
    (b != 0).then(|| a as f64 / b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "2026-11-21T10:00:00.000000Z  INFO snapshot summary generations=123 per_second=45.6 \
                        lag_p50_ms=0.9 lag_p99_ms=1.8 lag_max_ms=3.2 bytes_written=123456 \
                        bytes_changed=65432 skipped=0";

    #[test]
    fn every_field_of_the_summary_line_is_read() {
        let s = Summary::parse(LINE).unwrap();
        assert_eq!(
            s,
            Summary {
                generations: Some(123),
                per_second: Some(45.6),
                lag_p50_ms: Some(0.9),
                lag_p99_ms: Some(1.8),
                lag_max_ms: Some(3.2),
                bytes_written: Some(123456),
                bytes_changed: Some(65432),
                skipped: Some(0),
            }
        );
        assert_eq!(s.written_per_generation(), Some(123456.0 / 123.0));
    }

    #[test]
    fn fields_in_another_order_or_quoted_are_read_and_unknown_ones_ignored() {
        let s = Summary::parse(r#"INFO snapshot summary skipped=2 mode="x y" generations="7""#).unwrap();
        assert_eq!(s.generations, Some(7));
        assert_eq!(s.skipped, Some(2));
        assert_eq!(s.lag_p50_ms, None);
    }

    #[test]
    fn other_lines_are_not_summaries_and_the_last_summary_wins() {
        assert_eq!(Summary::parse("INFO child started pid=1"), None);
        let lines = [
            "INFO snapshot summary generations=1".to_string(),
            "INFO child ended".to_string(),
            "INFO snapshot summary generations=2".to_string(),
        ];
        assert_eq!(Summary::find(&lines).unwrap().generations, Some(2));
        assert_eq!(Summary::find(&lines[1..2]), None);
    }

    #[test]
    fn per_generation_figures_are_absent_without_generations() {
        let s = Summary::parse("snapshot summary generations=0 bytes_written=10 bytes_changed=0").unwrap();
        assert_eq!(s.written_per_generation(), None);
        assert_eq!(s.written_per_changed(), None);
    }
}

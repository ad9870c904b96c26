//! Commit-to-durable lag, in constant memory however long the supervisor
//! runs: a log-linear histogram of microseconds, 16 buckets per power of
//! two, so a quantile is exact below 32 µs and within 1/16 above.

use std::time::Duration;

/// Buckets per power of two, as bits.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Lags are counted up to 2^40 µs (12 days); longer ones land in the top bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 1) as usize + 1) * SUB as usize;

/// A histogram of lags, weighted by the commits each covers.
#[derive(Debug, Clone)]
pub struct LagHistogram {
    buckets: Vec<u64>,
    total: u64,
    max: Duration,
}

impl Default for LagHistogram {
    fn default() -> LagHistogram {
        LagHistogram {
            buckets: vec![0; BUCKETS],
            total: 0,
            max: Duration::ZERO,
        }
    }
}

fn bucket(us: u64) -> usize {
    let us = us.min((1 << (MAX_EXP + 1)) - 1);
    if us < 2 * SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    let mantissa = (us >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB + mantissa) as usize
}

/// The smallest lag, in µs, that lands in bucket `b`.
fn lower_bound(b: usize) -> u64 {
    let b = b as u64;
    if b < 2 * SUB {
        return b;
    }
    let exp = b / SUB - 1 + u64::from(SUB_BITS);
    (SUB + b % SUB) << (exp - u64::from(SUB_BITS))
}

impl LagHistogram {
    /// Records `lag` for `weight` commits.
    pub fn record(&mut self, lag: Duration, weight: u64) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        // Weights come from the program's commit count: saturate, never wrap.
        let slot = &mut self.buckets[bucket(us)];
        *slot = slot.saturating_add(weight);
        self.total = self.total.saturating_add(weight);
        self.max = self.max.max(lag);
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The lag at quantile `q` (0..=1), to within 1/16.
    pub fn quantile(&self, q: f64) -> Duration {
        let target = (q * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (b, count) in self.buckets.iter().enumerate() {
            // Saturating, as the counts are: two weights near 2^64 (a
            // scribbled commit count) must not overflow the running sum.
            seen = seen.saturating_add(*count);
            if seen >= target {
                return Duration::from_micros(lower_bound(b)).min(self.max);
            }
        }
        self.max
    }

    /// What was recorded since `earlier`, a copy of this histogram taken
    /// before: quantiles over that interval. Its maximum is the whole
    /// history's (only an upper bound for the interval's).
    pub fn since(&self, earlier: &LagHistogram) -> LagHistogram {
        LagHistogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            total: self.total.saturating_sub(earlier.total),
            max: self.max,
        }
    }

    /// The largest lag recorded, exactly.
    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_whose_bound_is_within_a_sixteenth_below_it() {
        for us in (0..100_000u64).chain([1 << 20, (1 << 40) - 1, 123_456_789]) {
            let low = lower_bound(bucket(us));
            assert!(low <= us && us - low <= us / SUB, "{us} -> bucket bound {low}");
        }
        assert!(bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_follow_the_weights() {
        let mut h = LagHistogram::default();
        h.record(Duration::from_micros(1000), 98);
        h.record(Duration::from_micros(5000), 1);
        h.record(Duration::from_millis(150), 1);
        assert_eq!(
            h.quantile(0.5),
            Duration::from_micros(992),
            "1000 µs, within 1/16 below"
        );
        assert_eq!(
            h.quantile(0.99),
            Duration::from_micros(4864),
            "5000 µs, within 1/16 below"
        );
        assert_eq!(h.max(), Duration::from_millis(150));
        assert!(LagHistogram::default().is_empty());
    }

    #[test]
    fn quantiles_of_weights_that_saturate_do_not_overflow() {
        // Weights come from a commit count the program may scribble.
        let mut h = LagHistogram::default();
        h.record(Duration::from_micros(10), u64::MAX - 1);
        h.record(Duration::from_millis(3), u64::MAX - 1);
        assert_eq!(h.quantile(0.5), Duration::from_micros(10));
        assert_eq!(
            h.quantile(1.0),
            Duration::from_micros(2944),
            "3 ms, within 1/16 below"
        );
    }

    #[test]
    fn quantiles_since_an_earlier_copy_cover_only_the_later_lags() {
        let mut h = LagHistogram::default();
        h.record(Duration::from_millis(100), 1000);
        let earlier = h.clone();
        assert!(h.since(&earlier).is_empty());
        h.record(Duration::from_micros(16), 10);
        let recent = h.since(&earlier);
        assert_eq!(recent.quantile(0.99), Duration::from_micros(16));
        assert_eq!(
            h.quantile(0.5),
            Duration::from_micros(98304),
            "100 ms, within 1/16 below"
        );
    }
}

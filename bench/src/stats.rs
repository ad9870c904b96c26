//! Percentiles of measured times, nearest rank.

/// p50, p99 and maximum of a set of times, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    /// Median (nearest rank).
    pub p50: f64,
    /// 99th percentile (nearest rank: of 200 samples, the 198th smallest).
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `samples` (nanoseconds), or `None` for none.
    pub fn of_nanos(samples: &[u64]) -> Option<Spread> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let max = *sorted.last()?;
        let ms = |ns: u64| ns as f64 / 1e6;
        let rank = |p: f64| {
            // Nearest rank: the smallest sample at or above p of them.
            let r = (p * sorted.len() as f64).ceil() as usize;
            ms(sorted[r.clamp(1, sorted.len()) - 1])
        };
        Some(Spread {
            p50: rank(0.50),
            p99: rank(0.99),
            max: ms(max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<u64> = (1..=200).map(|i| i * 1_000_000).collect();
        let s = Spread::of_nanos(&samples).expect("samples");
        assert_eq!((s.p50, s.p99, s.max), (100.0, 198.0, 200.0));
        let one = Spread::of_nanos(&[2_500_000]).expect("a sample");
        assert_eq!((one.p50, one.p99, one.max), (2.5, 2.5, 2.5));
        assert!(Spread::of_nanos(&[]).is_none());
    }
}

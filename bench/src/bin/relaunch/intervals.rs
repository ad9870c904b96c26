//! The seeded intervals between kills.

use std::time::Duration;

/// Seeded pseudo-random durations: xorshift64, its state set from the seed
/// by one splitmix64 step (so seed 0, xorshift's fixed point, works too).
pub struct Intervals {
    state: u64,
}

impl Intervals {
    /// The sequence for `seed`: the same seed gives the same intervals.
    pub fn new(seed: u64) -> Intervals {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Intervals { state: z.max(1) }
    }

    /// A duration in `min..=max`, to the microsecond.
    pub fn between(&mut self, min: Duration, max: Duration) -> Duration {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        let span = u64::try_from((max - min).as_micros()).unwrap_or(u64::MAX);
        min + Duration::from_micros(x % span.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_stay_in_range_and_repeat_with_the_seed() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(100));
        let draw = |seed| {
            let mut i = Intervals::new(seed);
            (0..1000).map(|_| i.between(min, max)).collect::<Vec<_>>()
        };
        let a = draw(0);
        assert!(a.iter().all(|d| (min..=max).contains(d)));
        assert_eq!(a, draw(0));
        assert_ne!(a, draw(1));
    }
}

//! How soon the program is started again after a death.
//!
//! A death after which the region shows progress since the run started (its
//! commit count moved) is a kill or a crash of a working program: it is
//! relaunched at once, with no backoff, and does not count toward
//! `--restart-limit`. A death without progress (a program that dies before
//! committing anything, over and over) is a crash loop: the backoff doubles
//! and the limit applies.
//!
//! A program that commits and then always dies at once makes progress every
//! time; relaunching it at once for ever would keep a core busy. So
//! relaunches "at once" are paced by a bucket of [`QUICK_BURST`] that
//! refills at [`QUICK_PER_SECOND`]: a kill loop of a real program (deaths
//! 50 ms apart on average, in bursts of up to [`QUICK_BURST`] closer
//! together) is never held back, and a program that does nothing but commit
//! and die is relaunched about [`QUICK_PER_SECOND`] times a second (each
//! relaunch waits at most 1/[`QUICK_PER_SECOND`] s), which costs a few
//! percent of a core.

use std::time::{Duration, Instant};

/// Relaunches at once allowed in a row before pacing starts.
pub const QUICK_BURST: f64 = 40.0;
/// Relaunches at once allowed per second, on average, past the burst.
pub const QUICK_PER_SECOND: f64 = 20.0;

/// The bucket of relaunches at once.
#[derive(Debug)]
pub struct QuickRelaunches {
    tokens: f64,
    at: Instant,
}

impl Default for QuickRelaunches {
    fn default() -> QuickRelaunches {
        QuickRelaunches {
            tokens: QUICK_BURST,
            at: Instant::now(),
        }
    }
}

impl QuickRelaunches {
    /// Takes one relaunch at once: how long to wait first (zero while the
    /// bucket holds one).
    pub fn take(&mut self) -> Duration {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> Duration {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * QUICK_PER_SECOND;
        self.tokens = (self.tokens + refill).min(QUICK_BURST);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // In debt: wait until the bucket is back at zero.
            Duration::from_secs_f64(-self.tokens / QUICK_PER_SECOND)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_and_then_relaunches_are_paced() {
        let start = Instant::now();
        let mut quick = QuickRelaunches {
            tokens: QUICK_BURST,
            at: start,
        };
        for _ in 0..QUICK_BURST as usize {
            assert_eq!(quick.take_at(start), Duration::ZERO);
        }
        let paced = quick.take_at(start);
        assert_eq!(paced, Duration::from_secs_f64(1.0 / QUICK_PER_SECOND));
        // Waiting out the pause pays the debt: the next one waits the same.
        assert_eq!(quick.take_at(start + paced), paced);
    }

    #[test]
    fn deaths_spaced_wider_than_the_rate_are_never_held_back() {
        let mut at = Instant::now();
        let mut quick = QuickRelaunches { tokens: 0.0, at };
        for _ in 0..1000 {
            at += Duration::from_secs_f64(1.01 / QUICK_PER_SECOND);
            assert_eq!(quick.take_at(at), Duration::ZERO);
        }
    }
}

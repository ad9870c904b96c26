//! CLOCK_MONOTONIC in nanoseconds: one clock for every process on the
//! machine, so a time bench-child prints and a time a runner reads compare
//! directly.

use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    // The monotonic clock counts from boot: never negative.
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Sleeps until CLOCK_MONOTONIC reads `ns` (at once if it has passed).
pub fn sleep_until(ns: u64) {
    let now = monotonic_ns();
    if ns > now {
        std::thread::sleep(Duration::from_nanos(ns - now));
    }
}

//! Hang detection (`--hang-timeout`): a program whose heartbeat stands still
//! for too long is taken for hung.
//!
//! The program moves the header's heartbeat counter on every commit and
//! whenever it calls `Client::heartbeat` (FORMAT.md, "The heartbeat"). The
//! supervisor samples it, with the commit count, through a read-only mapping
//! every [`HangWatch::poll_interval`]; the clock starts when the program is
//! started, and any change of either value starts it again. Both values are
//! untrusted and only compared. A program that never lays the region out
//! never moves them, so it is taken for hung too.

use std::fs::File;
use std::time::{Duration, Instant};

use shm_snapshot::Observer;
use shm_snapshot::snapshot;

/// Shortest and longest time between two samples. A sample is one mapping
/// (until the region is laid out) or two loads (after), so sampling at an
/// eighth of the timeout costs nothing and detects a hang at most 12.5% late.
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_secs(1);

/// Watches one run of the program.
pub struct HangWatch {
    file: File,
    timeout: Duration,
    /// Made once the program has laid the region out.
    observer: Option<Observer>,
    /// The last `(heartbeat, commit count)` seen; `None` before layout.
    last: Option<(u64, u64)>,
    /// When `last` last changed (or the program started).
    changed_at: Instant,
    next_check: Instant,
}

impl HangWatch {
    /// Starts watching a program started just now on the region in `file`.
    pub fn start(file: &File, timeout: Duration) -> std::io::Result<HangWatch> {
        let now = Instant::now();
        let mut watch = HangWatch {
            file: file.try_clone()?,
            timeout,
            observer: None,
            last: None,
            changed_at: now,
            next_check: now,
        };
        // A region restored from a generation is laid out already: sample it
        // now, so only a change from here on counts as a sign of life.
        watch.last = watch.sample();
        watch.next_check = now + watch.poll_interval();
        Ok(watch)
    }

    /// Time between samples.
    pub fn poll_interval(&self) -> Duration {
        (self.timeout / 8).clamp(POLL_MIN, POLL_MAX)
    }

    /// When the next sample is due.
    pub fn next_check(&self) -> Instant {
        self.next_check
    }

    /// Samples the region if a sample is due. Returns how long the
    /// heartbeat has stood still when that is at least the timeout.
    pub fn check(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now < self.next_check {
            return None;
        }
        self.next_check = now + self.poll_interval();
        let sample = self.sample();
        if sample != self.last {
            self.last = sample;
            self.changed_at = now;
            return None;
        }
        let still = now.saturating_duration_since(self.changed_at);
        (still >= self.timeout).then_some(still)
    }

    /// The heartbeat and commit count, or `None` while the region is not
    /// laid out (or its header does not verify: a program scribbling over
    /// its header is not a sign of life the supervisor can read).
    fn sample(&mut self) -> Option<(u64, u64)> {
        if self.observer.is_none() {
            self.observer = snapshot::observe_file(&self.file).ok().flatten();
        }
        let observer = self.observer.as_ref()?;
        Some((observer.heartbeat(), observer.commit_count()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_snapshot::{Client, Config, Region};

    #[test]
    fn a_beat_restarts_the_clock_and_silence_ends_in_a_hang() {
        let region = Region::anonymous(2 << 20).unwrap();
        let file = region.file().try_clone().unwrap();
        let timeout = Duration::from_millis(40);
        let mut watch = HangWatch::start(&file, timeout).unwrap();
        let mut client = Client::open(region, &Config::default()).unwrap();
        // Laying the region out is a change: no hang while it beats.
        let until = Instant::now() + timeout * 3;
        while Instant::now() < until {
            client.heartbeat();
            std::thread::sleep(POLL_MIN);
            assert_eq!(watch.check(), None, "a beating client is not hung");
        }
        let silent = Instant::now();
        let stalled = loop {
            std::thread::sleep(POLL_MIN);
            if let Some(stalled) = watch.check() {
                break stalled;
            }
            assert!(
                silent.elapsed() < timeout * 10,
                "a silent client is never taken for hung"
            );
        };
        assert!(stalled >= timeout);
        assert!(silent.elapsed() >= timeout);
    }

    #[test]
    fn a_region_never_laid_out_is_hung_after_the_timeout() {
        let region = Region::anonymous(2 << 20).unwrap();
        let timeout = Duration::from_millis(20);
        let started = Instant::now();
        let mut watch = HangWatch::start(region.file(), timeout).unwrap();
        while watch.check().is_none() {
            std::thread::sleep(POLL_MIN);
            assert!(started.elapsed() < timeout * 20);
        }
        assert!(started.elapsed() >= timeout);
    }
}

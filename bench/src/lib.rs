//! What the benchmark runners (`e2e`, `relaunch`) share: finding the release
//! binaries they run, driving a supervisor, reading bench-child's lines and
//! the clock they carry, percentiles, the file system their stores go on
//! and its own sync latency, and the log tail a failed case shows.

#![deny(missing_docs)]

pub mod announce;
pub mod clock;
pub mod disk;
pub mod locate;
pub mod log;
pub mod private;
pub mod seaweed;
pub mod stats;
pub mod supervisor;
pub mod sync_latency;

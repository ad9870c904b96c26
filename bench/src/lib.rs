//! What the benchmark runners (`e2e`, `relaunch`) share: finding the release
//! binaries they run, the file system their stores go on, and the log tail
//! a failed case shows.

#![deny(missing_docs)]

pub mod disk;
pub mod locate;
pub mod log;

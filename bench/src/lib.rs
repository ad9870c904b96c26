//! What the benchmark runners (`e2e`, `relaunch`) share: finding the release
//! binaries they run, and the file system their stores go on.

#![deny(missing_docs)]

pub mod disk;
pub mod locate;

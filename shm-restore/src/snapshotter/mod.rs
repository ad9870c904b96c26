//! Continuous snapshots while the program runs: a thread that waits for
//! the program to commit, then persists a generation of the live region
//! (Pre, copy what changed, Post), at most one per `--interval`.
//!
//! The thread never makes the program wait. It polls the region's commit
//! count, backing off from 50 µs while nothing moves, and after about a
//! millisecond of quiet sleeps on a futex the program wakes after its next
//! commit (it makes that system call only while the header says the host
//! sleeps). An idle program costs the supervisor a wake-up every
//! [`IDLE_WAIT`]; a commit after a quiet spell is noticed at once.
//!
//! Lag is measured from the moment the thread first sees a commit count to
//! the moment a generation covering it is durable (synced, renamed, and
//! its directory synced): it undercounts the true commit-to-durable time by
//! at most the polling delay, and keeps clock reads off the program's path.
mod control;
mod shared;
mod worker;

pub use control::SnapshotThread;
pub use shared::{Shared, lock};

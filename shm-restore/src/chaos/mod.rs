//! Chaos mode: SIGKILL the program's group at random moments, relaunch it,
//! and report what survived, so users can test their own program's crash
//! recovery with `kill -9` loops.
//!
//! A seeded schedule fixes, for each kill, the interval after the start of
//! the run it ends, its kind (the moment it aims for), and where the next
//! run's region comes from. The seed fixes the schedule, not the program's
//! timing: two runs with one seed kill at the same offsets, but what the
//! program was doing then differs.
//!
//! Kill kinds, decided when a kill is due:
//!
//! - `timer`: at once.
//! - `after-commit`: the moment the region's commit count moves, by
//!   spinning on it through the read-only observer.
//! - `mid-write`: the moment a commit is seen started but not counted: the
//!   ring word at the cursor, the tag of the next unit's slot, the cursor,
//!   `next_seq` or an arena chunk's write counter moved while the commit
//!   count did not (FORMAT.md, "Committing a unit" and "Chunk write
//!   counters"). A fast commit may complete between the sighting and the
//!   signal; whether the commit count was still unmoved once the group was
//!   dead is counted separately.
//!
//! A worst-moment kill that does not find its moment within [`MOMENT_WAIT`]
//! (or `MAX` if shorter) falls back to a plain kill and is counted as such.
//! While it spins, the lifecycle is asked every [`PEEK_EVERY`] whether it
//! has something to do first (a stop signal, a hang): if so the spin ends
//! without a kill, and the lifecycle acts as it would without chaos mode.
//!
//! The parts: `flags` (the command line), `schedule` (the seeded plan),
//! `lifecycle` (the hooks the supervisor calls), `killer` (sending a kill
//! at its moment), `tally` (the counts kept as the program runs) and
//! `report` (what the counts make at the end: log lines and JSON).
//!
//! [`MOMENT_WAIT`]: killer::MOMENT_WAIT
//! [`PEEK_EVERY`]: killer::PEEK_EVERY

mod flags;
mod killer;
mod lifecycle;
mod report;
mod schedule;
mod tally;

pub use flags::ChaosFlags;
pub use lifecycle::{Chaos, Tick, may_replace};

//! Memory: what a region costs while the supervisor runs it, what this
//! process can still be given, and the check between the two that comes
//! before any region is created.

mod available;
mod check;
mod cost;

pub use check::{Refusal, Room, ensure_room};

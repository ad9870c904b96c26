//! The C ABI of the shm-snapshot client: `libshm_snapshot.so`,
//! `libshm_snapshot.a` and the header `include/shm_snapshot.h`, which
//! cbindgen generates from this crate (a test fails when the checked-in
//! header is stale).
//!
//! Every function wraps the Rust client; none of them lets a panic unwind
//! into C: a panic is caught at the boundary and becomes
//! `SHM_SNAPSHOT_E_PANIC`. Errors are a status code plus a message for the
//! calling thread ([`status::shm_snapshot_last_error`]).
//!
//! Ownership and threads, for every handle:
//!
//! - `shm_snapshot_client`: made by an `shm_snapshot_open_*` function,
//!   released by `shm_snapshot_close`. Not thread-safe: calls on one client
//!   must not overlap (one thread at a time, or the caller's own lock); it
//!   may move between threads.
//! - `shm_snapshot_units`: made by `shm_snapshot_recover`, released by
//!   `shm_snapshot_units_free`. Immutable: any thread, concurrently. It
//!   owns copies of the units' bytes, so it outlives changes of the region
//!   and even the client.
//! - `shm_snapshot_tx`: lent to the work function of
//!   `shm_snapshot_commit_with` for the duration of that call only, on
//!   that thread.

#![warn(missing_docs)]
// The types keep the names C programs see in the header.
#![allow(non_camel_case_types)]

mod client;
mod commit;
mod status;
mod units;

pub use client::*;
pub use commit::*;
pub use status::*;
pub use units::*;

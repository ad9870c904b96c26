//! Taking a generation of a live region into the store, and putting a
//! generation back into a region.
//!
//! A generation is the region's chunks (copied between Pre and Post) plus a
//! [`Meta`](crate::meta::Meta) blob (`STORE.md`, "The meta blob"): the units proven consistent
//! and the header counters. The copied unit table is never trusted on
//! restore: the table is rewritten from the meta, every slot empty but the
//! kept units.
mod image;
mod outcome;
mod snapshotter;
mod staging;

pub use image::{Restored, apply_meta, image_geometry, observe_file, restorable, restorable_head, restore};
pub use outcome::{ArenaScan, Outcome, RestoreError, SnapshotError, UnmarkedWrite};
pub use snapshotter::{Snapshotter, quiet_meta};
pub use staging::STAGING_BYTES;

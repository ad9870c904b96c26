//! The on-disk snapshot store: generations of a region, each a delta of
//! changed pages appended to a segment (or a full image in a base file)
//! plus a meta blob, made durable by group commit, verified on load,
//! checkpointed by bases built in the background, pruned by retention.
//! The store carries the meta blob without looking inside; its format
//! belongs to [`crate::meta`].
//!
//! `STORE.md` beside this crate specifies the file format byte by byte and
//! argues, step by step, why a crash at any instant leaves a store that
//! opens to a verified generation; [`format`](mod@format) is the format's only
//! definition in code.

mod background;
mod check;
mod damage;
mod error;
mod fault;
pub mod format;
mod hashes;
mod io;
mod load;
mod lock;
mod names;
mod open;
mod paged;
mod places;
mod prune;
mod read;
mod scan;
mod sync;
mod write;
mod writer;

pub use check::{Checked, Condition};
pub use damage::{Cause, Damage, Numbers};
pub use error::StoreError;
pub use fault::{FaultPlan, Faults, FaultyIo, IoOp};
pub use format::{CHUNK_BYTES, MAX_REGION_LEN, PAGE_BYTES};
pub use io::{LockAttempt, ReadFile, RealIo, SeekRead, StoreFile, StoreIo};
pub use load::Loaded;
pub use lock::LOCK_FILE;
pub use open::{BASE_AFTER_BYTES, GenerationInfo, GenerationKind, Store, StoreOptions, Tail};
pub use places::{RecordPlace, RecordPlaces, base_file_name, segment_file_name};
pub use prune::{Pruned, Removed};
pub use sync::Synced;
pub use write::{GenerationTx, Persisted};

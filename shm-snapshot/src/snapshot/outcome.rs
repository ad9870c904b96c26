//! What a snapshot or a restore did, and why one failed.

use crate::error::RegionError;
use crate::layout::Geometry;
use crate::meta::{Meta, MetaError};
use crate::observe::Anomalies;
use crate::store::{Persisted, StoreError};

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The region could not be read as a region.
    #[error("region: {0}")]
    Region(RegionError),
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
    /// The meta built from the region's units does not decode against its
    /// geometry, so the generation could not be restored; nothing was
    /// written. The region's table is to blame, as for
    /// [`SnapshotError::Region`].
    #[error("region's units: {0}")]
    Meta(MetaError),
    /// Pages past the staging area's memory bound could not be written to
    /// (or read back from) the unnamed file in the store's directory that
    /// holds them; nothing was written to the store.
    #[error("staging the changed pages in a temporary file in {}: {why}", dir.display())]
    Staging {
        /// The store's directory.
        dir: std::path::PathBuf,
        /// What failed (part of the message, not a separate source).
        why: std::io::Error,
    },
    /// The store began a full generation where only the changed pages were
    /// staged; nothing was written, and the next snapshot copies every page.
    #[error(
        "the store needs a full generation; nothing was written, and the next snapshot copies every page"
    )]
    NeedsFull,
}

// Not `#[from]`: that would make the inner error a source as well as part
// of the message, and a chain printed whole would say it twice.
impl From<RegionError> for SnapshotError {
    fn from(e: RegionError) -> Self {
        SnapshotError::Region(e)
    }
}

impl From<StoreError> for SnapshotError {
    fn from(e: StoreError) -> Self {
        SnapshotError::Store(e)
    }
}

impl From<MetaError> for SnapshotError {
    fn from(e: MetaError) -> Self {
        SnapshotError::Meta(e)
    }
}

/// Why a generation could not be put into a region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The image is not a region, or writing the region failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The generation's meta blob cannot be applied to the image's geometry.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// What one snapshot attempt did.
#[derive(Debug)]
#[non_exhaustive]
// One value per snapshot, moved once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// A generation was persisted with these units.
    Persisted {
        /// What the store wrote.
        persisted: Persisted,
        /// Units kept.
        units: usize,
        /// What the observer found wrong and left out.
        anomalies: Anomalies,
        /// The meta persisted with it, to make a quiet region hold exactly
        /// this generation with [`apply_meta`](super::apply_meta).
        meta: Meta,
        /// The region's geometry.
        geometry: Geometry,
        /// The client's commit count read just before Pre, when the newest
        /// unit valid at Pre was kept: every commit up to it is durable now.
        covers: Option<u64>,
        /// Bytes offered to the store (copied from the region and hashed).
        bytes_scanned: u64,
    },
    /// A generation was taken into memory ([`Snapshotter::stage`](super::Snapshotter::stage)) and
    /// waits for [`Snapshotter::persist_staged`](super::Snapshotter::persist_staged).
    Staged {
        /// Units kept.
        units: usize,
        /// What the observer found wrong and left out.
        anomalies: Anomalies,
        /// The meta it will be persisted with, to make a quiet region hold
        /// exactly this generation with [`apply_meta`](super::apply_meta).
        meta: Meta,
        /// The region's geometry.
        geometry: Geometry,
    },
    /// The units proven are exactly those of the generation last persisted
    /// or staged: nothing new to persist, and nothing was.
    Unchanged {
        /// What the observer found wrong and left out.
        anomalies: Anomalies,
        /// The meta of what was proven (the same units), to make a quiet
        /// region hold exactly them with [`apply_meta`](super::apply_meta).
        meta: Meta,
        /// The region's geometry.
        geometry: Geometry,
    },
    /// No unit was proven consistent: nothing was written and the previous
    /// generation stands.
    NoConsistentUnit {
        /// What the observer found wrong.
        anomalies: Anomalies,
        /// Units valid at Pre; non-zero means every one of them changed
        /// during the copy (a starved attempt), or, when
        /// `anomalies.broken_chain` is non-zero, that the chain rule dropped
        /// the ones that did not.
        pre_units: usize,
    },
}

/// How a snapshot finds the arena chunks that changed. What each mode
/// relies on from the program is FORMAT.md's "The marking rule".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArenaScan {
    /// Follow the program's write counters once it has moved any; while it
    /// has moved none, compare every arena chunk. Safe for a program that
    /// marks every arena write and for one that never marks any.
    #[default]
    Auto,
    /// Only the chunks whose write counters moved. Safe only for a program
    /// that marks every arena write.
    Hints,
    /// Compare every arena chunk every time. Safe for any program.
    Hash,
    /// For program authors: copy the chunks whose counters moved and
    /// compare every other chunk, as `Hash` does (so the generations are
    /// right whatever the program does), and report the first chunk that
    /// changed while its counter stayed put across a later commit of a
    /// program that marks writes ([`UnmarkedWrite`]): the write `Auto` and
    /// `Hints` would have lost.
    Check,
}

/// An arena write the program did not mark, found by [`ArenaScan::Check`]:
/// the bytes of `chunk` changed while its write counter stayed at
/// `counter`, and the program then published a newer unit (by which time
/// the marking rule says the write must have been marked) without moving
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmarkedWrite {
    /// The arena chunk (its index from the arena's start).
    pub chunk: u64,
    /// The chunk's first byte, as an arena offset.
    pub arena_offset: u64,
    /// The chunk's length in bytes.
    pub len: u64,
    /// The write counter that did not move.
    pub counter: u64,
    /// The first generation persisted after the check found it, which
    /// holds the unmarked bytes (the check copied them).
    pub generation: u64,
}

impl std::fmt::Display for UnmarkedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unmarked arena write: chunk {} (arena bytes {}..{}) changed while its write counter stayed at {} across a later commit; found by generation {} (--arena-scan=auto or hints would have lost it)",
            self.chunk,
            self.arena_offset,
            self.arena_offset + self.len,
            self.counter,
            self.generation
        )
    }
}

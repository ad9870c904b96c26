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

/// How a snapshot finds the arena chunks that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArenaScan {
    /// Follow the program's write counters once it has moved any; while it
    /// has moved none, hash every arena chunk.
    #[default]
    Auto,
    /// Only the chunks whose write counters moved.
    Hints,
    /// Hash every arena chunk every time.
    Hash,
}

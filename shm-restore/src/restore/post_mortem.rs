//! After a death: the program's group is gone, so every valid unit in the
//! region is consistent. They are persisted as a generation and the region
//! is made to hold exactly it; when there is nothing to persist, the
//! region gets what the store holds.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use shm_snapshot::snapshot::{self, Outcome, SnapshotError};
use tracing::{error, info, warn};

use super::ladder::{self, OnDamage, When};
use crate::region::HostRegion;
use crate::snapshotter::Shared;

/// What a post-mortem left in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Exactly this generation, just persisted.
    Persisted(u64),
    /// What restoring the newest generation gave (or a blank region).
    Restored,
    /// The region as the program left it, ahead of the store: persisting
    /// its units failed.
    Ahead,
}

/// Takes the post-mortem generation of the quiet region (the snapshot
/// thread must be paused: `shared` is its state).
pub fn post_mortem(shared: &mut Shared, region: &HostRegion, on_damage: OnDamage) -> Result<Left> {
    let started = Instant::now();
    let restore = |shared: &mut Shared| {
        ladder::restore(shared, region, on_damage, When::AfterDeath).map(|()| Left::Restored)
    };
    let taken = match snapshot::observe_file(region.file()) {
        Ok(Some(observer)) => shared.snapshotter.take(&observer, &mut shared.store),
        Ok(None) => {
            info!("the program never laid out the region: nothing to persist");
            return restore(shared);
        }
        Err(e) => Err(e.into()),
    };
    if let Ok(outcome) = &taken {
        shared.stats.persisted(outcome);
    }
    match taken {
        Ok(Outcome::Persisted {
            persisted,
            units,
            anomalies,
            meta,
            geometry,
            ..
        }) => {
            info!(
                generation = persisted.number,
                units,
                bytes_written = persisted.bytes_written,
                base = persisted.base,
                ms = started.elapsed().as_millis() as u64,
                "generation persisted"
            );
            if !anomalies.is_clean() {
                warn!(
                    ?anomalies,
                    "the region's unit table had corrupt entries; they were not persisted"
                );
            }
            snapshot::apply_meta(region.file(), &geometry, &meta)
                .context("making the region hold the persisted generation")?;
            Ok(Left::Persisted(persisted.number))
        }
        Ok(Outcome::NoConsistentUnit { anomalies, .. }) => {
            if !anomalies.is_clean() {
                warn!(?anomalies, "the region's unit table had corrupt entries");
            }
            info!("no committed unit in the region: nothing new to persist");
            restore(shared)
        }
        Ok(other) => bail!("unexpected snapshot outcome {other:?}"),
        Err(SnapshotError::Region(e)) => {
            warn!("the region is not usable ({e}); restoring the newest generation");
            restore(shared)
        }
        Err(SnapshotError::Meta(e)) => {
            warn!("the region is not usable ({e}); restoring the newest generation");
            restore(shared)
        }
        Err(e @ SnapshotError::Store(_)) => {
            // The region still holds every committed unit; the program
            // recovers them from memory, and the store keeps its last
            // good generation.
            error!("could not persist a generation: {e}; the region is kept as it is");
            Ok(Left::Ahead)
        }
        Err(e) => Err(e.into()),
    }
}

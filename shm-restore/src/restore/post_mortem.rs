//! After a death: the program's group is gone, so every valid unit in the
//! region is consistent. They are taken as a generation and the region is
//! made to hold exactly it; when there is nothing to persist, the region
//! gets what the store holds.
//!
//! The generation is taken into the snapshotter's staging area (memory
//! copies only, past 16 MiB a file's page cache) and, unless the caller needs it on disk first, persisted by the
//! snapshot thread once the next run has started: the region already holds
//! exactly what the program needs, so the disk is off the relaunch's path.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use shm_snapshot::Anomalies;
use shm_snapshot::snapshot::{self, Outcome, SnapshotError};
use tracing::{error, info, warn};

use super::ladder::{self, OnDamage, When};
use crate::region::HostRegion;
use crate::snapshotter::Shared;

/// When the post-mortem generation is written to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Before the post-mortem returns.
    Now,
    /// By the snapshot thread, first thing when it follows the next run
    /// (or by the supervisor's shutdown).
    Later,
}

/// What a post-mortem left in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Exactly this generation, just persisted.
    Persisted(u64),
    /// Exactly the generation in the staging area, persisted later.
    Staged,
    /// Exactly the units of the generation persisted last (this one, if the
    /// store knows it): nothing new to persist.
    Unchanged(Option<u64>),
    /// What restoring the newest generation gave (or a blank region).
    Restored,
    /// The region as the program left it, ahead of the store: persisting
    /// its units failed.
    Ahead,
}

/// Takes the post-mortem generation of the quiet region (the snapshot
/// thread must be paused: `shared` is its state).
pub fn post_mortem(
    shared: &mut Shared,
    region: &HostRegion,
    on_damage: OnDamage,
    persist: Persist,
) -> Result<Left> {
    let started = Instant::now();
    // A generation the last post-mortem took and the snapshot thread has
    // not persisted yet (the program died again first) goes to the store
    // before anything else: the next window's copies would join it in the
    // staging area, and a restore from disk must find it.
    shared.persist_staged();
    let restore = |shared: &mut Shared| {
        ladder::restore(shared, region, on_damage, When::AfterDeath).map(|()| Left::Restored)
    };
    let taken = match snapshot::observe_file(region.file()) {
        Ok(Some(observer)) => match persist {
            Persist::Now => shared.snapshotter.take(&observer, &mut shared.store),
            Persist::Later => shared.snapshotter.stage(&observer, &mut shared.store),
        },
        Ok(None) => {
            info!("the program never laid out the region: nothing to persist");
            return restore(shared);
        }
        Err(e) => Err(e.into()),
    };
    if let Ok(outcome) = &taken {
        shared.stats.persisted(outcome);
    }
    // What the region is to hold exactly, and what that leaves.
    let (left, anomalies, meta, geometry) = match taken {
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
            (Left::Persisted(persisted.number), anomalies, meta, geometry)
        }
        Ok(Outcome::Staged {
            units,
            anomalies,
            meta,
            geometry,
        }) => {
            info!(
                units,
                ms = started.elapsed().as_millis() as u64,
                "generation taken; it is persisted once the program runs again"
            );
            (Left::Staged, anomalies, meta, geometry)
        }
        Ok(Outcome::Unchanged {
            anomalies,
            meta,
            geometry,
        }) => {
            let current = shared.store.current_generation();
            info!(
                generation = current,
                "nothing committed since the last generation: nothing new to persist"
            );
            (Left::Unchanged(current), anomalies, meta, geometry)
        }
        Ok(Outcome::NoConsistentUnit { anomalies, .. }) => {
            if !anomalies.is_clean() {
                warn!(?anomalies, "the region's unit table had corrupt entries");
            }
            info!("no committed unit in the region: nothing new to persist");
            return restore(shared);
        }
        Ok(other) => bail!("unexpected snapshot outcome {other:?}"),
        Err(SnapshotError::Region(e)) => {
            warn!("the region is not usable ({e}); restoring the newest generation");
            return restore(shared);
        }
        Err(SnapshotError::Meta(e)) => {
            warn!("the region is not usable ({e}); restoring the newest generation");
            return restore(shared);
        }
        Err(e @ (SnapshotError::Store(_) | SnapshotError::Staging { .. } | SnapshotError::NeedsFull)) => {
            // The region still holds every committed unit; the program
            // recovers them from memory, and the store keeps its last
            // good generation.
            error!("could not persist a generation: {e}; the region is kept as it is");
            return Ok(Left::Ahead);
        }
        Err(e) => return Err(e.into()),
    };
    table_anomalies(&anomalies);
    snapshot::apply_meta(region.file(), &geometry, &meta)
        .context("making the region hold exactly the units it proves")?;
    Ok(left)
}

fn table_anomalies(anomalies: &Anomalies) {
    if !anomalies.is_clean() {
        warn!(
            ?anomalies,
            "the region's unit table had corrupt entries; they were not persisted"
        );
    }
}

/// The post-mortem while the snapshot thread is busy writing a generation
/// (a base of a large region takes seconds): the region is made to hold
/// exactly the units it proves, without the snapshotter, so the program
/// can start again at once; the units reach the store with the thread's
/// next generation, and until then the region is ahead of the store
/// ([`Left::Ahead`]). `None` when the region proves no unit or cannot be
/// read: that case needs the store, so the caller waits for it.
pub fn post_mortem_while_busy(region: &HostRegion) -> Result<Option<Left>> {
    let Ok(Some(observer)) = snapshot::observe_file(region.file()) else {
        return Ok(None);
    };
    let Ok((Some(meta), anomalies)) = snapshot::quiet_meta(&observer) else {
        return Ok(None);
    };
    table_anomalies(&anomalies);
    snapshot::apply_meta(region.file(), observer.geometry(), &meta)
        .context("making the region hold the units it proves")?;
    info!(
        units = meta.units.len(),
        "the snapshot thread is writing a generation: relaunching now; these units reach the store with its next one"
    );
    Ok(Some(Left::Ahead))
}

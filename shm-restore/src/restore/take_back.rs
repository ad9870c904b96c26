//! Taking back a region a service manager kept in its file descriptor
//! store while the supervisor restarted: trusted only if its content
//! verifies and continues the store's history; otherwise the store's newest
//! restorable generation goes into a fresh region, as at any start.

use std::fs::File;

use anyhow::Result;
use shm_snapshot::Observer;
use shm_snapshot::layout::{Geometry, UnitRef};
use shm_snapshot::restore::{Generation, Restorable};
use shm_snapshot::snapshot::{self, Outcome};
use tracing::{info, warn};

use super::ladder::{self, OnDamage};
use crate::memory::{self, Refusal};
use crate::region::{HostRegion, human};
use crate::snapshotter::Shared;

/// Takes back a region systemd kept in its file descriptor store, or, if
/// it does not verify, restores the newest generation on disk into a fresh
/// region. Returns the region and whether the handed-back one was taken.
///
/// Trusted only if: a memfd sealed as [`HostRegion::create`] seals one, of
/// `--size` bytes; its header verifies; every valid unit passes the slot
/// checks and the chain rule (nothing corrupt); at least one unit; and it
/// descends from the store's newest generation that restores (see
/// [`descends`]). Its old program is gone by now (the recorded group was
/// killed; systemd kills the unit's cgroup), so every valid unit is
/// consistent. Units newer than the store's are then persisted as a
/// generation, as after a death, and the region is made to hold exactly it.
///
/// The store is read as a normal start reads it: generations that verify
/// but do not restore are skipped. When generations exist but none
/// verifies, a region that verifies on its own is taken back (the disk has
/// nothing usable that it could contradict, and the region is the only
/// state left); the damaged generations stay in place.
///
/// A region that is not trusted is left alone (whoever else holds it may
/// still write it) and a fresh one takes its place.
pub fn take_back(
    shared: &mut Shared,
    file: File,
    size: u64,
    on_damage: OnDamage,
) -> Result<(HostRegion, bool)> {
    match adopt(shared, file, size) {
        Ok(region) => Ok((region, true)),
        Err(Refused::Store(e)) => Err(e),
        Err(Refused::Region(why)) => {
            warn!(
                "the region in systemd's file descriptor store is not taken back: {why}; restoring the newest generation on disk"
            );
            // The handed-back region still holds its memory (systemd
            // keeps it) while this one is made: the check counts that.
            let room = memory::ensure_room(size, shared.store.dir()).map_err(Refusal::of_size_flag)?;
            let region = ladder::restore_into_new(shared, room, on_damage)?;
            Ok((region, false))
        }
    }
}

enum Refused {
    /// The region does not verify: why.
    Region(String),
    /// The store cannot say what it holds.
    Store(anyhow::Error),
}

fn adopt(shared: &mut Shared, file: File, size: u64) -> Result<HostRegion, Refused> {
    let region = HostRegion::adopt(file, size).map_err(Refused::Region)?;
    let observer = match snapshot::observe_file(region.file()) {
        Ok(Some(observer)) => observer,
        Ok(None) => return Err(Refused::Region("the program never laid it out".into())),
        Err(e) => return Err(Refused::Region(format!("its header does not verify: {e}"))),
    };
    let (mut pre, mut kept) = (Vec::new(), Vec::new());
    let anomalies = observer.pre(&mut pre);
    let broken = observer.post(&pre, &mut kept);
    if !anomalies.is_clean() || !broken.is_clean() {
        return Err(Refused::Region(format!(
            "its unit table has {} corrupt slots and {} units out of chain",
            anomalies.corrupt_slots, broken.broken_chain
        )));
    }
    let Some(newest) = kept.last().map(|u| u.seq()) else {
        return Err(Refused::Region("it holds no committed unit".into()));
    };
    let restorable = ladder::newest(shared, region.len()).map_err(Refused::Store)?;
    let stored = match restorable {
        Restorable::Empty => None,
        Restorable::Damaged(damage) => {
            ladder::report(&damage, "damaged generation");
            warn!(
                tried = damage.generations(),
                "no generation on disk verifies; the region, which does, is taken back and the damaged generations stay in place"
            );
            None
        }
        Restorable::OtherSize {
            number, region_len, ..
        } => {
            // The restore that follows stops on it, as a normal start does.
            return Err(Refused::Region(format!(
                "generation {number} holds a region of {} but --size is {}",
                human(region_len),
                human(size)
            )));
        }
        Restorable::Generation(generation) => {
            descends(&observer, &kept, &generation).map_err(Refused::Region)?;
            Some(generation.meta.units.last().map_or(0, |u| u.seq()))
        }
    };
    shared.snapshotter.forget();
    if stored == Some(newest) {
        info!(
            units = kept.len(),
            "region taken back from the fd store (the store already holds its newest unit)"
        );
        return Ok(region);
    }
    match shared.snapshotter.take(&observer, &mut shared.store) {
        Ok(outcome @ Outcome::Persisted { .. }) => {
            shared.stats.persisted(&outcome);
            let Outcome::Persisted {
                persisted,
                units,
                meta,
                geometry,
                ..
            } = outcome
            else {
                unreachable!("matched above")
            };
            snapshot::apply_meta(region.file(), &geometry, &meta)
                .map_err(|e| Refused::Region(format!("it cannot be rewritten: {e}")))?;
            info!(
                generation = persisted.number,
                units, "region taken back from the fd store; its newer units persisted"
            );
        }
        Ok(other) => {
            return Err(Refused::Region(format!("it could not be snapshotted: {other:?}")));
        }
        Err(
            e @ (snapshot::SnapshotError::Store(_)
            | snapshot::SnapshotError::Staging { .. }
            | snapshot::SnapshotError::NeedsFull),
        ) => {
            // The region holds the state; the store keeps its last good
            // generation and catches up with the next snapshot.
            warn!(
                units = kept.len(),
                "region taken back from the fd store, but its units could not be persisted: {e}"
            );
        }
        Err(e) => return Err(Refused::Region(format!("it could not be snapshotted: {e}"))),
    }
    Ok(region)
}

/// Whether the region's history continues the store's newest generation
/// `stored`, rather than some other run's: a region with as many units or
/// more may still hold a different history (another supervisor ran on the
/// store while this region waited in the fd store), and taking it back
/// would replace that run's persisted units. Sequence numbers alone cannot
/// tell; the units can.
///
/// - Same layout (geometry) as the generation's image.
/// - Every unit of the generation that the region's ring still holds (same
///   sequence number) has the same offset, length and bytes as in the
///   generation's image.
/// - The region holds the generation's newest unit: the one the region's
///   newer units, if any, were written after.
///
/// A region whose program moved on so far that the generation's newest
/// unit has left its ring (its slot or ring bytes reused) is refused too:
/// nothing left in it shows that it descends from the generation, and the
/// disk is a sound fallback. With continuous snapshots the store trails the
/// region by far less than a ring.
fn descends(observer: &Observer, kept: &[UnitRef], stored: &Generation) -> Result<(), String> {
    let number = stored.number;
    if *observer.geometry() != stored.geometry {
        return Err(format!("its layout differs from generation {number}'s"));
    }
    let Some(stored_newest) = stored.meta.units.last() else {
        return Ok(());
    };
    let region_newest = kept.last().map_or(0, |u| u.seq());
    if region_newest < stored_newest.seq() {
        return Err(format!(
            "it is older than the store (unit {region_newest}; generation {number} has unit {})",
            stored_newest.seq()
        ));
    }
    for unit in &stored.meta.units {
        let Some(ours) = kept.iter().find(|u| u.seq() == unit.seq()) else {
            continue;
        };
        let same = ours.offset == unit.offset
            && ours.len == unit.len
            && image_unit(&stored.image, &stored.geometry, unit)
                .is_some_and(|b| b == observer.copy_unit(ours));
        if !same {
            return Err(format!(
                "its unit {} differs from generation {number}'s: another run wrote the store meanwhile",
                unit.seq()
            ));
        }
    }
    if !kept.iter().any(|u| u.seq() == stored_newest.seq()) {
        return Err(format!(
            "generation {number}'s newest unit {} is no longer in its ring, so nothing shows it continues that generation",
            stored_newest.seq()
        ));
    }
    Ok(())
}

/// The bytes of `unit` in a generation's image, from the ring (wrapping);
/// `None` if they do not lie inside the image.
fn image_unit(image: &[u8], g: &Geometry, unit: &UnitRef) -> Option<Vec<u8>> {
    if unit.len > g.ring_bytes {
        return None;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(unit.len).ok()?);
    for (at, len) in g.ring_spans(unit.offset, unit.len) {
        let at = usize::try_from(at).ok()?;
        bytes.extend_from_slice(image.get(at..at.checked_add(usize::try_from(len).ok()?)?)?);
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_that_wraps_the_ring_is_read_from_both_ends_of_the_image() {
        let g = Geometry::derive(4 << 20, 256, 1 << 20, 64 << 10).unwrap();
        let mut image = vec![0u8; g.region_len as usize];
        let end = (g.ring_offset + g.ring_bytes) as usize;
        image[end - 8..end].copy_from_slice(b"unit-12-");
        image[g.ring_offset as usize..g.ring_offset as usize + 4].copy_from_slice(b"tail");
        let unit = UnitRef {
            slot: 3,
            tag: shm_snapshot::layout::Tag(3 << 2),
            // The third lap of the stream, 8 bytes before the ring's end.
            offset: 3 * g.ring_bytes - 8,
            len: 12,
        };
        assert_eq!(
            image_unit(&image, &g, &unit).as_deref(),
            Some(&b"unit-12-tail"[..])
        );
        let short = &image[..end - 1];
        assert_eq!(image_unit(short, &g, &unit), None, "outside the image");
    }
}

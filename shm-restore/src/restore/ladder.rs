//! Putting what the store holds into the region: the newest restorable
//! generation (the library decides which, [`restore::newest_restorable`]),
//! a blank region for an empty store, and for a store with nothing
//! restorable, what the damage policy says.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use shm_snapshot::restore::{self, Restorable};
use shm_snapshot::store::{Damage, Numbers, Store};
use tracing::{info, warn};

use crate::region::{HostRegion, human};
use crate::snapshotter::Shared;

/// What to do when generations exist but none of them restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDamage {
    /// Stop with an error, having changed nothing.
    Stop,
    /// Start the program on a blank region; the damaged files stay (the
    /// next generation is a base numbered after them).
    /// `--start-empty-if-damaged`.
    StartEmpty,
}

/// When a restore happens, for its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The supervisor is starting.
    AtStart,
    /// The program died and the region is not to be kept.
    AfterDeath,
}

/// Reads what a supervisor would restore into `region`, reporting by cause
/// every newer generation skipped on the way. The region is not touched.
pub fn newest(shared: &mut Shared, region: &HostRegion) -> Result<Restorable> {
    // What the shadow holds for the store goes there first: the restore
    // must see it, and the shadow is about to be forgotten.
    shared.persist_staged();
    // The region is about to be rewritten: the next snapshot compares it all.
    shared.snapshotter.forget();
    let restorable = restore::newest_restorable(&mut shared.store, Some(region.len()))?;
    if let Restorable::Generation(restore::Generation { skipped, .. })
    | Restorable::OtherSize { skipped, .. } = &restorable
    {
        report(skipped, "skipping a damaged generation");
    }
    Ok(restorable)
}

/// Puts `restorable` into `region`: the generation, a blank region for an
/// empty store, and for a damaged one what `on_damage` says. An image of
/// another size stops with an error naming `--size`.
pub fn apply(
    shared: &mut Shared,
    restorable: Restorable,
    region: &HostRegion,
    on_damage: OnDamage,
    when: When,
) -> Result<()> {
    let started = Instant::now();
    let dir = shared.store.dir().to_owned();
    match restorable {
        Restorable::Empty => {
            if when == When::AtStart {
                info!(dir = %dir.display(), "empty store: the program starts on a blank region");
            }
            region.clear()
        }
        Restorable::OtherSize { region_len, .. } => bail!(
            "the newest generation holds a region of {} but --size is {}; run with --size={region_len}",
            human(region_len),
            human(region.len()),
        ),
        Restorable::Generation(generation) => {
            let restored = generation
                .write_to(region.file())
                .with_context(|| format!("restoring generation {}", generation.number))?;
            shared.snapshotter.restored(&generation.meta);
            info!(
                generation = restored.number,
                units = restored.units,
                bytes = restored.bytes,
                ms = started.elapsed().as_millis() as u64,
                "generation restored"
            );
            Ok(())
        }
        Restorable::Damaged(damage) => {
            report(&damage, "damaged generation");
            let numbers = Numbers(&damage.numbers()).to_string();
            if on_damage == OnDamage::Stop {
                bail!(
                    "no generation in {} verifies ({} damaged: {numbers}); nothing was changed. Check the store with `shm-restore verify {}`, or pass --start-empty-if-damaged to start the program on a blank region",
                    dir.display(),
                    damage.generations(),
                    dir.display(),
                );
            }
            warn!(
                dir = %dir.display(),
                damaged = numbers,
                "no generation verifies: the program starts on a blank region (--start-empty-if-damaged); the damaged generations stay in place"
            );
            region.clear()
        }
    }
}

/// [`newest`] then [`apply`]: the restore at start, and after a death
/// when the region is not to be kept.
pub fn restore(shared: &mut Shared, region: &HostRegion, on_damage: OnDamage, when: When) -> Result<()> {
    let restorable = newest(shared, region)?;
    apply(shared, restorable, region, on_damage, when)
}

/// One warning per cause of damage, each naming the generation whose
/// problem it shows.
pub fn report(damage: &Damage, what: &str) {
    for cause in &damage.causes {
        warn!(generation = cause.generation, "{what}: {cause}");
    }
}

/// One warning per segment that stops being readable before its end
/// (STORE.md, "A segment"): an append a crash interrupted, or damage in a
/// record's header or structure. The records there and after it in that
/// segment are not generations of the store, so no skipped generation
/// names them; this is where they are said. Called once, when the store is
/// opened: the supervisor never appends to a segment it did not make.
pub fn report_tails(store: &Store) {
    for tail in store.tails() {
        let after = match (tail.after, tail.offset) {
            (Some(n), _) => format!("after generation {n}"),
            (None, 0) => "from its header on".to_owned(),
            (None, _) => "from its first record on".to_owned(),
        };
        warn!(
            "segment {} ends in {} that do not read, {after}: an append a crash interrupted, or damage; nothing from there on is restored ({})",
            tail.path.display(),
            human(tail.bytes),
            tail.why
        );
    }
}

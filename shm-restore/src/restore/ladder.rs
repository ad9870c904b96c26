//! Putting what the store holds into the region: the newest restorable
//! generation (the library decides which, [`restore::newest_restorable`]),
//! a blank region for an empty store, and for a store with nothing
//! restorable, what the damage policy says.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use shm_snapshot::restore::{self, Restorable};
use shm_snapshot::store::{Damage, Numbers, Store};
use tracing::{info, warn};

use crate::memory::Room;
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
pub fn newest(shared: &mut Shared, region_len: u64) -> Result<Restorable> {
    // A generation staged for the store goes there first: the restore must
    // see it, and the snapshotter is about to forget the region.
    shared.persist_staged();
    // The region is about to be rewritten: the next snapshot compares it all.
    shared.snapshotter.forget();
    let restorable = restore::newest_restorable(&mut shared.store, Some(region_len))?;
    if let Restorable::Generation(restore::Generation { skipped, .. })
    | Restorable::OtherSize { skipped, .. } = &restorable
    {
        report(skipped, "skipping a damaged generation");
    }
    if let Restorable::Generation(restore::Generation { damaged_bases, .. }) = &restorable {
        for (generation, e) in damaged_bases {
            warn!(
                generation,
                "a base file does not verify; its generation was read from the records it checkpoints: {e}"
            );
        }
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
            match when {
                // A region just made is blank already.
                When::AtStart => {
                    info!(dir = %dir.display(), "empty store: the program starts on a blank region")
                }
                When::AfterDeath => region.clear()?,
            }
            shared.snapshotter.blank(region.len());
            Ok(())
        }
        Restorable::OtherSize { region_len, .. } => bail!(
            "the newest generation holds a region of {} but --size is {}; run with --size={region_len}",
            human(region_len),
            human(region.len()),
        ),
        Restorable::Generation(generation) => {
            // At start the region was just made: all zero, so only the
            // pages with data are written. After a death it holds the dead
            // program's bytes, compared page by page.
            let restored = match when {
                When::AtStart => generation.write_to_blank(region.file()),
                When::AfterDeath => generation.write_to(region.file()),
            }
            .with_context(|| format!("restoring generation {}", generation.number))?;
            // The region holds the image now: the snapshotter keeps a hash
            // of each page, and the image is let go.
            shared
                .snapshotter
                .restored_image(&generation.meta, &generation.image, &generation.data_pages);
            drop(generation);
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
            if when == When::AfterDeath {
                region.clear()?;
            }
            shared.snapshotter.blank(region.len());
            Ok(())
        }
    }
}

/// [`newest`] then [`apply`]: the restore after a death when the region
/// is not to be kept.
pub fn restore(shared: &mut Shared, region: &HostRegion, on_damage: OnDamage, when: When) -> Result<()> {
    let restorable = newest(shared, region.len())?;
    apply(shared, restorable, region, on_damage, when)
}

/// The restore at start: makes the region of `room` and reads the store at
/// the same time (reserving the region's memory costs about as much as
/// reading a large store, and the two use different cores), then puts what
/// the store holds into the new, blank region.
pub fn restore_into_new(shared: &mut Shared, room: Room, on_damage: OnDamage) -> Result<HostRegion> {
    let len = room.len();
    let (region, restorable) = std::thread::scope(|scope| {
        let made = std::thread::Builder::new()
            .name("region".to_owned())
            .spawn_scoped(scope, move || HostRegion::create(room));
        match made {
            Ok(handle) => {
                let restorable = newest(shared, len);
                let region = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (region, restorable)
            }
            // No thread to be had: one after the other.
            Err(e) => (
                Err(e).context("starting a thread to make the region"),
                Ok(Restorable::Empty),
            ),
        }
    });
    let region = region?;
    apply(shared, restorable?, &region, on_damage, When::AtStart)?;
    Ok(region)
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

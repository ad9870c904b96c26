//! `shm-restore prune DIR --keep N`: old generations go, and what only
//! they need; the newest generation a supervisor would restore (it
//! verifies and holds a usable region) and its chain stay whatever N says. Takes the store's lock.

use std::process::ExitCode;

use anyhow::{Context, Result};
use shm_snapshot::restore;
use shm_snapshot::store::StoreOptions;

use super::args::Prune;
use super::show::{count, human};
use super::store::{check_is_store, open_locked};

/// Runs `prune`.
pub fn run(a: &Prune) -> Result<ExitCode> {
    check_is_store(&a.dir)?;
    let keep = usize::try_from(a.keep).unwrap_or(usize::MAX);
    let options = StoreOptions {
        keep,
        ..StoreOptions::default()
    };
    let mut store = open_locked(&a.dir, options)?;
    for temp in store.removed_temp_files() {
        println!("removed stale temporary file {}", temp.display());
    }
    // Kept whatever --keep says: the generation a supervisor would restore,
    // judged as it judges.
    let pruned = store
        .prune_to_with(keep, restore::acceptance(None))
        .with_context(|| format!("cannot prune {} (nothing was removed)", a.dir.display()))?;
    for r in &pruned.removed {
        println!(
            "removed {} ({}, {})",
            r.path.display(),
            count(r.generations, "generation"),
            human(r.bytes)
        );
    }
    let left = store.generations().len();
    let newest = pruned
        .newest_restorable
        .map_or_else(|| "none".to_owned(), |n| n.to_string());
    println!(
        "removed {}, freed {}; {left} left, newest verified: {newest}",
        count(pruned.generations_removed(), "generation"),
        human(pruned.bytes_freed())
    );
    for e in &pruned.errors {
        eprintln!("shm-restore: {e}");
    }
    Ok(if pruned.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

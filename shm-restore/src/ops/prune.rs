//! `shm-restore prune DIR --keep N`: the store's files that neither the
//! newest N generations nor the newest generation a supervisor would
//! restore (it verifies and holds a usable region) need for their chains
//! go, whole: a segment, a base file, a version 2 file. Takes the store's
//! lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use shm_snapshot::restore;
use shm_snapshot::store::{Numbers, StoreOptions};

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
    // Each generation under the file `inspect` shows it in: its base file
    // if it has one, else the segment holding its record.
    let before = store.generations();
    let mut held: BTreeMap<PathBuf, Vec<u64>> = BTreeMap::new();
    for g in &before {
        held.entry(g.path.clone()).or_default().push(g.number);
    }
    // Kept whatever --keep says: the generation a supervisor would restore,
    // judged as it judges.
    let pruned = store
        .prune_to_with(keep, restore::acceptance(None))
        .with_context(|| format!("cannot prune {} (nothing was removed)", a.dir.display()))?;
    for r in &pruned.removed {
        let mut numbers = held.remove(&r.path).unwrap_or_default();
        numbers.reverse();
        let what = match numbers.len() {
            0 => "no generation".to_owned(),
            1 => format!("generation {}", numbers[0]),
            _ => format!("generations {}", Numbers(&numbers)),
        };
        println!("removed {} ({what}, {})", r.path.display(), human(r.bytes));
    }
    let after: BTreeSet<u64> = store.generations().iter().map(|g| g.number).collect();
    let gone = before.iter().filter(|g| !after.contains(&g.number)).count();
    let newest = pruned
        .newest_restorable
        .map_or_else(|| "none".to_owned(), |n| n.to_string());
    println!(
        "removed {} in {}, freed {}; {} left, newest verified: {newest}",
        count(gone, "generation"),
        count(pruned.removed.len(), "file"),
        human(pruned.bytes_freed()),
        after.len()
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

//! Loading and checking generations for a read-only subcommand, on a store
//! a running supervisor may be pruning meanwhile: a load that failed
//! because files it listed vanished is repeated on a fresh listing, so is
//! a check that found damage while the store was being written, and the generation
//! a subcommand picks by default is the one a supervisor would restore.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use shm_snapshot::restore;
use shm_snapshot::store::{Checked, Condition, Loaded, Store, StoreError};

/// Loads tried before a failure is reported while generations keep
/// vanishing. A supervisor committing continuously prunes hundreds of
/// generations a second, so a listing can be stale before its newest
/// generation is opened; one that opens it is enough, since an open file
/// stays readable once unlinked. Ten misses in a row mean something other
/// than bad luck.
pub const TRIES: usize = 10;

/// Loads the newest generation a supervisor would restore, `None` when the
/// store holds none.
pub fn newest(store: &mut Store) -> Result<Option<Loaded>> {
    let mut attempt = 1;
    loop {
        match store.load_newest_with(restore::acceptance(None)) {
            Ok(loaded) => return Ok(loaded),
            Err(_) if attempt < TRIES && !store.vanished_since_scan().is_empty() => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a load of a generation the caller saw listed failed because the
/// load's own listing no longer holds it: a running supervisor pruned it
/// in between.
pub fn pruned_before_load(e: &StoreError) -> bool {
    matches!(e, StoreError::NoSuchGeneration { .. })
}

/// Loads generation `number`; if a running supervisor pruned it, says so.
pub fn generation(store: &mut Store, number: u64) -> Result<Loaded> {
    let mut attempt = 1;
    loop {
        let listed = store.generations().iter().any(|g| g.number == number);
        let failed = match store.load_generation(number) {
            Ok(loaded) => return Ok(loaded),
            Err(e) => e,
        };
        let gone = store.vanished_since_scan();
        if gone.contains(&number) || (listed && pruned_before_load(&failed)) {
            bail!("generation {number} was pruned by the running supervisor");
        }
        // A member of its chain vanished: the supervisor is pruning it.
        if gone.is_empty() || attempt == TRIES {
            return Err(failed.into());
        }
        attempt += 1;
    }
}

/// [`Store::check_all`], on a store a running supervisor may be pruning.
/// Retention removes whole files once a newer base makes them unnecessary,
/// and a check whose listing of the directory predates that base (a
/// listing is not one instant: files come and go while it is read) finds
/// the chains of generations that are kept broken. While the store is
/// being written, a check that found generations unusable is made again on
/// a fresh listing, until two in a row find the same ones ([`TRIES`] checks
/// at most): damage stays where it is, a race with retention does not
/// repeat itself.
pub fn check_all(store: &mut Store) -> Result<Vec<Checked>> {
    let mut last: Option<BTreeSet<u64>> = None;
    let mut attempt = 1;
    loop {
        let checked = store.check_all()?;
        let unusable: BTreeSet<u64> = checked
            .iter()
            .filter(|c| matches!(c.condition, Condition::Damaged(_) | Condition::BrokenChain(_)))
            .map(|c| c.number)
            .collect();
        if unusable.is_empty()
            || attempt == TRIES
            || last.as_ref() == Some(&unusable)
            || super::store::writer(store.dir()).is_none()
        {
            return Ok(checked);
        }
        last = Some(unusable);
        attempt += 1;
    }
}

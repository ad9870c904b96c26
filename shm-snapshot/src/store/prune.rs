//! Retention: which old generations go after a commit (STORE.md,
//! "Retention").

use std::collections::{BTreeMap, BTreeSet};

use super::error::StoreError;
use super::open::Store;

/// A generation file removed by pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Its number.
    pub number: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What [`Store::prune_to`] and [`Store::prune_to_with`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Pruned {
    /// The newest generation that verifies and passes the acceptance
    /// (with [`crate::restore::acceptance`]: the newest restorable one),
    /// which was kept with its chain.
    pub newest_restorable: Option<u64>,
    /// The generations removed, newest first.
    pub removed: Vec<Removed>,
    /// Files that could not be removed; they stay.
    pub errors: Vec<StoreError>,
}

impl Pruned {
    /// Bytes freed on disk by the removals.
    pub fn bytes_freed(&self) -> u64 {
        self.removed.iter().map(|g| g.bytes).sum()
    }
}

/// The generations to remove, newest first, given each generation's parent
/// (`None` for a base or a generation whose header did not verify): all but
/// the newest `keep`, the generations in `protect`, and every generation
/// their chains need.
pub(crate) fn doomed(parents: &BTreeMap<u64, Option<u64>>, keep: usize, protect: &[u64]) -> Vec<u64> {
    let mut kept: BTreeSet<u64> = parents.keys().rev().take(keep).copied().collect();
    kept.extend(protect.iter().copied());
    let mut todo: Vec<u64> = kept.iter().copied().collect();
    while let Some(n) = todo.pop() {
        if let Some(&Some(parent)) = parents.get(&n)
            && kept.insert(parent)
        {
            todo.push(parent);
        }
    }
    parents
        .keys()
        .rev()
        .copied()
        .filter(|n| !kept.contains(n))
        .collect()
}

impl Store {
    /// Removes the generations retention does not keep, newest first. The
    /// newest verified generation's chain is always kept. Returns how many
    /// were removed and the removals that failed.
    pub(crate) fn prune(&mut self) -> (usize, Vec<StoreError>) {
        let keep = self.options.keep;
        let (removed, errors) = self.prune_keeping(keep);
        (removed.len(), errors)
    }

    /// Keeps the newest `keep` generations (at least 1), the newest
    /// generation that verifies and every generation their chains need;
    /// removes the rest, newest first (STORE.md, "Retention").
    ///
    /// Finding the newest verified generation means loading it (reading its
    /// whole chain), so this fails, removing nothing, when generations exist
    /// but none verifies, and on a read-only store.
    pub fn prune_to(&mut self, keep: usize) -> Result<Pruned, StoreError> {
        self.prune_to_with(keep, |_, _| Ok(()))
    }

    /// [`Store::prune_to`], where the generation kept whatever `keep` says
    /// is the newest that verifies and passes `accept` (given its image and
    /// meta blob), found like [`Store::load_newest_with`] finds it. A caller
    /// that restores with an acceptance prunes with the same one: otherwise
    /// a newer generation that verifies but that it would refuse could be
    /// all that is left. Fails, removing nothing, when generations exist but
    /// none verifies and passes `accept`.
    pub fn prune_to_with(
        &mut self,
        keep: usize,
        accept: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<Pruned, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        if keep == 0 {
            return Err(StoreError::InvalidOption {
                name: "keep",
                value: 0,
                why: "at least one generation must be kept",
            });
        }
        // Loading makes the generation found the current one, whose chain
        // prune_keeping protects.
        let newest_restorable = self.load_newest_with(accept)?.map(|loaded| loaded.number);
        let (removed, errors) = self.prune_keeping(keep);
        Ok(Pruned {
            newest_restorable,
            removed,
            errors,
        })
    }

    fn prune_keeping(&mut self, keep: usize) -> (Vec<Removed>, Vec<StoreError>) {
        if self.read_only {
            return (Vec::new(), Vec::new());
        }
        let parents: BTreeMap<u64, Option<u64>> = self
            .entries
            .iter()
            .map(|(&n, e)| (n, e.header.filter(|h| !h.is_base()).map(|h| h.parent)))
            .collect();
        let protect = self.current.as_ref().map_or(&[][..], |c| &c.chain[..]);
        let doomed = doomed(&parents, keep, protect);
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for n in doomed {
            let Some(entry) = self.entries.get(&n) else {
                continue;
            };
            match self.io.remove(&entry.path) {
                Ok(()) => {
                    let bytes = entry.size;
                    self.entries.remove(&n);
                    removed.push(Removed { number: n, bytes });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.entries.remove(&n);
                }
                Err(e) => errors.push(StoreError::io("removing old generation file", &entry.path, e)),
            }
        }
        (removed, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generations 1..=10; bases at 1, 5, 9; every other one a delta on the
    /// one before.
    fn chains() -> BTreeMap<u64, Option<u64>> {
        (1..=10)
            .map(|n| (n, if (n - 1) % 4 == 0 { None } else { Some(n - 1) }))
            .collect()
    }

    #[test]
    fn keeps_the_newest_and_their_chains() {
        assert_eq!(doomed(&chains(), 3, &[10]), vec![4, 3, 2, 1]);
        assert_eq!(doomed(&chains(), 2, &[10]), vec![8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(doomed(&chains(), 1, &[10]), vec![8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn protected_chain_survives_whatever_keep_says() {
        // The newest verified is 7 (8..10 are newer but it is what loaded).
        assert_eq!(doomed(&chains(), 1, &[5, 6, 7]), vec![8, 4, 3, 2, 1]);
    }

    #[test]
    fn keeping_more_than_exist_removes_nothing() {
        assert!(doomed(&chains(), 100, &[]).is_empty());
    }

    #[test]
    fn unreadable_generations_keep_nothing_alive() {
        let mut p = chains();
        p.insert(10, None);
        // 10's header is unreadable: its chain (9) is not kept for it.
        assert_eq!(doomed(&p, 1, &[]), vec![9, 8, 7, 6, 5, 4, 3, 2, 1]);
    }
}

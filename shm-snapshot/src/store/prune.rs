//! Retention asked for: `prune_to` removes what retention lets go, now
//! (STORE.md, "Retention"). The writer's own retention is in `writer.rs`.

use std::path::PathBuf;

use super::error::StoreError;
use super::open::Store;

/// A file removed by [`Store::prune_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The file.
    pub path: PathBuf,
    /// The generations it held (listed by the last scan).
    pub generations: usize,
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
    /// The files removed, newest first.
    pub removed: Vec<Removed>,
    /// Files that could not be removed; they stay.
    pub errors: Vec<StoreError>,
}

impl Pruned {
    /// Bytes freed on disk by the removals.
    pub fn bytes_freed(&self) -> u64 {
        self.removed.iter().map(|g| g.bytes).sum()
    }

    /// Records of generations the removed files held (a generation whose
    /// base file stays, or whose record was in a removed segment and has a
    /// base file elsewhere, is counted though it is still restorable).
    pub fn generations_removed(&self) -> usize {
        self.removed.iter().map(|g| g.generations).sum()
    }
}

impl Store {
    /// Keeps the newest `keep` generations (at least 1), the newest
    /// generation that verifies, and every file their chains need; removes
    /// the rest, newest first, now (STORE.md, "Retention").
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
        // retention keeps.
        let newest_restorable = self.load_newest_with(accept)?.map(|loaded| loaded.number);
        let saved = self.options.keep;
        self.options.keep = keep;
        let doomed = self.doomed_files();
        self.options.keep = saved;
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for path in doomed {
            let bytes = self.io.open_read(&path).map_or(0, |f| f.len);
            let generations = self
                .entries
                .values()
                .filter(|e| [&e.full, &e.delta].into_iter().flatten().any(|p| p.path == path))
                .count();
            match self.io.remove(&path) {
                Ok(()) => {
                    removed.push(Removed {
                        path: path.clone(),
                        generations,
                        bytes,
                    });
                    self.forget_files(std::slice::from_ref(&path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.forget_files(std::slice::from_ref(&path));
                }
                Err(e) => errors.push(StoreError::io("removing old store file", &path, e)),
            }
        }
        Ok(Pruned {
            newest_restorable,
            removed,
            errors,
        })
    }
}

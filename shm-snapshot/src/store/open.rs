//! The store handle: options, opening (directory, lock, stale temporary
//! files), the scan of the generations present, and what it reports about
//! them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::error::StoreError;
use super::format::{self, Defect, Header};
use super::hashes::ImageHashes;
use super::io::{LockAttempt, RealIo, StoreIo};
use super::lock::LOCK_FILE;
use super::names::{self, Name};
use super::read::read_header;

/// How a [`Store`] keeps generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Generations to keep, at least 1 (default 8). Pruning keeps the newest
    /// `keep` and every older generation their chains need.
    pub keep: usize,
    /// A full base at least every `full_every` generations, at least 1
    /// (default 16, so a restore reads at most 16 files); 1 makes every
    /// generation a base.
    pub full_every: u32,
    /// Make each generation durable (fsync the file and the directory)
    /// before reporting it persisted (default true). Off, a power loss may
    /// lose the newest generations, though never the store's integrity.
    pub fsync: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            keep: 8,
            full_every: 16,
            fsync: true,
        }
    }
}

impl StoreOptions {
    fn check(&self) -> Result<(), StoreError> {
        if self.keep == 0 {
            return Err(StoreError::InvalidOption {
                name: "keep",
                value: 0,
                why: "at least one generation must be kept",
            });
        }
        if self.full_every == 0 {
            return Err(StoreError::InvalidOption {
                name: "full_every",
                value: 0,
                why: "it must be at least 1 (1 makes every generation a base)",
            });
        }
        Ok(())
    }
}

/// Whether a generation is a base or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationKind {
    /// A full image.
    Base,
    /// The chunks that changed since `parent`, in the chain starting at
    /// `base`.
    Delta {
        /// The base of its chain.
        base: u64,
        /// The generation it changes.
        parent: u64,
    },
}

/// A generation file present in the store, as its header describes it. The
/// header verified; the rest of the file is checked only when loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GenerationInfo {
    /// The generation's number.
    pub number: u64,
    /// Base or delta.
    pub kind: GenerationKind,
    /// The file's size in bytes.
    pub bytes: u64,
    /// The region's length in bytes.
    pub region_len: u64,
    /// When writing it began, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The file.
    pub path: PathBuf,
}

impl GenerationInfo {
    /// Whether it is a base.
    pub fn is_base(&self) -> bool {
        self.kind == GenerationKind::Base
    }

    /// The base of its chain (its own number for a base).
    pub fn base(&self) -> u64 {
        match self.kind {
            GenerationKind::Base => self.number,
            GenerationKind::Delta { base, .. } => base,
        }
    }
}

/// A generation file found in the directory.
pub(crate) struct Entry {
    pub path: PathBuf,
    /// Its size; 0 if it could not be opened.
    pub size: u64,
    /// Its header, if it verified.
    pub header: Option<Header>,
    /// Why its header did not verify.
    pub problem: Option<StoreError>,
}

impl Entry {
    /// What [`Store::generations`] reports of it; `None` if its header did
    /// not verify.
    pub(crate) fn info(&self, number: u64) -> Option<GenerationInfo> {
        let h = self.header?;
        Some(GenerationInfo {
            number,
            kind: if h.is_base() {
                GenerationKind::Base
            } else {
                GenerationKind::Delta {
                    base: h.base,
                    parent: h.parent,
                }
            },
            bytes: self.size,
            region_len: h.region_len,
            created_ms: h.created_ms,
            path: self.path.clone(),
        })
    }
}

/// The newest image the store has verified (loaded or committed): what the
/// next delta is written against.
pub(crate) struct Current {
    pub number: u64,
    pub region_len: u64,
    /// Its chain, base first, itself last.
    pub chain: Vec<u64>,
    /// Bytes on disk of the chain's deltas (the base excluded).
    pub delta_bytes: u64,
    /// BLAKE3 of each chunk and of each page of the image.
    pub hashes: ImageHashes,
}

/// A directory of generations, owned exclusively while this lives. See
/// `STORE.md` for the format and the crash argument.
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) options: StoreOptions,
    pub(crate) io: Box<dyn StoreIo>,
    /// Dropped last: the lock is held as long as anything else of the store.
    _lock: Box<dyn Send>,
    pub(crate) entries: BTreeMap<u64, Entry>,
    pub(crate) current: Option<Current>,
    /// The number the next generation gets.
    pub(crate) next_number: u64,
    /// Temporary files made by this store, for unique names.
    pub(crate) temp_seq: u64,
    pub(crate) last_skipped: Vec<(u64, StoreError)>,
    /// Opened by [`Store::open_read_only`]: no lock, no writes.
    pub(crate) read_only: bool,
    /// Temporary files a dead writer left, removed when the store opened.
    pub(crate) temp_removed: Vec<PathBuf>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("generations", &self.entries.keys().collect::<Vec<_>>())
            .field("current", &self.current.as_ref().map(|c| c.number))
            .field("next_number", &self.next_number)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in `dir`: creates the directory (0700) if missing,
    /// takes an exclusive lock on its `lock` file (0600, holding our pid),
    /// removes temporary files a crashed writer left, and scans the
    /// generations present. Nothing is loaded yet: see
    /// [`Store::load_newest`].
    ///
    /// A store another owner holds fails with [`StoreError::Locked`].
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        Store::open_with_io(dir, options, Box::new(RealIo))
    }

    /// [`Store::open`] through another I/O layer, e.g. a
    /// [`super::FaultyIo`].
    pub fn open_with_io(
        dir: &Path,
        options: StoreOptions,
        mut io: Box<dyn StoreIo>,
    ) -> Result<Store, StoreError> {
        options.check()?;
        io.create_dir_all(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StoreError::NotADirectory {
                path: dir.to_owned(),
                why: "it is a file, not a directory",
            },
            std::io::ErrorKind::NotADirectory => StoreError::NotADirectory {
                path: dir.to_owned(),
                why: "a part of its path is a file, not a directory",
            },
            _ => StoreError::io("creating the store directory", dir, e),
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = match io.lock(&lock_path) {
            Ok(LockAttempt::Acquired(guard)) => guard,
            Ok(LockAttempt::Held { holder }) => {
                return Err(StoreError::Locked {
                    path: lock_path,
                    pid: holder,
                });
            }
            Err(e) => return Err(StoreError::io("locking the store", lock_path, e)),
        };
        let mut store = Store {
            dir: dir.to_owned(),
            options,
            io,
            _lock: lock,
            entries: BTreeMap::new(),
            current: None,
            next_number: 1,
            temp_seq: 0,
            last_skipped: Vec::new(),
            read_only: false,
            temp_removed: Vec::new(),
        };
        // We hold the lock, so no temporary file is being written: each is a
        // dead writer's. One that cannot be removed is harmless (never read)
        // and tried again at the next open.
        for name in store.list()? {
            if names::classify(&name) == Name::Temp {
                let path = store.dir.join(&name);
                if store.io.remove(&path).is_ok() {
                    store.temp_removed.push(path);
                }
            }
        }
        store.rescan()?;
        Ok(store)
    }

    /// Opens the store in `dir` for reading only, without its lock: for
    /// looking at a store a supervisor may be writing at the same time.
    /// Nothing is created, changed or removed, now or later: the directory
    /// must exist, temporary files are left alone, and [`Store::begin`]
    /// fails with [`StoreError::ReadOnly`].
    ///
    /// A generation file may vanish at any moment while an owner prunes:
    /// one that vanishes between the listing and the reading of its header
    /// is left out, and reading one that has vanished since fails with
    /// [`StoreError::Io`] whose source is `NotFound` (see
    /// [`StoreError::is_vanished`]).
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        Store::open_read_only_with_io(dir, Box::new(RealIo))
    }

    /// [`Store::open_read_only`] through another I/O layer, e.g. one that
    /// removes files at a chosen moment as an owner pruning concurrently
    /// would. Only [`StoreIo::list`] and [`StoreIo::open_read`] are used.
    pub fn open_read_only_with_io(dir: &Path, mut io: Box<dyn StoreIo>) -> Result<Store, StoreError> {
        // Listing first: a missing directory or a file in its place is
        // reported as what it is, before anything else.
        io.list(dir)
            .map_err(|e| StoreError::io("listing the store directory", dir, e))?;
        let mut store = Store {
            dir: dir.to_owned(),
            options: StoreOptions::default(),
            io,
            _lock: Box::new(()),
            entries: BTreeMap::new(),
            current: None,
            next_number: 1,
            temp_seq: 0,
            last_skipped: Vec::new(),
            read_only: true,
            temp_removed: Vec::new(),
        };
        store.rescan()?;
        Ok(store)
    }

    /// Whether the store was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The temporary files a dead writer had left, which opening removed.
    pub fn removed_temp_files(&self) -> &[PathBuf] {
        &self.temp_removed
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The generations present whose header verifies, oldest first, as of
    /// the last open, load or commit. Generation files whose header does not
    /// verify are left out (a load reports them).
    pub fn generations(&self) -> Vec<GenerationInfo> {
        self.entries
            .iter()
            .filter_map(|(&number, e)| e.info(number))
            .collect()
    }

    /// The generation the store last loaded or committed, as
    /// [`Store::generations`] describes it.
    pub fn current_generation_info(&self) -> Option<GenerationInfo> {
        let number = self.current_generation()?;
        self.entries.get(&number)?.info(number)
    }

    /// The generation files present whose header does not verify, oldest
    /// first, with why, as of the last open, load or commit.
    pub fn unreadable(&self) -> Vec<(u64, &StoreError)> {
        self.entries
            .iter()
            .filter_map(|(&number, e)| Some((number, e.problem.as_ref()?)))
            .collect()
    }

    /// The number of the generation the store last loaded or committed
    /// (and so verified): the parent of the next delta. Not to be confused
    /// with the newest *restorable* generation, which is what a supervisor
    /// would restore ([`crate::restore::newest_restorable`]).
    pub fn current_generation(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.number)
    }

    /// The numbers of every generation file present, whether or not its
    /// header verifies, as of the last open, load or commit.
    pub fn present(&self) -> std::collections::BTreeSet<u64> {
        self.entries.keys().copied().collect()
    }

    /// After [`Store::load_newest`] failed with
    /// [`StoreError::NoVerifiedGeneration`]: each generation it tried, newest
    /// first, and why it was unusable. Empty after a load that succeeded
    /// (the skipped ones are in [`super::Loaded::skipped`]).
    pub fn last_load_skipped(&self) -> &[(u64, StoreError)] {
        &self.last_skipped
    }

    /// The path of generation `number`'s file, whether or not it exists.
    pub fn generation_path(&self, number: u64) -> PathBuf {
        self.dir.join(super::names::generation(number))
    }

    /// [`Store::last_load_skipped`], taken out of the store.
    pub fn take_last_load_skipped(&mut self) -> Vec<(u64, StoreError)> {
        std::mem::take(&mut self.last_skipped)
    }

    fn list(&mut self) -> Result<Vec<std::ffi::OsString>, StoreError> {
        self.io
            .list(&self.dir)
            .map_err(|e| StoreError::io("listing the store directory", &self.dir, e))
    }

    /// Re-reads the directory's generation files and their headers. Reads
    /// only: nothing is created, changed or removed.
    pub(crate) fn rescan(&mut self) -> Result<(), StoreError> {
        let mut entries = BTreeMap::new();
        for name in self.list()? {
            let Name::Generation(number) = names::classify(&name) else {
                continue;
            };
            let path = self.dir.join(&name);
            let entry = match read_header(self.io.as_mut(), &path) {
                Ok((header, size)) if header.number == number => Entry {
                    path,
                    size,
                    header: Some(header),
                    problem: None,
                },
                Ok((header, size)) => {
                    let problem = StoreError::corrupt(
                        &path,
                        Defect::new(
                            "number",
                            format::header::NUMBER as u64,
                            format!("{number} (the number in the file name)"),
                            header.number,
                        ),
                    );
                    Entry {
                        path,
                        size,
                        header: None,
                        problem: Some(problem),
                    }
                }
                // Removed since the listing (an owner pruning it): gone.
                Err(problem) if problem.is_vanished() => continue,
                Err(problem) => Entry {
                    // What is on disk, for reports: a header that does not
                    // verify says nothing of the file's size.
                    size: self.io.open_read(&path).map_or(0, |f| f.len),
                    path,
                    header: None,
                    problem: Some(problem),
                },
            };
            entries.insert(number, entry);
        }
        if let Some((&newest, _)) = entries.last_key_value() {
            self.next_number = self.next_number.max(newest.saturating_add(1));
        }
        self.entries = entries;
        Ok(())
    }
}

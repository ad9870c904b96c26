//! The store handle: options, opening (directory, lock, stale temporary
//! files), and what it reports about the generations present (the scan
//! that finds them is in `scan.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::error::StoreError;
use super::paged::Paged;

use super::hashes::ImageHashes;
use super::io::{LockAttempt, RealIo, StoreIo};
use super::lock::LOCK_FILE;
use super::names::{self, Name};
use super::read::Place;

/// How a [`Store`] keeps generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Generations to keep restorable, at least 1 (default 8). Retention
    /// keeps the newest `keep`, the chains they need, and whatever shares a
    /// file with them (STORE.md, "Retention").
    pub keep: usize,
    /// Make generations durable (`fdatasync` the segment, `fsync` and
    /// rename base files, sync the directory) before acknowledging them
    /// (default true). Off, a power loss may lose the newest generations,
    /// though never the store's integrity.
    pub fsync: bool,
    /// Whether [`GenerationTx::commit`](super::GenerationTx::commit) waits
    /// for the sync that makes the generation durable (default true). Off,
    /// it returns once the record is appended, like
    /// [`GenerationTx::append`](super::GenerationTx::append), and
    /// [`Store::take_synced`] says when generations became durable.
    pub wait_for_sync: bool,
    /// Sync, build bases and remove files on the store's own threads
    /// (default true). Off, all of it happens on the caller's thread, in a
    /// fixed order: for tests that count or fail I/O operations.
    pub background: bool,
    /// Bytes of deltas appended since the newest base before the next base
    /// is built (default 8 MiB); the threshold is at least half the newest
    /// base's size (STORE.md, "Bases in the background").
    pub base_after_bytes: u64,
}

/// Bytes of deltas before a base is built, whatever the base's size: a
/// restore reads at most about this much beyond the base, and a base of a
/// small region is not rebuilt more often than its deltas make worthwhile.
pub const BASE_AFTER_BYTES: u64 = 8 << 20;

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            keep: 8,
            fsync: true,
            wait_for_sync: true,
            background: true,
            base_after_bytes: BASE_AFTER_BYTES,
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
        Ok(())
    }
}

/// Whether a generation is a base or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationKind {
    /// A full image: a base file.
    Base,
    /// The pages that changed since `parent`.
    Delta {
        /// The generation it changes.
        parent: u64,
    },
}

/// A generation present in the store, as its record's header describes it.
/// The header verified (and, in a segment, the record's structure); its
/// pages are checked only when loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GenerationInfo {
    /// The generation's number.
    pub number: u64,
    /// Base (it has a base file) or delta.
    pub kind: GenerationKind,
    /// The size of its record in bytes (of its base file, for a base).
    pub bytes: u64,
    /// The region's length in bytes.
    pub region_len: u64,
    /// When writing it began, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The file holding it: its base file, or the segment holding its
    /// record.
    pub path: PathBuf,
    /// Where its record starts in that file.
    pub offset: u64,
}

impl GenerationInfo {
    /// Whether it is a base.
    pub fn is_base(&self) -> bool {
        self.kind == GenerationKind::Base
    }
}

/// A generation found in the store: its delta record, its full image, or
/// both (a base built of a generation already in the log).
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// Its delta record: in a segment, or a version 2 delta file.
    pub delta: Option<Place>,
    /// Its full image: a base file, or a version 2 base file.
    pub full: Option<Place>,
    /// A file named for this number whose header did not verify, its size,
    /// and why.
    pub problem: Option<(PathBuf, u64, StoreError)>,
}

impl Entry {
    /// The place whose header describes the generation: the full image if
    /// there is one.
    pub(crate) fn place(&self) -> Option<&Place> {
        self.full.as_ref().or(self.delta.as_ref())
    }

    /// What [`Store::generations`] reports of it; `None` if no header of it
    /// verified.
    pub(crate) fn info(&self, number: u64) -> Option<GenerationInfo> {
        let p = self.place()?;
        Some(GenerationInfo {
            number,
            kind: if self.full.is_some() {
                GenerationKind::Base
            } else {
                GenerationKind::Delta {
                    parent: p.header.parent,
                }
            },
            bytes: p.len,
            region_len: p.header.region_len,
            created_ms: p.header.created_ms,
            path: p.path.clone(),
            offset: p.offset,
        })
    }

    /// The file this generation is reported under: its verified place, or
    /// the file whose header did not verify.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.place()
            .map(|p| p.path.as_path())
            .or(self.problem.as_ref().map(|(p, _, _)| p.as_path()))
    }
}

/// A segment found in the directory.
#[derive(Debug)]
pub(crate) struct SegmentEntry {
    pub path: PathBuf,
    /// Its length when scanned.
    pub len: u64,
    /// The numbers of its readable records, in order.
    pub numbers: Vec<u64>,
    /// Where its readable part ends before the end of the file, and why.
    pub tail: Option<(u64, StoreError)>,
}

/// Where a segment stops being readable before its end: what a crash leaves
/// when it interrupts an append, or damage.
#[derive(Debug)]
#[non_exhaustive]
pub struct Tail {
    /// The segment.
    pub path: PathBuf,
    /// Where the unreadable part starts.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub bytes: u64,
    /// The newest generation before it in the segment, if any.
    pub after: Option<u64>,
    /// Why the record there does not read.
    pub why: String,
}

/// Where the newest bytes of one page of the newest image are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Loc {
    /// The file, by its [`FileIds`] id; 0 for a page that is all zero.
    pub file: u32,
    /// Where the page's bytes start in it.
    pub offset: u64,
}

impl Loc {
    /// A page that is all zero: nothing on disk.
    pub const ZERO: Loc = Loc { file: 0, offset: 0 };
}

/// Small numbers for the files pages are in, given in the order the store
/// first meets the files, so a newer segment has a larger id than every
/// file before it.
#[derive(Debug, Default)]
pub(crate) struct FileIds {
    by_path: std::collections::HashMap<PathBuf, u32>,
    paths: BTreeMap<u32, PathBuf>,
    last: u32,
}

impl FileIds {
    /// The id of `path`, given now if it has none.
    pub(crate) fn id(&mut self, path: &Path) -> u32 {
        if let Some(&id) = self.by_path.get(path) {
            return id;
        }
        self.last += 1;
        self.by_path.insert(path.to_owned(), self.last);
        self.paths.insert(self.last, path.to_owned());
        self.last
    }

    /// Every id and path.
    pub(crate) fn all(&self) -> BTreeMap<u32, PathBuf> {
        self.paths.clone()
    }

    /// The id the next file met will get: larger than every id given.
    pub(crate) fn next_id(&self) -> u32 {
        self.last + 1
    }

    /// Forgets `path` (removed from the store).
    pub(crate) fn forget(&mut self, path: &Path) {
        if let Some(id) = self.by_path.remove(path) {
            self.paths.remove(&id);
        }
    }
}

/// The newest image the store has verified (loaded or committed): what the
/// next delta is written against.
pub(crate) struct Current {
    pub number: u64,
    pub region_len: u64,
    /// BLAKE3 of each chunk and of each page of the image.
    pub hashes: ImageHashes,
    /// Where each page's bytes are on disk.
    pub locs: Paged<Loc>,
    /// Bytes of the newest base file at or below it.
    pub base_bytes: u64,
    /// Bytes of delta records appended since that base (or since the last
    /// base job began).
    pub since_base: u64,
}

/// A directory of generations, owned exclusively while this lives. See
/// `STORE.md` for the format and the crash argument.
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) options: StoreOptions,
    pub(crate) io: Box<dyn StoreIo>,
    pub(crate) entries: BTreeMap<u64, Entry>,
    pub(crate) segments: BTreeMap<u64, SegmentEntry>,
    pub(crate) current: Option<Current>,
    pub(crate) files: FileIds,
    /// Counts the times the current image was replaced other than by a
    /// delta on it (a load, a full generation, a failure): a base built
    /// from an earlier image is not the current image's ancestor.
    pub(crate) lineage: u64,
    /// The number the next generation gets.
    pub(crate) next_number: u64,
    /// The sequence number the next segment gets.
    pub(crate) next_seq: u64,
    /// Temporary files made by this store, for unique names.
    pub(crate) temp_seq: u64,
    pub(crate) last_skipped: Vec<(u64, StoreError)>,
    /// Generations whose base file the last load found damaged and went
    /// around through their records: retention keeps those records
    /// instead of stopping a chain at the damaged base.
    pub(crate) bad_bases: std::collections::BTreeSet<u64>,
    /// The directory's entries as the last scan listed them, sorted.
    pub(crate) listed: Vec<std::ffi::OsString>,
    /// Opened by [`Store::open_read_only`]: no lock, no writes.
    pub(crate) read_only: bool,
    /// Temporary files a dead writer left, removed when the store opened.
    pub(crate) temp_removed: Vec<PathBuf>,
    /// Retention keeps every record of this generation and newer
    /// ([`Store::hold`]).
    pub(crate) held: Option<u64>,
    /// Bases built in the background since [`Store::take_new_bases`].
    pub(crate) new_bases: Vec<u64>,
    /// The segment being appended to, the sync thread and the background
    /// work; made when the first delta is written.
    pub(crate) writer: Option<super::writer::Writer>,
    /// Dropped last: the lock is held as long as anything else of the store
    /// (the writer's threads are stopped when it drops).
    _lock: Box<dyn Send>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("generations", &self.entries.len())
            .field("segments", &self.segments.keys().collect::<Vec<_>>())
            .field("current", &self.current.as_ref().map(|c| c.number))
            .field("next_number", &self.next_number)
            .finish_non_exhaustive()
    }
}

impl Store {
    fn new(
        dir: &Path,
        options: StoreOptions,
        io: Box<dyn StoreIo>,
        lock: Box<dyn Send>,
        read_only: bool,
    ) -> Store {
        Store {
            dir: dir.to_owned(),
            options,
            io,
            entries: BTreeMap::new(),
            segments: BTreeMap::new(),
            current: None,
            files: FileIds::default(),
            lineage: 0,
            next_number: 1,
            next_seq: 1,
            temp_seq: 0,
            last_skipped: Vec::new(),
            bad_bases: std::collections::BTreeSet::new(),
            listed: Vec::new(),
            read_only,
            temp_removed: Vec::new(),
            held: None,
            new_bases: Vec::new(),
            writer: None,
            _lock: lock,
        }
    }

    /// Opens the store in `dir`: creates the directory (0700) if missing,
    /// takes an exclusive lock on its `lock` file (0600, holding our pid),
    /// removes temporary files a crashed writer left, and scans the
    /// generations present (reading each segment's record skeletons). Nothing is loaded yet: see
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
        let mut store = Store::new(dir, options, io, lock, false);
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
        let mut store = Store::new(dir, StoreOptions::default(), io, Box::new(()), true);
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

    /// The files named for a generation whose header does not verify,
    /// oldest first, with why, as of the last open, load or commit.
    pub fn unreadable(&self) -> Vec<(u64, &StoreError)> {
        self.entries
            .iter()
            .filter_map(|(&number, e)| Some((number, &e.problem.as_ref()?.2)))
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

    /// The file holding generation `number` (its base file, or the segment
    /// holding its record), as of the last scan; `None` if it is not in the
    /// store.
    pub fn generation_path(&self, number: u64) -> Option<PathBuf> {
        self.entries.get(&number)?.path().map(Path::to_owned)
    }

    /// Where each segment stops being readable before its end, as of the
    /// last scan: the trace of an append a crash interrupted (or damage).
    /// The generations before a tail load; nothing after it is read.
    pub fn tails(&self) -> Vec<Tail> {
        self.segments
            .values()
            .filter_map(|s| {
                let (offset, why) = s.tail.as_ref()?;
                Some(Tail {
                    path: s.path.clone(),
                    offset: *offset,
                    bytes: s.len.saturating_sub(*offset),
                    after: s.numbers.last().copied(),
                    why: why.to_string(),
                })
            })
            .collect()
    }

    /// The files of the store, as of the last scan: segments and base files
    /// (and version 2 files), oldest first. With the lock file and a spare
    /// segment, what the directory holds.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.segments.values().map(|s| s.path.clone()).collect();
        let mut others: Vec<PathBuf> = self
            .entries
            .values()
            .flat_map(|e| [e.full.as_ref(), e.delta.as_ref()])
            .flatten()
            .filter(|p| p.whole_file)
            .map(|p| p.path.clone())
            .collect();
        others.sort();
        others.dedup();
        files.extend(others);
        files
    }

    /// [`Store::last_load_skipped`], taken out of the store.
    pub fn take_last_load_skipped(&mut self) -> Vec<(u64, StoreError)> {
        std::mem::take(&mut self.last_skipped)
    }

    pub(crate) fn list(&mut self) -> Result<Vec<std::ffi::OsString>, StoreError> {
        self.io
            .list(&self.dir)
            .map_err(|e| StoreError::io("listing the store directory", &self.dir, e))
    }
}

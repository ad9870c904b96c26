//! The store through crashes and failing I/O: an in-memory file system
//! that models what a process kill or a power loss leaves at every step,
//! and a fault-injecting I/O layer that fails every step of the steady
//! path once, or from some step on as a full disk does (STORE.md, the
//! crash argument and "When a step fails").

mod common;

use common::{commit, pattern, try_commit};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use shm_snapshot::store::{
    CHUNK_BYTES, Condition, FaultPlan, Faults, FaultyIo, IoOp, PAGE_BYTES, Persisted, RealIo, Store,
    StoreError, StoreOptions,
};

const CHUNK: u64 = CHUNK_BYTES;

/// An in-memory file system that keeps, for every file, the bytes written
/// (live) and the bytes synced (durable), and for the directory the live
/// entries and the entries as of its last sync. A crash before operation
/// `k` captures what could survive it and fails everything after.
mod mem {
    use std::collections::{BTreeMap, BTreeSet};
    use std::ffi::OsString;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, MutexGuard};

    use shm_snapshot::store::{LockAttempt, ReadFile, StoreFile, StoreIo};

    #[derive(Default, Clone)]
    struct Inode {
        live: Vec<u8>,
        durable: Vec<u8>,
    }

    impl Inode {
        /// How many leading bytes the durable and the live content share:
        /// what was synced and not cut off since.
        fn synced(&self) -> usize {
            self.durable
                .iter()
                .zip(&self.live)
                .take_while(|(a, b)| a == b)
                .count()
        }
    }

    /// What a file keeps of the bytes written since its last sync when
    /// the power fails.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Data {
        /// Only what was synced.
        Synced,
        /// What was synced, and the first `eighths`/8 of what was not: a
        /// torn tail.
        Torn { eighths: usize },
        /// Its length as written, but what was not synced reads as zeros:
        /// the length reached the disk, the bytes did not.
        Zeroed,
        /// Everything written.
        Written,
    }

    /// What survives a crash.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Survivor {
        /// The process was killed: every entry and every byte written.
        ProcessKilled,
        /// The power failed: the directory's entries as of its last sync
        /// (`entries_synced`) or as they were, and each file's bytes as
        /// `data` says.
        PowerLoss { entries_synced: bool, data: Data },
    }

    #[derive(Default)]
    pub struct Fs {
        inodes: Vec<Inode>,
        live: BTreeMap<PathBuf, usize>,
        durable: BTreeMap<PathBuf, usize>,
        locks: BTreeSet<PathBuf>,
        ops: u64,
        /// Renames and removals done so far.
        pub renamed: u64,
        pub removed: u64,
        crash_at: Option<u64>,
        dead: bool,
        pub crashed: Vec<(Survivor, Fs)>,
    }

    impl Fs {
        pub fn crashing_at(k: u64) -> Fs {
            Fs {
                crash_at: Some(k),
                ..Fs::default()
            }
        }

        /// Mutating operations done so far.
        pub fn ops(&self) -> u64 {
            self.ops
        }

        /// A file system holding what `survivor` keeps of this one.
        fn survivor(&self, survivor: Survivor) -> Fs {
            let (entries, data) = match survivor {
                Survivor::ProcessKilled => (&self.live, Data::Written),
                Survivor::PowerLoss { entries_synced, data } => {
                    (if entries_synced { &self.durable } else { &self.live }, data)
                }
            };
            let mut fs = Fs::default();
            for (path, &ino) in entries {
                let i = &self.inodes[ino];
                let synced = i.synced();
                let bytes = match data {
                    Data::Synced => i.durable.clone(),
                    Data::Torn { eighths } => {
                        let kept = (i.live.len() - synced) * eighths / 8;
                        i.live[..synced + kept].to_vec()
                    }
                    Data::Zeroed => {
                        let mut b = i.live[..synced].to_vec();
                        b.resize(i.live.len(), 0);
                        b
                    }
                    Data::Written => i.live.clone(),
                };
                fs.inodes.push(Inode {
                    live: bytes.clone(),
                    durable: bytes,
                });
                fs.live.insert(path.clone(), fs.inodes.len() - 1);
            }
            fs.durable = fs.live.clone();
            fs
        }

        /// One mutating operation: counts it, or crashes before it.
        fn step(&mut self) -> io::Result<()> {
            if self.dead {
                return Err(io::Error::other("the process is dead"));
            }
            if Some(self.ops) == self.crash_at {
                // A torn tail of a fraction that changes with the crash
                // point, so the tears land at many places in a record.
                let eighths = 1 + (self.ops % 7) as usize;
                let mut survivors = vec![Survivor::ProcessKilled];
                for entries_synced in [true, false] {
                    for data in [Data::Synced, Data::Torn { eighths }, Data::Zeroed, Data::Written] {
                        survivors.push(Survivor::PowerLoss { entries_synced, data });
                    }
                }
                self.crashed = survivors.into_iter().map(|s| (s, self.survivor(s))).collect();
                self.dead = true;
                return Err(io::Error::other("crashed"));
            }
            self.ops += 1;
            Ok(())
        }
    }

    /// The [`StoreIo`] of an [`Fs`]; every handle on it, forks included,
    /// shares it.
    #[derive(Clone)]
    pub struct MemIo(pub Arc<Mutex<Fs>>);

    fn lock(fs: &Mutex<Fs>) -> MutexGuard<'_, Fs> {
        fs.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl MemIo {
        fn fs(&self) -> MutexGuard<'_, Fs> {
            lock(&self.0)
        }
    }

    fn not_found() -> io::Error {
        io::Error::from(io::ErrorKind::NotFound)
    }

    struct Guard(Arc<Mutex<Fs>>, PathBuf);

    impl Drop for Guard {
        fn drop(&mut self) {
            lock(&self.0).locks.remove(&self.1);
        }
    }

    /// An open file: a handle on an inode, which its clones share.
    struct MemFile(Arc<Mutex<Fs>>, usize);

    impl StoreFile for MemFile {
        fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut fs = lock(&self.0);
            fs.step()?;
            fs.inodes[self.1].live.extend_from_slice(bytes);
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            let mut fs = lock(&self.0);
            fs.step()?;
            let i = &mut fs.inodes[self.1];
            i.durable = i.live.clone();
            Ok(())
        }

        fn sync_data(&mut self) -> io::Result<()> {
            // The file's length is all of its metadata a reader needs, and
            // it is part of the inode here: the same as `sync`.
            self.sync()
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            let mut fs = lock(&self.0);
            fs.step()?;
            fs.inodes[self.1].live.truncate(len as usize);
            Ok(())
        }

        fn try_clone(&self) -> io::Result<Box<dyn StoreFile>> {
            Ok(Box::new(MemFile(self.0.clone(), self.1)))
        }
    }

    impl StoreIo for MemIo {
        fn create_dir_all(&mut self, _dir: &Path) -> io::Result<()> {
            Ok(())
        }

        fn lock(&mut self, path: &Path) -> io::Result<LockAttempt> {
            if !self.fs().locks.insert(path.to_owned()) {
                return Ok(LockAttempt::Held { holder: None });
            }
            Ok(LockAttempt::Acquired(Box::new(Guard(
                self.0.clone(),
                path.to_owned(),
            ))))
        }

        fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
            let fs = self.fs();
            Ok(fs
                .live
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name().map(|n| n.to_owned()))
                .collect())
        }

        fn create_new(&mut self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
            let mut fs = self.fs();
            fs.step()?;
            if fs.live.contains_key(path) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs.inodes.push(Inode::default());
            let ino = fs.inodes.len() - 1;
            fs.live.insert(path.to_owned(), ino);
            Ok(Box::new(MemFile(self.0.clone(), ino)))
        }

        fn open_read(&mut self, path: &Path) -> io::Result<ReadFile> {
            // What the file holds now: an open file stays readable after
            // its name is removed, as on a real file system.
            let fs = self.fs();
            let ino = *fs.live.get(path).ok_or_else(not_found)?;
            let bytes = fs.inodes[ino].live.clone();
            Ok(ReadFile {
                len: bytes.len() as u64,
                reader: Box::new(io::Cursor::new(bytes)),
            })
        }

        fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            let mut fs = self.fs();
            fs.step()?;
            let ino = fs.live.remove(from).ok_or_else(not_found)?;
            fs.live.insert(to.to_owned(), ino);
            fs.renamed += 1;
            Ok(())
        }

        fn sync_dir(&mut self, _dir: &Path) -> io::Result<()> {
            let mut fs = self.fs();
            fs.step()?;
            fs.durable = fs.live.clone();
            Ok(())
        }

        fn remove(&mut self, path: &Path) -> io::Result<()> {
            let mut fs = self.fs();
            fs.step()?;
            fs.live.remove(path).ok_or_else(not_found)?;
            fs.removed += 1;
            Ok(())
        }

        fn fork(&self) -> Box<dyn StoreIo> {
            Box::new(self.clone())
        }
    }
}

use mem::{Fs, MemIo, Survivor};

const CRASH_DIR: &str = "/store";
/// Four chunks, mostly zero: a base holds a few pages, so a base is built
/// every other delta and bases, new segments and retention all happen
/// within the workload.
const CRASH_REGION: u64 = 4 * CHUNK;

/// Everything on the caller's thread, in a fixed order: the crash points of
/// two runs of the workload are the same.
fn crash_options(fsync: bool) -> StoreOptions {
    StoreOptions {
        keep: 2,
        fsync,
        wait_for_sync: true,
        background: false,
        base_after_bytes: 2 * PAGE_BYTES,
    }
}

/// Images and metas by generation number.
type Written = BTreeMap<u64, (Vec<u8>, Vec<u8>)>;

/// Opens a store on `fs`, loads, commits eight generations, closes it;
/// opens it again, loads, commits six more. Each generation changes a page or
/// two. Returns every generation that was acknowledged (its commit
/// returned), and every one that was attempted; stops at the first error
/// (the crash).
fn crash_workload(fs: Arc<Mutex<Fs>>, fsync: bool) -> (Vec<u64>, Written) {
    let mut acked = Vec::new();
    let mut attempted = BTreeMap::new();
    let mut image = vec![0u8; CRASH_REGION as usize];
    image[7] = 1;
    let mut g = 0u64;
    for (opening, commits) in [8u64, 6].into_iter().enumerate() {
        let Ok(mut store) = Store::open_with_io(
            Path::new(CRASH_DIR),
            crash_options(fsync),
            Box::new(MemIo(fs.clone())),
        ) else {
            return (acked, attempted);
        };
        match store.load_newest() {
            Ok(loaded) => assert_eq!(loaded.is_some(), opening > 0),
            Err(_) => return (acked, attempted),
        }
        for _ in 0..commits {
            g += 1;
            image[((g % 5) * PAGE_BYTES + g) as usize] ^= 1;
            if g.is_multiple_of(3) {
                image[(CRASH_REGION - 1) as usize] ^= 1;
            }
            let meta = format!("generation {g}").into_bytes();
            let mut tx = match store.begin(CRASH_REGION) {
                Ok(tx) => tx,
                Err(_) => return (acked, attempted),
            };
            attempted.insert(tx.number(), (image.clone(), meta.clone()));
            let committed = tx.put_chunks(0, &image).and_then(|()| tx.commit(&meta));
            match committed {
                Ok(p) => {
                    assert!(p.durable);
                    acked.push(p.number);
                }
                Err(_) => return (acked, attempted),
            }
        }
    }
    (acked, attempted)
}

fn crash_everywhere(fsync: bool) {
    let full = Arc::new(Mutex::new(Fs::default()));
    let (acked, expected) = crash_workload(full.clone(), fsync);
    assert_eq!(acked.len(), 14);
    let (total, renamed, removed) = {
        let fs = full.lock().unwrap();
        (fs.ops(), fs.renamed, fs.removed)
    };
    // Segments and bases were made (each renamed into place), and
    // retention removed files, all within the workload.
    assert!(
        renamed >= 10 && removed >= 5,
        "{renamed} renamed, {removed} removed"
    );
    let mut loaded_newer = 0;
    for k in 0..total {
        let fs = Arc::new(Mutex::new(Fs::crashing_at(k)));
        let (acked, attempted) = crash_workload(fs.clone(), fsync);
        // The run up to the crash is the full run's.
        for (n, written) in &attempted {
            assert!(
                expected[n] == *written,
                "crash before step {k}: generation {n} differs"
            );
        }
        let newest_acked = acked.last().copied();
        let survivors = std::mem::take(&mut fs.lock().unwrap().crashed);
        assert_eq!(survivors.len(), 9, "crash point {k} not reached");
        for (survivor, image) in survivors {
            let at = format!("crash before step {k}, {survivor:?}, fsync {fsync}");
            let fs = Arc::new(Mutex::new(image));
            let dir = Path::new(CRASH_DIR);
            let mut store =
                Store::open_with_io(dir, crash_options(fsync), Box::new(MemIo(fs.clone()))).expect(&at);
            let durable = fsync || survivor == Survivor::ProcessKilled;
            match store.load_newest() {
                Ok(Some(l)) => {
                    // Whatever loads is exactly a generation that was written.
                    let Some((image, meta)) = expected.get(&l.number) else {
                        panic!("{at}: loaded {}, which was never written", l.number);
                    };
                    assert!(
                        l.image == *image && l.meta == *meta,
                        "{at}: generation {} differs",
                        l.number
                    );
                    if durable {
                        assert!(
                            Some(l.number) >= newest_acked,
                            "{at}: loaded {}, but {newest_acked:?} was acknowledged",
                            l.number
                        );
                    }
                    if Some(l.number) > newest_acked {
                        loaded_newer += 1;
                    }
                }
                Ok(None) => assert!(!durable || newest_acked.is_none(), "{at}: store came back empty"),
                Err(e) => {
                    assert!(!durable, "{at}: {e}");
                    assert!(matches!(e, StoreError::NoVerifiedGeneration { .. }), "{at}: {e}");
                }
            }
            // The store is writable again, what it writes loads, and it
            // still does after another opening.
            let mut fresh = vec![0u8; CRASH_REGION as usize];
            fresh[(3 * PAGE_BYTES) as usize..(4 * PAGE_BYTES) as usize]
                .copy_from_slice(&pattern(PAGE_BYTES, k));
            let p = commit(&mut store, &fresh, b"after the crash");
            assert!(store.load_newest().unwrap().unwrap().image == fresh, "{at}");
            drop(store);
            let mut store = Store::open_with_io(dir, crash_options(fsync), Box::new(MemIo(fs))).expect(&at);
            let l = store.load_newest().expect(&at).expect(&at);
            assert!(
                l.number == p.number && l.image == fresh && l.skipped.is_empty(),
                "{at}: after reopening"
            );
        }
    }
    // With fsync, the crash points include records complete on disk but
    // never acknowledged (the crash came before their sync), which load
    // like any other; without it, appending is acknowledging.
    assert_eq!(
        loaded_newer > 0,
        fsync,
        "{loaded_newer} loaded past the acknowledged"
    );
}

#[test]
fn a_crash_at_any_io_step_reopens_to_a_verified_generation_holding_every_acknowledged_one() {
    crash_everywhere(true);
}

#[test]
fn without_fsync_a_power_loss_may_lose_generations_but_never_loads_a_wrong_one() {
    crash_everywhere(false);
}

// ---------------------------------------------------------------------------
// Injected faults

/// Four chunks, three pages of them not zero: a base is three pages, and
/// each delta changes two of them, which is past half the base, so every
/// delta starts a base.
const FAULT_REGION: u64 = 4 * CHUNK;

fn fault_options() -> StoreOptions {
    StoreOptions {
        keep: 2,
        fsync: true,
        wait_for_sync: true,
        background: false,
        base_after_bytes: 1,
    }
}

/// The image of generation `g` of the fault tests.
fn fault_image(g: u64) -> Vec<u8> {
    let mut image = vec![0u8; FAULT_REGION as usize];
    for page in [0u64, 17, 40] {
        let at = (page * PAGE_BYTES) as usize;
        image[at..at + PAGE_BYTES as usize].copy_from_slice(&pattern(PAGE_BYTES, page));
    }
    // Two of the three pages change with every generation.
    image[(17 * PAGE_BYTES + g) as usize] ^= g as u8 | 1;
    image[(40 * PAGE_BYTES + 7) as usize] = g as u8;
    image
}

/// A store of four generations (a base and three deltas, each delta having
/// started a base), in the steady state: the next commit picks up the base
/// of 4 and lets old files go, starts a segment and asks for a spare,
/// appends, syncs, and starts the base of 5.
fn fault_setup(dir: &Path) -> (Store, Faults) {
    let (io, faults) = FaultyIo::new(Box::new(RealIo));
    let mut store = Store::open_with_io(dir, fault_options(), Box::new(io)).unwrap();
    for g in 1..=4u64 {
        let p = commit(&mut store, &fault_image(g), &g.to_le_bytes());
        assert_eq!(p.number, g);
    }
    (store, faults)
}

/// The errors a generation's commit reported besides its own result.
fn reported(p: &Persisted) -> usize {
    p.prune_errors.len() + p.base_errors.len()
}

/// The counted operation that failed: the `after`-th of those `plan_ops`
/// counts since the plan was armed at `armed` in the log.
fn failed_op(faults: &Faults, armed: usize, ops: &[IoOp], after: u64) -> IoOp {
    faults.log()[armed..]
        .iter()
        .filter(|op| ops.contains(op))
        .nth(after as usize)
        .copied()
        .expect("the failed operation is in the log")
}

/// A fresh opening of `dir` on the real file system loads generation
/// `number` with its image; no file is damaged and no segment has a tail.
/// A generation may have lost its parent: a file whose removal failed
/// stays while retention removes the older files its generations needed
/// (it removes newest first), and goes at a later retention.
fn assert_reopens_to(dir: &Path, number: u64, image: &[u8], what: &str) {
    let mut store = Store::open_read_only(dir).unwrap();
    let loaded = store.load_newest().unwrap().unwrap();
    assert_eq!(loaded.number, number, "{what}");
    assert!(loaded.image == image && loaded.skipped.is_empty(), "{what}");
    for c in store.check_all().unwrap() {
        let orphan =
            matches!(&c.condition, Condition::BrokenChain(e) if e.to_string().contains("is missing"));
        assert!(
            c.condition.is_intact() || orphan,
            "{what}: generation {} {:?}",
            c.number,
            c.condition
        );
    }
    assert!(store.tails().is_empty(), "{what}: {:?}", store.tails());
}

#[test]
fn a_failure_at_any_io_step_of_the_steady_path_keeps_the_last_good_generation() {
    let previous = fault_image(4);
    let next = fault_image(5);
    let later = fault_image(6);
    let mut failed: HashMap<IoOp, usize> = HashMap::new();
    for after in 0.. {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut store, faults) = fault_setup(dir);
        let armed = faults.log().len();
        faults.arm(FaultPlan::once(IoOp::MUTATING, after));
        let result = try_commit(&mut store, &next, &5u64.to_le_bytes());
        faults.heal();
        if faults.injected() == 0 {
            assert_eq!(result.unwrap().number, 5);
            break;
        }
        let op = failed_op(&faults, armed, IoOp::MUTATING, after);
        let at = format!("step {after} ({op:?})");
        *failed.entry(op).or_default() += 1;
        let mut errors = 0;
        let commit_failed = result.is_err();
        match result {
            Err(e) => {
                // Only the append and its sync fail the commit.
                assert!(matches!(op, IoOp::Write | IoOp::SyncData), "{at}: {e}");
                assert!(
                    matches!(e, StoreError::Io { .. }) && e.to_string().contains("injected fault"),
                    "{at}: {e}"
                );
                // The last good generation is there and loads; a record
                // whose sync failed may be complete on disk, and then loads
                // as the newest, never acknowledged.
                let mut reader = Store::open_read_only(dir).unwrap();
                assert!(reader.load_generation(4).unwrap().image == previous, "{at}");
                let loaded = reader.load_newest().unwrap().unwrap();
                match op {
                    IoOp::Write => assert!(loaded.number == 4 && loaded.image == previous, "{at}"),
                    _ => assert!(
                        (loaded.number, &loaded.image) == (4, &previous)
                            || (loaded.number, &loaded.image) == (5, &next),
                        "{at}: loaded {}",
                        loaded.number
                    ),
                }
                assert!(reader.tails().is_empty(), "{at}: {:?}", reader.tails());
            }
            Ok(p) => {
                // A step of the background work (retention, the spare
                // segment, the base): reported, deltas unaffected.
                assert_eq!(p.number, 5, "{at}");
                errors += reported(&p);
            }
        }
        // A later commit succeeds, and a fresh open agrees.
        let p = commit(&mut store, &later, &6u64.to_le_bytes());
        errors += reported(&p);
        store.finish_background();
        // A failure that did not fail the commit is reported once, by the
        // commit or by the next one.
        assert_eq!(errors, usize::from(!commit_failed), "{at}");
        drop(store);
        assert_reopens_to(dir, p.number, &later, &at);
    }
    // Every kind of step of the steady path failed somewhere: retention's
    // removals, making the spare segment and the base (create, write,
    // fsync, rename, directory sync), the append and its data sync.
    for op in [
        IoOp::Remove,
        IoOp::Create,
        IoOp::Write,
        IoOp::SyncFile,
        IoOp::Rename,
        IoOp::SyncDir,
        IoOp::SyncData,
    ] {
        assert!(failed.contains_key(&op), "{op:?} never failed: {failed:?}");
    }
}

#[test]
fn a_full_disk_at_any_step_never_loses_the_last_good_generation_and_a_commit_succeeds_once_space_returns() {
    let space = [IoOp::Create, IoOp::Write, IoOp::SyncFile, IoOp::SyncData];
    let next = fault_image(5);
    let later = fault_image(6);
    for after in 0.. {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut store, faults) = fault_setup(dir);
        faults.arm(FaultPlan::disk_full(&space, after));
        let result = try_commit(&mut store, &next, &5u64.to_le_bytes());
        if faults.injected() == 0 {
            result.unwrap();
            break;
        }
        let at = format!("full from step {after}");
        let good = match &result {
            Ok(p) => p.number,
            Err(e) => {
                assert!(e.to_string().contains("injected fault"), "{at}: {e}");
                4
            }
        };
        // While the disk stays full, every commit fails, and what was good
        // stays loadable.
        for _ in 0..2 {
            assert!(try_commit(&mut store, &later, b"while full").is_err(), "{at}");
        }
        let mut reader = Store::open_read_only(dir).unwrap();
        let loaded = reader.load_newest().unwrap().unwrap();
        assert!(
            loaded.number >= good,
            "{at}: loaded {}, {good} was good",
            loaded.number
        );
        assert!(loaded.image == fault_image(loaded.number), "{at}");
        assert!(
            reader.load_generation(good).unwrap().image == fault_image(good),
            "{at}"
        );
        faults.heal();
        let p = commit(&mut store, &later, b"later");
        store.finish_background();
        drop(store);
        assert_reopens_to(dir, p.number, &later, &at);
    }
}

#[test]
fn an_append_whose_cut_back_fails_too_leaves_a_tail_and_the_next_delta_starts_a_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No base: the segment stays open, and the spare is ready.
    let opts = StoreOptions {
        base_after_bytes: u64::MAX,
        ..fault_options()
    };
    let (io, faults) = FaultyIo::new(Box::new(RealIo));
    let mut store = Store::open_with_io(dir, opts, Box::new(io)).unwrap();
    for g in 1..=3u64 {
        commit(&mut store, &fault_image(g), b"");
    }
    let (segment, start, len) = common::record_of(&store, 3);
    let end = start + len;
    assert_eq!(common::size(&segment), end);

    // The cut back works: no trace.
    faults.arm(FaultPlan::once(&[IoOp::Write], 0));
    assert!(try_commit(&mut store, &fault_image(4), b"").is_err());
    faults.heal();
    assert_eq!(common::size(&segment), end);
    assert!(faults.log().contains(&IoOp::Truncate));

    // The write and the cut back fail: half a record stays, a tail.
    let armed = faults.log().len();
    faults.arm(FaultPlan {
        ops: vec![IoOp::Write, IoOp::Truncate],
        after: 0,
        sticky: true,
        kind: std::io::ErrorKind::Other,
    });
    let e = try_commit(&mut store, &fault_image(4), b"").unwrap_err();
    faults.heal();
    assert!(e.to_string().contains("injected fault"), "{e}");
    assert_eq!(
        faults.log()[armed..]
            .iter()
            .filter(|op| **op == IoOp::Truncate)
            .count(),
        1
    );
    let torn = common::size(&segment);
    assert!(torn > end, "half the record was written");
    let mut reader = Store::open_read_only(dir).unwrap();
    let loaded = reader.load_newest().unwrap().unwrap();
    assert!(loaded.number == 3 && loaded.image == fault_image(3));
    let tails = reader.tails();
    assert_eq!(tails.len(), 1);
    assert_eq!(
        (&tails[0].path, tails[0].offset, tails[0].bytes, tails[0].after),
        (&segment, end, torn - end, Some(3))
    );

    // The next delta goes on from 3, in another segment.
    let p = commit(&mut store, &fault_image(4), b"four");
    assert!(!p.base);
    let (other, _, _) = common::record_of(&store, p.number);
    assert_ne!(other, segment);
    assert_eq!(common::size(&segment), torn, "nothing appended after the tail");
    drop(store);
    let mut reader = Store::open_read_only(dir).unwrap();
    let loaded = reader.load_newest().unwrap().unwrap();
    assert!(loaded.number == p.number && loaded.image == fault_image(4) && loaded.meta == b"four");
    assert_eq!(reader.tails().len(), 1);
}

#[test]
fn a_failed_directory_sync_whose_cleanup_also_fails_leaves_a_complete_unacknowledged_base() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, faults) = fault_setup(dir);
    // A region of another length: a full generation, a base file.
    let bigger = pattern(FAULT_REGION + 100, 9);
    faults.arm(FaultPlan {
        ops: vec![IoOp::SyncDir, IoOp::Remove],
        after: 0,
        sticky: true,
        kind: std::io::ErrorKind::Other,
    });
    let e = try_commit(&mut store, &bigger, b"bigger").unwrap_err();
    assert!(e.to_string().contains("syncing the store directory"), "{e}");
    faults.heal();
    assert_eq!(store.current_generation(), Some(4));
    // The store goes on from 4; 5 is complete and loads by number.
    let mut tx = store.begin(FAULT_REGION).unwrap();
    assert_eq!((tx.number(), tx.parent()), (6, Some(4)));
    tx.put_chunks(0, &fault_image(6)).unwrap();
    tx.commit(b"six").unwrap();
    drop(store);
    let mut reader = Store::open_read_only(dir).unwrap();
    let loaded = reader.load_newest().unwrap().unwrap();
    assert!(loaded.number == 6 && loaded.image == fault_image(6));
    let five = reader.load_generation(5).unwrap();
    assert!(five.image == bigger && five.meta == b"bigger");
}

#[test]
fn a_failed_sync_keeps_what_was_acknowledged_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (io, faults) = FaultyIo::new(Box::new(RealIo));
    let opts = StoreOptions {
        wait_for_sync: false,
        base_after_bytes: u64::MAX,
        ..fault_options()
    };
    let mut store = Store::open_with_io(tmp.path(), opts, Box::new(io)).unwrap();
    for g in 1..=3u64 {
        assert!(commit(&mut store, &fault_image(g), b"").durable);
    }
    assert_eq!(store.durable_generation(), Some(3));
    faults.arm(FaultPlan::once(&[IoOp::SyncData], 0));
    let e = try_commit(&mut store, &fault_image(4), b"").unwrap_err();
    faults.heal();
    assert!(e.to_string().contains("syncing the segment"), "{e}");
    // 1 to 3 were acknowledged durable before the failure: still so, and
    // still reported to a caller who had not asked yet.
    assert_eq!(store.durable_generation(), Some(3));
    let synced: Vec<u64> = store.take_synced().iter().map(|s| s.number).collect();
    assert_eq!(synced, [1, 2, 3]);
    // The next generation is a full one, acknowledged at once.
    let p = commit(&mut store, &fault_image(5), b"");
    assert!(p.base && p.durable && p.number == 5);
    assert_eq!(store.durable_generation(), Some(5));
    let synced: Vec<u64> = store.take_synced().iter().map(|s| s.number).collect();
    assert_eq!(synced, [5]);
}

#[test]
fn a_failed_removal_is_reported_and_the_file_goes_at_a_later_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, faults) = fault_setup(dir);
    faults.arm(FaultPlan::disk_full(&[IoOp::Remove], 0));
    let p = commit(&mut store, &fault_image(5), b"");
    assert!(!p.prune_errors.is_empty(), "{p:?}");
    let stuck: BTreeSet<String> = common::file_names(dir);
    faults.heal();
    // The files stay until the store looks at the directory again.
    drop(store);
    let (io, _faults) = FaultyIo::new(Box::new(RealIo));
    let mut store = Store::open_with_io(dir, fault_options(), Box::new(io)).unwrap();
    store.load_newest().unwrap().unwrap();
    for g in 6..=8u64 {
        commit(&mut store, &fault_image(g), b"");
    }
    store.finish_background();
    let now = common::file_names(dir);
    let stayed: Vec<&String> = stuck.intersection(&now).collect();
    assert!(stayed.is_empty(), "{stayed:?} were never removed");
    let checked = store.check_all().unwrap();
    assert!(checked.iter().all(|c| matches!(c.condition, Condition::Intact)));
}

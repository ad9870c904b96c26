//! The store's background work (STORE.md, "Persisting a delta" to
//! "Retention"): when a base is built, deltas persisted while a slow base
//! is written, group commit, and a bounded number of files over thousands
//! of generations.

mod common;

use common::{base_numbers, base_path, commit, file_names, pattern, record_of};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use shm_snapshot::store::{
    CHUNK_BYTES, GenerationKind, LockAttempt, PAGE_BYTES, ReadFile, RealIo, Store, StoreFile, StoreIo,
    StoreOptions,
};

const CHUNK: u64 = CHUNK_BYTES;

/// How long a test waits for an event before it calls the store stuck: far
/// longer than any wait here takes on a loaded machine, only there so a
/// broken store fails the test instead of hanging it.
const STUCK: Duration = Duration::from_secs(120);

/// A gate the test holds: every operation that reaches it counts itself,
/// then waits until the gate is open.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    open: bool,
    reached: u64,
    /// An operation waited [`STUCK`] and went on without the gate opening:
    /// the store waited for something that waited for the gate.
    gave_up: bool,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the operation: counts it, waits until the gate opens.
    fn pass(&self) {
        let mut s = self.state();
        s.reached += 1;
        self.changed.notify_all();
        // Once one gave up, the rest do not wait either.
        let (mut s, timeout) = self
            .changed
            .wait_timeout_while(s, STUCK, |s| !s.open && !s.gave_up)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            s.gave_up = true;
        }
    }

    fn gave_up(&self) -> bool {
        self.state().gave_up
    }

    /// Waits until `n` operations have reached the gate.
    fn wait_reached(&self, n: u64) {
        let s = self.state();
        let (s, timeout) = self
            .changed
            .wait_timeout_while(s, STUCK, |s| s.reached < n)
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !timeout.timed_out(),
            "only {} operations reached the gate",
            s.reached
        );
    }

    fn reached(&self) -> u64 {
        self.state().reached
    }

    fn open(&self) {
        self.state().open = true;
        self.changed.notify_all();
    }
}

/// The paths the store removed, for a test to wait on.
#[derive(Default)]
struct Removals {
    paths: Mutex<Vec<PathBuf>>,
    changed: Condvar,
}

impl Removals {
    /// Waits until every one of `paths` has been removed.
    fn wait_for(&self, paths: &[PathBuf]) {
        let removed = self.paths.lock().unwrap();
        let (removed, timeout) = self
            .changed
            .wait_timeout_while(removed, STUCK, |r| !paths.iter().all(|p| r.contains(p)))
            .unwrap();
        assert!(!timeout.timed_out(), "removed {removed:?}, waiting for {paths:?}");
    }
}

/// [`RealIo`] with gates: writes to base files being built in the
/// background, and data syncs, may wait on a gate the test holds. Removals
/// are recorded.
#[derive(Clone, Default)]
struct GatedIo {
    /// Writes to a `base-*.tmp` file made by a background handle wait here.
    base_writes: Option<Arc<Gate>>,
    /// Writes to a `seg-*.tmp` file (a spare segment being made) made by a
    /// background handle wait here.
    segment_writes: Option<Arc<Gate>>,
    /// Every `sync_data` waits here.
    syncs: Option<Arc<Gate>>,
    removals: Arc<Removals>,
    /// A handle the store forked for its background work.
    forked: bool,
}

struct GatedFile {
    inner: Box<dyn StoreFile>,
    writes: Option<Arc<Gate>>,
    syncs: Option<Arc<Gate>>,
}

impl StoreFile for GatedFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(gate) = &self.writes {
            gate.pass();
        }
        self.inner.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }

    fn sync_data(&mut self) -> io::Result<()> {
        if let Some(gate) = &self.syncs {
            gate.pass();
        }
        self.inner.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }

    fn try_clone(&self) -> io::Result<Box<dyn StoreFile>> {
        Ok(Box::new(GatedFile {
            inner: self.inner.try_clone()?,
            writes: self.writes.clone(),
            syncs: self.syncs.clone(),
        }))
    }
}

impl StoreIo for GatedIo {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        RealIo.create_dir_all(dir)
    }

    fn lock(&mut self, path: &Path) -> io::Result<LockAttempt> {
        RealIo.lock(path)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
        RealIo.list(dir)
    }

    fn create_new(&mut self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let temp = name.ends_with(".tmp") && self.forked;
        let writes = if temp && name.starts_with("base-") {
            self.base_writes.clone()
        } else if temp && name.starts_with("seg-") {
            self.segment_writes.clone()
        } else {
            None
        };
        Ok(Box::new(GatedFile {
            inner: RealIo.create_new(path)?,
            writes,
            syncs: self.syncs.clone(),
        }))
    }

    fn open_read(&mut self, path: &Path) -> io::Result<ReadFile> {
        RealIo.open_read(path)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        RealIo.rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        RealIo.sync_dir(dir)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        RealIo.remove(path)?;
        self.removals.paths.lock().unwrap().push(path.to_owned());
        self.removals.changed.notify_all();
        Ok(())
    }

    fn fork(&self) -> Box<dyn StoreIo> {
        Box::new(GatedIo {
            forked: true,
            ..self.clone()
        })
    }
}

/// A region of `chunks` chunks, zero but for one page: a base is a page, so
/// a delta of a page or two is past half of it.
fn sparse(chunks: u64) -> Vec<u8> {
    let mut image = vec![0u8; (chunks * CHUNK) as usize];
    image[..PAGE_BYTES as usize].copy_from_slice(&pattern(PAGE_BYTES, 1));
    image
}

#[test]
fn a_base_is_built_once_the_deltas_since_the_newest_base_outweigh_the_threshold() {
    // A dense region of eight chunks, one chunk rewritten per delta: a
    // delta is 16 pages. The threshold is the larger of base_after_bytes
    // and half the newest base.
    let len = 8 * CHUNK;
    for base_after_bytes in [1, 5 * CHUNK] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let opts = StoreOptions {
            keep: 100,
            background: false,
            base_after_bytes,
            ..StoreOptions::default()
        };
        let mut store = Store::open(dir, opts).unwrap();
        let mut image = pattern(len, 4);
        let first = commit(&mut store, &image, b"");
        assert!(first.base);
        let mut base_bytes = first.bytes_written;
        let mut since = 0;
        let mut built = Vec::new();
        // The segment the newest base's record is in, until the next delta.
        let mut closed: Option<PathBuf> = None;
        for g in 2..=30u64 {
            let chunk = g % 8;
            for page in 0..CHUNK / PAGE_BYTES {
                image[(chunk * CHUNK + page * PAGE_BYTES + g) as usize] ^= 1;
            }
            let p = commit(&mut store, &image, b"");
            assert!(!p.base && p.number == g);
            // A delta after a base goes to a new segment.
            if let Some(segment) = closed.take() {
                assert_ne!(record_of(&store, g).0, segment, "{base_after_bytes}: {g}");
            }
            since += p.bytes_written;
            // Built on the caller's thread: its file is there at once.
            let crossed = since >= base_after_bytes.max(base_bytes / 2);
            assert_eq!(
                base_path(dir, g).exists(),
                crossed,
                "{base_after_bytes}: after {g}"
            );
            if crossed {
                built.push(g);
                since = 0;
                base_bytes = common::size(&base_path(dir, g));
                closed = Some(record_of(&store, g).0);
            }
        }
        assert!(built.len() >= 3, "{base_after_bytes}: bases of {built:?}");
        // Picked up, a base is what the generation is listed as.
        store.finish_background();
        let kinds: BTreeMap<u64, GenerationKind> =
            store.generations().iter().map(|g| (g.number, g.kind)).collect();
        for n in &built {
            assert_eq!(
                kinds.get(n),
                Some(&GenerationKind::Base),
                "{base_after_bytes}: {n}"
            );
        }
        drop(store);
        let mut reader = Store::open_read_only(dir).unwrap();
        assert!(reader.load_newest().unwrap().unwrap().image == image);
    }
}

#[test]
fn deltas_keep_being_persisted_while_a_slow_base_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gate = Arc::new(Gate::default());
    let io = GatedIo {
        base_writes: Some(gate.clone()),
        ..GatedIo::default()
    };
    let removals = io.removals.clone();
    let opts = StoreOptions {
        keep: 4,
        fsync: true,
        wait_for_sync: true,
        background: true,
        base_after_bytes: 1,
    };
    let mut store = Store::open_with_io(dir, opts, Box::new(io)).unwrap();
    let mut image = sparse(4);
    assert!(commit(&mut store, &image, b"1").base);
    // Delta 2 is past half the base: a base of 2 starts in the background,
    // and stops at its first write.
    image[(CHUNK + 9) as usize] ^= 1;
    let p = commit(&mut store, &image, b"2");
    assert_eq!((p.number, p.base), (2, false));
    let (first_segment, _, _) = record_of(&store, 2);
    gate.wait_reached(1);

    // Deltas go on being persisted and acknowledged meanwhile, each past
    // the threshold, none starting another base.
    let mut acknowledged = Vec::new();
    for g in 3..=40u64 {
        image[((g % 4) * CHUNK + g * 8) as usize] ^= 1;
        let p = commit(&mut store, &image, &g.to_le_bytes());
        assert!(p.number == g && p.durable, "{p:?}");
        assert_eq!(store.durable_generation(), Some(g));
        acknowledged.extend(store.take_synced().iter().map(|s| s.number));
    }
    assert_eq!(acknowledged.last(), Some(&40));
    assert!(acknowledged.windows(2).all(|w| w[0] < w[1]), "{acknowledged:?}");
    assert_eq!(gate.reached(), 1, "the base is still at its first write");
    assert!(!gate.gave_up(), "a commit waited for the base");
    assert_eq!(base_numbers(dir).into_iter().collect::<Vec<_>>(), [1]);
    // Nothing was removed while the base is built from the files.
    assert!(removals.paths.lock().unwrap().is_empty());
    // A reader finds every delta on disk.
    let mut reader = Store::open_read_only(dir).unwrap();
    let loaded = reader.load_newest().unwrap().unwrap();
    assert!(loaded.number == 40 && loaded.image == image);

    gate.open();
    store.finish_background();
    assert!(base_path(dir, 2).exists());
    // Retention let go of what the base covers: the first base and the
    // segment holding 2. The newest four need only the base of 2 and the
    // segment after it.
    removals.wait_for(&[base_path(dir, 1), first_segment.clone()]);
    assert!(!base_path(dir, 1).exists() && !first_segment.exists());
    let mut reader = Store::open_read_only(dir).unwrap();
    let loaded = reader.load_newest().unwrap().unwrap();
    assert!(loaded.number == 40 && loaded.image == image);
    for n in 37..=40 {
        reader.load_generation(n).unwrap();
    }
}

#[test]
fn append_returns_before_the_sync_and_take_synced_covers_every_generation_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let io = GatedIo {
        syncs: Some(gate.clone()),
        ..GatedIo::default()
    };
    let opts = StoreOptions {
        keep: 8,
        fsync: true,
        wait_for_sync: false,
        background: true,
        ..StoreOptions::default()
    };
    let mut store = Store::open_with_io(tmp.path(), opts, Box::new(io)).unwrap();
    let mut image = sparse(2);
    // A full generation is durable when its commit returns.
    let p = commit(&mut store, &image, b"");
    assert!(p.base && p.durable);
    assert_eq!(store.durable_generation(), Some(1));
    // Every data sync waits at the gate: appending must not.
    for g in 2..=50u64 {
        image[(g * 100) as usize] ^= 1;
        let mut tx = store.begin(image.len() as u64).unwrap();
        tx.put_chunks(0, &image).unwrap();
        // `commit` without wait_for_sync is `append`: both.
        let p = if g % 2 == 0 {
            tx.append(b"").unwrap()
        } else {
            tx.commit(b"").unwrap()
        };
        assert!(p.number == g && !p.durable, "{p:?}");
    }
    gate.wait_reached(1);
    assert!(!gate.gave_up(), "an append waited for the sync");
    assert_eq!(store.durable_generation(), Some(1));
    let first: Vec<u64> = store.take_synced().iter().map(|s| s.number).collect();
    assert_eq!(first, [1]);
    // A reader sees the appended records already.
    let mut reader = Store::open_read_only(tmp.path()).unwrap();
    assert!(reader.load_newest().unwrap().unwrap().image == image);

    gate.open();
    store.sync().unwrap();
    assert_eq!(store.durable_generation(), Some(50));
    let synced = store.take_synced();
    let numbers: Vec<u64> = synced.iter().map(|s| s.number).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert!(synced.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(numbers.last(), Some(&50));
    // Group commit: one entry per sync, and at most two syncs for 49
    // appends: the one that waited at the gate covered what was appended
    // when it began, the one after it everything appended meanwhile.
    let syncs = gate.reached();
    assert!(syncs <= 2, "{syncs} syncs");
    assert_eq!(numbers.len() as u64, syncs, "{numbers:?}");
}

#[test]
fn segments_are_taken_in_sequence_order_even_when_the_spare_is_late() {
    // The spare segment asked for with the first delta is held at a gate,
    // and a base starts, so the next delta needs a segment before the
    // spare is there.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gate = Arc::new(Gate::default());
    let io = GatedIo {
        segment_writes: Some(gate.clone()),
        ..GatedIo::default()
    };
    let opts = StoreOptions {
        keep: 100,
        fsync: false,
        background: true,
        base_after_bytes: 1,
        ..StoreOptions::default()
    };
    let mut store = Store::open_with_io(dir, opts, Box::new(io)).unwrap();
    let mut image = sparse(2);
    // The segment each delta was appended to, in the order appended.
    let mut segments = Vec::new();
    for g in 1..=12u64 {
        image[(CHUNK + g) as usize] ^= 1;
        let p = commit(&mut store, &image, b"");
        if !p.base {
            let (path, _, _) = record_of(&store, p.number);
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let seq: u64 = name["seg-".len()..name.len() - ".log".len()].parse().unwrap();
            segments.push((p.number, seq));
        }
        if g == 2 {
            gate.wait_reached(1);
        }
        if g == 3 {
            gate.open();
        }
        if g >= 3 {
            store.finish_background();
        }
    }
    assert!(!gate.gave_up());
    // The log is the segments in sequence order: a record never goes to a
    // segment older than one a record went to before it.
    assert!(segments.windows(2).all(|w| w[0].1 <= w[1].1), "{segments:?}");
    let used: std::collections::BTreeSet<u64> = segments.iter().map(|s| s.1).collect();
    assert!(used.len() >= 4, "{segments:?}");
    drop(store);
    let mut reader = Store::open_read_only(dir).unwrap();
    assert!(reader.load_newest().unwrap().unwrap().image == image);
}

/// Commits `count` generations of a sparse region into a store opened with
/// `opts`, checking the number of files in the directory after each, and
/// returns the largest number seen and the newest `keep` images.
fn many_generations(dir: &Path, opts: StoreOptions, count: u64) -> (usize, Store, VecDeque<(u64, Vec<u8>)>) {
    let mut store = Store::open(dir, opts).unwrap();
    let mut image = sparse(4);
    let mut newest = VecDeque::new();
    let mut most = 0;
    for g in 1..=count {
        // A few bytes of one of eight pages.
        let at = (((g % 8) * 2 + 1) * PAGE_BYTES + g % 4000) as usize;
        image[at] = image[at].wrapping_add(1);
        let p = commit(&mut store, &image, &g.to_le_bytes());
        assert!(p.prune_errors.is_empty() && p.base_errors.is_empty(), "{p:?}");
        newest.push_back((p.number, image.clone()));
        if newest.len() > opts.keep {
            newest.pop_front();
        }
        most = most.max(file_names(dir).len());
    }
    (most, store, newest)
}

#[test]
fn thousands_of_generations_leave_a_few_dozen_files_and_the_newest_keep_load() {
    for (background, count) in [(false, 3000), (true, 1500)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let opts = StoreOptions {
            keep: 8,
            fsync: false,
            background,
            base_after_bytes: 2 * PAGE_BYTES,
            ..StoreOptions::default()
        };
        let (most, mut store, newest) = many_generations(dir, opts, count);
        store.finish_background();
        let files = file_names(dir);
        // A base every few deltas, each starting a segment: the chains of
        // the newest 8 span a few bases and their segments.
        assert!(most <= 20, "background {background}: {most} files at once");
        assert!(
            files.len() <= 16,
            "background {background}: {} files: {files:?}",
            files.len()
        );
        // Bases kept being built all along.
        let newest_base = base_numbers(dir).last().copied();
        assert!(newest_base > Some(count / 2), "{files:?}");
        for (n, image) in &newest {
            let loaded = store.load_generation(*n).unwrap();
            assert!(loaded.image == *image, "background {background}: generation {n}");
        }
        drop(store);
        let mut reader = Store::open_read_only(dir).unwrap();
        let loaded = reader.load_newest().unwrap().unwrap();
        assert!(loaded.number == count && loaded.image == newest.back().unwrap().1);
        assert!(reader.generations().len() >= 8);
    }
}

/// Writes 60 generations rewriting one chunk each, with bases every few
/// deltas and `keep: 2`, holding from generation `hold` if given; returns
/// the store and the images by number.
fn held_run(dir: &Path, hold: Option<u64>) -> (Store, BTreeMap<u64, Vec<u8>>, Vec<u64>) {
    let opts = StoreOptions {
        keep: 2,
        background: false,
        base_after_bytes: 1,
        ..StoreOptions::default()
    };
    let mut store = Store::open(dir, opts).unwrap();
    store.hold(hold);
    let mut image = pattern(8 * CHUNK, 4);
    let mut images = BTreeMap::new();
    let mut bases = Vec::new();
    for g in 1..=60u64 {
        for page in 0..CHUNK / PAGE_BYTES {
            image[((g % 8) * CHUNK + page * PAGE_BYTES + g) as usize] ^= 1;
        }
        commit(&mut store, &image, b"");
        bases.extend(store.take_new_bases());
        images.insert(g, image.clone());
    }
    store.finish_background();
    bases.extend(store.take_new_bases());
    (store, images, bases)
}

#[test]
fn a_hold_keeps_every_record_from_it_on_and_record_places_finds_them_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, images, bases) = held_run(tmp.path(), Some(20));
    assert!(bases.len() > 5, "bases built: {bases:?}");
    for b in bases.iter().filter(|&&b| b >= 20) {
        assert!(
            store.record_places(*b..=*b)[0].base.is_some(),
            "{b} was reported built"
        );
    }
    // Every generation from the hold on has its delta record, each the
    // bytes of a record on its parent, readable where it is said to be.
    let places = store.record_places(20..);
    assert_eq!(
        places.iter().map(|p| p.number).collect::<Vec<_>>(),
        (20..=60).collect::<Vec<_>>()
    );
    for p in &places {
        let d = p
            .delta
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no delta record", p.number));
        assert_eq!(d.parent, p.number - 1);
        let bytes = std::fs::read(&d.path).unwrap();
        let record = &bytes[d.offset as usize..(d.offset + d.len) as usize];
        assert_eq!(&record[..8], b"SHM-GENS");
        assert_eq!(u64::from_le_bytes(record[16..24].try_into().unwrap()), p.number);
        assert_eq!(&record[record.len() - 56..record.len() - 48], b"gen:end\0");
        let header = shm_snapshot::store::format::check_record(record).unwrap();
        assert_eq!((header.number, header.parent), (p.number, p.number - 1));
        // Any byte changed, or one missing or extra, and it does not check.
        for at in [
            0,
            50,
            104,
            130,
            record.len() / 2,
            record.len() - 60,
            record.len() - 1,
        ] {
            let mut bad = record.to_vec();
            bad[at] ^= 0x10;
            assert!(
                shm_snapshot::store::format::check_record(&bad).is_err(),
                "{}: byte {at}",
                p.number
            );
        }
        assert!(shm_snapshot::store::format::check_record(&record[..record.len() - 1]).is_err());
        let mut longer = record.to_vec();
        longer.push(0);
        assert!(shm_snapshot::store::format::check_record(&longer).is_err());
    }
    // A base of a held generation and the deltas after it restore it: a
    // store of only those files loads the newest image.
    let base = *bases.iter().find(|&&b| b >= 20).unwrap();
    drop(store);
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(base_path(tmp.path(), base), base_path(copy.path(), base)).unwrap();
    let reader = Store::open_read_only(tmp.path()).unwrap();
    let mut segment = shm_snapshot::store::format::segment::SegmentHeader {
        seq: 1,
        created_ms: 0,
    }
    .encode()
    .to_vec();
    for p in reader.record_places(base + 1..) {
        let d = p.delta.unwrap();
        let bytes = std::fs::read(&d.path).unwrap();
        segment.extend_from_slice(&bytes[d.offset as usize..(d.offset + d.len) as usize]);
    }
    std::fs::write(
        copy.path().join(shm_snapshot::store::segment_file_name(1)),
        segment,
    )
    .unwrap();
    let mut copied = Store::open_read_only(copy.path()).unwrap();
    let loaded = copied.load_newest().unwrap().unwrap();
    assert_eq!(loaded.number, 60);
    assert!(loaded.image == images[&60]);

    // Without the hold, retention removes those records (so the test above
    // means something).
    let tmp = tempfile::tempdir().unwrap();
    let (store, _, _) = held_run(tmp.path(), None);
    let kept = store
        .record_places(20..)
        .into_iter()
        .filter(|p| p.delta.is_some())
        .count();
    assert!(kept < 41, "retention kept every record without a hold");
}

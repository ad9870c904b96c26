//! The snapshotter: Pre, copy what changed into the staging area, Post,
//! and the generation proven there persisted.

use std::path::Path;

use crate::layout::{self, Geometry, UnitRef};
use crate::meta::Meta;
use crate::observe::{Anomalies, Observer};
use crate::store::{PAGE_BYTES, Store};

mod persist;
mod window;

use super::staging::{PAGE, Staging, page_hash, zero_hash};
use super::{ArenaScan, Outcome, SnapshotError, UnmarkedWrite};

/// Chunks offered to the store at a time: 8 MiB, enough for the store to
/// spread hashing over threads (it splits batches of a MiB or more).
const RUN_CHUNKS: u64 = 128;

/// Takes consistent snapshots of one region into a store, without a copy
/// of the region.
///
/// It keeps a short hash of every page as the store's newest generation
/// holds it (8 bytes a 4 KiB page) and the arena write counters read at the
/// last snapshot. Between Pre and Post a snapshot reads only what can have
/// changed (the header and unit table, the ring bytes of units newer than
/// the last kept ones, the arena chunks whose write counters moved, or by
/// [`ArenaScan`] every arena page), hashes each page it reads and copies the
/// pages whose hash differs into a staging area ([`STAGING_BYTES`] in
/// memory, the rest in an unnamed file in the store's directory). That
/// window is memory copies and short hashes, so a program committing fast
/// still leaves units valid across it. Hashing with blake3 and writing to
/// the store happen after Post, from the staging area.
///
/// A generation the store must write in full (its first after a failed
/// sync) needs every page: the snapshot before it copies every page that
/// is not zero into the staging area outside any window (a *prime*, with
/// the counters read first), and the window then copies what changed since,
/// as the design's copy of a whole region always did.
///
/// [`STAGING_BYTES`]: super::STAGING_BYTES
#[derive(Debug, Default)]
pub struct Snapshotter {
    scan: ArenaScan,
    /// The geometry the page hashes and counters were taken for; `None`
    /// until the first snapshot.
    geometry: Option<Geometry>,
    /// What [`Snapshotter::known`] describes.
    reference: Reference,
    /// For each page of the region, [`page_hash`] of its bytes in the
    /// reference (the store's newest generation, once one is persisted).
    known: Vec<u64>,
    /// Pages of `known` that are not the zero page's hash.
    known_nonzero: u64,
    /// The arena write counters read before the newest copies were made
    /// (staged, or in the reference): a counter that differs now means
    /// newer data. Updated in place by each window.
    ref_counters: Vec<u64>,
    /// The chunks whose counters the last window saw move, in order.
    moved: Vec<u64>,
    /// Stream offset past the newest kept unit: ring bytes before it belong
    /// to units that were proven intact, and valid units' bytes never
    /// change.
    ring_done: u64,
    /// Pages copied since the newest persisted generation, newest copy of
    /// each: what the next generation offers.
    staging: Staging,
    /// The staging area holds every page that is not zero (a prime ran):
    /// the next generation offers every page, zero where none is staged.
    full: bool,
    pre: Vec<UnitRef>,
    /// One page read from the region.
    page: Vec<u8>,
    /// Reused buffer of chunks offered to the store.
    chunks: Vec<u8>,
    /// A generation staged and proven, waiting to be persisted.
    staged: Option<Staged>,
    /// The units of the generation last persisted or staged: a snapshot
    /// that proves exactly these has nothing new to persist.
    last_units: Option<Vec<UnitRef>>,
    /// [`ArenaScan::Check`]: chunks seen changed with their counters
    /// unmoved, not yet proven unmarked.
    suspects: Vec<Suspect>,
    /// [`ArenaScan::Check`]: a suspect proven unmarked, waiting for the
    /// next generation persisted to be reported with its number.
    found: Option<Suspect>,
    /// The unmarked write reported, once.
    reported: Option<UnmarkedWrite>,
    report: Report,
}

/// What the page hashes ([`Snapshotter::known`]) describe.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Reference {
    /// Nothing known: the next generation needs every page (a prime).
    #[default]
    Unknown,
    /// A blank region: every page zero. Right for a store that writes a
    /// full generation next (whose pages not offered are zero); against
    /// any other store, a prime.
    Blank,
    /// The store's newest generation, which is also what the region held
    /// before the program changed it: only changed pages are needed.
    Store,
}

/// An arena chunk [`ArenaScan::Check`] saw changed while its counter had
/// not moved. The write may still be in progress (a program marks after
/// writing), so it is proven unmarked only once a unit the program
/// published after it is seen and the counter still has not moved.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    chunk: u64,
    counter: u64,
    /// The program's next sequence number, read after the chunk was
    /// compared: a unit numbered this or higher was published after the
    /// write.
    next_seq: u64,
}

/// A sink for an [`UnmarkedWrite`].
type ReportFn = Box<dyn FnMut(&UnmarkedWrite) + Send>;

/// Where an [`UnmarkedWrite`] is told.
#[derive(Default)]
struct Report(Option<ReportFn>);

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Report(set)"
        } else {
            "Report(none)"
        })
    }
}

/// A generation taken into the staging area, not yet in the store.
#[derive(Debug)]
struct Staged {
    geometry: Geometry,
    meta: Meta,
    anomalies: Anomalies,
    covers: Option<u64>,
    bytes_scanned: u64,
}

impl Snapshotter {
    /// A snapshotter that finds arena changes by `scan`.
    pub fn new(scan: ArenaScan) -> Snapshotter {
        Snapshotter {
            scan,
            ..Snapshotter::default()
        }
    }

    /// Holds at most `bytes` of copied pages in memory (whole pages, at
    /// least one) instead of [`STAGING_BYTES`](super::STAGING_BYTES); the
    /// rest of a generation that changed more goes to the spill file.
    pub fn with_staging_bytes(mut self, bytes: usize) -> Snapshotter {
        self.staging.set_bound(bytes);
        self
    }

    /// Calls `report` with the first [`UnmarkedWrite`] that
    /// [`ArenaScan::Check`] finds, once, right after the generation that
    /// holds it is persisted.
    pub fn on_unmarked_write(&mut self, report: impl FnMut(&UnmarkedWrite) + Send + 'static) {
        self.report = Report(Some(Box::new(report)));
    }

    /// The unmarked write [`ArenaScan::Check`] reported, if any.
    pub fn unmarked_write(&self) -> Option<UnmarkedWrite> {
        self.reported
    }

    /// Forgets what the snapshotter knows of the region: the next snapshot
    /// reads every page (a prime, outside the window) and its generation
    /// offers every page. Call it after rewriting the region with what the
    /// snapshotter was not told of.
    pub fn forget(&mut self) {
        debug_assert!(
            self.staged.is_none(),
            "a staged generation is persisted (persist_staged) before the region is forgotten"
        );
        self.geometry = None;
        self.reference = Reference::Unknown;
        self.staged = None;
        self.last_units = None;
        self.full = false;
        self.staging.reset(0);
    }

    /// After the region was rewritten with a generation of the store whose
    /// meta is `meta` (a restore): [`Snapshotter::forget`], and a snapshot
    /// that proves exactly `meta`'s units has nothing new to persist.
    pub fn restored(&mut self, meta: &Meta) {
        self.forget();
        self.last_units = Some(meta.units.clone());
    }

    /// As [`Snapshotter::restored`], where `image` is what the region was
    /// just made to hold: the store's newest generation (its unit table
    /// and counters as `meta` says are rewritten by every snapshot anyway).
    /// Only the pages `data_pages` marks (all of them when it is empty) are
    /// read; the others are zero. The snapshotter keeps a short hash of each
    /// page, not the image: the first snapshot after the restore copies
    /// only what the program changed since, so a restart is followed by a
    /// generation as quickly as any other.
    pub fn restored_image(&mut self, meta: &Meta, image: &[u8], data_pages: &[bool]) {
        self.restored(meta);
        let pages = (image.len() as u64).div_ceil(PAGE_BYTES);
        let zero = zero_hash();
        self.known = vec![zero; pages as usize];
        self.known_nonzero = 0;
        for (p, bytes) in image.chunks(PAGE).enumerate() {
            if data_pages.get(p).copied().unwrap_or(data_pages.is_empty()) {
                self.known[p] = page_hash(bytes);
                self.known_nonzero += u64::from(self.known[p] != zero);
            }
        }
        // The counters the image holds are the ones the region held when
        // the generation was taken: a chunk whose counter moved since is
        // read by the next window.
        self.ref_counters.clear();
        if let Ok(g) = super::image_geometry(image) {
            let chunks = g.arena_len.div_ceil(g.chunk_bytes);
            self.ref_counters.extend((0..chunks).map(|i| {
                let at = (g.counters_offset + i * layout::COUNTER_SIZE) as usize;
                image
                    .get(at..at + 8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }));
        }
        self.reference = Reference::Store;
    }

    /// The region was just made blank (all zero) for a program to start on,
    /// `region_len` bytes long: the first snapshot copies only what the
    /// program wrote.
    pub fn blank(&mut self, region_len: u64) {
        self.forget();
        self.known = vec![zero_hash(); region_len.div_ceil(PAGE_BYTES) as usize];
        self.known_nonzero = 0;
        self.ref_counters.clear();
        self.reference = Reference::Blank;
    }

    /// Whether a generation taken by [`Snapshotter::stage`] waits to be
    /// persisted.
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// Bytes of copied pages held in memory now (at most
    /// [`STAGING_BYTES`](super::STAGING_BYTES); a generation that changed
    /// more holds the rest in a file).
    pub fn staging_bytes(&self) -> usize {
        self.staging.memory_bytes()
    }

    /// Takes one snapshot: Pre, copy what can have changed, Post, and
    /// persists a generation when at least one unit is proven and the units
    /// are not exactly those of the generation persisted last
    /// ([`Outcome::Unchanged`]). Safe on a live region: a unit that changed
    /// during the copy is not kept.
    pub fn take(&mut self, observer: &Observer, store: &mut Store) -> Result<Outcome, SnapshotError> {
        self.take_with(observer, store, || {})
    }

    /// As [`Snapshotter::take`], running `between` after the copy and before
    /// Post: lets a test change the region at the worst moment.
    pub fn take_with(
        &mut self,
        observer: &Observer,
        store: &mut Store,
        between: impl FnOnce(),
    ) -> Result<Outcome, SnapshotError> {
        match self.stage_with(observer, store, between)? {
            Outcome::Staged { .. } => Ok(self.persist_staged(store)?.expect("just staged")),
            other => Ok(other),
        }
    }

    /// The memory half of [`Snapshotter::take`]: Pre, copy into the staging
    /// area, Post, and keep the generation proven there for
    /// [`Snapshotter::persist_staged`] ([`Outcome::Staged`]). Nothing is
    /// written to the store. A generation staged before and not persisted
    /// yet is persisted first.
    ///
    /// Meant for a quiet region (after a death): the region can be made to
    /// hold exactly the staged generation with [`apply_meta`](super::apply_meta) at once, and
    /// a new program started on it before the store has it.
    pub fn stage(&mut self, observer: &Observer, store: &mut Store) -> Result<Outcome, SnapshotError> {
        self.stage_with(observer, store, || {})
    }

    fn stage_with(
        &mut self,
        observer: &Observer,
        store: &mut Store,
        between: impl FnOnce(),
    ) -> Result<Outcome, SnapshotError> {
        if self.staged.is_some() {
            self.persist_staged(store)?;
        }
        let g = *observer.geometry();
        observer.check_header()?;
        if self.geometry != Some(g) {
            self.adopt(&g);
        }
        let next_full = store.next_is_full(g.region_len);
        let prime = !self.full
            && match self.reference {
                Reference::Unknown => true,
                Reference::Blank => !next_full,
                Reference::Store => next_full && self.known_nonzero > 0,
            };
        if prime && let Err(e) = self.prime(observer, &g, store.dir()) {
            self.lost_track();
            return Err(e);
        }
        let commit_count = observer.commit_count();
        let next_seq = observer.next_seq();
        let mut pre = std::mem::take(&mut self.pre);
        let mut anomalies = observer.pre(&mut pre);
        let window = self.window(observer, &g, &pre, &mut anomalies, store.dir(), between);
        if window.is_err() {
            self.lost_track();
        }
        let result = window.and_then(|window| match window {
            None => Ok(Outcome::NoConsistentUnit {
                anomalies,
                pre_units: pre.len(),
            }),
            Some((kept, bytes_scanned)) => {
                let newest_pre = pre.iter().map(UnitRef::seq).max();
                self.keep(
                    &g,
                    kept,
                    newest_pre,
                    commit_count,
                    next_seq,
                    anomalies,
                    bytes_scanned,
                )
            }
        });
        self.pre = pre;
        result
    }

    /// After a prime or a window that failed part way (a page that could not
    /// be staged): the counters were read, so what changed is no longer
    /// known. The next snapshot primes, and its generation offers every
    /// page.
    fn lost_track(&mut self) {
        self.reference = Reference::Unknown;
        self.full = false;
        // What is staged is of no use now: its file's space goes back to
        // the disk (a failure to stage is most likely a full one).
        self.staging.reset(self.known.len() as u64);
    }

    /// Takes the page hashes and counters as they are for a region laid out
    /// as `g`: a restored image or a blank region of its length; anything
    /// else is unknown, and the next snapshot primes.
    fn adopt(&mut self, g: &Geometry) {
        let pages = g.region_len.div_ceil(PAGE_BYTES);
        // A layout that changed under a running snapshotter (a child that
        // rewrote its header) leaves nothing known: the counters are not
        // the same counters.
        if self.geometry.is_some() || self.reference == Reference::Unknown || self.known.len() as u64 != pages
        {
            self.reference = Reference::Unknown;
            self.known = vec![zero_hash(); pages as usize];
            self.known_nonzero = 0;
        }
        let chunks = g.arena_len.div_ceil(g.chunk_bytes) as usize;
        // A blank region's counters are zero; a restored one's were read
        // from its image, and are kept if they fit this layout.
        if self.ref_counters.len() != chunks {
            self.ref_counters = vec![0; chunks];
        }
        self.staging.reset(pages);
        self.full = false;
        self.ring_done = 0;
        self.suspects.clear();
        self.geometry = Some(*g);
    }

    /// Copies every page of the region that is not zero into the staging
    /// area, outside any window: the next generation holds every page. The
    /// window that follows copies what changed since.
    fn prime(&mut self, observer: &Observer, g: &Geometry, dir: &Path) -> Result<(), SnapshotError> {
        // ORDERING: counters first, then the copy: a write that lands after
        // the counters were read moves its counter again, and the window
        // copies it.
        observer.update_counters(&mut self.ref_counters, &mut self.moved);
        self.let_go_of_moved();
        let pages = g.region_len.div_ceil(PAGE_BYTES);
        self.staging.reset(pages);
        for p in 0..pages {
            let at = p * PAGE_BYTES;
            let len = PAGE_BYTES.min(g.region_len - at) as usize;
            self.page.resize(len, 0);
            observer.copy_range(at, &mut self.page)?;
            if self.page.iter().any(|b| *b != 0) {
                let hash = page_hash(&self.page);
                self.staging
                    .put(p, &self.page, hash, dir)
                    .map_err(|e| spill_error(dir, e))?;
            }
        }
        self.full = true;
        // A fresh copy holds whatever the region holds: nothing in it is a
        // change any more.
        self.suspects.clear();
        self.ring_done = 0;
        Ok(())
    }

    /// After Post: the meta of what was proven, kept as the staged
    /// generation unless it proves exactly the units persisted last.
    #[allow(clippy::too_many_arguments)]
    fn keep(
        &mut self,
        g: &Geometry,
        kept: Vec<UnitRef>,
        newest_pre: Option<u64>,
        commit_count: u64,
        next_seq: u64,
        anomalies: Anomalies,
        bytes_scanned: u64,
    ) -> Result<Outcome, SnapshotError> {
        let newest = *kept.last().expect("kept is not empty");
        let covers = (newest_pre == Some(newest.seq())).then_some(commit_count);
        let meta = meta_of(g, kept, commit_count, next_seq)?;
        if self.last_units.as_ref() == Some(&meta.units) {
            return Ok(Outcome::Unchanged {
                anomalies,
                meta,
                geometry: *g,
            });
        }
        self.last_units = Some(meta.units.clone());
        self.staged = Some(Staged {
            geometry: *g,
            meta: meta.clone(),
            anomalies,
            covers,
            bytes_scanned,
        });
        Ok(Outcome::Staged {
            units: meta.units.len(),
            anomalies,
            meta,
            geometry: *g,
        })
    }
}

/// A failure to stage pages past the memory bound, or to read them back.
fn spill_error(dir: &Path, why: std::io::Error) -> SnapshotError {
    SnapshotError::Staging {
        dir: dir.to_owned(),
        why,
    }
}

/// The meta of a generation proving `kept` (not empty, in sequence order),
/// with the region's counters read before Pre, checked as a restore checks
/// it.
fn meta_of(
    g: &Geometry,
    kept: Vec<UnitRef>,
    commit_count: u64,
    next_seq: u64,
) -> Result<Meta, SnapshotError> {
    let newest = *kept.last().expect("kept is not empty");
    // The live next sequence number is untrusted: keep it within what a
    // client accepts (past the newest unit, at most `slots` past the oldest).
    let oldest = kept[0].seq();
    let meta = Meta {
        cursor: newest.end(),
        // (`check_unit` keeps every seq below 2^62, so the bounds are in order.)
        next_seq: next_seq.clamp(
            newest.seq() + 1,
            (oldest + g.slots).min(layout::limits::MAX_COUNTER),
        ),
        // Untrusted too: above 2^62 a client refuses the restored region.
        commit_count: commit_count.min(layout::limits::MAX_COUNTER),
        units: kept,
    };
    // Everything persisted must restore: a meta that decodes against this
    // geometry.
    Meta::decode(&meta.encode(), g)?;
    Ok(meta)
}

/// What a quiet region (no program running on it) proves, without a
/// snapshotter: the meta of its valid units that pass the checks and the
/// chain rule, and what was wrong. `None` when no unit is proven. Copies
/// nothing: for a supervisor that must make a dead program's region hold
/// exactly its proven units while the snapshotter is busy elsewhere; the
/// units reach the store with the snapshotter's next generation.
pub fn quiet_meta(observer: &Observer) -> Result<(Option<Meta>, Anomalies), SnapshotError> {
    let g = *observer.geometry();
    observer.check_header()?;
    let commit_count = observer.commit_count();
    let next_seq = observer.next_seq();
    let (mut pre, mut kept) = (Vec::new(), Vec::new());
    let mut anomalies = observer.pre(&mut pre);
    anomalies.broken_chain += observer.post(&pre, &mut kept).broken_chain;
    if kept.is_empty() {
        return Ok((None, anomalies));
    }
    Ok((Some(meta_of(&g, kept, commit_count, next_seq)?), anomalies))
}

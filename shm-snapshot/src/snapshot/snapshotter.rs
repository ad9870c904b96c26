//! The snapshotter: Pre, copy into the shadow, Post, and the generation
//! proven there staged and persisted.

use crate::error::RegionError;
use crate::layout::{self, Geometry, UnitRef, header};
use crate::meta::Meta;
use crate::observe::{Anomalies, Observer};
use crate::store::{self, Store};

use super::{ArenaScan, Outcome, SnapshotError, UnmarkedWrite};

/// Chunks offered to the store at a time: 8 MiB, enough for the store to
/// spread hashing over threads (it splits batches of a MiB or more).
const RUN_CHUNKS: u64 = 128;

/// Takes consistent snapshots of one region into a store.
///
/// It keeps a shadow copy of the region (memory the size of the region),
/// made once outside any snapshot. Between Pre and Post a snapshot then
/// copies into the shadow only what can have changed: the header and unit
/// table, the ring bytes of units newer than the last kept ones, and the
/// arena chunks whose write counters moved (or, by [`ArenaScan`], every
/// arena chunk that differs from the shadow). That window is a few memory
/// copies, so a program committing fast still leaves units valid across
/// it. Hashing and writing to the store happen after Post, from the shadow;
/// the store writes only what differs from its newest generation.
#[derive(Debug, Default)]
pub struct Snapshotter {
    scan: ArenaScan,
    /// The region as last copied, chunk by chunk.
    shadow: Vec<u8>,
    /// The geometry the shadow was made for; `None` until it is primed.
    shadow_geometry: Option<Geometry>,
    /// The arena write counters read before the shadow's arena chunks were
    /// last copied: a counter that differs now means newer data.
    shadow_counters: Vec<u64>,
    /// Stream offset past the newest kept unit: the shadow's ring bytes
    /// before it belong to units that were proven intact, and valid units'
    /// bytes never change.
    ring_done: u64,
    /// For each store chunk, the pages (bit `p` for page `p`) whose shadow
    /// bytes changed since the newest persisted generation.
    dirty: Vec<u64>,
    /// Every chunk counts as changed (a fresh shadow, or after `forget`).
    all_dirty: bool,
    counters: Vec<u64>,
    pre: Vec<UnitRef>,
    scratch: Vec<u8>,
    /// A generation in the shadow waiting to be persisted.
    staged: Option<Staged>,
    /// The units of the generation last persisted or staged: a snapshot
    /// that proves exactly these has nothing new to persist.
    last_units: Option<Vec<UnitRef>>,
    /// The shadow holds what the region held before the program started
    /// on it (a restored image, or all zero): the first snapshot takes it
    /// as the copy of the region instead of copying the whole region.
    known: bool,
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

/// A generation taken into the shadow, not yet in the store.
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

    /// Forgets the shadow: the next snapshot copies the whole region again
    /// and offers every chunk. Call it after rewriting the region (restoring
    /// a generation).
    pub fn forget(&mut self) {
        debug_assert!(
            self.staged.is_none(),
            "a staged generation is persisted (persist_staged) before the shadow is forgotten"
        );
        self.shadow_geometry = None;
        self.staged = None;
        self.last_units = None;
        self.known = false;
    }

    /// After the region was rewritten with a generation of the store whose
    /// meta is `meta` (a restore): [`Snapshotter::forget`], and a snapshot
    /// that proves exactly `meta`'s units has nothing new to persist.
    pub fn restored(&mut self, meta: &Meta) {
        self.forget();
        self.last_units = Some(meta.units.clone());
    }

    /// As [`Snapshotter::restored`], where `image` is what the region was
    /// just made to hold (the generation's image; its unit table and
    /// counters as `meta` says are rewritten by every snapshot anyway). The
    /// image becomes the shadow: the first snapshot after the restore copies
    /// only what the program changed since, not the whole region, so a
    /// restart is followed by a generation as quickly as any other.
    pub fn restored_image(&mut self, meta: &Meta, image: Vec<u8>) {
        self.restored(meta);
        self.shadow = image;
        self.known = true;
    }

    /// The region was just made blank (all zero) for a program to start on:
    /// the shadow is a blank image of `region_len` bytes (its pages are not
    /// touched until written), and the first snapshot copies only what the
    /// program wrote. Every chunk counts as changed for the store. (Without
    /// the memory for it now, the first snapshot copies the region as after
    /// [`Snapshotter::forget`].)
    pub fn blank(&mut self, region_len: u64) {
        self.forget();
        if let Ok(blank) = store::zeroed(region_len, std::path::Path::new("the region's shadow")) {
            self.shadow = blank;
            self.known = true;
        }
    }

    /// Whether a generation taken by [`Snapshotter::stage`] waits to be
    /// persisted.
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
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

    /// The memory half of [`Snapshotter::take`]: Pre, copy into the shadow,
    /// Post, and keep the generation proven there for
    /// [`Snapshotter::persist_staged`] ([`Outcome::Staged`]). Nothing is
    /// hashed or written. A generation staged before and not persisted yet
    /// is persisted first (the copy would overwrite its bytes in the
    /// shadow), which is the only store access.
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
        if self.shadow_geometry != Some(g) {
            if self.known && self.shadow.len() as u64 == g.region_len {
                self.adopt(&g);
            } else {
                self.prime(observer, &g)?;
            }
        }
        let commit_count = observer.commit_count();
        let next_seq = observer.next_seq();
        let mut pre = std::mem::take(&mut self.pre);
        let mut anomalies = observer.pre(&mut pre);
        let result =
            self.window(observer, &g, &pre, &mut anomalies, between)
                .and_then(|window| match window {
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

    /// Copies the whole region into a fresh shadow, outside any snapshot.
    fn prime(&mut self, observer: &Observer, g: &Geometry) -> Result<(), RegionError> {
        // ORDERING: counters first, then the copy: a write that lands after
        // the counters were read moves its counter again, and a later window
        // copies it.
        observer.chunk_counters(&mut self.shadow_counters);
        self.known = false;
        self.shadow.clear();
        self.shadow.resize(g.region_len as usize, 0);
        observer.copy_range(0, &mut self.shadow)?;
        self.dirty = vec![0; g.region_len.div_ceil(store::CHUNK_BYTES) as usize];
        self.all_dirty = true;
        // A fresh shadow holds whatever the region holds: nothing in it is
        // a change any more.
        self.suspects.clear();
        self.ring_done = 0;
        self.shadow_geometry = Some(*g);
        Ok(())
    }

    /// Takes the shadow as it is as the copy of the region before the program
    /// started (see [`Snapshotter::known`]): the write counters it holds are
    /// the ones the region held then, so a chunk whose counter moved since
    /// is copied by the next window, and the rest is as the shadow says.
    fn adopt(&mut self, g: &Geometry) {
        let chunks = g.arena_len.div_ceil(g.chunk_bytes);
        self.shadow_counters.clear();
        self.shadow_counters.extend((0..chunks).map(|i| {
            let at = (g.counters_offset + i * layout::COUNTER_SIZE) as usize;
            u64::from_le_bytes(self.shadow[at..at + 8].try_into().expect("8 bytes"))
        }));
        self.dirty = vec![0; g.region_len.div_ceil(store::CHUNK_BYTES) as usize];
        // A blank shadow is no generation of the store: offer everything
        // once (a store without a current image writes a base anyway).
        self.all_dirty = self.last_units.is_none();
        self.ring_done = 0;
        self.shadow_geometry = Some(*g);
        self.known = false;
    }

    /// Between Pre and Post: copies into the shadow what can have changed,
    /// then runs Post. Returns the kept units and the bytes copied, or
    /// `None` when no unit survived.
    fn window(
        &mut self,
        observer: &Observer,
        g: &Geometry,
        pre: &[UnitRef],
        anomalies: &mut Anomalies,
        between: impl FnOnce(),
    ) -> Result<Option<(Vec<UnitRef>, u64)>, SnapshotError> {
        if pre.is_empty() {
            return Ok(None);
        }
        // ORDERING: the counters are read after Pre's acquire loads, so any
        // arena write a Pre unit describes has moved its counter by now.
        observer.chunk_counters(&mut self.counters);
        let mut copied = 0;
        // Header, unit table and counters: small, and always rewritten.
        copied += self.copy(observer, 0, g.ring_offset)?;
        // The ring bytes of units newer than the last kept ones.
        let newest_end = pre.iter().map(UnitRef::end).max().unwrap_or(0);
        let low = self.ring_done.max(newest_end.saturating_sub(g.ring_bytes));
        if low < newest_end {
            for (at, len) in g.ring_spans(low, newest_end - low) {
                copied += self.copy(observer, at, len)?;
            }
        }
        // Arena chunks: those whose counters moved, and (by the mode) every
        // other chunk compared with the shadow.
        let marking = self.counters.iter().any(|c| *c != 0);
        let (follow, compare) = match self.scan {
            ArenaScan::Hash => (false, true),
            ArenaScan::Hints => (true, false),
            ArenaScan::Auto => (marking, !marking),
            ArenaScan::Check => (true, true),
        };
        let checking = self.scan == ArenaScan::Check && marking;
        if checking {
            self.confirm_suspects(pre);
        }
        let mut unmarked = Vec::new();
        for i in 0..self.counters.len() {
            let at = g.arena_offset + i as u64 * g.chunk_bytes;
            let len = g.chunk_bytes.min(g.region_len - at);
            if follow && self.counters[i] != self.shadow_counters[i] {
                copied += self.copy(observer, at, len)?;
            } else if compare {
                let (n, changed) = self.copy_if_changed(observer, at, len)?;
                copied += n;
                if checking && changed {
                    unmarked.push(i as u64);
                }
            }
        }
        if !unmarked.is_empty() {
            // ORDERING: relaxed, a hint read after the chunks were
            // compared: a unit numbered at least this was published after
            // the writes the comparison saw (FORMAT.md, "The marking rule").
            let next_seq = observer.next_seq();
            for chunk in unmarked {
                if !self.suspects.iter().any(|s| s.chunk == chunk) {
                    let counter = self.counters[chunk as usize];
                    self.suspects.push(Suspect {
                        chunk,
                        counter,
                        next_seq,
                    });
                }
            }
        }
        between();

        let mut kept = Vec::new();
        let post = observer.post(pre, &mut kept);
        anomalies.broken_chain += post.broken_chain;
        // Whatever Post says, the shadow now holds data at least as new as
        // the counters read above.
        std::mem::swap(&mut self.shadow_counters, &mut self.counters);
        if kept.is_empty() {
            return Ok(None);
        }
        self.ring_done = kept.last().map_or(self.ring_done, UnitRef::end);
        Ok(Some((kept, copied)))
    }

    /// Copies `[at, at + len)` of the region aside, then into the shadow
    /// page by page where it differs, marking those pages changed: the
    /// store then hashes only pages that changed. Returns the bytes read.
    fn copy(&mut self, observer: &Observer, at: u64, len: u64) -> Result<u64, RegionError> {
        if len == 0 {
            return Ok(0);
        }
        self.copy_if_changed(observer, at, len).map(|(n, _)| n)
    }

    /// Copies `[at, at + len)` of the region aside, then into the shadow
    /// page by page where it differs, marking those pages changed. Returns
    /// the bytes read and whether any differed.
    fn copy_if_changed(
        &mut self,
        observer: &Observer,
        at: u64,
        len: u64,
    ) -> Result<(u64, bool), RegionError> {
        if len == 0 {
            return Ok((0, false));
        }
        self.scratch.resize(len as usize, 0);
        observer.copy_range(at, &mut self.scratch)?;
        let page = store::PAGE_BYTES;
        let mut changed = false;
        let mut from = at;
        while from < at + len {
            // Up to the next page boundary of the region.
            let to = ((from / page + 1) * page).min(at + len);
            let (a, b) = ((from - at) as usize, (to - at) as usize);
            let shadow = &mut self.shadow[from as usize..to as usize];
            if *shadow != self.scratch[a..b] {
                shadow.copy_from_slice(&self.scratch[a..b]);
                self.mark(from, to - from);
                changed = true;
            }
            from = to;
        }
        Ok((len, changed))
    }

    /// [`ArenaScan::Check`], with this window's counters read after Pre:
    /// drops the suspects whose counters moved since (their writes were
    /// marked after all), and proves unmarked the first whose counter
    /// stayed put while a unit published after its write is valid in
    /// `pre`: the program had to mark the write before publishing it.
    fn confirm_suspects(&mut self, pre: &[UnitRef]) {
        let newest = pre.iter().map(UnitRef::seq).max().unwrap_or(0);
        let counters = &self.counters;
        let mut proven = None;
        self.suspects.retain(|s| {
            if counters[s.chunk as usize] != s.counter {
                return false;
            }
            if newest >= s.next_seq {
                proven = proven.or(Some(*s));
                return false;
            }
            true
        });
        if self.reported.is_none() && self.found.is_none() {
            self.found = proven;
        }
    }

    /// Marks the pages of `[at, at + len)` changed.
    fn mark(&mut self, at: u64, len: u64) {
        let page = store::PAGE_BYTES;
        for p in at / page..=(at + len - 1) / page {
            let chunk = (p * page / store::CHUNK_BYTES) as usize;
            let within = (p * page % store::CHUNK_BYTES) / page;
            self.dirty[chunk] |= 1 << within;
        }
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

    /// Writes the generation [`Snapshotter::stage`] took as a generation of
    /// `store`: the shadow's changed chunks and the meta. `None` when none
    /// waits. On failure the generation is dropped (the region is ahead of
    /// the store); the chunks it changed stay marked, so the next
    /// generation persisted carries them.
    pub fn persist_staged(&mut self, store: &mut Store) -> Result<Option<Outcome>, SnapshotError> {
        let Some(staged) = self.staged.take() else {
            return Ok(None);
        };
        let persisted = self.persist(store, &staged);
        if persisted.is_err() {
            self.last_units = None;
        }
        persisted.map(Some)
    }

    /// Writes the changed chunks of the shadow and `staged`'s meta as a
    /// generation.
    fn persist(&mut self, store: &mut Store, staged: &Staged) -> Result<Outcome, SnapshotError> {
        let g = &staged.geometry;
        // The header as laid out: a child may have scribbled on it after
        // `check_header`, during the copy.
        let mut canonical = vec![(header::MAGIC, layout::MAGIC)];
        canonical.extend(g.fixed_fields());
        for (at, value) in canonical {
            self.shadow[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
        }
        self.mark(0, header::FIXED_END);
        let encoded = staged.meta.encode();
        let mut tx = store.begin(g.region_len)?;
        let base = tx.is_base();
        let chunks = self.dirty.len() as u64;
        if !base && !self.all_dirty {
            // Only the pages that changed, chunk by chunk.
            for (index, &pages) in self.dirty.iter().enumerate() {
                if pages == 0 {
                    continue;
                }
                let at = index * store::CHUNK_BYTES as usize;
                let end = (at + store::CHUNK_BYTES as usize).min(self.shadow.len());
                tx.put_pages(index as u64, pages, &self.shadow[at..end])?;
            }
        }
        let mut index = if !base && !self.all_dirty { chunks } else { 0 };
        while index < chunks {
            let offered = |i: u64| base || self.all_dirty || self.dirty[i as usize] != 0;
            if !offered(index) {
                index += 1;
                continue;
            }
            let mut last = index + 1;
            while last < chunks && last - index < RUN_CHUNKS && offered(last) {
                last += 1;
            }
            let at = (index * store::CHUNK_BYTES) as usize;
            let end = ((last * store::CHUNK_BYTES) as usize).min(self.shadow.len());
            // The store writes only pages that differ from its newest
            // generation (from zero, in a base).
            tx.put_chunks(index, &self.shadow[at..end])?;
            index = last;
        }
        let persisted = tx.commit(&encoded)?;
        self.dirty.iter_mut().for_each(|d| *d = 0);
        self.all_dirty = false;
        if let Some(found) = self.found.take() {
            let unmarked = UnmarkedWrite {
                chunk: found.chunk,
                arena_offset: found.chunk * g.chunk_bytes,
                len: g.chunk_bytes.min(g.arena_len - found.chunk * g.chunk_bytes),
                counter: found.counter,
                generation: persisted.number,
            };
            self.reported = Some(unmarked);
            if let Some(report) = self.report.0.as_mut() {
                report(&unmarked);
            }
        }
        Ok(Outcome::Persisted {
            persisted,
            units: staged.meta.units.len(),
            anomalies: staged.anomalies,
            meta: staged.meta.clone(),
            geometry: *g,
            covers: staged.covers,
            bytes_scanned: staged.bytes_scanned,
        })
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

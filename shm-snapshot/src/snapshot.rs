//! Taking a generation of a live region into the store, and putting a
//! generation back into a region.
//!
//! A generation is the region's chunks (copied between Pre and Post) plus a
//! [`Meta`] blob (`STORE.md`, "The meta blob"): the units proven consistent
//! and the header counters. The copied unit table is never trusted on
//! restore: the table is rewritten from the meta, every slot empty but the
//! kept units.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::RegionError;
use crate::layout::{self, Geometry, UnitRef, header, slot};
use crate::meta::MetaError;
// The blob's home is `crate::meta`; this name is kept for a caller that
// still imports it from here (shm-restore's fd-store take-back).
use crate::meta::Meta;
use crate::observe::{Anomalies, Observer};
use crate::region::Region;
use crate::store::{self, Loaded, Persisted, Store, StoreError};

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The region could not be read as a region.
    #[error("region: {0}")]
    Region(RegionError),
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
    /// The meta built from the region's units does not decode against its
    /// geometry, so the generation could not be restored; nothing was
    /// written. The region's table is to blame, as for
    /// [`SnapshotError::Region`].
    #[error("region's units: {0}")]
    Meta(MetaError),
}

// Not `#[from]`: that would make the inner error a source as well as part
// of the message, and a chain printed whole would say it twice.
impl From<RegionError> for SnapshotError {
    fn from(e: RegionError) -> Self {
        SnapshotError::Region(e)
    }
}

impl From<StoreError> for SnapshotError {
    fn from(e: StoreError) -> Self {
        SnapshotError::Store(e)
    }
}

impl From<MetaError> for SnapshotError {
    fn from(e: MetaError) -> Self {
        SnapshotError::Meta(e)
    }
}

/// Why a generation could not be put into a region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The image is not a region, or writing the region failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The generation's meta blob cannot be applied to the image's geometry.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// What one snapshot attempt did.
#[derive(Debug)]
#[non_exhaustive]
// One value per snapshot, moved once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// A generation was persisted with these units.
    Persisted {
        /// What the store wrote.
        persisted: Persisted,
        /// Units kept.
        units: usize,
        /// What the observer found wrong and left out.
        anomalies: Anomalies,
        /// The meta persisted with it, to make a quiet region hold exactly
        /// this generation with [`apply_meta`].
        meta: Meta,
        /// The region's geometry.
        geometry: Geometry,
        /// The client's commit count read just before Pre, when the newest
        /// unit valid at Pre was kept: every commit up to it is durable now.
        covers: Option<u64>,
        /// Bytes offered to the store (copied from the region and hashed).
        bytes_scanned: u64,
    },
    /// A generation was taken into memory ([`Snapshotter::stage`]) and
    /// waits for [`Snapshotter::persist_staged`].
    Staged {
        /// Units kept.
        units: usize,
        /// What the observer found wrong and left out.
        anomalies: Anomalies,
        /// The meta it will be persisted with, to make a quiet region hold
        /// exactly this generation with [`apply_meta`].
        meta: Meta,
        /// The region's geometry.
        geometry: Geometry,
    },
    /// The units proven are exactly those of the generation last persisted
    /// or staged: nothing new to persist, and nothing was.
    Unchanged {
        /// What the observer found wrong and left out.
        anomalies: Anomalies,
        /// The meta of what was proven (the same units), to make a quiet
        /// region hold exactly them with [`apply_meta`].
        meta: Meta,
        /// The region's geometry.
        geometry: Geometry,
    },
    /// No unit was proven consistent: nothing was written and the previous
    /// generation stands.
    NoConsistentUnit {
        /// What the observer found wrong.
        anomalies: Anomalies,
        /// Units valid at Pre; non-zero means every one of them changed
        /// during the copy (a starved attempt).
        pre_units: usize,
    },
}

/// How a snapshot finds the arena chunks that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArenaScan {
    /// Follow the program's write counters once it has moved any; while it
    /// has moved none, hash every arena chunk.
    #[default]
    Auto,
    /// Only the chunks whose write counters moved.
    Hints,
    /// Hash every arena chunk every time.
    Hash,
}

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
    /// Store chunks whose shadow bytes changed since the newest persisted
    /// generation.
    dirty: Vec<bool>,
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

    /// Forgets the shadow: the next snapshot copies the whole region again
    /// and offers every chunk. Call it after rewriting the region (restoring
    /// a generation).
    pub fn forget(&mut self) {
        self.shadow_geometry = None;
        self.staged = None;
        self.last_units = None;
    }

    /// After the region was rewritten with a generation of the store whose
    /// meta is `meta` (a restore): [`Snapshotter::forget`], and a snapshot
    /// that proves exactly `meta`'s units has nothing new to persist.
    pub fn restored(&mut self, meta: &Meta) {
        self.forget();
        self.last_units = Some(meta.units.clone());
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
    /// hold exactly the staged generation with [`apply_meta`] at once, and
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
            self.prime(observer, &g)?;
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
        self.shadow.clear();
        self.shadow.resize(g.region_len as usize, 0);
        observer.copy_range(0, &mut self.shadow)?;
        self.dirty = vec![false; g.region_len.div_ceil(store::CHUNK_BYTES) as usize];
        self.all_dirty = true;
        self.ring_done = 0;
        self.shadow_geometry = Some(*g);
        Ok(())
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
        // Arena chunks whose counters moved; or every chunk, compared.
        let compare_all = match self.scan {
            ArenaScan::Hash => true,
            ArenaScan::Auto => self.counters.iter().all(|c| *c == 0),
            ArenaScan::Hints => false,
        };
        for i in 0..self.counters.len() {
            let at = g.arena_offset + i as u64 * g.chunk_bytes;
            let len = g.chunk_bytes.min(g.region_len - at);
            if compare_all {
                copied += self.copy_if_changed(observer, at, len)?;
            } else if self.counters[i] != self.shadow_counters[i] {
                copied += self.copy(observer, at, len)?;
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

    /// Copies `[at, at + len)` of the region into the shadow and marks its
    /// chunks changed.
    fn copy(&mut self, observer: &Observer, at: u64, len: u64) -> Result<u64, RegionError> {
        if len == 0 {
            return Ok(0);
        }
        observer.copy_range(at, &mut self.shadow[at as usize..(at + len) as usize])?;
        self.mark(at, len);
        Ok(len)
    }

    /// Copies `[at, at + len)` aside and into the shadow only where it
    /// differs, marking those chunks changed.
    fn copy_if_changed(&mut self, observer: &Observer, at: u64, len: u64) -> Result<u64, RegionError> {
        self.scratch.resize(len as usize, 0);
        observer.copy_range(at, &mut self.scratch)?;
        let shadow = &mut self.shadow[at as usize..(at + len) as usize];
        if *shadow != self.scratch[..] {
            shadow.copy_from_slice(&self.scratch);
            self.mark(at, len);
        }
        Ok(len)
    }

    fn mark(&mut self, at: u64, len: u64) {
        let first = at / store::CHUNK_BYTES;
        let last = (at + len - 1) / store::CHUNK_BYTES;
        for dirty in &mut self.dirty[first as usize..=last as usize] {
            *dirty = true;
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
        // The live next sequence number is untrusted: keep it within what a
        // client accepts (past the newest unit, at most `slots` past the oldest).
        let oldest = kept[0].seq();
        let meta = Meta {
            cursor: newest.end(),
            next_seq: next_seq.clamp(newest.seq() + 1, oldest + g.slots),
            commit_count,
            units: kept,
        };
        // Everything persisted must restore: a meta that decodes against
        // this geometry.
        Meta::decode(&meta.encode(), g)?;
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
        let mut index = 0;
        while index < chunks {
            let offered = |i: u64| base || self.all_dirty || self.dirty[i as usize];
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
        self.dirty.iter_mut().for_each(|d| *d = false);
        self.all_dirty = false;
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

/// Maps the region in `file` read-only and observes it; `None` while it has
/// not been laid out.
///
/// `file` must be a memfd sealed against shrinking, as `shm-restore`'s
/// region and [`Region::anonymous`] are; anything else is refused with
/// [`RegionError::NotSealed`], because a file that shrank under the mapping
/// would fault the reader. To observe a file that cannot be sealed, map it
/// with the unsafe [`Region::from_file_read_only`] and pass that to
/// [`Observer::new`].
pub fn observe_file(file: &File) -> Result<Option<Observer>, RegionError> {
    Region::check_shrink_sealed(file)?;
    let dup = file
        .try_clone()
        .map_err(|e| RegionError::io("duplicating the region descriptor", e))?;
    // SAFETY: `dup` is the same open file as `file`, which is sealed against
    // shrinking (checked above; a seal is never removed), so it never
    // shrinks while mapped.
    let region = unsafe { Region::from_file_read_only(dup)? };
    match Observer::new(region) {
        Ok(observer) => Ok(Some(observer)),
        Err(RegionError::ForeignMagic { found: 0 }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a restore put into the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The generation's number.
    pub number: u64,
    /// Units valid in the region now.
    pub units: usize,
    /// Bytes written into the region.
    pub bytes: u64,
}

/// Puts a loaded generation into the region in `file` (which no program may
/// be using): its bytes, then its unit table and counters from the meta.
pub fn restore(file: &File, loaded: &Loaded) -> Result<Restored, RestoreError> {
    let g = image_geometry(&loaded.image)?;
    let meta = Meta::decode(&loaded.meta, &g)?;
    file.write_all_at(&loaded.image, 0)
        .map_err(|e| RegionError::io("writing the generation into the region", e))?;
    apply_meta(file, &g, &meta)?;
    Ok(Restored {
        number: loaded.number,
        units: meta.units.len(),
        bytes: loaded.image.len() as u64,
    })
}

/// Whether a supervisor can restore a generation whose region image is
/// `image` and whose meta blob is `meta`: the image's header must describe
/// a region of the image's length and the meta must pass [`Meta::decode`]
/// against it. `Err` says why not. This is the acceptance the supervisor
/// loads with ([`Store::load_newest_with`]); whatever judges generations
/// for it (prune, verify, export) uses it too, so a generation they call
/// restorable is one a supervisor restores.
pub fn restorable(image: &[u8], meta: &[u8]) -> Result<(), String> {
    restorable_head(image.len() as u64, image, meta)
}

/// [`restorable`] from the image's length and its first bytes, which is all
/// it reads: `head` must hold at least the region header
/// ([`layout::HEADER_BYTES`], or the whole image if shorter).
pub fn restorable_head(region_len: u64, head: &[u8], meta: &[u8]) -> Result<(), String> {
    let needed = region_len.min(layout::HEADER_BYTES);
    if (head.len() as u64) < needed {
        return Err(format!(
            "only {} bytes of the region's {needed}-byte header were given",
            head.len()
        ));
    }
    let g = Geometry::from_header(region_len, |at| {
        let at = at as usize;
        u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"))
    })
    .map_err(|e| e.to_string())?;
    Meta::decode(meta, &g).map(drop).map_err(|e| e.to_string())
}

/// The geometry of a region image, checked like a live header.
pub fn image_geometry(image: &[u8]) -> Result<Geometry, RegionError> {
    Geometry::from_header(image.len() as u64, |at| {
        let at = at as usize;
        u64::from_le_bytes(image[at..at + 8].try_into().expect("8 bytes"))
    })
}

/// Rewrites the region's unit table and header counters from `meta`: every
/// slot empty but the kept units, which are valid. The region must be
/// quiet (no program running on it).
pub fn apply_meta(file: &File, g: &Geometry, meta: &Meta) -> Result<(), RegionError> {
    let mut table = vec![0u8; (g.slots * slot::SIZE) as usize];
    for u in &meta.units {
        let base = (u.slot * slot::SIZE) as usize;
        for (field, value) in [(slot::TAG, u.tag.0), (slot::OFFSET, u.offset), (slot::LEN, u.len)] {
            let at = base + field as usize;
            table[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
    }
    let write = |bytes: &[u8], at: u64| {
        file.write_all_at(bytes, at)
            .map_err(|e| RegionError::io("rewriting the region's unit table", e))
    };
    write(&table, g.table_offset)?;
    write(&meta.cursor.to_le_bytes(), header::CURSOR)?;
    write(&meta.next_seq.to_le_bytes(), header::NEXT_SEQ)?;
    write(&meta.commit_count.to_le_bytes(), header::COMMIT_COUNT)?;
    // The copy may have caught the host asleep; a fresh run starts awake.
    write(&0u64.to_le_bytes(), header::HOST_FLAGS)?;
    Ok(())
}

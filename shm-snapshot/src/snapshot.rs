//! Taking a generation of a live region into the store, and putting a
//! generation back into a region.
//!
//! A generation is the region's chunks (copied between Pre and Post) plus a
//! [`Meta`] blob: the units proven consistent and the header counters. The
//! copied unit table is never trusted on restore: the table is rewritten
//! from `Meta`, every slot empty but the kept units.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::RegionError;
use crate::layout::{self, Geometry, Tag, UnitRef, header, slot};
use crate::observe::{Anomalies, Observer};
use crate::region::Region;
use crate::store::{self, Loaded, Persisted, Store, StoreError};

/// What a generation records besides the region's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The cursor to restore: the end of the newest kept unit.
    pub cursor: u64,
    /// The next sequence number to restore: past the newest kept unit and at
    /// most `slots` past the oldest (what a client accepts); the live value
    /// when it lies in that range. Ids of units lost in a crash may be
    /// given again after a restore; no kept unit's id is.
    pub next_seq: u64,
    /// The commit count to restore.
    pub commit_count: u64,
    /// The kept units, in sequence order.
    pub units: Vec<UnitRef>,
}

/// `SHM-META` as a little-endian u64.
const META_MAGIC: u64 = u64::from_le_bytes(*b"SHM-META");
const META_VERSION: u64 = 1;
/// Magic, version, cursor, next seq, commit count, unit count.
const META_HEADER_WORDS: usize = 6;
/// Slot, tag, offset, len.
const META_UNIT_WORDS: usize = 4;

impl Meta {
    /// Encodes the meta blob (little-endian u64 words).
    pub fn encode(&self) -> Vec<u8> {
        let mut words = vec![
            META_MAGIC,
            META_VERSION,
            self.cursor,
            self.next_seq,
            self.commit_count,
            self.units.len() as u64,
        ];
        for u in &self.units {
            words.extend([u.slot, u.tag.0, u.offset, u.len]);
        }
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Decodes a meta blob's shape (magic, version, unit count against its
    /// length) without a geometry to check the units against: for showing
    /// what a generation holds. Use [`Meta::decode`] before applying one.
    pub fn peek(bytes: &[u8]) -> Result<Meta, RegionError> {
        let bad = |why| RegionError::ImpossibleField {
            field: "generation meta",
            value: bytes.len() as u64,
            why,
        };
        if !bytes.len().is_multiple_of(8) || bytes.len() < META_HEADER_WORDS * 8 {
            return Err(bad("length is not a whole header of 8-byte words"));
        }
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect();
        if words[0] != META_MAGIC {
            return Err(bad("foreign magic"));
        }
        if words[1] != META_VERSION {
            return Err(bad("unknown version"));
        }
        let count = words[5];
        if count > (words.len() / META_UNIT_WORDS) as u64
            || words.len() != META_HEADER_WORDS + count as usize * META_UNIT_WORDS
        {
            return Err(bad("unit count does not match its length or the table"));
        }
        let units = words[META_HEADER_WORDS..]
            .chunks_exact(META_UNIT_WORDS)
            .map(|w| UnitRef {
                slot: w[0],
                tag: Tag(w[1]),
                offset: w[2],
                len: w[3],
            })
            .collect();
        Ok(Meta {
            cursor: words[2],
            next_seq: words[3],
            commit_count: words[4],
            units,
        })
    }

    /// Decodes and checks a meta blob against the geometry it will be
    /// applied to: every unit must pass [`Geometry::check_unit`] and the
    /// units must form a coherent chain.
    pub fn decode(bytes: &[u8], g: &Geometry) -> Result<Meta, RegionError> {
        let bad = |why| RegionError::ImpossibleField {
            field: "generation meta",
            value: bytes.len() as u64,
            why,
        };
        let Meta {
            cursor,
            next_seq,
            commit_count,
            mut units,
        } = Meta::peek(bytes)?;
        if units.len() as u64 > g.slots {
            return Err(bad("unit count does not match its length or the table"));
        }
        for u in &units {
            if u.slot >= g.slots || u.tag != Tag::valid(u.tag.seq()) {
                return Err(RegionError::CorruptSlot {
                    slot: u.slot,
                    why: "generation meta names a bad slot or tag",
                });
            }
            g.check_unit(u.slot, u.tag, u.offset, u.len)
                .map_err(|why| RegionError::CorruptSlot { slot: u.slot, why })?;
        }
        if let Some(i) = layout::sort_and_check_chain(&mut units, g.ring_bytes, g.slots) {
            return Err(RegionError::CorruptSlot {
                slot: units[i].slot,
                why: "generation meta breaks the chain",
            });
        }
        let newest = units.last().map_or(0, |u| u.seq());
        let oldest = units.first().map_or(0, |u| u.seq());
        let too_far = !units.is_empty() && next_seq.saturating_sub(oldest) > g.slots;
        if cursor > layout::limits::MAX_COUNTER
            || next_seq > layout::limits::MAX_COUNTER
            || next_seq <= newest
            || too_far
        {
            return Err(bad("cursor or next sequence number out of range"));
        }
        Ok(Meta {
            cursor,
            next_seq,
            commit_count,
            units,
        })
    }
}

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The region could not be read as a region.
    #[error("region: {0}")]
    Region(#[from] RegionError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
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
    /// No unit was proven consistent: nothing was written and the previous
    /// generation stands.
    NoConsistentUnit {
        /// What the observer found wrong.
        anomalies: Anomalies,
        /// Units valid at Pre; non-zero means every one of them changed
        /// during the copy (a starved attempt), or, when
        /// `anomalies.broken_chain` is non-zero, that the chain rule dropped
        /// the ones that did not.
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
    }

    /// Takes one snapshot: Pre, copy what can have changed, Post, and
    /// persists a generation when at least one unit is proven. Safe on a
    /// live region: a unit that changed during the copy is not kept.
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
                        self.persist(
                            store,
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
            let start = low & (g.ring_bytes - 1);
            let len = newest_end - low;
            let first = len.min(g.ring_bytes - start);
            copied += self.copy(observer, g.ring_offset + start, first)?;
            copied += self.copy(observer, g.ring_offset, len - first)?;
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

    /// After Post: writes the changed chunks of the shadow as a generation.
    #[allow(clippy::too_many_arguments)]
    fn persist(
        &mut self,
        store: &mut Store,
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
            // Untrusted too: above 2^62 a client refuses the restored region.
            commit_count: commit_count.min(layout::limits::MAX_COUNTER),
            units: kept,
        };
        // Everything persisted must restore: the header as laid out (a child
        // may have scribbled on it after `check_header`, during the copy),
        // and a meta that decodes against this geometry.
        let mut canonical = vec![(header::MAGIC, layout::MAGIC)];
        canonical.extend(g.fixed_fields());
        for (at, value) in canonical {
            self.shadow[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
        }
        self.mark(0, header::FIXED_END);
        let encoded = meta.encode();
        Meta::decode(&encoded, g)?;
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
        let units = meta.units.len();
        let persisted = tx.commit(&encoded)?;
        self.dirty.iter_mut().for_each(|d| *d = false);
        self.all_dirty = false;
        Ok(Outcome::Persisted {
            persisted,
            units,
            anomalies,
            meta,
            geometry: *g,
            covers,
            bytes_scanned,
        })
    }
}

/// Maps the region in `file` read-only and observes it; `None` while it has
/// not been laid out.
pub fn observe_file(file: &File) -> Result<Option<Observer>, RegionError> {
    let dup = file
        .try_clone()
        .map_err(|e| RegionError::io("duplicating the region descriptor", e))?;
    // SAFETY: the supervisor's memfd is sealed against shrinking, and a
    // file handed to this function must not shrink while it is observed.
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
pub fn restore(file: &File, loaded: &Loaded) -> Result<Restored, RegionError> {
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

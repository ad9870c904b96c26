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
    /// The next sequence number to restore: past every sequence number the
    /// region had used, so ids stay unique across a restore.
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

    /// Decodes and checks a meta blob against the geometry it will be
    /// applied to: every unit must pass [`Geometry::check_unit`] and the
    /// units must form a coherent chain.
    pub fn decode(bytes: &[u8], g: &Geometry) -> Result<Meta, RegionError> {
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
        if count > g.slots || words.len() != META_HEADER_WORDS + count as usize * META_UNIT_WORDS {
            return Err(bad("unit count does not match its length or the table"));
        }
        let mut units: Vec<UnitRef> = words[META_HEADER_WORDS..]
            .chunks_exact(META_UNIT_WORDS)
            .map(|w| UnitRef {
                slot: w[0],
                tag: Tag(w[1]),
                offset: w[2],
                len: w[3],
            })
            .collect();
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
        let (cursor, next_seq) = (words[2], words[3]);
        let oldest = units.first().map_or(0, |u| u.seq());
        let too_far = !units.is_empty() && next_seq - oldest > g.slots;
        if cursor > layout::limits::MAX_COUNTER
            || next_seq >= layout::limits::MAX_COUNTER
            || next_seq <= newest
            || too_far
        {
            return Err(bad("cursor or next sequence number out of range"));
        }
        Ok(Meta {
            cursor,
            next_seq,
            commit_count: words[4],
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
    },
    /// No unit was proven consistent: nothing was written and the previous
    /// generation stands.
    NoConsistentUnit {
        /// What the observer found wrong.
        anomalies: Anomalies,
    },
    /// The region has not been laid out (its magic is zero): the program has
    /// not opened it yet, so there is nothing to keep.
    Blank,
}

/// Takes a snapshot of the region in `file` into `store`: Pre, copy every
/// chunk (the store writes only those that changed), Post, and persists a
/// generation when at least one unit is proven. Safe on a live region: a
/// unit that changed during the copy is not kept.
pub fn take(file: &File, store: &mut Store) -> Result<Outcome, SnapshotError> {
    let dup = file
        .try_clone()
        .map_err(|e| RegionError::io("duplicating the region descriptor", e))?;
    // SAFETY: the supervisor's memfd is sealed against shrinking, and a
    // file handed to this function must not shrink while it runs.
    let region = unsafe { Region::from_file_read_only(dup)? };
    let observer = match Observer::new(region) {
        Ok(observer) => observer,
        Err(RegionError::ForeignMagic { found: 0 }) => return Ok(Outcome::Blank),
        Err(e) => return Err(e.into()),
    };
    let g = *observer.geometry();
    let mut pre = Vec::new();
    let mut anomalies = observer.pre(&mut pre);
    let next_seq = observer.next_seq();
    let commit_count = observer.commit_count();

    let mut tx = store.begin(g.region_len)?;
    let mut chunk = vec![0u8; store::CHUNK_BYTES as usize];
    for index in 0..g.region_len.div_ceil(store::CHUNK_BYTES) {
        let at = index * store::CHUNK_BYTES;
        let len = store::CHUNK_BYTES.min(g.region_len - at) as usize;
        observer.copy_range(at, &mut chunk[..len])?;
        // A base leaves chunks it is not offered all zero: most of a young
        // region is, and need not be written.
        if tx.is_base() && chunk[..len].iter().all(|b| *b == 0) {
            continue;
        }
        tx.put_chunk(index, &chunk[..len])?;
    }

    let mut kept = Vec::new();
    let post = observer.post(&pre, &mut kept);
    anomalies.broken_chain += post.broken_chain;
    let Some(newest) = kept.last() else {
        return Ok(Outcome::NoConsistentUnit { anomalies });
    };
    // The live next sequence number is untrusted: keep it within what a
    // client accepts (past the newest unit, at most `slots` past the oldest).
    let oldest = kept[0].seq();
    let meta = Meta {
        cursor: newest.end(),
        next_seq: next_seq.clamp(newest.seq() + 1, oldest + g.slots),
        commit_count,
        units: kept,
    };
    let units = meta.units.len();
    let persisted = tx.commit(&meta.encode())?;
    Ok(Outcome::Persisted {
        persisted,
        units,
        anomalies,
        meta,
        geometry: g,
    })
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
    Ok(())
}

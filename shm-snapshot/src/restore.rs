//! What a supervisor restores from a store, decided once.
//!
//! The supervisor at start and after a death, the take-back of a region
//! handed back by a service manager, and every operator command that names
//! "the generation a supervisor would restore" ask this module, so that
//! they agree. The rule:
//!
//! - the newest generation whose whole chain verifies (STORE.md, "Loading
//!   the newest generation") and whose region header and meta blob decode
//!   against each other ([`snapshot::restorable`]) is the **newest
//!   restorable** generation;
//! - a newer generation that verifies but does not decode is skipped like
//!   a damaged one;
//! - a newest restorable generation of another region size than the one
//!   asked for is not skipped: that is no fault of the generation, and the
//!   caller refuses it with an error naming the size.
//!
//! Whatever did not restore is reported by cause ([`Damage`]).
//!
//! "Newest restorable" is this rule's answer; the generation a store last
//! loaded or committed (the parent of its next delta) is
//! [`Store::current_generation`].

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::RegionError;
use crate::layout::{self, Geometry};
use crate::meta::Meta;
use crate::snapshot::{self, Restored};
use crate::store::{Checked, Condition, Damage, Store, StoreError};

/// Bytes of the region read at a time to compare with a generation.
const COMPARE_BYTES: usize = 1 << 20;

/// What a supervisor would restore from a store.
#[derive(Debug)]
pub enum Restorable {
    /// The store holds no generation: the program starts on a blank region.
    Empty,
    /// Generations exist, and none of them verifies and restores. Nothing
    /// was loaded.
    Damaged(Damage),
    /// The newest generation that verifies and restores holds a region of
    /// `region_len` bytes, not the size asked for.
    OtherSize {
        /// The generation's number.
        number: u64,
        /// The length of the region it holds.
        region_len: u64,
        /// Newer generations skipped on the way, by cause.
        skipped: Damage,
    },
    /// The newest restorable generation, loaded and decoded.
    Generation(Generation),
}

/// The newest restorable generation, loaded and decoded.
#[derive(Debug)]
#[non_exhaustive]
pub struct Generation {
    /// Its number.
    pub number: u64,
    /// The region's bytes.
    pub image: Vec<u8>,
    /// The layout the image's header describes.
    pub geometry: Geometry,
    /// Its meta blob, decoded against that layout.
    pub meta: Meta,
    /// For each page of the image, whether it may hold a non-zero byte.
    pub data_pages: Vec<bool>,
    /// Newer generations skipped on the way, by cause.
    pub skipped: Damage,
    /// Base files that did not verify, read around through the records
    /// they checkpoint (see [`crate::store::Loaded::damaged_bases`]).
    pub damaged_bases: Vec<(u64, StoreError)>,
}

impl Generation {
    /// Puts the generation into the region in `file` (which no program may
    /// be using, and which must be `image.len()` bytes long): its bytes,
    /// then its unit table and counters from the meta.
    ///
    /// Only the pages that differ from what the region holds are written
    /// ([`Restored::bytes`] counts them): a region rebuilt from a
    /// generation close to its content (a relaunch after a death) costs a
    /// read of the region, not a rewrite of it, and pages the program never
    /// touched stay unallocated.
    pub fn write_to(&self, file: &File) -> Result<Restored, RegionError> {
        let io = |e| RegionError::io("writing the generation into the region", e);
        let mut held = vec![0u8; COMPARE_BYTES.min(self.image.len())];
        let mut written = 0u64;
        for (index, want) in self.image.chunks(COMPARE_BYTES).enumerate() {
            let at = (index * COMPARE_BYTES) as u64;
            let held = &mut held[..want.len()];
            file.read_exact_at(held, at).map_err(io)?;
            let page = layout::PAGE as usize;
            let mut p = 0;
            while p < want.len() {
                let end = (p + page).min(want.len());
                if want[p..end] == held[p..end] {
                    p = end;
                    continue;
                }
                // A run of differing pages, written at once.
                let mut run_end = end;
                while run_end < want.len() {
                    let next = (run_end + page).min(want.len());
                    if want[run_end..next] == held[run_end..next] {
                        break;
                    }
                    run_end = next;
                }
                file.write_all_at(&want[p..run_end], at + p as u64).map_err(io)?;
                written += (run_end - p) as u64;
                p = run_end;
            }
        }
        snapshot::apply_meta(file, &self.geometry, &self.meta)?;
        Ok(Restored {
            number: self.number,
            units: self.meta.units.len(),
            bytes: written,
        })
    }
}

impl Generation {
    /// Puts the generation into the region in `file`, which must be blank
    /// (all zero, as a region just made is) and `image.len()` bytes long:
    /// only the pages that may hold data are written, so the cost follows
    /// the data, not the region. Then its unit table and counters.
    pub fn write_to_blank(&self, file: &File) -> Result<Restored, RegionError> {
        let io = |e| RegionError::io("writing the generation into the region", e);
        let page = layout::PAGE as usize;
        let mut written = 0u64;
        let mut p = 0;
        while p < self.data_pages.len() {
            if !self.data_pages[p] {
                p += 1;
                continue;
            }
            // A run of pages with data, written at once (at most 1 MiB).
            let mut end = p + 1;
            while end < self.data_pages.len() && self.data_pages[end] && (end - p) * page < COMPARE_BYTES {
                end += 1;
            }
            let from = p * page;
            let to = (end * page).min(self.image.len());
            file.write_all_at(&self.image[from..to], from as u64)
                .map_err(io)?;
            written += (to - from) as u64;
            p = end;
        }
        snapshot::apply_meta(file, &self.geometry, &self.meta)?;
        Ok(Restored {
            number: self.number,
            units: self.meta.units.len(),
            bytes: written,
        })
    }
}

/// The acceptance a generation that verifies must pass to be restored into
/// a region of `region_len` bytes (any length with `None`), for
/// [`Store::load_newest_with`] and [`Store::prune_to_with`]. An image of
/// another length passes: see [`Restorable::OtherSize`].
pub fn acceptance(region_len: Option<u64>) -> impl FnMut(&[u8], &[u8]) -> Result<(), String> {
    move |image, meta| accepted(image, meta, region_len).map(drop)
}

/// The rule behind [`acceptance`]: `Ok(None)` for an image of another
/// length than `region_len`, else the image's geometry and its meta decoded
/// against it ([`snapshot::restorable`]'s checks), or why not.
fn accepted(image: &[u8], meta: &[u8], region_len: Option<u64>) -> Result<Option<(Geometry, Meta)>, String> {
    if region_len.is_some_and(|len| image.len() as u64 != len) {
        return Ok(None);
    }
    let geometry = snapshot::image_geometry(image).map_err(|e| e.to_string())?;
    let meta = Meta::decode(meta, &geometry).map_err(|e| e.to_string())?;
    Ok(Some((geometry, meta)))
}

/// What a supervisor would restore from `store` into a region of
/// `region_len` bytes (any length with `None`). Loads it: the store's next
/// delta builds on it. Reads only; on a store opened read-only it works
/// the same.
pub fn newest_restorable(store: &mut Store, region_len: Option<u64>) -> Result<Restorable, StoreError> {
    // The acceptance decodes the generation it accepts; the last one it
    // accepted is the one loaded, so nothing is decoded twice.
    let mut decoded: Option<(Geometry, Meta)> = None;
    let accept = |image: &[u8], meta: &[u8]| {
        let result = accepted(image, meta, region_len);
        decoded = result.as_ref().ok().cloned().flatten();
        result.map(drop)
    };
    let loaded = match store.load_newest_with(accept) {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return Ok(Restorable::Empty),
        Err(StoreError::NoVerifiedGeneration { .. }) => {
            let failures = store.take_last_load_skipped();
            return Ok(Restorable::Damaged(group(store, failures)));
        }
        Err(e) => return Err(e),
    };
    let skipped = group(store, loaded.skipped);
    match decoded {
        Some((geometry, meta)) => Ok(Restorable::Generation(Generation {
            number: loaded.number,
            image: loaded.image,
            geometry,
            meta,
            data_pages: loaded.data_pages,
            skipped,
            damaged_bases: loaded.damaged_bases,
        })),
        None => Ok(Restorable::OtherSize {
            number: loaded.number,
            region_len: loaded.image.len() as u64,
            skipped,
        }),
    }
}

fn group(store: &Store, failures: Vec<(u64, StoreError)>) -> Damage {
    let present = store.present();
    Damage::group(failures, |n| present.contains(&n))
}

/// Whether a supervisor would restore generation `c`, as far as
/// [`Store::check_all`] saw it: it is intact, and its region's header and
/// its meta pass [`snapshot::restorable`]. `Err` says why not.
pub fn checked_restorable(c: &Checked) -> Result<(), String> {
    let (Some(info), Some(first), Some(meta)) = (&c.info, &c.first_page, &c.meta) else {
        return Err("it does not verify".to_owned());
    };
    snapshot::restorable_head(info.region_len, first, meta)
}

/// The newest restorable generation among those [`Store::check_all`]
/// checked.
pub fn newest_checked_restorable(checked: &[Checked]) -> Option<u64> {
    checked
        .iter()
        .rev()
        .find(|c| c.condition.is_intact() && checked_restorable(c).is_ok())
        .map(|c| c.number)
}

/// The damage [`Store::check_all`] found, by cause.
pub fn checked_damage(checked: Vec<Checked>) -> Damage {
    let present: std::collections::BTreeSet<u64> = checked
        .iter()
        .filter(|c| !matches!(c.condition, Condition::Vanished))
        .map(|c| c.number)
        .collect();
    let failures = checked
        .into_iter()
        .filter_map(|c| match c.condition {
            Condition::Damaged(e) | Condition::BrokenChain(e) => Some((c.number, e)),
            _ => None,
        })
        .collect();
    Damage::group(failures, |n| present.contains(&n))
}

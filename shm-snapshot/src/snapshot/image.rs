//! A region in a file and a generation's image: observing one, putting a
//! generation into one, and judging whether a generation can be put.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::RegionError;
use crate::layout::{self, Geometry, header, slot};
use crate::meta::Meta;
use crate::observe::Observer;
use crate::region::Region;
use crate::store::Loaded;

use super::RestoreError;

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
/// loads with ([`Store::load_newest_with`](crate::store::Store::load_newest_with)); whatever judges generations
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

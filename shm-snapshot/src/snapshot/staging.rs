//! The pages a snapshot copied out of the region for a generation the store
//! does not hold yet: in memory up to a bound, past it in an unnamed file in
//! the store's directory, so a generation that changed more than the bound
//! is still taken in one window, with the supervisor's memory bounded.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::store::PAGE_BYTES;

/// Bytes of a page.
pub(super) const PAGE: usize = PAGE_BYTES as usize;

/// Bytes of staged pages held in memory; pages past it go to the spill
/// file. 16 MiB is several seconds of a program rewriting a 4 KiB page a
/// thousand times a second, between two generations.
pub const STAGING_BYTES: usize = 16 << 20;

/// The short hash a snapshot compares pages by: 64-bit xxh3, a few
/// hundredths of a nanosecond a byte, so a window can hash every page it
/// reads. It only decides what to copy and offer; what the store keeps is
/// hashed with blake3 after Post.
pub(super) fn page_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// [`page_hash`] of an all-zero page.
pub(super) fn zero_hash() -> u64 {
    static ZERO: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| page_hash(&[0; PAGE]))
}

/// [`Entry::slot`] of a page that is all zero: no bytes kept.
const ZERO: u32 = u32::MAX;

/// One staged page: 16 bytes (a region has fewer than 2^32 pages, and a
/// generation fewer slots).
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    /// Its index in the region.
    page: u32,
    /// Where its bytes are: slot `n` in memory below the bound, in the
    /// spill file past it; [`ZERO`] for a page that is all zero.
    slot: u32,
    /// [`page_hash`] of its bytes.
    pub hash: u64,
}

impl Entry {
    /// The page's index in the region.
    pub fn page(&self) -> u64 {
        u64::from(self.page)
    }
}

/// Entries (16 bytes each) and changed-counter lists kept allocated between
/// generations at most: past it, a large generation's lists are let go.
pub(super) const KEEP_ENTRIES: usize = 1 << 16;

/// Staged pages, the newest copy of each.
#[derive(Debug, Default)]
pub(super) struct Staging {
    entries: Vec<Entry>,
    /// For each page of the region: 1 + the index of its entry, or 0.
    index: Vec<u32>,
    /// Slots in memory, [`PAGE`] bytes each.
    memory: Vec<u8>,
    /// Slots past the memory bound, at `(slot - memory slots) * PAGE`.
    spill: Option<File>,
    /// Slots used, in memory and spilled.
    slots: u32,
    /// Bytes held in memory at most; [`STAGING_BYTES`] when 0.
    bound: usize,
}

impl Staging {
    /// Holds at most `bytes` in memory (rounded down to whole pages, at
    /// least one page).
    pub fn set_bound(&mut self, bytes: usize) {
        self.bound = bytes.max(PAGE);
    }

    /// Pages held in memory at most.
    fn in_memory(&self) -> u64 {
        let bound = if self.bound == 0 {
            STAGING_BYTES
        } else {
            self.bound
        };
        (bound / PAGE) as u64
    }

    /// Forgets every staged page, for a region of `pages` pages.
    pub fn reset(&mut self, pages: u64) {
        if self.index.len() as u64 != pages {
            self.index = vec![0; pages as usize];
        } else {
            for e in &self.entries {
                self.index[e.page as usize] = 0;
            }
        }
        self.entries.clear();
        if self.entries.capacity() > KEEP_ENTRIES {
            self.entries = Vec::new();
        }
        self.memory.clear();
        self.slots = 0;
        // A spill file over a bound of its own is given back to the disk.
        if let Some(spill) = &self.spill
            && spill
                .metadata()
                .is_ok_and(|m| m.len() > self.in_memory() * PAGE as u64)
        {
            let _ = spill.set_len(0);
        }
    }

    /// Whether nothing is staged.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The staged pages, in the order they were first staged (in page order
    /// after [`Staging::sort`]).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The hash of page `page`'s staged copy, if it has one.
    pub fn hash_of(&self, page: u64) -> Option<u64> {
        match self.index.get(page as usize) {
            Some(&i) if i > 0 => Some(self.entries[i as usize - 1].hash),
            _ => None,
        }
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.memory.len()
    }

    /// Stages `bytes` (a page, or the region's short last page) as page
    /// `page`, whose hash is `hash`, replacing an older copy in place (its
    /// slot is reused: a page staged many times takes one slot). A page
    /// past the memory bound goes to the spill file, made in `dir` when
    /// first needed; failing that, nothing is staged and the error says
    /// why.
    pub fn put(&mut self, page: u64, bytes: &[u8], hash: u64, dir: &Path) -> io::Result<()> {
        let existing = match self.index[page as usize] {
            0 => None,
            i => Some(i as usize - 1),
        };
        let slot = if hash == zero_hash() && bytes.iter().all(|b| *b == 0) {
            ZERO
        } else {
            let slot = match existing.map(|i| self.entries[i].slot) {
                Some(slot) if slot != ZERO => slot,
                _ if self.slots == ZERO => {
                    return Err(io::Error::other("more pages staged than a generation can hold"));
                }
                _ => self.slots,
            };
            self.write_slot(slot, bytes, dir)?;
            if slot == self.slots {
                self.slots += 1;
            }
            slot
        };
        let entry = Entry {
            page: page as u32,
            slot,
            hash,
        };
        match existing {
            None => {
                self.entries.push(entry);
                self.index[page as usize] = self.entries.len() as u32;
            }
            Some(i) => self.entries[i] = entry,
        }
        Ok(())
    }

    /// Writes a page's bytes into slot `slot` (a new one is the next).
    fn write_slot(&mut self, slot: u32, bytes: &[u8], dir: &Path) -> io::Result<()> {
        let in_memory = self.in_memory();
        if u64::from(slot) < in_memory {
            let at = slot as usize * PAGE;
            if self.memory.capacity() < at + PAGE {
                // The whole bound at once: growing by doubling could take
                // up to twice the bound.
                self.memory
                    .reserve_exact(in_memory as usize * PAGE - self.memory.len());
            }
            if self.memory.len() < at + PAGE {
                self.memory.resize(at + PAGE, 0);
            }
            self.memory[at..at + bytes.len()].copy_from_slice(bytes);
        } else {
            let spill = match &mut self.spill {
                Some(spill) => spill,
                none => none.insert(tempfile::tempfile_in(dir)?),
            };
            let mut page_bytes = [0; PAGE];
            page_bytes[..bytes.len()].copy_from_slice(bytes);
            spill.write_all_at(&page_bytes, (u64::from(slot) - in_memory) * PAGE as u64)?;
        }
        Ok(())
    }

    /// Puts the entries in page order.
    pub fn sort(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.page);
        for (i, e) in self.entries.iter().enumerate() {
            self.index[e.page as usize] = i as u32 + 1;
        }
    }

    /// Copies `entry`'s bytes into `out` (a page, or the region's short
    /// last page).
    pub fn read(&self, entry: &Entry, out: &mut [u8]) -> io::Result<()> {
        let in_memory = self.in_memory();
        if entry.slot == ZERO {
            out.fill(0);
        } else if u64::from(entry.slot) < in_memory {
            let at = entry.slot as usize * PAGE;
            out.copy_from_slice(&self.memory[at..at + out.len()]);
        } else {
            let spill = self
                .spill
                .as_ref()
                .ok_or_else(|| io::Error::other("no spill file"))?;
            spill.read_exact_at(out, (u64::from(entry.slot) - in_memory) * PAGE as u64)?;
        }
        Ok(())
    }

    /// Whether any page is held in the spill file.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        u64::from(self.slots) > self.in_memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE]
    }

    #[test]
    fn pages_past_the_memory_bound_are_read_back_from_the_spill_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staging::default();
        s.set_bound(4 * PAGE);
        let pages = 4 + 3;
        s.reset(pages + 1);
        for p in 0..pages {
            let bytes = page((p % 251) as u8 + 1);
            s.put(p, &bytes, page_hash(&bytes), dir.path()).unwrap();
        }
        assert!(s.spilled());
        assert_eq!(s.memory_bytes(), 4 * PAGE);
        let mut out = page(0);
        for e in s.entries().to_vec() {
            s.read(&e, &mut out).unwrap();
            assert_eq!(out, page((e.page % 251) as u8 + 1), "page {}", e.page);
        }
    }

    #[test]
    fn a_newer_copy_replaces_the_older_and_zero_pages_hold_no_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staging::default();
        s.reset(8);
        let (a, b, zero) = (page(7), page(9), page(0));
        s.put(5, &a, page_hash(&a), dir.path()).unwrap();
        s.put(2, &zero, zero_hash(), dir.path()).unwrap();
        s.put(5, &b, page_hash(&b), dir.path()).unwrap();
        assert_eq!(s.entries().len(), 2);
        assert_eq!(s.hash_of(5), Some(page_hash(&b)));
        assert_eq!(s.hash_of(2), Some(zero_hash()));
        assert_eq!(s.hash_of(3), None);
        s.sort();
        assert_eq!(s.entries().iter().map(|e| e.page).collect::<Vec<_>>(), [2, 5]);
        let mut out = page(1);
        s.read(&s.entries()[0], &mut out).unwrap();
        assert_eq!(out, zero);
        s.read(&s.entries()[1], &mut out).unwrap();
        assert_eq!(out, b);
        // The newer copy took the older's slot; the zero page none.
        assert_eq!(s.memory_bytes(), PAGE);
        // Restaged many times, a page still holds one slot.
        for k in 0..100u8 {
            let bytes = page(k | 1);
            s.put(5, &bytes, page_hash(&bytes), dir.path()).unwrap();
        }
        assert_eq!(s.memory_bytes(), PAGE);
        s.reset(8);
        assert!(s.is_empty());
        assert_eq!(s.hash_of(5), None);
    }
}

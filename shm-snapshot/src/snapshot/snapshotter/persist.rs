//! After Post: the staged pages and the meta written as a generation of
//! the store, and the page hashes made to describe it.

use std::path::Path;

use crate::layout::{self, Geometry, header};
use crate::store::{CHUNK_BYTES, PAGE_BYTES, Store};

use super::super::staging::{Entry, page_hash, zero_hash};
use super::super::{Outcome, SnapshotError, UnmarkedWrite};
use super::{RUN_CHUNKS, Reference, Snapshotter, Staged, spill_error};

impl Snapshotter {
    /// Writes the generation [`Snapshotter::stage`] took as a generation of
    /// `store`: the staged pages that differ from the store's newest
    /// generation, and the meta. `None` when none waits. On failure the
    /// generation is dropped (the region is ahead of the store); its pages
    /// stay staged, so the next generation persisted carries them.
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

    /// Writes the staged pages and `staged`'s meta as a generation.
    fn persist(&mut self, store: &mut Store, staged: &Staged) -> Result<Outcome, SnapshotError> {
        let g = &staged.geometry;
        let dir = store.dir().to_owned();
        self.canonical_header(g, &dir)?;
        let encoded = staged.meta.encode();
        self.staging.sort();
        let mut tx = store.begin(g.region_len)?;
        let base = tx.is_base();
        // What was staged was planned for one kind of generation; the store
        // began another (it cannot today: a staged generation is persisted
        // before the store could change). Dropping the transaction leaves
        // the store as it was, and the next snapshot primes.
        let planned_for_base = !self.full && self.reference != Reference::Store;
        if (base && !self.full && self.known_nonzero > 0) || (!base && planned_for_base) {
            self.lost_track();
            return Err(SnapshotError::NeedsFull);
        }
        let chunks = g.region_len.div_ceil(CHUNK_BYTES);
        let entries = self.staging.entries();
        let staging = &self.staging;
        let read = |e: &Entry, out: &mut [u8]| staging.read(e, out).map_err(|err| spill_error(&dir, err));
        let page_range = |page: u64, from: u64| {
            let at = (page * PAGE_BYTES - from) as usize;
            let len = PAGE_BYTES.min(g.region_len - page * PAGE_BYTES) as usize;
            at..at + len
        };
        if self.full {
            // Every chunk, zero where no page is staged, a run at a time
            // (the store hashes a run on several threads).
            let mut e = 0;
            for first in (0..chunks).step_by(RUN_CHUNKS as usize) {
                let from = first * CHUNK_BYTES;
                let to = ((first + RUN_CHUNKS) * CHUNK_BYTES).min(g.region_len);
                self.chunks.clear();
                self.chunks.resize((to - from) as usize, 0);
                while let Some(entry) = entries.get(e).filter(|x| x.page() * PAGE_BYTES < to) {
                    read(entry, &mut self.chunks[page_range(entry.page(), from)])?;
                    e += 1;
                }
                tx.put_chunks(first, &self.chunks)?;
            }
        } else {
            // Chunk by chunk, only the pages that differ from the store's.
            let mut e = 0;
            while e < entries.len() {
                let index = entries[e].page() * PAGE_BYTES / CHUNK_BYTES;
                let from = index * CHUNK_BYTES;
                let to = (from + CHUNK_BYTES).min(g.region_len);
                self.chunks.clear();
                self.chunks.resize((to - from) as usize, 0);
                let mut pages = 0u64;
                while let Some(entry) = entries.get(e).filter(|x| x.page() * PAGE_BYTES < to) {
                    if base || entry.hash != self.known[entry.page() as usize] {
                        read(entry, &mut self.chunks[page_range(entry.page(), from)])?;
                        pages |= 1 << (entry.page() - from / PAGE_BYTES);
                    }
                    e += 1;
                }
                if pages != 0 {
                    tx.put_pages(index, pages, &self.chunks)?;
                }
            }
        }
        let persisted = tx.commit(&encoded)?;
        // The store's newest generation is what was staged.
        let zero = zero_hash();
        if self.full {
            self.known.fill(zero);
            self.known_nonzero = 0;
        }
        for e in self.staging.entries() {
            let old = std::mem::replace(&mut self.known[e.page() as usize], e.hash);
            // Kept up to date page by page: a recount would read the whole
            // table after every generation.
            self.known_nonzero = self.known_nonzero + u64::from(e.hash != zero) - u64::from(old != zero);
        }
        self.staging.reset(self.known.len() as u64);
        self.full = false;
        self.reference = Reference::Store;
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

    /// Makes the staged header page hold the header as laid out: a child
    /// may have scribbled on it during the copy. (An unstaged header page
    /// is the store's, written this way before.)
    fn canonical_header(&mut self, g: &Geometry, dir: &Path) -> Result<(), SnapshotError> {
        let Some(entry) = self.staging.entries().iter().find(|e| e.page() == 0).copied() else {
            return Ok(());
        };
        let len = PAGE_BYTES.min(g.region_len) as usize;
        self.page.resize(len, 0);
        self.staging
            .read(&entry, &mut self.page)
            .map_err(|e| spill_error(dir, e))?;
        let mut canonical = vec![(header::MAGIC, layout::MAGIC)];
        canonical.extend(g.fixed_fields());
        for (at, value) in canonical {
            self.page[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
        }
        let hash = page_hash(&self.page);
        if hash != entry.hash {
            self.staging
                .put(0, &self.page, hash, dir)
                .map_err(|e| spill_error(dir, e))?;
        }
        Ok(())
    }
}

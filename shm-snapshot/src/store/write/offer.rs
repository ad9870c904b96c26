//! Offering a generation its chunks or pages: each hashed against the
//! image it changes, and a record written of the pages that differ
//! (STORE.md, "Writing a generation", "Two-level hashing").

use super::super::error::StoreError;
use super::super::format::{self, CHUNK_BYTES, PAGE_BYTES};
use super::super::hashes::{ChunkHashes, View, changed_chunks};
use super::GenerationTx;

impl GenerationTx<'_> {
    /// Offers the current bytes of chunk `index`: [`crate::store::CHUNK_BYTES`]
    /// bytes, or fewer for the region's last chunk.
    ///
    /// The chunk is hashed; if the hash differs from the chunk's in the image
    /// this generation changes (the parent's in a delta, all zero in a base;
    /// or what was offered for it earlier in this generation), its pages are
    /// hashed and a record of the pages that differ is written. A chunk never
    /// offered is, in a delta, unchanged from the parent; in a base, all
    /// zero.
    pub fn put_chunk(&mut self, index: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.writing()?;
        self.check_chunk(index, bytes.len())?;
        self.offer(index, bytes)
    }

    /// Offers consecutive chunks at once: `bytes` holds chunk `first_index`
    /// and those after it, each [`crate::store::CHUNK_BYTES`] long but the last,
    /// which may be shorter only if it is the region's last chunk.
    ///
    /// The same as [`GenerationTx::put_chunk`] on each chunk in order, and
    /// the file written is the same byte for byte, but a large batch is
    /// hashed on several threads (up to 4, as the machine allows; a batch of
    /// less than 1 MiB on the calling thread alone). Every chunk is checked
    /// before any is hashed: a refused batch offers nothing. An empty batch
    /// offers nothing.
    pub fn put_chunks(&mut self, first_index: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.writing()?;
        for (k, chunk) in bytes.chunks(CHUNK_BYTES as usize).enumerate() {
            // Saturating: past the region long before it could wrap.
            self.check_chunk(first_index.saturating_add(k as u64), chunk.len())?;
        }
        self.offer(first_index, bytes)
    }

    /// Offers the current bytes of chunk `index` (as for
    /// [`GenerationTx::put_chunk`]), saying that only the pages in `pages`
    /// (bit `p` for page `p`) may differ from the image this generation
    /// changes: only those are hashed and compared, and a record of those
    /// that differ is written. For a caller that knows which pages it
    /// changed (the snapshotter compares what it copies): a few pages cost
    /// a few pages of hashing, not the chunk's.
    ///
    /// In a full generation (a base), where every page is compared with
    /// zero, the whole chunk is offered as by `put_chunk`.
    pub fn put_pages(&mut self, index: u64, pages: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.writing()?;
        self.check_chunk(index, bytes.len())?;
        let all = format::all_pages(bytes.len() as u64);
        if self.own.is_some() || pages & all == all {
            return self.offer(index, bytes);
        }
        let pages = pages & all;
        if pages == 0 {
            return Ok(());
        }
        let hashes = ChunkHashes::with_some_pages(self.view().pages_of(index), pages, bytes);
        if hashes.pages() != self.view().pages_of(index) {
            self.write_changed(index, bytes, hashes)?;
        }
        Ok(())
    }

    /// Fails unless chunk `index` exists and is `len` bytes long.
    fn check_chunk(&self, index: u64, len: usize) -> Result<(), StoreError> {
        let expected = self.chunk_len(index)?;
        if len as u64 != expected {
            return Err(StoreError::ChunkLen {
                index,
                expected,
                found: len as u64,
            });
        }
        Ok(())
    }

    /// The length of chunk `index`, or why there is no such chunk.
    fn chunk_len(&self, index: u64) -> Result<u64, StoreError> {
        let region_len = self.header.region_len;
        format::chunk_len(region_len, index).ok_or(StoreError::ChunkOutOfRange {
            index,
            region_len,
            chunks: self.header.chunks(),
        })
    }

    /// The hashes of the image this generation describes, as offered so far.
    fn view(&self) -> View<'_> {
        let parent = match &self.own {
            Some(own) => own,
            None => {
                &self
                    .store
                    .current
                    .as_ref()
                    .expect("a delta is begun only on a current image, which only its commit changes")
                    .hashes
            }
        };
        View {
            parent,
            offered: &self.offered,
        }
    }

    /// Hashes checked chunks, then writes a record for each that changed, in
    /// order.
    fn offer(&mut self, first_index: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let changed = changed_chunks(first_index, bytes, self.view());
        for (index, hashes) in changed {
            let at = ((index - first_index) * CHUNK_BYTES) as usize;
            let chunk = &bytes[at..bytes.len().min(at + CHUNK_BYTES as usize)];
            self.write_changed(index, chunk, hashes)?;
        }
        Ok(())
    }

    /// Writes the record of chunk `index`, whose bytes hash to `hashes` and
    /// differ from the view's: the pages whose hashes differ.
    fn write_changed(&mut self, index: u64, chunk: &[u8], hashes: ChunkHashes) -> Result<(), StoreError> {
        let before = self.view().pages_of(index);
        let pages = hashes
            .pages()
            .iter()
            .zip(before)
            .enumerate()
            .filter(|(_, (new, old))| new != old)
            .fold(0u64, |bitmap, (p, _)| bitmap | 1 << p);
        // A chunk whose hash changed has a changed page, unless BLAKE3
        // collides; then there is nothing to store, only hashes to keep.
        if pages != 0 {
            let stored = format::pages_of(pages).map(|p| &hashes.pages()[p as usize]);
            let descriptor = format::chunk_descriptor(index, pages, &format::record_hash(stored));
            self.skeleton.update(&descriptor);
            let mut record = std::mem::take(&mut self.record);
            record.clear();
            record.extend_from_slice(&descriptor);
            for p in format::pages_of(pages) {
                let start = (p * PAGE_BYTES) as usize;
                let end = (start + PAGE_BYTES as usize).min(chunk.len());
                record.extend_from_slice(&chunk[start..end]);
            }
            let at = self.bytes_written + format::chunk::DESCRIPTOR as u64;
            let written = self.write(&record);
            self.record = record;
            written?;
            let first = (index * format::PAGES_PER_CHUNK) as usize;
            let mut within = at;
            for p in format::pages_of(pages) {
                self.stored.push((first + p as usize, within));
                within += format::page_len(chunk.len() as u64, p);
            }
            self.chunks_written += 1;
            self.pages_written += u64::from(pages.count_ones());
        }
        match &mut self.own {
            Some(own) => own.set(index, &hashes),
            None => {
                self.offered.insert(index, hashes);
            }
        }
        Ok(())
    }
}

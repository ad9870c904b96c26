//! Writing a generation: base or delta, the pages that changed, and the
//! steps that make it durable (STORE.md, "Writing a generation").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::error::StoreError;
use super::format::{self, CHUNK_BYTES, Header, MAX_REGION_LEN, PAGE_BYTES};
use super::hashes::{ChunkHashes, ImageHashes, View, changed_chunks};
use super::io::StoreFile;
use super::names;
use super::open::{Current, Entry, Store};

/// A generation made durable by [`GenerationTx::commit`].
#[derive(Debug)]
pub struct Persisted {
    /// Its number.
    pub number: u64,
    /// Whether it is a base.
    pub base: bool,
    /// Bytes written: the whole file, whose size this is.
    pub bytes_written: u64,
    /// Chunk records written: chunks with at least one page stored.
    pub chunks_written: u64,
    /// Pages stored, over all chunk records.
    pub pages_written: u64,
    /// From [`Store::begin`] to the end of pruning.
    pub elapsed: Duration,
    /// Old generation files removed by pruning.
    pub pruned: usize,
    /// Removals that failed while pruning. The new generation stands; the
    /// files stay until a later prune removes them.
    pub prune_errors: Vec<StoreError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    /// The temporary file exists and is being written.
    Writing,
    /// A step failed; the temporary file is gone.
    Abandoned,
    /// The file was renamed into place (or removed again).
    Done,
}

/// A generation being written. Offer chunks with [`GenerationTx::put_chunk`]
/// or [`GenerationTx::put_chunks`], then [`GenerationTx::commit`]. Dropping
/// it without committing aborts: the temporary file is removed and the store
/// is unchanged.
pub struct GenerationTx<'a> {
    store: &'a mut Store,
    header: Header,
    temp: PathBuf,
    file: Option<Box<dyn StoreFile>>,
    state: TxState,
    /// A base's hashes: those of the all-zero image, updated in place as
    /// chunks are offered. `None` in a delta, whose parent's hashes are the
    /// store's [`Current`] ones, left untouched until the commit succeeds.
    own: Option<ImageHashes>,
    /// A delta's hashes of the chunks offered so far that differ from the
    /// parent's; empty in a base.
    offered: BTreeMap<u64, ChunkHashes>,
    /// The new generation's chain, base first, itself last.
    chain: Vec<u64>,
    /// Bytes on disk of the chain's deltas before this one.
    delta_bytes_before: u64,
    skeleton: blake3::Hasher,
    /// Reused buffer for one record.
    record: Vec<u8>,
    bytes_written: u64,
    chunks_written: u64,
    pages_written: u64,
    started: Instant,
}

impl std::fmt::Debug for GenerationTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationTx")
            .field("header", &self.header)
            .field("temp", &self.temp)
            .field("state", &self.state)
            .field("bytes_written", &self.bytes_written)
            .field("chunks_written", &self.chunks_written)
            .field("pages_written", &self.pages_written)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Starts writing the next generation, of a region of `region_len` bytes
    /// (the last chunk may be short).
    ///
    /// It is a base when the store has no verified image to write a delta
    /// against (nothing loaded or committed since opening, or the last load
    /// failed), when `region_len` changed, when the chain already has
    /// `full_every - 1` deltas, when those deltas weigh more than the region,
    /// or when a member of the chain left the directory. Otherwise a delta
    /// against [`Store::current_generation`].
    pub fn begin(&mut self, region_len: u64) -> Result<GenerationTx<'_>, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        if region_len == 0 || region_len > MAX_REGION_LEN {
            return Err(StoreError::InvalidRegionLen {
                region_len,
                max: MAX_REGION_LEN,
            });
        }
        let number = self.next_number;
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let parent = self.current.as_ref().filter(|c| self.delta_fits(c, region_len));
        let (header, own, chain, delta_bytes_before) = match parent {
            Some(c) => {
                let header = Header {
                    number,
                    base: c.chain[0],
                    parent: c.number,
                    region_len,
                    created_ms,
                };
                let mut chain = c.chain.clone();
                chain.push(number);
                (header, None, chain, c.delta_bytes)
            }
            None => {
                let header = Header {
                    number,
                    base: number,
                    parent: 0,
                    region_len,
                    created_ms,
                };
                let zero = ImageHashes::zero(region_len).map_err(|e| StoreError::OutOfMemory {
                    path: self.dir.join(names::generation(number)),
                    bytes: e.bytes,
                })?;
                (header, Some(zero), vec![number], 0)
            }
        };
        let seq = self.temp_seq;
        self.temp_seq += 1;
        let temp = self.dir.join(names::temp(number, std::process::id(), seq));
        let file = self
            .io
            .create_new(&temp)
            .map_err(|e| StoreError::io("creating temporary generation file", &temp, e))?;
        let mut tx = GenerationTx {
            store: self,
            header,
            temp,
            file: Some(file),
            state: TxState::Writing,
            own,
            offered: BTreeMap::new(),
            chain,
            delta_bytes_before,
            skeleton: blake3::Hasher::new(),
            record: Vec::new(),
            bytes_written: 0,
            chunks_written: 0,
            pages_written: 0,
            started: Instant::now(),
        };
        let encoded = header.encode();
        tx.skeleton.update(&encoded);
        tx.write(&encoded)?;
        Ok(tx)
    }

    /// Whether the next generation may be a delta on `c`.
    fn delta_fits(&self, c: &Current, region_len: u64) -> bool {
        let deltas = c.chain.len() as u64 - 1;
        c.region_len == region_len
            && deltas + 1 < u64::from(self.options.full_every)
            && c.delta_bytes <= region_len
            && c.chain.iter().all(|n| self.entries.contains_key(n))
    }
}

impl GenerationTx<'_> {
    /// Whether this generation is a base.
    pub fn is_base(&self) -> bool {
        self.header.is_base()
    }

    /// Its number.
    pub fn number(&self) -> u64 {
        self.header.number
    }

    /// The generation it is a delta on, if it is one.
    pub fn parent(&self) -> Option<u64> {
        (!self.is_base()).then_some(self.header.parent)
    }

    /// Offers the current bytes of chunk `index`: [`super::CHUNK_BYTES`]
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
    /// and those after it, each [`super::CHUNK_BYTES`] long but the last,
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
            let written = self.write(&record);
            self.record = record;
            written?;
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

    /// Writes the meta blob and makes the generation durable: fsync the
    /// temporary file (if `fsync`), rename it into place, fsync the directory
    /// (if `fsync`). Only then is it persisted and the newest generation.
    /// Then prunes old generations; a removal that fails is reported in
    /// [`Persisted::prune_errors`], not as an error.
    ///
    /// On an error the store is as before this generation began.
    pub fn commit(mut self, meta: &[u8]) -> Result<Persisted, StoreError> {
        self.writing()?;
        let descriptor = format::meta_descriptor(meta.len() as u64, &blake3::hash(meta));
        self.skeleton.update(&descriptor);
        self.write_record(&descriptor, meta)?;
        let file_len = self.bytes_written + format::trailer::LEN as u64;
        let trailer = format::trailer(self.chunks_written, file_len, &mut self.skeleton);
        self.write(&trailer)?;
        let fsync = self.store.options.fsync;
        if fsync {
            let synced = self.file.as_mut().map_or(Ok(()), |f| f.sync());
            if let Err(e) = synced {
                self.abandon();
                return Err(StoreError::io("syncing temporary generation file", &self.temp, e));
            }
        }
        self.file = None;
        let number = self.header.number;
        let path = self.store.dir.join(names::generation(number));
        if let Err(e) = self.store.io.rename(&self.temp, &path) {
            self.abandon();
            return Err(StoreError::io(
                "renaming the finished temporary file",
                &self.temp,
                e,
            ));
        }
        self.state = TxState::Done;
        // From here the number is spent: its file may exist.
        self.store.next_number = number + 1;
        let entry = Entry {
            path: path.clone(),
            size: file_len,
            header: Some(self.header),
            problem: None,
        };
        let dir_synced = if fsync {
            self.store.io.sync_dir(&self.store.dir)
        } else {
            Ok(())
        };
        if let Err(e) = dir_synced {
            // The rename may not be durable: take the generation back. If
            // even that fails it stays, complete but unacknowledged, and the
            // store goes on from the previous generation (STORE.md).
            if self.store.io.remove(&path).is_err() {
                self.store.entries.insert(number, entry);
            }
            return Err(StoreError::io("syncing the store directory", &self.store.dir, e));
        }
        self.store.entries.insert(number, entry);
        let delta_bytes = if self.is_base() {
            0
        } else {
            self.delta_bytes_before + file_len
        };
        let hashes = match self.own.take() {
            Some(own) => own,
            None => {
                let mut hashes = self
                    .store
                    .current
                    .take()
                    .expect("a delta is begun only on a current image, which only its commit changes")
                    .hashes;
                for (index, offered) in std::mem::take(&mut self.offered) {
                    hashes.set(index, &offered);
                }
                hashes
            }
        };
        self.store.current = Some(Current {
            number,
            region_len: self.header.region_len,
            chain: std::mem::take(&mut self.chain),
            delta_bytes,
            hashes,
        });
        let (pruned, prune_errors) = self.store.prune();
        Ok(Persisted {
            number,
            base: self.is_base(),
            bytes_written: file_len,
            chunks_written: self.chunks_written,
            pages_written: self.pages_written,
            elapsed: self.started.elapsed(),
            pruned,
            prune_errors,
        })
    }

    fn writing(&self) -> Result<(), StoreError> {
        match self.state {
            TxState::Writing => Ok(()),
            _ => Err(StoreError::Abandoned {
                number: self.header.number,
            }),
        }
    }

    /// Writes a record, descriptor and payload, in one write.
    fn write_record(&mut self, descriptor: &[u8], payload: &[u8]) -> Result<(), StoreError> {
        let mut record = std::mem::take(&mut self.record);
        record.clear();
        record.extend_from_slice(descriptor);
        record.extend_from_slice(payload);
        let written = self.write(&record);
        self.record = record;
        written
    }

    /// Appends to the temporary file; on failure abandons the generation.
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.writing()?;
        let Some(file) = self.file.as_mut() else {
            return Err(StoreError::Abandoned {
                number: self.header.number,
            });
        };
        match file.write_all(bytes) {
            Ok(()) => {
                self.bytes_written += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.abandon();
                Err(StoreError::io("writing temporary generation file", &self.temp, e))
            }
        }
    }

    /// Closes and removes the temporary file. The removal is best effort: a
    /// leftover is never read and is removed when the store is next opened.
    fn abandon(&mut self) {
        if self.state == TxState::Writing {
            self.file = None;
            let _ = self.store.io.remove(&self.temp);
            self.state = TxState::Abandoned;
        }
    }
}

impl Drop for GenerationTx<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

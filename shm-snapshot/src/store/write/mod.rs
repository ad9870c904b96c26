//! Writing a generation: a full one into a base file of its own, or a delta
//! appended to the current segment, with the pages that changed (STORE.md,
//! "Writing a generation", "Persisting a delta"). What a generation
//! is offered, and how its changed pages are found, is in `offer.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod offer;

use super::background::now_ms;
use super::error::StoreError;
use super::format::{self, Header, MAX_REGION_LEN, PAGE_BYTES};
use super::hashes::{ChunkHashes, ImageHashes};
use super::io::StoreFile;
use super::names;
use super::open::{Current, Loc, Store};
use super::paged::Paged;
use super::read::Place;

/// A generation written by [`GenerationTx::commit`] or
/// [`GenerationTx::append`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Persisted {
    /// Its number.
    pub number: u64,
    /// Whether it is a full generation, written as a base file.
    pub base: bool,
    /// Whether it is durable already. A delta appended without waiting
    /// becomes durable when [`Store::take_synced`] says so.
    pub durable: bool,
    /// Bytes written: the record's size.
    pub bytes_written: u64,
    /// Chunk records written: chunks with at least one page stored.
    pub chunks_written: u64,
    /// Pages stored, over all chunk records.
    pub pages_written: u64,
    /// From [`Store::begin`] to the record appended (and synced, when
    /// waited for).
    pub elapsed: Duration,
    /// Old files retention gave to the background to remove since the
    /// last generation.
    pub pruned: usize,
    /// Removals that failed since the last generation. The files stay
    /// until a later retention removes them.
    pub prune_errors: Vec<StoreError>,
    /// Bases the background failed to build since the last generation;
    /// the next one is tried when the threshold is crossed again.
    pub base_errors: Vec<StoreError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    /// Being written.
    Writing,
    /// A step failed; nothing of it is left to use.
    Abandoned,
    /// Committed.
    Done,
}

/// Where a generation being written goes.
enum Target {
    /// A full generation: a temporary base file, renamed into place.
    Full {
        temp: PathBuf,
        file: Option<Box<dyn StoreFile>>,
    },
    /// A delta: assembled in memory and appended to the current segment.
    /// A record over [`SPILL_BYTES`] is appended in pieces; `spilled` is
    /// then where its first piece went (segment sequence number, offset).
    Delta {
        buf: Vec<u8>,
        spilled: Option<(u64, u64)>,
    },
}

/// A delta assembled in memory past this many bytes is appended in pieces,
/// so a generation that rewrote most of a large region does not hold all of
/// it twice.
const SPILL_BYTES: usize = 8 << 20;

/// A generation being written. Offer chunks with [`GenerationTx::put_chunk`]
/// or [`GenerationTx::put_chunks`], then [`GenerationTx::commit`] or
/// [`GenerationTx::append`]. Dropping it without committing aborts: nothing
/// of it stays and the store is unchanged.
pub struct GenerationTx<'a> {
    store: &'a mut Store,
    header: Header,
    target: Target,
    state: TxState,
    /// A full generation's hashes: those of the all-zero image, updated in
    /// place as chunks are offered. `None` in a delta, whose parent's
    /// hashes are the store's [`Current`] ones, left untouched until the
    /// commit succeeds.
    own: Option<ImageHashes>,
    /// A delta's hashes of the chunks offered so far that differ from the
    /// parent's; empty in a full generation.
    offered: BTreeMap<u64, ChunkHashes>,
    /// Each stored page (by its index in the region) and where its bytes
    /// are in the record, in record order.
    stored: Vec<(usize, u64)>,
    /// A full generation's page locations (all zero until its pages are
    /// placed); `None` in a delta.
    locs: Option<Paged<Loc>>,
    skeleton: blake3::Hasher,
    /// Reused buffer for one chunk record.
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
    /// It is a full generation (a base file) when the store has no verified
    /// image to write a delta against (nothing loaded or committed since
    /// opening, the last load failed, or a sync failed) or when
    /// `region_len` changed; otherwise a delta against
    /// [`Store::current_generation`], appended to the current segment.
    ///
    /// A sync of earlier generations that failed since the last call is
    /// reported here, once: those generations are not acknowledged, and the
    /// next generation is a full one.
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
        self.check_sync()?;
        self.poll_background();
        let number = self.next_number;
        let created_ms = now_ms();
        let delta = self
            .current
            .as_ref()
            .filter(|c| c.region_len == region_len)
            .map(|c| c.number);
        let (header, own, locs, target) = match delta {
            Some(parent) => {
                let header = Header::new(number, parent, region_len, created_ms);
                let target = Target::Delta {
                    buf: Vec::new(),
                    spilled: None,
                };
                (header, None, None, target)
            }
            None => {
                // The deltas after it have it as their parent: they start a
                // new segment (STORE.md, "A segment", rule 3).
                self.close_segment();
                let header = Header::new(number, 0, region_len, created_ms);
                let no_memory = |bytes| StoreError::OutOfMemory {
                    path: self.dir.join(names::base(number)),
                    bytes,
                };
                let zero = ImageHashes::zero(region_len).map_err(|e| no_memory(e.bytes))?;
                let pages = region_len.div_ceil(PAGE_BYTES);
                let locs = Paged::filled(pages, Loc::ZERO).map_err(|e| no_memory(e.bytes))?;
                let temp = self.temp_path(|pid, n| names::base_temp(number, pid, n));
                let file = self
                    .io
                    .create_new(&temp)
                    .map_err(|e| StoreError::io("creating temporary base file", &temp, e))?;
                let target = Target::Full {
                    temp,
                    file: Some(file),
                };
                (header, Some(zero), Some(locs), target)
            }
        };
        let mut tx = GenerationTx {
            store: self,
            header,
            target,
            state: TxState::Writing,
            own,
            offered: BTreeMap::new(),
            stored: Vec::new(),
            locs,
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

    /// Whether the next generation of a region of `region_len` bytes is a
    /// full one (see [`Store::begin`]) as far as the store knows now: it has
    /// no current image, or one of another length. (A failed sync not yet
    /// reported makes the next `begin` fail first, and the one after it
    /// full.) A snapshotter asks before it copies: a full generation needs
    /// every page, not only the changed ones.
    pub fn next_is_full(&self, region_len: u64) -> bool {
        self.current.as_ref().is_none_or(|c| c.region_len != region_len)
    }

    /// A fresh temporary file name in the store's directory.
    pub(crate) fn temp_path(&mut self, name: impl FnOnce(u32, u64) -> String) -> PathBuf {
        let n = self.temp_seq;
        self.temp_seq += 1;
        self.dir.join(name(std::process::id(), n))
    }
}

/// `pages` zero-page locations, allocated fallibly.
pub(crate) fn zero_locs(pages: u64) -> Option<Vec<Loc>> {
    let n = usize::try_from(pages).ok()?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, Loc::ZERO);
    Some(v)
}

impl GenerationTx<'_> {
    /// Whether this generation is a full one (a base file).
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

    /// Writes the meta blob and makes the generation durable before
    /// returning (with [`StoreOptions::wait_for_sync`](super::StoreOptions),
    /// the default): a full generation is synced and renamed into place; a
    /// delta is appended and the sync covering it waited for. Without
    /// `wait_for_sync`, the same as [`GenerationTx::append`].
    ///
    /// On an error the store is as before this generation began.
    pub fn commit(self, meta: &[u8]) -> Result<Persisted, StoreError> {
        let wait = self.store.options.wait_for_sync;
        self.finish(meta, wait)
    }

    /// Writes the meta blob and appends the generation without waiting for
    /// the sync that makes it durable: [`Store::take_synced`] says when it
    /// is. It is the newest generation (the next delta's parent) at once. A
    /// full generation is durable when this returns, as with `commit`.
    pub fn append(self, meta: &[u8]) -> Result<Persisted, StoreError> {
        self.finish(meta, false)
    }

    fn finish(mut self, meta: &[u8], wait: bool) -> Result<Persisted, StoreError> {
        self.writing()?;
        let descriptor = format::meta_descriptor(meta.len() as u64, &blake3::hash(meta));
        self.skeleton.update(&descriptor);
        self.write_record(&descriptor, meta)?;
        let record_len = self.bytes_written + format::trailer::LEN as u64;
        let trailer = format::trailer(self.chunks_written, record_len, &mut self.skeleton);
        self.write(&trailer)?;
        let number = self.header.number;
        let base = self.is_base();
        let (place, seq) = if base {
            (self.finish_full(record_len)?, None)
        } else {
            let (place, seq) = self.finish_delta(record_len)?;
            (place, Some(seq))
        };
        self.state = TxState::Done;
        let store = &mut *self.store;
        let file = store.files.id(&place.path);
        if base {
            let hashes = self.own.take().expect("a full generation has hashes of its own");
            let mut locs = self
                .locs
                .take()
                .expect("a full generation has locations of its own");
            for &(page, at) in &self.stored {
                locs.set(
                    page,
                    Loc {
                        file,
                        offset: place.offset + at,
                    },
                );
            }
            store.current = Some(Current {
                number,
                region_len: self.header.region_len,
                hashes,
                locs,
                base_bytes: record_len,
                since_base: 0,
            });
            store.new_lineage();
            store.entries.entry(number).or_default().full = Some(place);
        } else {
            let c = store
                .current
                .as_mut()
                .expect("a delta is begun only on a current image, which only its commit changes");
            for (index, offered) in std::mem::take(&mut self.offered) {
                c.hashes.set(index, &offered);
            }
            for &(page, at) in &self.stored {
                c.locs.set(
                    page,
                    Loc {
                        file,
                        offset: place.offset + at,
                    },
                );
            }
            c.number = number;
            c.since_base += record_len;
            if let Some(segment) = seq.and_then(|seq| store.segments.get_mut(&seq)) {
                segment.numbers.push(number);
                segment.len = place.offset + record_len;
            }
            store.entries.entry(number).or_default().delta = Some(place);
        }
        let durable = store.acknowledge(number, seq, wait)?;
        if base {
            store.retain();
        } else {
            store.retain_when_due();
            store.maybe_start_base(meta, self.header.created_ms);
        }
        let (pruned, prune_errors, base_errors) = store.take_reports();
        Ok(Persisted {
            number,
            base,
            durable,
            bytes_written: record_len,
            chunks_written: self.chunks_written,
            pages_written: self.pages_written,
            elapsed: self.started.elapsed(),
            pruned,
            prune_errors,
            base_errors,
        })
    }

    /// Makes a full generation's temporary file durable and names it:
    /// fsync, rename to its base file's name, fsync the directory. Its
    /// number is spent from the rename on.
    fn finish_full(&mut self, record_len: u64) -> Result<Place, StoreError> {
        let Target::Full { temp, file } = &mut self.target else {
            unreachable!("called for a full generation")
        };
        let temp = temp.clone();
        let fsync = self.store.options.fsync;
        if fsync {
            let synced = file.as_mut().map_or(Ok(()), |f| f.sync());
            if let Err(e) = synced {
                self.abandon();
                return Err(StoreError::io("syncing temporary base file", &temp, e));
            }
        }
        *file = None;
        let number = self.header.number;
        let path = self.store.dir.join(names::base(number));
        if let Err(e) = self.store.io.rename(&temp, &path) {
            self.abandon();
            return Err(StoreError::io("renaming the finished base file", &temp, e));
        }
        self.state = TxState::Done;
        // From here the number is spent: its file may exist.
        self.store.next_number = number + 1;
        if fsync && let Err(e) = self.store.io.sync_dir(&self.store.dir) {
            // The rename may not be durable: take the generation back. If
            // even that fails it stays, complete but unacknowledged, and the
            // store goes on from the previous generation (STORE.md).
            let _ = self.store.io.remove(&path);
            return Err(StoreError::io("syncing the store directory", &self.store.dir, e));
        }
        Ok(Place {
            path,
            offset: 0,
            len: record_len,
            header: self.header,
            whole_file: true,
        })
    }

    /// Appends what is left of a delta's record to the current segment.
    /// Returns where the whole record is and the segment's sequence number.
    fn finish_delta(&mut self, record_len: u64) -> Result<(Place, u64), StoreError> {
        let Target::Delta { buf, spilled } = &mut self.target else {
            unreachable!("called for a delta")
        };
        let piece = std::mem::take(buf);
        let appended = self.store.append_piece(&piece, *spilled);
        let (seq, start) = match (appended, *spilled) {
            (Ok(_), Some(first)) => first,
            (Ok(at), None) => at,
            (Err(e), _) => {
                self.state = TxState::Abandoned;
                return Err(e);
            }
        };
        self.state = TxState::Done;
        // From here the number is spent: a record holding it may be read.
        self.store.next_number = self.header.number + 1;
        let path = self
            .store
            .segments
            .get(&seq)
            .map(|s| s.path.clone())
            .unwrap_or_default();
        Ok((
            Place {
                path,
                offset: start,
                len: record_len,
                header: self.header,
                whole_file: false,
            },
            seq,
        ))
    }

    fn writing(&self) -> Result<(), StoreError> {
        match self.state {
            TxState::Writing => Ok(()),
            _ => Err(StoreError::Abandoned {
                number: self.header.number,
            }),
        }
    }

    /// Writes a record, descriptor and payload, at once.
    fn write_record(&mut self, descriptor: &[u8], payload: &[u8]) -> Result<(), StoreError> {
        let mut record = std::mem::take(&mut self.record);
        record.clear();
        record.extend_from_slice(descriptor);
        record.extend_from_slice(payload);
        let written = self.write(&record);
        self.record = record;
        written
    }

    /// Adds bytes to the generation: to a full one's temporary file, or to
    /// a delta's record in memory (appended in pieces past
    /// [`SPILL_BYTES`]). On failure the generation is abandoned.
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.writing()?;
        let written = match &mut self.target {
            Target::Full { temp, file } => match file.as_mut() {
                Some(file) => file
                    .write_all(bytes)
                    .map_err(|e| StoreError::io("writing temporary base file", &*temp, e)),
                None => Err(StoreError::Abandoned {
                    number: self.header.number,
                }),
            },
            Target::Delta { buf, spilled } => {
                buf.extend_from_slice(bytes);
                if buf.len() >= SPILL_BYTES {
                    let piece = std::mem::take(buf);
                    match self.store.append_piece(&piece, *spilled) {
                        Ok(at) => {
                            spilled.get_or_insert(at);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    Ok(())
                }
            }
        };
        match written {
            Ok(()) => {
                self.bytes_written += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// Leaves no trace of the generation: a full one's temporary file is
    /// removed (best effort: a leftover is never read and is removed when
    /// the store is next opened); a delta's pieces already appended are cut
    /// off the segment.
    fn abandon(&mut self) {
        if self.state != TxState::Writing {
            return;
        }
        self.state = TxState::Abandoned;
        match &mut self.target {
            Target::Full { temp, file } => {
                *file = None;
                let _ = self.store.io.remove(temp);
            }
            Target::Delta { spilled, .. } => {
                if let Some((seq, start)) = *spilled {
                    self.store.cut_back(seq, start);
                }
            }
        }
    }
}

impl Drop for GenerationTx<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

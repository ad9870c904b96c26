//! Loading: the newest generation whose whole chain verifies, reassembled
//! (STORE.md, "Loading the newest generation"). Loading only reads.

use std::collections::BTreeMap;

use super::error::StoreError;
use super::format::{self, CHUNK_BYTES, PAGE_BYTES, PAGES_PER_CHUNK};
use super::hashes::{ImageHashes, zero_pages};
use super::open::{Current, Store};
use super::read::{ChunkSink, read_generation, zeroed};

/// A generation loaded from the store.
#[derive(Debug)]
pub struct Loaded {
    /// Its number.
    pub number: u64,
    /// The region's bytes, `region_len` of them.
    pub image: Vec<u8>,
    /// The meta blob stored with it.
    pub meta: Vec<u8>,
    /// Every newer generation that was skipped, newest first, with why.
    pub skipped: Vec<(u64, StoreError)>,
}

/// A verified, reassembled image.
struct Image {
    number: u64,
    region_len: u64,
    chain: Vec<u64>,
    delta_bytes: u64,
    image: Vec<u8>,
    /// The hash of each page of `image`. Chunk hashes are computed only
    /// for the image that is returned.
    page_hashes: Vec<blake3::Hash>,
    meta: Vec<u8>,
}

/// A chain that failed to reassemble at `member`.
struct Failure {
    member: u64,
    error: StoreError,
    /// The verified image of `member`'s parent, when `member` is a delta.
    before: Option<Box<Image>>,
}

impl Store {
    /// Loads the newest generation whose whole chain (base and deltas)
    /// verifies, fully reassembled. `Ok(None)` when the store holds no
    /// generation. Every newer generation skipped as corrupt, truncated or
    /// missing a piece is listed in [`Loaded::skipped`]. Generations exist
    /// but none verifies: [`StoreError::NoVerifiedGeneration`], never an
    /// empty result.
    ///
    /// Loading only reads: a failed load leaves every file as it was. The
    /// loaded generation becomes the parent of the next delta; after a failed
    /// load the next generation is a base.
    pub fn load_newest(&mut self) -> Result<Option<Loaded>, StoreError> {
        self.load_newest_with(|_, _| Ok(()))
    }

    /// [`Store::load_newest`], where a generation that verifies must also
    /// pass `accept` (given its image and meta blob) to be returned. One
    /// that does not is skipped like a damaged one, as
    /// [`StoreError::Unrestorable`] with the reason `accept` gives, and the
    /// next older candidate is tried. This lets a caller that cannot use a
    /// generation's contents (a meta blob it refuses) fall back instead of
    /// stopping. Like `load_newest`, it only reads.
    pub fn load_newest_with(
        &mut self,
        mut accept: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<Option<Loaded>, StoreError> {
        self.current = None;
        self.last_skipped.clear();
        self.rescan()?;
        if self.entries.is_empty() {
            return Ok(None);
        }
        let candidates: Vec<u64> = self.entries.keys().rev().copied().collect();
        // Why each generation found unusable so far is unusable.
        let mut unusable: BTreeMap<u64, String> = BTreeMap::new();
        // Errors of chain members found bad before their own turn.
        let mut pending: BTreeMap<u64, StoreError> = BTreeMap::new();
        let mut skipped = Vec::new();
        // The verified image just below the delta where a chain failed.
        let mut spare: Option<Box<Image>> = None;
        for &number in &candidates {
            let chain = match self.chain_of(number, &unusable, &mut pending) {
                Ok(chain) => chain,
                Err(e) => {
                    unusable.insert(number, e.to_string());
                    skipped.push((number, e));
                    continue;
                }
            };
            let attempt = match spare.take() {
                Some(image) if image.number == number => Ok(*image),
                other => {
                    spare = other;
                    self.reassemble(&chain)
                }
            };
            match attempt {
                Ok(image) => {
                    if let Err(why) = accept(&image.image, &image.meta) {
                        let e = StoreError::Unrestorable {
                            path: self.entries[&number].path.clone(),
                            why,
                        };
                        unusable.insert(number, e.to_string());
                        skipped.push((number, e));
                        continue;
                    }
                    self.current = Some(Current {
                        number,
                        region_len: image.region_len,
                        chain: image.chain,
                        delta_bytes: image.delta_bytes,
                        hashes: ImageHashes::from_pages(&image.image, image.page_hashes),
                    });
                    return Ok(Some(Loaded {
                        number,
                        image: image.image,
                        meta: image.meta,
                        skipped,
                    }));
                }
                Err(failure) => {
                    if failure.before.is_some() {
                        spare = failure.before;
                    }
                    let why = failure.error.to_string();
                    unusable.insert(failure.member, why.clone());
                    if failure.member == number {
                        skipped.push((number, failure.error));
                    } else {
                        pending.insert(failure.member, failure.error);
                        let e = StoreError::BrokenChain {
                            path: self.entries[&number].path.clone(),
                            needs: failure.member,
                            why: format!("does not verify: {why}"),
                        };
                        unusable.insert(number, e.to_string());
                        skipped.push((number, e));
                    }
                }
            }
        }
        self.last_skipped = skipped;
        Err(StoreError::NoVerifiedGeneration {
            dir: self.dir.clone(),
            tried: candidates.len(),
        })
    }

    /// Loads generation `number`, reassembled from its chain, whether or not
    /// it is the newest. Reads only, and changes nothing the store writes
    /// next (the parent of the next delta stays what it was), so it also
    /// works on a store opened with [`Store::open_read_only`].
    pub fn load_generation(&mut self, number: u64) -> Result<Loaded, StoreError> {
        self.rescan()?;
        if !self.entries.contains_key(&number) {
            return Err(StoreError::NoSuchGeneration {
                dir: self.dir.clone(),
                number,
            });
        }
        let chain = self.chain_of(number, &BTreeMap::new(), &mut BTreeMap::new())?;
        match self.reassemble(&chain) {
            Ok(image) => Ok(Loaded {
                number,
                image: image.image,
                meta: image.meta,
                skipped: Vec::new(),
            }),
            Err(failure) if failure.member == number => Err(failure.error),
            Err(failure) => Err(StoreError::BrokenChain {
                path: self.entries[&number].path.clone(),
                needs: failure.member,
                why: format!("does not verify: {}", failure.error),
            }),
        }
    }

    /// The generations the last scan (by a load or a check) listed whose
    /// files are gone now, oldest first. On a store an owner is writing,
    /// these are generations it pruned meanwhile: a load that failed while
    /// some vanished may succeed when repeated, and a generation asked for
    /// by number that is among them was pruned, not damaged. Asked of the
    /// store's I/O layer, like every read.
    pub fn vanished_since_scan(&mut self) -> Vec<u64> {
        let mut gone = Vec::new();
        for (&number, entry) in &self.entries {
            if self
                .io
                .open_read(&entry.path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            {
                gone.push(number);
            }
        }
        gone
    }

    /// The chain of generation `number`, base first, from the scanned
    /// headers; an error if it is unusable before any file is read.
    fn chain_of(
        &mut self,
        number: u64,
        unusable: &BTreeMap<u64, String>,
        pending: &mut BTreeMap<u64, StoreError>,
    ) -> Result<Vec<u64>, StoreError> {
        if let Some(e) = pending.remove(&number) {
            return Err(e);
        }
        let entry = self
            .entries
            .get_mut(&number)
            .expect("candidates come from the entries");
        let Some(top) = entry.header else {
            return Err(entry.problem.take().unwrap_or_else(|| StoreError::Corrupt {
                path: entry.path.clone(),
                what: "header did not verify".to_owned(),
            }));
        };
        let entry = &self.entries[&number];
        let mut chain = vec![number];
        let mut h = top;
        while !h.is_base() {
            let needs = h.parent;
            let broken = |why: String| StoreError::BrokenChain {
                path: entry.path.clone(),
                needs,
                why,
            };
            if let Some(why) = unusable.get(&needs) {
                return Err(broken(format!("does not verify: {why}")));
            }
            let Some(member) = self.entries.get(&needs) else {
                return Err(broken("is missing".to_owned()));
            };
            let Some(mh) = member.header else {
                let why = member
                    .problem
                    .as_ref()
                    .map_or("unknown".to_owned(), |e| e.to_string());
                return Err(broken(format!("does not verify: {why}")));
            };
            if mh.base != top.base {
                return Err(broken(format!(
                    "belongs to the chain of base {}, not of base {}",
                    mh.base, top.base
                )));
            }
            if mh.region_len != top.region_len {
                return Err(broken(format!(
                    "holds a region of {} bytes, not {}",
                    mh.region_len, top.region_len
                )));
            }
            chain.push(needs);
            h = mh;
        }
        chain.reverse();
        Ok(chain)
    }

    /// Reads and verifies every file of `chain` (base first) and applies
    /// them in order.
    fn reassemble(&mut self, chain: &[u64]) -> Result<Image, Failure> {
        let base = chain[0];
        let fail = |member, error| Failure {
            member,
            error,
            before: None,
        };
        let (path, header) = {
            let e = &self.entries[&base];
            (
                e.path.clone(),
                e.header.expect("chain members have verified headers"),
            )
        };
        let region_len = header.region_len;
        let mut image = zeroed(region_len, &path).map_err(|e| fail(base, e))?;
        let mut page_hashes = zero_pages(region_len).map_err(|e| {
            let e = StoreError::OutOfMemory {
                path: path.clone(),
                bytes: e.bytes,
            };
            fail(base, e)
        })?;
        let mut sink = ImageSink {
            image: &mut image,
            page_hashes: &mut page_hashes,
        };
        let mut meta =
            read_generation(self.io.as_mut(), &path, &header, &mut sink).map_err(|e| fail(base, e))?;
        let mut delta_bytes = 0;
        for (i, &member) in chain.iter().enumerate().skip(1) {
            let (path, header, size) = {
                let e = &self.entries[&member];
                (
                    e.path.clone(),
                    e.header.expect("chain members have verified headers"),
                    e.size,
                )
            };
            let mut staging = Staging::default();
            match read_generation(self.io.as_mut(), &path, &header, &mut staging) {
                Ok(m) => {
                    staging.apply(&mut image, &mut page_hashes);
                    meta = m;
                    delta_bytes += size;
                }
                Err(error) => {
                    return Err(Failure {
                        member,
                        error,
                        before: Some(Box::new(Image {
                            number: chain[i - 1],
                            region_len,
                            chain: chain[..i].to_vec(),
                            delta_bytes,
                            image,
                            page_hashes,
                            meta,
                        })),
                    });
                }
            }
        }
        Ok(Image {
            number: chain[chain.len() - 1],
            region_len,
            chain: chain.to_vec(),
            delta_bytes,
            image,
            page_hashes,
            meta,
        })
    }
}

/// Where page `page` of chunk `index` starts in the region.
fn page_start(index: u64, page: u64) -> usize {
    (index * CHUNK_BYTES + page * PAGE_BYTES) as usize
}

/// The index of page `page` of chunk `index` among the region's pages.
fn page_number(index: u64, page: u64) -> usize {
    (index * PAGES_PER_CHUNK + page) as usize
}

/// Reads a base's pages straight into the image.
struct ImageSink<'a> {
    image: &'a mut [u8],
    page_hashes: &'a mut [blake3::Hash],
}

impl ChunkSink for ImageSink<'_> {
    fn page(&mut self, index: u64, page: u64, len: usize) -> &mut [u8] {
        // The reader checked index, page and len against the region's
        // length, which is the image's length.
        let start = page_start(index, page);
        &mut self.image[start..start + len]
    }

    fn verified(&mut self, index: u64, pages: u64, hashes: &[blake3::Hash]) {
        for (page, hash) in format::pages_of(pages).zip(hashes) {
            self.page_hashes[page_number(index, page)] = *hash;
        }
    }
}

/// Holds a delta's pages until the whole file has verified.
#[derive(Default)]
struct Staging {
    bytes: Vec<u8>,
    /// Chunk index, page in the chunk, offset in `bytes`, length and hash of
    /// each page, in file order.
    pages: Vec<(u64, u64, usize, usize, blake3::Hash)>,
}

impl ChunkSink for Staging {
    fn page(&mut self, index: u64, page: u64, len: usize) -> &mut [u8] {
        let at = self.bytes.len();
        self.bytes.resize(at + len, 0);
        self.pages
            .push((index, page, at, len, blake3::Hash::from_bytes([0; 32])));
        &mut self.bytes[at..]
    }

    fn verified(&mut self, _index: u64, _pages: u64, hashes: &[blake3::Hash]) {
        // The record's pages are the last ones staged, in the same order.
        let first = self.pages.len() - hashes.len();
        for (staged, hash) in self.pages[first..].iter_mut().zip(hashes) {
            staged.4 = *hash;
        }
    }
}

impl Staging {
    /// Applies the pages in file order (a later record of a page wins).
    fn apply(&self, image: &mut [u8], page_hashes: &mut [blake3::Hash]) {
        for &(index, page, at, len, hash) in &self.pages {
            let start = page_start(index, page);
            image[start..start + len].copy_from_slice(&self.bytes[at..at + len]);
            page_hashes[page_number(index, page)] = hash;
        }
    }
}

//! Loading: the newest generation whose whole chain verifies, reassembled
//! (STORE.md, "Loading the newest generation"). Loading only reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::error::StoreError;
use super::format::{self, CHUNK_BYTES, PAGE_BYTES, PAGES_PER_CHUNK};
use super::hashes::{ImageHashes, NoMemory, zero_hash, zero_pages};
use super::open::{Current, Loc, Store};
use super::paged::Paged;
use super::read::{ChunkSink, Place, Records, zeroed};
use super::write::zero_locs;

/// A generation loaded from the store.
#[derive(Debug)]
pub struct Loaded {
    /// Its number.
    pub number: u64,
    /// The region's bytes, `region_len` of them.
    pub image: Vec<u8>,
    /// The meta blob stored with it.
    pub meta: Vec<u8>,
    /// For each page of the image, whether it may hold a non-zero byte:
    /// every other page is all zero. Lets a restore into a blank region
    /// write only these.
    pub data_pages: Vec<bool>,
    /// Every newer generation that was skipped, newest first, with why.
    pub skipped: Vec<(u64, StoreError)>,
    /// Base files that did not verify, by the generation they hold, where
    /// the load read the records they checkpoint instead (the generation
    /// itself was not lost, but the file is damaged).
    pub damaged_bases: Vec<(u64, StoreError)>,
}

/// A verified, reassembled image.
struct Image {
    number: u64,
    region_len: u64,
    /// Bytes of the base file the chain started from, and of the deltas
    /// after it.
    base_bytes: u64,
    since_base: u64,
    image: Vec<u8>,
    /// The hash of each page of `image`. Chunk hashes are computed only
    /// for the image that is returned.
    page_hashes: Vec<blake3::Hash>,
    /// Where each page's bytes are on disk.
    locs: Vec<Loc>,
    meta: Vec<u8>,
}

/// A chain that failed to reassemble at `member`.
struct Failure {
    member: u64,
    error: StoreError,
    /// The verified image of `member`'s parent, when `member` is a delta.
    before: Option<Box<Image>>,
    /// It was `member`'s base file that failed.
    full: bool,
}

/// One member of a chain: its number and where its record is.
type Step = (u64, Place);

impl Store {
    /// Loads the newest generation whose whole chain (base and deltas)
    /// verifies, fully reassembled. `Ok(None)` when the store holds no
    /// generation. Every newer generation skipped as corrupt, truncated or
    /// missing a piece is listed in [`Loaded::skipped`]; segment tails are
    /// in [`Store::tails`]. Generations exist but none verifies:
    /// [`StoreError::NoVerifiedGeneration`], never an empty result.
    ///
    /// Loading only reads: a failed load leaves every file as it was. The
    /// loaded generation becomes the parent of the next delta; after a failed
    /// load the next generation is a full one.
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
        // The next delta's parent is whatever loads, which may not be the
        // last record of the segment being appended to: it starts a new
        // segment (STORE.md, "A segment", rule 3).
        self.new_lineage();
        self.last_skipped.clear();
        self.bad_bases.clear();
        self.rescan()?;
        if self.entries.is_empty() {
            return Ok(None);
        }
        let candidates: Vec<u64> = self.entries.keys().rev().copied().collect();
        // Why each generation found unusable so far is unusable.
        let mut unusable: BTreeMap<u64, String> = BTreeMap::new();
        // Errors of chain members found bad before their own turn.
        let mut pending: BTreeMap<u64, StoreError> = BTreeMap::new();
        // Generations whose base file does not verify.
        let mut bad_full: BTreeSet<u64> = BTreeSet::new();
        let mut skipped = Vec::new();
        // Base files that did not verify where the records they checkpoint
        // were read instead.
        let mut damaged_bases = Vec::new();
        // The verified image just below the delta where a chain failed.
        let mut spare: Option<Box<Image>> = None;
        let mut i = 0;
        while i < candidates.len() {
            let number = candidates[i];
            let chain = match self.chain_of(number, &unusable, &mut pending, &bad_full) {
                Ok(chain) => chain,
                Err(e) => {
                    unusable.insert(number, e.to_string());
                    skipped.push((number, e));
                    i += 1;
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
                            path: chain[chain.len() - 1].1.path.clone(),
                            why,
                        };
                        unusable.insert(number, e.to_string());
                        skipped.push((number, e));
                        i += 1;
                        continue;
                    }
                    let data_pages = data_pages(&image.page_hashes, image.region_len);
                    let hashes =
                        ImageHashes::from_pages(image.region_len, image.page_hashes).map_err(|e| {
                            StoreError::OutOfMemory {
                                path: chain[0].1.path.clone(),
                                bytes: e.bytes,
                            }
                        })?;
                    let locs =
                        Paged::from_vec(&image.locs, Loc::ZERO).map_err(|e| StoreError::OutOfMemory {
                            path: chain[0].1.path.clone(),
                            bytes: e.bytes,
                        })?;
                    self.current = Some(Current {
                        number,
                        region_len: image.region_len,
                        hashes,
                        locs,
                        base_bytes: image.base_bytes,
                        since_base: image.since_base,
                    });
                    return Ok(Some(Loaded {
                        number,
                        image: image.image,
                        meta: image.meta,
                        data_pages,
                        skipped,
                        damaged_bases,
                    }));
                }
                Err(failure) => {
                    if failure.before.is_some() {
                        spare = failure.before;
                    }
                    let has_delta = self
                        .entries
                        .get(&failure.member)
                        .is_some_and(|e| e.delta.is_some());
                    if failure.full && has_delta {
                        // Its base file is damaged, but its record may
                        // still be reached from an older base: try the
                        // same candidate again without that base file.
                        bad_full.insert(failure.member);
                        self.bad_bases.insert(failure.member);
                        damaged_bases.push((failure.member, failure.error));
                        continue;
                    }
                    let why = failure.error.to_string();
                    unusable.insert(failure.member, why.clone());
                    if failure.member == number {
                        skipped.push((number, failure.error));
                    } else {
                        pending.insert(failure.member, failure.error);
                        let e = StoreError::BrokenChain {
                            path: chain[chain.len() - 1].1.path.clone(),
                            needs: failure.member,
                            why: format!("does not verify: {why}"),
                        };
                        unusable.insert(number, e.to_string());
                        skipped.push((number, e));
                    }
                    i += 1;
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
        let mut bad_full = BTreeSet::new();
        loop {
            let chain = self.chain_of(number, &BTreeMap::new(), &mut BTreeMap::new(), &bad_full)?;
            let top = chain[chain.len() - 1].1.path.clone();
            match self.reassemble(&chain) {
                Ok(image) => {
                    return Ok(Loaded {
                        number,
                        data_pages: data_pages(&image.page_hashes, image.region_len),
                        image: image.image,
                        meta: image.meta,
                        skipped: Vec::new(),
                        damaged_bases: Vec::new(),
                    });
                }
                Err(f) if f.full && self.entries.get(&f.member).is_some_and(|e| e.delta.is_some()) => {
                    bad_full.insert(f.member);
                }
                Err(f) if f.member == number => return Err(f.error),
                Err(f) => {
                    return Err(StoreError::BrokenChain {
                        path: top,
                        needs: f.member,
                        why: format!("does not verify: {}", f.error),
                    });
                }
            }
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
            let Some(path) = entry.path() else { continue };
            if self
                .io
                .open_read(path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            {
                gone.push(number);
            }
        }
        gone
    }

    /// The chain of generation `number`, its base first, from the scan; an
    /// error if it is unusable before any file is read (STORE.md, "The chain
    /// of a generation").
    fn chain_of(
        &mut self,
        number: u64,
        unusable: &BTreeMap<u64, String>,
        pending: &mut BTreeMap<u64, StoreError>,
        bad_full: &BTreeSet<u64>,
    ) -> Result<Vec<Step>, StoreError> {
        if !bad_full.contains(&number)
            && let Some(e) = pending.remove(&number)
        {
            return Err(e);
        }
        let entry = self
            .entries
            .get_mut(&number)
            .expect("candidates come from the entries");
        let Some(top) = entry.place().cloned() else {
            // The file stays listed (retention counts it); its error is
            // reported now, and a placeholder says so to later readers.
            let Some((path, size, error)) = entry.problem.take() else {
                return Err(StoreError::Corrupt {
                    path: entry.path().map(Path::to_owned).unwrap_or_default(),
                    what: "header did not verify".to_owned(),
                });
            };
            let reported = StoreError::Corrupt {
                path: path.clone(),
                what: format!("header did not verify ({error})"),
            };
            entry.problem = Some((path, size, reported));
            return Err(error);
        };
        let broken = |needs: u64, why: String| StoreError::BrokenChain {
            path: top.path.clone(),
            needs,
            why,
        };
        let mut chain = Vec::new();
        let mut n = number;
        loop {
            let e = &self.entries[&n];
            if let Some(full) = e.full.as_ref().filter(|_| !bad_full.contains(&n)) {
                chain.push((n, full.clone()));
                break;
            }
            let Some(delta) = &e.delta else {
                let why = match (&e.full, &e.problem) {
                    (Some(_), _) => "has only a base file, which does not verify".to_owned(),
                    (None, Some((_, _, p))) => format!("does not verify: {p}"),
                    (None, None) => "is missing".to_owned(),
                };
                if n == number {
                    return Err(StoreError::Corrupt {
                        path: top.path.clone(),
                        what: format!("generation {number} {why}"),
                    });
                }
                return Err(broken(n, why));
            };
            if delta.header.region_len != top.header.region_len {
                return Err(broken(
                    n,
                    format!(
                        "holds a region of {} bytes, not {}",
                        delta.header.region_len, top.header.region_len
                    ),
                ));
            }
            chain.push((n, delta.clone()));
            let needs = delta.header.parent;
            if let Some(why) = unusable.get(&needs) {
                return Err(broken(needs, format!("does not verify: {why}")));
            }
            if !self.entries.contains_key(&needs) {
                return Err(broken(needs, "is missing".to_owned()));
            }
            n = needs;
        }
        chain.reverse();
        Ok(chain)
    }

    /// Reads and verifies every record of `chain` (base first) and applies
    /// them in order.
    fn reassemble(&mut self, chain: &[Step]) -> Result<Image, Failure> {
        let (base, place) = &chain[0];
        let fail = |member, error, full| Failure {
            member,
            error,
            before: None,
            full,
        };
        let region_len = place.header.region_len;
        let mut image = zeroed(region_len, &place.path).map_err(|e| fail(*base, e, true))?;
        let oom = |e: NoMemory| StoreError::OutOfMemory {
            path: place.path.clone(),
            bytes: e.bytes,
        };
        let mut page_hashes = zero_pages(region_len).map_err(|e| fail(*base, oom(e), true))?;
        let pages = page_hashes.len() as u64;
        let mut locs =
            zero_locs(pages).ok_or_else(|| fail(*base, oom(NoMemory { bytes: pages * 16 }), true))?;
        let file = self.files.id(&place.path);
        let mut sink = ImageSink {
            image: &mut image,
            page_hashes: &mut page_hashes,
            locs: &mut locs,
            file,
        };
        let mut records = Records::default();
        let mut meta = records
            .read(self.io.as_mut(), place, &mut sink)
            .map_err(|e| fail(*base, e, true))?;
        let base_bytes = place.len;
        let mut since_base = 0;
        for (i, (member, place)) in chain.iter().enumerate().skip(1) {
            let mut staging = Staging {
                file: self.files.id(&place.path),
                ..Staging::default()
            };
            match records.read(self.io.as_mut(), place, &mut staging) {
                Ok(m) => {
                    staging.apply(&mut image, &mut page_hashes, &mut locs);
                    meta = m;
                    since_base += place.len;
                }
                Err(error) => {
                    return Err(Failure {
                        member: *member,
                        error,
                        before: Some(Box::new(Image {
                            number: chain[i - 1].0,
                            region_len,
                            base_bytes,
                            since_base,
                            image,
                            page_hashes,
                            locs,
                            meta,
                        })),
                        full: false,
                    });
                }
            }
        }
        Ok(Image {
            number: chain[chain.len() - 1].0,
            region_len,
            base_bytes,
            since_base,
            image,
            page_hashes,
            locs,
            meta,
        })
    }
}

/// Whether each page may hold a non-zero byte: its hash is not a zero
/// page's.
fn data_pages(page_hashes: &[blake3::Hash], region_len: u64) -> Vec<bool> {
    let whole = zero_hash(PAGE_BYTES);
    let last = page_hashes.len().saturating_sub(1);
    page_hashes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let len = (region_len - i as u64 * PAGE_BYTES).min(PAGE_BYTES);
            if i < last || len == PAGE_BYTES {
                *h != whole
            } else {
                *h != zero_hash(len)
            }
        })
        .collect()
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
    locs: &'a mut [Loc],
    /// The id of the file being read.
    file: u32,
}

impl ChunkSink for ImageSink<'_> {
    fn page(&mut self, index: u64, page: u64, len: usize, at: u64) -> &mut [u8] {
        // The reader checked index, page and len against the region's
        // length, which is the image's length.
        let start = page_start(index, page);
        self.locs[page_number(index, page)] = Loc {
            file: self.file,
            offset: at,
        };
        &mut self.image[start..start + len]
    }

    fn verified(&mut self, index: u64, pages: u64, hashes: &[blake3::Hash]) {
        for (page, hash) in format::pages_of(pages).zip(hashes) {
            self.page_hashes[page_number(index, page)] = *hash;
        }
    }
}

/// Holds a delta's pages until the whole record has verified.
#[derive(Default)]
struct Staging {
    /// The id of the file being read.
    file: u32,
    bytes: Vec<u8>,
    /// Chunk index, page in the chunk, offset in `bytes`, length, hash and
    /// place in the file of each page, in record order.
    pages: Vec<(u64, u64, usize, usize, blake3::Hash, u64)>,
}

impl ChunkSink for Staging {
    fn page(&mut self, index: u64, page: u64, len: usize, file_at: u64) -> &mut [u8] {
        let at = self.bytes.len();
        self.bytes.resize(at + len, 0);
        self.pages
            .push((index, page, at, len, blake3::Hash::from_bytes([0; 32]), file_at));
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
    /// Applies the pages in record order (a later record of a page wins).
    fn apply(&self, image: &mut [u8], page_hashes: &mut [blake3::Hash], locs: &mut [Loc]) {
        for &(index, page, at, len, hash, file_at) in &self.pages {
            let start = page_start(index, page);
            image[start..start + len].copy_from_slice(&self.bytes[at..at + len]);
            let n = page_number(index, page);
            page_hashes[n] = hash;
            locs[n] = Loc {
                file: self.file,
                offset: file_at,
            };
        }
    }
}

//! Loading: the newest generation whose whole chain verifies, reassembled
//! (STORE.md, "Loading the newest generation"). Loading only reads.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::error::StoreError;
use super::format::{self, CHUNK_BYTES};
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
    hashes: Vec<blake3::Hash>,
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
                    self.current = Some(Current {
                        number,
                        region_len: image.region_len,
                        chain: image.chain,
                        delta_bytes: image.delta_bytes,
                        hashes: image.hashes,
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
        let mut hashes = zero_hashes(region_len);
        let mut sink = ImageSink {
            image: &mut image,
            hashes: &mut hashes,
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
                    staging.apply(&mut image, &mut hashes);
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
                            hashes,
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
            hashes,
            meta,
        })
    }
}

/// The hashes of an all-zero image of `region_len` bytes, one per chunk.
pub(crate) fn zero_hashes(region_len: u64) -> Vec<blake3::Hash> {
    static FULL: OnceLock<blake3::Hash> = OnceLock::new();
    let full = *FULL.get_or_init(|| blake3::hash(&[0u8; CHUNK_BYTES as usize]));
    let chunks = format::chunk_count(region_len);
    let mut hashes = vec![full; chunks as usize];
    let tail = region_len % CHUNK_BYTES;
    if tail != 0 {
        hashes[chunks as usize - 1] = blake3::hash(&vec![0u8; tail as usize]);
    }
    hashes
}

/// Reads a base's chunks straight into the image.
struct ImageSink<'a> {
    image: &'a mut [u8],
    hashes: &'a mut [blake3::Hash],
}

impl ChunkSink for ImageSink<'_> {
    fn slot(&mut self, index: u64, len: usize) -> &mut [u8] {
        // The reader checked index and len against the region's length,
        // which is the image's length.
        let start = (index * CHUNK_BYTES) as usize;
        &mut self.image[start..start + len]
    }

    fn verified(&mut self, index: u64, hash: blake3::Hash) {
        self.hashes[index as usize] = hash;
    }
}

/// Holds a delta's chunks until the whole file has verified.
#[derive(Default)]
struct Staging {
    bytes: Vec<u8>,
    /// Index, offset in `bytes`, length and hash of each chunk, in file
    /// order.
    chunks: Vec<(u64, usize, usize, blake3::Hash)>,
}

impl ChunkSink for Staging {
    fn slot(&mut self, index: u64, len: usize) -> &mut [u8] {
        let at = self.bytes.len();
        self.bytes.resize(at + len, 0);
        self.chunks
            .push((index, at, len, blake3::Hash::from_bytes([0; 32])));
        &mut self.bytes[at..]
    }

    fn verified(&mut self, _index: u64, hash: blake3::Hash) {
        if let Some(last) = self.chunks.last_mut() {
            last.3 = hash;
        }
    }
}

impl Staging {
    /// Applies the chunks in file order (a later record of a chunk wins).
    fn apply(&self, image: &mut [u8], hashes: &mut [blake3::Hash]) {
        for &(index, at, len, hash) in &self.chunks {
            let start = (index * CHUNK_BYTES) as usize;
            image[start..start + len].copy_from_slice(&self.bytes[at..at + len]);
            hashes[index as usize] = hash;
        }
    }
}

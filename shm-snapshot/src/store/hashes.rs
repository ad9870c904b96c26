//! The hashes the store keeps of its newest image, one per chunk and one per
//! page, and the parallel hashing that finds the chunks that changed
//! (STORE.md, "Two-level hashing").

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::thread;

use blake3::Hash;

use super::format::{self, CHUNK_BYTES, PAGE_BYTES, PAGES_PER_CHUNK};
use super::paged::Paged;

/// The hashes of one chunk: of its bytes (when known), and of each of its
/// pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkHashes {
    /// BLAKE3 of the chunk's bytes; `None` when only its pages were hashed.
    pub chunk: Option<Hash>,
    /// BLAKE3 of each page's bytes; the first `count` are meaningful.
    pages: [Hash; PAGES_PER_CHUNK as usize],
    count: usize,
}

impl ChunkHashes {
    /// The hashes of `bytes`, a chunk whose own hash `chunk` is already
    /// known: each page is hashed.
    pub fn with_pages(chunk: Hash, bytes: &[u8]) -> ChunkHashes {
        let mut pages = [Hash::from_bytes([0; 32]); PAGES_PER_CHUNK as usize];
        let mut count = 0;
        for (slot, page) in pages.iter_mut().zip(bytes.chunks(PAGE_BYTES as usize)) {
            *slot = blake3::hash(page);
            count += 1;
        }
        ChunkHashes {
            chunk: Some(chunk),
            pages,
            count,
        }
    }

    /// The hashes of `bytes`, a chunk whose pages are `before` except the
    /// pages in `bitmap`, which are hashed here. The chunk's own hash is
    /// left unknown (hashing it would mean reading the pages that did not
    /// change).
    pub fn with_some_pages(before: &[Hash], bitmap: u64, bytes: &[u8]) -> ChunkHashes {
        let mut pages = [Hash::from_bytes([0; 32]); PAGES_PER_CHUNK as usize];
        let count = before.len();
        pages[..count].copy_from_slice(before);
        for (p, page) in bytes.chunks(PAGE_BYTES as usize).enumerate() {
            if bitmap & (1 << p) != 0 {
                pages[p] = blake3::hash(page);
            }
        }
        ChunkHashes {
            chunk: None,
            pages,
            count,
        }
    }

    /// The page hashes, one per page of the chunk.
    pub fn pages(&self) -> &[Hash] {
        &self.pages[..self.count]
    }
}

/// The hashes of a whole image: one per page, and one per chunk where it is
/// known. For 1 GiB that is 256 Ki page hashes and 16 Ki chunk hashes,
/// 8.5 MiB. A chunk's hash is unknown when only some of its pages were
/// hashed (a generation that offered pages) or when it was loaded (hashing
/// every chunk at load would cost a pass over the whole image); a chunk
/// offered whole then is compared page by page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageHashes {
    chunks: Vec<Option<Hash>>,
    pages: Paged<Hash>,
}

/// The memory for an image's hashes could not be had.
#[derive(Debug)]
pub(crate) struct NoMemory {
    /// The bytes asked for.
    pub bytes: u64,
}

impl ImageHashes {
    /// The hashes of an all-zero image of `region_len` bytes.
    pub fn zero(region_len: u64) -> Result<ImageHashes, NoMemory> {
        let count = format::chunk_count(region_len);
        let mut chunks = filled(count, Some(zero_hash(CHUNK_BYTES)))?;
        let tail = region_len % CHUNK_BYTES;
        if tail != 0 {
            chunks[count as usize - 1] = Some(zero_hash(tail));
        }
        let count = region_len.div_ceil(PAGE_BYTES);
        let mut pages = Paged::filled(count, zero_hash(PAGE_BYTES))?;
        let tail = region_len % PAGE_BYTES;
        if tail != 0 {
            pages.set(count as usize - 1, zero_hash(tail));
        }
        Ok(ImageHashes { chunks, pages })
    }

    /// Hashes made of page hashes already known (a load's): a chunk whose
    /// pages all hash as zero pages is all zero (unless BLAKE3 collides),
    /// and its hash is known; every other chunk's hash is left unknown, so
    /// nothing of the image is read again.
    pub fn from_pages(region_len: u64, pages: Vec<Hash>) -> Result<ImageHashes, NoMemory> {
        debug_assert_eq!(pages.len() as u64, region_len.div_ceil(PAGE_BYTES));
        let count = format::chunk_count(region_len);
        let mut chunks = filled(count, None)?;
        let zero_page = zero_hash(PAGE_BYTES);
        for (index, slot) in chunks.iter_mut().enumerate() {
            let len = format::chunk_len(region_len, index as u64).expect("index below the chunk count");
            let first = index * PAGES_PER_CHUNK as usize;
            let n = format::pages_in(len) as usize;
            let all_zero = pages[first..first + n].iter().enumerate().all(|(p, h)| {
                let page_len = format::page_len(len, p as u64);
                if page_len == PAGE_BYTES {
                    *h == zero_page
                } else {
                    *h == zero_hash(page_len)
                }
            });
            if all_zero {
                *slot = Some(zero_hash(len));
            }
        }
        let pages = Paged::from_vec(&pages, zero_page)?;
        Ok(ImageHashes { chunks, pages })
    }

    /// The page hashes, one per page of the image.
    pub fn pages(&self) -> &Paged<Hash> {
        &self.pages
    }

    /// The hash of chunk `index`, when known.
    pub fn chunk(&self, index: u64) -> Option<&Hash> {
        self.chunks[index as usize].as_ref()
    }

    /// The page hashes of chunk `index`.
    pub fn pages_of(&self, index: u64) -> &[Hash] {
        self.pages.block(index as usize)
    }

    /// Replaces the hashes of chunk `index`.
    pub fn set(&mut self, index: u64, hashes: &ChunkHashes) {
        self.chunks[index as usize] = hashes.chunk;
        self.pages.set_block(index as usize, hashes.pages());
    }
}

/// The page hashes of an all-zero image of `region_len` bytes.
pub(crate) fn zero_pages(region_len: u64) -> Result<Vec<Hash>, NoMemory> {
    let count = region_len.div_ceil(PAGE_BYTES);
    let mut pages = filled(count, zero_hash(PAGE_BYTES))?;
    let tail = region_len % PAGE_BYTES;
    if tail != 0 {
        pages[count as usize - 1] = zero_hash(tail);
    }
    Ok(pages)
}

/// `count` copies of `hash`, allocated fallibly.
fn filled<T: Clone>(count: u64, hash: T) -> Result<Vec<T>, NoMemory> {
    let no_memory = || NoMemory {
        bytes: count.saturating_mul(32),
    };
    let n = usize::try_from(count).map_err(|_| no_memory())?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| no_memory())?;
    v.resize(n, hash);
    Ok(v)
}

/// BLAKE3 of `len` zero bytes, `len` at most [`CHUNK_BYTES`]. The hashes of
/// a whole zero page and chunk are computed once.
pub(crate) fn zero_hash(len: u64) -> Hash {
    static ZEROS: [u8; CHUNK_BYTES as usize] = [0; CHUNK_BYTES as usize];
    static PAGE: OnceLock<Hash> = OnceLock::new();
    static CHUNK: OnceLock<Hash> = OnceLock::new();
    match len {
        PAGE_BYTES => *PAGE.get_or_init(|| blake3::hash(&ZEROS[..PAGE_BYTES as usize])),
        CHUNK_BYTES => *CHUNK.get_or_init(|| blake3::hash(&ZEROS)),
        _ => blake3::hash(&ZEROS[..len as usize]),
    }
}

/// Whether every byte is zero (written so the compiler makes it wide).
fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, b| acc | b) == 0
}

/// A generation's view of the image it describes: its parent's hashes
/// (the all-zero image's for a base), with the chunks offered so far
/// replaced.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    /// The parent's hashes.
    pub parent: &'a ImageHashes,
    /// The hashes of the chunks offered so far that are not in `parent`.
    pub offered: &'a BTreeMap<u64, ChunkHashes>,
}

impl<'a> View<'a> {
    /// The hash of chunk `index`, when known.
    pub fn chunk(self, index: u64) -> Option<&'a Hash> {
        self.offered
            .get(&index)
            .map_or_else(|| self.parent.chunk(index), |c| c.chunk.as_ref())
    }

    /// The page hashes of chunk `index`.
    pub fn pages_of(self, index: u64) -> &'a [Hash] {
        self.offered
            .get(&index)
            .map_or_else(|| self.parent.pages_of(index), |c| c.pages())
    }
}

/// Hashes the chunks of `bytes` (consecutive chunks, the first being chunk
/// `first`) and returns, in chunk order, those whose hash differs from
/// `view`'s, with their page hashes.
pub(crate) fn changed_chunks(first: u64, bytes: &[u8], view: View<'_>) -> Vec<(u64, ChunkHashes)> {
    for_each_chunk(first, bytes, |index, chunk| {
        // A zero chunk where the image is zero has not changed: seeing that
        // costs a pass at memory speed, several times faster than hashing
        // (a region's first generation is mostly this).
        let known = view.chunk(index);
        let was_zero = known == Some(&zero_hash(chunk.len() as u64));
        if was_zero && is_zero(chunk) {
            return None;
        }
        let hash = blake3::hash(chunk);
        match known {
            Some(known) => (hash != *known).then(|| (index, ChunkHashes::with_pages(hash, chunk))),
            // Unknown: compared page by page.
            None => {
                let hashes = ChunkHashes::with_pages(hash, chunk);
                (hashes.pages() != view.pages_of(index)).then_some((index, hashes))
            }
        }
    })
}

/// At most this many hashing threads. Two cores hash 1 GiB at about 9 GB/s;
/// beyond four, threads would contend for memory bandwidth more than they
/// add, and the supervisor must not take over a machine its program runs on.
const MAX_THREADS: usize = 4;

/// Each thread gets at least this many bytes. Spawning and joining a thread
/// costs tens of microseconds; 512 KiB takes about 100 µs to hash, so a
/// thread with less work would cost about as much as it saves.
const MIN_BYTES_PER_THREAD: usize = 512 << 10;

/// The threads to hash `len` bytes on: as many as the machine offers, at
/// most [`MAX_THREADS`], each with at least [`MIN_BYTES_PER_THREAD`].
fn threads_for(len: usize) -> usize {
    static AVAILABLE: OnceLock<usize> = OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()));
    available.min(MAX_THREADS).min(len / MIN_BYTES_PER_THREAD).max(1)
}

/// Applies `f` to each chunk of `bytes` (consecutive chunks of
/// [`CHUNK_BYTES`], the last possibly short, the first being chunk `first`)
/// and returns what it kept, in chunk order. Large inputs are split into
/// contiguous shares hashed on scoped threads; a thread that cannot be
/// spawned leaves its share to the calling thread.
fn for_each_chunk<T, F>(first: u64, bytes: &[u8], f: F) -> Vec<T>
where
    T: Send,
    F: Fn(u64, &[u8]) -> Option<T> + Sync,
{
    let run = |first: u64, share: &[u8]| -> Vec<T> {
        share
            .chunks(CHUNK_BYTES as usize)
            .zip(first..)
            .filter_map(|(chunk, index)| f(index, chunk))
            .collect()
    };
    let chunks = bytes.len().div_ceil(CHUNK_BYTES as usize);
    let threads = threads_for(bytes.len()).min(chunks);
    if threads <= 1 {
        return run(first, bytes);
    }
    let share_bytes = chunks.div_ceil(threads) * CHUNK_BYTES as usize;
    let chunks_per_share = (share_bytes as u64) / CHUNK_BYTES;
    let run = &run;
    thread::scope(|scope| {
        let mut shares = bytes
            .chunks(share_bytes)
            .zip((0..).map(|k| first + k * chunks_per_share));
        let (mine, my_first) = shares.next().expect("threads > 1 means at least two shares");
        let others: Vec<_> = shares
            .map(|(share, first)| {
                let spawned = thread::Builder::new()
                    .name("store-hash".to_owned())
                    .spawn_scoped(scope, move || run(first, share));
                (spawned.ok(), first, share)
            })
            .collect();
        let mut kept = run(my_first, mine);
        for (handle, first, share) in others {
            match handle {
                Some(handle) => match handle.join() {
                    Ok(part) => kept.extend(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                None => kept.extend(run(first, share)),
            }
        }
        kept
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn zero_hashes_are_the_hashes_of_zeros() {
        let len = 2 * CHUNK_BYTES + PAGE_BYTES + 10;
        let zeros = vec![0u8; len as usize];
        let z = ImageHashes::zero(len).unwrap();
        assert_eq!(z, ImageHashes::from_pages(len, zero_pages(len).unwrap()).unwrap());
        assert_eq!(
            *z.chunk(2).unwrap(),
            blake3::hash(&zeros[..(PAGE_BYTES + 10) as usize])
        );
        let _ = &zeros;
        assert_eq!(z.pages_of(2)[1], blake3::hash(&[0u8; 10]));
        assert_eq!(z.pages_of(2).len(), 2);
        assert_eq!(z.pages_of(0).len(), 16);
    }

    #[test]
    fn chunks_hashed_on_several_threads_come_back_in_order() {
        // 40 chunks and a short one: several shares, the last one short.
        let bytes = pattern(40 * CHUNK_BYTES as usize + 1000);
        assert!(threads_for(bytes.len()) >= 1);
        let hashes = for_each_chunk(5, &bytes, |index, chunk| Some((index, blake3::hash(chunk))));
        let expected: Vec<_> = bytes
            .chunks(CHUNK_BYTES as usize)
            .zip(5..)
            .map(|(c, i)| (i, blake3::hash(c)))
            .collect();
        assert_eq!(hashes, expected);
    }

    #[test]
    fn changed_chunks_compares_with_the_view_and_hashes_the_pages() {
        let len = 3 * CHUNK_BYTES;
        let mut bytes = vec![0u8; len as usize];
        bytes[(CHUNK_BYTES + 5 * PAGE_BYTES) as usize] = 1;
        let parent = ImageHashes::zero(len).unwrap();
        let offered = BTreeMap::new();
        let changed = changed_chunks(
            0,
            &bytes,
            View {
                parent: &parent,
                offered: &offered,
            },
        );
        assert_eq!(changed.len(), 1);
        let (index, hashes) = &changed[0];
        assert_eq!(*index, 1);
        let differ: Vec<usize> = (0..16)
            .filter(|&p| hashes.pages()[p] != parent.pages_of(1)[p])
            .collect();
        assert_eq!(differ, vec![5]);
    }
}

//! The store's file format, v3: every offset, tag and size in one place.
//!
//! `STORE.md` beside this crate describes the format byte by byte and argues
//! its crash safety; this module is its only definition in code. Offsets are
//! chained so no two fields overlap and the order here is the order there.

use std::fmt;

/// Size of a store chunk: the unit in which the region is scanned for change.
///
/// Finding what changed means hashing the whole region, so the scan unit is
/// chosen for hashing speed: BLAKE3 hashes a 64 KiB input about twice as
/// fast as a 4 KiB one (its SIMD lanes need many 1 KiB blocks at once), fast
/// enough to scan 1 GiB in well under 200 ms on two cores. Per chunk the
/// store keeps one 32-byte hash in memory: 512 KiB for 1 GiB. It is a
/// multiple of [`PAGE_BYTES`], so a page never straddles two chunks.
pub const CHUNK_BYTES: u64 = 64 << 10;

/// Size of a page: the unit in which a record stores change.
///
/// A chunk whose hash changed is hashed again page by page, and only the
/// pages that differ are written, so a change of a few bytes costs 4 KiB on
/// disk, not 64 KiB. 4 KiB is the page size of the memory the region lives
/// in: a program's scattered writes dirty whole pages of it anyway.
pub const PAGE_BYTES: u64 = 4 << 10;

/// Pages in a whole chunk, 16: a chunk record's page bitmap fits 16 bits.
pub const PAGES_PER_CHUNK: u64 = CHUNK_BYTES / PAGE_BYTES;

const _: () = assert!(CHUNK_BYTES.is_multiple_of(PAGE_BYTES));
const _: () = assert!(PAGES_PER_CHUNK >= 1 && PAGES_PER_CHUNK <= 16);

/// The largest region a generation may describe, 1 TiB. It bounds the one
/// allocation a header decides (the reassembled image) so a corrupt length
/// cannot ask for an absurd buffer.
pub const MAX_REGION_LEN: u64 = 1 << 40;

/// The first eight bytes of every generation record.
pub const MAGIC: [u8; 8] = *b"SHM-GENS";

/// The format version this build writes. Version 1 stored whole chunks and
/// was never deployed; version 2 kept one file per generation; version 3
/// appends generations to segments (STORE.md).
pub const VERSION: u64 = 3;

/// The older version this build still reads: a `gen-<number>.snap` file of
/// version 2 is one generation record in a file of its own.
pub const LEGACY_VERSION: u64 = 2;

/// The first eight bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SHM-SEGS";

/// Length of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;

/// Tag of a chunk record.
pub const CHUNK_TAG: [u8; 8] = *b"gen:chnk";
/// Tag of the meta record.
pub const META_TAG: [u8; 8] = *b"gen:meta";
/// Tag of the trailer.
pub const END_TAG: [u8; 8] = *b"gen:end\0";

/// Byte offsets of the header's fields, and its length.
pub mod header {
    use super::HASH_LEN;
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::VERSION`].
    pub const VERSION: usize = MAGIC + 8;
    /// This generation's number.
    pub const NUMBER: usize = VERSION + 8;
    /// Version 3: reserved, 0. Version 2: the base of the chain, the
    /// number itself for a base.
    pub const BASE: usize = NUMBER + 8;
    /// The generation a delta changes; 0 in a full record (a base).
    pub const PARENT: usize = BASE + 8;
    /// The region's length in bytes.
    pub const REGION_LEN: usize = PARENT + 8;
    /// [`super::CHUNK_BYTES`].
    pub const CHUNK_BYTES: usize = REGION_LEN + 8;
    /// [`super::PAGE_BYTES`].
    pub const PAGE_BYTES: usize = CHUNK_BYTES + 8;
    /// Creation time, milliseconds since the Unix epoch.
    pub const CREATED_MS: usize = PAGE_BYTES + 8;
    /// BLAKE3 of the bytes before it.
    pub const HASH: usize = CREATED_MS + 8;
    /// Length of the header.
    pub const LEN: usize = HASH + HASH_LEN;

    const _: () = assert!(LEN == 104);
}

/// Byte offsets of a chunk record's descriptor; the stored pages' bytes
/// follow it.
pub mod chunk {
    use super::HASH_LEN;
    /// [`super::CHUNK_TAG`].
    pub const TAG: usize = 0;
    /// The chunk's index in the region.
    pub const INDEX: usize = TAG + 8;
    /// The page bitmap: bit `p` set means page `p` of the chunk is stored.
    pub const PAGES: usize = INDEX + 8;
    /// [`super::record_hash`] of the stored pages.
    pub const HASH: usize = PAGES + 8;
    /// Length of the descriptor.
    pub const DESCRIPTOR: usize = HASH + HASH_LEN;

    const _: () = assert!(DESCRIPTOR == 56);
}

/// Byte offsets of the meta record's descriptor; the blob follows it.
pub mod meta {
    use super::HASH_LEN;
    /// [`super::META_TAG`].
    pub const TAG: usize = 0;
    /// The blob's length.
    pub const LEN: usize = TAG + 8;
    /// BLAKE3 of the blob.
    pub const HASH: usize = LEN + 8;
    /// Length of the descriptor.
    pub const DESCRIPTOR: usize = HASH + HASH_LEN;

    const _: () = assert!(DESCRIPTOR == 48);
}

/// Byte offsets of the trailer, the last bytes of a record.
pub mod trailer {
    use super::HASH_LEN;
    /// [`super::END_TAG`].
    pub const TAG: usize = 0;
    /// Number of chunk records in the generation.
    pub const CHUNK_COUNT: usize = TAG + 8;
    /// Length of the whole record, header to trailer (version 2: of the
    /// file, which is the same thing there).
    pub const RECORD_LEN: usize = CHUNK_COUNT + 8;
    /// BLAKE3 of the skeleton: every byte before this field that is not chunk
    /// or meta payload.
    pub const HASH: usize = RECORD_LEN + 8;
    /// Length of the trailer.
    pub const LEN: usize = HASH + HASH_LEN;

    const _: () = assert!(LEN == 56);
}

/// Byte offsets of a segment's header, and its decoded form.
pub mod segment;
mod whole;
pub use segment::SegmentHeader;
pub use whole::check_record;

/// The smallest possible generation record: a header, an empty meta record
/// and the trailer.
pub const MIN_RECORD_LEN: u64 = (header::LEN + meta::DESCRIPTOR + trailer::LEN) as u64;

/// The decoded header of a generation record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// [`VERSION`], or [`LEGACY_VERSION`] for a file written by version 2.
    pub version: u64,
    /// This generation's number.
    pub number: u64,
    /// Version 2 only: the base of its chain (its own number for a base).
    /// 0 in version 3.
    pub base: u64,
    /// The generation a delta changes; 0 in a full record (a base).
    pub parent: u64,
    /// The region's length in bytes.
    pub region_len: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// A field of a store file that holds a value the format does not allow.
/// Its display names the field, where it is, what was expected and what was
/// found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defect {
    /// The field, e.g. `"header_hash"` or `"chunk 3 len"`.
    pub field: String,
    /// Byte offset of the field in the file.
    pub offset: u64,
    /// What the format requires there.
    pub expected: String,
    /// What the file holds.
    pub found: String,
}

impl Defect {
    /// A defect in `field` at `offset`.
    pub fn new(
        field: impl Into<String>,
        offset: u64,
        expected: impl fmt::Display,
        found: impl fmt::Display,
    ) -> Defect {
        Defect {
            field: field.into(),
            offset,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: expected {}, found {}",
            self.field, self.offset, self.expected, self.found
        )
    }
}

impl Header {
    /// The header of a version 3 record.
    pub fn new(number: u64, parent: u64, region_len: u64, created_ms: u64) -> Header {
        Header {
            version: VERSION,
            number,
            base: 0,
            parent,
            region_len,
            created_ms,
        }
    }

    /// Whether this is a full record (a base): applied to an all-zero image.
    pub fn is_base(&self) -> bool {
        self.parent == 0
    }

    /// Number of chunks in the region.
    pub fn chunks(&self) -> u64 {
        chunk_count(self.region_len)
    }

    /// Encodes the header, its hash included.
    pub fn encode(&self) -> [u8; header::LEN] {
        let mut b = [0u8; header::LEN];
        b[header::MAGIC..][..8].copy_from_slice(&MAGIC);
        put(&mut b, header::VERSION, self.version);
        put(&mut b, header::NUMBER, self.number);
        put(&mut b, header::BASE, self.base);
        put(&mut b, header::PARENT, self.parent);
        put(&mut b, header::REGION_LEN, self.region_len);
        put(&mut b, header::CHUNK_BYTES, CHUNK_BYTES);
        put(&mut b, header::PAGE_BYTES, PAGE_BYTES);
        put(&mut b, header::CREATED_MS, self.created_ms);
        let hash = blake3::hash(&b[..header::HASH]);
        b[header::HASH..].copy_from_slice(hash.as_bytes());
        b
    }

    /// Decodes and checks a header: magic, version, hash, then every field's
    /// rule (STORE.md, "Header").
    pub fn decode(b: &[u8; header::LEN]) -> Result<Header, Defect> {
        let magic = &b[header::MAGIC..][..8];
        if magic != MAGIC {
            return Err(Defect::new("magic", 0, show_tag(&MAGIC), show_tag(magic)));
        }
        let version = get(b, header::VERSION);
        if version != VERSION && version != LEGACY_VERSION {
            return Err(Defect::new(
                "version",
                header::VERSION as u64,
                format!("{VERSION} or {LEGACY_VERSION} (the versions this build reads)"),
                version,
            ));
        }
        let stored = hash_at(b, header::HASH);
        let computed = blake3::hash(&b[..header::HASH]);
        if stored != computed {
            return Err(Defect::new(
                "header_hash",
                header::HASH as u64,
                stored.to_hex(),
                format!("{} (the hash of the header's bytes)", computed.to_hex()),
            ));
        }
        let chunk_bytes = get(b, header::CHUNK_BYTES);
        if chunk_bytes != CHUNK_BYTES {
            return Err(Defect::new(
                "chunk_bytes",
                header::CHUNK_BYTES as u64,
                CHUNK_BYTES,
                chunk_bytes,
            ));
        }
        let page_bytes = get(b, header::PAGE_BYTES);
        if page_bytes != PAGE_BYTES {
            return Err(Defect::new(
                "page_bytes",
                header::PAGE_BYTES as u64,
                PAGE_BYTES,
                page_bytes,
            ));
        }
        let h = Header {
            version,
            number: get(b, header::NUMBER),
            base: get(b, header::BASE),
            parent: get(b, header::PARENT),
            region_len: get(b, header::REGION_LEN),
            created_ms: get(b, header::CREATED_MS),
        };
        if h.number == 0 {
            return Err(Defect::new("number", header::NUMBER as u64, "at least 1", 0));
        }
        if version == LEGACY_VERSION {
            legacy_links(&h)?;
        } else {
            if h.base != 0 {
                return Err(Defect::new("reserved", header::BASE as u64, 0, h.base));
            }
            if h.parent >= h.number {
                return Err(Defect::new(
                    "parent",
                    header::PARENT as u64,
                    format!("0 (a full record) or 1..{}", h.number),
                    h.parent,
                ));
            }
        }
        if h.region_len == 0 || h.region_len > MAX_REGION_LEN {
            return Err(Defect::new(
                "region_len",
                header::REGION_LEN as u64,
                format!("1..={MAX_REGION_LEN}"),
                h.region_len,
            ));
        }
        Ok(h)
    }
}

/// Version 2's rules for `base` and `parent`: a base names itself and has
/// no parent; a delta's `base <= parent < number`.
fn legacy_links(h: &Header) -> Result<(), Defect> {
    if h.base == h.number {
        if h.parent != 0 {
            return Err(Defect::new(
                "parent",
                header::PARENT as u64,
                "0 in a base",
                h.parent,
            ));
        }
    } else {
        if h.base >= h.number || h.base == 0 {
            return Err(Defect::new(
                "base",
                header::BASE as u64,
                format!("the number itself or 1..{}", h.number),
                h.base,
            ));
        }
        if h.parent < h.base || h.parent >= h.number {
            return Err(Defect::new(
                "parent",
                header::PARENT as u64,
                format!("{}..{} in a delta", h.base, h.number),
                h.parent,
            ));
        }
    }
    Ok(())
}

/// Number of chunks of a region of `region_len` bytes.
pub fn chunk_count(region_len: u64) -> u64 {
    region_len.div_ceil(CHUNK_BYTES)
}

/// Length of chunk `index` of a region of `region_len` bytes; `None` if
/// there is no such chunk.
pub fn chunk_len(region_len: u64, index: u64) -> Option<u64> {
    let start = index.checked_mul(CHUNK_BYTES)?;
    if start >= region_len {
        return None;
    }
    Some((region_len - start).min(CHUNK_BYTES))
}

/// Number of pages of a chunk of `chunk_len` bytes (at most
/// [`PAGES_PER_CHUNK`]); the last may be short.
pub fn pages_in(chunk_len: u64) -> u64 {
    chunk_len.div_ceil(PAGE_BYTES)
}

/// Length of page `page` of a chunk of `chunk_len` bytes; the page must
/// exist (`page < pages_in(chunk_len)`).
pub fn page_len(chunk_len: u64, page: u64) -> u64 {
    (chunk_len - page * PAGE_BYTES).min(PAGE_BYTES)
}

/// The page bitmap naming every page of a chunk of `chunk_len` bytes.
pub fn all_pages(chunk_len: u64) -> u64 {
    (1u64 << pages_in(chunk_len)) - 1
}

/// The pages a bitmap names, in increasing order.
pub fn pages_of(bitmap: u64) -> impl Iterator<Item = u64> {
    (0..64).filter(move |p| bitmap & (1 << p) != 0)
}

/// Length of the payload of a chunk record storing the pages `bitmap` names
/// of a chunk of `chunk_len` bytes.
pub fn payload_len(chunk_len: u64, bitmap: u64) -> u64 {
    pages_of(bitmap).map(|p| page_len(chunk_len, p)).sum()
}

/// The hash a chunk record carries: BLAKE3 over the concatenated 32-byte
/// BLAKE3 hashes of its stored pages, in page order. It commits to every
/// stored byte and to the pages' order, and a writer that has just hashed
/// each page (to find the changed ones) gets it for 32 bytes of hashing per
/// page instead of a second pass over the bytes.
pub fn record_hash<'h>(page_hashes: impl IntoIterator<Item = &'h blake3::Hash>) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for page in page_hashes {
        h.update(page.as_bytes());
    }
    h.finalize()
}

/// Encodes a chunk record's descriptor: chunk `index`, the page bitmap
/// `pages`, and the [`record_hash`] of those pages.
pub fn chunk_descriptor(index: u64, pages: u64, hash: &blake3::Hash) -> [u8; chunk::DESCRIPTOR] {
    let mut b = [0u8; chunk::DESCRIPTOR];
    b[chunk::TAG..][..8].copy_from_slice(&CHUNK_TAG);
    put(&mut b, chunk::INDEX, index);
    put(&mut b, chunk::PAGES, pages);
    b[chunk::HASH..][..HASH_LEN].copy_from_slice(hash.as_bytes());
    b
}

/// Encodes the meta record's descriptor.
pub fn meta_descriptor(len: u64, hash: &blake3::Hash) -> [u8; meta::DESCRIPTOR] {
    let mut b = [0u8; meta::DESCRIPTOR];
    b[meta::TAG..][..8].copy_from_slice(&META_TAG);
    put(&mut b, meta::LEN, len);
    b[meta::HASH..][..HASH_LEN].copy_from_slice(hash.as_bytes());
    b
}

/// Encodes the trailer. `skeleton` has seen every skeleton byte before the
/// trailer; the trailer's own first bytes are added to it here.
pub fn trailer(chunk_count: u64, record_len: u64, skeleton: &mut blake3::Hasher) -> [u8; trailer::LEN] {
    let mut b = [0u8; trailer::LEN];
    b[trailer::TAG..][..8].copy_from_slice(&END_TAG);
    put(&mut b, trailer::CHUNK_COUNT, chunk_count);
    put(&mut b, trailer::RECORD_LEN, record_len);
    skeleton.update(&b[..trailer::HASH]);
    b[trailer::HASH..].copy_from_slice(skeleton.finalize().as_bytes());
    b
}

/// The little-endian u64 at `at`.
pub(crate) fn get(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The hash at `at`.
pub(crate) fn hash_at(b: &[u8], at: usize) -> blake3::Hash {
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(&b[at..at + HASH_LEN]);
    blake3::Hash::from_bytes(h)
}

fn put(b: &mut [u8], at: usize, value: u64) {
    b[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// A tag or magic shown as text when printable, as hex otherwise.
pub(crate) fn show_tag(tag: &[u8]) -> String {
    if tag.iter().all(|c| c.is_ascii_graphic() || *c == b':' || *c == 0) {
        format!("{:?}", String::from_utf8_lossy(tag).trim_end_matches('\0'))
    } else {
        let hex: String = tag.iter().map(|c| format!("{c:02x}")).collect();
        format!("0x{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta() -> Header {
        Header::new(7, 6, 3 * CHUNK_BYTES + 5, 1_700_000_000_000)
    }

    fn legacy_delta() -> Header {
        Header {
            version: LEGACY_VERSION,
            base: 4,
            ..delta()
        }
    }

    #[test]
    fn header_round_trips() {
        let h = delta();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        assert_eq!(h.chunks(), 4);
        assert!(!h.is_base());
    }

    #[test]
    fn a_version_2_header_round_trips_with_its_base() {
        let h = legacy_delta();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_flipped_header_byte_is_a_defect() {
        let b = delta().encode();
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(Header::decode(&c).is_err(), "flip at byte {i} not detected");
        }
        let b = SegmentHeader {
            seq: 3,
            created_ms: 9,
        }
        .encode();
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(
                SegmentHeader::decode(&c).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }

    #[test]
    fn a_segment_header_round_trips() {
        let h = SegmentHeader {
            seq: 12,
            created_ms: 1_700_000_000_000,
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn newer_and_older_versions_are_named() {
        for version in [VERSION + 1, LEGACY_VERSION - 1] {
            let mut b = delta().encode();
            b[header::VERSION] = version as u8;
            let d = Header::decode(&b).unwrap_err();
            assert_eq!(d.field, "version");
            assert_eq!(d.found, version.to_string());
        }
    }

    #[test]
    fn a_short_last_chunk_has_a_short_last_page() {
        let len = PAGE_BYTES * 2 + 100;
        assert_eq!(pages_in(len), 3);
        assert_eq!(page_len(len, 1), PAGE_BYTES);
        assert_eq!(page_len(len, 2), 100);
        assert_eq!(all_pages(len), 0b111);
        assert_eq!(all_pages(CHUNK_BYTES), 0xffff);
        assert_eq!(payload_len(len, 0b101), PAGE_BYTES + 100);
        assert_eq!(pages_of(0b1010_0001).collect::<Vec<_>>(), vec![0, 5, 7]);
    }

    #[test]
    fn the_record_hash_depends_on_the_pages_order() {
        let (a, b) = (blake3::hash(b"a"), blake3::hash(b"b"));
        assert_ne!(record_hash([&a, &b]), record_hash([&b, &a]));
        assert_ne!(record_hash([&a]), record_hash([&a, &a]));
    }

    #[test]
    fn impossible_links_are_refused_even_with_a_good_hash() {
        for (base, parent) in [(0, 7), (0, 8), (1, 6), (7, 0)] {
            let h = Header {
                base,
                parent,
                ..delta()
            };
            assert!(
                Header::decode(&h.encode()).is_err(),
                "base {base} parent {parent}"
            );
        }
        for (base, parent) in [(7, 3), (8, 6), (4, 3), (4, 7), (0, 0)] {
            let h = Header {
                base,
                parent,
                ..legacy_delta()
            };
            assert!(
                Header::decode(&h.encode()).is_err(),
                "base {base} parent {parent}"
            );
        }
        let h = Header {
            region_len: MAX_REGION_LEN + 1,
            ..delta()
        };
        assert_eq!(Header::decode(&h.encode()).unwrap_err().field, "region_len");
    }

    #[test]
    fn last_chunk_is_short_and_none_follows() {
        let len = 2 * CHUNK_BYTES + 10;
        assert_eq!(chunk_len(len, 0), Some(CHUNK_BYTES));
        assert_eq!(chunk_len(len, 2), Some(10));
        assert_eq!(chunk_len(len, 3), None);
        assert_eq!(chunk_len(len, u64::MAX), None);
        assert_eq!(chunk_count(len), 3);
        assert_eq!(chunk_count(CHUNK_BYTES), 1);
    }

    #[test]
    fn tags_show_as_text_and_garbage_as_hex() {
        assert_eq!(show_tag(&END_TAG), "\"gen:end\"");
        assert_eq!(show_tag(&[0xff, 1]), "0xff01");
    }
}

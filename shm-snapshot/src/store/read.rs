//! Reading one generation file: a front-to-back parse that checks every
//! field (STORE.md, "Reading a generation") and hands verified pages to a
//! sink.
//!
//! Every length the file claims is checked against the file's real length
//! before it is read or allocated: a page is at most [`PAGE_BYTES`], the
//! meta blob at most what is left of the file.

use std::io::{ErrorKind, Read};
use std::path::Path;

use super::error::StoreError;
use super::format::{
    self, CHUNK_TAG, Defect, END_TAG, Header, META_TAG, PAGE_BYTES, PAGES_PER_CHUNK, chunk, get, hash_at,
    header, meta, show_tag, trailer,
};
use super::io::StoreIo;

/// Where the pages of a file being read go.
pub(crate) trait ChunkSink {
    /// The buffer page `page` of chunk `index` is read into, `len` bytes.
    /// The chunk and page have been checked against the region, and `len`
    /// is the page's length, at most [`PAGE_BYTES`].
    fn page(&mut self, index: u64, page: u64, len: usize) -> &mut [u8];
    /// The pages of chunk `index` just read verified: `pages` is the
    /// record's bitmap and `hashes` the hashes of those pages, in page
    /// order.
    fn verified(&mut self, index: u64, pages: u64, hashes: &[blake3::Hash]);
}

/// Reads and checks only the header of the generation file at `path`,
/// returning it with the file's length.
pub(crate) fn read_header(io: &mut dyn StoreIo, path: &Path) -> Result<(Header, u64), StoreError> {
    let mut s = Stream::open(io, path)?;
    let header = s.header()?;
    Ok((header, s.len))
}

/// Reads the whole generation file at `path`, checking every field, handing
/// each verified chunk to `sink` in file order. The header must be
/// `expected` (the one a scan found and planned from): a sink may rely on its
/// region length.
///
/// Returns the meta blob. On an error the sink may have received bytes of
/// chunks that did not verify: a caller applies nothing from a file before
/// this returns `Ok`.
pub(crate) fn read_generation(
    io: &mut dyn StoreIo,
    path: &Path,
    expected: &Header,
    sink: &mut dyn ChunkSink,
) -> Result<Vec<u8>, StoreError> {
    let mut s = Stream::open(io, path)?;
    let header = s.header()?;
    if header != *expected {
        return Err(s.defect(Defect::new(
            "header",
            0,
            format!("{expected:?} (as scanned)"),
            format!("{header:?} (the file changed while the store was read)"),
        )));
    }
    let mut count = 0u64;
    let meta = loop {
        let at = s.pos;
        let mut tag = [0u8; 8];
        s.read_skeleton(&mut tag, || "record tag".to_owned())?;
        if tag == CHUNK_TAG {
            s.chunk(at, &header, sink)?;
            count += 1;
        } else if tag == META_TAG {
            break s.meta(at)?;
        } else {
            let expected = format!("{} or {}", show_tag(&CHUNK_TAG), show_tag(&META_TAG));
            return Err(s.defect(Defect::new("record tag", at, expected, show_tag(&tag))));
        }
    };
    s.trailer(count)?;
    Ok(meta)
}

/// A zero-filled buffer of `len` bytes, or an error if it cannot be had.
pub(crate) fn zeroed(len: u64, path: &Path) -> Result<Vec<u8>, StoreError> {
    let oom = || StoreError::OutOfMemory {
        path: path.to_owned(),
        bytes: len,
    };
    let n = usize::try_from(len).map_err(|_| oom())?;
    if n == 0 {
        return Ok(Vec::new());
    }
    // Zeroed by the allocator, not by writing zeros: a large allocation
    // comes from fresh pages that are zero already, and pages a restore
    // never writes are never touched (a `resize` would fault in and clear
    // the whole region, tens of milliseconds at 64 MiB).
    let layout = std::alloc::Layout::array::<u8>(n).map_err(|_| oom())?;
    // SAFETY: `layout` has a non-zero size (n > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(oom());
    }
    // SAFETY: `ptr` comes from the global allocator with `layout`, the
    // layout a `Vec<u8>` of capacity `n` frees with (size n, alignment 1);
    // its `n` bytes are initialised (zero).
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// A generation file being read front to back, with its position, its real
/// length and the hash of the skeleton read so far.
struct Stream<'p> {
    path: &'p Path,
    reader: Box<dyn Read + Send>,
    /// Bytes read so far; never more than `len`.
    pos: u64,
    /// The file's real length.
    len: u64,
    skeleton: blake3::Hasher,
}

impl<'p> Stream<'p> {
    fn open(io: &mut dyn StoreIo, path: &'p Path) -> Result<Stream<'p>, StoreError> {
        let file = io
            .open_read(path)
            .map_err(|e| StoreError::io("opening generation file", path, e))?;
        Ok(Stream {
            path,
            reader: file.reader,
            pos: 0,
            len: file.len,
            skeleton: blake3::Hasher::new(),
        })
    }

    fn defect(&self, defect: Defect) -> StoreError {
        StoreError::corrupt(self.path, defect)
    }

    /// Reads `buf.len()` bytes of `what`, failing if the file ends first.
    fn read(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<(), StoreError> {
        let n = buf.len() as u64;
        let left = self.len - self.pos;
        if n > left {
            return Err(self.defect(Defect::new(
                what(),
                self.pos,
                format!("{n} bytes"),
                format!("{left} bytes before the end of the file (truncated)"),
            )));
        }
        match self.reader.read_exact(buf) {
            Ok(()) => {
                self.pos += n;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(self.defect(Defect::new(
                what(),
                self.pos,
                format!("{n} bytes"),
                "the file shrinking while it was read",
            ))),
            Err(e) => Err(StoreError::io("reading generation file", self.path, e)),
        }
    }

    /// Reads skeleton bytes: they also go into the skeleton hash.
    fn read_skeleton(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<(), StoreError> {
        self.read(buf, what)?;
        self.skeleton.update(buf);
        Ok(())
    }

    fn header(&mut self) -> Result<Header, StoreError> {
        let mut b = [0u8; header::LEN];
        self.read_skeleton(&mut b, || "header".to_owned())?;
        Header::decode(&b).map_err(|d| self.defect(d))
    }

    /// Reads the rest of the chunk record that starts at `at`.
    fn chunk(&mut self, at: u64, header: &Header, sink: &mut dyn ChunkSink) -> Result<(), StoreError> {
        let mut d = [0u8; chunk::DESCRIPTOR];
        self.read_skeleton(&mut d[chunk::INDEX..], || "chunk record descriptor".to_owned())?;
        let index = get(&d, chunk::INDEX);
        let pages = get(&d, chunk::PAGES);
        let stored = hash_at(&d, chunk::HASH);
        let Some(chunk_len) = format::chunk_len(header.region_len, index) else {
            return Err(self.defect(Defect::new(
                "chunk index",
                at + chunk::INDEX as u64,
                format!("below {} (the region's chunk count)", header.chunks()),
                index,
            )));
        };
        let all = format::all_pages(chunk_len);
        if pages == 0 || pages & !all != 0 {
            return Err(self.defect(Defect::new(
                format!("chunk {index} pages"),
                at + chunk::PAGES as u64,
                format!("a non-empty subset of {all:#x} (the chunk's pages)"),
                format!("{pages:#x}"),
            )));
        }
        // Every page read is at most PAGE_BYTES now, whatever the file said.
        let mut hashes = [blake3::Hash::from_bytes([0; 32]); PAGES_PER_CHUNK as usize];
        let mut count = 0;
        for page in format::pages_of(pages) {
            let len = format::page_len(chunk_len, page);
            debug_assert!(len <= PAGE_BYTES);
            let buf = sink.page(index, page, len as usize);
            self.read(buf, || format!("chunk {index} page {page} bytes"))?;
            hashes[count] = blake3::hash(buf);
            count += 1;
        }
        let hashes = &hashes[..count];
        let computed = format::record_hash(hashes);
        if computed != stored {
            return Err(self.defect(Defect::new(
                format!("chunk {index} hash"),
                at + chunk::HASH as u64,
                stored.to_hex(),
                format!("{} (the hash of its pages)", computed.to_hex()),
            )));
        }
        sink.verified(index, pages, hashes);
        Ok(())
    }

    /// Reads the rest of the meta record that starts at `at`.
    fn meta(&mut self, at: u64) -> Result<Vec<u8>, StoreError> {
        let mut d = [0u8; meta::DESCRIPTOR];
        self.read_skeleton(&mut d[meta::LEN..], || "meta record descriptor".to_owned())?;
        let len = get(&d, meta::LEN);
        let stored = hash_at(&d, meta::HASH);
        let room = (self.len - self.pos).saturating_sub(trailer::LEN as u64);
        if len > room {
            return Err(self.defect(Defect::new(
                "meta len",
                at + meta::LEN as u64,
                format!("at most {room} (the bytes left before the trailer)"),
                len,
            )));
        }
        let mut blob = zeroed(len, self.path)?;
        self.read(&mut blob, || "meta bytes".to_owned())?;
        let computed = blake3::hash(&blob);
        if computed != stored {
            return Err(self.defect(Defect::new(
                "meta hash",
                at + meta::HASH as u64,
                stored.to_hex(),
                format!("{} (the hash of its bytes)", computed.to_hex()),
            )));
        }
        Ok(blob)
    }

    /// Reads and checks the trailer, the end of the file.
    fn trailer(&mut self, chunk_count: u64) -> Result<(), StoreError> {
        let at = self.pos;
        let mut t = [0u8; trailer::LEN];
        self.read(&mut t, || "trailer".to_owned())?;
        let tag = &t[trailer::TAG..][..8];
        if tag != END_TAG {
            return Err(self.defect(Defect::new("trailer tag", at, show_tag(&END_TAG), show_tag(tag))));
        }
        let count = get(&t, trailer::CHUNK_COUNT);
        if count != chunk_count {
            return Err(self.defect(Defect::new(
                "trailer chunk_count",
                at + trailer::CHUNK_COUNT as u64,
                format!("{chunk_count} (the chunk records read)"),
                count,
            )));
        }
        let file_len = get(&t, trailer::FILE_LEN);
        if file_len != self.pos {
            return Err(self.defect(Defect::new(
                "trailer file_len",
                at + trailer::FILE_LEN as u64,
                format!("{} (the end of the trailer)", self.pos),
                file_len,
            )));
        }
        if self.len != self.pos {
            return Err(self.defect(Defect::new(
                "file length",
                self.pos,
                format!("the file to end with the trailer, at {} bytes", self.pos),
                format!("{} bytes", self.len),
            )));
        }
        self.skeleton.update(&t[..trailer::HASH]);
        let computed = self.skeleton.finalize();
        let stored = hash_at(&t, trailer::HASH);
        if computed != stored {
            return Err(self.defect(Defect::new(
                "trailer skeleton_hash",
                at + trailer::HASH as u64,
                stored.to_hex(),
                format!("{} (the hash of the file's skeleton)", computed.to_hex()),
            )));
        }
        Ok(())
    }
}

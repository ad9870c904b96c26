//! Reading the store's files: a generation record parsed front to back,
//! checking every field (STORE.md, "Reading a record"), its verified pages
//! handed to a sink; and a segment scanned for its records.
//!
//! Every length the file claims is checked against the file's real length
//! before it is read or allocated: a page is at most [`PAGE_BYTES`], the
//! meta blob at most what is left of the file.

use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::error::StoreError;
use super::format::{
    self, CHUNK_TAG, Defect, END_TAG, Header, META_TAG, PAGE_BYTES, PAGES_PER_CHUNK, SegmentHeader, VERSION,
    chunk, get, hash_at, header, meta, segment, show_tag, trailer,
};
use super::io::{SeekRead, StoreIo};

/// Where the pages of a record being read go.
pub(crate) trait ChunkSink {
    /// The buffer page `page` of chunk `index` is read into, `len` bytes;
    /// `at` is where the page's bytes are in the file. The chunk and page
    /// have been checked against the region, and `len` is the page's
    /// length, at most [`PAGE_BYTES`].
    fn page(&mut self, index: u64, page: u64, len: usize, at: u64) -> &mut [u8];
    /// The pages of chunk `index` just read verified: `pages` is the
    /// record's bitmap and `hashes` the hashes of those pages, in page
    /// order.
    fn verified(&mut self, index: u64, pages: u64, hashes: &[blake3::Hash]);
}

/// Where a generation record is: a file, the record's offset and length in
/// it, and its header as a scan verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub header: Header,
    /// The record is the whole file (a base file, or a version 2 file).
    pub whole_file: bool,
}

/// Reads and checks the header of the record that is the whole file at
/// `path` (a base file, or a version 2 file), returning it with the file's
/// length.
pub(crate) fn read_header(io: &mut dyn StoreIo, path: &Path) -> Result<(Header, u64), StoreError> {
    let mut s = Stream::open(io, path, 0)?;
    let header = s.header()?;
    Ok((header, s.len))
}

/// Reads records one after the other, keeping the file open (and its read
/// buffer) while each record starts where the one before ended: a chain's
/// records in a segment are read as one sequential pass.
#[derive(Default)]
pub(crate) struct Records {
    open: Option<Stream<'static>>,
}

impl Records {
    /// Reads the whole record at `place`, checking every field, handing
    /// each verified chunk to `sink` in order; through the file already
    /// open when `place` follows the record read last. The header must be
    /// the one the scan found (a sink may rely on its region length).
    ///
    /// Returns the meta blob. On an error the sink may have received bytes
    /// of chunks that did not verify: a caller applies nothing from a
    /// record before this returns `Ok`.
    pub(crate) fn read(
        &mut self,
        io: &mut dyn StoreIo,
        place: &Place,
        sink: &mut dyn ChunkSink,
    ) -> Result<Vec<u8>, StoreError> {
        let reusable = self
            .open
            .as_ref()
            .is_some_and(|s| s.path == place.path && s.pos == place.offset);
        if !reusable {
            self.open = Some(Stream::open_owned(io, place.path.clone(), place.offset)?);
        }
        let s = self.open.as_mut().expect("opened above");
        let read = read_from(s, place, sink);
        if read.is_err() {
            self.open = None;
        }
        read
    }
}

fn read_from(s: &mut Stream<'_>, place: &Place, sink: &mut dyn ChunkSink) -> Result<Vec<u8>, StoreError> {
    let header = s.header()?;
    if header != place.header {
        return Err(s.defect(Defect::new(
            "header",
            place.offset,
            format!("{:?} (as scanned)", place.header),
            format!("{header:?} (the file changed while the store was read)"),
        )));
    }
    let meta = s.body(&header, Some(sink))?;
    s.end(place.whole_file)?;
    Ok(meta.unwrap_or_default())
}

/// What a scan of a segment found.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// The records whose structure verified and that follow the segment's
    /// rules, in file order.
    pub records: Vec<Place>,
    /// Where the segment stops being readable, and why; `None` when its
    /// last record ends at the end of the file.
    pub tail: Option<(u64, StoreError)>,
    /// The number in the header of the first record past the readable
    /// ones, when that header verified (a torn record's number).
    pub tail_number: Option<u64>,
    /// The file's length.
    pub len: u64,
}

/// Reads the header of the segment at `path`, checks it names `seq`, then
/// scans its records (STORE.md, "A segment"): their skeletons verified,
/// their payloads skipped. A header that does not verify is an error; a
/// record that does not is where the segment's readable part ends.
pub(crate) fn scan_segment(io: &mut dyn StoreIo, path: &Path, seq: u64) -> Result<SegmentScan, StoreError> {
    let mut s = Stream::open(io, path, 0)?;
    let mut b = [0u8; segment::LEN];
    s.read(&mut b, || "segment header".to_owned())?;
    let header = SegmentHeader::decode(&b).map_err(|d| s.defect(d))?;
    if header.seq != seq {
        return Err(s.defect(Defect::new(
            "segment seq",
            segment::SEQ as u64,
            format!("{seq} (the number in the file name)"),
            header.seq,
        )));
    }
    let mut records: Vec<Place> = Vec::new();
    let mut tail = None;
    let mut tail_number = None;
    while s.pos < s.len {
        let offset = s.pos;
        let scanned = s.header().and_then(|h| {
            tail_number = Some(h.number);
            segment_rule(&s, offset, &h, records.last().map(|p| &p.header))?;
            s.body(&h, None)?;
            s.end(false)?;
            Ok(h)
        });
        match scanned {
            Ok(header) => {
                tail_number = None;
                records.push(Place {
                    path: path.to_owned(),
                    offset,
                    len: s.pos - offset,
                    header,
                    whole_file: false,
                });
            }
            Err(e) if e.is_vanished() => return Err(e),
            Err(e) => {
                tail = Some((offset, e));
                break;
            }
        }
    }
    Ok(SegmentScan {
        records,
        tail,
        tail_number,
        len: s.len,
    })
}

/// Checks a segment's rules for a record with header `h` at `offset`,
/// after the record whose header is `before` (STORE.md, "A segment").
fn segment_rule(s: &Stream<'_>, offset: u64, h: &Header, before: Option<&Header>) -> Result<(), StoreError> {
    let at = offset + header::PARENT as u64;
    if h.version != VERSION {
        return Err(s.defect(Defect::new(
            "version",
            offset + header::VERSION as u64,
            format!("{VERSION} in a segment"),
            h.version,
        )));
    }
    if h.is_base() {
        return Err(s.defect(Defect::new("parent", at, "a delta's parent in a segment", 0)));
    }
    if let Some(before) = before {
        if h.number <= before.number || h.parent != before.number {
            return Err(s.defect(Defect::new(
                "number and parent",
                offset + header::NUMBER as u64,
                format!(
                    "a number above {n} and parent {n} (the record before it)",
                    n = before.number
                ),
                format!("number {} parent {}", h.number, h.parent),
            )));
        }
        if h.region_len != before.region_len {
            return Err(s.defect(Defect::new(
                "region_len",
                offset + header::REGION_LEN as u64,
                format!("{} (its parent's)", before.region_len),
                h.region_len,
            )));
        }
    }
    Ok(())
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

/// A file being read front to back from some offset, with its position,
/// its real length and the hash of the current record's skeleton so far.
struct Stream<'p> {
    path: std::borrow::Cow<'p, Path>,
    reader: BufReader<Box<dyn SeekRead>>,
    /// Where the reader is in the file; never more than `len`.
    pos: u64,
    /// Where the current record began.
    start: u64,
    /// The file's real length.
    len: u64,
    skeleton: blake3::Hasher,
}

/// Read buffer: large enough that skipping a record's pages usually stays
/// within it.
const READ_BUFFER: usize = 256 << 10;

impl<'p> Stream<'p> {
    fn open(io: &mut dyn StoreIo, path: &'p Path, offset: u64) -> Result<Stream<'p>, StoreError> {
        Stream::open_cow(io, std::borrow::Cow::Borrowed(path), offset)
    }

    fn open_owned(io: &mut dyn StoreIo, path: PathBuf, offset: u64) -> Result<Stream<'static>, StoreError> {
        Stream::open_cow(io, std::borrow::Cow::Owned(path), offset)
    }

    fn open_cow(
        io: &mut dyn StoreIo,
        path: std::borrow::Cow<'p, Path>,
        offset: u64,
    ) -> Result<Stream<'p>, StoreError> {
        let file = io
            .open_read(&path)
            .map_err(|e| StoreError::io("opening store file", &*path, e))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, file.reader);
        if offset > file.len {
            return Err(StoreError::corrupt(
                &*path,
                Defect::new(
                    "record",
                    offset,
                    format!("a record at byte {offset}"),
                    format!("a file of {} bytes (it shrank)", file.len),
                ),
            ));
        }
        if offset > 0 {
            reader
                .seek(SeekFrom::Start(offset))
                .map_err(|e| StoreError::io("reading store file", &*path, e))?;
        }
        Ok(Stream {
            path,
            reader,
            pos: offset,
            start: offset,
            len: file.len,
            skeleton: blake3::Hasher::new(),
        })
    }

    fn defect(&self, defect: Defect) -> StoreError {
        StoreError::corrupt(&*self.path, defect)
    }

    /// Fails unless `n` more bytes of `what` are in the file.
    fn room(&self, n: u64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
        let left = self.len - self.pos;
        if n > left {
            return Err(self.defect(Defect::new(
                what(),
                self.pos,
                format!("{n} bytes"),
                format!("{left} bytes before the end of the file (truncated)"),
            )));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of `what`, failing if the file ends first.
    fn read(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<(), StoreError> {
        let n = buf.len() as u64;
        self.room(n, what)?;
        match self.reader.read_exact(buf) {
            Ok(()) => {
                self.pos += n;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(self.defect(Defect::new(
                "file",
                self.pos,
                format!("{n} more bytes"),
                "the file shrinking while it was read",
            ))),
            Err(e) => Err(StoreError::io("reading store file", &*self.path, e)),
        }
    }

    /// Moves past `n` bytes of `what` without reading them.
    fn skip(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
        self.room(n, what)?;
        let by = i64::try_from(n).expect("at most a 64 KiB page run or a checked meta length");
        self.reader
            .seek_relative(by)
            .map_err(|e| StoreError::io("reading store file", &*self.path, e))?;
        self.pos += n;
        Ok(())
    }

    /// Reads skeleton bytes: they also go into the skeleton hash.
    fn read_skeleton(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<(), StoreError> {
        self.read(buf, what)?;
        self.skeleton.update(buf);
        Ok(())
    }

    fn header(&mut self) -> Result<Header, StoreError> {
        self.start = self.pos;
        self.skeleton = blake3::Hasher::new();
        let mut b = [0u8; header::LEN];
        self.read_skeleton(&mut b, || "header".to_owned())?;
        Header::decode(&b).map_err(|d| {
            let mut d = d;
            d.offset += self.start;
            self.defect(d)
        })
    }

    /// Reads the records after the header up to the trailer, which it
    /// checks. With a sink, every page is read, hashed and handed over, and
    /// the meta blob returned; without one (a scan) payloads are skipped.
    fn body<'s>(
        &mut self,
        header: &Header,
        mut sink: Option<&mut (dyn ChunkSink + 's)>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut count = 0u64;
        let meta = loop {
            let at = self.pos;
            let mut tag = [0u8; 8];
            self.read_skeleton(&mut tag, || "record tag".to_owned())?;
            if tag == CHUNK_TAG {
                self.chunk(at, header, sink.as_deref_mut())?;
                count += 1;
            } else if tag == META_TAG {
                let keep = sink.is_some();
                break self.meta(at, keep)?;
            } else {
                let expected = format!("{} or {}", show_tag(&CHUNK_TAG), show_tag(&META_TAG));
                return Err(self.defect(Defect::new("record tag", at, expected, show_tag(&tag))));
            }
        };
        self.trailer(count)?;
        Ok(meta)
    }

    /// After a record: with `whole_file`, the file must end here.
    fn end(&self, whole_file: bool) -> Result<(), StoreError> {
        if whole_file && self.len != self.pos {
            return Err(self.defect(Defect::new(
                "file length",
                self.pos,
                format!("the file to end with the trailer, at {} bytes", self.pos),
                format!("{} bytes", self.len),
            )));
        }
        Ok(())
    }

    /// Reads the rest of the chunk record that starts at `at`.
    fn chunk<'s>(
        &mut self,
        at: u64,
        header: &Header,
        sink: Option<&mut (dyn ChunkSink + 's)>,
    ) -> Result<(), StoreError> {
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
        let Some(sink) = sink else {
            // A scan: the pages are at most 64 KiB, whatever the file said.
            return self.skip(format::payload_len(chunk_len, pages), || {
                format!("chunk {index} page bytes")
            });
        };
        // Every page read is at most PAGE_BYTES now, whatever the file said.
        let mut hashes = [blake3::Hash::from_bytes([0; 32]); PAGES_PER_CHUNK as usize];
        let mut count = 0;
        for page in format::pages_of(pages) {
            let len = format::page_len(chunk_len, page);
            debug_assert!(len <= PAGE_BYTES);
            self.room(len, || format!("chunk {index} page {page} bytes"))?;
            let buf = sink.page(index, page, len as usize, self.pos);
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

    /// Reads the rest of the meta record that starts at `at`; with `keep`
    /// off (a scan), skips the blob.
    fn meta(&mut self, at: u64, keep: bool) -> Result<Option<Vec<u8>>, StoreError> {
        let mut d = [0u8; meta::DESCRIPTOR];
        self.read_skeleton(&mut d[meta::LEN..], || "meta record descriptor".to_owned())?;
        let len = get(&d, meta::LEN);
        let stored = hash_at(&d, meta::HASH);
        let room = (self.len - self.pos).saturating_sub(trailer::LEN as u64);
        if len > room {
            return Err(self.defect(Defect::new(
                "meta len",
                at + meta::LEN as u64,
                format!("at most {room} (the bytes left before a trailer)"),
                len,
            )));
        }
        if !keep {
            self.skip(len, || "meta bytes".to_owned())?;
            return Ok(None);
        }
        let mut blob = zeroed(len, &self.path)?;
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
        Ok(Some(blob))
    }

    /// Reads and checks the trailer, the end of the record.
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
        let record_len = get(&t, trailer::RECORD_LEN);
        let read = self.pos - self.start;
        if record_len != read {
            return Err(self.defect(Defect::new(
                "trailer record_len",
                at + trailer::RECORD_LEN as u64,
                format!("{read} (the record's length up to the end of the trailer)"),
                record_len,
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
                format!("{} (the hash of the record's skeleton)", computed.to_hex()),
            )));
        }
        Ok(())
    }
}

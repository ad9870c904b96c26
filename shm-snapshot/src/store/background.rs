//! The store's background work: making the spare segment, building a base
//! from what is on disk, and removing files retention let go (STORE.md,
//! "Segments are made ahead of time", "Bases in the background",
//! "Retention"). None of it takes the store's own lock: a job carries
//! everything it needs, and its result is picked up by the writer.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::StoreError;
use super::format::{self, CHUNK_BYTES, Defect, Header, PAGE_BYTES, PAGES_PER_CHUNK, SegmentHeader};
use super::hashes::zero_hash;
use super::io::{SeekRead, StoreFile, StoreIo};
use super::names;
use super::open::Loc;
use super::paged::Paged;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A segment made whole (header synced, named, directory synced), no
/// record in it yet.
pub(crate) struct Spare {
    pub seq: u64,
    pub path: PathBuf,
    pub file: Box<dyn StoreFile>,
}

/// Everything a base of generation `number` is built from.
pub(crate) struct BaseJob {
    pub number: u64,
    pub region_len: u64,
    pub created_ms: u64,
    pub meta: Vec<u8>,
    /// The image's page hashes.
    pub page_hashes: Paged<blake3::Hash>,
    /// Where each page's bytes are.
    pub locs: Paged<Loc>,
    /// The files `locs` names, by id.
    pub paths: BTreeMap<u32, PathBuf>,
    /// The temporary name to write it under.
    pub temp: PathBuf,
}

/// A base built and made durable.
pub(crate) struct BuiltBase {
    pub number: u64,
    pub path: PathBuf,
    pub len: u64,
    pub header: Header,
    /// Where each page's bytes are in the base file; 0 for a page it does
    /// not hold (all zero).
    pub page_offsets: Vec<u64>,
}

pub(crate) enum Job {
    Spare { seq: u64, temp: PathBuf },
    Base(Box<BaseJob>),
    Remove(Vec<PathBuf>),
}

pub(crate) enum Done {
    Spare(Result<Spare, StoreError>),
    Base(Result<BuiltBase, StoreError>),
    Removed(Vec<StoreError>),
}

/// The background thread's nice value (Linux gives each thread its own):
/// below the snapshot and sync threads, above nothing else that matters.
const BACKGROUND_NICE: i32 = 10;

/// Runs jobs on a thread of its own, or on the caller's thread (in order,
/// when the store is opened without `background`).
pub(crate) struct Jobs {
    sender: Option<mpsc::Sender<Job>>,
    done: Arc<Mutex<Vec<Done>>>,
    thread: Option<JoinHandle<()>>,
    inline: Option<Worker>,
    cancel: Arc<AtomicBool>,
}

impl Jobs {
    pub fn new(io: Box<dyn StoreIo>, dir: PathBuf, fsync: bool, background: bool) -> Jobs {
        let cancel = Arc::new(AtomicBool::new(false));
        let done: Arc<Mutex<Vec<Done>>> = Arc::default();
        let worker = |io| Worker {
            io,
            dir: dir.clone(),
            fsync,
            cancel: cancel.clone(),
        };
        if background {
            let (sender, receiver) = mpsc::channel::<Job>();
            let results = done.clone();
            let mut w = worker(io.fork());
            let spawned = std::thread::Builder::new()
                .name("store-background".to_owned())
                .spawn(move || {
                    // The background's work (hashing a base's pages, writing
                    // it) yields the CPU to the snapshot and sync threads,
                    // whose delays are the deltas' lag. Best effort: a
                    // refused change leaves the default priority.
                    let _ =
                        rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICE);
                    for job in receiver {
                        let d = w.run(job);
                        results.lock().unwrap_or_else(|e| e.into_inner()).push(d);
                    }
                });
            // No thread to be had: the work happens on the caller's thread
            // instead.
            if let Ok(thread) = spawned {
                return Jobs {
                    sender: Some(sender),
                    done,
                    thread: Some(thread),
                    inline: None,
                    cancel,
                };
            }
        }
        Jobs {
            sender: None,
            done,
            thread: None,
            inline: Some(worker(io)),
            cancel,
        }
    }

    /// Hands `job` over (runs it now without a thread).
    pub fn submit(&mut self, job: Job) {
        if let Some(w) = &mut self.inline {
            let d = w.run(job);
            self.done.lock().unwrap_or_else(|e| e.into_inner()).push(d);
            return;
        }
        if let Some(sender) = &self.sender {
            // The thread only ends when the sender is dropped.
            let _ = sender.send(job);
        }
    }

    /// The results since the last call.
    pub fn take_done(&mut self) -> Vec<Done> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A segment made now on the caller's thread with `io` (when no spare
    /// is ready).
    pub fn make_segment_now(
        io: &mut dyn StoreIo,
        dir: &Path,
        fsync: bool,
        seq: u64,
        temp: PathBuf,
    ) -> Result<Spare, StoreError> {
        make_segment(io, dir, fsync, seq, &temp)
    }
}

impl Drop for Jobs {
    /// Cancels a base being built (its temporary file is removed at the
    /// next open) and waits for the thread.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.sender = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Does the jobs, with its own handle on the file system.
struct Worker {
    io: Box<dyn StoreIo>,
    dir: PathBuf,
    fsync: bool,
    /// Set when the store is dropped: a base being built stops.
    cancel: Arc<AtomicBool>,
}

impl Worker {
    fn run(&mut self, job: Job) -> Done {
        match job {
            Job::Spare { seq, temp } => {
                Done::Spare(make_segment(self.io.as_mut(), &self.dir, self.fsync, seq, &temp))
            }
            Job::Base(job) => {
                let temp = job.temp.clone();
                let built = self.build(&job);
                if built.is_err() {
                    // Best effort: a leftover is removed at the next open.
                    let _ = self.io.remove(&temp);
                }
                Done::Base(built)
            }
            Job::Remove(paths) => {
                let mut errors = Vec::new();
                // Newest first: the caller lists them that way.
                for path in paths {
                    match self.io.remove(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => errors.push(StoreError::io("removing old store file", &path, e)),
                    }
                }
                Done::Removed(errors)
            }
        }
    }

    /// Writes the base of `job`, then makes it durable and names it.
    fn build(&mut self, job: &BaseJob) -> Result<BuiltBase, StoreError> {
        let temp = &job.temp;
        let io_err = |op, e| StoreError::io(op, temp, e);
        let mut file = self
            .io
            .create_new(temp)
            .map_err(|e| io_err("creating temporary base file", e))?;
        let header = Header::new(job.number, 0, job.region_len, job.created_ms);
        let mut out = Out::new(file.as_mut(), temp, self.fsync);
        let encoded = header.encode();
        out.skeleton(&encoded)?;
        let mut readers: HashMap<u32, Window> = HashMap::new();
        let pages_total = job.page_hashes.len();
        let mut page_offsets = vec![0u64; pages_total];
        let mut chunk_records = 0u64;
        let mut page_buf = vec![0u8; PAGE_BYTES as usize];
        let mut payload = Vec::with_capacity(CHUNK_BYTES as usize);
        for index in 0..format::chunk_count(job.region_len) {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(StoreError::io(
                    "building a base",
                    temp,
                    std::io::Error::new(std::io::ErrorKind::Interrupted, "the store was closed"),
                ));
            }
            let chunk_len = format::chunk_len(job.region_len, index).expect("index below the chunk count");
            let first = (index * PAGES_PER_CHUNK) as usize;
            let mut bitmap = 0u64;
            let mut hashes = Vec::new();
            payload.clear();
            let mut offsets = Vec::new();
            for page in 0..format::pages_in(chunk_len) {
                let g = first + page as usize;
                let len = format::page_len(chunk_len, page) as usize;
                let hash = job.page_hashes.get(g);
                if hash == zero_hash(len as u64) {
                    continue;
                }
                let loc = job.locs.get(g);
                let bytes = &mut page_buf[..len];
                self.read_page(&mut readers, job, loc, g, bytes)?;
                let found = blake3::hash(bytes);
                if found != hash {
                    let path = job.paths.get(&loc.file).cloned().unwrap_or_default();
                    return Err(StoreError::corrupt(
                        path,
                        Defect::new(
                            format!("page {g} of generation {}", job.number),
                            loc.offset,
                            hash.to_hex(),
                            format!("{} (the hash of the bytes read back)", found.to_hex()),
                        ),
                    ));
                }
                bitmap |= 1 << page;
                hashes.push(hash);
                offsets.push((g, payload.len() as u64));
                payload.extend_from_slice(bytes);
            }
            if bitmap == 0 {
                continue;
            }
            let descriptor = format::chunk_descriptor(index, bitmap, &format::record_hash(&hashes));
            out.skeleton(&descriptor)?;
            let at = out.written;
            for (g, within) in offsets {
                page_offsets[g] = at + within;
            }
            out.payload(&payload)?;
            chunk_records += 1;
        }
        let descriptor = format::meta_descriptor(job.meta.len() as u64, &blake3::hash(&job.meta));
        out.skeleton(&descriptor)?;
        out.payload(&job.meta)?;
        let len = out.written + format::trailer::LEN as u64;
        let trailer = format::trailer(chunk_records, len, &mut out.hasher);
        out.raw(&trailer)?;
        out.flush()?;
        drop(out);
        if self.fsync {
            file.sync()
                .map_err(|e| io_err("syncing temporary base file", e))?;
        }
        drop(file);
        let path = self.dir.join(names::base(job.number));
        self.io
            .rename(temp, &path)
            .map_err(|e| io_err("renaming the finished base file", e))?;
        if self.fsync
            && let Err(e) = self.io.sync_dir(&self.dir)
        {
            // The name may not be durable: take it back, so nothing relies
            // on it. If even that fails it stays, complete, and is used
            // like any base file found later.
            let _ = self.io.remove(&path);
            return Err(StoreError::io("syncing the store directory", &self.dir, e));
        }
        Ok(BuiltBase {
            number: job.number,
            path,
            len,
            header,
            page_offsets,
        })
    }

    /// Reads page `g`'s bytes from where `loc` says they are.
    fn read_page(
        &mut self,
        readers: &mut HashMap<u32, Window>,
        job: &BaseJob,
        loc: Loc,
        g: usize,
        bytes: &mut [u8],
    ) -> Result<(), StoreError> {
        let Some(path) = job.paths.get(&loc.file) else {
            return Err(StoreError::corrupt(
                &job.temp,
                Defect::new(
                    format!("page {g} of generation {}", job.number),
                    0,
                    "a place on disk (its hash is not a zero page's)",
                    "none",
                ),
            ));
        };
        let w = match readers.entry(loc.file) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let f = self
                    .io
                    .open_read(path)
                    .map_err(|e| StoreError::io("opening store file", path, e))?;
                e.insert(Window {
                    reader: f.reader,
                    start: 0,
                    buf: Vec::new(),
                })
            }
        };
        w.read_at(loc.offset, bytes)
            .map_err(|e| StoreError::io("reading store file", path, e))
    }
}

/// Bytes read from a file at a time while building a base: the pages of
/// the previous base come in file order, so most are found in the window
/// read for the page before.
const WINDOW_BYTES: usize = 1 << 20;

/// A file read through a window of [`WINDOW_BYTES`].
struct Window {
    reader: Box<dyn SeekRead>,
    /// Where the window starts in the file.
    start: u64,
    buf: Vec<u8>,
}

impl Window {
    /// Copies `out.len()` bytes at `offset` into `out`.
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let n = out.len() as u64;
        let inside = offset >= self.start && offset + n <= self.start + self.buf.len() as u64;
        if !inside {
            self.reader.seek(SeekFrom::Start(offset))?;
            self.buf.resize(WINDOW_BYTES.max(out.len()), 0);
            let mut filled = 0;
            while filled < self.buf.len() {
                match self.reader.read(&mut self.buf[filled..]) {
                    Ok(0) => break,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.buf.truncate(filled);
            self.start = offset;
            if (filled as u64) < n {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let at = (offset - self.start) as usize;
        out.copy_from_slice(&self.buf[at..at + out.len()]);
        Ok(())
    }
}

/// Makes segment `seq`: header written and synced under `temp`, renamed,
/// directory synced. On failure nothing named `seg-<seq>.log` is left
/// (the temporary file is removed, best effort).
fn make_segment(
    io: &mut dyn StoreIo,
    dir: &Path,
    fsync: bool,
    seq: u64,
    temp: &Path,
) -> Result<Spare, StoreError> {
    let path = dir.join(names::segment(seq));
    let made = (|| {
        let mut file = io
            .create_new(temp)
            .map_err(|e| StoreError::io("creating temporary segment", temp, e))?;
        let header = SegmentHeader {
            seq,
            created_ms: now_ms(),
        };
        file.write_all(&header.encode())
            .map_err(|e| StoreError::io("writing temporary segment", temp, e))?;
        if fsync {
            file.sync()
                .map_err(|e| StoreError::io("syncing temporary segment", temp, e))?;
        }
        io.rename(temp, &path)
            .map_err(|e| StoreError::io("renaming the new segment", temp, e))?;
        Ok(file)
    })();
    let file = match made {
        Ok(file) => file,
        Err(e) => {
            let _ = io.remove(temp);
            return Err(e);
        }
    };
    if fsync && let Err(e) = io.sync_dir(dir) {
        let _ = io.remove(&path);
        return Err(StoreError::io("syncing the store directory", dir, e));
    }
    Ok(Spare { seq, path, file })
}

/// Writes a record front to back in pieces of at most a MiB, hashing its
/// skeleton. With `sync_each`, each piece is synced as it is written: the
/// base's data not yet on disk stays under a MiB, so a sync of the segment
/// (which commits the file system's journal, and with it data written
/// before) never waits behind a large writeback of the base. A base of
/// hundreds of MiB synced once at its end stalled the deltas' syncs for
/// tens of milliseconds (lag max 48-76 ms against 14-19 ms).
struct Out<'a> {
    file: &'a mut dyn StoreFile,
    path: &'a Path,
    buf: Vec<u8>,
    written: u64,
    hasher: blake3::Hasher,
    sync_each: bool,
}

/// Bytes gathered before a write.
const OUT_BUFFER: usize = 1 << 20;

impl<'a> Out<'a> {
    fn new(file: &'a mut dyn StoreFile, path: &'a Path, sync_each: bool) -> Out<'a> {
        Out {
            file,
            path,
            buf: Vec::with_capacity(OUT_BUFFER),
            written: 0,
            hasher: blake3::Hasher::new(),
            sync_each,
        }
    }

    fn skeleton(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(bytes);
        self.raw(bytes)
    }

    fn payload(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.raw(bytes)
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.buf.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
        if self.buf.len() >= OUT_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.buf.is_empty() {
            self.file
                .write_all(&self.buf)
                .map_err(|e| StoreError::io("writing temporary base file", self.path, e))?;
            self.buf.clear();
            if self.sync_each {
                self.file
                    .sync_data()
                    .map_err(|e| StoreError::io("syncing temporary base file", self.path, e))?;
            }
        }
        Ok(())
    }
}

//! The store's I/O layer: every file system operation the store makes goes
//! through [`StoreIo`], so tests can fail any one of them ([`super::FaultyIo`])
//! or model what survives a crash.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::lock;

/// The file system operations of a store. [`RealIo`] does them on the real
/// file system; tests substitute their own. Implementations make files 0600
/// and directories 0700.
pub trait StoreIo: Send {
    /// Creates `dir` and any missing parent with mode 0700; nothing if it
    /// exists. A directory it creates is made durable in its parent.
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()>;
    /// Opens (creating it 0600 if needed) and exclusively locks the lock file
    /// at `path` without waiting, recording this process's pid in it.
    fn lock(&mut self, path: &Path) -> io::Result<LockAttempt>;
    /// Names of the entries of `dir`.
    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Creates a new file for writing, mode 0600; fails if it exists.
    fn create_new(&mut self, path: &Path) -> io::Result<Box<dyn StoreFile>>;
    /// Opens a file for reading from its start.
    fn open_read(&mut self, path: &Path) -> io::Result<ReadFile>;
    /// Renames `from` to `to` (same directory), replacing `to`.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// Another handle on the same file system, for the store's background
    /// work (building bases, making segments, removing files).
    fn fork(&self) -> Box<dyn StoreIo>;
}

/// A file being written by a [`StoreIo`].
pub trait StoreFile: Send {
    /// Appends all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable, with the file's metadata
    /// (`fsync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Makes everything written so far durable, with the metadata needed to
    /// read it back, such as the file's length (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes; later appends go after them.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Another handle on the same open file (for the sync thread).
    fn try_clone(&self) -> io::Result<Box<dyn StoreFile>>;
}

/// What a file opened for reading offers: its bytes, and a position that
/// can be moved.
pub trait SeekRead: Read + Seek + Send {}

impl<T: Read + Seek + Send> SeekRead for T {}

/// A file opened for reading, with its length at the time it was opened.
pub struct ReadFile {
    /// The file's bytes, positioned at the start.
    pub reader: Box<dyn SeekRead>,
    /// The file's length in bytes.
    pub len: u64,
}

/// The outcome of [`StoreIo::lock`].
pub enum LockAttempt {
    /// The lock is ours while this guard lives.
    Acquired(Box<dyn Send>),
    /// Someone else holds it.
    Held {
        /// The holder's pid, if it recorded one.
        holder: Option<u32>,
    },
}

/// [`StoreIo`] on the real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealIo;

impl StoreIo for RealIo {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if dir.exists() {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        // The first generation is only durable if the directory holding it
        // is: sync the entry that names it.
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        self.sync_dir(parent)
    }

    fn lock(&mut self, path: &Path) -> io::Result<LockAttempt> {
        lock::acquire(path)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
    }

    fn create_new(&mut self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open_read(&mut self, path: &Path) -> io::Result<ReadFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        // Unbuffered: the reader buffers, and skips payloads it does not
        // need within its buffer.
        Ok(ReadFile {
            reader: Box::new(file),
            len,
        })
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn fork(&self) -> Box<dyn StoreIo> {
        Box::new(RealIo)
    }
}

struct RealFile(File);

impl StoreFile for RealFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        // Appends go to the end, which is `len` now; the position is moved
        // there too for a file not opened for appending.
        self.0.seek(io::SeekFrom::Start(len)).map(|_| ())
    }

    fn try_clone(&self) -> io::Result<Box<dyn StoreFile>> {
        Ok(Box::new(RealFile(self.0.try_clone()?)))
    }
}

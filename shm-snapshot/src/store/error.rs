//! Errors at the store boundary: opening, loading, writing, pruning.

use std::io;
use std::path::PathBuf;

use super::format::Defect;

/// Something went wrong with the store. Each message is one lower-case line
/// naming the path or value involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another `Store` in this one) owns the store.
    #[error("store is locked: {} is held by {} (one supervisor per store)", path.display(), holder(*pid))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it recorded it in the lock file.
        pid: Option<u32>,
    },
    /// A file system operation failed.
    /// (The operating system's error is part of the message, not a
    /// separate source: a chain printed whole would say it twice.)
    #[error("{op} {} failed: {error}", path.display())]
    Io {
        /// What was being done, e.g. `"renaming into place"`.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        error: io::Error,
    },
    /// The store's directory is not a directory.
    #[error("cannot use {} as the store directory: {why}", path.display())]
    NotADirectory {
        /// The path given for the store.
        path: PathBuf,
        /// What is there instead.
        why: &'static str,
    },
    /// A generation file does not hold what the format allows.
    #[error("generation file {} is corrupt: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The field, its offset, what was expected and what was found.
        what: String,
    },
    /// A generation cannot be reassembled because a generation its chain
    /// needs is missing, corrupt or inconsistent with it.
    #[error("generation file {} needs generation {needs}, which {why}", path.display())]
    BrokenChain {
        /// The generation that cannot be reassembled.
        path: PathBuf,
        /// The generation it needs.
        needs: u64,
        /// What is wrong with that one.
        why: String,
    },
    /// A generation verifies, but its caller cannot restore what it holds
    /// (see [`super::Store::load_newest_with`]).
    #[error("generation file {} verifies but cannot be restored: {why}", path.display())]
    Unrestorable {
        /// The generation file.
        path: PathBuf,
        /// Why its contents were refused.
        why: String,
    },
    /// Generations exist but none of them verifies. Nothing was loaded; the
    /// reasons are in [`super::Store::last_load_skipped`].
    #[error("no generation in {} verifies ({tried} tried)", dir.display())]
    NoVerifiedGeneration {
        /// The store's directory.
        dir: PathBuf,
        /// How many generations were tried.
        tried: usize,
    },
    /// A [`super::StoreOptions`] field holds an unusable value.
    #[error("store option {name} = {value} is invalid: {why}")]
    InvalidOption {
        /// The field's name.
        name: &'static str,
        /// Its value.
        value: u64,
        /// What it must be.
        why: &'static str,
    },
    /// A region length the store cannot hold.
    #[error("region length {region_len} cannot be stored: it must be 1..={max} bytes")]
    InvalidRegionLen {
        /// The length asked for.
        region_len: u64,
        /// The largest length the format allows.
        max: u64,
    },
    /// A chunk index past the region's end.
    #[error("chunk {index} is outside the region of {region_len} bytes ({chunks} chunks)")]
    ChunkOutOfRange {
        /// The index offered.
        index: u64,
        /// The region's length.
        region_len: u64,
        /// Its number of chunks.
        chunks: u64,
    },
    /// A chunk offered with the wrong length.
    #[error("chunk {index} was offered with {found} bytes, but it is {expected} bytes long")]
    ChunkLen {
        /// The chunk's index.
        index: u64,
        /// Its length in the region.
        expected: u64,
        /// The length offered.
        found: u64,
    },
    /// A generation whose writing already failed was used again.
    #[error("generation {number} was abandoned after an earlier error; begin a new one")]
    Abandoned {
        /// The abandoned generation's number.
        number: u64,
    },
    /// A store opened with [`super::Store::open_read_only`] was asked to
    /// write or remove something.
    #[error("store {} was opened read-only", dir.display())]
    ReadOnly {
        /// The store's directory.
        dir: PathBuf,
    },
    /// A generation asked for by number is not in the store.
    #[error("generation {number} is not in {}", dir.display())]
    NoSuchGeneration {
        /// The store's directory.
        dir: PathBuf,
        /// The number asked for.
        number: u64,
    },
    /// The memory to reassemble a generation, or to hold the hashes of the
    /// region a generation is begun for, could not be allocated.
    #[error("cannot allocate {bytes} bytes for generation file {}", path.display())]
    OutOfMemory {
        /// The generation file (for one being begun, the name it would get).
        path: PathBuf,
        /// The allocation's size.
        bytes: u64,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("process {pid}"),
        None => "another process".to_owned(),
    }
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, error: io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.into(),
            error,
        }
    }

    /// Whether this is a file that was there when the directory was listed
    /// and is gone now: in a store an owner is writing, a generation it
    /// pruned, not a damaged one.
    pub fn is_vanished(&self) -> bool {
        matches!(self, StoreError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, defect: Defect) -> StoreError {
        StoreError::Corrupt {
            path: path.into(),
            what: defect.to_string(),
        }
    }
}

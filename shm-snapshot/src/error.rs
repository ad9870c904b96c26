//! Errors at the region boundary: opening, laying out, validating, committing.

use std::io;

/// Something is wrong with the region, or with how it was handed over.
/// Each message names the field or variable and the value found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A variable of the hand-over convention is missing.
    #[error("{var} is not set: no region was handed to this process (run it under shm-restore)")]
    EnvMissing {
        /// The variable's name.
        var: &'static str,
    },
    /// A variable of the hand-over convention holds something unusable.
    #[error("{var}={value:?} is malformed: {why}")]
    EnvMalformed {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `LISTEN_PID` names another process: the descriptors are not ours.
    #[error(
        "LISTEN_PID={listen_pid} is another process (this is {our_pid}): the region was handed to it, not to us"
    )]
    NotOurs {
        /// The pid in `LISTEN_PID`.
        listen_pid: u32,
        /// This process's pid.
        our_pid: u32,
    },
    /// `LISTEN_FDNAMES` does not name the region.
    #[error("LISTEN_FDNAMES={names:?} has no entry named SHM_SHARED_FD")]
    NameMissing {
        /// The variable's value.
        names: String,
    },
    /// The descriptor is not a memfd or regular file.
    #[error("fd {fd} is a {kind}, not a memfd or regular file")]
    NotAFile {
        /// The descriptor.
        fd: i32,
        /// What it is instead.
        kind: &'static str,
    },
    /// A system call on the region failed. (The operating system's error
    /// is part of the message, not a separate source: a chain printed
    /// whole would say it twice.)
    #[error("{op} failed: {error}")]
    Io {
        /// What was being done, e.g. `"mapping the region"`.
        op: &'static str,
        /// The operating system's error.
        error: io::Error,
    },
    /// The region cannot hold the sections its configuration asks for.
    #[error(
        "region of {len} bytes is too small: it needs at least {needed} bytes for its header, unit table and ring"
    )]
    TooSmall {
        /// The region's length.
        len: u64,
        /// The length needed.
        needed: u64,
    },
    /// The first eight bytes are not this format's magic number.
    #[error("region has foreign magic {found:#018x}: it was not laid out by shm-snapshot")]
    ForeignMagic {
        /// The value found.
        found: u64,
    },
    /// The region was laid out by a newer format version.
    #[error("region has format version {found}, newer than version {supported} that this build reads")]
    NewerVersion {
        /// The version found.
        found: u64,
        /// The newest version this build reads.
        supported: u64,
    },
    /// A header field holds a value no layout produces.
    #[error("impossible {field} {value} in region header: {why}")]
    ImpossibleField {
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Why it is impossible.
        why: &'static str,
    },
    /// A derived header field disagrees with the region's parameters.
    #[error(
        "region header field at offset {offset} holds {found}, but the region's parameters give {expected}"
    )]
    FieldMismatch {
        /// The field's byte offset.
        offset: u64,
        /// The value the parameters imply.
        expected: u64,
        /// The value found.
        found: u64,
    },
    /// The header's region length is not the region's real length.
    #[error("region header says {header} bytes but the region is {actual} bytes")]
    LengthMismatch {
        /// The length in the header.
        header: u64,
        /// The real length.
        actual: u64,
    },
    /// The region has no magic but its header is not all zero: it is not a
    /// blank region, and laying it out would destroy whatever it holds.
    #[error(
        "region has no magic but its header is not blank (byte {offset} is non-zero); refusing to lay it out over existing data"
    )]
    NotBlank {
        /// The first non-zero byte offset.
        offset: u64,
    },
    /// The region's file could shrink under a mapping: it is not a memfd
    /// sealed with `F_SEAL_SHRINK`, so touching a page of a mapping could
    /// raise SIGBUS. A regular file, which cannot be sealed, has no seals.
    #[error(
        "the region's file is not sealed against shrinking (its seals are {seals:#x}, which lack F_SEAL_SHRINK): only a memfd sealed so can be mapped safely"
    )]
    NotSealed {
        /// The file's seals (`F_GET_SEALS`), 0 for a file without seals.
        seals: u32,
    },
    /// A unit-table slot holds a unit that cannot be right.
    #[error("unit-table slot {slot} is corrupt: {why}")]
    CorruptSlot {
        /// The slot index.
        slot: u64,
        /// What is wrong.
        why: &'static str,
    },
}

impl RegionError {
    pub(crate) fn io(op: &'static str, error: impl Into<io::Error>) -> RegionError {
        RegionError::Io {
            op,
            error: error.into(),
        }
    }
}

/// A commit that could not be made. Nothing was published.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitError {
    /// The unit does not fit in the ring.
    #[error("unit of {len} bytes is larger than the ring ({ring_bytes} bytes)")]
    UnitTooLarge {
        /// The unit's length.
        len: usize,
        /// The ring's size.
        ring_bytes: u64,
    },
    /// The region has used every sequence number a tag can hold (2^62):
    /// only a corrupt header gets here.
    #[error("sequence number {seq} is past the last one a tag can hold (2^62 - 1)")]
    SequenceExhausted {
        /// The sequence number the unit would have had.
        seq: u64,
    },
    /// The unit would end past stream offset 2^62, the largest a region
    /// may hold: only a region that has carried 2^62 bytes of units (or a
    /// corrupt header) gets here.
    #[error("unit would end at stream offset {end}, past the last a region can hold (2^62)")]
    StreamExhausted {
        /// The stream offset the unit would end at.
        end: u64,
    },
    /// A patch inside `commit_with` fell outside the unit.
    #[error("patch of {len} bytes at {offset} is outside the unit of {unit_len} bytes")]
    PatchOutOfBounds {
        /// Where the patch starts in the unit.
        offset: usize,
        /// The patch's length.
        len: usize,
        /// The unit's length.
        unit_len: usize,
    },
}

/// A `commit_with` that did not publish: the closure aborted, or the commit
/// itself failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommitWithError<E> {
    /// The commit could not be made.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The closure returned this error; nothing was published.
    #[error("commit aborted")]
    Aborted(E),
}

/// An arena access outside the arena.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("arena range of {len} bytes at {offset} is outside the arena of {arena_len} bytes")]
pub struct ArenaError {
    /// Start of the range.
    pub offset: usize,
    /// Length of the range.
    pub len: usize,
    /// The arena's length.
    pub arena_len: usize,
}

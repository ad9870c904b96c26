//! Exceptions, named for the Rust client's error kinds.

use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::PyException;

create_exception!(
    shm_snapshot,
    ShmSnapshotError,
    PyException,
    "Base of every error of this package."
);
create_exception!(
    shm_snapshot,
    RegionError,
    ShmSnapshotError,
    "The region cannot be used: not handed over properly, not this format, corrupt, or a system call failed. Nothing was written to it."
);
create_exception!(
    shm_snapshot,
    NotHandedOverError,
    RegionError,
    "No region was handed to this process (LISTEN_FDS or LISTEN_FDNAMES is not set): it was not started by shm-restore."
);
create_exception!(
    shm_snapshot,
    CommitError,
    ShmSnapshotError,
    "A commit could not be made (the unit is larger than the ring, the region's numbers are used up, a patch falls outside the unit). Nothing was published."
);
create_exception!(
    shm_snapshot,
    ArenaError,
    ShmSnapshotError,
    "An arena range lies outside the arena."
);

/// The exception for a region error.
pub(crate) fn region(e: shm::RegionError) -> PyErr {
    match e {
        shm::RegionError::EnvMissing { .. } => NotHandedOverError::new_err(e.to_string()),
        _ => RegionError::new_err(e.to_string()),
    }
}

/// The exception for a commit error.
pub(crate) fn commit(e: shm::CommitError) -> PyErr {
    CommitError::new_err(e.to_string())
}

/// The exception for an arena error.
pub(crate) fn arena(e: shm::ArenaError) -> PyErr {
    ArenaError::new_err(e.to_string())
}

//! The Python package `shm_snapshot`: the shm-snapshot client for Python
//! programs, over the Rust client, so Python gets the same 64-bit atomics,
//! orderings and checks on every CPU. Built with maturin
//! (`pip install ./python`); the API with its types is in
//! `shm_snapshot.pyi`.
//!
//! Bytes come in through the buffer protocol (`bytes`, `bytearray`,
//! `memoryview`, arrays) without a copy on the way in; arena bytes come
//! out as one `bytes` built in place, or straight into a writable buffer
//! (`arena_read_into`).

#![warn(missing_docs)]

mod buffers;
mod client;
mod errors;

use pyo3::prelude::*;

/// The module `shm_snapshot`.
#[pymodule(name = "shm_snapshot")]
mod shm_snapshot_module {
    #[pymodule_export]
    use crate::client::{Client, Transaction, Unit};
    #[pymodule_export]
    use crate::errors::{ArenaError, CommitError, NotHandedOverError, RegionError, ShmSnapshotError};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("FD_NAME", shm::FD_NAME)?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}

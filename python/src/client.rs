//! `Client`, `Unit` and `Transaction`.

use std::cell::Cell;
use std::path::PathBuf;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shm::{CommitWithError, Config, Region, Tx};

use crate::buffers::{self, Bytes};
use crate::errors;

/// One unit found valid in the region: its sequence number and its bytes.
#[pyclass(frozen, get_all, module = "shm_snapshot")]
pub struct Unit {
    /// The unit's sequence number, unique and increasing over the region's
    /// life.
    seq: u64,
    /// The unit's bytes, exactly as committed.
    data: Py<PyBytes>,
}

#[pymethods]
impl Unit {
    fn __repr__(&self, py: Python<'_>) -> String {
        let data = self.data.bind(py).as_bytes();
        format!("Unit(seq={}, data=<{} bytes>)", self.seq, data.len())
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>, py: Python<'_>) -> bool {
        other.cast::<Unit>().is_ok_and(|o| {
            o.get().seq == self.seq && o.get().data.bind(py).as_bytes() == self.data.bind(py).as_bytes()
        })
    }
}

/// A client of a region: the only writer of its unit table, ring and
/// arena.
#[pyclass(module = "shm_snapshot")]
pub struct Client {
    client: shm::Client,
}

fn config(slots: u64, ring_bytes: u64, chunk_bytes: u64) -> Config {
    Config {
        slots,
        ring_bytes,
        chunk_bytes,
    }
}

fn open(region: Region, config: Config) -> PyResult<Client> {
    let client = shm::Client::open(region, &config).map_err(errors::region)?;
    Ok(Client { client })
}

const DEFAULT_SLOTS: u64 = 256;
const DEFAULT_RING: u64 = 1 << 20;
const DEFAULT_CHUNK: u64 = 64 << 10;

#[pymethods]
impl Client {
    /// Opens the region shm-restore handed to this process.
    #[staticmethod]
    #[pyo3(signature = (*, slots = DEFAULT_SLOTS, ring_bytes = DEFAULT_RING, chunk_bytes = DEFAULT_CHUNK))]
    fn from_env(slots: u64, ring_bytes: u64, chunk_bytes: u64) -> PyResult<Client> {
        // SAFETY: the package's documented contract: the handed-over
        // descriptor is used by nothing else in the process (a second
        // call is refused by the client), and shm-restore seals the region
        // against shrinking.
        let region = unsafe { Region::from_env() }.map_err(errors::region)?;
        open(region, config(slots, ring_bytes, chunk_bytes))
    }

    /// Opens a fresh private region of `size` bytes.
    #[staticmethod]
    #[pyo3(signature = (size, *, slots = DEFAULT_SLOTS, ring_bytes = DEFAULT_RING, chunk_bytes = DEFAULT_CHUNK))]
    fn anonymous(size: u64, slots: u64, ring_bytes: u64, chunk_bytes: u64) -> PyResult<Client> {
        let region = Region::anonymous(size).map_err(errors::region)?;
        open(region, config(slots, ring_bytes, chunk_bytes))
    }

    /// Opens the region image in the file at `path`, read-write.
    #[staticmethod]
    #[pyo3(signature = (path, *, slots = DEFAULT_SLOTS, ring_bytes = DEFAULT_RING, chunk_bytes = DEFAULT_CHUNK))]
    fn from_file(path: PathBuf, slots: u64, ring_bytes: u64, chunk_bytes: u64) -> PyResult<Client> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| errors::RegionError::new_err(format!("opening {}: {e}", path.display())))?;
        // SAFETY: the documented contract of `from_file`: nothing shrinks
        // the file while the client is open.
        let region = unsafe { Region::from_file(file) }.map_err(errors::region)?;
        open(region, config(slots, ring_bytes, chunk_bytes))
    }

    /// The valid units, oldest first.
    fn recover(&self, py: Python<'_>) -> PyResult<Vec<Unit>> {
        let units = self.client.recover().map_err(errors::region)?;
        Ok(units
            .into_iter()
            .map(|u| Unit {
                seq: u.id.0,
                data: PyBytes::new(py, &u.bytes).unbind(),
            })
            .collect())
    }

    /// Commits `unit` as one unit after writing `arena`'s pieces.
    #[pyo3(signature = (unit, arena = None))]
    fn commit(&mut self, unit: &Bound<'_, PyAny>, arena: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let unit = Bytes::of(unit)?;
        let mut writes = Vec::new();
        if let Some(arena) = arena {
            for item in arena.try_iter()? {
                let (offset, data): (usize, Bound<'_, PyAny>) = item?.extract()?;
                writes.push((offset, Bytes::of(&data)?));
            }
        }
        if writes.is_empty() {
            return Ok(self.client.commit(unit.as_slice()).map_err(errors::commit)?.0);
        }
        let done = self.client.commit_with(unit.as_slice(), |tx| {
            let arena = tx.arena();
            writes
                .iter()
                .try_for_each(|(offset, data)| arena.write(*offset, data.as_slice()))
        });
        match done {
            Ok((id, ())) => Ok(id.0),
            Err(CommitWithError::Commit(e)) => Err(errors::commit(e)),
            Err(CommitWithError::Aborted(e)) => Err(errors::arena(e)),
        }
    }

    /// Commits `unit`, calling `work(tx)` before it is published.
    fn commit_with(
        &mut self,
        py: Python<'_>,
        unit: &Bound<'_, PyAny>,
        work: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let unit = Bytes::of(unit)?;
        let tx_object = Bound::new(py, Transaction { tx: Cell::new(None) })?;
        let done = self.client.commit_with(unit.as_slice(), |tx| {
            let lent = tx_object.borrow();
            lent.tx.set(Some((tx as *mut Tx<'_>).cast::<Tx<'static>>()));
            drop(lent);
            let result = work.call1((&tx_object,));
            // The transaction ends with the call, whatever `work` kept.
            tx_object.borrow().tx.set(None);
            result.map(drop)
        });
        match done {
            Ok((id, ())) => Ok(id.0),
            Err(CommitWithError::Commit(e)) => Err(errors::commit(e)),
            Err(CommitWithError::Aborted(e)) => Err(e),
        }
    }

    /// Copies `data` into the arena at `offset`, marking it written.
    fn arena_write(&self, offset: usize, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = Bytes::of(data)?;
        self.client
            .arena()
            .write(offset, data.as_slice())
            .map_err(errors::arena)
    }

    /// `length` bytes of the arena at `offset`.
    fn arena_read<'py>(
        &self,
        py: Python<'py>,
        offset: usize,
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let arena = self.client.arena();
        PyBytes::new_with(py, length, |out| arena.read(offset, out).map_err(errors::arena))
    }

    /// Fills the writable buffer `out` with the arena bytes at `offset`.
    fn arena_read_into(&self, offset: usize, out: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffer = buffers::writable(out)?;
        let arena = self.client.arena();
        // SAFETY: a writable buffer from `writable`; this call holds the
        // interpreter and runs no Python code while it fills it.
        unsafe { buffers::fill(&buffer, |target| arena.read(offset, target)) }.map_err(errors::arena)
    }

    /// The arena's length in bytes.
    #[getter]
    fn arena_len(&self) -> usize {
        self.client.arena().len()
    }

    /// The arena's chunk size in bytes.
    #[getter]
    fn chunk_bytes(&self) -> usize {
        self.client.arena().chunk_bytes()
    }

    /// The region's length in bytes.
    #[getter]
    fn region_len(&self) -> u64 {
        self.client.region().len()
    }

    /// Shows the supervisor the program is alive without committing.
    fn heartbeat(&mut self) {
        self.client.heartbeat();
    }
}

/// A commit in progress, passed to the work function of
/// `Client.commit_with` and usable only during that call.
#[pyclass(unsendable, module = "shm_snapshot")]
pub struct Transaction {
    /// The commit, while the work function runs; `None` before and after.
    tx: Cell<Option<*mut Tx<'static>>>,
}

impl Transaction {
    fn with<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> PyResult<R>) -> PyResult<R> {
        let Some(tx) = self.tx.get() else {
            return Err(PyRuntimeError::new_err(
                "the transaction is over: use it only inside the work function it was passed to",
            ));
        };
        // SAFETY: set only while `commit_with` runs the work function on
        // this thread (the class is unsendable), from the `&mut Tx` it
        // lends; nothing else touches that Tx until the call returns and
        // the pointer is cleared.
        f(unsafe { &mut *tx })
    }
}

#[pymethods]
impl Transaction {
    /// The sequence number the unit gets if it is published.
    #[getter]
    fn seq(&self) -> PyResult<u64> {
        self.with(|tx| Ok(tx.id().0))
    }

    /// Writes arena data the unit describes, marked and ordered before it.
    fn arena_write(&self, offset: usize, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = Bytes::of(data)?;
        self.with(|tx| tx.arena().write(offset, data.as_slice()).map_err(errors::arena))
    }

    /// `length` bytes of the arena at `offset`.
    fn arena_read<'py>(
        &self,
        py: Python<'py>,
        offset: usize,
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.with(|tx| {
            let arena = tx.arena();
            PyBytes::new_with(py, length, |out| arena.read(offset, out).map_err(errors::arena))
        })
    }

    /// Overwrites the unit's bytes at `offset` before it is published.
    fn patch(&self, offset: usize, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = Bytes::of(data)?;
        self.with(|tx| tx.patch(offset, data.as_slice()).map_err(errors::commit))
    }
}

//! Python buffers as byte slices, without copies.

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The bytes of a Python object that exports a buffer (`bytes`,
/// `bytearray`, `memoryview`, `array`, ...), held for as long as this
/// lives.
pub(crate) enum Bytes<'py> {
    /// A `bytes` object: immutable, read in place.
    Immutable(Bound<'py, PyBytes>),
    /// Any other object with a C-contiguous buffer.
    Buffer(PyUntypedBuffer),
}

impl<'py> Bytes<'py> {
    /// Takes `obj`'s bytes; a `TypeError` if it has no buffer, a
    /// `BufferError` if its buffer is not contiguous.
    pub(crate) fn of(obj: &Bound<'py, PyAny>) -> PyResult<Bytes<'py>> {
        if let Ok(bytes) = obj.cast::<PyBytes>() {
            return Ok(Bytes::Immutable(bytes.clone()));
        }
        let buffer = PyUntypedBuffer::get(obj).map_err(|_| {
            PyTypeError::new_err(format!("a bytes-like object is required, not {}", type_name(obj)))
        })?;
        if !buffer.is_c_contiguous() {
            return Err(PyBufferError::new_err("the buffer is not C-contiguous"));
        }
        Ok(Bytes::Buffer(buffer))
    }

    /// The bytes, valid while `self` holds the buffer.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Immutable(bytes) => bytes.as_bytes(),
            Bytes::Buffer(buffer) => {
                let len = buffer.len_bytes();
                if len == 0 {
                    return &[];
                }
                // SAFETY: a C-contiguous buffer of `len` bytes at
                // `buf_ptr`, kept alive and unmoved by the exporter while
                // `buffer` holds it. The calls that read it hold the
                // interpreter and run no Python code meanwhile, so no
                // Python code can change the bytes under the read.
                unsafe { std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), len) }
            }
        }
    }
}

/// A writable C-contiguous buffer of `obj`, to fill without a copy.
pub(crate) fn writable(obj: &Bound<'_, PyAny>) -> PyResult<PyUntypedBuffer> {
    let buffer = PyUntypedBuffer::get(obj).map_err(|_| {
        PyTypeError::new_err(format!("a writable buffer is required, not {}", type_name(obj)))
    })?;
    if buffer.readonly() {
        return Err(PyTypeError::new_err(format!(
            "a writable buffer is required, not a read-only {}",
            type_name(obj)
        )));
    }
    if !buffer.is_c_contiguous() {
        return Err(PyBufferError::new_err("the buffer is not C-contiguous"));
    }
    Ok(buffer)
}

/// Runs `f` on the bytes of a writable buffer taken with [`writable`].
///
/// # Safety
///
/// `buffer` came from [`writable`], and nothing else reads or writes its
/// memory while `f` runs (the caller holds the interpreter and `f` runs no
/// Python code).
pub(crate) unsafe fn fill<R>(buffer: &PyUntypedBuffer, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let len = buffer.len_bytes();
    if len == 0 {
        return f(&mut []);
    }
    // SAFETY: a writable C-contiguous buffer of `len` bytes, held alive by
    // `buffer`, used by nothing else while `f` runs (this function's
    // contract).
    f(unsafe { std::slice::from_raw_parts_mut(buffer.buf_ptr().cast::<u8>(), len) })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an object".to_owned())
}

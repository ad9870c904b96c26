//! Status codes, the calling thread's last error message, and the guard
//! that keeps panics from crossing into C.

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use shm::{ArenaError, CommitError, RegionError};

/// What a call did. Every function that can fail returns one;
/// `shm_snapshot_last_error` then says more, in a sentence.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum shm_snapshot_status {
    /// Success.
    SHM_SNAPSHOT_OK = 0,
    /// A required pointer argument was NULL.
    SHM_SNAPSHOT_E_NULL = 1,
    /// No region was handed to this process (`LISTEN_FDS` or
    /// `LISTEN_FDNAMES` is not set): it was not started by shm-restore. A
    /// program may then run on a private region
    /// (`shm_snapshot_open_anonymous`).
    SHM_SNAPSHOT_E_NOT_HANDED_OVER = 2,
    /// A region was handed over but cannot be taken: malformed `LISTEN_*`
    /// variables, `LISTEN_PID` naming another process, a descriptor that
    /// is not a file, or a region this process already took.
    SHM_SNAPSHOT_E_HANDOVER = 3,
    /// A system call failed (creating, sizing, mapping a region; opening a
    /// file).
    SHM_SNAPSHOT_E_IO = 4,
    /// The region was refused, and nothing was written to it: foreign
    /// magic, a newer format version, an impossible or inconsistent
    /// header, a region too small for the configuration, a region without
    /// magic that is not blank, or a corrupt unit table.
    SHM_SNAPSHOT_E_REGION = 5,
    /// The unit is larger than the ring; nothing was published.
    SHM_SNAPSHOT_E_UNIT_TOO_LARGE = 6,
    /// The region has used every sequence number or stream offset a unit
    /// can have (2^62 of them); nothing was published.
    SHM_SNAPSHOT_E_EXHAUSTED = 7,
    /// An arena range or a patch lies outside the arena or the unit.
    SHM_SNAPSHOT_E_OUT_OF_BOUNDS = 8,
    /// The work function of `shm_snapshot_commit_with` returned non-zero,
    /// or an arena write of `shm_snapshot_commit_arena` was out of bounds:
    /// nothing was published. Older units the reservation overwrote stay
    /// invalid, as after a kill during the commit.
    SHM_SNAPSHOT_E_ABORTED = 9,
    /// An internal error (a bug of this library) was caught at the
    /// boundary. A client that reported it refuses every later call but
    /// `shm_snapshot_close`.
    SHM_SNAPSHOT_E_PANIC = 10,
    /// An argument is out of range (e.g. a path that is not a valid C
    /// string, a length that does not fit the address space).
    SHM_SNAPSHOT_E_INVALID = 11,
}

use shm_snapshot_status::*;

/// Describes a status code in a few words (a static string, never NULL).
/// Takes an `int`, so any value is safe to pass.
#[unsafe(no_mangle)]
pub extern "C" fn shm_snapshot_status_str(status: c_int) -> *const c_char {
    let text: &'static [u8] = match status {
        0 => b"success\0",
        1 => b"a required pointer was NULL\0",
        2 => b"no region was handed to this process\0",
        3 => b"the handed-over region cannot be taken\0",
        4 => b"a system call failed\0",
        5 => b"the region was refused\0",
        6 => b"the unit is larger than the ring\0",
        7 => b"the region's sequence numbers or stream offsets are used up\0",
        8 => b"a range lies outside the arena or the unit\0",
        9 => b"the commit was aborted; nothing was published\0",
        10 => b"internal error\0",
        11 => b"an argument is out of range\0",
        _ => b"unknown status\0",
    };
    text.as_ptr().cast()
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// The message of the last call that failed on the calling thread, e.g.
/// `region has foreign magic 0x...: it was not laid out by shm-snapshot`;
/// an empty string if none has. Never NULL. The string belongs to the
/// library and stays valid until the next call that fails on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn shm_snapshot_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// A failed call: the code to return and the message to keep.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: shm_snapshot_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: shm_snapshot_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Failure {
        Failure::new(SHM_SNAPSHOT_E_NULL, format!("{what} is NULL"))
    }
}

impl From<RegionError> for Failure {
    fn from(e: RegionError) -> Failure {
        let status = match e {
            RegionError::EnvMissing { .. } => SHM_SNAPSHOT_E_NOT_HANDED_OVER,
            RegionError::EnvMalformed { .. }
            | RegionError::NotOurs { .. }
            | RegionError::NameMissing { .. }
            | RegionError::NotAFile { .. } => SHM_SNAPSHOT_E_HANDOVER,
            RegionError::Io { .. } => SHM_SNAPSHOT_E_IO,
            _ => SHM_SNAPSHOT_E_REGION,
        };
        Failure::new(status, e.to_string())
    }
}

impl From<CommitError> for Failure {
    fn from(e: CommitError) -> Failure {
        let status = match e {
            CommitError::UnitTooLarge { .. } => SHM_SNAPSHOT_E_UNIT_TOO_LARGE,
            CommitError::SequenceExhausted { .. } | CommitError::StreamExhausted { .. } => {
                SHM_SNAPSHOT_E_EXHAUSTED
            }
            CommitError::PatchOutOfBounds { .. } => SHM_SNAPSHOT_E_OUT_OF_BOUNDS,
            _ => SHM_SNAPSHOT_E_PANIC,
        };
        Failure::new(status, e.to_string())
    }
}

impl From<ArenaError> for Failure {
    fn from(e: ArenaError) -> Failure {
        Failure::new(SHM_SNAPSHOT_E_OUT_OF_BOUNDS, e.to_string())
    }
}

/// Runs `f`, turning its failure or its panic into a status code and the
/// thread's last error. `on_panic` runs after a panic is caught (to
/// poison a handle).
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Failure>, on_panic: impl FnOnce()) -> shm_snapshot_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SHM_SNAPSHOT_OK,
        Ok(Err(failure)) => fail(failure),
        Err(payload) => {
            on_panic();
            panicked(payload)
        }
    }
}

/// Records a caught panic as the thread's last error.
#[cold]
#[inline(never)]
pub(crate) fn panicked(payload: Box<dyn std::any::Any + Send>) -> shm_snapshot_status {
    let why = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    fail(Failure::new(
        SHM_SNAPSHOT_E_PANIC,
        format!("internal error: {why}"),
    ))
}

/// Records `failure` as the thread's last error and returns its code.
#[cold]
#[inline(never)]
pub(crate) fn fail(failure: Failure) -> shm_snapshot_status {
    let message = CString::new(failure.message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
    failure.status
}

/// `len` bytes at `ptr` as a slice; NULL is allowed for zero bytes.
///
/// # Safety
///
/// Unless `len` is 0, `ptr` must point to `len` readable bytes that stay
/// unchanged for the slice's lifetime.
pub(crate) unsafe fn bytes<'a>(ptr: *const c_void, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    if len > isize::MAX as usize {
        return Err(Failure::new(
            SHM_SNAPSHOT_E_INVALID,
            format!("{what}: {len} bytes is too long"),
        ));
    }
    // SAFETY: non-NULL, at most isize::MAX bytes, and readable for `len`
    // bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// `len` writable bytes at `ptr`; NULL is allowed for zero bytes.
///
/// # Safety
///
/// Unless `len` is 0, `ptr` must point to `len` writable bytes that
/// nothing else accesses for the slice's lifetime.
pub(crate) unsafe fn bytes_mut<'a>(
    ptr: *mut c_void,
    len: usize,
    what: &str,
) -> Result<&'a mut [u8], Failure> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    if len > isize::MAX as usize {
        return Err(Failure::new(
            SHM_SNAPSHOT_E_INVALID,
            format!("{what}: {len} bytes is too long"),
        ));
    }
    // SAFETY: non-NULL, at most isize::MAX bytes, and writable and
    // unaliased for `len` bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: the library's own NUL-terminated string for this thread.
        unsafe { CStr::from_ptr(shm_snapshot_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message_and_runs_the_poisoning() {
        let mut poisoned = false;
        let status = guard(|| panic!("boom"), || poisoned = true);
        assert_eq!(status, SHM_SNAPSHOT_E_PANIC);
        assert!(poisoned);
        assert_eq!(last(), "internal error: boom");
    }

    #[test]
    fn every_status_has_a_description() {
        for code in 0..=11 {
            // SAFETY: a static NUL-terminated string.
            let text = unsafe { CStr::from_ptr(shm_snapshot_status_str(code)) };
            assert_ne!(text.to_bytes(), b"unknown status", "{code}");
        }
        // SAFETY: as above.
        let text = unsafe { CStr::from_ptr(shm_snapshot_status_str(-1)) };
        assert_eq!(text.to_bytes(), b"unknown status");
    }
}

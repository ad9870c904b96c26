//! Committing units: plainly, with an arena write, or around the caller's
//! work function (which may write the arena, patch the unit, or abort).

use std::ffi::{c_int, c_void};

use shm::{CommitWithError, Tx};

use crate::client::{shm_snapshot_client, with_client};
use crate::status::shm_snapshot_status::{self, *};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::status::{Failure, bytes, bytes_mut, fail, guard, panicked};

/// A commit in progress, lent to the work function of
/// `shm_snapshot_commit_with` for the duration of that call, on that
/// thread. Opaque.
pub struct shm_snapshot_tx {
    _opaque: (),
}

/// The work of `shm_snapshot_commit_with`, run after the unit's room is
/// reserved and its bytes are copied, before it is published: it may write
/// the arena data the unit describes (`shm_snapshot_tx_arena_write`) and
/// patch the unit's bytes (`shm_snapshot_tx_patch`). Return 0 to publish
/// the unit, anything else to abort (nothing is published). It must not
/// call other functions on the same client, and must not unwind out (a C++
/// exception must be caught inside it).
pub type shm_snapshot_work =
    Option<unsafe extern "C" fn(tx: *mut shm_snapshot_tx, context: *mut c_void) -> c_int>;

#[inline]
fn stores(seq_out: *mut u64, seq: u64) {
    if !seq_out.is_null() {
        // SAFETY: a non-NULL `seq_out` points to a writable u64, by the
        // contract of every commit function.
        unsafe { seq_out.write(seq) };
    }
}

/// Commits the `len` bytes at `unit` as one unit, and stores its sequence
/// number in `*seq_out` (if not NULL). Wait-free: no lock, no system call
/// (but a wake-up of a sleeping supervisor), no allocation.
///
/// # Safety
///
/// `client` is a live handle no other call uses meanwhile; `unit` points
/// to `len` readable bytes (NULL allowed when `len` is 0); `seq_out` is
/// NULL or points to a writable `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_commit(
    client: *mut shm_snapshot_client,
    unit: *const c_void,
    len: usize,
    seq_out: *mut u64,
) -> shm_snapshot_status {
    // The common case on its own, as lean as the Rust call it wraps: a
    // live client, readable bytes, a commit that succeeds.
    // SAFETY: NULL or a live, unshared handle, by the contract above.
    if let Some(handle) = unsafe { client.as_mut() }
        && !handle.poisoned
        && (!unit.is_null() || len == 0)
        && len <= isize::MAX as usize
    {
        let unit: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: non-NULL, at most isize::MAX bytes, readable by the
            // caller's contract.
            unsafe { std::slice::from_raw_parts(unit.cast::<u8>(), len) }
        };
        let client = &mut handle.client;
        return match catch_unwind(AssertUnwindSafe(|| client.commit(unit))) {
            Ok(Ok(id)) => {
                stores(seq_out, id.0);
                SHM_SNAPSHOT_OK
            }
            Ok(Err(e)) => fail(e.into()),
            Err(payload) => {
                handle.poisoned = true;
                panicked(payload)
            }
        };
    }
    // Anything else, reported by the general path.
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_client(client, |c| {
            let unit = bytes(unit, len, "unit")?;
            stores(seq_out, c.commit(unit)?.0);
            Ok(())
        })
    }
}

/// Writes the `data_len` bytes at `data` into the arena at `arena_offset`
/// (marking them), then publishes the `unit_len` bytes at `unit` as one
/// unit: the unit is visible only with the data it describes. An arena
/// range outside the arena aborts the commit (`SHM_SNAPSHOT_E_ABORTED`,
/// nothing published, nothing written).
///
/// # Safety
///
/// As `shm_snapshot_commit`; `data` points to `data_len` readable bytes
/// (NULL allowed when `data_len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_commit_arena(
    client: *mut shm_snapshot_client,
    unit: *const c_void,
    unit_len: usize,
    arena_offset: usize,
    data: *const c_void,
    data_len: usize,
    seq_out: *mut u64,
) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_client(client, |c| {
            let unit = bytes(unit, unit_len, "unit")?;
            let data = bytes(data, data_len, "data")?;
            match c.commit_with(unit, |tx| tx.arena().write(arena_offset, data)) {
                Ok((id, ())) => {
                    stores(seq_out, id.0);
                    Ok(())
                }
                Err(CommitWithError::Commit(e)) => Err(e.into()),
                Err(CommitWithError::Aborted(e)) => Err(Failure::new(
                    SHM_SNAPSHOT_E_ABORTED,
                    format!("commit aborted, nothing published: {e}"),
                )),
            }
        })
    }
}

/// Commits the `len` bytes at `unit` as one unit, running
/// `work(tx, context)` after its room is reserved and its bytes copied and
/// before it is published (see `shm_snapshot_work`). A non-zero return
/// aborts: `SHM_SNAPSHOT_E_ABORTED`, nothing published, the next commit
/// gets the same sequence number. Older units the reservation overwrote
/// stay invalid.
///
/// # Safety
///
/// As `shm_snapshot_commit`; `work` is a function that keeps the contract
/// of `shm_snapshot_work`; `context` is passed to it untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_commit_with(
    client: *mut shm_snapshot_client,
    unit: *const c_void,
    len: usize,
    work: shm_snapshot_work,
    context: *mut c_void,
    seq_out: *mut u64,
) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_client(client, |c| {
            let unit = bytes(unit, len, "unit")?;
            let work = work.ok_or(Failure::null("work"))?;
            let done = c.commit_with(unit, |tx| {
                let tx = (tx as *mut Tx<'_>).cast::<shm_snapshot_tx>();
                // SAFETY: `work` keeps the contract of `shm_snapshot_work`;
                // `tx` is valid for the duration of this call.
                match work(tx, context) {
                    0 => Ok(()),
                    code => Err(code),
                }
            });
            match done {
                Ok((id, ())) => {
                    stores(seq_out, id.0);
                    Ok(())
                }
                Err(CommitWithError::Commit(e)) => Err(e.into()),
                Err(CommitWithError::Aborted(code)) => Err(Failure::new(
                    SHM_SNAPSHOT_E_ABORTED,
                    format!("the work function returned {code}: commit aborted, nothing published"),
                )),
            }
        })
    }
}

/// Runs `f` on the commit behind `tx`.
///
/// # Safety
///
/// `tx` is NULL or the handle lent to the work function now running.
unsafe fn with_tx(
    tx: *mut shm_snapshot_tx,
    f: impl FnOnce(&mut Tx<'_>) -> Result<(), Failure>,
) -> shm_snapshot_status {
    guard(
        || {
            // SAFETY: NULL or the `&mut Tx` that `shm_snapshot_commit_with`
            // lent for the running work function, which nothing else uses
            // while it runs.
            let tx = unsafe { tx.cast::<Tx<'_>>().as_mut() }.ok_or(Failure::null("tx"))?;
            f(tx)
        },
        || {},
    )
}

/// The sequence number the unit gets if it is published; 0 for NULL.
///
/// # Safety
///
/// `tx` is NULL or the handle lent to the running work function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_tx_seq(tx: *mut shm_snapshot_tx) -> u64 {
    let mut seq = 0;
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_tx(tx, |tx| {
            seq = tx.id().0;
            Ok(())
        })
    };
    seq
}

/// Writes the arena data the unit describes: `len` bytes from `data` at
/// arena `offset`, marked for the supervisor, and ordered before the unit
/// is published.
///
/// # Safety
///
/// `tx` is the handle lent to the running work function; `data` points to
/// `len` readable bytes (NULL allowed when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_tx_arena_write(
    tx: *mut shm_snapshot_tx,
    offset: usize,
    data: *const c_void,
    len: usize,
) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_tx(tx, |tx| {
            let data = bytes(data, len, "data")?;
            Ok(tx.arena().write(offset, data)?)
        })
    }
}

/// Reads `len` bytes of the arena at `offset` into `out`.
///
/// # Safety
///
/// `tx` is the handle lent to the running work function; `out` points to
/// `len` writable bytes (NULL allowed when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_tx_arena_read(
    tx: *mut shm_snapshot_tx,
    offset: usize,
    out: *mut c_void,
    len: usize,
) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_tx(tx, |tx| {
            let out = bytes_mut(out, len, "out")?;
            Ok(tx.arena().read(offset, out)?)
        })
    }
}

/// Overwrites the unit's bytes at `offset` with the `len` bytes at
/// `data`, before it is published (e.g. a length or checksum known only
/// now). The range must lie inside the unit.
///
/// # Safety
///
/// `tx` is the handle lent to the running work function; `data` points to
/// `len` readable bytes (NULL allowed when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_tx_patch(
    tx: *mut shm_snapshot_tx,
    offset: usize,
    data: *const c_void,
    len: usize,
) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_tx(tx, |tx| {
            let data = bytes(data, len, "data")?;
            Ok(tx.patch(offset, data)?)
        })
    }
}

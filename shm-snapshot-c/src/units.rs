//! Recovering units: a snapshot of the valid units and their bytes.

use shm::Unit;

use crate::client::{shm_snapshot_client, with_client};
use crate::status::shm_snapshot_status::{self, *};
use crate::status::{Failure, guard};

/// The valid units of a region, oldest first, with copies of their bytes.
/// Opaque; made by `shm_snapshot_recover`, released by
/// `shm_snapshot_units_free`; immutable, so any thread may read it.
pub struct shm_snapshot_units {
    units: Vec<Unit>,
}

/// One recovered unit, as `shm_snapshot_units_get` describes it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shm_snapshot_unit {
    /// The unit's sequence number: unique and increasing over the
    /// region's life.
    pub seq: u64,
    /// Its bytes, exactly as committed; owned by the units handle, valid
    /// until `shm_snapshot_units_free`. Not NULL, even for 0 bytes.
    pub bytes: *const u8,
    /// Its length in bytes.
    pub len: usize,
}

/// The valid units, oldest first: what a program rebuilds its state from
/// after a restart. Units newer ones overwrote are gone; the newest that
/// fit the ring and the unit table survive. On success `*out` holds a
/// handle to release with `shm_snapshot_units_free`.
///
/// # Safety
///
/// `client` is a live handle no other call uses meanwhile; `out` points to
/// writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_recover(
    client: *mut shm_snapshot_client,
    out: *mut *mut shm_snapshot_units,
) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_client(client, |c| {
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let units = Box::new(shm_snapshot_units { units: c.recover()? });
            // SAFETY: non-NULL writable storage by the caller's contract.
            out.write(Box::into_raw(units));
            Ok(())
        })
    }
}

/// How many units `units` holds; 0 for NULL.
///
/// # Safety
///
/// `units` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_units_count(units: *const shm_snapshot_units) -> usize {
    // SAFETY: NULL or a live handle, by the contract above.
    unsafe { units.as_ref() }.map_or(0, |u| u.units.len())
}

/// Describes unit `index` (0 = the oldest) in `*out`.
/// `SHM_SNAPSHOT_E_OUT_OF_BOUNDS` when `index` is not below the count.
///
/// # Safety
///
/// `units` is a live handle; `out` points to a writable
/// `shm_snapshot_unit`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_units_get(
    units: *const shm_snapshot_units,
    index: usize,
    out: *mut shm_snapshot_unit,
) -> shm_snapshot_status {
    guard(
        || {
            // SAFETY: NULL or a live handle, by the contract above.
            let units = unsafe { units.as_ref() }.ok_or(Failure::null("units"))?;
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let unit = units.units.get(index).ok_or_else(|| {
                Failure::new(
                    SHM_SNAPSHOT_E_OUT_OF_BOUNDS,
                    format!("unit {index} of {}", units.units.len()),
                )
            })?;
            let described = shm_snapshot_unit {
                seq: unit.id.0,
                bytes: unit.bytes.as_ptr(),
                len: unit.bytes.len(),
            };
            // SAFETY: non-NULL writable storage by the caller's contract.
            unsafe { out.write(described) };
            Ok(())
        },
        || {},
    )
}

/// Releases units and their bytes. NULL is ignored.
///
/// # Safety
///
/// `units` is NULL or a live handle, not used again afterwards (nor the
/// bytes it lent).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_units_free(units: *mut shm_snapshot_units) {
    if !units.is_null() {
        // SAFETY: made by `Box::into_raw` in `shm_snapshot_recover`,
        // released once.
        drop(unsafe { Box::from_raw(units) });
    }
}

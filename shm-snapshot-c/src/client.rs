//! Opening and closing a client, the arena, and the heartbeat.

use std::ffi::{CStr, c_char, c_void};
use std::os::unix::ffi::OsStrExt;

use shm::{Client, Config, Region};

use crate::status::shm_snapshot_status::{self, *};
use crate::status::{Failure, bytes, bytes_mut, guard};

/// How a blank region is laid out (a region already laid out keeps its
/// own layout). Pass NULL where a function takes one for the defaults,
/// or start from `shm_snapshot_config_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shm_snapshot_config {
    /// Unit-table slots, a power of two up to 65536. Default 256.
    pub slots: u64,
    /// Ring bytes, a power of two of at least 4096: the largest unit.
    /// Default 1 MiB.
    pub ring_bytes: u64,
    /// Arena chunk bytes, a power of two of at least 4096: the
    /// granularity at which the supervisor learns what changed. Default
    /// 64 KiB.
    pub chunk_bytes: u64,
}

/// The default configuration.
#[unsafe(no_mangle)]
pub extern "C" fn shm_snapshot_config_default() -> shm_snapshot_config {
    let c = Config::default();
    shm_snapshot_config {
        slots: c.slots,
        ring_bytes: c.ring_bytes,
        chunk_bytes: c.chunk_bytes,
    }
}

/// A client of a region: the only writer of its unit table, ring and
/// arena. Opaque. Made by an `shm_snapshot_open_*` function and released
/// by `shm_snapshot_close`. Not thread-safe: calls on one client must not
/// overlap (one thread at a time, or the caller's own lock); it may move
/// between threads.
pub struct shm_snapshot_client {
    pub(crate) client: Client,
    /// Set when a call on this client panicked: its state may be half
    /// changed, so every later call but close is refused.
    pub(crate) poisoned: bool,
}

/// Runs `f` on the client behind `client`, refusing NULL and a poisoned
/// client, and poisoning it if `f` panics.
///
/// # Safety
///
/// `client` is NULL or a live handle from an `shm_snapshot_open_*`
/// function that no other call uses meanwhile.
pub(crate) unsafe fn with_client(
    client: *mut shm_snapshot_client,
    f: impl FnOnce(&mut Client) -> Result<(), Failure>,
) -> shm_snapshot_status {
    // SAFETY: by this function's contract, NULL or a live, unshared handle.
    let Some(handle) = (unsafe { client.as_mut() }) else {
        return guard(|| Err(Failure::null("client")), || {});
    };
    if handle.poisoned {
        return guard(
            || {
                Err(Failure::new(
                    SHM_SNAPSHOT_E_PANIC,
                    "an earlier call on this client failed with an internal error; close it",
                ))
            },
            || {},
        );
    }
    let poisoned = &mut handle.poisoned;
    let inner = &mut handle.client;
    guard(|| f(inner), || *poisoned = true)
}

fn config_of(config: *const shm_snapshot_config) -> Config {
    // SAFETY: NULL or a valid config, by the contract of every caller.
    match unsafe { config.as_ref() } {
        None => Config::default(),
        Some(c) => Config {
            slots: c.slots,
            ring_bytes: c.ring_bytes,
            chunk_bytes: c.chunk_bytes,
        },
    }
}

/// Opens `region` and hands the client to `*out`.
fn open(
    region: impl FnOnce() -> Result<Region, Failure>,
    config: *const shm_snapshot_config,
    out: *mut *mut shm_snapshot_client,
) -> shm_snapshot_status {
    guard(
        || {
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let client = Client::open(region()?, &config_of(config))?;
            let handle = Box::new(shm_snapshot_client {
                client,
                poisoned: false,
            });
            // SAFETY: `out` is non-NULL and points to writable storage for
            // a pointer, by the caller's contract.
            unsafe { out.write(Box::into_raw(handle)) };
            Ok(())
        },
        || {},
    )
}

/// Opens the region shm-restore handed to this process (the descriptor
/// named `SHM_SHARED_FD` in `LISTEN_FDNAMES`, by systemd's `LISTEN_FDS`
/// convention), lays it out from `config` (NULL: defaults) if it is blank,
/// and checks it otherwise. On success `*out` holds a client to release
/// with `shm_snapshot_close`; on failure `*out` is unchanged.
///
/// Returns `SHM_SNAPSHOT_E_NOT_HANDED_OVER` when the process was not
/// started by shm-restore. Takes the descriptor: call it once per process,
/// and do not use or close that descriptor otherwise (a second call fails
/// with `SHM_SNAPSHOT_E_HANDOVER`). The descriptor is made close-on-exec,
/// so programs this one starts do not inherit the region.
///
/// # Safety
///
/// `config` is NULL or points to a config; `out` points to writable
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_open_env(
    config: *const shm_snapshot_config,
    out: *mut *mut shm_snapshot_client,
) -> shm_snapshot_status {
    open(
        || {
            // SAFETY: the C contract above: the program does not use the
            // descriptor otherwise, and shm-restore seals the region
            // against shrinking.
            Ok(unsafe { Region::from_env() }?)
        },
        config,
        out,
    )
}

/// Opens a fresh private region of `len` bytes (a multiple of 4096, large
/// enough for the configuration: 1 MiB and 4 pages with the defaults), for
/// a program running without a supervisor and for tests. Its state ends
/// with the process. As `shm_snapshot_open_env` for `config` and `out`.
///
/// # Safety
///
/// As `shm_snapshot_open_env`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_open_anonymous(
    len: u64,
    config: *const shm_snapshot_config,
    out: *mut *mut shm_snapshot_client,
) -> shm_snapshot_status {
    open(|| Ok(Region::anonymous(len)?), config, out)
}

/// Opens the region image in the file at `path`, read-write, e.g. one
/// written by `shm-restore export`: for tests and tools. Changes go to the
/// file. As `shm_snapshot_open_env` for `config` and `out`.
///
/// # Safety
///
/// `path` is a NUL-terminated string. Nothing may shrink the file while
/// the client is open (touching a page past its end raises SIGBUS). As
/// `shm_snapshot_open_env` for `config` and `out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_open_file(
    path: *const c_char,
    config: *const shm_snapshot_config,
    out: *mut *mut shm_snapshot_client,
) -> shm_snapshot_status {
    open(
        || {
            if path.is_null() {
                return Err(Failure::null("path"));
            }
            // SAFETY: a NUL-terminated string by the caller's contract.
            let path = std::ffi::OsStr::from_bytes(unsafe { CStr::from_ptr(path) }.to_bytes());
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Failure::new(SHM_SNAPSHOT_E_IO, format!("opening {}: {e}", path.display())))?;
            // SAFETY: the caller promises the file does not shrink while
            // the client is open.
            Ok(unsafe { Region::from_file(file) }?)
        },
        config,
        out,
    )
}

/// Releases a client and unmaps its region. The region itself lives on
/// (it belongs to the supervisor). NULL is ignored.
///
/// # Safety
///
/// `client` is NULL or a live handle, not used again afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_close(client: *mut shm_snapshot_client) {
    if client.is_null() {
        return;
    }
    // SAFETY: a handle made by `Box::into_raw` in `open`, released once.
    let handle = unsafe { Box::from_raw(client) };
    // Dropping unmaps; a panic there (none is known) must not reach C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(handle)));
}

/// The arena's length in bytes: the region's pages after the ring, free
/// for the program. 0 for NULL.
///
/// # Safety
///
/// `client` is NULL or a live handle no other call uses meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_arena_len(client: *const shm_snapshot_client) -> usize {
    // SAFETY: NULL or a live handle, by the contract above.
    unsafe { client.as_ref() }.map_or(0, |h| h.client.arena().len())
}

/// Copies `len` bytes from `data` into the arena at `offset`, and marks
/// the arena chunks they touch written, so the supervisor copies them.
/// Data a valid unit describes must not be changed (the arena contract);
/// write new data, then commit a unit that describes it, or use
/// `shm_snapshot_commit_arena` for both at once.
///
/// # Safety
///
/// `client` is a live handle no other call uses meanwhile; `data` points
/// to `len` readable bytes (NULL allowed when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_arena_write(
    client: *mut shm_snapshot_client,
    offset: usize,
    data: *const c_void,
    len: usize,
) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_client(client, |c| {
            let data = bytes(data, len, "data")?;
            Ok(c.arena().write(offset, data)?)
        })
    }
}

/// Copies `len` bytes of the arena at `offset` into `out`.
///
/// # Safety
///
/// `client` is a live handle no other call uses meanwhile; `out` points to
/// `len` writable bytes (NULL allowed when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_arena_read(
    client: *mut shm_snapshot_client,
    offset: usize,
    out: *mut c_void,
    len: usize,
) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_client(client, |c| {
            let out = bytes_mut(out, len, "out")?;
            Ok(c.arena().read(offset, out)?)
        })
    }
}

/// Tells the supervisor the program is alive without committing (for
/// `shm-restore --hang-timeout`): one store into the region, no system
/// call. Every commit also does it.
///
/// # Safety
///
/// `client` is a live handle no other call uses meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shm_snapshot_heartbeat(client: *mut shm_snapshot_client) -> shm_snapshot_status {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        with_client(client, |c| {
            c.heartbeat();
            Ok(())
        })
    }
}

//! The C functions called as C calls them: status codes, messages,
//! ownership of handles, and the commit protocol through the boundary.

use std::ffi::{CStr, CString, c_int, c_void};
use std::ptr;

use shm_snapshot::*;
use shm_snapshot_status::*;

fn last_error() -> String {
    // SAFETY: the library's own NUL-terminated string for this thread.
    unsafe { CStr::from_ptr(shm_snapshot_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn open() -> *mut shm_snapshot_client {
    let mut client = ptr::null_mut();
    // SAFETY: NULL config (defaults) and a valid out pointer.
    let status = unsafe { shm_snapshot_open_anonymous(4 << 20, ptr::null(), &mut client) };
    assert_eq!(status, SHM_SNAPSHOT_OK, "{}", last_error());
    client
}

/// The valid units of `client`, through the C calls.
fn recover(client: *mut shm_snapshot_client) -> Vec<(u64, Vec<u8>)> {
    let mut units = ptr::null_mut();
    // SAFETY: a live client and a valid out pointer.
    assert_eq!(
        unsafe { shm_snapshot_recover(client, &mut units) },
        SHM_SNAPSHOT_OK
    );
    // SAFETY: `units` is live until freed below.
    let count = unsafe { shm_snapshot_units_count(units) };
    let mut all = Vec::new();
    for i in 0..count {
        let mut unit = shm_snapshot_unit {
            seq: 0,
            bytes: ptr::null(),
            len: 0,
        };
        // SAFETY: a live handle and a valid out pointer.
        assert_eq!(
            unsafe { shm_snapshot_units_get(units, i, &mut unit) },
            SHM_SNAPSHOT_OK
        );
        // SAFETY: the handle lends `len` bytes at `bytes` until it is freed.
        all.push((
            unit.seq,
            unsafe { std::slice::from_raw_parts(unit.bytes, unit.len) }.to_vec(),
        ));
    }
    let mut past = shm_snapshot_unit {
        seq: 0,
        bytes: ptr::null(),
        len: 0,
    };
    // SAFETY: as above.
    assert_eq!(
        unsafe { shm_snapshot_units_get(units, count, &mut past) },
        SHM_SNAPSHOT_E_OUT_OF_BOUNDS
    );
    // SAFETY: released once.
    unsafe { shm_snapshot_units_free(units) };
    all
}

fn commit(client: *mut shm_snapshot_client, unit: &[u8]) -> (shm_snapshot_status, u64) {
    let mut seq = 0;
    // SAFETY: a live client, `unit.len()` readable bytes, a valid seq pointer.
    let status = unsafe { shm_snapshot_commit(client, unit.as_ptr().cast(), unit.len(), &mut seq) };
    (status, seq)
}

#[test]
fn units_committed_through_the_boundary_are_recovered_with_their_bytes() {
    let client = open();
    assert_eq!(commit(client, b"one"), (SHM_SNAPSHOT_OK, 1));
    assert_eq!(commit(client, b""), (SHM_SNAPSHOT_OK, 2));
    let data = [7u8; 100];
    let mut seq = 0;
    // SAFETY: a live client and valid buffers.
    let status = unsafe {
        shm_snapshot_commit_arena(
            client,
            b"three".as_ptr().cast(),
            5,
            4096,
            data.as_ptr().cast(),
            data.len(),
            &mut seq,
        )
    };
    assert_eq!((status, seq), (SHM_SNAPSHOT_OK, 3));
    assert_eq!(
        recover(client),
        [(1, b"one".to_vec()), (2, Vec::new()), (3, b"three".to_vec())]
    );
    let mut back = [0u8; 100];
    // SAFETY: a live client and a 100-byte buffer.
    let status = unsafe { shm_snapshot_arena_read(client, 4096, back.as_mut_ptr().cast(), back.len()) };
    assert_eq!(status, SHM_SNAPSHOT_OK);
    assert_eq!(back, data);
    // SAFETY: released once.
    unsafe { shm_snapshot_close(client) };
}

/// What the work functions below are given.
struct Work {
    arena_offset: usize,
    seen_seq: u64,
    result: c_int,
}

unsafe extern "C" fn write_and_patch(tx: *mut shm_snapshot_tx, context: *mut c_void) -> c_int {
    // SAFETY: the `Work` the test passed as context.
    let work = unsafe { &mut *context.cast::<Work>() };
    // SAFETY: `tx` is lent for this call.
    unsafe {
        work.seen_seq = shm_snapshot_tx_seq(tx);
        if shm_snapshot_tx_arena_write(tx, work.arena_offset, b"data".as_ptr().cast(), 4) != SHM_SNAPSHOT_OK {
            return 10;
        }
        if shm_snapshot_tx_patch(tx, 0, b"P".as_ptr().cast(), 1) != SHM_SNAPSHOT_OK {
            return 11;
        }
        if shm_snapshot_tx_patch(tx, 4, b"xx".as_ptr().cast(), 2) != SHM_SNAPSHOT_E_OUT_OF_BOUNDS {
            return 12;
        }
    }
    work.result
}

#[test]
fn commit_with_publishes_after_its_work_or_aborts_when_the_work_says_so() {
    let client = open();
    let mut work = Work {
        arena_offset: 0,
        seen_seq: 0,
        result: 7,
    };
    let mut seq = 0;
    // SAFETY: a live client, a 5-byte unit, a work function keeping the
    // contract, and its context.
    let status = unsafe {
        shm_snapshot_commit_with(
            client,
            b"unit!".as_ptr().cast(),
            5,
            Some(write_and_patch),
            (&mut work as *mut Work).cast(),
            &mut seq,
        )
    };
    assert_eq!(status, SHM_SNAPSHOT_E_ABORTED);
    assert!(last_error().contains("returned 7"), "{}", last_error());
    assert_eq!(work.seen_seq, 1);
    assert!(recover(client).is_empty(), "nothing published");

    work.result = 0;
    // SAFETY: as above.
    let status = unsafe {
        shm_snapshot_commit_with(
            client,
            b"unit!".as_ptr().cast(),
            5,
            Some(write_and_patch),
            (&mut work as *mut Work).cast(),
            &mut seq,
        )
    };
    assert_eq!((status, seq), (SHM_SNAPSHOT_OK, 1), "{}", last_error());
    assert_eq!(
        recover(client),
        [(1, b"Pnit!".to_vec())],
        "published with its patch"
    );

    // An arena write out of bounds inside the work is refused, and the
    // work function aborts on it.
    // SAFETY: a live client.
    work.arena_offset = unsafe { shm_snapshot_arena_len(client) };
    // SAFETY: as above.
    let status = unsafe {
        shm_snapshot_commit_with(
            client,
            b"unit!".as_ptr().cast(),
            5,
            Some(write_and_patch),
            (&mut work as *mut Work).cast(),
            ptr::null_mut(),
        )
    };
    assert_eq!(status, SHM_SNAPSHOT_E_ABORTED);
    assert!(last_error().contains("returned 10"), "{}", last_error());
    // SAFETY: released once.
    unsafe { shm_snapshot_close(client) };
}

#[test]
fn errors_are_codes_with_a_message_for_the_thread() {
    let client = open();
    // SAFETY: a live client; the arena write runs past its end.
    let len = unsafe { shm_snapshot_arena_len(client) };
    // SAFETY: valid buffers; the range is what is wrong.
    let status = unsafe { shm_snapshot_arena_write(client, len - 2, b"four".as_ptr().cast(), 4) };
    assert_eq!(status, SHM_SNAPSHOT_E_OUT_OF_BOUNDS);
    assert!(last_error().contains("outside the arena"), "{}", last_error());

    let big = vec![0u8; (1 << 20) + 1];
    assert_eq!(commit(client, &big).0, SHM_SNAPSHOT_E_UNIT_TOO_LARGE);
    assert!(last_error().contains("larger than the ring"), "{}", last_error());

    assert_eq!(commit(ptr::null_mut(), b"x").0, SHM_SNAPSHOT_E_NULL);
    assert_eq!(last_error(), "client is NULL");
    // SAFETY: a live client; a NULL pointer for bytes the call needs.
    let status = unsafe { shm_snapshot_commit(client, ptr::null(), 3, ptr::null_mut()) };
    assert_eq!(status, SHM_SNAPSHOT_E_NULL);
    // SAFETY: NULL handles are ignored or answered with 0.
    unsafe {
        shm_snapshot_close(ptr::null_mut());
        shm_snapshot_units_free(ptr::null_mut());
        assert_eq!(shm_snapshot_arena_len(ptr::null()), 0);
        assert_eq!(shm_snapshot_units_count(ptr::null()), 0);
        assert_eq!(shm_snapshot_heartbeat(client), SHM_SNAPSHOT_OK);
        shm_snapshot_close(client);
    }
}

#[test]
fn a_region_that_is_not_this_format_is_refused_with_its_reason() {
    let dir = tempfile_dir();
    let path = dir.join("foreign.img");
    std::fs::write(&path, vec![0xabu8; 2 << 20]).expect("writing an image");
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    let mut client = ptr::null_mut();
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let status = unsafe { shm_snapshot_open_file(c_path.as_ptr(), ptr::null(), &mut client) };
    assert_eq!(status, SHM_SNAPSHOT_E_REGION);
    assert!(client.is_null(), "nothing handed out on failure");
    assert!(last_error().contains("foreign magic"), "{}", last_error());
    assert_eq!(
        std::fs::read(&path).expect("image"),
        vec![0xabu8; 2 << 20],
        "left untouched"
    );

    // SAFETY: as above, for a path that does not exist.
    let missing = CString::new(dir.join("missing").as_os_str().as_encoded_bytes()).expect("no NUL");
    let status = unsafe { shm_snapshot_open_file(missing.as_ptr(), ptr::null(), &mut client) };
    assert_eq!(status, SHM_SNAPSHOT_E_IO);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_process_not_started_by_the_supervisor_is_told_so() {
    // The test runner has no LISTEN_FDS (cargo does not set it).
    assert!(std::env::var_os("LISTEN_FDS").is_none());
    let mut client = ptr::null_mut();
    // SAFETY: NULL config and a valid out pointer.
    let status = unsafe { shm_snapshot_open_env(ptr::null(), &mut client) };
    assert_eq!(status, SHM_SNAPSHOT_E_NOT_HANDED_OVER);
    assert!(last_error().contains("LISTEN_FDS is not set"), "{}", last_error());
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("c-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

//! Helpers shared by the store's test files. Each test binary uses a part
//! of them.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use shm_snapshot::store::{CHUNK_BYTES, Persisted, Store, StoreError};

/// Deterministic pseudo-random bytes.
pub fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The base file of generation `n` in the store at `dir` (STORE.md, "The
/// directory").
pub fn base_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("base-{n:020}.snap"))
}

/// Segment `seq` of the store at `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:020}.log"))
}

/// The file of generation `n` as version 2 named it.
pub fn legacy_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("gen-{n:020}.snap"))
}

/// The names of the files of the directory, the lock file left out.
pub fn file_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "lock")
        .collect()
}

/// The numbers of the base files in `dir`.
pub fn base_numbers(dir: &Path) -> BTreeSet<u64> {
    numbers(dir, "base-", ".snap")
}

/// The sequence numbers of the segments in `dir`.
pub fn segment_numbers(dir: &Path) -> BTreeSet<u64> {
    numbers(dir, "seg-", ".log")
}

/// The numbers of the version 2 files in `dir`.
pub fn legacy_numbers(dir: &Path) -> BTreeSet<u64> {
    numbers(dir, "gen-", ".snap")
}

fn numbers(dir: &Path, prefix: &str, suffix: &str) -> BTreeSet<u64> {
    file_names(dir)
        .iter()
        .filter_map(|n| n.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
        .collect()
}

/// Where generation `n`'s record is as the store last scanned it: its file
/// (a base file, or the segment holding its delta record) and the record's
/// offset and length in it.
pub fn record_of(store: &Store, n: u64) -> (PathBuf, u64, u64) {
    let info = store
        .generations()
        .into_iter()
        .find(|g| g.number == n)
        .unwrap_or_else(|| panic!("generation {n} is not listed"));
    (info.path, info.offset, info.bytes)
}

/// The bytes of generation `n`'s record, read from its file.
pub fn record_bytes(store: &Store, n: u64) -> Vec<u8> {
    let (path, offset, len) = record_of(store, n);
    fs::read(path).unwrap()[offset as usize..(offset + len) as usize].to_vec()
}

/// Offers every chunk of `image`, one at a time, and commits.
pub fn try_commit(store: &mut Store, image: &[u8], meta: &[u8]) -> Result<Persisted, StoreError> {
    let mut tx = store.begin(image.len() as u64)?;
    for (i, c) in image.chunks(CHUNK_BYTES as usize).enumerate() {
        tx.put_chunk(i as u64, c)?;
    }
    tx.commit(meta)
}

/// [`try_commit`], which must succeed.
pub fn commit(store: &mut Store, image: &[u8], meta: &[u8]) -> Persisted {
    try_commit(store, image, meta).expect("commit")
}

/// Flips the bits of `mask` in the byte at `at` of the file at `path`, in
/// place (rewriting a whole file through a truncation makes some file
/// systems write it back to the disk at once, which a test flipping every
/// byte of a store cannot afford).
pub fn flip(path: &Path, at: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= mask;
    file.write_all_at(&byte, at).unwrap();
}

/// The size of the file at `path`.
pub fn size(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

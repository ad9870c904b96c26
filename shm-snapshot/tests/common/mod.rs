//! Helpers shared by the store's test files.

use std::path::{Path, PathBuf};

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

/// The file of generation `n` in the store at `dir` (STORE.md's naming).
pub fn gen_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("gen-{n:020}.snap"))
}

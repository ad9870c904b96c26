//! Byte-level access to memory that is only ever touched as atomic words.
//!
//! Every access is `Relaxed` here; callers order them with the fences and
//! acquire/release operations the protocol prescribes. Offsets are in bytes
//! from the start of `words`; ranges past its end panic, which is a bug in
//! the caller's bounds checks, never something region contents can cause.

use crate::sync::{AtomicU64, Ordering::Relaxed};

/// Stores `bytes` at word-aligned byte offset `at`, padding the last word
/// with zeros. The commit path: whole-word stores, one bounds check.
#[inline]
pub(crate) fn store_padded(words: &[AtomicU64], at: u64, bytes: &[u8]) {
    debug_assert_eq!(at % 8, 0);
    let first = (at / 8) as usize;
    let dst = &words[first..first + bytes.len().div_ceil(8)];
    let mut chunks = bytes.chunks_exact(8);
    for (word, chunk) in dst.iter().zip(&mut chunks) {
        word.store(
            u64::from_le_bytes(chunk.try_into().expect("chunks of 8")),
            Relaxed,
        );
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        dst[dst.len() - 1].store(u64::from_le_bytes(last), Relaxed);
    }
}

/// Stores `bytes` at any byte offset `at`. Words only partly covered are
/// read, merged and stored back, which is correct because the caller is the
/// only writer of this memory.
pub(crate) fn write(words: &[AtomicU64], at: u64, bytes: &[u8]) {
    let mut at = at;
    let mut bytes = bytes;
    let head = (at % 8) as usize;
    if head != 0 && !bytes.is_empty() {
        let n = bytes.len().min(8 - head);
        merge(&words[(at / 8) as usize], head, &bytes[..n]);
        at += n as u64;
        bytes = &bytes[n..];
    }
    let whole = bytes.len() / 8 * 8;
    if whole > 0 {
        store_padded(words, at, &bytes[..whole]);
    }
    if whole < bytes.len() {
        merge(&words[((at + whole as u64) / 8) as usize], 0, &bytes[whole..]);
    }
}

fn merge(word: &AtomicU64, from: usize, bytes: &[u8]) {
    let mut le = word.load(Relaxed).to_le_bytes();
    le[from..from + bytes.len()].copy_from_slice(bytes);
    word.store(u64::from_le_bytes(le), Relaxed);
}

/// Loads `out.len()` bytes from any byte offset `at`.
pub(crate) fn read(words: &[AtomicU64], at: u64, out: &mut [u8]) {
    let mut at = at;
    let mut out = out;
    while !out.is_empty() {
        let skip = (at % 8) as usize;
        let n = out.len().min(8 - skip);
        let le = words[(at / 8) as usize].load(Relaxed).to_le_bytes();
        out[..n].copy_from_slice(&le[skip..skip + n]);
        at += n as u64;
        out = &mut out[n..];
    }
}

/// Loads the word at byte offset `at` (a multiple of 8) with `order`.
#[inline]
pub(crate) fn load(words: &[AtomicU64], at: u64, order: crate::sync::Ordering) -> u64 {
    words[(at / 8) as usize].load(order)
}

/// Stores `value` in the word at byte offset `at` (a multiple of 8).
#[inline]
pub(crate) fn store(words: &[AtomicU64], at: u64, value: u64, order: crate::sync::Ordering) {
    words[(at / 8) as usize].store(value, order)
}

/// The low 32 bits of a word (its first four bytes: the format is
/// little-endian), as the futex the host sleeps on. Only ever handed to the
/// kernel's futex calls; never loaded through.
#[cfg(not(loom))]
pub(crate) fn futex_word(word: &AtomicU64) -> &std::sync::atomic::AtomicU32 {
    // Rust code never accesses memory through the result (mixing 4- and
    // 8-byte atomics is not defined); only the kernel's futex calls read it.
    // SAFETY: the first half of an 8-aligned AtomicU64 is 4 aligned bytes,
    // valid for as long as the borrow of `word`.
    unsafe { &*(word as *const AtomicU64).cast::<std::sync::atomic::AtomicU32>() }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn unaligned_writes_and_reads_round_trip_without_touching_neighbours() {
        let words: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(u64::MAX)).collect();
        let data: Vec<u8> = (1..=21).collect();
        write(&words, 5, &data);
        let mut back = vec![0u8; 21];
        read(&words, 5, &mut back);
        assert_eq!(back, data);
        let mut all = vec![0u8; 64];
        read(&words, 0, &mut all);
        assert!(all[..5].iter().all(|b| *b == 0xff));
        assert!(all[26..].iter().all(|b| *b == 0xff));
    }

    #[test]
    fn padded_store_zeroes_the_tail_of_the_last_word() {
        let words: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(u64::MAX)).collect();
        store_padded(&words, 0, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(words[1].load(Relaxed), 9);
    }
}

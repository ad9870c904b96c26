//! The arena: the pages after the ring, the program's own memory.
//!
//! Contract (FORMAT.md, "The arena"): data that a valid unit describes is not
//! modified while that unit is valid. Append-only tables, or invalidating
//! the describing units before writing, meet it.
//!
//! Every write through this API moves the write counter of each chunk it
//! touches, after the write (FORMAT.md, "The marking rule"): a host that
//! follows the counters (`--arena-scan=auto` once a counter moved, or
//! `hints`) copies exactly the chunks they name, so a write it is not told
//! about would be lost from the snapshots. There is no way to write arena
//! bytes through this API without marking them: [`Arena::write`] marks what
//! it copied, and [`Arena::update_words`] hands out the words to store into
//! only for the duration of a closure and marks them after it.

use crate::error::ArenaError;
use crate::layout::Geometry;
use crate::sync::{AtomicU64, Ordering, Ordering::*};
use crate::words;

/// A view of the arena. Cheap to create; borrow it from
/// [`crate::Client::arena`] or [`crate::Tx::arena`].
#[derive(Debug, Clone, Copy)]
pub struct Arena<'a> {
    words: &'a [AtomicU64],
    counters: &'a [AtomicU64],
    chunk_bytes: u64,
}

/// The arena as 64-bit words, for loads only: a program that keeps atomics
/// in the arena reads them here and changes them through
/// [`Arena::update_words`], which marks what may have changed.
#[derive(Debug, Clone, Copy)]
pub struct ArenaWords<'a> {
    words: &'a [AtomicU64],
}

impl ArenaWords<'_> {
    /// The number of words (the arena's length divided by 8).
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether there are no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Loads word `index` (arena bytes `8 * index ..`) with `order`, or
    /// `None` past the arena.
    pub fn load(&self, index: usize, order: Ordering) -> Option<u64> {
        self.words.get(index).map(|w| w.load(order))
    }
}

/// Marks a range of arena bytes written when dropped: after the closure of
/// [`Arena::update_words`] returns, and also if it unwinds, since it may
/// have stored some words before its panic.
struct MarkOnDrop<'a, 'b> {
    arena: &'b Arena<'a>,
    offset: usize,
    len: usize,
}

impl Drop for MarkOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.arena.mark(self.offset, self.len);
    }
}

impl<'a> Arena<'a> {
    pub(crate) fn new(region: &'a [AtomicU64], g: &Geometry) -> Arena<'a> {
        let word = |at: u64| (at / 8) as usize;
        Arena {
            words: &region[word(g.arena_offset)..word(g.arena_offset + g.arena_len)],
            counters: &region[word(g.counters_offset)..word(g.counters_offset) + g.counters as usize],
            chunk_bytes: g.chunk_bytes,
        }
    }

    /// The arena's length in bytes.
    pub fn len(&self) -> usize {
        self.words.len() * 8
    }

    /// Whether the arena has no bytes.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The arena's chunk size: the unit in which writes are marked for the
    /// host.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes as usize
    }

    /// The arena as words, to load from. Stores go through
    /// [`Arena::update_words`] or [`Arena::write`].
    pub fn words(&self) -> ArenaWords<'a> {
        ArenaWords { words: self.words }
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), ArenaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(ArenaError {
                offset,
                len,
                arena_len: self.len(),
            }),
        }
    }

    /// Copies `bytes` into the arena at `offset` and marks the chunks
    /// written. Whole words are stored as such; a word the range covers
    /// only in part is loaded, merged and stored back (the client is the
    /// only writer, so nothing is lost in between).
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), ArenaError> {
        self.check(offset, bytes.len())?;
        words::write(self.words, offset as u64, bytes);
        self.mark(offset, bytes.len());
        Ok(())
    }

    /// Copies `out.len()` bytes of the arena at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), ArenaError> {
        self.check(offset, out.len())?;
        words::read(self.words, offset as u64, out);
        Ok(())
    }

    /// Runs `f` on the arena words `range` (word `i` holds arena bytes
    /// `8 * i .. 8 * i + 8`), then marks those bytes written, also when `f`
    /// panics. `f` may store, swap or add into the words with any ordering;
    /// the marks are release stores made after it returns, so every store
    /// of `f` is ordered before them. The words cannot escape `f`.
    ///
    /// ```
    /// # use shm_snapshot::{Client, Config, Region};
    /// # use std::sync::atomic::Ordering::Relaxed;
    /// # let client = Client::open(Region::anonymous(4 << 20)?, &Config::default())?;
    /// // A counter kept in the arena's word 3.
    /// let arena = client.arena();
    /// arena.update_words(3..4, |w| w[0].fetch_add(1, Relaxed))?;
    /// assert_eq!(arena.words().load(3, Relaxed), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_words<R>(
        &self,
        range: std::ops::Range<usize>,
        f: impl FnOnce(&[AtomicU64]) -> R,
    ) -> Result<R, ArenaError> {
        let words = self.words.get(range.clone()).ok_or(ArenaError {
            offset: range.start.saturating_mul(8),
            len: range.len().saturating_mul(8),
            arena_len: self.len(),
        })?;
        let _mark = MarkOnDrop {
            arena: self,
            offset: range.start * 8,
            len: range.len() * 8,
        };
        Ok(f(words))
    }

    /// Moves the write counter of every chunk `[offset, offset + len)`
    /// touches (a range already checked to lie in the arena).
    fn mark(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let first = offset as u64 / self.chunk_bytes;
        let last = (offset + len - 1) as u64 / self.chunk_bytes;
        for counter in &self.counters[first as usize..=last as usize] {
            // ORDERING: release; pairs with the host's acquire load of the
            // counters (`Observer::chunk_counters`): a host that sees the new
            // count copies data at least as new as this write. A plain
            // increment suffices: the client is the only writer.
            counter.store(counter.load(Relaxed).wrapping_add(1), Release);
        }
    }

    /// The write counter of chunk `index`, or `None` past the arena.
    pub fn chunk_counter(&self, index: usize) -> Option<u64> {
        let chunks = self.len().div_ceil(self.chunk_bytes as usize);
        (index < chunks).then(|| self.counters[index].load(Relaxed))
    }
}

//! The arena: the pages after the ring, the program's own memory.
//!
//! Contract (FORMAT.md, "The arena"): data that a valid unit describes is not
//! modified while that unit is valid. Append-only tables, copy-on-write
//! halves, or invalidating the describing units before writing all meet it.
//!
//! Writes through [`Arena::write`] bump the write counter of each chunk they
//! touch, telling the host which chunks changed. A program that writes
//! through [`Arena::words`] directly calls [`Arena::mark_written`] after.

use crate::error::ArenaError;
use crate::layout::Geometry;
use crate::sync::{AtomicU64, Ordering::*};
use crate::words;

/// A view of the arena. Cheap to create; borrow it from
/// [`crate::Client::arena`] or [`crate::Tx::arena`].
#[derive(Debug, Clone, Copy)]
pub struct Arena<'a> {
    words: &'a [AtomicU64],
    counters: &'a [AtomicU64],
    chunk_bytes: u64,
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

    /// The arena's size of a chunk, the unit of [`Arena::mark_written`].
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes as usize
    }

    /// The arena as words, for programs that keep atomics in it. Call
    /// [`Arena::mark_written`] after writing through them.
    pub fn words(&self) -> &'a [AtomicU64] {
        self.words
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

    /// Copies `bytes` into the arena at `offset` and marks the chunks written.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), ArenaError> {
        self.check(offset, bytes.len())?;
        words::write(self.words, offset as u64, bytes);
        self.mark_written(offset, bytes.len())
    }

    /// Copies `out.len()` bytes of the arena at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), ArenaError> {
        self.check(offset, out.len())?;
        words::read(self.words, offset as u64, out);
        Ok(())
    }

    /// Records that `[offset, offset + len)` was written, for the host.
    /// Call it after the write: a host that sees the counter move then
    /// copies the whole write.
    pub fn mark_written(&self, offset: usize, len: usize) -> Result<(), ArenaError> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
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
        Ok(())
    }

    /// The write counter of chunk `index`, or `None` past the arena.
    pub fn chunk_counter(&self, index: usize) -> Option<u64> {
        let chunks = self.len().div_ceil(self.chunk_bytes as usize);
        (index < chunks).then(|| self.counters[index].load(Relaxed))
    }
}

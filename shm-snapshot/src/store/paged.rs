//! A table with one entry per page of an image (a page's hash, where its
//! bytes are), held a chunk's pages at a time in shared blocks: a copy of
//! the table (a background base job's) shares every block, and a block is
//! copied only when one side changes it afterwards; blocks that hold only
//! the fill value (the pages of an all-zero chunk) share one allocation.
//! So a copy costs a pointer per chunk, and a region mostly zero costs
//! little more than that.

use std::sync::Arc;

use super::format::PAGES_PER_CHUNK;
use super::hashes::NoMemory;

/// Entries per block: a chunk's pages.
const BLOCK: usize = PAGES_PER_CHUNK as usize;

/// One entry per page, in shared blocks of a chunk's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Paged<T: Copy> {
    blocks: Vec<Arc<[T; BLOCK]>>,
    len: usize,
}

impl<T: Copy + PartialEq> Paged<T> {
    /// `len` entries of `fill`, allocated fallibly (all blocks share one).
    pub fn filled(len: u64, fill: T) -> Result<Paged<T>, NoMemory> {
        let no_memory = || NoMemory {
            bytes: len.saturating_mul(std::mem::size_of::<T>() as u64),
        };
        let len = usize::try_from(len).map_err(|_| no_memory())?;
        let count = len.div_ceil(BLOCK);
        let mut blocks = Vec::new();
        blocks.try_reserve_exact(count).map_err(|_| no_memory())?;
        let shared = Arc::new([fill; BLOCK]);
        blocks.resize(count, shared);
        Ok(Paged { blocks, len })
    }

    /// The entries of `entries`; blocks that hold only `fill` share one
    /// allocation.
    pub fn from_vec(entries: &[T], fill: T) -> Result<Paged<T>, NoMemory> {
        let mut paged = Paged::filled(entries.len() as u64, fill)?;
        for (b, block) in entries.chunks(BLOCK).enumerate() {
            if block.iter().any(|e| *e != fill) {
                let mut own = [fill; BLOCK];
                own[..block.len()].copy_from_slice(block);
                paged.blocks[b] = Arc::new(own);
            }
        }
        Ok(paged)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> T {
        assert!(i < self.len, "entry {i} of {}", self.len);
        self.blocks[i / BLOCK][i % BLOCK]
    }

    /// Sets entry `i`, copying its block first if it is shared.
    pub fn set(&mut self, i: usize, value: T) {
        assert!(i < self.len, "entry {i} of {}", self.len);
        let block = &mut self.blocks[i / BLOCK];
        if block[i % BLOCK] != value {
            Arc::make_mut(block)[i % BLOCK] = value;
        }
    }

    /// The entries of block `b` (chunk `b`'s pages; fewer in the last).
    pub fn block(&self, b: usize) -> &[T] {
        let end = ((b + 1) * BLOCK).min(self.len) - b * BLOCK;
        &self.blocks[b][..end]
    }

    /// Sets the first `values.len()` entries of block `b`.
    pub fn set_block(&mut self, b: usize, values: &[T]) {
        let block = &mut self.blocks[b];
        if block[..values.len()] != *values {
            Arc::make_mut(block)[..values.len()].copy_from_slice(values);
        }
    }

    /// Every entry, in order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.blocks.iter().flat_map(|b| b.iter().copied()).take(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_blocks_until_one_side_changes_one() {
        let mut a = Paged::filled(40, 0u64).unwrap();
        a.set(3, 7);
        let b = a.clone();
        a.set(3, 8);
        a.set(35, 9);
        assert_eq!((a.get(3), b.get(3)), (8, 7));
        assert_eq!((a.get(35), b.get(35)), (9, 0));
        assert_eq!(b.iter().filter(|v| *v != 0).count(), 1);
        assert_eq!(a.iter().count(), 40);
        assert_eq!(a.block(2), &[0, 0, 0, 9, 0, 0, 0, 0]);
        // Unchanged blocks are one allocation on both sides.
        assert!(Arc::ptr_eq(&a.blocks[1], &b.blocks[1]));
        assert!(!Arc::ptr_eq(&a.blocks[0], &b.blocks[0]));
    }

    #[test]
    fn blocks_of_the_fill_value_share_one_allocation() {
        let mut v = vec![0u64; 50];
        v[20] = 1;
        let p = Paged::from_vec(&v, 0).unwrap();
        assert!(Arc::ptr_eq(&p.blocks[0], &p.blocks[2]));
        assert!(!Arc::ptr_eq(&p.blocks[0], &p.blocks[1]));
        assert_eq!(p.iter().collect::<Vec<_>>(), v);
        let mut q = p.clone();
        q.set_block(3, &[5, 6]);
        assert_eq!(q.block(3), &[5, 6]);
        assert_eq!(p.block(3), &[0, 0]);
    }
}

//! What a region costs in memory while a supervisor runs it. This is the
//! one place that figure is made: the README states it and the start check
//! ([`super::ensure_room`]) compares it with what is available, so a change
//! to the supervisor's memory use is made here.

use shm_snapshot::snapshot::STAGING_BYTES;
use shm_snapshot::store::PAGE_BYTES;

/// Bytes the supervisor keeps per page of the region, at most:
/// - the snapshotter's short hash of each page (8), its index into the
///   staging area (4) and the write counter of each arena chunk (8, with
///   the smallest chunks, a page); while a generation changes most of the
///   region (or a prime copies it), a 16-byte entry per staged page and 8
///   bytes per counter that moved: 44 in all;
/// - the store's BLAKE3 hash of each page of its newest image (32) and
///   where the page's bytes are on disk (16), held in shared blocks (3
///   more), with a hash per chunk (3): 54; a base built in the background
///   adds a file offset a page (8) and, for every block a delta changes
///   while it runs, a copy of the block (50 at most): 112 in all;
/// - while the store is read at start, its tables as it reads them (48,
///   and the region's page list, 1), held until the store's own are made
///   from them, before the snapshotter's exist: 49 + 54.
///
/// The most at any moment is 44 + 112 = 156 bytes; 160 rounds that up
/// (3.9% of a page).
const PAGE_BYTES_KEPT: u64 = 160;

/// The supervisor's memory that does not grow with the region: the pages
/// a generation copied in its window, held in memory up to
/// [`STAGING_BYTES`] (16 MiB; the rest goes to a file); the store's record
/// being assembled (up to 16 MiB) or a full generation's batch of chunks
/// (8 MiB); code, thread stacks and logs. Measured at 16 MiB in all at
/// 1 GiB under 1,000 commits a second and 59 MiB while a program filled
/// 512 MiB of a 1 GiB region at once (BENCHMARKS.md, "Large regions
/// without a shadow"); rounded up.
const FIXED_BYTES: u64 = 48 << 20;

/// The memory a region of some length costs while a supervisor runs it.
///
/// Counted: the region itself (shared memory, reserved at start) and the
/// supervisor's own private memory: [`PAGE_BYTES_KEPT`] a page,
/// [`FIXED_BYTES`], and what a restore at start holds for a moment: the
/// pages of the generation it reads, at most the store's size on disk and
/// at most the region's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// The region: its length.
    pub region: u64,
    /// The supervisor's private memory.
    pub supervisor: u64,
}

impl Cost {
    /// The cost of a region of `region_len` bytes restored from a store of
    /// `stored` bytes on disk (saturating: a length near `u64::MAX` costs
    /// `u64::MAX`, which nothing can hold).
    pub fn of(region_len: u64, stored: u64) -> Cost {
        let pages = region_len.div_ceil(PAGE_BYTES);
        let restore = stored.min(region_len);
        let staging = STAGING_BYTES as u64;
        debug_assert!(staging < FIXED_BYTES);
        Cost {
            region: region_len,
            supervisor: pages
                .saturating_mul(PAGE_BYTES_KEPT)
                .saturating_add(FIXED_BYTES)
                .saturating_add(restore),
        }
    }

    /// The region and the supervisor together.
    pub fn total(&self) -> u64 {
        self.region.saturating_add(self.supervisor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn a_region_costs_its_length_plus_a_few_percent_and_a_fixed_part() {
        let cost = Cost::of(GIB, 0);
        assert_eq!(cost.region, GIB);
        // 256 Ki pages at 160 bytes: 40 MiB.
        assert_eq!(cost.supervisor, 40 * MIB + 48 * MIB);
        assert_eq!(cost.total(), GIB + 88 * MIB);
    }

    #[test]
    fn a_restore_at_start_adds_the_store_up_to_the_region() {
        assert_eq!(
            Cost::of(GIB, 100 * MIB).supervisor,
            Cost::of(GIB, 0).supervisor + 100 * MIB
        );
        assert_eq!(
            Cost::of(GIB, 5 * GIB).supervisor,
            Cost::of(GIB, 0).supervisor + GIB
        );
    }

    #[test]
    fn the_readme_figure_matches_for_the_sizes_it_names() {
        // README, "Memory": about N + 0.039 N + 48 MiB, and the store's
        // size on disk (at most N) while restoring at start.
        for n in [64 * MIB, GIB, 8 * GIB, 100 * (GIB << 10)] {
            let readme = n + n * 39 / 1000 + 48 * MIB;
            let exact = Cost::of(n, 0).total();
            assert!(exact.abs_diff(readme) <= exact / 1000, "{n}: {exact} vs {readme}");
        }
    }

    #[test]
    fn a_length_near_the_top_of_u64_saturates_instead_of_wrapping() {
        assert_eq!(Cost::of(u64::MAX, 0).total(), u64::MAX);
        assert_eq!(Cost::of(u64::MAX / 2 + 1, u64::MAX).total(), u64::MAX);
    }
}

//! What a region costs in memory while a supervisor runs it. This is the
//! one place that figure is made: the README states it and the start check
//! ([`super::ensure_room`]) compares it with what is available, so a change
//! to the supervisor's memory use (the shadow above all) is made here.

use shm_snapshot::store::{CHUNK_BYTES, PAGE_BYTES};

/// Bytes of one BLAKE3 hash. The store keeps one per page and one per
/// chunk of its newest image, to find the pages that changed.
const HASH_BYTES: u64 = 32;

/// Bytes the store keeps per page besides its hash: where the page's
/// newest bytes are on disk (16), and, while a base is built in the
/// background, the base job's copy of the page's hash and place (48).
const PAGE_EXTRA_BYTES: u64 = 16 + 48;

/// The supervisor's memory that does not grow with the region: its code,
/// thread stacks, logs, the batches the store hashes and writes. Measured
/// at about 2 MiB above the shadow and the hashes at rest and 10 MiB while
/// a program rewrote a 1 GiB region at 300 MiB/s; rounded up.
const FIXED_BYTES: u64 = 16 << 20;

/// The memory a region of some length costs while a supervisor runs it.
///
/// Counted: the region itself (shared memory, reserved at start) and the
/// supervisor's own private memory: the snapshotter's shadow copy of the
/// region, the store's hashes of its newest image and where its pages are
/// on disk (with a base job's copy of both), and [`FIXED_BYTES`].
/// Not counted: the moments a restore from disk holds the generation it
/// reads (up to the region's length again, and the chain's newest delta
/// while it is verified) while the shadow exists; at start the shadow does
/// not exist yet, so a restore there stays within this figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// The region: its length.
    pub region: u64,
    /// The supervisor's private memory.
    pub supervisor: u64,
}

impl Cost {
    /// The cost of a region of `region_len` bytes (saturating: a length
    /// near `u64::MAX` costs `u64::MAX`, which nothing can hold).
    pub fn of(region_len: u64) -> Cost {
        let shadow = region_len;
        let pages = region_len.div_ceil(PAGE_BYTES);
        let hashes = pages
            .saturating_add(region_len.div_ceil(CHUNK_BYTES))
            .saturating_mul(HASH_BYTES)
            .saturating_add(pages.saturating_mul(PAGE_EXTRA_BYTES));
        Cost {
            region: region_len,
            supervisor: shadow.saturating_add(hashes).saturating_add(FIXED_BYTES),
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
    fn a_region_costs_twice_its_length_plus_the_hashes_and_a_fixed_part() {
        let cost = Cost::of(GIB);
        assert_eq!(cost.region, GIB);
        // 256 Ki page hashes (8 MiB), 16 Ki chunk hashes (0.5 MiB), and
        // 64 bytes more per page (16 MiB).
        assert_eq!(cost.supervisor, GIB + 8 * MIB + MIB / 2 + 16 * MIB + 16 * MIB);
        assert_eq!(cost.total(), 2 * GIB + 40 * MIB + MIB / 2);
    }

    #[test]
    fn the_readme_figure_matches_for_the_sizes_it_names() {
        // README, "Memory": about 2N + N/40 + 16 MiB.
        for n in [64 * MIB, GIB, 8 * GIB, 100 * (GIB << 10)] {
            let readme = 2 * n + n / 40 + 16 * MIB;
            let exact = Cost::of(n).total();
            assert!(exact.abs_diff(readme) <= exact / 1000, "{n}: {exact} vs {readme}");
        }
    }

    #[test]
    fn a_length_near_the_top_of_u64_saturates_instead_of_wrapping() {
        assert_eq!(Cost::of(u64::MAX).total(), u64::MAX);
        assert_eq!(Cost::of(u64::MAX / 2 + 1).total(), u64::MAX);
    }
}

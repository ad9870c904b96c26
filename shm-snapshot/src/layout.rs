//! The region format, v1: every offset, size and encoding in one place.
//!
//! `FORMAT.md` next to this crate describes the format byte by byte; this
//! module is its only definition in code. Nothing else in the crate names an
//! offset: it asks [`Geometry`] or uses the constants here.

use crate::error::RegionError;

// Words are stored in the machine's byte order and the format says
// little-endian; a big-endian build would write regions and snapshots no
// other build reads.
#[cfg(target_endian = "big")]
compile_error!("the region format is little-endian; big-endian targets are not supported");

/// Alignment of the sections of a region, and the unit in which region
/// lengths are counted. 4 KiB is the page size of every Linux target we run
/// on; under the loom model it shrinks so a whole region fits in a few dozen
/// modelled atomics.
pub const PAGE: u64 = if cfg!(loom) { 64 } else { 4096 };

/// Bytes reserved for the header at the start of the region (page 0).
pub const HEADER_BYTES: u64 = if cfg!(loom) { 256 } else { 4096 };

/// The magic number in the first eight bytes of a laid-out region:
/// the ASCII bytes `SHM-SNAP` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHM-SNAP");

/// The format version this crate writes and the newest it reads.
pub const VERSION: u64 = 1;

/// Byte offsets of the header's u64 fields. Chained so that no two overlap
/// and the order in `FORMAT.md` is the order here.
pub mod header {
    /// [`super::MAGIC`]; written last when a blank region is laid out.
    pub const MAGIC: u64 = 0;
    /// Format version, [`super::VERSION`].
    pub const VERSION: u64 = MAGIC + 8;
    /// Length of the whole region in bytes, a multiple of [`super::PAGE`].
    pub const REGION_LEN: u64 = VERSION + 8;
    /// Number of unit-table slots, a power of two.
    pub const SLOT_COUNT: u64 = REGION_LEN + 8;
    /// Size of the ring in bytes, a power of two.
    pub const RING_BYTES: u64 = SLOT_COUNT + 8;
    /// Size of an arena chunk for the write counters, a power of two.
    pub const CHUNK_BYTES: u64 = RING_BYTES + 8;
    /// Byte offset of the unit table.
    pub const TABLE_OFFSET: u64 = CHUNK_BYTES + 8;
    /// Byte offset of the arena chunk write counters.
    pub const COUNTERS_OFFSET: u64 = TABLE_OFFSET + 8;
    /// Byte offset of the ring.
    pub const RING_OFFSET: u64 = COUNTERS_OFFSET + 8;
    /// Byte offset of the arena.
    pub const ARENA_OFFSET: u64 = RING_OFFSET + 8;
    /// Length of the arena in bytes.
    pub const ARENA_LEN: u64 = ARENA_OFFSET + 8;
    /// End of the fields that never change after layout.
    pub const FIXED_END: u64 = ARENA_LEN + 8;

    /// The client's write cursor: stream offset just past the newest
    /// published unit's (padded) bytes. Starts its own cache line so the
    /// fields the client moves on every commit do not share a line with the
    /// fixed ones the host re-reads.
    pub const CURSOR: u64 = 128;
    /// The sequence number the next unit will get (sequence numbers start at 1).
    pub const NEXT_SEQ: u64 = CURSOR + 8;
    /// Number of units published since layout; the host waits on it.
    pub const COMMIT_COUNT: u64 = NEXT_SEQ + 8;
    /// The client's heartbeat: a counter the client moves on every commit
    /// and whenever it calls `Client::heartbeat`, wrapping at 2^64. On the
    /// commit fields' cache line, which a commit dirties anyway. Zero means
    /// "not provided" (a client that never moves it); a host only compares
    /// successive values, never trusts or interprets one.
    pub const HEARTBEAT: u64 = COMMIT_COUNT + 8;
    /// Written by the host only (with a plain file write, never through a
    /// mapping), on its own cache line: bit 0, [`super::HOST_SLEEPING`], says
    /// the host sleeps on a futex on the low 32 bits of `COMMIT_COUNT` and
    /// wants a wake after the next commit. Zero means "not provided": a
    /// client that ignores it is correct, only slower to be snapshotted.
    pub const HOST_FLAGS: u64 = 192;
    /// End of the fields v1 defines; the rest of the header is reserved and
    /// zero at layout.
    pub const END: u64 = HOST_FLAGS + 8;

    const _: () = assert!(HOST_FLAGS.is_multiple_of(64) && HOST_FLAGS >= HEARTBEAT + 8);
    const _: () = assert!(
        HEARTBEAT + 8 <= CURSOR + 64,
        "heartbeat shares the commit fields' cache line"
    );

    const _: () = assert!(FIXED_END <= CURSOR);
    const _: () = assert!(CURSOR.is_multiple_of(64));
    const _: () = assert!(END <= super::HEADER_BYTES);
}

/// Byte offsets inside one unit-table slot, and its size.
pub mod slot {
    /// The slot's tag: `seq << 2 | state` (see [`super::Tag`]).
    pub const TAG: u64 = 0;
    /// The unit's stream offset in the ring, a multiple of 8.
    pub const OFFSET: u64 = TAG + 8;
    /// The unit's length in bytes (unpadded).
    pub const LEN: u64 = OFFSET + 8;
    /// Reserved, zero.
    pub const RESERVED: u64 = LEN + 8;
    /// Bytes per slot.
    pub const SIZE: u64 = RESERVED + 8;

    const _: () = assert!(SIZE == 32);
}

/// [`header::HOST_FLAGS`] bit: the host sleeps until the commit count moves.
pub const HOST_SLEEPING: u64 = 1;

/// Bytes per arena chunk write counter.
pub const COUNTER_SIZE: u64 = 8;

/// Unit bytes are stored in whole 8-byte words; a unit of `len` bytes takes
/// `pad(len)` bytes of the ring.
pub const fn pad(len: u64) -> u64 {
    (len + 7) & !7
}

/// `x` rounded up to a multiple of `align` (a power of two); `None` on overflow.
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Bounds that make a geometry "possible": they keep every computed offset
/// far from overflow and every table a sane size.
pub mod limits {
    /// Most slots a unit table may have (2 MiB of table).
    pub const MAX_SLOTS: u64 = 1 << 16;
    /// Smallest ring: one page, so the arena stays page aligned.
    pub const MIN_RING: u64 = super::PAGE;
    /// Largest ring, 1 TiB.
    pub const MAX_RING: u64 = 1 << 40;
    /// Smallest arena chunk: one page.
    pub const MIN_CHUNK: u64 = super::PAGE;
    /// Largest arena chunk, 1 GiB.
    pub const MAX_CHUNK: u64 = 1 << 30;
    /// Largest region, 64 TiB: well inside the 47-bit user address space.
    pub const MAX_REGION: u64 = 1 << 46;
    /// Largest stream offset or sequence number a header may hold; leaves
    /// 2^62 commits of headroom before anything could overflow, which no
    /// program reaches (a commit per nanosecond for 146 years).
    pub const MAX_COUNTER: u64 = 1 << 62;
}

/// The state bits of a slot tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum State {
    /// Never used; the whole tag is zero.
    Empty = 0,
    /// The unit is published and its bytes are intact.
    Valid = 1,
    /// The unit's bytes are being, or have been, overwritten.
    Invalid = 2,
}

/// A decoded slot tag: `seq << 2 | state`. Packing both in one word lets a
/// single atomic load tell which unit a slot holds and whether it is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag(pub u64);

impl Tag {
    /// The tag of a published unit.
    pub const fn valid(seq: u64) -> Tag {
        Tag(seq << 2 | State::Valid as u64)
    }
    /// The tag of an invalidated unit.
    pub const fn invalid(seq: u64) -> Tag {
        Tag(seq << 2 | State::Invalid as u64)
    }
    /// The sequence number.
    pub const fn seq(self) -> u64 {
        self.0 >> 2
    }
    /// The state, or `None` for the undefined state bits `0b11`.
    pub const fn state(self) -> Option<State> {
        match self.0 & 3 {
            0 if self.0 == 0 => Some(State::Empty),
            1 => Some(State::Valid),
            2 => Some(State::Invalid),
            _ => None,
        }
    }
}

/// The shape of a region: where each section lies. Derived from four
/// numbers (region length, slots, ring bytes, chunk bytes); every other
/// header field must equal what [`Geometry::derive`] computes, which is how a
/// header read from untrusted memory is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Length of the whole region in bytes.
    pub region_len: u64,
    /// Unit-table slots (power of two).
    pub slots: u64,
    /// Ring bytes (power of two).
    pub ring_bytes: u64,
    /// Arena chunk bytes for the write counters (power of two).
    pub chunk_bytes: u64,
    /// Offset of the unit table.
    pub table_offset: u64,
    /// Offset of the arena chunk write counters.
    pub counters_offset: u64,
    /// Number of write counters reserved: `ceil(region_len / chunk_bytes)`,
    /// an upper bound on the arena's chunks that does not depend on where
    /// the arena starts (which depends on the counters' size). Counter `i`
    /// covers arena bytes `[i * chunk_bytes, (i + 1) * chunk_bytes)`,
    /// counted from the arena's start; the ones past the arena are unused.
    pub counters: u64,
    /// Offset of the ring.
    pub ring_offset: u64,
    /// Offset of the arena.
    pub arena_offset: u64,
    /// Length of the arena.
    pub arena_len: u64,
}

fn impossible(field: &'static str, value: u64, why: &'static str) -> RegionError {
    RegionError::ImpossibleField { field, value, why }
}

fn power_of_two_in(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), RegionError> {
    if !value.is_power_of_two() {
        return Err(impossible(field, value, "not a power of two"));
    }
    if value < min {
        return Err(impossible(field, value, "below the minimum"));
    }
    if value > max {
        return Err(impossible(field, value, "above the maximum"));
    }
    Ok(())
}

impl Geometry {
    /// Computes the layout of a region of `region_len` bytes from its other
    /// three parameters, checking each against [`limits`].
    pub fn derive(
        region_len: u64,
        slots: u64,
        ring_bytes: u64,
        chunk_bytes: u64,
    ) -> Result<Geometry, RegionError> {
        if !region_len.is_multiple_of(PAGE) {
            return Err(impossible(
                "region length",
                region_len,
                "not a multiple of the page size",
            ));
        }
        if region_len > limits::MAX_REGION {
            return Err(impossible("region length", region_len, "above the maximum"));
        }
        power_of_two_in("unit slots", slots, 1, limits::MAX_SLOTS)?;
        power_of_two_in("ring bytes", ring_bytes, limits::MIN_RING, limits::MAX_RING)?;
        power_of_two_in("chunk bytes", chunk_bytes, limits::MIN_CHUNK, limits::MAX_CHUNK)?;

        // No overflow below: every term is bounded by the limits above, whose
        // sum is far below 2^64.
        let table_offset = HEADER_BYTES;
        let counters_offset = align_up(table_offset + slots * slot::SIZE, PAGE).expect("bounded");
        let counters = region_len.div_ceil(chunk_bytes);
        let ring_offset = align_up(counters_offset + counters * COUNTER_SIZE, PAGE).expect("bounded");
        let arena_offset = ring_offset + ring_bytes;
        if arena_offset > region_len {
            return Err(RegionError::TooSmall {
                len: region_len,
                needed: arena_offset,
            });
        }
        Ok(Geometry {
            region_len,
            slots,
            ring_bytes,
            chunk_bytes,
            table_offset,
            counters_offset,
            counters,
            ring_offset,
            arena_offset,
            arena_len: region_len - arena_offset,
        })
    }

    /// The header fields that never change after layout, as `(offset, value)`
    /// pairs, magic excluded: what a layout writes and a reader checks.
    pub fn fixed_fields(&self) -> [(u64, u64); 10] {
        [
            (header::VERSION, VERSION),
            (header::REGION_LEN, self.region_len),
            (header::SLOT_COUNT, self.slots),
            (header::RING_BYTES, self.ring_bytes),
            (header::CHUNK_BYTES, self.chunk_bytes),
            (header::TABLE_OFFSET, self.table_offset),
            (header::COUNTERS_OFFSET, self.counters_offset),
            (header::RING_OFFSET, self.ring_offset),
            (header::ARENA_OFFSET, self.arena_offset),
            (header::ARENA_LEN, self.arena_len),
        ]
    }

    /// Checks a header read from untrusted memory of `actual_len` bytes.
    /// `read` returns the u64 at a header offset. Returns the geometry when
    /// every field agrees with the one derived from the primary parameters.
    pub fn from_header(actual_len: u64, read: impl Fn(u64) -> u64) -> Result<Geometry, RegionError> {
        if actual_len < HEADER_BYTES {
            return Err(RegionError::TooSmall {
                len: actual_len,
                needed: HEADER_BYTES,
            });
        }
        let magic = read(header::MAGIC);
        if magic != MAGIC {
            return Err(RegionError::ForeignMagic { found: magic });
        }
        let version = read(header::VERSION);
        if version > VERSION {
            return Err(RegionError::NewerVersion {
                found: version,
                supported: VERSION,
            });
        }
        if version == 0 {
            return Err(impossible("format version", 0, "versions start at 1"));
        }
        let region_len = read(header::REGION_LEN);
        if region_len != actual_len {
            return Err(RegionError::LengthMismatch {
                header: region_len,
                actual: actual_len,
            });
        }
        let geometry = Geometry::derive(
            region_len,
            read(header::SLOT_COUNT),
            read(header::RING_BYTES),
            read(header::CHUNK_BYTES),
        )?;
        for (offset, expected) in geometry.fixed_fields() {
            let found = read(offset);
            if found != expected {
                return Err(RegionError::FieldMismatch {
                    offset,
                    expected,
                    found,
                });
            }
        }
        Ok(geometry)
    }

    /// Byte offset of slot `index`'s field at `field` (a [`slot`] offset).
    pub fn slot_field(&self, index: u64, field: u64) -> u64 {
        self.table_offset + index * slot::SIZE + field
    }

    /// The slot a sequence number lives in.
    pub fn slot_of(&self, seq: u64) -> u64 {
        seq & (self.slots - 1)
    }

    /// Byte offset in the region of stream offset `stream` in the ring.
    pub fn ring_at(&self, stream: u64) -> u64 {
        self.ring_offset + (stream & (self.ring_bytes - 1))
    }

    /// Where the `len` bytes at stream offset `stream` lie in the region:
    /// at most two `(region offset, length)` pieces, the first from
    /// `ring_at(stream)` up to the ring's end, the second from the ring's
    /// start. The lengths add up to `len`; the second is 0 when the bytes do
    /// not wrap (its offset is then the ring's start). `len` must be at
    /// most `ring_bytes`, as every checked unit's is.
    #[inline]
    pub fn ring_spans(&self, stream: u64, len: u64) -> [(u64, u64); 2] {
        debug_assert!(len <= self.ring_bytes, "{len} bytes do not fit the ring");
        let at = stream & (self.ring_bytes - 1);
        let first = len.min(self.ring_bytes - at);
        [(self.ring_offset + at, first), (self.ring_offset, len - first)]
    }

    /// Checks the fields of a slot read from untrusted memory: a valid unit's
    /// sequence number must belong to the slot, its offset must be a word
    /// boundary, its length must fit the ring and its stream range must not
    /// overflow. Returns the reason it is unusable.
    pub fn check_unit(&self, index: u64, tag: Tag, offset: u64, len: u64) -> Result<(), &'static str> {
        let seq = tag.seq();
        if seq == 0 {
            return Err("sequence number 0 is never used");
        }
        if self.slot_of(seq) != index {
            return Err("sequence number does not belong to this slot");
        }
        if !offset.is_multiple_of(8) {
            return Err("offset is not a multiple of 8");
        }
        if len > self.ring_bytes {
            return Err("length exceeds the ring");
        }
        // The unit's end becomes a restored cursor, its seq + 1 a restored
        // next sequence number: both must stay within what attach accepts.
        if offset.saturating_add(pad(len)) > limits::MAX_COUNTER {
            return Err("unit ends beyond the largest stream offset");
        }
        if seq >= limits::MAX_COUNTER {
            return Err("sequence number beyond the last a tag can hold");
        }
        Ok(())
    }
}

/// A unit as found in the table: which slot, its tag, where its bytes are.
/// Every `UnitRef` handed out by this crate has passed
/// [`Geometry::check_unit`], so its bytes lie inside the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitRef {
    /// Slot index in the unit table.
    pub slot: u64,
    /// The slot's tag when it was read (state valid).
    pub tag: Tag,
    /// Stream offset of the unit's first byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl UnitRef {
    /// The unit's sequence number.
    pub fn seq(&self) -> u64 {
        self.tag.seq()
    }
    /// Stream offset just past the unit's padded bytes.
    pub fn end(&self) -> u64 {
        self.offset + pad(self.len)
    }
}

/// Puts `units` in sequence order and applies the chain rule (FORMAT.md,
/// "The chain rule"): returns the index (after sorting) of the newest unit
/// that cannot be kept, so a caller drops it and every older one and keeps
/// the coherent newest ones; `None` when every unit fits.
///
/// Two units next to each other in sequence order contradict each other
/// when they share a sequence number, when the older one's stream range
/// runs into the newer one's, or when their numbers are consecutive and the
/// newer one does not start exactly where the older one ends (a client
/// writes each unit right after the one before it). Nothing in a region
/// tells which of the two is false, so neither is kept. A unit that lies
/// where the newest unit's bytes have since wrapped over (more than
/// `ring_bytes` before its end), or whose slot the newest unit's number has
/// reused (`slots` or more below it), is dropped on its own.
pub fn sort_and_check_chain(units: &mut [UnitRef], ring_bytes: u64, slots: u64) -> Option<usize> {
    units.sort_unstable_by_key(|u| u.seq());
    let newest = *units.last()?;
    let floor = newest.end().saturating_sub(ring_bytes);
    for i in (0..units.len() - 1).rev() {
        let (older, newer) = (&units[i], &units[i + 1]);
        // A tag holds at most 62 bits of sequence number: `+ 1` cannot wrap.
        let meets = if older.seq() + 1 == newer.seq() {
            older.end() == newer.offset
        } else {
            older.seq() < newer.seq() && older.end() <= newer.offset
        };
        if !meets {
            return Some(i + 1);
        }
        if older.offset < floor || newest.seq() - older.seq() >= slots {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sized_region_has_page_aligned_sections() {
        let g = Geometry::derive(64 << 20, 256, 1 << 20, 64 << 10).unwrap();
        for off in [g.table_offset, g.counters_offset, g.ring_offset, g.arena_offset] {
            assert_eq!(off % PAGE, 0, "{g:?}");
        }
        assert_eq!(g.arena_offset + g.arena_len, g.region_len);
        assert!(g.counters * g.chunk_bytes >= g.arena_len);
    }

    #[test]
    fn region_smaller_than_its_sections_is_too_small() {
        let err = Geometry::derive(PAGE * 4, 256, 1 << 20, 64 << 10).unwrap_err();
        assert!(matches!(err, RegionError::TooSmall { .. }), "{err}");
    }

    #[test]
    fn non_power_of_two_ring_is_impossible() {
        let err = Geometry::derive(64 << 20, 256, 3 << 20, 64 << 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "impossible ring bytes 3145728 in region header: not a power of two"
        );
    }

    #[test]
    fn ring_spans_split_where_the_ring_wraps() {
        let g = Geometry::derive(64 << 20, 256, 1 << 20, 64 << 10).unwrap();
        let (ring, r) = (g.ring_offset, g.ring_bytes);
        assert_eq!(g.ring_spans(16, 100), [(ring + 16, 100), (ring, 0)]);
        // Stream offsets wrap the ring: one lap later is the same place.
        assert_eq!(g.ring_spans(3 * r + 16, 100), [(ring + 16, 100), (ring, 0)]);
        // Ending exactly at the ring's end does not wrap.
        assert_eq!(g.ring_spans(r - 96, 96), [(ring + r - 96, 96), (ring, 0)]);
        assert_eq!(g.ring_spans(r - 96, 100), [(ring + r - 96, 96), (ring, 4)]);
        assert_eq!(g.ring_spans(5 * r - 8, 24), [(ring + r - 8, 8), (ring, 16)]);
    }

    #[test]
    fn ring_spans_of_nothing_and_of_the_whole_ring() {
        let g = Geometry::derive(64 << 20, 256, 1 << 20, 64 << 10).unwrap();
        let (ring, r) = (g.ring_offset, g.ring_bytes);
        assert_eq!(g.ring_spans(r - 8, 0), [(ring + r - 8, 0), (ring, 0)]);
        assert_eq!(g.ring_spans(0, r), [(ring, r), (ring, 0)]);
        assert_eq!(g.ring_spans(2 * r, r), [(ring, r), (ring, 0)]);
        assert_eq!(g.ring_spans(r + 40, r), [(ring + 40, r - 40), (ring, 40)]);
    }

    #[test]
    fn tag_round_trips_sequence_and_state() {
        assert_eq!(Tag::valid(7).seq(), 7);
        assert_eq!(Tag::valid(7).state(), Some(State::Valid));
        assert_eq!(Tag::invalid(7).state(), Some(State::Invalid));
        assert_eq!(Tag(0).state(), Some(State::Empty));
        assert_eq!(Tag(4).state(), None, "seq without state bits is not empty");
        assert_eq!(Tag(3).state(), None);
    }

    /// A unit in slot `seq & 7` of an eight-slot table.
    fn unit(seq: u64, offset: u64, len: u64) -> UnitRef {
        UnitRef {
            slot: seq & 7,
            tag: Tag::valid(seq),
            offset,
            len,
        }
    }

    #[test]
    fn chain_check_finds_overlapping_older_unit() {
        let u = unit;
        let mut good = [u(3, 16, 8), u(1, 0, 8), u(2, 8, 8)];
        assert_eq!(sort_and_check_chain(&mut good, 4096, 8), None);
        assert_eq!(good.map(|u| u.seq()), [1, 2, 3]);
        // Two units that contradict each other: neither is kept.
        let mut overlapping = [u(1, 0, 16), u(2, 8, 8)];
        assert_eq!(sort_and_check_chain(&mut overlapping, 4096, 8), Some(1));
        let mut overlapping_across_a_gap = [u(1, 0, 16), u(3, 8, 8), u(4, 16, 8)];
        assert_eq!(
            sort_and_check_chain(&mut overlapping_across_a_gap, 4096, 8),
            Some(1)
        );
        let mut overwritten = [u(1, 0, 8), u(3, 8192, 8)];
        assert_eq!(sort_and_check_chain(&mut overwritten, 4096, 8), Some(0));
        let mut overwritten_by_a_whole_ring = [u(1, 0, 8), u(2, 8, 4096)];
        assert_eq!(
            sort_and_check_chain(&mut overwritten_by_a_whole_ring, 4096, 8),
            Some(0)
        );
        let mut slot_reused = [u(1, 0, 8), u(9, 8, 8)];
        assert_eq!(sort_and_check_chain(&mut slot_reused, 4096, 8), Some(0));
    }

    #[test]
    fn consecutive_units_that_do_not_meet_in_the_stream_are_both_dropped() {
        let u = unit;
        // Unit 2 starts a word past unit 1's end: one of the two is false.
        let mut apart = [u(1, 0, 8), u(2, 16, 8), u(3, 24, 8)];
        assert_eq!(sort_and_check_chain(&mut apart, 4096, 8), Some(1));
        // The same when the newer one is the newest unit: nothing is kept.
        let mut apart_newest = [u(1, 0, 8), u(2, 16, 8)];
        assert_eq!(sort_and_check_chain(&mut apart_newest, 4096, 8), Some(1));
        // A unit moved into the next one's bytes after that one was lost:
        // it overlaps nothing, but does not meet the unit before it.
        let mut moved = [u(1, 0, 32), u(2, 32, 32), u(3, 72, 24), u(5, 128, 32)];
        assert_eq!(sort_and_check_chain(&mut moved, 4096, 8), Some(2));
    }

    #[test]
    fn chain_check_accepts_every_table_a_client_leaves() {
        let u = unit;
        let tables: [&mut [UnitRef]; 5] = [
            // Zero-length units take no stream bytes.
            &mut [u(1, 0, 0), u(2, 0, 5), u(3, 8, 0), u(4, 8, 0), u(5, 8, 8)],
            // Numbers skipped by a restore, or a unit between two that was
            // lost or not read: any length may have lain in the gap.
            &mut [u(5, 40, 8), u(9, 48, 8), u(11, 4000, 8)],
            // Far into the stream, across the ring's end.
            &mut [u(700, 5 * 4096 + 4080, 24), u(701, 6 * 4096 + 8, 8)],
            // A whole ring's unit right after a zero-length one.
            &mut [u(1, 16, 0), u(2, 16, 4096)],
            // The oldest unit exactly a ring before the newest's end.
            &mut [u(2, 8, 8), u(3, 16, 4088)],
        ];
        for table in tables {
            assert_eq!(sort_and_check_chain(table, 4096, 8), None, "{table:?}");
        }
    }
}

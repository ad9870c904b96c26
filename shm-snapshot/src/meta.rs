//! The meta blob, `SHM-META` v1: what a generation records besides the
//! region's bytes (the units proven consistent and the header counters).
//!
//! `STORE.md` beside this crate ("The meta blob") specifies it byte by byte
//! and gives the reason for every check [`Meta::decode`] makes; this module
//! is its only definition in code. The store carries the blob without
//! looking inside; a snapshot writes it and a restore applies it.

use crate::layout::{self, Geometry, Tag, UnitRef};

/// The first word of a meta blob: the ASCII bytes `SHM-META` read as a
/// little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHM-META");

/// The meta version this build writes and the only one it reads.
pub const VERSION: u64 = 1;

/// Byte offsets of the blob's header words, and the header's length.
pub mod header {
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::VERSION`].
    pub const VERSION: usize = MAGIC + 8;
    /// The cursor to restore.
    pub const CURSOR: usize = VERSION + 8;
    /// The next sequence number to restore.
    pub const NEXT_SEQ: usize = CURSOR + 8;
    /// The commit count to restore.
    pub const COMMIT_COUNT: usize = NEXT_SEQ + 8;
    /// How many unit records follow the header.
    pub const UNIT_COUNT: usize = COMMIT_COUNT + 8;
    /// Length of the header; the first unit record starts here.
    pub const LEN: usize = UNIT_COUNT + 8;

    const _: () = assert!(LEN == 48);
}

/// Byte offsets inside one unit record, and its size.
pub mod unit {
    /// The unit's slot in the region's unit table.
    pub const SLOT: usize = 0;
    /// The slot's tag (`seq << 2 | state`, see [`crate::layout::Tag`]).
    pub const TAG: usize = SLOT + 8;
    /// The unit's stream offset.
    pub const OFFSET: usize = TAG + 8;
    /// The unit's length in bytes.
    pub const LEN: usize = OFFSET + 8;
    /// Bytes per unit record.
    pub const SIZE: usize = LEN + 8;

    const _: () = assert!(SIZE == 32);
}

/// What a generation records besides the region's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The cursor to restore: the end of the newest kept unit.
    pub cursor: u64,
    /// The next sequence number to restore: past the newest kept unit and at
    /// most `slots` past the oldest (what a client accepts); the live value
    /// when it lies in that range. Ids of units lost in a crash may be
    /// given again after a restore; no kept unit's id is.
    pub next_seq: u64,
    /// The commit count to restore.
    pub commit_count: u64,
    /// The kept units, in sequence order.
    pub units: Vec<UnitRef>,
}

/// A meta blob that cannot be used. Each variant names the field and the
/// value found; `STORE.md` says why each check is made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The blob is shorter than its header or not a whole number of 8-byte
    /// words: it was cut short or is not a meta blob.
    #[error("generation meta of {len} bytes is not a 48-byte header followed by whole 8-byte words")]
    Length {
        /// The blob's length in bytes.
        len: usize,
    },
    /// The first word is not [`MAGIC`]: the blob is something else.
    #[error("generation meta has foreign magic {found:#018x}, not SHM-META")]
    ForeignMagic {
        /// The word found.
        found: u64,
    },
    /// The version is not [`VERSION`], the only one this build reads.
    #[error("generation meta has version {found}; this build reads version {VERSION} only")]
    UnknownVersion {
        /// The version found.
        found: u64,
    },
    /// The unit count does not account for the blob's length exactly.
    #[error(
        "generation meta says it holds {count} units, but its {len} bytes are not a 48-byte header and {count} 32-byte unit records"
    )]
    UnitCount {
        /// The count in the header.
        count: u64,
        /// The blob's length in bytes.
        len: usize,
    },
    /// More units than the region's unit table has slots.
    #[error("generation meta holds {count} units but the region's unit table has {slots} slots")]
    TooManyUnits {
        /// The units in the blob.
        count: u64,
        /// The region's slots.
        slots: u64,
    },
    /// A unit names a slot outside the region's unit table.
    #[error("generation meta names slot {slot}, outside the region's {slots} slots")]
    SlotOutOfRange {
        /// The slot named.
        slot: u64,
        /// The region's slots.
        slots: u64,
    },
    /// A unit's tag is not the tag of a valid unit.
    #[error("generation meta's unit in slot {slot} has tag {tag:#x}, which is not a valid unit's")]
    NotValid {
        /// The unit's slot.
        slot: u64,
        /// The tag found.
        tag: u64,
    },
    /// A unit fails [`Geometry::check_unit`] against the region's geometry.
    #[error("generation meta's unit {seq} in slot {slot} is impossible in this region: {why}")]
    ImpossibleUnit {
        /// The unit's slot.
        slot: u64,
        /// The unit's sequence number.
        seq: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The units do not form a chain ([`layout::sort_and_check_chain`]):
    /// this unit overlaps a newer one, was overwritten by it, repeats its
    /// number or is too old for the table.
    #[error("generation meta's unit {seq} in slot {slot} breaks the chain of units")]
    BrokenChain {
        /// The first unit, from the newest, that breaks the chain.
        slot: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// The cursor is beyond the largest stream offset a client accepts.
    #[error("generation meta's cursor {cursor} is above 2^62")]
    CursorOutOfRange {
        /// The cursor found.
        cursor: u64,
    },
    /// The commit count is above the largest a client accepts.
    #[error("generation meta's commit count {commit_count} is above 2^62")]
    CommitCountOutOfRange {
        /// The commit count found.
        commit_count: u64,
    },
    /// The next sequence number is not past the newest unit, or is further
    /// past the oldest than the table holds, or above 2^62.
    #[error("generation meta's next sequence number {next_seq} is outside {min}..={max}")]
    NextSeqOutOfRange {
        /// The next sequence number found.
        next_seq: u64,
        /// The smallest one allowed: one past the newest unit.
        min: u64,
        /// The largest one allowed: `slots` past the oldest unit, at most 2^62.
        max: u64,
    },
}

/// The little-endian u64 at `at` of `bytes`, which the caller has checked
/// holds it.
fn word(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl Meta {
    /// Encodes the meta blob.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; header::LEN + self.units.len() * unit::SIZE];
        let mut put = |at: usize, value: u64| out[at..at + 8].copy_from_slice(&value.to_le_bytes());
        put(header::MAGIC, MAGIC);
        put(header::VERSION, VERSION);
        put(header::CURSOR, self.cursor);
        put(header::NEXT_SEQ, self.next_seq);
        put(header::COMMIT_COUNT, self.commit_count);
        put(header::UNIT_COUNT, self.units.len() as u64);
        for (i, u) in self.units.iter().enumerate() {
            let at = header::LEN + i * unit::SIZE;
            put(at + unit::SLOT, u.slot);
            put(at + unit::TAG, u.tag.0);
            put(at + unit::OFFSET, u.offset);
            put(at + unit::LEN, u.len);
        }
        out
    }

    /// Decodes a meta blob's shape (length, magic, version, unit count)
    /// without a geometry to check the units against: for showing what a
    /// generation holds. Use [`Meta::decode`] before applying one.
    pub fn peek(bytes: &[u8]) -> Result<Meta, MetaError> {
        let len = bytes.len();
        if len < header::LEN || !len.is_multiple_of(8) {
            return Err(MetaError::Length { len });
        }
        let magic = word(bytes, header::MAGIC);
        if magic != MAGIC {
            return Err(MetaError::ForeignMagic { found: magic });
        }
        let version = word(bytes, header::VERSION);
        if version != VERSION {
            return Err(MetaError::UnknownVersion { found: version });
        }
        let count = word(bytes, header::UNIT_COUNT);
        let records = &bytes[header::LEN..];
        if !records.len().is_multiple_of(unit::SIZE) || count != (records.len() / unit::SIZE) as u64 {
            return Err(MetaError::UnitCount { count, len });
        }
        let units = records
            .chunks_exact(unit::SIZE)
            .map(|r| UnitRef {
                slot: word(r, unit::SLOT),
                tag: Tag(word(r, unit::TAG)),
                offset: word(r, unit::OFFSET),
                len: word(r, unit::LEN),
            })
            .collect();
        Ok(Meta {
            cursor: word(bytes, header::CURSOR),
            next_seq: word(bytes, header::NEXT_SEQ),
            commit_count: word(bytes, header::COMMIT_COUNT),
            units,
        })
    }

    /// Decodes and checks a meta blob against the geometry it will be
    /// applied to: every unit must lie in the table and pass
    /// [`Geometry::check_unit`], the units must form a chain, and the
    /// counters must be ones a client accepts. The units come back in
    /// sequence order.
    pub fn decode(bytes: &[u8], g: &Geometry) -> Result<Meta, MetaError> {
        let mut meta = Meta::peek(bytes)?;
        let units = &mut meta.units;
        if units.len() as u64 > g.slots {
            return Err(MetaError::TooManyUnits {
                count: units.len() as u64,
                slots: g.slots,
            });
        }
        for u in units.iter() {
            if u.slot >= g.slots {
                return Err(MetaError::SlotOutOfRange {
                    slot: u.slot,
                    slots: g.slots,
                });
            }
            if u.tag != Tag::valid(u.tag.seq()) {
                return Err(MetaError::NotValid {
                    slot: u.slot,
                    tag: u.tag.0,
                });
            }
            g.check_unit(u.slot, u.tag, u.offset, u.len)
                .map_err(|why| MetaError::ImpossibleUnit {
                    slot: u.slot,
                    seq: u.seq(),
                    why,
                })?;
        }
        if let Some(i) = layout::sort_and_check_chain(units, g.ring_bytes, g.slots) {
            return Err(MetaError::BrokenChain {
                slot: units[i].slot,
                seq: units[i].seq(),
            });
        }
        if meta.cursor > layout::limits::MAX_COUNTER {
            return Err(MetaError::CursorOutOfRange { cursor: meta.cursor });
        }
        if meta.commit_count > layout::limits::MAX_COUNTER {
            return Err(MetaError::CommitCountOutOfRange {
                commit_count: meta.commit_count,
            });
        }
        // `check_unit` keeps every seq below 2^62, so neither bound overflows.
        let min = units.last().map_or(1, |u| u.seq() + 1);
        let max = units
            .first()
            .map_or(layout::limits::MAX_COUNTER, |u| u.seq() + g.slots)
            .min(layout::limits::MAX_COUNTER);
        if !(min..=max).contains(&meta.next_seq) {
            return Err(MetaError::NextSeqOutOfRange {
                next_seq: meta.next_seq,
                min,
                max,
            });
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOTS: u64 = 8;
    const RING: u64 = 4096;

    fn geometry() -> Geometry {
        Geometry::derive(1 << 20, SLOTS, RING, 4096).unwrap()
    }

    fn unit(seq: u64, offset: u64, len: u64) -> UnitRef {
        UnitRef {
            slot: seq & (SLOTS - 1),
            tag: Tag::valid(seq),
            offset,
            len,
        }
    }

    /// Units 3, 4, 5 back to back, written newest first.
    fn three_units() -> Meta {
        Meta {
            cursor: 48,
            next_seq: 6,
            commit_count: 5,
            units: vec![unit(5, 32, 16), unit(3, 0, 10), unit(4, 16, 16)],
        }
    }

    fn refusal(meta: &Meta) -> MetaError {
        Meta::decode(&meta.encode(), &geometry()).unwrap_err()
    }

    #[test]
    fn encoded_blob_is_the_header_then_one_record_per_unit() {
        let blob = three_units().encode();
        assert_eq!(blob.len(), 48 + 3 * 32);
        assert_eq!(&blob[..8], b"SHM-META");
        assert_eq!(word(&blob, header::UNIT_COUNT), 3);
        assert_eq!(word(&blob, header::LEN + unit::TAG), Tag::valid(5).0);
        assert_eq!(word(&blob, header::LEN + unit::SIZE + unit::LEN), 10);
    }

    #[test]
    fn decode_puts_the_units_in_sequence_order() {
        let decoded = Meta::decode(&three_units().encode(), &geometry()).unwrap();
        assert_eq!(
            decoded.units.iter().map(UnitRef::seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(
            (decoded.cursor, decoded.next_seq, decoded.commit_count),
            (48, 6, 5)
        );
    }

    #[test]
    fn blob_of_the_wrong_shape_is_refused_by_its_header() {
        let blob = three_units().encode();
        assert_eq!(Meta::peek(&blob[..40]), Err(MetaError::Length { len: 40 }));
        assert_eq!(
            Meta::peek(&blob[..blob.len() - 4]),
            Err(MetaError::Length { len: 140 })
        );
        assert_eq!(
            Meta::peek(&blob[..blob.len() - 32]),
            Err(MetaError::UnitCount { count: 3, len: 112 })
        );
        let mut foreign = blob.clone();
        foreign[..8].copy_from_slice(b"SHM-GENS");
        assert_eq!(
            Meta::peek(&foreign),
            Err(MetaError::ForeignMagic {
                found: u64::from_le_bytes(*b"SHM-GENS")
            })
        );
        let mut newer = blob;
        newer[header::VERSION..header::VERSION + 8].copy_from_slice(&2u64.to_le_bytes());
        assert_eq!(Meta::peek(&newer), Err(MetaError::UnknownVersion { found: 2 }));
    }

    #[test]
    fn units_the_region_could_not_hold_are_refused() {
        let mut m = three_units();
        m.units = (1..=9).map(|s| unit(s, (s - 1) * 8, 8)).collect();
        assert_eq!(refusal(&m), MetaError::TooManyUnits { count: 9, slots: 8 });

        let mut m = three_units();
        m.units[0].slot = SLOTS + 5;
        assert_eq!(refusal(&m), MetaError::SlotOutOfRange { slot: 13, slots: 8 });

        let mut m = three_units();
        m.units[0].tag = Tag::invalid(5);
        assert_eq!(
            refusal(&m),
            MetaError::NotValid {
                slot: 5,
                tag: Tag::invalid(5).0
            }
        );

        let mut m = three_units();
        m.units[0].slot = 4;
        assert_eq!(
            refusal(&m),
            MetaError::ImpossibleUnit {
                slot: 4,
                seq: 5,
                why: "sequence number does not belong to this slot"
            }
        );

        // Units 3 and 4 no longer meet: neither can be trusted, and the
        // refusal names the newer of the pair (the chain rule drops both).
        let mut m = three_units();
        m.units[1].len = 20;
        assert_eq!(refusal(&m), MetaError::BrokenChain { slot: 4, seq: 4 });
    }

    #[test]
    fn counters_a_client_would_refuse_are_refused() {
        let mut m = three_units();
        m.cursor = layout::limits::MAX_COUNTER + 1;
        assert_eq!(
            refusal(&m),
            MetaError::CursorOutOfRange {
                cursor: layout::limits::MAX_COUNTER + 1
            }
        );
        let mut m = three_units();
        m.commit_count = layout::limits::MAX_COUNTER + 1;
        assert_eq!(
            refusal(&m),
            MetaError::CommitCountOutOfRange {
                commit_count: layout::limits::MAX_COUNTER + 1
            }
        );
        let out_of_range = |next_seq| MetaError::NextSeqOutOfRange {
            next_seq,
            min: 6,
            max: 3 + SLOTS,
        };
        for next_seq in [5, 3 + SLOTS + 1] {
            let mut m = three_units();
            m.next_seq = next_seq;
            assert_eq!(refusal(&m), out_of_range(next_seq));
        }
        for next_seq in [6, 3 + SLOTS] {
            let mut m = three_units();
            m.next_seq = next_seq;
            assert!(Meta::decode(&m.encode(), &geometry()).is_ok(), "{next_seq}");
        }
    }
}

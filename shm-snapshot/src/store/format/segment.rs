//! A segment's header, the first bytes of every `seg-<seq>.log` (STORE.md,
//! "Segment header"): its byte offsets and its decoded form.

use super::{Defect, HASH_LEN, SEGMENT_MAGIC, VERSION as FORMAT_VERSION, get, hash_at, put, show_tag};

/// [`super::SEGMENT_MAGIC`].
pub const MAGIC: usize = 0;
/// [`super::VERSION`].
pub const VERSION: usize = MAGIC + 8;
/// The segment's sequence number.
pub const SEQ: usize = VERSION + 8;
/// Creation time, milliseconds since the Unix epoch.
pub const CREATED_MS: usize = SEQ + 8;
/// BLAKE3 of the bytes before it.
pub const HASH: usize = CREATED_MS + 8;
/// Length of the header; the first record starts here.
pub const LEN: usize = HASH + HASH_LEN;

const _: () = assert!(LEN == 64);

/// The decoded header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's sequence number.
    pub seq: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl SegmentHeader {
    /// Encodes the header, its hash included.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[MAGIC..][..8].copy_from_slice(&SEGMENT_MAGIC);
        put(&mut b, VERSION, FORMAT_VERSION);
        put(&mut b, SEQ, self.seq);
        put(&mut b, CREATED_MS, self.created_ms);
        let hash = blake3::hash(&b[..HASH]);
        b[HASH..].copy_from_slice(hash.as_bytes());
        b
    }

    /// Decodes and checks a segment header: magic, version, hash, and a
    /// sequence number of at least 1.
    pub fn decode(b: &[u8; LEN]) -> Result<SegmentHeader, Defect> {
        let magic = &b[MAGIC..][..8];
        if magic != SEGMENT_MAGIC {
            return Err(Defect::new(
                "segment magic",
                0,
                show_tag(&SEGMENT_MAGIC),
                show_tag(magic),
            ));
        }
        let version = get(b, VERSION);
        if version != FORMAT_VERSION {
            return Err(Defect::new(
                "segment version",
                VERSION as u64,
                format!("{FORMAT_VERSION} (the version this build reads)"),
                version,
            ));
        }
        let stored = hash_at(b, HASH);
        let computed = blake3::hash(&b[..HASH]);
        if stored != computed {
            return Err(Defect::new(
                "segment header_hash",
                HASH as u64,
                stored.to_hex(),
                format!("{} (the hash of the header's bytes)", computed.to_hex()),
            ));
        }
        let seq = get(b, SEQ);
        if seq == 0 {
            return Err(Defect::new("segment seq", SEQ as u64, "at least 1", 0));
        }
        Ok(SegmentHeader {
            seq,
            created_ms: get(b, CREATED_MS),
        })
    }
}

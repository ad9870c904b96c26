//! Making and uploading one piece: a segment of the deltas that continue
//! the replica, or a base, each record checked whole first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use shm_snapshot::store::RecordPlace;
use shm_snapshot::store::format::check_record;
use shm_snapshot::store::format::segment::SegmentHeader;
use tracing::warn;

use super::worker::Worker;
use super::{Local, MAX_PIECE_BYTES};
use crate::replica::layout::{Kind, Piece};
use crate::replica::lease::now_ms;

impl Worker {
    /// Uploads a segment piece of `chain`: a segment header and the
    /// records, each checked whole first (a record that does not check is
    /// left out with the ones after it: nothing the commit point names may
    /// fail to verify). A first record past [`MAX_PIECE_BYTES`] (a program
    /// that rewrote most of a large region) goes up alone, streamed.
    pub(super) fn segment_piece(&mut self, chain: &[u64]) -> Result<(Piece, Vec<u64>), String> {
        let seq = self.next_seq;
        let header = SegmentHeader {
            seq,
            created_ms: now_ms(),
        };
        let first = &self.local[&chain[0]];
        let first_delta = first.places.delta.clone().expect("a chain holds deltas");
        if first_delta.len > MAX_PIECE_BYTES {
            let file = File::open(&first_delta.path)
                .map_err(|e| format!("reading {}: {e}", first_delta.path.display()))?;
            let name = Piece::segment_name(seq, &self.me);
            let hash = self
                .client
                .put_from_file(
                    &name,
                    &header.encode(),
                    &file,
                    first_delta.offset,
                    first_delta.len,
                )
                .map_err(|e| e.0)?;
            self.count_put(64 + first_delta.len);
            let piece = self.describe_segment(name, seq, &chain[..1], 64 + first_delta.len, hash);
            return Ok((piece, chain[..1].to_vec()));
        }
        let mut bytes =
            Vec::with_capacity(64 + MAX_PIECE_BYTES.min(first_delta.len * chain.len() as u64) as usize);
        bytes.extend_from_slice(&header.encode());
        let mut files = Files::default();
        let mut taken = 0;
        for &n in chain {
            let d = self.local[&n]
                .places
                .delta
                .as_ref()
                .expect("a chain holds deltas");
            let start = bytes.len();
            files.read(d, &mut bytes)?;
            match check_record(&bytes[start..]) {
                Ok(h) if h.number == n && h.parent == d.parent => taken += 1,
                found => {
                    bytes.truncate(start);
                    let why = match found {
                        Err(defect) => defect.to_string(),
                        Ok(h) => format!("it holds generation {} on {}", h.number, h.parent),
                    };
                    warn!(
                        generation = n,
                        "replica: the local record of generation {n} does not check ({why}); it is not uploaded, and the replica waits for a newer base"
                    );
                    // Nothing that builds on it goes up either.
                    self.local.retain(|&g, _| g < n);
                    break;
                }
            }
        }
        if taken == 0 {
            return Err(format!(
                "the local record of generation {} does not check",
                chain[0]
            ));
        }
        let hash = blake3::hash(&bytes);
        let len = bytes.len() as u64;
        let name = Piece::segment_name(seq, &self.me);
        self.client.put(&name, Bytes::from(bytes)).map_err(|e| e.0)?;
        self.count_put(len);
        let piece = self.describe_segment(name, seq, &chain[..taken], len, hash);
        Ok((piece, chain[..taken].to_vec()))
    }

    fn describe_segment(
        &self,
        name: String,
        seq: u64,
        chain: &[u64],
        bytes: u64,
        hash: blake3::Hash,
    ) -> Piece {
        let first = &self.local[&chain[0]].places;
        let last = &self.local[&chain[chain.len() - 1]].places;
        Piece {
            name,
            kind: Kind::Segment,
            seq,
            first: first.number,
            last: last.number,
            count: chain.len() as u64,
            parent: first.delta.as_ref().map_or(0, |d| d.parent),
            last_created_ms: last.created_ms,
            bytes,
            blake3: hash.to_hex().to_string(),
        }
    }

    /// Uploads a base piece: the local base file of `base`, whole; checked
    /// first when it is read into memory (up to [`MAX_PIECE_BYTES`]), sent
    /// in parts past that (the store checked every page against its hash
    /// when it built the base).
    pub(super) fn base_piece(&self, base: &Local) -> Result<(Piece, Vec<u64>), String> {
        let place = base.places.base.as_ref().expect("chosen for its base");
        let number = base.places.number;
        let name = Piece::base_name(number, &self.me);
        let hash = if place.len <= MAX_PIECE_BYTES {
            let mut bytes = Vec::with_capacity(place.len as usize);
            Files::default().read(place, &mut bytes)?;
            match check_record(&bytes) {
                Ok(h) if h.number == number && h.parent == 0 => {}
                Ok(h) => {
                    return Err(format!(
                        "the local base of generation {number} holds generation {}",
                        h.number
                    ));
                }
                Err(defect) => {
                    return Err(format!(
                        "the local base of generation {number} does not check ({defect})"
                    ));
                }
            }
            let hash = blake3::hash(&bytes);
            self.client.put(&name, Bytes::from(bytes)).map_err(|e| e.0)?;
            hash
        } else {
            let file =
                File::open(&place.path).map_err(|e| format!("reading {}: {e}", place.path.display()))?;
            self.client
                .put_from_file(&name, &[], &file, place.offset, place.len)
                .map_err(|e| e.0)?
        };
        self.count_put(place.len);
        let piece = Piece {
            name,
            kind: Kind::Base,
            seq: 0,
            first: number,
            last: number,
            count: 1,
            parent: 0,
            last_created_ms: base.places.created_ms,
            bytes: place.len,
            blake3: hash.to_hex().to_string(),
        };
        // Every generation up to it is in the replica now, through it.
        let covered = self.local.range(..=number).map(|(&n, _)| n).collect();
        Ok((piece, covered))
    }
}

/// Open local files, so a segment's records are read through one handle.
#[derive(Default)]
struct Files {
    open: Vec<(PathBuf, File)>,
}

impl Files {
    /// Appends the record at `place` to `out`.
    fn read(&mut self, place: &RecordPlace, out: &mut Vec<u8>) -> Result<(), String> {
        let i = match self.open.iter().position(|(p, _)| *p == place.path) {
            Some(i) => i,
            None => {
                let f =
                    File::open(&place.path).map_err(|e| format!("reading {}: {e}", place.path.display()))?;
                self.open.push((place.path.clone(), f));
                self.open.len() - 1
            }
        };
        let start = out.len();
        out.resize(start + place.len as usize, 0);
        self.open[i]
            .1
            .read_exact_at(&mut out[start..], place.offset)
            .map_err(|e| format!("reading {} at {}: {e}", place.path.display(), place.offset))
    }
}

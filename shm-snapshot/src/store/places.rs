//! What a reader that copies records whole needs from the writer: where
//! each generation's records are, the bases built since it last asked, and
//! a hold that keeps retention from removing the records it has not copied
//! yet (a replica's uploader; STORE.md, "Retention").

use std::ops::RangeBounds;
use std::path::PathBuf;

use super::names::{self, Name};
use super::open::{Entry, Store};
use super::read::Place;

/// One record of a generation, as its file holds it: `len` bytes from
/// `offset`. A base file is a record that is the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordPlace {
    /// The segment or base file.
    pub path: PathBuf,
    /// Where the record starts.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The generation it changes (0 for a full record).
    pub parent: u64,
}

/// Where a generation's records are: its delta record in a segment, its
/// base file, or both (a base built of a generation already in the log).
/// Records in files written by version 2 are not listed: they cannot be
/// copied into a segment or a base file of version 3.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordPlaces {
    /// The generation.
    pub number: u64,
    /// Its region's length in bytes.
    pub region_len: u64,
    /// When writing it began, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its delta record, in a segment.
    pub delta: Option<RecordPlace>,
    /// Its base file.
    pub base: Option<RecordPlace>,
}

fn place(p: &Place, whole_file: bool) -> Option<RecordPlace> {
    let name = p.path.file_name()?;
    let ours = match names::classify(name) {
        Name::Base(_) => whole_file,
        Name::Segment(_) => !whole_file,
        _ => false,
    };
    (ours && p.whole_file == whole_file).then(|| RecordPlace {
        path: p.path.clone(),
        offset: p.offset,
        len: p.len,
        parent: p.header.parent,
    })
}

fn places(number: u64, e: &Entry) -> Option<RecordPlaces> {
    let any = e.place()?;
    let delta = e.delta.as_ref().and_then(|p| place(p, false));
    let base = e.full.as_ref().and_then(|p| place(p, true));
    (delta.is_some() || base.is_some()).then_some(RecordPlaces {
        number,
        region_len: any.header.region_len,
        created_ms: any.header.created_ms,
        delta,
        base,
    })
}

impl Store {
    /// Where the records of the generations in `numbers` are, oldest
    /// first; generations whose records are in no file of this version
    /// are left out.
    pub fn record_places(&self, numbers: impl RangeBounds<u64>) -> Vec<RecordPlaces> {
        self.entries
            .range(numbers)
            .filter_map(|(&n, e)| places(n, e))
            .collect()
    }

    /// Keeps every record of generation `from` and newer, and the chain of
    /// `from`, from retention until the hold moves (`None`: no hold). A
    /// reader copying records in the background holds what it has not
    /// copied yet; it must not read a record older than its hold.
    pub fn hold(&mut self, from: Option<u64>) {
        self.held = from;
    }

    /// The generation [`Store::hold`] keeps, with everything newer.
    pub fn held(&self) -> Option<u64> {
        self.held
    }

    /// Makes the next generation a full one (a base file, which depends on
    /// nothing before it) numbered above `number`: what a store does when
    /// another copy of its history (a replica) holds generations up to
    /// `number` that it does not, so the two never give one number to
    /// different generations.
    pub fn start_over_after(&mut self, number: u64) {
        self.next_number = self.next_number.max(number.saturating_add(1));
        self.current = None;
        self.new_lineage();
    }

    /// Generations whose base file joined the store since the last call,
    /// oldest first, while a [`Store::hold`] is set: bases built in the
    /// background from the log. (A full
    /// generation written in place of a delta is reported as it becomes
    /// durable, by [`Store::take_synced`].)
    pub fn take_new_bases(&mut self) -> Vec<u64> {
        self.poll_background();
        std::mem::take(&mut self.new_bases)
    }
}

/// The file name of segment `seq` in a store directory.
pub fn segment_file_name(seq: u64) -> String {
    names::segment(seq)
}

/// The file name of generation `number`'s base file in a store directory.
pub fn base_file_name(number: u64) -> String {
    names::base(number)
}

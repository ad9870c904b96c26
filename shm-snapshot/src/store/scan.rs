//! The scan of a store's directory: the headers of base files and version
//! 2 files, the record skeletons of every segment, into the listing the
//! store reports and loads from (STORE.md, "The directory", "A segment").

use std::collections::BTreeMap;
use std::path::Path;

use super::error::StoreError;
use super::format::{self, Defect, Header};
use super::names::{self, Name};
use super::open::{Entry, SegmentEntry, Store};
use super::read::{Place, read_header, scan_segment};

impl Store {
    /// Re-reads the directory: the headers of base files and version 2
    /// files, and the record skeletons of every segment. Reads only:
    /// nothing is created, changed or removed.
    ///
    /// A file listed but gone when read, or a listing that changed while
    /// the files were read, is an owner's retention at work, which removes
    /// files only once a newer base makes them unnecessary: the directory
    /// is read again, so that base (made after the first listing) is seen
    /// too and the chains it ends are whole.
    pub(crate) fn rescan(&mut self) -> Result<(), StoreError> {
        for _ in 1..RESCANS {
            if !self.scan_once()? {
                return Ok(());
            }
        }
        self.scan_once().map(|_| ())
    }

    /// One listing and reading of the directory; whether a file listed was
    /// gone when read, or the listing changed meanwhile.
    fn scan_once(&mut self) -> Result<bool, StoreError> {
        let mut vanished = false;
        let mut listed = self.list()?;
        listed.sort_unstable();
        let mut entries: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut segments = BTreeMap::new();
        let mut seg_names = Vec::new();
        let mut newest = 0u64;
        for name in &listed {
            let (number, legacy) = match names::classify(name) {
                Name::Segment(seq) => {
                    seg_names.push(seq);
                    continue;
                }
                Name::Base(n) => (n, false),
                Name::Legacy(n) => (n, true),
                _ => continue,
            };
            newest = newest.max(number);
            let path = self.dir.join(name);
            let read = read_header(self.io.as_mut(), &path).and_then(|(header, size)| {
                whole_file_rule(&path, number, legacy, &header)?;
                Ok((header, size))
            });
            let entry = entries.entry(number).or_default();
            match read {
                Ok((header, size)) => {
                    let place = Place {
                        path,
                        offset: 0,
                        len: size,
                        header,
                        whole_file: true,
                    };
                    if header.is_base() {
                        entry.full = Some(place);
                    } else {
                        entry.delta = Some(place);
                    }
                }
                // Removed since the listing (an owner pruning it): gone.
                Err(problem) if problem.is_vanished() => vanished = true,
                Err(problem) => {
                    // What is on disk, for reports: a header that does not
                    // verify says nothing of the file's size.
                    let size = self.io.open_read(&path).map_or(0, |f| f.len);
                    entry.problem = Some((path, size, problem));
                }
            }
        }
        seg_names.sort_unstable();
        // Read newest first, then taken oldest first. A segment only grows,
        // and every record of a newer segment was appended after every
        // record of an older one: reading the older ones last finds every
        // record a newer one's chain needs, even while an owner appends.
        let mut scans: Vec<_> = seg_names
            .iter()
            .rev()
            .map(|&seq| {
                let path = self.dir.join(names::segment(seq));
                let scan = scan_segment(self.io.as_mut(), &path, seq);
                (seq, path, scan)
            })
            .collect();
        scans.reverse();
        for (seq, path, scan) in scans {
            self.next_seq = self.next_seq.max(seq.saturating_add(1));
            let scan = match scan {
                Ok(scan) => scan,
                Err(e) if e.is_vanished() => {
                    vanished = true;
                    continue;
                }
                Err(e) => {
                    segments.insert(
                        seq,
                        SegmentEntry {
                            len: self.io.open_read(&path).map_or(0, |f| f.len),
                            path,
                            numbers: Vec::new(),
                            tail: Some((0, e)),
                        },
                    );
                    continue;
                }
            };
            let mut tail = scan.tail;
            let mut numbers = Vec::new();
            for place in scan.records {
                let number = place.header.number;
                newest = newest.max(number);
                let entry = entries.entry(number).or_default();
                if entry.delta.is_some() {
                    // Generations are unique: a number read before ends
                    // this segment's readable part.
                    tail = Some((
                        place.offset,
                        StoreError::corrupt(
                            &path,
                            Defect::new(
                                "number",
                                place.offset + format::header::NUMBER as u64,
                                "a number no other record holds",
                                format!("{number}, which an earlier record holds"),
                            ),
                        ),
                    ));
                    break;
                }
                numbers.push(number);
                entry.delta = Some(place);
            }
            if let Some(n) = scan.tail_number {
                newest = newest.max(n);
            }
            segments.insert(
                seq,
                SegmentEntry {
                    path,
                    len: scan.len,
                    numbers,
                    tail,
                },
            );
        }
        entries.retain(|_, e| e.delta.is_some() || e.full.is_some() || e.problem.is_some());
        self.next_number = self.next_number.max(newest.saturating_add(1));
        self.entries = entries;
        self.segments = segments;
        self.listed = listed;
        Ok(vanished || self.listing_changed()?)
    }

    /// Whether the directory's entries differ from those the last scan
    /// listed: files an owner made or removed since.
    pub(crate) fn listing_changed(&mut self) -> Result<bool, StoreError> {
        let mut now = self.list()?;
        now.sort_unstable();
        Ok(now != self.listed)
    }
}

/// How many times a scan lists the directory when files keep vanishing
/// between its listing and their reading: an owner's retention removes a
/// few files at a time, after a base that takes far longer to build than a
/// scan takes.
const RESCANS: usize = 4;

/// Checks what a file that holds one record must: the number of its name,
/// and the kind its name says (STORE.md, "A base file", "Stores written by
/// version 2").
fn whole_file_rule(path: &Path, number: u64, legacy: bool, h: &Header) -> Result<(), StoreError> {
    if h.number != number {
        return Err(StoreError::corrupt(
            path,
            Defect::new(
                "number",
                format::header::NUMBER as u64,
                format!("{number} (the number in the file name)"),
                h.number,
            ),
        ));
    }
    let version = if legacy {
        format::LEGACY_VERSION
    } else {
        format::VERSION
    };
    if h.version != version {
        return Err(StoreError::corrupt(
            path,
            Defect::new(
                "version",
                format::header::VERSION as u64,
                format!("{version} (what the file name says)"),
                h.version,
            ),
        ));
    }
    if !legacy && !h.is_base() {
        return Err(StoreError::corrupt(
            path,
            Defect::new(
                "parent",
                format::header::PARENT as u64,
                "0 (a base file holds a full image)",
                h.parent,
            ),
        ));
    }
    Ok(())
}

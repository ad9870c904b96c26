//! Checking every generation of a store: each file read whole and verified
//! against its hashes, then each chain checked from those results. Only
//! reads, so it works on a store another process owns and writes.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::StoreError;
use super::format::{PAGE_BYTES, VERSION};
use super::names;
use super::open::{GenerationInfo, Store};
use super::read::{ChunkSink, Place, Records, read_header};

/// What [`Store::check_all`] found of one generation.
#[derive(Debug)]
pub enum Condition {
    /// The file verifies, and so does every generation its chain needs: it
    /// can be restored.
    Intact,
    /// The file itself does not verify (or cannot be read).
    Damaged(StoreError),
    /// The file verifies, but a generation its chain needs is missing or
    /// does not verify.
    BrokenChain(StoreError),
    /// The file was removed while the store was being checked: in a store
    /// an owner is writing, a generation it pruned.
    Vanished,
}

impl Condition {
    /// Whether the generation can be restored.
    pub fn is_intact(&self) -> bool {
        matches!(self, Condition::Intact)
    }
}

/// One generation as [`Store::check_all`] found it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Checked {
    /// Its number.
    pub number: u64,
    /// What its header says; `None` when the header does not verify.
    pub info: Option<GenerationInfo>,
    /// The file's size in bytes (0 if it could not be opened).
    pub bytes: u64,
    /// The meta blob, when the file itself verified.
    pub meta: Option<Vec<u8>>,
    /// The first page of the generation's image (its chain applied), at most
    /// [`PAGE_BYTES`] long, when it is [`Condition::Intact`]: what a caller
    /// that judges a generation by its region's header (and its meta) needs,
    /// without loading the whole image.
    pub first_page: Option<Vec<u8>>,
    /// Whether it can be restored, and if not why.
    pub condition: Condition,
    /// Its base file, when it has one besides its delta record and that
    /// base file does not verify: the generation is judged by its record
    /// and chain (as a load falls back to them), and this is the damage
    /// the base file holds all the same.
    pub damaged_base: Option<StoreError>,
}

/// Pages read while checking go nowhere once hashed, but the image's first
/// page, which is kept once its record verified.
struct Discard {
    page: Vec<u8>,
    /// The first page as read, not verified yet.
    first_read: Vec<u8>,
    /// The first page of the last record holding it that verified.
    first: Option<Vec<u8>>,
}

impl ChunkSink for Discard {
    fn page(&mut self, index: u64, page: u64, len: usize, _at: u64) -> &mut [u8] {
        // The reader never asks for more than a page.
        if (index, page) == (0, 0) {
            self.first_read.resize(len, 0);
            return &mut self.first_read[..];
        }
        &mut self.page[..len]
    }

    fn verified(&mut self, index: u64, pages: u64, _hashes: &[blake3::Hash]) {
        if index == 0 && pages & 1 == 1 {
            self.first = Some(self.first_read.clone());
        }
    }
}

impl Store {
    /// Reads every generation file present, whole, checking every field and
    /// hash (STORE.md, "Reading a generation"), then checks each delta's
    /// chain against those results: oldest first, one entry per generation
    /// file. Reads each file once, whatever the chains' lengths.
    ///
    /// Reads only: on a store another process owns, a generation removed
    /// while it is checked is reported [`Condition::Vanished`], not damaged.
    /// The owner removes a file only once a newer base makes it
    /// unnecessary, and that base may have been made after the scan: a
    /// delta whose parent is missing or vanished is whole through the base
    /// of its parent, or its own, if one is there by now.
    pub fn check_all(&mut self) -> Result<Vec<Checked>, StoreError> {
        self.rescan()?;
        let mut discard = Discard {
            page: vec![0; PAGE_BYTES as usize],
            first_read: Vec::new(),
            first: None,
        };
        let mut checked: BTreeMap<u64, Checked> = BTreeMap::new();
        let numbers: Vec<u64> = self.entries.keys().copied().collect();
        // Records in number order follow each other in their segments: one
        // sequential read of each.
        let mut records = Records::default();
        for number in numbers {
            let entry = &self.entries[&number];
            let info = entry.info(number);
            let (full, delta) = (entry.full.clone(), entry.delta.clone());
            let problem_path = entry.problem.as_ref().map(|(p, size, _)| (p.clone(), *size));
            let bytes = entry
                .place()
                .map_or_else(|| problem_path.as_ref().map_or(0, |p| p.1), |p| p.len);
            // A base file, if it verifies, is the generation whole.
            let mut full_error = None;
            if let Some(place) = &full {
                discard.first = None;
                match records.read(self.io.as_mut(), place, &mut discard) {
                    Ok(meta) => {
                        let len = place.header.region_len.min(PAGE_BYTES) as usize;
                        let first_page = Some(discard.first.take().unwrap_or_else(|| vec![0; len]));
                        checked.insert(
                            number,
                            Checked {
                                number,
                                info,
                                bytes,
                                meta: Some(meta),
                                first_page,
                                condition: Condition::Intact,
                                damaged_base: None,
                            },
                        );
                        continue;
                    }
                    Err(e) => full_error = Some(e),
                }
            }
            let Some(place) = delta else {
                let error = match (full_error, problem_path) {
                    (Some(e), _) => e,
                    // Read it again: it may have vanished since the scan.
                    (None, Some((path, _))) => match read_header(self.io.as_mut(), &path) {
                        Err(e) => e,
                        Ok(_) => self.entry_problem(number),
                    },
                    (None, None) => unreachable!("an entry has a place or a problem"),
                };
                let condition = if error.is_vanished() {
                    Condition::Vanished
                } else {
                    Condition::Damaged(error)
                };
                checked.insert(
                    number,
                    Checked {
                        number,
                        info,
                        bytes,
                        meta: None,
                        first_page: None,
                        condition,
                        damaged_base: None,
                    },
                );
                continue;
            };
            discard.first = None;
            let read = records.read(self.io.as_mut(), &place, &mut discard);
            let (meta, condition, damaged_base) = match read {
                // A base file pruned while it was read is not damage.
                Ok(meta) => (
                    Some(meta),
                    Condition::Intact,
                    full_error.filter(|e| !e.is_vanished()),
                ),
                Err(e) if e.is_vanished() => (None, Condition::Vanished, None),
                Err(e) => (None, Condition::Damaged(full_error.unwrap_or(e)), None),
            };
            let first_page = discard.first.take();
            let mut c = Checked {
                number,
                info,
                bytes,
                meta,
                first_page,
                condition,
                damaged_base,
            };
            let h = place.header;
            // The parent's file is gone: the base the owner made before
            // removing it, if it verifies, stands for the parent; or the
            // generation's own base stands for it whole.
            let parent_gone = checked
                .get(&h.parent)
                .is_none_or(|p| matches!(p.condition, Condition::Vanished));
            let mut from_parent_base = None;
            if matches!(c.condition, Condition::Intact) && parent_gone {
                if let Some((_, first)) = self.base_now(h.parent, h.region_len, &mut discard) {
                    from_parent_base = Some(first);
                } else if let Some((meta, first)) = self.base_now(number, h.region_len, &mut discard) {
                    c.meta = Some(meta);
                    c.first_page = Some(first);
                    checked.insert(number, c);
                    continue;
                }
            }
            if matches!(c.condition, Condition::Intact) && from_parent_base.is_none() {
                let broken = |why: String| {
                    Condition::BrokenChain(StoreError::BrokenChain {
                        path: place.path.clone(),
                        needs: h.parent,
                        why,
                    })
                };
                c.condition = match checked.get(&h.parent) {
                    None => broken("is missing".to_owned()),
                    Some(p) => match (&p.condition, &p.info) {
                        (Condition::Intact, Some(pi)) if pi.region_len != h.region_len => broken(format!(
                            "holds a region of {} bytes, not {}",
                            pi.region_len, h.region_len
                        )),
                        (Condition::Intact, _) => Condition::Intact,
                        (Condition::Vanished, _) => broken("was removed while the store was read".to_owned()),
                        (Condition::Damaged(e) | Condition::BrokenChain(e), _) => {
                            broken(format!("does not verify: {e}"))
                        }
                    },
                };
            }
            c.first_page = match &c.condition {
                Condition::Intact => {
                    // A page a delta does not hold is its parent's.
                    let inherited = from_parent_base
                        .or_else(|| checked.get(&h.parent).and_then(|p| p.first_page.clone()));
                    let len = h.region_len.min(PAGE_BYTES) as usize;
                    Some(c.first_page.take().or(inherited).unwrap_or_else(|| vec![0; len]))
                }
                _ => None,
            };
            checked.insert(number, c);
        }
        // A generation found unusable whose file is gone by now was pruned
        // while it was read (an owner removes newest first, so a delta goes
        // before the generations it needs). Asked of the store's I/O layer,
        // which is the only file system the store knows.
        for c in checked.values_mut() {
            if !c.condition.is_intact()
                && let Some(path) = self.entries.get(&c.number).and_then(|e| e.path())
                && self
                    .io
                    .open_read(path)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            {
                c.condition = Condition::Vanished;
            }
        }
        Ok(checked.into_values().collect())
    }
}

impl Store {
    /// The base file of generation `number` as it is now, if it is there,
    /// is a base of `region_len` bytes and verifies whole: its meta blob
    /// and the first page of its image.
    fn base_now(
        &mut self,
        number: u64,
        region_len: u64,
        discard: &mut Discard,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let path = self.dir.join(names::base(number));
        let (header, len) = read_header(self.io.as_mut(), &path).ok()?;
        let fits = header.number == number
            && header.version == VERSION
            && header.is_base()
            && header.region_len == region_len;
        if !fits {
            return None;
        }
        let place = Place {
            path,
            offset: 0,
            len,
            header,
            whole_file: true,
        };
        discard.first = None;
        let meta = Records::default().read(self.io.as_mut(), &place, discard).ok()?;
        let first = discard
            .first
            .take()
            .unwrap_or_else(|| vec![0; region_len.min(PAGE_BYTES) as usize]);
        Some((meta, first))
    }

    /// Why the header of generation `number` did not verify when scanned,
    /// taken from its entry (the next scan finds it again).
    fn entry_problem(&mut self, number: u64) -> StoreError {
        let e = self
            .entries
            .get_mut(&number)
            .expect("numbers come from the entries");
        match e.problem.take() {
            Some((_, _, problem)) => problem,
            None => StoreError::Corrupt {
                path: e.path().map(Path::to_owned).unwrap_or_default(),
                what: "header did not verify".to_owned(),
            },
        }
    }
}

//! The writer's side of an open store: the segment being appended to, the
//! sync thread, the spare segment, bases in the background, and
//! retention's removals (STORE.md, "Persisting a delta" to "Retention").

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use super::background::{BaseJob, BuiltBase, Done, Job, Jobs, Spare};
use super::error::StoreError;
use super::format::segment;
use super::io::StoreFile;
use super::names;
use super::open::{Loc, SegmentEntry, Store};
use super::read::Place;
use super::sync::{Synced, Syncer};

/// What the owner of a store keeps to write: made with the first
/// generation written.
pub(crate) struct Writer {
    /// The segment records are appended to; `None` until the next delta
    /// starts one (at first, after a base job began, or after a failure
    /// closed the previous one).
    segment: Option<Active>,
    syncer: Syncer,
    jobs: Jobs,
    /// A segment made ahead of time, and one being made.
    spare: Option<Spare>,
    spare_pending: Option<u64>,
    /// The sequence number of the newest segment records went to: a
    /// segment taken later must have a larger one.
    newest_seq: u64,
    building: Option<Building>,
    /// Retention ran since a base finished, but kept the files before that
    /// base for generations older than it: it runs again once the newest
    /// `keep` generations are all past the base.
    retain_after: Option<u64>,
    /// No delta written yet in this opening: the first one runs retention,
    /// for the files an earlier opening left (its spare segment, and what
    /// a base it finished but never picked up makes unnecessary).
    first_delta: bool,
    /// Reports since the last generation.
    pruned: usize,
    prune_errors: Vec<StoreError>,
    base_errors: Vec<StoreError>,
}

/// The segment being appended to.
struct Active {
    seq: u64,
    path: PathBuf,
    file: Box<dyn StoreFile>,
    /// Its length: where the next record goes.
    len: u64,
}

/// A base being built in the background.
struct Building {
    number: u64,
    /// Files with an id below this one hold nothing newer than the base.
    cut: u32,
    /// The [`Store::lineage`] when it began: the base's pages replace the
    /// current image's locations only if the image descends from it.
    lineage: u64,
}

impl Store {
    /// The writer, made now if there is none.
    fn writer(&mut self) -> &mut Writer {
        if self.writer.is_none() {
            let o = self.options;
            self.writer = Some(Writer {
                segment: None,
                syncer: Syncer::new(o.fsync, o.background),
                jobs: Jobs::new(self.io.fork(), self.dir.clone(), o.fsync, o.background),
                spare: None,
                spare_pending: None,
                newest_seq: 0,
                building: None,
                retain_after: None,
                first_delta: true,
                pruned: 0,
                prune_errors: Vec::new(),
                base_errors: Vec::new(),
            });
        }
        self.writer.as_mut().expect("made above")
    }

    /// Reports a sync that failed since the last call, once, and starts
    /// over: the segment is closed, and the next generation is a full one,
    /// which depends on nothing unacknowledged (STORE.md, "When a step
    /// fails").
    pub(crate) fn check_sync(&mut self) -> Result<(), StoreError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        match w.syncer.take_failure() {
            Some(e) => Err(self.sync_failed(e)),
            None => Ok(()),
        }
    }

    fn sync_failed(&mut self, e: io::Error) -> StoreError {
        let (fsync, background) = (self.options.fsync, self.options.background);
        let w = self.writer();
        let path = w.segment.as_ref().map(|s| s.path.clone());
        let failed = std::mem::replace(&mut w.syncer, Syncer::new(fsync, background));
        w.syncer.take_over(failed);
        self.current = None;
        self.new_lineage();
        let path = path.unwrap_or_else(|| self.dir.clone());
        StoreError::io(
            "syncing the segment (generations since the last acknowledged one may be lost)",
            path,
            e,
        )
    }

    /// The current image was replaced other than by a delta on it (a load,
    /// a full generation, a failure): a new lineage, and the segment being
    /// appended to is closed, since the next delta's parent is not its last
    /// record (STORE.md, "A segment", rule 3). The next delta starts a new
    /// segment.
    pub(crate) fn new_lineage(&mut self) {
        self.lineage += 1;
        if let Some(w) = self.writer.as_mut() {
            w.segment = None;
        }
    }

    /// Picks up the work the background finished: a spare segment, a base,
    /// removals.
    pub(crate) fn poll_background(&mut self) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        for done in w.jobs.take_done() {
            let w = self.writer.as_mut().expect("checked above");
            match done {
                // A spare that comes after a segment was made on the spot
                // (it was late) has an older sequence number than that
                // segment: taking it later would put newer records in an
                // older segment, against the log's order. It goes, empty,
                // and a new one is asked for.
                Done::Spare(Ok(spare)) if spare.seq < w.newest_seq => {
                    w.spare_pending = None;
                    w.jobs.submit(Job::Remove(vec![spare.path]));
                    self.ask_spare();
                }
                Done::Spare(Ok(spare)) => {
                    w.spare = Some(spare);
                    w.spare_pending = None;
                }
                Done::Spare(Err(e)) => {
                    w.spare_pending = None;
                    w.base_errors.push(e);
                }
                Done::Removed(errors) => w.prune_errors.extend(errors),
                Done::Base(built) => {
                    let building = w.building.take();
                    match built {
                        Ok(built) => self.base_done(built, building),
                        Err(e) => self.writer().base_errors.push(e),
                    }
                }
            }
        }
    }

    /// A base finished: pages whose newest bytes were in files it covers
    /// now point into it, it joins the store, and retention runs.
    fn base_done(&mut self, built: BuiltBase, building: Option<Building>) {
        let id = self.files.id(&built.path);
        if let (Some(b), Some(c)) = (building, self.current.as_mut())
            && b.lineage == self.lineage
            && b.number == built.number
            && c.locs.len() == built.page_offsets.len()
        {
            for (page, &offset) in built.page_offsets.iter().enumerate() {
                let loc = c.locs.get(page);
                if loc.file != 0 && loc.file < b.cut {
                    let moved = if offset == 0 {
                        Loc::ZERO
                    } else {
                        Loc { file: id, offset }
                    };
                    c.locs.set(page, moved);
                }
            }
            c.base_bytes = built.len;
        }
        self.entries.entry(built.number).or_default().full = Some(Place {
            path: built.path,
            offset: 0,
            len: built.len,
            header: built.header,
            whole_file: true,
        });
        // Only a reader that holds records asks which bases came.
        if self.held.is_some() {
            self.new_bases.push(built.number);
        }
        self.writer().retain_after = Some(built.number);
        self.retain();
    }

    /// Runs retention after the first delta of this opening, and again when
    /// the newest `keep` generations have all passed the newest base since
    /// it last ran.
    pub(crate) fn retain_when_due(&mut self) {
        if std::mem::take(&mut self.writer().first_delta) {
            self.retain();
            return;
        }
        let Some(base) = self.writer.as_ref().and_then(|w| w.retain_after) else {
            return;
        };
        let oldest_kept = self.entries.keys().rev().nth(self.options.keep - 1);
        if oldest_kept.is_some_and(|&n| n > base) {
            self.writer().retain_after = None;
            self.retain();
        }
    }

    /// Asks the background for a spare segment, unless one is ready or
    /// being made.
    fn ask_spare(&mut self) {
        let w = self.writer();
        if w.spare.is_some() || w.spare_pending.is_some() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let temp = self.temp_path(|pid, n| names::segment_temp(seq, pid, n));
        let w = self.writer();
        w.spare_pending = Some(seq);
        w.jobs.submit(Job::Spare { seq, temp });
    }

    /// Starts a segment (the spare, or one made now) unless one is open.
    fn open_segment(&mut self) -> Result<(), StoreError> {
        self.poll_background();
        if self.writer().segment.is_some() {
            return Ok(());
        }
        let spare = match self.writer().spare.take() {
            Some(spare) => spare,
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let temp = self.temp_path(|pid, n| names::segment_temp(seq, pid, n));
                Jobs::make_segment_now(self.io.as_mut(), &self.dir, self.options.fsync, seq, temp)?
            }
        };
        let handle = spare
            .file
            .try_clone()
            .map_err(|e| StoreError::io("opening the new segment", &spare.path, e))?;
        self.files.id(&spare.path);
        self.segments.insert(
            spare.seq,
            SegmentEntry {
                path: spare.path.clone(),
                len: segment::LEN as u64,
                numbers: Vec::new(),
                tail: None,
            },
        );
        let w = self.writer();
        w.newest_seq = w.newest_seq.max(spare.seq);
        w.syncer.add_segment(spare.seq, handle);
        w.segment = Some(Active {
            seq: spare.seq,
            path: spare.path,
            file: spare.file,
            len: segment::LEN as u64,
        });
        self.ask_spare();
        Ok(())
    }

    /// Appends a piece of a delta's record to the current segment, starting
    /// one if this is the record's first piece and none is open. `record`
    /// is where the record's first piece went, for a later piece. Returns
    /// where this piece went. On failure the segment is cut back to where
    /// the record began.
    pub(crate) fn append_piece(
        &mut self,
        bytes: &[u8],
        record: Option<(u64, u64)>,
    ) -> Result<(u64, u64), StoreError> {
        if record.is_none() {
            self.open_segment()?;
        }
        let w = self.writer();
        let Some(seg) = w
            .segment
            .as_mut()
            .filter(|s| record.is_none_or(|(seq, _)| seq == s.seq))
        else {
            return Err(StoreError::io(
                "appending to the segment",
                &self.dir,
                io::Error::other("the segment holding the record's first piece was closed"),
            ));
        };
        let at = seg.len;
        match seg.file.write_all(bytes) {
            Ok(()) => {
                seg.len += bytes.len() as u64;
                Ok((seg.seq, at))
            }
            Err(e) => {
                let (seq, path) = (seg.seq, seg.path.clone());
                self.cut_back(seq, record.map_or(at, |(_, start)| start));
                Err(StoreError::io("appending to segment", path, e))
            }
        }
    }

    /// Closes the segment being appended to, if any: the next delta starts
    /// a new one. (The sync thread still syncs what was appended to it.)
    pub(crate) fn close_segment(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            w.segment = None;
        }
    }

    /// Cuts segment `seq` back to `len` bytes (an abandoned or failed
    /// record). If it cannot be cut, it is closed: what follows `len` is its
    /// tail, and the next delta starts a new segment.
    pub(crate) fn cut_back(&mut self, seq: u64, len: u64) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let Some(seg) = w.segment.as_mut().filter(|s| s.seq == seq) else {
            return;
        };
        match seg.file.truncate(len) {
            Ok(()) => seg.len = len,
            Err(_) => w.segment = None,
        }
    }

    /// Acknowledges generation `number`: a full one (`seq` is `None`) is
    /// durable already; a delta appended to segment `seq` is handed to the
    /// syncer, and with `wait` its sync is waited for. Returns whether it is
    /// durable.
    pub(crate) fn acknowledge(
        &mut self,
        number: u64,
        seq: Option<u64>,
        wait: bool,
    ) -> Result<bool, StoreError> {
        let w = self.writer();
        let Some(seq) = seq else {
            w.syncer.durable(number);
            return Ok(true);
        };
        if let Err(e) = w.syncer.appended(seq, number) {
            w.syncer.take_failure();
            return Err(self.sync_failed(e));
        }
        if wait && let Err(e) = w.syncer.wait(number) {
            w.syncer.take_failure();
            return Err(self.sync_failed(e));
        }
        Ok(w.syncer.synced() >= number)
    }

    /// After a delta: starts a base in the background when the records
    /// since the newest base weigh enough and none is being built. Records
    /// after it go to a new segment.
    pub(crate) fn maybe_start_base(&mut self, meta: &[u8], created_ms: u64) {
        if self.writer().building.is_some() {
            return;
        }
        let threshold = self.options.base_after_bytes;
        let Some(c) = self.current.as_mut() else {
            return;
        };
        if c.since_base < threshold.max(c.base_bytes / 2) {
            return;
        }
        c.since_base = 0;
        let number = c.number;
        let job = BaseJob {
            number,
            region_len: c.region_len,
            created_ms,
            meta: meta.to_vec(),
            // Copies that share the store's blocks: a block is copied only
            // when a delta changes it while the job runs.
            page_hashes: c.hashes.pages().clone(),
            locs: c.locs.clone(),
            paths: self.files.all(),
            temp: PathBuf::new(),
        };
        let temp = self.temp_path(|pid, n| names::base_temp(number, pid, n));
        let cut = self.files.next_id();
        let lineage = self.lineage;
        let w = self.writer();
        w.segment = None;
        w.building = Some(Building { number, cut, lineage });
        w.jobs.submit(Job::Base(Box::new(BaseJob { temp, ..job })));
    }

    /// Retention (STORE.md, "Retention"): gives the files no kept chain
    /// needs to the background to remove, and forgets them. Nothing is
    /// removed while a base is being built (it reads the files it covers).
    pub(crate) fn retain(&mut self) {
        if self.read_only || self.writer.as_ref().is_some_and(|w| w.building.is_some()) {
            return;
        }
        let doomed = self.doomed_files();
        if doomed.is_empty() {
            return;
        }
        self.forget_files(&doomed);
        let w = self.writer();
        w.pruned += doomed.len();
        w.jobs.submit(Job::Remove(doomed));
    }

    /// The files retention removes, newest first: every segment, base file
    /// and version 2 file that neither the chain of one of the newest
    /// `keep` generations nor that of the current one needs, nor the writer
    /// holds; and files whose header does not verify, once `keep` newer
    /// generations exist.
    pub(crate) fn doomed_files(&self) -> Vec<PathBuf> {
        let numbers: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.place().is_some())
            .map(|(&n, _)| n)
            .collect();
        let mut kept: Vec<u64> = numbers.iter().rev().take(self.options.keep).copied().collect();
        kept.extend(self.current.as_ref().map(|c| c.number));
        let mut needed: HashSet<&Path> = HashSet::new();
        // A hold keeps every record from it on, whichever a reader copies,
        // and its own chain.
        if let Some(held) = self.held {
            kept.push(held);
            for e in self.entries.range(held..).map(|(_, e)| e) {
                needed.extend(
                    [&e.full, &e.delta]
                        .into_iter()
                        .flatten()
                        .map(|p| p.path.as_path()),
                );
            }
        }
        let mut visited = HashSet::new();
        for n in kept {
            let mut n = n;
            while n != 0 && visited.insert(n) {
                let Some(e) = self.entries.get(&n) else {
                    break;
                };
                if let Some(full) = e.full.as_ref().filter(|_| !self.bad_bases.contains(&n)) {
                    needed.insert(&full.path);
                    break;
                }
                let Some(delta) = &e.delta else {
                    break;
                };
                needed.insert(&delta.path);
                n = delta.header.parent;
            }
        }
        if let Some(w) = &self.writer {
            needed.extend(w.segment.as_ref().map(|s| s.path.as_path()));
            needed.extend(w.spare.as_ref().map(|s| s.path.as_path()));
        }
        let pending = self
            .writer
            .as_ref()
            .and_then(|w| w.spare_pending)
            .map(|seq| self.dir.join(names::segment(seq)));
        needed.extend(pending.as_deref());
        // Newest first, by the newest number each file holds.
        let mut doomed: Vec<(u64, PathBuf)> = Vec::new();
        for (seq, s) in &self.segments {
            if !needed.contains(s.path.as_path()) {
                doomed.push((s.numbers.last().copied().unwrap_or(0).max(*seq), s.path.clone()));
            }
        }
        for (&n, e) in &self.entries {
            for p in [&e.full, &e.delta].into_iter().flatten() {
                if p.whole_file && !needed.contains(p.path.as_path()) {
                    doomed.push((n, p.path.clone()));
                }
            }
            // A file whose header does not verify keeps nothing alive; it
            // goes once `keep` generations newer than it exist.
            let newer = numbers.len() - numbers.partition_point(|&m| m <= n);
            if let Some((path, _, _)) = &e.problem
                && newer >= self.options.keep
            {
                doomed.push((n, path.clone()));
            }
        }
        doomed.sort_by(|a, b| b.cmp(a));
        doomed.dedup_by(|a, b| a.1 == b.1);
        doomed.into_iter().map(|(_, p)| p).collect()
    }

    /// Drops `paths` from what the store knows it holds.
    pub(crate) fn forget_files(&mut self, paths: &[PathBuf]) {
        let gone: HashSet<&Path> = paths.iter().map(|p| p.as_path()).collect();
        self.segments.retain(|_, s| !gone.contains(s.path.as_path()));
        for e in self.entries.values_mut() {
            if e.full.as_ref().is_some_and(|p| gone.contains(p.path.as_path())) {
                e.full = None;
            }
            if e.delta.as_ref().is_some_and(|p| gone.contains(p.path.as_path())) {
                e.delta = None;
            }
            if e.problem
                .as_ref()
                .is_some_and(|(p, _, _)| gone.contains(p.as_path()))
            {
                e.problem = None;
            }
        }
        self.entries
            .retain(|_, e| e.delta.is_some() || e.full.is_some() || e.problem.is_some());
        for p in paths {
            self.files.forget(p);
        }
    }

    /// The writer's reports since the last generation: files given to the
    /// background to remove, removals that failed, bases that failed.
    pub(crate) fn take_reports(&mut self) -> (usize, Vec<StoreError>, Vec<StoreError>) {
        match self.writer.as_mut() {
            Some(w) => (
                std::mem::take(&mut w.pruned),
                std::mem::take(&mut w.prune_errors),
                std::mem::take(&mut w.base_errors),
            ),
            None => (0, Vec::new(), Vec::new()),
        }
    }

    /// The generations that became durable since the last call, oldest
    /// first: each entry names the newest generation one sync (or one base
    /// file) made durable, and when. A caller that appends without waiting
    /// ([`super::GenerationTx::append`]) learns here when what it appended
    /// is safe; one that commits and waits finds its own generations here
    /// too.
    pub fn take_synced(&mut self) -> Vec<Synced> {
        self.poll_background();
        self.writer
            .as_mut()
            .map_or_else(Vec::new, |w| w.syncer.take_log())
    }

    /// The newest generation acknowledged durable since the store opened,
    /// if any.
    pub fn durable_generation(&self) -> Option<u64> {
        self.writer.as_ref().map(|w| w.syncer.synced()).filter(|&n| n > 0)
    }

    /// Waits until every generation written so far is durable. A sync that
    /// failed is reported (once), as by [`Store::begin`].
    pub fn sync(&mut self) -> Result<(), StoreError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        if let Err(e) = w.syncer.wait_all() {
            w.syncer.take_failure();
            return Err(self.sync_failed(e));
        }
        self.poll_background();
        Ok(())
    }

    /// Waits for the base being built in the background, if any, and picks
    /// it up (with the retention it allows). For tests and for a caller
    /// about to stop that wants the store at its smallest.
    pub fn finish_background(&mut self) {
        loop {
            self.poll_background();
            let busy = self
                .writer
                .as_ref()
                .is_some_and(|w| w.building.is_some() || w.spare_pending.is_some());
            if !busy {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

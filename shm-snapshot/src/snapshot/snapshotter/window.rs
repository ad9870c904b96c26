//! The window between Pre and Post: what can have changed is read page by
//! page, hashed, and staged where it differs.

use std::path::Path;

use crate::layout::{self, Geometry, UnitRef};
use crate::observe::{Anomalies, Observer};
use crate::store::PAGE_BYTES;

use super::super::staging::{KEEP_ENTRIES, page_hash, zero_hash};
use super::super::{ArenaScan, SnapshotError};
use super::{Snapshotter, Suspect, spill_error};

impl Snapshotter {
    /// Between Pre and Post: reads what can have changed, stages the pages
    /// that differ, then runs Post. Returns the kept units and the bytes
    /// read, or `None` when no unit survived.
    pub(super) fn window(
        &mut self,
        observer: &Observer,
        g: &Geometry,
        pre: &[UnitRef],
        anomalies: &mut Anomalies,
        dir: &Path,
        between: impl FnOnce(),
    ) -> Result<Option<(Vec<UnitRef>, u64)>, SnapshotError> {
        if pre.is_empty() {
            return Ok(None);
        }
        // ORDERING: the counters are read after Pre's acquire loads, so any
        // arena write a Pre unit describes has moved its counter by now.
        observer.update_counters(&mut self.ref_counters, &mut self.moved);
        let mut read = 0;
        // Header and unit table: compared page by page.
        for p in 0..g.counters_offset.div_ceil(PAGE_BYTES) {
            read += self.examine(observer, g, p, dir)?.0;
        }
        // The counters' pages that hold a counter that moved (the others
        // hold what was read last time).
        let per_page = PAGE_BYTES / layout::COUNTER_SIZE;
        let first = g.counters_offset / PAGE_BYTES;
        let mut last_page = None;
        for k in 0..self.moved.len() {
            let p =
                first + (g.counters_offset % PAGE_BYTES / layout::COUNTER_SIZE + self.moved[k]) / per_page;
            if last_page != Some(p) && p * PAGE_BYTES < g.ring_offset {
                read += self.examine(observer, g, p, dir)?.0;
                last_page = Some(p);
            }
        }
        // The ring bytes of units newer than the last kept ones.
        let newest_end = pre.iter().map(UnitRef::end).max().unwrap_or(0);
        let low = self.ring_done.max(newest_end.saturating_sub(g.ring_bytes));
        if low < newest_end {
            for (at, len) in g.ring_spans(low, newest_end - low) {
                if len > 0 {
                    for p in at / PAGE_BYTES..(at + len).div_ceil(PAGE_BYTES) {
                        read += self.examine(observer, g, p, dir)?.0;
                    }
                }
            }
        }
        // Arena chunks: those whose counters moved, and (by the mode) every
        // other chunk compared with what the store holds.
        let marking = self.ref_counters.iter().any(|c| *c != 0);
        let (follow, compare) = match self.scan {
            ArenaScan::Hash => (false, true),
            ArenaScan::Hints => (true, false),
            ArenaScan::Auto => (marking, !marking),
            ArenaScan::Check => (true, true),
        };
        let checking = self.scan == ArenaScan::Check && marking;
        if checking {
            self.confirm_suspects(pre);
        }
        let mut unmarked = Vec::new();
        let chunks = self.ref_counters.len() as u64;
        let mut next_moved = 0;
        let mut i = 0;
        while i < chunks {
            // Following alone, only the chunks that moved are visited.
            if !compare {
                match self.moved.get(next_moved) {
                    Some(&m) => i = m,
                    None => break,
                }
            }
            let moved = follow && self.moved.get(next_moved) == Some(&i);
            if self.moved.get(next_moved) == Some(&i) {
                next_moved += 1;
            }
            let at = g.arena_offset + i * g.chunk_bytes;
            let end = (at + g.chunk_bytes).min(g.region_len);
            let mut changed = false;
            for p in at / PAGE_BYTES..end.div_ceil(PAGE_BYTES) {
                let (n, differs) = self.examine(observer, g, p, dir)?;
                read += n;
                changed |= differs;
            }
            if checking && !moved && changed {
                unmarked.push(i);
            }
            i += 1;
        }
        self.let_go_of_moved();
        if !unmarked.is_empty() {
            // ORDERING: relaxed, a hint read after the chunks were
            // compared: a unit numbered at least this was published after
            // the writes the comparison saw (FORMAT.md, "The marking rule").
            let next_seq = observer.next_seq();
            for chunk in unmarked {
                if !self.suspects.iter().any(|s| s.chunk == chunk) {
                    let counter = self.ref_counters[chunk as usize];
                    self.suspects.push(Suspect {
                        chunk,
                        counter,
                        next_seq,
                    });
                }
            }
        }
        between();

        let mut kept = Vec::new();
        let post = observer.post(pre, &mut kept);
        anomalies.broken_chain += post.broken_chain;
        // Whatever Post says, the staging area and the page hashes now hold
        // data at least as new as the counters read above (now in
        // `ref_counters`).
        if kept.is_empty() {
            return Ok(None);
        }
        self.ring_done = kept.last().map_or(self.ring_done, UnitRef::end);
        Ok(Some((kept, read)))
    }

    /// Reads page `p` of the region and stages it if its hash differs from
    /// its newest copy's: staged, or else what the next generation holds
    /// for it unless it is staged (after a prime, zero; otherwise the
    /// store's). Returns the bytes read and whether it differed.
    fn examine(
        &mut self,
        observer: &Observer,
        g: &Geometry,
        p: u64,
        dir: &Path,
    ) -> Result<(u64, bool), SnapshotError> {
        let at = p * PAGE_BYTES;
        let len = PAGE_BYTES.min(g.region_len - at) as usize;
        self.page.resize(len, 0);
        observer.copy_range(at, &mut self.page)?;
        let hash = page_hash(&self.page);
        let newest = match self.staging.hash_of(p) {
            Some(staged) => staged,
            // A full generation holds zero where nothing is staged, whatever
            // the store holds there.
            None if self.full => zero_hash(),
            None => self.known[p as usize],
        };
        if hash == newest {
            return Ok((len as u64, false));
        }
        self.staging
            .put(p, &self.page, hash, dir)
            .map_err(|e| spill_error(dir, e))?;
        Ok((len as u64, true))
    }

    /// [`ArenaScan::Check`], with this window's counters read after Pre:
    /// drops the suspects whose counters moved since (their writes were
    /// marked after all), and proves unmarked the first whose counter
    /// stayed put while a unit published after its write is valid in
    /// `pre`: the program had to mark the write before publishing it.
    fn confirm_suspects(&mut self, pre: &[UnitRef]) {
        let newest = pre.iter().map(UnitRef::seq).max().unwrap_or(0);
        let counters = &self.ref_counters;
        let mut proven = None;
        self.suspects.retain(|s| {
            if counters[s.chunk as usize] != s.counter {
                return false;
            }
            if newest >= s.next_seq {
                proven = proven.or(Some(*s));
                return false;
            }
            true
        });
        if self.reported.is_none() && self.found.is_none() {
            self.found = proven;
        }
    }

    /// Gives back the list of moved counters' memory after a window that
    /// saw most of them move (8 bytes a chunk): it is refilled each window.
    pub(super) fn let_go_of_moved(&mut self) {
        if self.moved.capacity() > KEEP_ENTRIES {
            self.moved = Vec::new();
        }
    }
}

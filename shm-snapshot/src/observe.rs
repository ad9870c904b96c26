//! The host's read-only view of a live region, for the Pre / copy / Post
//! steps of the queue strategy (FORMAT.md, "Observing a region").
//!
//! The region is untrusted input: a child may write anything into it at any
//! moment. The geometry is checked once, when the observer is made, against
//! the mapping's real length; every later index is computed from that
//! checked geometry (slot indices below `slots`, ring positions masked by
//! `ring_bytes`, lengths at most `ring_bytes`), so nothing the child writes
//! afterwards can move a read outside the mapping or make the host panic.

use crate::client::read_unit;
use crate::error::RegionError;
use crate::layout::{self, Geometry, State, Tag, UnitRef, header, slot};
use crate::region::Region;
use crate::sync::{Ordering::*, fence};
use crate::words;

/// A read-only observer of a region.
#[derive(Debug)]
pub struct Observer {
    region: Region,
    geometry: Geometry,
}

/// What the observer found wrong in a unit table, counted rather than
/// failed on so a snapshot can go on with the units that are sound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anomalies {
    /// Slots whose tag has undefined state bits or whose valid unit fails
    /// [`Geometry::check_unit`].
    pub corrupt_slots: u64,
    /// Valid units dropped by the chain rule ([`layout::sort_and_check_chain`]):
    /// a unit that contradicts the next one in sequence order (overlaps it,
    /// or is numbered right before it and does not end where it starts), the
    /// other unit of that pair, and every older unit; or a unit the newest
    /// one has overwritten or whose slot it reused, and every older unit.
    pub broken_chain: u64,
}

impl Anomalies {
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        *self == Anomalies::default()
    }
}

impl Observer {
    /// Observes `region` (mapped read-only or not), checking its header.
    pub fn new(region: Region) -> Result<Observer, RegionError> {
        let words = region.words();
        // ORDERING: acquire; pairs with the release store of the magic when
        // the client laid the region out, so the fields read below are the
        // ones laid out with it.
        let magic = words::load(words, header::MAGIC, Acquire);
        if magic != layout::MAGIC {
            return Err(RegionError::ForeignMagic { found: magic });
        }
        let geometry = Geometry::from_header(region.len(), |at| words::load(words, at, Relaxed))?;
        Ok(Observer { region, geometry })
    }

    /// The geometry checked when the observer was made.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The region observed.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Checks that the header still says what it said when the observer was
    /// made; a child that scribbled over it is reported, not followed.
    pub fn check_header(&self) -> Result<(), RegionError> {
        let words = self.region.words();
        let magic = words::load(words, header::MAGIC, Relaxed);
        if magic != layout::MAGIC {
            return Err(RegionError::ForeignMagic { found: magic });
        }
        for (offset, expected) in self.geometry.fixed_fields() {
            let found = words::load(words, offset, Relaxed);
            if found != expected {
                return Err(RegionError::FieldMismatch {
                    offset,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Units published since layout, as the client counts them.
    pub fn commit_count(&self) -> u64 {
        // ORDERING: acquire; pairs with the client's release store of the
        // count at the end of a commit, so a table read after this sees at
        // least the units counted.
        words::load(self.region.words(), header::COMMIT_COUNT, Acquire)
    }

    /// Sleeps until the client's commit count differs from `seen`, or
    /// `timeout` passes, or a signal arrives. Sets the header's
    /// [`layout::HOST_SLEEPING`] flag so the client wakes it after its next
    /// commit; call [`Observer::stop_waiting`] once awake for good. A client
    /// that ignores the flag (it is optional) leaves this to the timeout.
    #[cfg(not(loom))]
    pub fn wait_for_commit(&self, seen: u64, timeout: std::time::Duration) -> Result<(), RegionError> {
        self.write_host_flags(layout::HOST_SLEEPING)?;
        if self.commit_count() != seen {
            return Ok(());
        }
        let count = &self.region.words()[(header::COMMIT_COUNT / 8) as usize];
        let timeout = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        // Returns early when the count's low half no longer equals `seen`'s,
        // on a wake, a timeout or a signal: every case just re-checks.
        let _ = rustix::thread::futex::wait(
            crate::words::futex_word(count),
            rustix::thread::futex::Flags::empty(),
            seen as u32,
            Some(&timeout),
        );
        Ok(())
    }

    /// Wakes every thread sleeping in [`Observer::wait_for_commit`] on this
    /// region, through any observer of it: the futex is keyed by the
    /// region's memory, not by the mapping. A host uses it to end a sleep
    /// early when it has other work (pausing its snapshot thread).
    #[cfg(not(loom))]
    pub fn interrupt_wait(&self) {
        let count = &self.region.words()[(header::COMMIT_COUNT / 8) as usize];
        let _ = rustix::thread::futex::wake(
            crate::words::futex_word(count),
            rustix::thread::futex::Flags::empty(),
            u32::MAX,
        );
    }

    /// Clears the header's sleeping flag, so commits stop waking the host.
    #[cfg(not(loom))]
    pub fn stop_waiting(&self) -> Result<(), RegionError> {
        self.write_host_flags(0)
    }

    /// Writes the host's flag word through the file, not the (read-only)
    /// mapping. Only its lowest byte is ever non-zero, so a reader can never
    /// see a torn value.
    #[cfg(not(loom))]
    fn write_host_flags(&self, flags: u64) -> Result<(), RegionError> {
        use std::os::unix::fs::FileExt;
        self.region
            .file()
            .write_all_at(&flags.to_le_bytes(), header::HOST_FLAGS)
            .map_err(|e| RegionError::io("setting the host's flags in the region", e))
    }

    /// The client's heartbeat counter (untrusted: a host only compares it
    /// with a value it read earlier; a change means the client ran).
    pub fn heartbeat(&self) -> u64 {
        // ORDERING: relaxed; nothing is read on the strength of this value.
        words::load(self.region.words(), header::HEARTBEAT, Relaxed)
    }

    /// The client's write cursor (untrusted: a hint, never an index).
    pub fn cursor(&self) -> u64 {
        words::load(self.region.words(), header::CURSOR, Relaxed)
    }

    /// The client's next sequence number (untrusted: a hint, never an index).
    pub fn next_seq(&self) -> u64 {
        words::load(self.region.words(), header::NEXT_SEQ, Relaxed)
    }

    /// Pre: the units valid now, each read consistently (its offset and
    /// length are those published with its tag) and checked in bounds.
    /// Fills `out` (cleared first), in slot order.
    pub fn pre(&self, out: &mut Vec<UnitRef>) -> Anomalies {
        out.clear();
        let words = self.region.words();
        let g = &self.geometry;
        let mut anomalies = Anomalies::default();
        for index in 0..g.slots {
            let tag_at = g.slot_field(index, slot::TAG);
            // ORDERING: acquire; pairs with the client's release store of a
            // valid tag (client.rs, step 4): the offset and length read next
            // are at least as new as that publish.
            let tag = Tag(words::load(words, tag_at, Acquire));
            match tag.state() {
                Some(State::Valid) => {}
                Some(State::Empty | State::Invalid) => continue,
                None => {
                    anomalies.corrupt_slots += 1;
                    continue;
                }
            }
            let offset = words::load(words, g.slot_field(index, slot::OFFSET), Relaxed);
            let len = words::load(words, g.slot_field(index, slot::LEN), Relaxed);
            // ORDERING: acquire fence; pairs with the client's release fence
            // after invalidating (client.rs, `make_room`). If the offset or
            // length read above was stored for a newer unit, the tag re-read
            // below is no longer this one.
            fence(Acquire);
            if words::load(words, tag_at, Relaxed) != tag.0 {
                continue;
            }
            if g.check_unit(index, tag, offset, len).is_err() {
                anomalies.corrupt_slots += 1;
                continue;
            }
            out.push(UnitRef {
                slot: index,
                tag,
                offset,
                len,
            });
        }
        anomalies
    }

    /// Copies a unit's bytes out of the ring. Between [`Observer::pre`] and
    /// [`Observer::post`]; only a unit `post` keeps is known intact.
    pub fn copy_unit(&self, unit: &UnitRef) -> Vec<u8> {
        read_unit(self.region.words(), &self.geometry, unit)
    }

    /// Copies `out.len()` bytes of the region at byte offset `at`, for the
    /// arena and other ranges a snapshot keeps. Fails, copying nothing, when
    /// the range is not inside the region.
    pub fn copy_range(&self, at: u64, out: &mut [u8]) -> Result<(), RegionError> {
        let fits = at
            .checked_add(out.len() as u64)
            .is_some_and(|end| end <= self.geometry.region_len);
        if !fits {
            return Err(RegionError::TooSmall {
                len: self.geometry.region_len,
                needed: at.saturating_add(out.len() as u64),
            });
        }
        words::read(self.region.words(), at, out);
        Ok(())
    }

    /// The arena chunks' write counters (untrusted hints), into `out`.
    pub fn chunk_counters(&self, out: &mut Vec<u64>) {
        let g = &self.geometry;
        let chunks = g.arena_len.div_ceil(g.chunk_bytes);
        out.clear();
        out.extend((0..chunks).map(|i| {
            // ORDERING: acquire; pairs with the client's release increment in
            // `Arena::mark_written`: data copied after this load is at least
            // as new as the write that moved the counter.
            words::load(
                self.region.words(),
                g.counters_offset + i * layout::COUNTER_SIZE,
                Acquire,
            )
        }));
    }

    /// Reads the arena chunks' write counters (untrusted hints) into
    /// `known`, which holds the values read last time (resized to the
    /// count, new entries zero), and lists in `moved`, in increasing order,
    /// the chunks whose counter differs from it.
    pub fn update_counters(&self, known: &mut Vec<u64>, moved: &mut Vec<u64>) {
        let g = &self.geometry;
        let chunks = g.arena_len.div_ceil(g.chunk_bytes);
        known.resize(chunks as usize, 0);
        moved.clear();
        let words = self.region.words();
        for (i, slot) in known.iter_mut().enumerate() {
            // ORDERING: acquire; pairs with the client's release increment
            // in `Arena::mark_written`, as in `chunk_counters`.
            let counter = words::load(
                words,
                g.counters_offset + i as u64 * layout::COUNTER_SIZE,
                Acquire,
            );
            if counter != *slot {
                *slot = counter;
                moved.push(i as u64);
            }
        }
    }

    /// Post: which of the `pre` units are still valid with the same sequence
    /// number, after everything copied since `pre`. Those are consistent in
    /// this snapshot. Units that break the ring's chain are dropped too,
    /// with every older one, so what is kept is a table a client accepts;
    /// when the newest unit is one of two that contradict each other,
    /// nothing is kept. `out` is cleared and filled in sequence order.
    pub fn post(&self, pre: &[UnitRef], out: &mut Vec<UnitRef>) -> Anomalies {
        // ORDERING: acquire fence; pairs with the client's release fence
        // after invalidating (client.rs, `make_room`): if any byte copied
        // since `pre` was stored after a unit's invalidation, the tag read
        // below shows it.
        fence(Acquire);
        let words = self.region.words();
        out.clear();
        out.extend(
            pre.iter().filter(|u| {
                words::load(words, self.geometry.slot_field(u.slot, slot::TAG), Relaxed) == u.tag.0
            }),
        );
        let mut anomalies = Anomalies::default();
        if let Some(bad) = layout::sort_and_check_chain(out, self.geometry.ring_bytes, self.geometry.slots) {
            anomalies.broken_chain = bad as u64 + 1;
            out.drain(..=bad);
        }
        anomalies
    }
}

//! The client: lays out or attaches to a region, recovers its units, and
//! commits new ones without waiting, locking, allocating or making a system
//! call. The protocol and its orderings are described in `FORMAT.md`
//! ("Committing a unit"); the comments here name the step they implement.

use std::convert::Infallible;

use crate::arena::Arena;
use crate::error::{CommitError, CommitWithError, RegionError};
use crate::layout::{self, Geometry, State, Tag, UnitRef, header, limits, slot};
use crate::region::Region;
use crate::sync::{Ordering::*, fence};
use crate::words;

/// How a blank region is laid out. An existing region keeps the layout it
/// was given; the configuration only matters the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Unit-table slots, a power of two. More slots keep more older units
    /// valid while new ones are written, so an observer copying a large
    /// region is not starved by a fast client. Default 256 (8 KiB of table).
    pub slots: u64,
    /// Ring bytes, a power of two of at least a page; the largest unit that
    /// can be committed. Default 1 MiB.
    pub ring_bytes: u64,
    /// Arena chunk bytes for the write counters, a power of two of at least a
    /// page: the granularity at which the host learns what changed. Default
    /// 64 KiB, the store's chunk size.
    pub chunk_bytes: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            slots: 256,
            ring_bytes: 1 << 20,
            chunk_bytes: 64 << 10,
        }
    }
}

/// A committed unit's identity: its sequence number, unique and increasing
/// over the region's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(pub u64);

/// A unit found valid in the region, with a copy of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The unit's id.
    pub id: UnitId,
    /// The unit's bytes, exactly as committed.
    pub bytes: Vec<u8>,
}

/// The client side of a region: the only writer of its unit table, ring and
/// arena.
#[derive(Debug)]
pub struct Client {
    region: Region,
    geometry: Geometry,
    /// Stream offset where the next unit's bytes go.
    cursor: u64,
    /// Sequence number of the next unit.
    next_seq: u64,
    /// Oldest sequence number that may still be valid; every older unit has
    /// been invalidated.
    tail: u64,
    /// Units published since layout, mirrored in the header.
    commits: u64,
    /// The heartbeat counter, mirrored in the header: the client is its only
    /// writer, so moving it is one store, with no load and no read-modify-write.
    heartbeat: u64,
}

impl Client {
    /// Opens `region`: lays it out from `config` if it is blank (all zero
    /// header and table), otherwise checks its header and unit table and
    /// carries on after its newest unit. A region that is neither blank nor
    /// a valid v1 region is refused; it is never re-initialised.
    pub fn open(region: Region, config: &Config) -> Result<Client, RegionError> {
        let words = region.words();
        // ORDERING: acquire; pairs with the release store of the magic at the
        // end of `lay_out`, so a laid-out header is seen whole.
        let magic = words::load(words, header::MAGIC, Acquire);
        if magic == 0 {
            let geometry =
                Geometry::derive(region.len(), config.slots, config.ring_bytes, config.chunk_bytes)?;
            check_blank(words, &geometry)?;
            lay_out(words, &geometry);
        }
        let geometry = Geometry::from_header(region.len(), |at| words::load(words, at, Relaxed))?;
        let mut client = Client {
            region,
            geometry,
            cursor: 0,
            next_seq: 1,
            tail: 1,
            commits: 0,
            heartbeat: 0,
        };
        client.attach()?;
        Ok(client)
    }

    /// Reads the client's position from the header and the unit table, and
    /// checks every valid unit, so that committing can carry on safely after
    /// a crash at any point of a commit.
    fn attach(&mut self) -> Result<(), RegionError> {
        let words = self.region.words();
        let g = self.geometry;
        let counter = |at, field| {
            let value = words::load(words, at, Relaxed);
            if value > limits::MAX_COUNTER {
                Err(RegionError::ImpossibleField {
                    field,
                    value,
                    why: "above 2^62",
                })
            } else {
                Ok(value)
            }
        };
        let cursor = counter(header::CURSOR, "cursor")?;
        // Every unit starts on a word: a cursor that is not a multiple of 8
        // would place the next unit where no reader accepts it.
        if !cursor.is_multiple_of(8) {
            return Err(RegionError::ImpossibleField {
                field: "cursor",
                value: cursor,
                why: "not a multiple of 8",
            });
        }
        let next_seq = counter(header::NEXT_SEQ, "next sequence number")?;
        let commits = counter(header::COMMIT_COUNT, "commit count")?;
        let mut units = valid_units(words, &g)?;
        let mut highest_seq = 0;
        for index in 0..g.slots {
            // ORDERING: relaxed; `valid_units` already made the acquire load
            // of each tag and nothing else writes the table.
            highest_seq =
                highest_seq.max(Tag(words::load(words, g.slot_field(index, slot::TAG), Relaxed)).seq());
        }
        if let Some(bad) = layout::sort_and_check_chain(&mut units, g.ring_bytes, g.slots) {
            return Err(RegionError::CorruptSlot {
                slot: units[bad].slot,
                why: "unit contradicts the one before it (their stream ranges overlap, or \
                      it does not start where that one ends), or a newer one overwrote it \
                      or reused its slot",
            });
        }
        let newest_end = units.last().map_or(0, UnitRef::end);
        self.cursor = cursor.max(newest_end);
        self.next_seq = next_seq.max(highest_seq + 1);
        // Every valid unit is one of the last `slots` sequence numbers: an
        // older one's slot was reused. This also bounds the first commit's
        // invalidation loop (`make_room`) by `slots`.
        if let Some(oldest) = units.first()
            && self.next_seq - oldest.seq() > g.slots
        {
            return Err(RegionError::CorruptSlot {
                slot: oldest.slot,
                why: "unit is older than the unit table can hold",
            });
        }
        self.tail = units.first().map_or(self.next_seq, UnitRef::seq);
        self.commits = commits;
        // Any value will do (the host only compares); carrying on from the
        // region's keeps it moving forward across restarts.
        self.heartbeat = words::load(words, header::HEARTBEAT, Relaxed);
        Ok(())
    }

    /// The region's layout.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Gives the region back, e.g. to open it again as a restarted program
    /// would.
    pub fn into_region(self) -> Region {
        self.region
    }

    /// The valid units, oldest first, with their bytes: what a program
    /// rebuilds its state from after a restart. Units that newer ones have
    /// overwritten are gone; the newest units that fit the ring and the
    /// table survive.
    pub fn recover(&self) -> Result<Vec<Unit>, RegionError> {
        let words = self.region.words();
        let mut units = valid_units(words, &self.geometry)?;
        units.sort_unstable_by_key(UnitRef::seq);
        Ok(units
            .iter()
            .map(|u| Unit {
                id: UnitId(u.seq()),
                bytes: read_unit(words, &self.geometry, u),
            })
            .collect())
    }

    /// The arena: the region's pages past the ring, free for the program.
    pub fn arena(&self) -> Arena<'_> {
        Arena::new(self.region.words(), &self.geometry)
    }

    /// Commits `bytes` as one unit and returns its id. Wait-free: no lock,
    /// no system call, no allocation.
    pub fn commit(&mut self, bytes: &[u8]) -> Result<UnitId, CommitError> {
        match self.commit_with(bytes, |_| Ok::<(), Infallible>(())) {
            Ok((id, ())) => Ok(id),
            Err(CommitWithError::Commit(e)) => Err(e),
            Err(CommitWithError::Aborted(never)) => match never {},
        }
    }

    /// Commits `bytes` as one unit, running `work` after the unit's room is
    /// reserved and its bytes are copied, and before it is published. `work`
    /// may write the arena data the unit describes (ordered before the unit
    /// becomes visible) and patch the unit's bytes through [`Tx::patch`]. If
    /// it returns an error, nothing is published and the error comes back as
    /// [`CommitWithError::Aborted`]; the older units the reservation had to
    /// invalidate stay invalid.
    pub fn commit_with<R, E>(
        &mut self,
        bytes: &[u8],
        work: impl FnOnce(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<(UnitId, R), CommitWithError<E>> {
        let g = self.geometry;
        let len = bytes.len() as u64;
        if len > g.ring_bytes {
            return Err(CommitError::UnitTooLarge {
                len: bytes.len(),
                ring_bytes: g.ring_bytes,
            }
            .into());
        }
        let words = self.region.words();
        // ORDERING: relaxed, and read before the copy: after it, this load
        // would wait behind the copy's stores whose addresses alias the
        // flag's in their low 12 bits, which costs a 4 KiB commit 80%. A host
        // sets the flag, re-reads the count, and sleeps only while the count
        // is unchanged, with a timeout: a wake missed because the flag was set
        // during this commit costs at most that timeout, never a unit.
        let host_sleeping = words::load(words, header::HOST_FLAGS, Relaxed) & layout::HOST_SLEEPING != 0;
        let seq = self.next_seq;
        if seq >= limits::MAX_COUNTER {
            return Err(CommitError::SequenceExhausted { seq }.into());
        }
        let start = self.cursor;
        let end = start + layout::pad(len);
        // A unit must end at or below 2^62 (invariant 8): a reader refuses
        // a slot whose unit ends beyond it.
        if end > limits::MAX_COUNTER {
            return Err(CommitError::StreamExhausted { end }.into());
        }

        // Step 1-2: invalidate every unit the reservation overlaps and the
        // one whose slot it reuses, before any of their bytes change.
        self.tail = make_room(words, &g, self.tail, seq, end);

        // Step 3: copy the bytes in whole words, in at most two pieces. A
        // first piece that wraps ends at the ring's end, a multiple of 8, so
        // only the last piece is padded.
        let [(at, first), (wrapped, _)] = g.ring_spans(start, len);
        let (head, tail) = bytes.split_at(first as usize);
        words::store_padded(words, at, head);
        if !tail.is_empty() {
            words::store_padded(words, wrapped, tail);
        }

        let mut tx = Tx {
            words,
            geometry: &g,
            start,
            len: bytes.len(),
            id: UnitId(seq),
        };
        let output = work(&mut tx).map_err(CommitWithError::Aborted)?;

        // Step 4: publish.
        let index = g.slot_of(seq);
        words::store(words, g.slot_field(index, slot::OFFSET), start, Relaxed);
        words::store(words, g.slot_field(index, slot::LEN), len, Relaxed);
        // ORDERING: release; pairs with the acquire load of the tag in
        // `observe::Observer::pre` and `valid_units`: whoever sees the tag
        // valid sees the unit's bytes, offset, length and the arena writes
        // `work` made.
        words::store(words, g.slot_field(index, slot::TAG), Tag::valid(seq).0, Release);
        self.cursor = end;
        self.next_seq = seq + 1;
        self.commits += 1;
        self.heartbeat = self.heartbeat.wrapping_add(1);
        words::store(words, header::CURSOR, end, Relaxed);
        words::store(words, header::NEXT_SEQ, seq + 1, Relaxed);
        // ORDERING: relaxed; a liveness hint the host only compares with the
        // value it read before, ordered with nothing.
        words::store(words, header::HEARTBEAT, self.heartbeat, Relaxed);
        // ORDERING: release; pairs with the host's acquire load of the
        // commit count (`Observer::commit_count`): a host that sees the count
        // move sees the header fields and the tag stored before it.
        words::store(words, header::COMMIT_COUNT, self.commits, Release);
        if host_sleeping {
            wake_host(words);
        }
        Ok((UnitId(seq), output))
    }

    /// Tells the host the program is alive without committing: moves the
    /// header's heartbeat counter, which every commit also moves. A program
    /// that works for long stretches between commits calls it now and then
    /// so a supervisor run with `--hang-timeout` does not take it for hung.
    /// One store into the region: no clock, no system call, no wait.
    pub fn heartbeat(&mut self) {
        self.heartbeat = self.heartbeat.wrapping_add(1);
        // ORDERING: relaxed; as in `commit_with`, a hint compared by value.
        words::store(self.region.words(), header::HEARTBEAT, self.heartbeat, Relaxed);
    }
}

/// Wakes a host sleeping on the commit count: the only system call a commit
/// can make, and only while the host asked for it.
#[cold]
#[inline(never)]
fn wake_host(words: &[crate::sync::AtomicU64]) {
    #[cfg(not(loom))]
    {
        let count = &words[(header::COMMIT_COUNT / 8) as usize];
        let _ = rustix::thread::futex::wake(
            crate::words::futex_word(count),
            rustix::thread::futex::Flags::empty(),
            u32::MAX,
        );
    }
    #[cfg(loom)]
    let _ = words;
}

/// Invalidates, oldest first from `tail`, every valid unit that the new unit
/// `seq` ending at stream offset `end` overwrites or whose slot it reuses.
/// Returns the new tail. At most `slots` iterations: every unit older than
/// `seq - slots` had its slot reused already.
#[inline]
fn make_room(words: &[crate::sync::AtomicU64], g: &Geometry, mut tail: u64, seq: u64, end: u64) -> u64 {
    let mut invalidated = false;
    while tail < seq {
        let index = g.slot_of(tail);
        let tag_at = g.slot_field(index, slot::TAG);
        // ORDERING: relaxed; the client is the only writer of the table.
        if words::load(words, tag_at, Relaxed) == Tag::valid(tail).0 {
            let offset = words::load(words, g.slot_field(index, slot::OFFSET), Relaxed);
            let slot_reused = seq - tail >= g.slots;
            let overwritten = offset + g.ring_bytes < end;
            if !slot_reused && !overwritten {
                break;
            }
            words::store(words, tag_at, Tag::invalid(tail).0, Relaxed);
            invalidated = true;
        }
        tail += 1;
    }
    if invalidated {
        // ORDERING: release fence; pairs with the acquire fence the host
        // issues after copying unit bytes and before re-reading tags
        // (`observe::Observer::post`) and with the one in `Observer::pre`
        // between reading a slot's fields and re-reading its tag. If the host
        // reads any byte or slot field stored after this fence, it then sees
        // the invalid tag, so it never keeps a unit whose bytes changed.
        fence(Release);
    }
    tail
}

/// A commit in progress, handed to the closure of [`Client::commit_with`].
#[derive(Debug)]
pub struct Tx<'a> {
    words: &'a [crate::sync::AtomicU64],
    geometry: &'a Geometry,
    start: u64,
    len: usize,
    id: UnitId,
}

impl Tx<'_> {
    /// The id the unit gets if it is published.
    pub fn id(&self) -> UnitId {
        self.id
    }

    /// The arena, to write the data the unit describes.
    pub fn arena(&self) -> Arena<'_> {
        Arena::new(self.words, self.geometry)
    }

    /// Overwrites the unit's bytes at `offset` with `bytes` before it is
    /// published, e.g. to fill in a length or checksum known only now.
    pub fn patch(&mut self, offset: usize, bytes: &[u8]) -> Result<(), CommitError> {
        let out_of_bounds = CommitError::PatchOutOfBounds {
            offset,
            len: bytes.len(),
            unit_len: self.len,
        };
        let end = offset.checked_add(bytes.len()).ok_or(out_of_bounds.clone())?;
        if end > self.len {
            return Err(out_of_bounds);
        }
        let g = self.geometry;
        let [(at, first), (wrapped, _)] = g.ring_spans(self.start + offset as u64, bytes.len() as u64);
        let (head, tail) = bytes.split_at(first as usize);
        words::write(self.words, at, head);
        words::write(self.words, wrapped, tail);
        Ok(())
    }
}

/// Fails unless the header, the unit table and the chunk counters are all
/// zero (the sections a layout relies on starting blank), but for the
/// host's flag word, which a host may set before any client lays the
/// region out.
fn check_blank(words: &[crate::sync::AtomicU64], g: &Geometry) -> Result<(), RegionError> {
    let end = g.counters_offset + g.counters * layout::COUNTER_SIZE;
    for at in (0..end).step_by(8) {
        if at == header::HOST_FLAGS {
            continue;
        }
        if words::load(words, at, Relaxed) != 0 {
            return Err(RegionError::NotBlank { offset: at });
        }
    }
    Ok(())
}

/// Writes the header of a blank region; the magic goes last.
fn lay_out(words: &[crate::sync::AtomicU64], g: &Geometry) {
    for (at, value) in g.fixed_fields() {
        words::store(words, at, value, Relaxed);
    }
    // ORDERING: release; pairs with the acquire load of the magic in
    // `Client::open` and `Observer::new`: a reader that sees the magic sees
    // every field stored above. A crash before this store leaves a header
    // without magic, which `check_blank` refuses rather than overwrite.
    words::store(words, header::MAGIC, layout::MAGIC, Release);
}

/// The units whose tags are valid, each checked with [`Geometry::check_unit`].
fn valid_units(words: &[crate::sync::AtomicU64], g: &Geometry) -> Result<Vec<UnitRef>, RegionError> {
    let mut units = Vec::new();
    for index in 0..g.slots {
        // ORDERING: acquire; pairs with the release store of the tag when the
        // unit was published (step 4), so its offset and length are those
        // published with this tag.
        let tag = Tag(words::load(words, g.slot_field(index, slot::TAG), Acquire));
        match tag.state() {
            Some(State::Valid) => {}
            Some(State::Empty | State::Invalid) => continue,
            None => {
                return Err(RegionError::CorruptSlot {
                    slot: index,
                    why: "undefined state bits",
                });
            }
        }
        let offset = words::load(words, g.slot_field(index, slot::OFFSET), Relaxed);
        let len = words::load(words, g.slot_field(index, slot::LEN), Relaxed);
        g.check_unit(index, tag, offset, len)
            .map_err(|why| RegionError::CorruptSlot { slot: index, why })?;
        units.push(UnitRef {
            slot: index,
            tag,
            offset,
            len,
        });
    }
    Ok(units)
}

/// Copies a checked unit's bytes out of the ring.
pub(crate) fn read_unit(words: &[crate::sync::AtomicU64], g: &Geometry, u: &UnitRef) -> Vec<u8> {
    let mut bytes = vec![0u8; u.len as usize];
    let [(at, first), (wrapped, _)] = g.ring_spans(u.offset, u.len);
    let (head, tail) = bytes.split_at_mut(first as usize);
    words::read(words, at, head);
    words::read(words, wrapped, tail);
    bytes
}

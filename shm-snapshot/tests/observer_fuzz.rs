//! The observer reads a region a child may have scribbled over: whatever the
//! bytes, it must return an error or a sound answer, never panic, never read
//! out of bounds and never keep a unit it did not prove.
//!
//! Regions here are memfds written through the file (`pwrite`) and observed
//! through a read-only mapping, as the supervisor does. Offsets come from
//! [`shm_snapshot::layout`] and the region's [`Geometry`], never from
//! numbers of our own.

#![cfg(not(loom))]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::FileFailurePersistence;
use shm_snapshot::layout::{self, Geometry, HEADER_BYTES, PAGE, State, UnitRef, header, limits, slot};
use shm_snapshot::{Client, Config, Observer, Region};

/// A small layout: eight slots and a one-page ring, so a handful of commits
/// wrap the ring and reuse slots.
const CONFIG: Config = Config {
    slots: 8,
    ring_bytes: PAGE,
    chunk_bytes: PAGE,
};

/// Pages of arena past the ring, so the arena spans several chunks.
const ARENA_PAGES: u64 = 3;

/// Every header field v1 defines.
const HEADER_FIELDS: [u64; 14] = [
    header::MAGIC,
    header::VERSION,
    header::REGION_LEN,
    header::SLOT_COUNT,
    header::RING_BYTES,
    header::CHUNK_BYTES,
    header::TABLE_OFFSET,
    header::COUNTERS_OFFSET,
    header::RING_OFFSET,
    header::ARENA_OFFSET,
    header::ARENA_LEN,
    header::CURSOR,
    header::NEXT_SEQ,
    header::COMMIT_COUNT,
];

/// Every field of a unit-table slot.
const SLOT_FIELDS: [u64; 4] = [slot::TAG, slot::OFFSET, slot::LEN, slot::RESERVED];

/// The geometry `CONFIG` lays out in a region of `len` bytes.
fn geometry_of(len: u64) -> Result<Geometry, shm_snapshot::RegionError> {
    Geometry::derive(len, CONFIG.slots, CONFIG.ring_bytes, CONFIG.chunk_bytes)
}

/// The length of the structured regions: the smallest `CONFIG` fits in, plus
/// the arena pages.
fn structured_len() -> u64 {
    let base = (1..)
        .map(|pages| pages * PAGE)
        .find(|&len| geometry_of(len).is_ok())
        .expect("some region length fits the configuration");
    base + ARENA_PAGES * PAGE
}

/// SplitMix64, to fill a region from a seed.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn seeded_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len.div_ceil(8))
        .flat_map(|i| mix(seed ^ i).to_le_bytes())
        .collect();
    bytes.truncate(len as usize);
    bytes
}

fn write_word(file: &File, at: u64, value: u64) {
    file.write_at(&value.to_le_bytes(), at).expect("write the memfd");
}

fn read_word(file: &File, at: u64) -> u64 {
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, at).expect("read the memfd");
    u64::from_le_bytes(word)
}

/// Maps `file` read-only, as the supervisor does, and observes it.
fn observe_read_only(file: &File) -> Result<Observer, shm_snapshot::RegionError> {
    let file = file.try_clone().expect("dup the memfd");
    // SAFETY: every file here is a memfd made by `Region::anonymous`, sealed
    // against shrinking, so the mapping never loses its pages.
    let region = unsafe { Region::from_file_read_only(file) }?;
    Observer::new(region)
}

/// Values that sit on the checks' edges as well as anywhere at all.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..=64,
        (0u32..64).prop_map(|shift| 1u64 << shift),
        (0u64..64, 0u64..4).prop_map(|(seq, state)| seq << 2 | state),
        (any::<u64>(), 0u64..4).prop_map(|(seq, state)| seq << 2 | state),
        (0u64..4 * PAGE).prop_map(|offset| offset & !7),
        Just(u64::MAX),
        Just(limits::MAX_COUNTER),
        Just(limits::MAX_COUNTER + 8),
        Just(layout::MAGIC),
        Just(CONFIG.ring_bytes),
        Just(CONFIG.ring_bytes + 1),
    ]
}

/// One write a hostile child might make.
#[derive(Debug, Clone)]
enum Scribble {
    /// A header field (an index into `HEADER_FIELDS`).
    Header { field: usize, value: u64 },
    /// A field (an index into `SLOT_FIELDS`) of a unit-table slot.
    Slot { index: u64, field: usize, value: u64 },
    /// Bytes at a position in the ring.
    Ring { at: u64, bytes: Vec<u8> },
    /// A word anywhere in the region (an index in words).
    Word { index: u64, value: u64 },
}

fn scribble() -> impl Strategy<Value = Scribble> {
    prop_oneof![
        1 => (0..HEADER_FIELDS.len(), value()).prop_map(|(field, value)| Scribble::Header { field, value }),
        3 => (0..CONFIG.slots, 0..SLOT_FIELDS.len(), value())
            .prop_map(|(index, field, value)| Scribble::Slot { index, field, value }),
        1 => (0..CONFIG.ring_bytes, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Scribble::Ring { at, bytes }),
        1 => (any::<u64>(), value()).prop_map(|(index, value)| Scribble::Word { index, value }),
    ]
}

impl Scribble {
    /// Writes the scribble into the region of geometry `g` behind `file`.
    fn apply(&self, file: &File, g: &Geometry) {
        match self {
            Scribble::Header { field, value } => write_word(file, HEADER_FIELDS[*field], *value),
            Scribble::Slot { index, field, value } => {
                write_word(file, g.slot_field(*index, SLOT_FIELDS[*field]), *value)
            }
            Scribble::Ring { at, bytes } => {
                let room = (g.ring_bytes - at) as usize;
                let bytes = &bytes[..bytes.len().min(room)];
                file.write_at(bytes, g.ring_offset + at).expect("write the memfd");
            }
            Scribble::Word { index, value } => write_word(file, index % (g.region_len / 8) * 8, *value),
        }
    }
}

/// A copy request: byte offset and length, in or out of the region.
fn range() -> impl Strategy<Value = (u64, usize)> {
    prop_oneof![
        (0u64..8 * PAGE, 0usize..2 * PAGE as usize),
        (any::<u64>(), 0usize..64),
        (u64::MAX - 64..=u64::MAX, 0usize..128),
    ]
}

/// What one observation returned.
struct Observation {
    pre: Vec<UnitRef>,
    copies: Vec<Vec<u8>>,
    kept: Vec<UnitRef>,
}

/// Runs every read the observer offers, with `between` called after Pre and
/// the copies and before Post, and checks each answer is sound:
///
/// - every Pre unit is a valid tag in a distinct slot that passes
///   `Geometry::check_unit`, and its copy has its length;
/// - `copy_range` succeeds exactly for ranges inside the region;
/// - `chunk_counters` has one counter per arena chunk;
/// - Post keeps a subset of Pre, in increasing sequence order with
///   non-overlapping stream ranges, consecutive units meeting exactly, each
///   still tagged as in Pre.
fn exercise(
    observer: &Observer,
    file: &File,
    ranges: &[(u64, usize)],
    between: impl FnOnce(),
) -> Observation {
    let g = *observer.geometry();
    let _ = observer.check_header();
    let _ = (observer.commit_count(), observer.cursor(), observer.next_seq());

    let mut pre = Vec::new();
    let _ = observer.pre(&mut pre);
    let mut slots_seen = Vec::new();
    for u in &pre {
        assert_eq!(u.tag.state(), Some(State::Valid), "{u:?}");
        assert_eq!(g.check_unit(u.slot, u.tag, u.offset, u.len), Ok(()), "{u:?}");
        assert!(!slots_seen.contains(&u.slot), "slot {} twice in Pre", u.slot);
        slots_seen.push(u.slot);
    }
    let copies: Vec<Vec<u8>> = pre.iter().map(|u| observer.copy_unit(u)).collect();
    for (u, bytes) in pre.iter().zip(&copies) {
        assert_eq!(bytes.len() as u64, u.len);
    }
    for &(at, len) in ranges {
        let mut out = vec![0u8; len];
        let inside = at.checked_add(len as u64).is_some_and(|end| end <= g.region_len);
        assert_eq!(
            observer.copy_range(at, &mut out).is_ok(),
            inside,
            "range {at}+{len}"
        );
    }
    let mut counters = Vec::new();
    observer.chunk_counters(&mut counters);
    assert_eq!(counters.len() as u64, g.arena_len.div_ceil(g.chunk_bytes));

    between();

    let mut kept = Vec::new();
    let _ = observer.post(&pre, &mut kept);
    for u in &kept {
        assert!(pre.contains(u), "Post kept {u:?}, which Pre did not find");
        assert_eq!(
            read_word(file, g.slot_field(u.slot, slot::TAG)),
            u.tag.0,
            "Post kept changed {u:?}"
        );
    }
    for pair in kept.windows(2) {
        assert!(pair[0].seq() < pair[1].seq(), "Post out of order: {pair:?}");
        assert!(
            pair[0].end() <= pair[1].offset,
            "Post kept overlapping units: {pair:?}"
        );
        assert!(
            pair[0].seq() + 1 != pair[1].seq() || pair[0].end() == pair[1].offset,
            "Post kept consecutive units that do not meet: {pair:?}"
        );
    }
    let _ = observer.check_header();
    Observation { pre, copies, kept }
}

/// How a random region's header is set up before the random overrides.
#[derive(Debug, Clone)]
enum Header {
    /// Random bytes only.
    Raw,
    /// Magic, version and length right, the rest random.
    Magic,
    /// A whole header derived from these parameters (log2), so the observer
    /// accepts the region and reads a random ring and table; with
    /// `plausible_table`, most slots hold a valid tag of a sequence number
    /// that belongs to them, an aligned offset and a length within the ring,
    /// so random units get as far as the copy and the chain check.
    Laid {
        slots: u32,
        ring: u32,
        chunk: u32,
        arena_pages: u64,
        plausible_table: bool,
    },
}

fn random_header() -> impl Strategy<Value = Header> {
    prop_oneof![
        1 => Just(Header::Raw),
        1 => Just(Header::Magic),
        4 => (0u32..6, 12u32..15, 12u32..15, 0u64..4, any::<bool>()).prop_map(
            |(slots, ring, chunk, arena_pages, plausible_table)| Header::Laid {
                slots,
                ring,
                chunk,
                arena_pages,
                plausible_table,
            }
        ),
    ]
}

/// A region of random bytes laid out as `header` says, with `overrides`
/// (an index into `HEADER_FIELDS`, a value) written over its header.
fn random_region(header: &Header, len: u64, seed: u64, overrides: &[(usize, u64)]) -> Region {
    let len = match header {
        Header::Laid {
            slots,
            ring,
            chunk,
            arena_pages,
            ..
        } => {
            let (slots, ring, chunk) = (1 << slots, 1 << ring, 1 << chunk);
            let base = (1..64)
                .map(|pages| pages * PAGE)
                .find(|&len| Geometry::derive(len, slots, ring, chunk).is_ok())
                .expect("small parameters fit a few pages");
            base + arena_pages * PAGE
        }
        Header::Raw | Header::Magic => len,
    };
    let region = Region::anonymous(len).expect("create a region");
    let file = region.file();
    file.write_at(&seeded_bytes(seed, len), 0)
        .expect("fill the memfd");
    match header {
        Header::Raw => {}
        Header::Magic => {
            write_word(file, header::MAGIC, layout::MAGIC);
            write_word(file, header::VERSION, layout::VERSION);
            write_word(file, header::REGION_LEN, len);
        }
        Header::Laid {
            slots,
            ring,
            chunk,
            plausible_table,
            ..
        } => {
            let g = Geometry::derive(len, 1 << slots, 1 << ring, 1 << chunk).expect("derived above");
            for (at, value) in g.fixed_fields() {
                write_word(file, at, value);
            }
            write_word(file, header::MAGIC, layout::MAGIC);
            if *plausible_table {
                for index in 0..g.slots {
                    let r = mix(seed ^ !index);
                    let seq = index + g.slots * (r % 8);
                    let state = if (r >> 3) & 7 == 0 { (r >> 6) & 3 } else { 1 };
                    write_word(file, g.slot_field(index, slot::TAG), seq << 2 | state);
                    write_word(
                        file,
                        g.slot_field(index, slot::OFFSET),
                        ((r >> 8) % (4 * g.ring_bytes)) & !7,
                    );
                    write_word(
                        file,
                        g.slot_field(index, slot::LEN),
                        (r >> 32) % (g.ring_bytes + 1),
                    );
                }
            }
        }
    }
    for &(field, value) in overrides {
        write_word(file, HEADER_FIELDS[field], value);
    }
    region
}

/// A region laid out by a real client, with units of `lens` committed (each
/// also writing the arena, so chunk counters move). The client is returned
/// so its mapping lives as long as the test needs it.
fn committed_region(lens: &[usize]) -> (Client, File) {
    let region = Region::anonymous(structured_len()).expect("create a region");
    let file = region.file().try_clone().expect("dup the memfd");
    let mut client = Client::open(region, &CONFIG).expect("blank region lays out");
    for (i, &len) in lens.iter().enumerate() {
        let bytes = seeded_bytes(i as u64, len as u64);
        client
            .commit_with(&bytes, |tx| {
                let at = (i * 4099) % (tx.arena().len() - 8);
                tx.arena().write(at, &(i as u64).to_le_bytes())
            })
            .expect("unit fits the ring");
    }
    (client, file)
}

fn unit_lens() -> impl Strategy<Value = Vec<usize>> {
    let ring = CONFIG.ring_bytes as usize;
    prop::collection::vec(prop_oneof![0..64usize, 0..=ring / 2, 0..=ring], 0..24)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_region_bytes_never_make_the_observer_panic(
        header in random_header(),
        len in HEADER_BYTES..=4 * PAGE,
        seed in any::<u64>(),
        overrides in prop::collection::vec((0..HEADER_FIELDS.len(), value()), 0..3),
        ranges in prop::collection::vec(range(), 0..4),
    ) {
        let region = random_region(&header, len, seed, &overrides);
        if let Ok(observer) = observe_read_only(region.file()) {
            exercise(&observer, region.file(), &ranges, || {});
        }
    }

    #[test]
    fn scribbled_region_never_makes_the_observer_panic_or_keep_an_unproven_unit(
        lens in unit_lens(),
        scribbles in prop::collection::vec(scribble(), 0..12),
        ranges in prop::collection::vec(range(), 0..4),
    ) {
        let (client, file) = committed_region(&lens);
        let g = *client.geometry();
        for s in &scribbles {
            s.apply(&file, &g);
        }
        if let Ok(observer) = observe_read_only(&file) {
            // A scribbled header may still describe a sound region (e.g. one
            // slot instead of eight, the table's page unchanged): the
            // observer follows it, but only if it is self-consistent.
            let seen = *observer.geometry();
            prop_assert_eq!(seen.region_len, g.region_len);
            let derived = Geometry::derive(seen.region_len, seen.slots, seen.ring_bytes, seen.chunk_bytes);
            prop_assert_eq!(Ok(seen), derived.map_err(|e| e.to_string()));
            exercise(&observer, &file, &ranges, || {});
        }
    }

    #[test]
    fn region_scribbled_between_pre_and_post_never_makes_the_observer_keep_a_changed_unit(
        lens in unit_lens(),
        before in prop::collection::vec(scribble(), 0..4),
        during in prop::collection::vec(scribble(), 1..12),
        ranges in prop::collection::vec(range(), 0..4),
    ) {
        let (client, file) = committed_region(&lens);
        let g = *client.geometry();
        for s in &before {
            s.apply(&file, &g);
        }
        if let Ok(observer) = observe_read_only(&file) {
            exercise(&observer, &file, &ranges, || {
                for s in &during {
                    s.apply(&file, &g);
                }
            });
        }
    }

    #[test]
    fn quiet_region_keeps_exactly_the_units_the_client_recovers(lens in unit_lens()) {
        let (client, file) = committed_region(&lens);
        let observer = observe_read_only(&file).expect("laid-out region is observable");
        let seen = exercise(&observer, &file, &[], || {});
        prop_assert_eq!(seen.pre.len(), seen.kept.len(), "a quiet region loses no unit");
        let recovered = client.recover().expect("client recovers its units");
        let kept: Vec<(u64, Vec<u8>)> = seen
            .kept
            .iter()
            .map(|u| {
                let at = seen.pre.iter().position(|p| p == u).expect("kept units come from Pre");
                (u.seq(), seen.copies[at].clone())
            })
            .collect();
        let expected: Vec<(u64, Vec<u8>)> = recovered.into_iter().map(|u| (u.id.0, u.bytes)).collect();
        // The client numbers units from 1; `committed_region` derives unit
        // i's bytes (0-based) from i.
        let newest = lens
            .last()
            .map(|&len| (lens.len() as u64, seeded_bytes(lens.len() as u64 - 1, len as u64)));
        prop_assert_eq!(kept.last(), newest.as_ref());
        prop_assert_eq!(kept, expected);
    }
}

#[test]
fn observer_survives_a_child_scribbling_while_it_snapshots() {
    let (client, file) = committed_region(&[100, 2000, 37, 900, 0, 1500]);
    let g = *client.geometry();
    let observer = observe_read_only(&file).expect("laid-out region is observable");
    let stop = AtomicBool::new(false);
    let snapshots = std::thread::scope(|scope| {
        let scribbler = scope.spawn(|| {
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let scribbles = prop::collection::vec(scribble(), 64);
            while !stop.load(Relaxed) {
                let batch = scribbles
                    .new_tree(&mut runner)
                    .expect("generate scribbles")
                    .current();
                for s in batch {
                    s.apply(&file, &g);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut snapshots = 0u64;
        let ranges = [(0, 64), (g.arena_offset, 4096), (g.region_len - 8, 16)];
        while Instant::now() < deadline {
            // The child may change anything at any moment, so only what holds
            // whatever it writes is checked: bounds, order, no panic.
            let mut pre = Vec::new();
            observer.pre(&mut pre);
            for u in &pre {
                assert_eq!(g.check_unit(u.slot, u.tag, u.offset, u.len), Ok(()), "{u:?}");
                assert_eq!(observer.copy_unit(u).len() as u64, u.len);
            }
            for (at, len) in ranges {
                let mut out = vec![0u8; len];
                let inside = at + len as u64 <= g.region_len;
                assert_eq!(observer.copy_range(at, &mut out).is_ok(), inside);
            }
            let mut kept = Vec::new();
            observer.post(&pre, &mut kept);
            for pair in kept.windows(2) {
                assert!(
                    pair[0].seq() < pair[1].seq() && pair[0].end() <= pair[1].offset,
                    "{pair:?}"
                );
                assert!(
                    pair[0].seq() + 1 != pair[1].seq() || pair[0].end() == pair[1].offset,
                    "{pair:?}"
                );
            }
            let _ = observer.check_header();
            snapshots += 1;
        }
        stop.store(true, Relaxed);
        scribbler.join().expect("scribbler thread panicked");
        snapshots
    });
    assert!(snapshots > 0);
}

// The client attaching to a region a child scribbled over. The observer does
// not read `NEXT_SEQ` (an untrusted hint), so a scribbled value survives a
// post-mortem snapshot and reaches the restarted client.

/// Runs `f` on another thread and fails if it takes longer than `limit`.
/// A run that overstays is left spinning; the test binary ends it on exit.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(f()));
    result
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

#[test]
fn commit_after_a_scribbled_next_seq_returns_promptly() {
    let (mut client, file) = committed_region(&[]);
    client
        .commit(b"survives the restart")
        .expect("unit fits the ring");
    write_word(&file, header::NEXT_SEQ, 1 << 40);
    // Refusing the region is sound; opening it and then walking 2^40
    // sequence numbers on the next commit is not.
    let Ok(mut client) = Client::open(client.into_region(), &CONFIG) else {
        return;
    };
    // Wait-free: a commit is a bounded amount of work whatever the region
    // held when it was opened (at most `slots` invalidations).
    within(Duration::from_secs(2), move || {
        client.commit(b"after the restart")
    })
    .expect("unit fits the ring");
}

#[test]
fn client_never_publishes_a_unit_its_own_table_then_rejects() {
    let (client, file) = committed_region(&[]);
    write_word(&file, header::NEXT_SEQ, limits::MAX_COUNTER - 1);
    // Refusing the region, or a commit, is sound; publishing a unit that
    // the table then holds as sequence number 0 is not.
    let Ok(mut client) = Client::open(client.into_region(), &CONFIG) else {
        return;
    };
    let accepted = (0..2).filter(|_| client.commit(b"unit").is_ok()).count();
    let recovered = client.recover().expect("the client's own table is sound");
    assert_eq!(recovered.len(), accepted, "{recovered:?}");
    assert!(
        Client::open(client.into_region(), &CONFIG).is_ok(),
        "the region reopens"
    );
}

// Forgeries of a unit-table slot with every field in bounds and the
// sequence number in its own slot, as the hostile child makes them: only
// the chain rule (FORMAT.md) can tell them from a commit. Units of one
// length from a blank region: unit `s` lies at stream offset `(s - 1) * len`.

/// Bytes of each unit in the forgery tests.
const UNIT: u64 = 32;

/// Rewrites unit `seq`'s slot with its own valid tag over a range 8 bytes
/// into the next unit (so its bytes are the next unit's last `UNIT - 8`),
/// in the order the hostile child writes: offset, length, tag.
fn forge_into_next_unit(file: &File, g: &Geometry, seq: u64) {
    let index = g.slot_of(seq);
    write_word(file, g.slot_field(index, slot::OFFSET), seq * UNIT + 8);
    write_word(file, g.slot_field(index, slot::LEN), UNIT - 8);
    write_word(file, g.slot_field(index, slot::TAG), layout::Tag::valid(seq).0);
}

/// Overwrites unit `seq`'s whole slot with bytes whose tag has undefined
/// state bits, as a table attack may.
fn destroy_slot(file: &File, g: &Geometry, seq: u64) {
    for (i, field) in SLOT_FIELDS.into_iter().enumerate() {
        write_word(file, g.slot_field(g.slot_of(seq), field), mix(seq ^ i as u64) | 3);
    }
}

/// Observes a region no one writes: Pre, the copy of every Pre unit, Post.
/// Returns the sequence numbers kept and the units dropped by the chain
/// rule, after checking that every kept unit's bytes are the ones the
/// client committed (unit `s` is `seeded_bytes(s - 1, UNIT)`).
fn observe_units(file: &File) -> (Vec<u64>, u64) {
    let observer = observe_read_only(file).expect("laid-out region is observable");
    let mut pre = Vec::new();
    observer.pre(&mut pre);
    let copies: Vec<(UnitRef, Vec<u8>)> = pre.iter().map(|u| (*u, observer.copy_unit(u))).collect();
    let mut kept = Vec::new();
    let post = observer.post(&pre, &mut kept);
    for u in &kept {
        let (_, bytes) = copies
            .iter()
            .find(|(p, _)| p == u)
            .expect("kept units come from Pre");
        assert_eq!(
            *bytes,
            seeded_bytes(u.seq() - 1, UNIT),
            "kept {u:?}, a unit the client never committed"
        );
    }
    (kept.iter().map(UnitRef::seq).collect(), post.broken_chain)
}

#[test]
fn forged_unit_whose_newer_neighbour_was_destroyed_is_not_kept() {
    // Unit 4 forged 8 bytes into unit 5, unit 5's slot destroyed, unit 6
    // committed: the forgery overlaps no unit, but it does not start where
    // unit 3, the one before it, ends.
    let (mut client, file) = committed_region(&[UNIT as usize; 5]);
    let g = *client.geometry();
    forge_into_next_unit(&file, &g, 4);
    destroy_slot(&file, &g, 5);
    client.commit(&seeded_bytes(5, UNIT)).expect("unit fits the ring");
    assert_eq!(observe_units(&file), (vec![6], 4));
}

#[test]
fn forged_newest_unit_is_not_kept() {
    // As above without unit 6: the forgery is the newest unit left, as it
    // is to a host whose Pre read unit 5's slot before unit 5 was
    // published. Unit 3 contradicts it, and neither is kept.
    let (client, file) = committed_region(&[UNIT as usize; 5]);
    let g = *client.geometry();
    forge_into_next_unit(&file, &g, 4);
    destroy_slot(&file, &g, 5);
    assert_eq!(observe_units(&file), (vec![], 4));
}

#[test]
fn forged_unit_overlapping_the_unit_it_lies_in_is_not_kept() {
    // Unit 4 forged 8 bytes into unit 5, which is intact: the two
    // contradict each other, so neither is kept; unit 6 is.
    let (mut client, file) = committed_region(&[UNIT as usize; 5]);
    let g = *client.geometry();
    forge_into_next_unit(&file, &g, 4);
    assert_eq!(observe_units(&file), (vec![], 5));
    client.commit(&seeded_bytes(5, UNIT)).expect("unit fits the ring");
    assert_eq!(observe_units(&file), (vec![6], 5));
}

#[test]
fn unit_moved_within_its_own_range_to_end_where_the_next_begins_is_not_kept() {
    // Unit 4 rewritten as its own last 24 bytes: it still ends where unit 5
    // begins, but no longer begins where unit 3 ends.
    let (client, file) = committed_region(&[UNIT as usize; 5]);
    let g = *client.geometry();
    forge_into_next_unit(&file, &g, 4);
    write_word(&file, g.slot_field(g.slot_of(4), slot::OFFSET), 3 * UNIT + 8);
    assert_eq!(observe_units(&file), (vec![5], 4));
}

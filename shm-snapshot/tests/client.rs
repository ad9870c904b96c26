//! The client through its public API: a model-based property test of
//! commits, aborted commits, patches and restarts on a ring that wraps every
//! few units; the commit, patch and arena contracts; every refusal when a
//! region is opened; and restarts after a client killed in the middle of a
//! commit.
//!
//! Region bytes are changed behind the client's back through the region's
//! file (`FileExt::write_at` on the memfd writes the very pages the mapping
//! shows), at offsets taken from `layout` and `Geometry`.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;

use proptest::prelude::*;
use shm_snapshot::layout::{self, Geometry, Tag, header, limits, slot};
use shm_snapshot::{
    ArenaError, Client, CommitError, CommitWithError, Config, Region, RegionError, Unit, UnitId,
};

/// Ring bytes of the test regions: the smallest ring there is, so a few
/// units wrap it.
const RING_BYTES: u64 = limits::MIN_RING;

/// A configuration under which the ring wraps every few commits and the
/// four slots are reused every fourth one.
const SMALL: Config = Config {
    slots: 4,
    ring_bytes: RING_BYTES,
    chunk_bytes: limits::MIN_CHUNK,
};

/// Arena chunks of the regions the arena tests use: enough for writes that
/// touch one, two or none of a chunk's neighbours.
const ARENA_CHUNKS: u64 = 3;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The shortest region length under `config` with at least `arena_bytes` of
/// arena, found by asking `Geometry::derive` rather than restating the
/// layout.
fn region_len_for(config: &Config, arena_bytes: u64) -> u64 {
    (1..)
        .map(|pages| pages * layout::PAGE)
        .find(|&len| {
            Geometry::derive(len, config.slots, config.ring_bytes, config.chunk_bytes)
                .is_ok_and(|g| g.arena_len >= arena_bytes)
        })
        .expect("some region length fits the configuration")
}

/// A client on a fresh blank region laid out with [`SMALL`], with
/// [`ARENA_CHUNKS`] chunks of arena.
fn small_client() -> Client {
    let len = region_len_for(&SMALL, ARENA_CHUNKS * SMALL.chunk_bytes);
    let region = Region::anonymous(len).expect("creating a memfd region");
    Client::open(region, &SMALL).expect("a blank region is laid out")
}

/// The program restarts: a new client on the same region.
fn restart(client: Client) -> Client {
    Client::open(client.into_region(), &SMALL).expect("reopening a region the client wrote")
}

/// A second descriptor of the region's memfd, which outlives a `Region`
/// that a failed `Client::open` consumed.
fn file_of(region: &Region) -> File {
    region
        .file()
        .try_clone()
        .expect("duplicating the region descriptor")
}

/// Every byte of the region behind `file`.
fn image(file: &File) -> Vec<u8> {
    let len = file.metadata().expect("region metadata").len();
    let mut bytes = vec![0u8; usize::try_from(len).expect("region fits in memory")];
    file.read_exact_at(&mut bytes, 0).expect("reading the region");
    bytes
}

fn read_u64(region: &Region, at: u64) -> u64 {
    let mut le = [0u8; 8];
    region
        .file()
        .read_exact_at(&mut le, at)
        .expect("reading a region word");
    u64::from_le_bytes(le)
}

fn write_u64(region: &Region, at: u64, value: u64) {
    write_bytes(region, at, &value.to_le_bytes());
}

fn write_bytes(region: &Region, at: u64, bytes: &[u8]) {
    region.file().write_all_at(bytes, at).expect("writing the region");
}

/// Writes `bytes` into the ring at stream offset `stream`, wrapping at the
/// ring's end as the client does.
fn write_ring(region: &Region, g: &Geometry, stream: u64, bytes: &[u8]) {
    let room = usize::try_from(g.ring_bytes - (stream & (g.ring_bytes - 1))).expect("ring fits");
    let (head, tail) = bytes.split_at(bytes.len().min(room));
    write_bytes(region, g.ring_at(stream), head);
    write_bytes(region, g.ring_offset, tail);
}

/// Opens `region`, which must be refused, and checks that the refusal left
/// every byte of it as it was: a refused region is never re-initialised.
fn refuse(region: Region, config: &Config) -> RegionError {
    let file = file_of(&region);
    let before = image(&file);
    let err = Client::open(region, config).expect_err("the region must be refused");
    assert!(
        image(&file) == before,
        "refusing the region ({err}) changed its bytes"
    );
    err
}

/// A region laid out with [`SMALL`] holding two units (ids 1 and 2), given
/// back with its geometry for tampering.
fn region_with_two_units() -> (Region, Geometry) {
    let mut client = small_client();
    client.commit(b"first unit").expect("committing");
    client.commit(b"second unit").expect("committing");
    let g = *client.geometry();
    (client.into_region(), g)
}

/// `len` bytes that differ from seed to seed: the splitmix64 sequence (its
/// published constants), so units are told apart by content and not only by
/// length.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn ids(units: &[Unit]) -> Vec<UnitId> {
    units.iter().map(|u| u.id).collect()
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// What the ring should hold: units in a stream of monotonically increasing
/// offsets, each occupying `[offset, offset + pad(len))`, of which the ring
/// keeps the ones neither overwritten by a newer reservation nor evicted from
/// a reused slot.
#[derive(Debug)]
struct Model {
    ring_bytes: u64,
    slots: u64,
    /// Stream offset where the next unit goes.
    cursor: u64,
    /// Id of the next published unit.
    next_seq: u64,
    /// Valid units, oldest first: (id, stream offset, bytes).
    units: VecDeque<(u64, u64, Vec<u8>)>,
}

impl Model {
    fn new(config: &Config) -> Model {
        Model {
            ring_bytes: config.ring_bytes,
            slots: config.slots,
            cursor: 0,
            next_seq: 1,
            units: VecDeque::new(),
        }
    }

    /// Reserves room for a unit of `len` bytes: every unit whose bytes the
    /// range `[cursor, cursor + pad(len))` overwrites in the ring, and the
    /// one whose slot the next id reuses, stop being valid. Returns the end
    /// of the range. Aborted commits reserve too.
    fn reserve(&mut self, len: usize) -> u64 {
        let end = self.cursor + layout::pad(len as u64);
        let (ring_bytes, slots, seq) = (self.ring_bytes, self.slots, self.next_seq);
        self.units
            .retain(|&(id, offset, _)| offset + ring_bytes >= end && seq - id < slots);
        end
    }

    /// Publishes `bytes` as the next unit and returns its id.
    fn commit(&mut self, bytes: Vec<u8>) -> UnitId {
        let end = self.reserve(bytes.len());
        let id = self.next_seq;
        self.units.push_back((id, self.cursor, bytes));
        self.cursor = end;
        self.next_seq += 1;
        UnitId(id)
    }

    fn expected(&self) -> Vec<Unit> {
        self.units
            .iter()
            .map(|(id, _, bytes)| Unit {
                id: UnitId(*id),
                bytes: bytes.clone(),
            })
            .collect()
    }
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    /// `commit` of `len` bytes drawn from `seed`.
    Commit { len: usize, seed: u64 },
    /// `commit_with` of `len` bytes whose closure returns an error.
    Abort { len: usize, seed: u64 },
    /// `commit_with` of `len` bytes whose closure patches them; each patch
    /// is (offset, length, byte), reduced into the unit's bounds.
    Patch {
        len: usize,
        seed: u64,
        patches: Vec<(usize, usize, u8)>,
    },
    /// The program restarts on the same region.
    Reopen,
    /// `recover` on its own, twice: it must change nothing.
    Recover,
}

/// Unit lengths: mostly small so several units share the ring, often up to
/// the whole ring, sometimes just under or exactly at the ring's size, and
/// now and then one byte too long.
fn unit_len() -> impl Strategy<Value = usize> {
    let ring = RING_BYTES as usize;
    prop_oneof![
        4 => 0..=64usize,
        3 => 0..=ring,
        1 => ring - 16..=ring,
        1 => Just(ring + 1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (unit_len(), any::<u64>()).prop_map(|(len, seed)| Op::Commit { len, seed }),
        2 => (unit_len(), any::<u64>()).prop_map(|(len, seed)| Op::Abort { len, seed }),
        2 => (
            unit_len(),
            any::<u64>(),
            prop::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 0..4),
        )
            .prop_map(|(len, seed, patches)| Op::Patch { len, seed, patches }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Recover),
    ]
}

/// Runs `ops` against a client on a fresh region and against the model,
/// comparing `recover` with the model after every step.
fn run_against_model(slots: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let config = Config { slots, ..SMALL };
    let region = Region::anonymous(region_len_for(&config, 0)).expect("creating a memfd region");
    let mut client = Client::open(region, &config).expect("a blank region is laid out");
    let mut model = Model::new(&config);
    let mut last_id = UnitId(0);
    let too_large = |len: usize| CommitError::UnitTooLarge {
        len,
        ring_bytes: RING_BYTES,
    };

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Commit { len, seed } => {
                let bytes = pattern(*len, *seed);
                match client.commit(&bytes) {
                    Ok(id) => {
                        prop_assert_eq!(id, model.commit(bytes));
                        prop_assert!(id > last_id, "id {:?} after {:?}", id, last_id);
                        last_id = id;
                    }
                    Err(e) => prop_assert_eq!(e, too_large(*len)),
                }
            }
            Op::Abort { len, seed } => {
                let bytes = pattern(*len, *seed);
                match client.commit_with(&bytes, |tx| Err::<(), UnitId>(tx.id())) {
                    Err(CommitWithError::Aborted(id)) => {
                        prop_assert_eq!(id, UnitId(model.next_seq), "the aborted unit's id");
                        model.reserve(*len);
                    }
                    Err(CommitWithError::Commit(e)) => prop_assert_eq!(e, too_large(*len)),
                    Ok(_) => prop_assert!(false, "an aborted commit_with published"),
                }
            }
            Op::Patch { len, seed, patches } => {
                let bytes = pattern(*len, *seed);
                let patches: Vec<(usize, Vec<u8>)> = patches
                    .iter()
                    .map(|&(offset, patch_len, byte)| {
                        let offset = offset % (len + 1);
                        (offset, vec![byte; patch_len % (len - offset + 1)])
                    })
                    .collect();
                let result = client.commit_with(&bytes, |tx| {
                    for (offset, patch) in &patches {
                        tx.patch(*offset, patch)?;
                    }
                    // A patch one byte past the unit is refused and writes nothing.
                    Ok::<_, CommitError>((tx.id(), tx.patch(*len, &[0xa5])))
                });
                match result {
                    Ok((id, (tx_id, past_end))) => {
                        prop_assert_eq!(
                            past_end,
                            Err(CommitError::PatchOutOfBounds {
                                offset: *len,
                                len: 1,
                                unit_len: *len,
                            })
                        );
                        prop_assert_eq!(id, tx_id);
                        let mut patched = bytes;
                        for (offset, patch) in &patches {
                            patched[*offset..*offset + patch.len()].copy_from_slice(patch);
                        }
                        prop_assert_eq!(id, model.commit(patched));
                        prop_assert!(id > last_id, "id {:?} after {:?}", id, last_id);
                        last_id = id;
                    }
                    Err(CommitWithError::Commit(e)) => prop_assert_eq!(e, too_large(*len)),
                    Err(CommitWithError::Aborted(e)) => {
                        prop_assert!(false, "an in-bounds patch was refused: {}", e)
                    }
                }
            }
            Op::Reopen => {
                client = Client::open(client.into_region(), &config).expect("reopening");
            }
            Op::Recover => {
                let first = client.recover().expect("recovering");
                prop_assert_eq!(first, client.recover().expect("recovering again"));
            }
        }
        let recovered = client.recover().expect("recovering");
        let expected = model.expected();
        prop_assert_eq!(
            ids(&recovered),
            ids(&expected),
            "ids after step {} ({:?})",
            step,
            op
        );
        prop_assert!(
            recovered == expected,
            "unit bytes differ after step {} ({:?})",
            step,
            op
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn recovered_units_always_match_a_model_of_the_ring(
        slots in prop::sample::select(vec![1u64, 2, 4, 8]),
        ops in prop::collection::vec(op(), 1..=64),
    ) {
        run_against_model(slots, &ops)?;
    }
}

// ---------------------------------------------------------------------------
// Committing and recovering
// ---------------------------------------------------------------------------

#[test]
fn committed_units_are_recovered_oldest_first_with_their_bytes() {
    let mut client = small_client();
    assert!(client.recover().expect("recovering").is_empty());
    let first = client.commit(b"first").expect("committing");
    let second = client.commit(&pattern(100, 7)).expect("committing");
    assert!(second > first);
    let expected = vec![
        Unit {
            id: first,
            bytes: b"first".to_vec(),
        },
        Unit {
            id: second,
            bytes: pattern(100, 7),
        },
    ];
    assert_eq!(client.recover().expect("recovering"), expected);

    let mut client = restart(client);
    assert_eq!(client.recover().expect("recovering after a restart"), expected);
    let third = client.commit(b"third").expect("committing after a restart");
    assert!(third > second, "ids keep increasing across a restart");
}

#[test]
fn zero_length_unit_is_committed_and_recovered() {
    let mut client = small_client();
    let empty = client.commit(&[]).expect("committing an empty unit");
    let after = client.commit(b"x").expect("committing");
    let units = client.recover().expect("recovering");
    assert_eq!(ids(&units), [empty, after]);
    assert!(units[0].bytes.is_empty());
    assert_eq!(restart(client).recover().expect("recovering"), units);
}

#[test]
fn unit_exactly_as_long_as_the_ring_fits_and_wraps() {
    let mut client = small_client();
    let ring = client.geometry().ring_bytes;
    // Start mid-ring so the full-ring unit wraps around the ring's end.
    let small = client.commit(b"small").expect("committing");
    let full = pattern(ring as usize, 1);
    let whole = client.commit(&full).expect("a unit of exactly ring_bytes fits");
    let units = client.recover().expect("recovering");
    assert_eq!(ids(&units), [whole], "the full-ring unit overwrote {small:?}");
    assert_eq!(units[0].bytes, full);

    // A zero-length unit takes no ring bytes, so the full-ring unit survives it;
    // the next byte committed overwrites it.
    let empty = client.commit(&[]).expect("committing");
    assert_eq!(ids(&client.recover().expect("recovering")), [whole, empty]);
    let mut client = restart(client);
    assert_eq!(ids(&client.recover().expect("recovering")), [whole, empty]);
    let byte = client.commit(b"!").expect("committing");
    assert_eq!(ids(&client.recover().expect("recovering")), [empty, byte]);
}

#[test]
fn unit_larger_than_ring_is_refused_and_changes_nothing() {
    let mut client = small_client();
    let kept = client.commit(b"kept").expect("committing");
    let ring = client.geometry().ring_bytes;
    let file = file_of(client.region());
    let before = image(&file);

    let too_long = vec![1u8; ring as usize + 1];
    let err = client.commit(&too_long).expect_err("a unit longer than the ring");
    assert_eq!(
        err,
        CommitError::UnitTooLarge {
            len: ring as usize + 1,
            ring_bytes: ring,
        }
    );
    assert!(err.to_string().contains("larger than the ring"), "{err}");
    let mut ran = false;
    let err = client
        .commit_with(&too_long, |_| {
            ran = true;
            Ok::<(), ()>(())
        })
        .expect_err("a unit longer than the ring");
    assert!(matches!(
        err,
        CommitWithError::Commit(CommitError::UnitTooLarge { .. })
    ));
    assert!(!ran, "the closure of a refused commit_with must not run");

    assert!(image(&file) == before, "a refused commit changed the region");
    assert_eq!(ids(&client.recover().expect("recovering")), [kept]);
    let next = client.commit(b"next").expect("committing");
    assert_eq!(next, UnitId(kept.0 + 1), "a refused commit consumes no id");
}

#[test]
fn patch_rewrites_unit_bytes_across_the_ring_end() {
    let mut client = small_client();
    let ring = client.geometry().ring_bytes as usize;
    // Leave the cursor 16 bytes before the ring's end.
    client.commit(&pattern(ring - 16, 1)).expect("committing");
    let mut expected = pattern(40, 2);
    let (id, ()) = client
        .commit_with(&expected, |tx| {
            tx.patch(10, &[0xee; 20])?;
            tx.patch(39, &[0x11])
        })
        .expect("patching inside the unit");
    expected[10..30].fill(0xee);
    expected[39] = 0x11;
    let units = client.recover().expect("recovering");
    assert_eq!(units.last(), Some(&Unit { id, bytes: expected }));
}

#[test]
fn patch_outside_the_unit_is_refused() {
    let mut client = small_client();
    let (id, outcomes) = client
        .commit_with(b"0123456789", |tx| {
            Ok::<_, ()>([
                tx.patch(8, b"abc"),
                tx.patch(11, b""),
                tx.patch(usize::MAX, b"z"),
                tx.patch(10, b""),
            ])
        })
        .expect("committing");
    let [straddling, past_end, overflowing, empty_at_end] = outcomes;
    assert_eq!(
        straddling,
        Err(CommitError::PatchOutOfBounds {
            offset: 8,
            len: 3,
            unit_len: 10,
        })
    );
    let message = straddling.unwrap_err().to_string();
    assert!(message.contains("outside the unit"), "{message}");
    assert!(matches!(
        past_end,
        Err(CommitError::PatchOutOfBounds { offset: 11, .. })
    ));
    assert!(matches!(
        overflowing,
        Err(CommitError::PatchOutOfBounds {
            offset: usize::MAX,
            ..
        })
    ));
    assert_eq!(
        empty_at_end,
        Ok(()),
        "an empty patch at the unit's end is inside it"
    );
    let units = client.recover().expect("recovering");
    assert_eq!(
        units,
        [Unit {
            id,
            bytes: b"0123456789".to_vec(),
        }],
        "refused patches wrote nothing"
    );
}

#[test]
fn aborted_commit_publishes_nothing_and_its_id_goes_to_the_next_unit() {
    let mut client = small_client();
    let kept = client.commit(b"kept").expect("committing");
    let err = client
        .commit_with(b"aborted", |tx| {
            tx.patch(0, b"A").expect("patching");
            Err::<(), _>(tx.id())
        })
        .expect_err("the closure aborts");
    let CommitWithError::Aborted(aborted) = err else {
        panic!("expected an abort, got {err:?}");
    };
    assert_eq!(err.to_string(), "commit aborted");
    assert_eq!(ids(&client.recover().expect("recovering")), [kept]);
    let mut client = restart(client);
    assert_eq!(ids(&client.recover().expect("recovering")), [kept]);
    let next = client.commit(b"next").expect("committing");
    assert_eq!(
        next, aborted,
        "the aborted unit was never published, so its id is unused"
    );
    let units = client.recover().expect("recovering");
    assert_eq!(units.last().map(|u| u.bytes.as_slice()), Some(&b"next"[..]));
}

#[test]
fn aborted_commit_still_invalidates_the_units_its_reservation_overwrote() {
    let mut client = small_client();
    let ring = client.geometry().ring_bytes as usize;
    let old = client.commit(b"old").expect("committing");
    let newer = client.commit(&pattern(ring / 2, 3)).expect("committing");
    // Reaching past the ring's end onto `old` invalidates it before the
    // closure runs; the abort does not bring it back.
    client
        .commit_with(&pattern(ring / 2, 4), |_| Err::<(), _>("abort"))
        .expect_err("the closure aborts");
    assert_eq!(
        ids(&client.recover().expect("recovering")),
        [newer],
        "{old:?} stays invalid"
    );
}

#[test]
fn reopening_with_another_config_keeps_the_region_layout() {
    let mut client = small_client();
    let g = *client.geometry();
    let id = client.commit(b"unit").expect("committing");
    let other = Config {
        slots: SMALL.slots * 2,
        ring_bytes: SMALL.ring_bytes * 2,
        chunk_bytes: SMALL.chunk_bytes * 2,
    };
    let client = Client::open(client.into_region(), &other).expect("reopening");
    assert_eq!(*client.geometry(), g);
    assert_eq!(ids(&client.recover().expect("recovering")), [id]);
}

// ---------------------------------------------------------------------------
// The arena
// ---------------------------------------------------------------------------

#[test]
fn arena_round_trips_bytes_at_unaligned_offsets() {
    let client = small_client();
    let arena = client.arena();
    let len = arena.len();
    let chunk = arena.chunk_bytes();
    assert!(len >= ARENA_CHUNKS as usize * chunk);
    // What the arena should hold: it starts zero, and every write must land
    // exactly where it was asked to, leaving its neighbours alone.
    let mut shadow = vec![0u8; len];
    let writes = [
        (0, 1),
        (1, 7),
        (3, 21),
        (7, 9),
        (8, 8),
        (13, 0),
        (chunk - 5, 11),
        (2 * chunk + 3, 100),
        (len - 13, 13),
        (len - 1, 1),
        (len, 0),
    ];
    for (seed, (offset, n)) in (10..).zip(writes) {
        let bytes = pattern(n, seed);
        arena.write(offset, &bytes).expect("writing inside the arena");
        shadow[offset..offset + n].copy_from_slice(&bytes);
        let mut back = vec![0u8; n];
        arena.read(offset, &mut back).expect("reading inside the arena");
        assert_eq!(back, bytes, "read back at {offset}");
        let mut all = vec![0u8; len];
        arena.read(0, &mut all).expect("reading the whole arena");
        assert!(all == shadow, "writing {n} bytes at {offset} touched other bytes");
    }
}

#[test]
fn arena_access_outside_the_arena_is_refused() {
    let client = small_client();
    let arena = client.arena();
    let len = arena.len();
    let counters = |a: &shm_snapshot::Arena<'_>| {
        (0..ARENA_CHUNKS as usize)
            .map(|i| a.chunk_counter(i))
            .collect::<Vec<_>>()
    };
    let counters_before = counters(&arena);

    let err = arena
        .write(len - 3, b"four")
        .expect_err("a write straddling the end");
    assert_eq!(
        err,
        ArenaError {
            offset: len - 3,
            len: 4,
            arena_len: len,
        }
    );
    assert!(err.to_string().contains("outside the arena"), "{err}");
    let mut out = [0u8; 1];
    assert!(arena.read(len, &mut out).is_err(), "a read past the end");
    assert!(
        arena.read(usize::MAX, &mut out).is_err(),
        "a read whose end overflows"
    );
    assert!(
        arena.write(usize::MAX, b"x").is_err(),
        "a write whose end overflows"
    );
    let words = len / 8;
    assert!(
        arena.update_words(words..words + 1, |_| ()).is_err(),
        "updating a word past the end"
    );
    assert!(
        arena.update_words(words - 1..usize::MAX, |_| ()).is_err(),
        "updating a range whose end is far past the end"
    );

    let mut tail = [0xffu8; 8];
    arena
        .read(len - 8, &mut tail)
        .expect("reading the arena's last word");
    assert_eq!(tail, [0; 8], "a refused write wrote nothing");
    assert_eq!(
        counters(&arena),
        counters_before,
        "a refused access marked nothing"
    );
}

#[test]
fn arena_writes_move_the_counters_of_exactly_the_chunks_touched() {
    use std::sync::atomic::Ordering::Relaxed;
    let client = small_client();
    let arena = client.arena();
    let chunk = arena.chunk_bytes();
    let chunks = arena.len().div_ceil(chunk);
    assert_eq!(chunks, ARENA_CHUNKS as usize);
    assert_eq!(arena.chunk_counter(chunks), None, "no counter past the arena");
    let counters = || {
        (0..chunks)
            .map(|i| arena.chunk_counter(i).expect("a chunk"))
            .collect::<Vec<_>>()
    };
    assert_eq!(counters(), vec![0; chunks]);

    arena
        .write(chunk - 3, b"across")
        .expect("writing across a chunk boundary");
    assert_eq!(counters(), [1, 1, 0]);
    arena
        .write(2 * chunk, &vec![7; chunk])
        .expect("writing the whole last chunk");
    assert_eq!(counters(), [1, 1, 1]);
    arena.write(chunk - 1, b"x").expect("writing a chunk's last byte");
    assert_eq!(counters(), [2, 1, 1]);
    arena.write(chunk, b"").expect("writing nothing");
    assert_eq!(counters(), [2, 1, 1], "an empty write touches no chunk");

    // Words changed in place are marked once the closure returns.
    let word = chunk / 8;
    let old = arena
        .update_words(word..word + 1, |w| w[0].swap(0x0102_0304_0506_0708, Relaxed))
        .expect("updating a word");
    assert_eq!(old, u64::from_le_bytes(*b"oss\0\0\0\0\0"));
    assert_eq!(counters(), [2, 2, 1]);
    arena
        .update_words(word - 1..word + 1, |_| ())
        .expect("updating two words across chunks");
    assert_eq!(
        counters(),
        [3, 3, 1],
        "a closure's range is marked whatever it stored"
    );
    arena.update_words(word..word, |_| ()).expect("an empty range");
    assert_eq!(counters(), [3, 3, 1], "an empty range touches no chunk");
    assert_eq!(arena.words().load(word, Relaxed), Some(0x0102_0304_0506_0708));
    assert_eq!(arena.words().load(arena.words().len(), Relaxed), None);
    let mut back = [0u8; 8];
    arena.read(chunk, &mut back).expect("reading");
    assert_eq!(u64::from_le_bytes(back), 0x0102_0304_0506_0708);
}

#[test]
fn words_stored_by_a_closure_that_panics_are_marked_all_the_same() {
    use std::sync::atomic::Ordering::Relaxed;
    let client = small_client();
    let arena = client.arena();
    let panicked = std::panic::catch_unwind(|| {
        arena
            .update_words(0..2, |w| {
                w[1].store(42, Relaxed);
                panic!("the program's own bug, after a store");
            })
            .ok()
    });
    assert!(panicked.is_err());
    assert_eq!(arena.words().load(1, Relaxed), Some(42));
    assert_eq!(
        arena.chunk_counter(0),
        Some(1),
        "the stored word's chunk is marked"
    );
}

#[test]
fn arena_write_inside_commit_with_is_visible_after_a_restart() {
    let mut client = small_client();
    let table = pattern(300, 5);
    let (id, ()) = client
        .commit_with(b"table=300", |tx| tx.arena().write(101, &table))
        .expect("committing");
    let client = restart(client);
    let units = client.recover().expect("recovering");
    assert_eq!(
        units,
        [Unit {
            id,
            bytes: b"table=300".to_vec(),
        }]
    );
    let mut back = vec![0u8; table.len()];
    client.arena().read(101, &mut back).expect("reading the arena");
    assert_eq!(back, table);
    assert_eq!(client.arena().chunk_counter(0), Some(1));
}

#[test]
fn heartbeat_moves_on_every_commit_and_every_explicit_call() {
    let mut client = small_client();
    let beat = |c: &Client| read_u64(c.region(), header::HEARTBEAT);
    assert_eq!(beat(&client), 0, "a freshly laid-out region has not beaten");
    client.commit(b"one").expect("committing");
    assert_eq!(beat(&client), 1);
    client.heartbeat();
    client.heartbeat();
    assert_eq!(beat(&client), 3, "explicit beats move it without a commit");
    assert_eq!(client.recover().expect("recovering").len(), 1);
    let aborted = client.commit_with(b"two", |_| Err::<(), _>("no"));
    assert!(matches!(aborted, Err(CommitWithError::Aborted("no"))));
    assert_eq!(
        beat(&client),
        3,
        "an aborted commit publishes nothing, not even a beat"
    );
    // A restarted program carries on from the region's value, so the host
    // sees it move on the next beat rather than fall back to an old value.
    let mut client = restart(client);
    client.commit(b"three").expect("committing");
    assert_eq!(beat(&client), 4);
}

#[test]
fn heartbeat_wraps_instead_of_overflowing() {
    let client = small_client();
    write_u64(client.region(), header::HEARTBEAT, u64::MAX);
    let mut client = restart(client);
    client.heartbeat();
    assert_eq!(read_u64(client.region(), header::HEARTBEAT), 0);
}

#[cfg(feature = "host")]
#[test]
fn observer_sees_the_heartbeat_the_client_moves() {
    let mut client = small_client();
    let observer = shm_snapshot::snapshot::observe_file(client.region().file())
        .expect("observing")
        .expect("laid out");
    let before = observer.heartbeat();
    client.heartbeat();
    assert_ne!(observer.heartbeat(), before);
}

// ---------------------------------------------------------------------------
// Refusals when opening a region
// ---------------------------------------------------------------------------

#[test]
fn region_with_foreign_magic_is_refused_and_left_untouched() {
    let (region, _) = region_with_two_units();
    write_bytes(&region, header::MAGIC, b"NOTOURS!");
    let err = refuse(region, &SMALL);
    assert!(
        matches!(err, RegionError::ForeignMagic { found } if found == u64::from_le_bytes(*b"NOTOURS!")),
        "{err:?}"
    );
    assert!(err.to_string().contains("foreign magic"), "{err}");
}

#[test]
fn region_with_newer_format_version_is_refused() {
    let (region, _) = region_with_two_units();
    write_u64(&region, header::VERSION, layout::VERSION + 1);
    let err = refuse(region, &SMALL);
    assert!(
        matches!(err, RegionError::NewerVersion { found, supported } if found == layout::VERSION + 1 && supported == layout::VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer than version"), "{err}");
}

#[test]
fn region_with_format_version_zero_is_impossible() {
    let (region, _) = region_with_two_units();
    write_u64(&region, header::VERSION, 0);
    let err = refuse(region, &SMALL);
    assert!(
        matches!(
            err,
            RegionError::ImpossibleField {
                field: "format version",
                value: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("impossible format version 0"), "{err}");
}

#[test]
fn header_without_magic_but_with_data_is_not_blank_and_left_untouched() {
    let len = region_len_for(&SMALL, 0);
    let g = Geometry::derive(len, SMALL.slots, SMALL.ring_bytes, SMALL.chunk_bytes).expect("geometry");
    for at in [
        header::CURSOR,
        header::RING_BYTES,
        g.slot_field(SMALL.slots - 1, slot::LEN),
    ] {
        let region = Region::anonymous(len).expect("creating a memfd region");
        write_u64(&region, at, 1 << 40);
        let err = refuse(region, &SMALL);
        assert!(
            matches!(err, RegionError::NotBlank { offset } if offset == at),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("not blank") && message.contains(&format!("byte {at}")),
            "{message}"
        );
    }
}

#[test]
fn region_too_small_for_the_config_is_refused() {
    let needed = region_len_for(&SMALL, 0);
    let len = needed - layout::PAGE;
    let err = refuse(Region::anonymous(len).expect("creating a memfd region"), &SMALL);
    let RegionError::TooSmall {
        len: found,
        needed: asked,
    } = err
    else {
        panic!("expected TooSmall, got {err:?}");
    };
    assert_eq!((found, asked), (len, needed));
    assert!(err.to_string().contains("too small"), "{err}");
    Client::open(Region::anonymous(asked).expect("creating a memfd region"), &SMALL)
        .expect("a region of the length the error asks for opens");
}

#[test]
fn changed_ring_bytes_in_header_is_refused() {
    let (region, g) = region_with_two_units();
    write_u64(&region, header::RING_BYTES, g.ring_bytes + 8);
    let err = refuse(region, &SMALL);
    assert!(
        matches!(err, RegionError::ImpossibleField { field: "ring bytes", value, why: "not a power of two" } if value == g.ring_bytes + 8),
        "{err:?}"
    );
    assert!(err.to_string().contains("impossible ring bytes"), "{err}");

    // A possible ring size that the rest of the header disagrees with.
    let (region, g) = region_with_two_units();
    write_u64(&region, header::RING_BYTES, g.ring_bytes * 2);
    let implied = Geometry::derive(g.region_len, g.slots, g.ring_bytes * 2, g.chunk_bytes)
        .expect("the doubled ring still fits the region");
    let err = refuse(region, &SMALL);
    assert!(
        matches!(err, RegionError::FieldMismatch { offset, expected, found }
            if offset == header::ARENA_OFFSET && expected == implied.arena_offset && found == g.arena_offset),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("offset {}", header::ARENA_OFFSET)),
        "{err}"
    );
}

#[test]
fn changed_derived_field_in_header_is_a_mismatch() {
    let (region, g) = region_with_two_units();
    write_u64(&region, header::ARENA_LEN, g.arena_len + layout::PAGE);
    let err = refuse(region, &SMALL);
    assert!(
        matches!(err, RegionError::FieldMismatch { offset, expected, .. }
            if offset == header::ARENA_LEN && expected == g.arena_len),
        "{err:?}"
    );
    assert!(err.to_string().contains("parameters give"), "{err}");
}

#[test]
fn region_length_in_header_must_be_the_real_length() {
    let (region, g) = region_with_two_units();
    write_u64(&region, header::REGION_LEN, g.region_len * 2);
    let err = refuse(region, &SMALL);
    assert!(
        matches!(err, RegionError::LengthMismatch { header, actual }
            if header == g.region_len * 2 && actual == g.region_len),
        "{err:?}"
    );
    assert!(err.to_string().contains("but the region is"), "{err}");
}

#[test]
fn counters_beyond_their_limit_are_impossible() {
    for (at, field) in [
        (header::CURSOR, "cursor"),
        (header::NEXT_SEQ, "next sequence number"),
        (header::COMMIT_COUNT, "commit count"),
    ] {
        let (region, _) = region_with_two_units();
        write_u64(&region, at, limits::MAX_COUNTER + 1);
        let err = refuse(region, &SMALL);
        assert!(
            matches!(err, RegionError::ImpossibleField { field: f, .. } if f == field),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("impossible {field}")), "{err}");
    }
}

#[test]
fn commits_stop_cleanly_when_sequence_numbers_run_out_instead_of_wrapping() {
    // A tag holds seq << 2: a seq of 2^62 would wrap to 0. Only a corrupt
    // header gets this far; the region still opens and recovers.
    let region = small_client().into_region();
    write_u64(&region, header::NEXT_SEQ, limits::MAX_COUNTER - 1);
    let mut client = Client::open(region, &SMALL).expect("region opens");
    client
        .commit(b"the last one")
        .expect("seq 2^62 - 1 is the last a tag holds");
    let err = client.commit(b"one too many").unwrap_err();
    assert_eq!(
        err,
        CommitError::SequenceExhausted {
            seq: limits::MAX_COUNTER
        }
    );
    let client = Client::open(client.into_region(), &SMALL).expect("a used-up region still opens");
    assert_eq!(
        client.recover().expect("recover").len(),
        1,
        "the refused unit was not published"
    );
}

#[test]
fn commits_stop_cleanly_when_the_stream_would_pass_two_to_the_62() {
    // A unit ending past 2^62 would be refused by every reader; the commit
    // fails instead, and the region keeps opening.
    let region = small_client().into_region();
    write_u64(&region, header::CURSOR, limits::MAX_COUNTER - 16);
    let mut client = Client::open(region, &SMALL).expect("region opens");
    client
        .commit(&[1; 16])
        .expect("a unit ending exactly at 2^62 fits");
    let err = client.commit(b"x").unwrap_err();
    assert_eq!(
        err,
        CommitError::StreamExhausted {
            end: limits::MAX_COUNTER + 8
        }
    );
    assert!(err.to_string().contains("2^62"), "{err}");
    let client = Client::open(client.into_region(), &SMALL).expect("the region still opens");
    assert_eq!(client.recover().expect("recover").len(), 1);
}

#[test]
fn cursor_off_a_word_boundary_is_impossible() {
    let (region, _) = region_with_two_units();
    let cursor = read_u64(&region, header::CURSOR);
    write_u64(&region, header::CURSOR, cursor + 3);
    let err = refuse(region, &SMALL);
    assert!(
        matches!(
            err,
            RegionError::ImpossibleField {
                field: "cursor",
                why: "not a multiple of 8",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn host_flags_set_before_the_layout_do_not_make_a_region_unblank() {
    // A host may ask for a wake-up before any client laid the region out.
    let len = region_len_for(&SMALL, 0);
    let region = Region::anonymous(len).expect("creating a memfd region");
    write_u64(&region, header::HOST_FLAGS, layout::HOST_SLEEPING);
    let mut client = Client::open(region, &SMALL).expect("laid out around the host's flag");
    client.commit(b"first").expect("committing");
    assert_eq!(
        read_u64(client.region(), header::HOST_FLAGS),
        layout::HOST_SLEEPING
    );
}

#[test]
fn unit_older_than_the_table_can_hold_is_refused_instead_of_stalling_the_next_commit() {
    // Units 1 and 2 are valid; a next sequence number far ahead would make
    // the next commit walk every sequence number in between.
    let (region, g) = region_with_two_units();
    write_u64(&region, header::NEXT_SEQ, 1 << 40);
    let err = refuse(region, &SMALL);
    assert!(
        matches!(err, RegionError::CorruptSlot { slot, why } if slot == g.slot_of(1) && why.contains("older")),
        "{err:?}"
    );
}

#[test]
fn slots_holding_impossible_units_are_corrupt() {
    // Unit 1 lives in slot 1 of the four; each case breaks one of its fields.
    // Each case: the reason the error must give, and the (offset, value) to write.
    type Tamper = fn(&Geometry) -> (u64, u64);
    let cases: [(&str, Tamper); 6] = [
        ("undefined state bits", |g| {
            (g.slot_field(1, slot::TAG), Tag::valid(1).0 | 3)
        }),
        ("does not belong to this slot", |g| {
            (g.slot_field(1, slot::TAG), Tag::valid(2).0)
        }),
        ("sequence number 0", |g| {
            (g.slot_field(0, slot::TAG), Tag::valid(0).0)
        }),
        ("not a multiple of 8", |g| (g.slot_field(1, slot::OFFSET), 4)),
        ("length exceeds the ring", |g| {
            (g.slot_field(1, slot::LEN), g.ring_bytes + 1)
        }),
        ("contradicts the one before it", |g| {
            (g.slot_field(1, slot::LEN), g.ring_bytes)
        }),
    ];
    for (why, tamper) in cases {
        let (region, g) = region_with_two_units();
        let (at, value) = tamper(&g);
        write_u64(&region, at, value);
        let err = refuse(region, &SMALL);
        assert!(matches!(err, RegionError::CorruptSlot { .. }), "{why}: {err:?}");
        let message = err.to_string();
        assert!(
            message.contains("is corrupt") && message.contains(why),
            "{message}"
        );
    }
}

#[test]
fn socket_or_directory_is_not_a_file() {
    // A socket rather than a pipe: `std::io::pipe` is newer than the
    // workspace's rust-version, and both are refused by the same check.
    let (socket, _peer) = UnixStream::pair().expect("creating a socket pair");
    let socket = File::from(OwnedFd::from(socket));
    let directory = File::open(env!("CARGO_MANIFEST_DIR")).expect("opening a directory");
    for (file, kind) in [(socket, "socket"), (directory, "directory")] {
        // SAFETY: the file is a socket or a directory, which `from_file`
        // refuses before mapping anything, so no mapping exists for the file
        // to shrink under.
        let err = unsafe { Region::from_file(file) }.expect_err("only memfds and regular files map");
        assert!(
            matches!(err, RegionError::NotAFile { kind: k, .. } if k == kind),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("is a {kind}, not a memfd or regular file")),
            "{message}"
        );
    }
}

// ---------------------------------------------------------------------------
// A client killed in the middle of a commit
// ---------------------------------------------------------------------------

/// A client that committed `old` (3000 bytes) and `kept` (500), then set out
/// to commit a 1200-byte unit that reaches past the ring's end onto `old`.
struct Interrupted {
    region: Region,
    g: Geometry,
    old: Unit,
    kept: Unit,
    /// The unit being committed when the client died, its id and stream offset.
    dying: Vec<u8>,
    dying_id: u64,
    cursor: u64,
}

fn interrupted() -> Interrupted {
    let mut client = small_client();
    let g = *client.geometry();
    let old = pattern(3000, 1);
    let kept = pattern(500, 2);
    let old_id = client.commit(&old).expect("committing");
    let kept_id = client.commit(&kept).expect("committing");
    let region = client.into_region();
    let cursor = read_u64(&region, header::CURSOR);
    let dying = pattern(1200, 3);
    assert!(
        cursor + layout::pad(dying.len() as u64) > g.ring_bytes,
        "the unit wraps onto `old`"
    );
    Interrupted {
        g,
        old: Unit {
            id: old_id,
            bytes: old,
        },
        kept: Unit {
            id: kept_id,
            bytes: kept,
        },
        dying,
        dying_id: read_u64(&region, header::NEXT_SEQ),
        cursor,
        region,
    }
}

#[test]
fn client_killed_before_publishing_leaves_the_previous_units() {
    let Interrupted {
        region,
        g,
        old,
        kept,
        dying,
        dying_id,
        cursor,
    } = interrupted();
    // Steps 1-2 done: `old`, which the reservation overwrites, is invalid.
    write_u64(
        &region,
        g.slot_field(g.slot_of(old.id.0), slot::TAG),
        Tag::invalid(old.id.0).0,
    );
    // Step 3 half done: the first 600 bytes, the last 8 of them over `old`.
    write_ring(&region, &g, cursor, &dying[..dying.len() / 2]);
    // Step 4 begun: the slot's offset and length are stored, its tag is not,
    // and the header's cursor and next id never moved.
    let dying_slot = g.slot_of(dying_id);
    write_u64(&region, g.slot_field(dying_slot, slot::OFFSET), cursor);
    write_u64(&region, g.slot_field(dying_slot, slot::LEN), dying.len() as u64);

    let mut client = restart_region(region);
    assert_eq!(client.recover().expect("recovering"), std::slice::from_ref(&kept));
    let next = client
        .commit(b"after the crash")
        .expect("committing after the crash");
    assert_eq!(next, UnitId(dying_id), "the id of a unit never published is free");
    assert!(next > kept.id);
    assert_eq!(
        read_u64(client.region(), header::CURSOR),
        cursor + layout::pad(b"after the crash".len() as u64),
        "the next unit goes where the unpublished one would have"
    );
    let units = client.recover().expect("recovering");
    assert_eq!(ids(&units), [kept.id, next]);
    assert_eq!(units[1].bytes, b"after the crash");
}

#[test]
fn client_killed_after_publishing_the_tag_keeps_the_unit() {
    let Interrupted {
        region,
        g,
        old,
        kept,
        dying,
        dying_id,
        cursor,
    } = interrupted();
    write_u64(
        &region,
        g.slot_field(g.slot_of(old.id.0), slot::TAG),
        Tag::invalid(old.id.0).0,
    );
    write_ring(&region, &g, cursor, &dying);
    let dying_slot = g.slot_of(dying_id);
    write_u64(&region, g.slot_field(dying_slot, slot::OFFSET), cursor);
    write_u64(&region, g.slot_field(dying_slot, slot::LEN), dying.len() as u64);
    write_u64(
        &region,
        g.slot_field(dying_slot, slot::TAG),
        Tag::valid(dying_id).0,
    );
    // Killed here: the header's cursor, next id and commit count lag behind.

    let mut client = restart_region(region);
    let published = Unit {
        id: UnitId(dying_id),
        bytes: dying.clone(),
    };
    assert_eq!(
        client.recover().expect("recovering"),
        [kept.clone(), published.clone()]
    );
    let next = client
        .commit(b"after the crash")
        .expect("committing after the crash");
    assert_eq!(
        next,
        UnitId(dying_id + 1),
        "the published unit's id is not reused"
    );
    let units = client.recover().expect("recovering");
    assert_eq!(
        ids(&units),
        [kept.id, published.id, next],
        "the next unit does not overwrite it"
    );
    assert_eq!(units[1], published);
}

#[test]
fn client_killed_inside_commit_with_restarts_from_that_instant() {
    let Interrupted {
        region, kept, dying, ..
    } = interrupted();
    let mut client = restart_region(region);
    let len = client.region().len();
    let file = file_of(client.region());
    // The region's bytes at the instant `work` runs: room reserved, bytes
    // copied, arena written, nothing published. A client killed then leaves
    // exactly this behind.
    let (dying_id, (tx_id, frozen)) = client
        .commit_with(&dying, |tx| {
            tx.arena().write(0, b"arena data")?;
            Ok::<_, ArenaError>((tx.id(), image(&file)))
        })
        .expect("committing");
    assert_eq!(dying_id, tx_id);

    let region = Region::anonymous(len).expect("creating a memfd region");
    write_bytes(&region, 0, &frozen);
    let mut client = restart_region(region);
    assert_eq!(client.recover().expect("recovering"), std::slice::from_ref(&kept));
    let mut arena = [0u8; 10];
    client.arena().read(0, &mut arena).expect("reading the arena");
    assert_eq!(&arena, b"arena data", "arena writes made before the crash stay");
    let next = client
        .commit(b"after the crash")
        .expect("committing after the crash");
    assert_eq!(next, dying_id, "the unit never published, so its id is free");
    assert_eq!(ids(&client.recover().expect("recovering")), [kept.id, next]);
}

fn restart_region(region: Region) -> Client {
    Client::open(region, &SMALL).expect("reopening after a crash")
}

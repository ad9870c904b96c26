//! Loom models of a client's commits racing the host's Pre / copy / Post.
//!
//! Each model lays out a tiny region (two slots, a 64-byte ring) in the main
//! thread, spawns a committer whose commits overwrite and reuse the slots of
//! earlier units, and observes from the main thread meanwhile. Loom explores
//! the interleavings and, for every relaxed load, each value the memory
//! model allows it to return, so a unit that `post` keeps with bytes other
//! than the ones committed for its id is a protocol bug, not bad luck.
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p shm-snapshot --features host --test loom --release
//! ```
//!
//! The exploration is exhaustive; `LOOM_MAX_PREEMPTIONS=3` bounds it for a
//! quicker run.

#![cfg(loom)]

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering::Relaxed};

use loom::thread;
use shm_snapshot::layout::{Geometry, PAGE, UnitRef, pad};
use shm_snapshot::{Client, Config, Observer, Region, UnitId};

/// Two slots and a one-page ring: the third unit already reuses the first
/// one's slot, and a ring of eight words keeps the modelled state small.
const CONFIG: Config = Config {
    slots: 2,
    ring_bytes: 64,
    chunk_bytes: 64,
};

/// The smallest region the configuration lays out in, with `arena_pages`
/// pages of arena.
fn region_len(arena_pages: u64) -> u64 {
    let len = (1..)
        .map(|pages| pages * PAGE)
        .find(|&len| Geometry::derive(len, CONFIG.slots, CONFIG.ring_bytes, CONFIG.chunk_bytes).is_ok())
        .expect("some region length fits the configuration");
    len + arena_pages * PAGE
}

/// The bytes committed as unit `seq`: distinct for every (seq, index) with
/// seq below 4 and index below 64, so a copy that mixes two units' bytes, or
/// reads a unit at the wrong place, never matches.
fn content(seq: u64, len: usize) -> Vec<u8> {
    assert!(seq < 4 && len <= 64);
    (0..len).map(|i| ((seq as u8) << 6) | i as u8).collect()
}

/// Asserts that `unit`, as Pre read it, is one the committer published,
/// with the offset and length published with its tag: the stream offset of
/// unit `seq` is the padded length of the units before it.
fn assert_read_consistently(unit: &UnitRef, lens: &[usize]) {
    let seq = unit.seq();
    assert!((1..lens.len() as u64).contains(&seq), "unknown unit {unit:?}");
    let offset: u64 = lens[1..seq as usize].iter().map(|&len| pad(len as u64)).sum();
    assert_eq!(
        (unit.offset, unit.len),
        (offset, lens[seq as usize] as u64),
        "Pre read unit {seq} with another unit's slot fields"
    );
}

/// Counts across all executions of a model, kept outside loom's view: they
/// only tell afterwards whether the model reached the races it is for.
struct Tally {
    kept: StdAtomicU64,
    torn_and_rejected: StdAtomicU64,
}

impl Tally {
    const fn new() -> Tally {
        Tally {
            kept: StdAtomicU64::new(0),
            torn_and_rejected: StdAtomicU64::new(0),
        }
    }
}

/// One observation: Pre, a copy of every Pre unit, Post. Asserts that every
/// unit Post keeps has exactly the bytes committed for its id (`lens[seq]`
/// is the length of unit `seq`), and counts what it saw in `tally`.
fn observe(observer: &Observer, lens: &[usize], tally: &Tally) -> Vec<UnitRef> {
    let mut pre = Vec::new();
    let anomalies = observer.pre(&mut pre);
    assert!(anomalies.is_clean(), "{anomalies:?}");
    let copies: Vec<Vec<u8>> = pre.iter().map(|u| observer.copy_unit(u)).collect();
    let mut kept = Vec::new();
    let anomalies = observer.post(&pre, &mut kept);
    assert!(anomalies.is_clean(), "{anomalies:?}");
    for (unit, bytes) in pre.iter().zip(&copies) {
        assert_read_consistently(unit, lens);
        let intact = *bytes == content(unit.seq(), lens[unit.seq() as usize]);
        if kept.contains(unit) {
            assert!(intact, "kept unit {unit:?} has bytes {bytes:?}");
            tally.kept.fetch_add(1, Relaxed);
        } else if !intact {
            tally.torn_and_rejected.fetch_add(1, Relaxed);
        }
    }
    kept
}

/// Runs `model` under loom. Without `LOOM_MAX_PREEMPTIONS` the exploration
/// is exhaustive: these models are small enough (about 300,000 executions
/// for the largest) to check every interleaving in well under a minute of a
/// release build.
fn explore(model: impl Fn() + Sync + Send + 'static) {
    loom::model::Builder::new().check(model);
}

/// Commits unit `seq` of `lens` through `client`, checking the id it gets.
fn commit(client: &mut Client, lens: &[usize], seq: u64) {
    let id = client
        .commit(&content(seq, lens[seq as usize]))
        .expect("unit fits the ring");
    assert_eq!(id, UnitId(seq));
}

/// After the committer is done, the region is quiet: every valid unit must
/// be kept whole, and the newest is the last one committed.
fn assert_quiet_region_keeps_newest(observer: &Observer, lens: &[usize], tally: &Tally) {
    let kept = observe(observer, lens, tally);
    assert_eq!(kept.last().map(UnitRef::seq), Some(lens.len() as u64 - 1));
}

#[test]
fn units_kept_while_commits_overwrite_and_reuse_slots_are_intact() {
    // Unit 1 takes ring bytes 0..40 and slot 1; unit 2 bytes 40..56 and slot
    // 0; unit 3 wraps over bytes 56..64 and 0..16, overwriting unit 1 and
    // reusing its slot. Index 0 is unused: sequence numbers start at 1.
    const LENS: [usize; 4] = [0, 40, 16, 24];
    static TALLY: Tally = Tally::new();
    explore(|| {
        let region = Region::model(region_len(0));
        let mut client = Client::open(region.share(), &CONFIG).expect("blank region lays out");
        let observer = Observer::new(region.share()).expect("laid-out region is observable");
        let committer = thread::spawn(move || {
            for seq in 1..=3 {
                commit(&mut client, &LENS, seq);
            }
        });
        observe(&observer, &LENS, &TALLY);
        committer.join().expect("committer finishes");
        assert_quiet_region_keeps_newest(&observer, &LENS, &TALLY);
    });
    assert!(TALLY.kept.load(Relaxed) > 0, "no execution kept a unit");
    assert!(
        TALLY.torn_and_rejected.load(Relaxed) > 0,
        "no execution copied a torn unit: the model misses the race it is for"
    );
}

#[test]
fn unit_rewritten_in_its_own_slot_and_bytes_during_the_copy_is_not_kept_torn() {
    // Unit 1 (ring bytes 0..32, slot 1) is committed before the observer
    // starts. Unit 3 lands on exactly its bytes and its slot, with the same
    // length, so an observer that read unit 1's slot in Pre may copy a mix
    // of both; only the tag tells them apart.
    const LENS: [usize; 4] = [0, 32, 32, 32];
    static TALLY: Tally = Tally::new();
    explore(|| {
        let region = Region::model(region_len(0));
        let mut client = Client::open(region.share(), &CONFIG).expect("blank region lays out");
        commit(&mut client, &LENS, 1);
        let observer = Observer::new(region.share()).expect("laid-out region is observable");
        let committer = thread::spawn(move || {
            commit(&mut client, &LENS, 2);
            commit(&mut client, &LENS, 3);
        });
        observe(&observer, &LENS, &TALLY);
        committer.join().expect("committer finishes");
        assert_quiet_region_keeps_newest(&observer, &LENS, &TALLY);
    });
    assert!(TALLY.kept.load(Relaxed) > 0, "no execution kept a unit");
    assert!(
        TALLY.torn_and_rejected.load(Relaxed) > 0,
        "no execution copied a torn unit: the model misses the race it is for"
    );
}

#[test]
fn unit_invalidated_by_an_aborted_commit_during_the_copy_is_not_persisted() {
    // Unit 1 fills the whole ring. The committer starts a unit over it, which
    // invalidates unit 1 and writes its bytes, then aborts: nothing new is
    // published, and unit 1's bytes are gone.
    const LENS: [usize; 2] = [0, 64];
    static TALLY: Tally = Tally::new();
    explore(|| {
        let region = Region::model(region_len(0));
        let mut client = Client::open(region.share(), &CONFIG).expect("blank region lays out");
        commit(&mut client, &LENS, 1);
        let observer = Observer::new(region.share()).expect("laid-out region is observable");
        let committer = thread::spawn(move || {
            let aborted = client.commit_with(&[0xee; 16], |_| Err::<(), _>("abandoned"));
            assert!(aborted.is_err());
        });
        observe(&observer, &LENS, &TALLY);
        committer.join().expect("committer finishes");
        let kept = observe(&observer, &LENS, &TALLY);
        assert!(kept.is_empty(), "unit 1 was invalidated: {kept:?}");
    });
    assert!(TALLY.kept.load(Relaxed) > 0, "no execution kept unit 1");
    assert!(
        TALLY.torn_and_rejected.load(Relaxed) > 0,
        "no execution copied a torn unit: the model misses the race it is for"
    );
}

#[test]
fn arena_data_a_kept_unit_describes_is_the_data_written_before_it() {
    // Each unit says "arena word k holds value v", written inside its
    // commit: unit 1 and unit 3 share a slot and so the same arena word
    // (the arena contract: unit 3's reservation invalidates unit 1 before
    // `work` rewrites the word). A kept unit's word must hold its value.
    const LENS: [usize; 4] = [0, 8, 8, 8];
    static TALLY: Tally = Tally::new();
    static ARENA_CHECKED: StdAtomicU64 = StdAtomicU64::new(0);
    explore(|| {
        let region = Region::model(region_len(1));
        let mut client = Client::open(region.share(), &CONFIG).expect("blank region lays out");
        let observer = Observer::new(region.share()).expect("laid-out region is observable");
        let arena_offset = observer.geometry().arena_offset;
        let word_of = |seq: u64| seq % CONFIG.slots;
        let committer = thread::spawn(move || {
            for seq in 1..=3 {
                let (id, ()) = client
                    .commit_with(&content(seq, LENS[seq as usize]), |tx| {
                        tx.arena()
                            .write(word_of(seq) as usize * 8, &(seq * 1000).to_le_bytes())
                    })
                    .expect("arena write in bounds");
                assert_eq!(id, UnitId(seq));
            }
        });
        let mut pre = Vec::new();
        observer.pre(&mut pre);
        let copies: Vec<(Vec<u8>, u64)> = pre
            .iter()
            .map(|u| {
                let mut word = [0u8; 8];
                observer
                    .copy_range(arena_offset + word_of(u.seq()) * 8, &mut word)
                    .expect("arena word inside the region");
                (observer.copy_unit(u), u64::from_le_bytes(word))
            })
            .collect();
        let mut kept = Vec::new();
        observer.post(&pre, &mut kept);
        for (unit, (bytes, word)) in pre.iter().zip(&copies) {
            assert_read_consistently(unit, &LENS);
            if kept.contains(unit) {
                assert_eq!(*bytes, content(unit.seq(), LENS[unit.seq() as usize]));
                assert_eq!(*word, unit.seq() * 1000, "arena word of kept unit {unit:?}");
                ARENA_CHECKED.fetch_add(1, Relaxed);
            }
        }
        committer.join().expect("committer finishes");
        assert_quiet_region_keeps_newest(&observer, &LENS, &TALLY);
    });
    assert!(
        ARENA_CHECKED.load(Relaxed) > 0,
        "no execution kept a unit mid-commit"
    );
}

//! The store API behind the operator subcommands: the read-only open,
//! checking every generation, loading one by number, pruning to a count,
//! and the meta peek; and a generation pruned while a reader looks at the
//! store, which is reported gone, never damaged (STORE.md, "The directory"
//! and "Retention").

mod common;

use common::{gen_path, pattern};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shm_snapshot::store::format::{chunk, header, meta, trailer};
use shm_snapshot::store::{
    CHUNK_BYTES, Checked, Condition, FaultyIo, GenerationKind, IoOp, LockAttempt, PAGE_BYTES, ReadFile,
    RealIo, Store, StoreError, StoreFile, StoreIo, StoreOptions,
};

const CHUNK: u64 = CHUNK_BYTES;
/// Three chunks, the last one short.
const REGION: u64 = 2 * CHUNK + 5000;

fn options(keep: usize, full_every: u32) -> StoreOptions {
    StoreOptions {
        keep,
        full_every,
        fsync: false,
    }
}

/// Offers every chunk of `image` and commits; returns the number.
fn commit(store: &mut Store, image: &[u8], meta: &[u8]) -> u64 {
    let mut tx = store.begin(image.len() as u64).expect("begin");
    tx.put_chunks(0, image).expect("put_chunks");
    tx.commit(meta).expect("commit").number
}

/// The generation numbers of the files in `dir`.
fn gen_numbers(dir: &Path) -> BTreeSet<u64> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_prefix("gen-")?.strip_suffix(".snap")?.parse().ok()
        })
        .collect()
}

/// Every entry of `dir` with its bytes, the lock file included.
fn dir_state(dir: &Path) -> BTreeMap<OsString, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), fs::read(e.path()).unwrap())
        })
        .collect()
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x04;
    fs::write(path, bytes).unwrap();
}

fn size(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// What each generation was written with.
type Written = BTreeMap<u64, (Vec<u8>, Vec<u8>)>;

fn meta_of(n: u64) -> Vec<u8> {
    format!("meta of generation {n}").into_bytes()
}

/// Commits `count` generations with a base every third one (bases 1, 4,
/// 7, ...), each changing a few bytes of one chunk, into a store opened in
/// `dir` that never prunes by itself.
fn chains(dir: &Path, count: u64) -> (Store, Written) {
    let mut store = Store::open(dir, options(1000, 3)).unwrap();
    let mut image = pattern(REGION, 7);
    let mut written = BTreeMap::new();
    for g in 1..=count {
        let at = ((g % 3) * CHUNK + g * 37) as usize;
        image[at] ^= 0x5a;
        let n = commit(&mut store, &image, &meta_of(g));
        assert_eq!(n, g);
        written.insert(n, (image.clone(), meta_of(n)));
    }
    (store, written)
}

/// What [`Store::check_all`] said of a generation, without the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Intact,
    Damaged,
    BrokenChain { needs: u64 },
    Vanished,
}

fn found(c: &Checked) -> Found {
    match &c.condition {
        Condition::Intact => Found::Intact,
        Condition::Damaged(_) => Found::Damaged,
        Condition::BrokenChain(StoreError::BrokenChain { needs, .. }) => Found::BrokenChain { needs: *needs },
        Condition::BrokenChain(e) => panic!("a broken chain reported as {e:?}"),
        Condition::Vanished => Found::Vanished,
    }
}

fn summary(checked: &[Checked]) -> Vec<(u64, Found)> {
    checked.iter().map(|c| (c.number, found(c))).collect()
}

/// Every generation of `1..=count` intact but those in `other`.
fn expect(count: u64, other: &[(u64, Found)]) -> Vec<(u64, Found)> {
    let other: BTreeMap<u64, Found> = other.iter().copied().collect();
    (1..=count)
        .map(|n| (n, other.get(&n).copied().unwrap_or(Found::Intact)))
        .collect()
}

fn read_only_error(result: Result<impl Sized, StoreError>, dir: &Path) {
    match result.err() {
        Some(StoreError::ReadOnly { dir: d }) => {
            assert_eq!(d, dir);
            assert_eq!(
                StoreError::ReadOnly { dir: d }.to_string(),
                format!("store {} was opened read-only", dir.display())
            );
        }
        other => panic!("expected ReadOnly, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// open_read_only

#[test]
fn read_only_open_works_while_an_owner_holds_the_lock_and_sees_what_it_sees() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (mut owner, written) = chains(&dir, 5);
    assert!(matches!(
        Store::open(&dir, options(8, 3)),
        Err(StoreError::Locked { .. })
    ));
    let mut reader = Store::open_read_only(&dir).unwrap();
    assert!(reader.is_read_only());
    assert!(!owner.is_read_only());
    assert_eq!(reader.generations(), owner.generations());
    assert!(reader.unreadable().is_empty());
    assert_eq!(reader.current_generation(), None);
    let loaded = reader.load_newest().unwrap().unwrap();
    assert_eq!(loaded.number, 5);
    assert_eq!((&loaded.image, &loaded.meta), (&written[&5].0, &written[&5].1));
    assert_eq!(reader.current_generation_info(), owner.generations().pop());
    // The owner still owns it: its next generation is a delta on its own
    // newest, and the reader sees it on its next look.
    let mut image = written[&5].0.clone();
    image[1] ^= 1;
    assert_eq!(commit(&mut owner, &image, b"six"), 6);
    assert_eq!(
        owner.generations().last().unwrap().kind,
        GenerationKind::Delta { base: 4, parent: 5 }
    );
    let checked = reader.check_all().unwrap();
    assert_eq!(summary(&checked), expect(6, &[]));
    assert_eq!(checked[5].meta.as_deref(), Some(&b"six"[..]));
}

#[test]
fn read_only_store_creates_changes_and_removes_nothing_and_refuses_to_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (owner, written) = chains(&dir, 4);
    drop(owner);
    // No lock file (never made, or cleaned up), a dead writer's temporary
    // file, a damaged generation and a foreign file.
    fs::remove_file(dir.join("lock")).unwrap();
    fs::write(dir.join("gen-00000000000000000005.4242.0.tmp"), b"partial").unwrap();
    fs::write(dir.join("notes"), b"mine").unwrap();
    flip(&gen_path(&dir, 4), header::LEN as u64 + 200);
    let before = dir_state(&dir);

    let (io, faults) = FaultyIo::new(Box::new(RealIo));
    let mut reader = Store::open_read_only_with_io(&dir, Box::new(io)).unwrap();
    assert!(reader.removed_temp_files().is_empty());
    let loaded = reader.load_newest().unwrap().unwrap();
    assert_eq!(loaded.number, 3);
    assert_eq!(loaded.image, written[&3].0);
    assert_eq!(
        summary(&reader.check_all().unwrap()),
        expect(4, &[(4, Found::Damaged)])
    );
    assert_eq!(reader.load_generation(2).unwrap().image, written[&2].0);
    read_only_error(reader.begin(REGION), &dir);
    read_only_error(reader.prune_to(1), &dir);
    assert_eq!(dir_state(&dir), before, "a read-only store touched the directory");
    let log = faults.log();
    assert!(log.contains(&IoOp::Open));
    assert!(
        log.iter().all(|op| matches!(op, IoOp::List | IoOp::Open)),
        "a read-only store asked its I/O layer for {log:?}"
    );
    // The plain read-only open on the real file system does no more.
    let mut plain = Store::open_read_only(&dir).unwrap();
    plain.check_all().unwrap();
    read_only_error(plain.begin(REGION), &dir);
    assert_eq!(dir_state(&dir), before);
}

#[test]
fn read_only_open_of_a_missing_directory_or_a_file_fails_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing").join("store");
    match Store::open_read_only(&missing) {
        Err(e @ StoreError::Io { .. }) => {
            assert!(e.is_vanished(), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!(
                    "listing the store directory {} failed: No such file or directory (os error 2)",
                    missing.display()
                )
            );
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(!tmp.path().join("missing").exists(), "the directory was created");

    let file = tmp.path().join("file");
    fs::write(&file, b"not a store").unwrap();
    match Store::open_read_only(&file) {
        Err(StoreError::Io { path, error, .. }) => {
            assert_eq!(path, file);
            assert_eq!(error.kind(), io::ErrorKind::NotADirectory);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(fs::read(&file).unwrap(), b"not a store");

    // A directory holding no store is an empty store to the library (the
    // subcommands refuse it by name); it stays as it was.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("notes"), b"mine").unwrap();
    let before = dir_state(&other);
    let mut reader = Store::open_read_only(&other).unwrap();
    assert!(reader.generations().is_empty());
    assert!(reader.load_newest().unwrap().is_none());
    assert!(reader.check_all().unwrap().is_empty());
    assert_eq!(dir_state(&other), before);
}

// ---------------------------------------------------------------------------
// check_all

#[test]
fn check_all_of_an_intact_store_reads_every_generation_with_its_header_size_and_meta() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, written) = chains(tmp.path(), 7);
    let checked = store.check_all().unwrap();
    assert_eq!(summary(&checked), expect(7, &[]));
    let infos = store.generations();
    assert_eq!(infos.len(), 7);
    for (c, info) in checked.iter().zip(&infos) {
        assert_eq!(c.info.as_ref(), Some(info));
        assert_eq!(c.bytes, size(&gen_path(tmp.path(), c.number)));
        assert_eq!(c.meta.as_deref(), Some(&written[&c.number].1[..]));
        assert_eq!(info.is_base(), c.number % 3 == 1, "generation {}", c.number);
        // Deltas 3 and 6 change the first page, 2 and 5 inherit it.
        assert_eq!(
            c.first_page.as_deref(),
            Some(&written[&c.number].0[..PAGE_BYTES as usize]),
            "generation {}",
            c.number
        );
    }
}

/// Where in generation file `path` a piece of each kind lies, with a word
/// the error for a byte flipped there names. Its meta blob is `meta_len`
/// bytes long.
fn pieces(path: &Path, meta_len: usize) -> Vec<(&'static str, u64, &'static str)> {
    let len = size(path) as usize;
    let meta_at = len - trailer::LEN - meta_len - meta::DESCRIPTOR;
    vec![
        ("header", header::PARENT, "header_hash"),
        ("chunk descriptor", header::LEN + chunk::HASH + 3, "hash"),
        ("page", header::LEN + chunk::DESCRIPTOR + 11, "hash"),
        ("meta descriptor", meta_at + meta::HASH, "meta hash"),
        ("meta blob", meta_at + meta::DESCRIPTOR + 2, "meta hash"),
        (
            "trailer",
            len - trailer::LEN + trailer::FILE_LEN,
            "trailer file_len",
        ),
    ]
    .into_iter()
    .map(|(what, at, names)| (what, at as u64, names))
    .collect()
}

#[test]
fn check_all_names_exactly_the_damaged_generation_and_breaks_the_chains_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, _) = chains(dir, 7);
    // Bases 1, 4, 7: damage the base 4 under deltas 5 and 6, the delta 5
    // under 6, and the lone base 7.
    let cases: [(u64, &[(u64, Found)]); 3] = [
        (
            4,
            &[
                (4, Found::Damaged),
                (5, Found::BrokenChain { needs: 4 }),
                (6, Found::BrokenChain { needs: 5 }),
            ],
        ),
        (5, &[(5, Found::Damaged), (6, Found::BrokenChain { needs: 5 })]),
        (7, &[(7, Found::Damaged)]),
    ];
    for (damaged, outcome) in cases {
        let path = gen_path(dir, damaged);
        let whole = fs::read(&path).unwrap();
        for (what, at, names) in pieces(&path, meta_of(damaged).len()) {
            flip(&path, at);
            let checked = store.check_all().unwrap();
            let at = format!("a byte flipped in the {what} of generation {damaged}");
            assert_eq!(summary(&checked), expect(7, outcome), "{at}");
            let c = &checked[damaged as usize - 1];
            let Condition::Damaged(e) = &c.condition else {
                unreachable!()
            };
            assert!(e.to_string().contains(names), "{at}: {e}");
            assert_eq!(c.info.is_none(), what == "header", "{at}");
            assert!(c.meta.is_none(), "{at}");
            for (n, f) in outcome {
                if let Found::BrokenChain { .. } = f {
                    let c = &checked[*n as usize - 1];
                    assert_eq!(c.meta.as_deref(), Some(&meta_of(*n)[..]), "{at}: {n}");
                }
            }
            fs::write(&path, &whole).unwrap();
        }
    }
    assert_eq!(summary(&store.check_all().unwrap()), expect(7, &[]));
}

#[test]
fn check_all_reports_a_truncated_file_damaged_and_a_deleted_base_as_missing_for_its_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, _) = chains(dir, 7);
    let path = gen_path(dir, 5);
    let whole = fs::read(&path).unwrap();
    for keep in [whole.len() - 1, whole.len() / 2, 50, 0] {
        fs::write(&path, &whole[..keep]).unwrap();
        let checked = store.check_all().unwrap();
        assert_eq!(
            summary(&checked),
            expect(7, &[(5, Found::Damaged), (6, Found::BrokenChain { needs: 5 })]),
            "generation 5 cut to {keep} bytes"
        );
        assert_eq!(checked[4].bytes, keep as u64);
    }
    fs::write(&path, &whole).unwrap();

    fs::remove_file(gen_path(dir, 4)).unwrap();
    let checked = store.check_all().unwrap();
    let without_4: Vec<(u64, Found)> = expect(
        7,
        &[
            (5, Found::BrokenChain { needs: 4 }),
            (6, Found::BrokenChain { needs: 5 }),
        ],
    )
    .into_iter()
    .filter(|(n, _)| *n != 4)
    .collect();
    assert_eq!(summary(&checked), without_4);
    let Condition::BrokenChain(e) = &checked[3].condition else {
        unreachable!()
    };
    assert!(e.to_string().contains("is missing"), "{e}");
}

#[test]
fn check_all_asks_its_io_layer_whether_a_damaged_file_is_gone() {
    // The store seen through an I/O layer at a path that does not exist on
    // the real file system, as an in-memory one would be: a damaged file
    // is damaged, not gone.
    let tmp = tempfile::tempdir().unwrap();
    let (owner, _) = chains(tmp.path(), 6);
    drop(owner);
    flip(&gen_path(tmp.path(), 5), header::LEN as u64 + 300);
    let seen_at = Path::new("/nonexistent-store-root/store");
    let io = HookIo::moved(seen_at, tmp.path());
    let mut reader = Store::open_read_only_with_io(seen_at, Box::new(io)).unwrap();
    assert_eq!(
        summary(&reader.check_all().unwrap()),
        expect(6, &[(5, Found::Damaged), (6, Found::BrokenChain { needs: 5 })])
    );
}

// ---------------------------------------------------------------------------
// load_generation

#[test]
fn every_generation_of_every_chain_loads_the_image_and_meta_it_was_written_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut owner, written) = chains(dir, 7);
    let mut reader = Store::open_read_only(dir).unwrap();
    for (&n, (image, meta)) in &written {
        for store in [&mut owner, &mut reader] {
            let loaded = store.load_generation(n).unwrap();
            assert_eq!(loaded.number, n);
            assert!(loaded.image == *image, "generation {n}: wrong image");
            assert_eq!(&loaded.meta, meta);
            assert!(loaded.skipped.is_empty());
        }
    }
    // Loading an older one changes nothing the owner writes next: the next
    // generation is still a delta on its newest.
    assert_eq!(owner.current_generation(), Some(7));
    let tx = owner.begin(REGION).unwrap();
    assert_eq!((tx.number(), tx.parent()), (8, Some(7)));
}

#[test]
fn loading_a_missing_or_damaged_generation_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, written) = chains(dir, 6);
    for n in [0, 99] {
        match store.load_generation(n) {
            Err(StoreError::NoSuchGeneration { dir: d, number }) => {
                assert_eq!((d.as_path(), number), (dir, n))
            }
            other => panic!("generation {n}: expected NoSuchGeneration, got {other:?}"),
        }
    }
    flip(&gen_path(dir, 5), header::LEN as u64 + 100);
    match store.load_generation(5) {
        Err(StoreError::Corrupt { path, what }) => {
            assert_eq!(path, gen_path(dir, 5));
            assert!(what.contains("hash"), "{what}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match store.load_generation(6) {
        Err(StoreError::BrokenChain { path, needs, .. }) => assert_eq!((path, needs), (gen_path(dir, 6), 5)),
        other => panic!("expected BrokenChain, got {other:?}"),
    }
    assert_eq!(store.load_generation(4).unwrap().image, written[&4].0);
    fs::remove_file(gen_path(dir, 2)).unwrap();
    assert!(matches!(
        store.load_generation(2),
        Err(StoreError::NoSuchGeneration { number: 2, .. })
    ));
    match store.load_generation(3) {
        Err(e @ StoreError::BrokenChain { needs: 2, .. }) => {
            assert!(e.to_string().contains("is missing"), "{e}")
        }
        other => panic!("expected BrokenChain, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// prune_to

#[test]
fn prune_to_keeps_the_newest_and_their_chains_and_frees_exactly_what_it_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, mut written) = chains(dir, 7);
    // 2's header does not verify: its file counts all the same.
    flip(&gen_path(dir, 2), header::NUMBER as u64);
    written.remove(&2);
    let sizes: BTreeMap<u64, u64> = (1..=7).map(|n| (n, size(&gen_path(dir, n)))).collect();
    // 7 and 6 kept, and 6's chain: 4 and 5.
    let pruned = store.prune_to(2).unwrap();
    assert_eq!(pruned.newest_restorable, Some(7));
    let removed: Vec<(u64, u64)> = pruned.removed.iter().map(|r| (r.number, r.bytes)).collect();
    assert_eq!(removed, [3, 2, 1].map(|n| (n, sizes[&n])));
    assert_eq!(pruned.bytes_freed(), sizes[&1] + sizes[&2] + sizes[&3]);
    assert!(pruned.errors.is_empty());
    assert_eq!(gen_numbers(dir), BTreeSet::from([4, 5, 6, 7]));
    for n in 4..=7 {
        assert_eq!(store.load_generation(n).unwrap().image, written[&n].0);
    }
    // Nothing more to remove at the same count.
    assert!(store.prune_to(2).unwrap().removed.is_empty());
    let pruned = store.prune_to(1).unwrap();
    assert_eq!(pruned.bytes_freed(), sizes[&4] + sizes[&5] + sizes[&6]);
    assert_eq!(gen_numbers(dir), BTreeSet::from([7]));
}

#[test]
fn prune_to_with_keeps_the_newest_generation_that_passes_the_acceptance_and_its_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, written) = chains(dir, 7);
    // 7 and 6 verify, but the caller would not restore them.
    let refused = [meta_of(6), meta_of(7)];
    let pruned = store
        .prune_to_with(1, |_, meta| match refused.iter().any(|r| r == meta) {
            true => Err("refused".to_owned()),
            false => Ok(()),
        })
        .unwrap();
    assert_eq!(pruned.newest_restorable, Some(5));
    // 7 is the newest; 5 needs 4.
    assert_eq!(gen_numbers(dir), BTreeSet::from([4, 5, 7]));
    assert_eq!(store.load_generation(5).unwrap().image, written[&5].0);
    // Refusing everything removes nothing.
    assert!(matches!(
        store.prune_to_with(1, |_, _| Err("refused".to_owned())),
        Err(StoreError::NoVerifiedGeneration { .. })
    ));
    assert_eq!(gen_numbers(dir), BTreeSet::from([4, 5, 7]));
}

#[test]
fn prune_to_one_whose_newest_is_damaged_keeps_the_newest_verified_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, written) = chains(dir, 6);
    // 6's header does not verify, so it keeps nothing alive by itself; the
    // newest verified is 5, a delta on 4.
    flip(&gen_path(dir, 6), header::BASE as u64);
    let sizes: Vec<u64> = [3, 2, 1].iter().map(|&n| size(&gen_path(dir, n))).collect();
    let pruned = store.prune_to(1).unwrap();
    assert_eq!(pruned.newest_restorable, Some(5));
    let removed: Vec<u64> = pruned.removed.iter().map(|r| r.number).collect();
    assert_eq!(removed, [3, 2, 1]);
    assert_eq!(pruned.bytes_freed(), sizes.iter().sum::<u64>());
    assert_eq!(gen_numbers(dir), BTreeSet::from([4, 5, 6]));
    let loaded = store.load_newest().unwrap().unwrap();
    assert_eq!((loaded.number, &loaded.image), (5, &written[&5].0));
}

#[test]
fn prune_to_refuses_a_read_only_store_keep_zero_and_a_store_where_nothing_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, _) = chains(dir, 3);
    let before = dir_state(dir);
    let mut reader = Store::open_read_only(dir).unwrap();
    read_only_error(reader.prune_to(1), dir);
    assert!(matches!(
        store.prune_to(0),
        Err(StoreError::InvalidOption { name: "keep", .. })
    ));
    flip(&gen_path(dir, 1), header::LEN as u64 + 64);
    let expected = {
        let mut b = before;
        b.insert(
            OsString::from(gen_path(dir, 1).file_name().unwrap()),
            fs::read(gen_path(dir, 1)).unwrap(),
        );
        b
    };
    assert!(matches!(
        store.prune_to(1),
        Err(StoreError::NoVerifiedGeneration { tried: 3, .. })
    ));
    assert_eq!(dir_state(dir), expected, "a refused prune removed something");
}

// ---------------------------------------------------------------------------
// A model of writes, damage and prunes.

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Damage {
        Flip(u64),
        /// A byte of the header, which then does not verify.
        FlipHeader(u64),
        Truncate(u64),
        Delete,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Changes a byte of the image and commits it.
        Commit {
            at: u64,
            value: u8,
        },
        /// Damages the `pick`-th generation file present (modulo their
        /// number).
        Damage {
            pick: usize,
            how: Damage,
        },
        Prune {
            keep: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let damage = prop_oneof![
            2 => any::<u64>().prop_map(Damage::Flip),
            1 => (0..header::LEN as u64).prop_map(Damage::FlipHeader),
            1 => prop_oneof![0..200u64, any::<u64>()].prop_map(Damage::Truncate),
            1 => Just(Damage::Delete),
        ];
        prop_oneof![
            5 => (0..REGION, 1..=255u8).prop_map(|(at, value)| Op::Commit { at, value }),
            1 => (any::<usize>(), damage).prop_map(|(pick, how)| Op::Damage { pick, how }),
            2 => (1..4usize).prop_map(|keep| Op::Prune { keep }),
        ]
    }

    /// What retention keeps, computed from the files present and their
    /// headers alone: the newest `keep` numbers, the newest verified
    /// generation, and every generation their chains need.
    fn expected_kept(
        present: &BTreeSet<u64>,
        parents: &BTreeMap<u64, u64>,
        keep: usize,
        newest_verified: Option<u64>,
    ) -> BTreeSet<u64> {
        let mut kept: BTreeSet<u64> = present.iter().rev().take(keep).copied().collect();
        kept.extend(newest_verified);
        let mut todo: Vec<u64> = kept.iter().copied().collect();
        while let Some(n) = todo.pop() {
            if let Some(&p) = parents.get(&n)
                && present.contains(&p)
                && kept.insert(p)
            {
                todo.push(p);
            }
        }
        kept
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn a_prune_keeps_every_generation_it_must_and_each_kept_verified_one_still_loads(
            ops in proptest::collection::vec(op(), 1..30)
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let mut store = Store::open(dir, options(1000, 3)).unwrap();
            let mut image = pattern(REGION, 3);
            let mut written: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Commit { at, value } => {
                        image[at as usize] ^= value;
                        let n = commit(&mut store, &image, &n_meta(&image));
                        written.insert(n, image.clone());
                    }
                    Op::Damage { pick, how } => {
                        let present: Vec<u64> = gen_numbers(dir).into_iter().collect();
                        if present.is_empty() {
                            continue;
                        }
                        let path = gen_path(dir, present[pick % present.len()]);
                        let len = size(&path);
                        if len == 0 {
                            // Truncated to nothing already: no byte left to
                            // flip or cut, and damaged as it is.
                            continue;
                        }
                        match how {
                            Damage::Flip(at) | Damage::FlipHeader(at) => flip(&path, at % len),
                            Damage::Truncate(to) => {
                                let bytes = fs::read(&path).unwrap();
                                fs::write(&path, &bytes[..(to % len) as usize]).unwrap();
                            }
                            Damage::Delete => fs::remove_file(&path).unwrap(),
                        }
                    }
                    Op::Prune { keep } => {
                        let present = gen_numbers(dir);
                        let checked = store.check_all().unwrap();
                        let intact: BTreeSet<u64> = checked
                            .iter()
                            .filter(|c| c.condition.is_intact())
                            .map(|c| c.number)
                            .collect();
                        let newest_verified = intact.last().copied();
                        let parents: BTreeMap<u64, u64> = store
                            .generations()
                            .iter()
                            .filter_map(|g| match g.kind {
                                GenerationKind::Delta { parent, .. } => Some((g.number, parent)),
                                GenerationKind::Base => None,
                            })
                            .collect();
                        let sizes: BTreeMap<u64, u64> =
                            present.iter().map(|&n| (n, size(&gen_path(dir, n)))).collect();
                        let pruned = match store.prune_to(keep) {
                            Ok(p) => p,
                            Err(StoreError::NoVerifiedGeneration { .. }) => {
                                prop_assert!(newest_verified.is_none(), "{:?}", summary(&checked));
                                prop_assert_eq!(gen_numbers(dir), present);
                                continue;
                            }
                            Err(e) => panic!("prune_to({keep}): {e}"),
                        };
                        prop_assert_eq!(pruned.newest_restorable, newest_verified);
                        let kept = expected_kept(&present, &parents, keep, newest_verified);
                        let expected_removed: Vec<(u64, u64)> = present
                            .iter()
                            .rev()
                            .filter(|n| !kept.contains(n))
                            .map(|&n| (n, sizes[&n]))
                            .collect();
                        let removed: Vec<(u64, u64)> =
                            pruned.removed.iter().map(|r| (r.number, r.bytes)).collect();
                        prop_assert_eq!(&removed, &expected_removed);
                        prop_assert_eq!(
                            pruned.bytes_freed(),
                            expected_removed.iter().map(|r| r.1).sum::<u64>()
                        );
                        prop_assert_eq!(gen_numbers(dir), kept.clone());
                        // Every kept generation that verified before still
                        // does, and loads to what it was written with.
                        let after = store.check_all().unwrap();
                        for n in intact.intersection(&kept) {
                            let c = after.iter().find(|c| c.number == *n).unwrap();
                            prop_assert!(c.condition.is_intact(), "{}: {:?}", n, c.condition);
                            let loaded = store.load_generation(*n).unwrap();
                            prop_assert!(loaded.image == written[n], "generation {} changed", n);
                            prop_assert_eq!(loaded.meta, n_meta(&written[n]));
                        }
                    }
                }
            }
        }
    }

    /// A meta blob that depends on the whole image (FNV-1a of it).
    fn n_meta(image: &[u8]) -> Vec<u8> {
        let hash = image.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        hash.to_le_bytes().to_vec()
    }
}

// ---------------------------------------------------------------------------
// A generation removed while a reader looks at the store.

/// An I/O layer on the real file system that calls a hook before each
/// file it opens for reading (with how many it opened before), and may
/// show the store at another path than the one it is at.
struct HookIo {
    inner: RealIo,
    /// The path the store is seen at, and the one it is at.
    moved: Option<(PathBuf, PathBuf)>,
    opens: usize,
    before_open: Box<dyn FnMut(usize) + Send>,
}

impl HookIo {
    fn new(before_open: impl FnMut(usize) + Send + 'static) -> HookIo {
        HookIo {
            inner: RealIo,
            moved: None,
            opens: 0,
            before_open: Box::new(before_open),
        }
    }

    fn moved(seen_at: &Path, real: &Path) -> HookIo {
        HookIo {
            moved: Some((seen_at.to_owned(), real.to_owned())),
            ..HookIo::new(|_| {})
        }
    }

    fn real(&self, path: &Path) -> PathBuf {
        match &self.moved {
            Some((seen, real)) => real.join(path.strip_prefix(seen).expect("inside the store")),
            None => path.to_owned(),
        }
    }
}

impl StoreIo for HookIo {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        let dir = self.real(dir);
        self.inner.create_dir_all(&dir)
    }

    fn lock(&mut self, path: &Path) -> io::Result<LockAttempt> {
        let path = self.real(path);
        self.inner.lock(&path)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
        let dir = self.real(dir);
        self.inner.list(&dir)
    }

    fn create_new(&mut self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        let path = self.real(path);
        self.inner.create_new(&path)
    }

    fn open_read(&mut self, path: &Path) -> io::Result<ReadFile> {
        (self.before_open)(self.opens);
        self.opens += 1;
        let path = self.real(path);
        self.inner.open_read(&path)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (self.real(from), self.real(to));
        self.inner.rename(&from, &to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let dir = self.real(dir);
        self.inner.sync_dir(&dir)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        let path = self.real(path);
        self.inner.remove(&path)
    }
}

/// How the owner's prune interleaves with the reader.
#[derive(Debug, Clone, Copy)]
enum Pruner {
    /// The owner's whole `prune_to(1)` runs between two of the reader's
    /// opens.
    AllAtOnce,
    /// One removal, newest first as retention removes, before each of the
    /// reader's opens.
    OnePerOpen,
}

#[test]
fn a_generation_pruned_while_a_reader_checks_the_store_is_reported_vanished_never_damaged() {
    let mut vanished_reports = 0;
    for pruner in [Pruner::AllAtOnce, Pruner::OnePerOpen] {
        for start in 0.. {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().to_owned();
            // Bases 1, 4 and 7; pruning to 1 removes 6, 5, 4, 3, 2, 1.
            let (owner, written) = chains(&dir, 7);
            let owner = Arc::new(Mutex::new(owner));
            let fired = Arc::new(Mutex::new(false));
            let mut doomed = vec![6u64, 5, 4, 3, 2, 1].into_iter();
            let hook = {
                let (owner, fired, dir) = (owner.clone(), fired.clone(), dir.clone());
                move |opened: usize| {
                    if opened < start {
                        return;
                    }
                    let mut fired = fired.lock().unwrap();
                    match pruner {
                        Pruner::AllAtOnce if !*fired => {
                            let pruned = owner.lock().unwrap().prune_to(1).unwrap();
                            assert_eq!(pruned.removed.len(), 6);
                        }
                        Pruner::AllAtOnce => {}
                        Pruner::OnePerOpen => {
                            if let Some(n) = doomed.next() {
                                fs::remove_file(gen_path(&dir, n)).unwrap();
                            }
                        }
                    }
                    *fired = true;
                }
            };
            let at = format!("{pruner:?} from the reader's open {start}");
            let mut reader = Store::open_read_only_with_io(&dir, Box::new(HookIo::new(hook))).expect(&at);
            // What the listing shows is what was there when it read the
            // headers: nothing unreadable, nothing that is not there.
            assert!(reader.unreadable().is_empty(), "{at}: {:?}", reader.unreadable());
            let listed: BTreeSet<u64> = reader.generations().iter().map(|g| g.number).collect();
            let checked = reader.check_all().expect(&at);
            if !*fired.lock().unwrap() {
                // Every interleaving was tried.
                assert!(start > 20, "{at}: the reader opened too few files");
                break;
            }
            let present = gen_numbers(&dir);
            for n in 1..=7 {
                assert!(
                    listed.contains(&n) || !present.contains(&n),
                    "{at}: {n} not listed"
                );
            }
            let reported: BTreeSet<u64> = checked.iter().map(|c| c.number).collect();
            for n in 1..=7 {
                assert!(
                    reported.contains(&n) || !present.contains(&n),
                    "{at}: {n} not reported"
                );
            }
            for c in &checked {
                let n = c.number;
                match found(c) {
                    Found::Intact => assert_eq!(c.meta.as_deref(), Some(&written[&n].1[..]), "{at}: {n}"),
                    Found::Vanished => {
                        assert!(!present.contains(&n), "{at}: {n} reported vanished but is there");
                        vanished_reports += 1;
                    }
                    other => panic!("{at}: generation {n} reported {other:?}: {:?}", c.condition),
                }
            }
            assert!(
                checked
                    .last()
                    .is_some_and(|c| c.number == 7 && c.condition.is_intact()),
                "{at}: the newest, which no prune removes, is not intact"
            );
        }
    }
    // The interleavings above include removals between the scan and the
    // reading of the files, which only "vanished" describes.
    assert!(vanished_reports >= 6, "only {vanished_reports} vanished reports");
}

#[test]
fn a_damaged_generation_pruned_after_the_reader_read_it_is_reported_pruned_with_the_deltas_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (owner, _) = chains(&dir, 7);
    flip(&gen_path(&dir, 2), header::LEN as u64 + 500);
    let owner = Mutex::new(Some(owner));
    // The reader's opens: 7 headers when opening, 7 when check_all scans,
    // then the files 1, 2, 3, ...: the owner prunes right after it read 2.
    let hook = move |opened: usize| {
        if opened == 16
            && let Some(mut owner) = owner.lock().unwrap().take()
        {
            let removed: Vec<u64> = owner
                .prune_to(1)
                .unwrap()
                .removed
                .iter()
                .map(|r| r.number)
                .collect();
            assert_eq!(removed, [6, 5, 4, 3, 2, 1]);
        }
    };
    let mut reader = Store::open_read_only_with_io(&dir, Box::new(HookIo::new(hook))).unwrap();
    let checked = reader.check_all().unwrap();
    assert_eq!(gen_numbers(&dir), BTreeSet::from([7]));
    // 1 was read whole before the prune; 2 was found damaged, but by the
    // end of the check it is gone like the rest: what the owner pruned.
    assert_eq!(
        summary(&checked),
        expect(
            7,
            &[
                (2, Found::Vanished),
                (3, Found::Vanished),
                (4, Found::Vanished),
                (5, Found::Vanished),
                (6, Found::Vanished)
            ]
        )
    );
}

#[test]
fn an_owner_committing_and_pruning_in_another_thread_never_makes_a_reader_see_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    // Two generations kept and a base every other one: nearly every commit
    // removes files.
    let mut owner = Store::open(&dir, options(2, 2)).unwrap();
    let mut image = pattern(REGION, 5);
    commit(&mut owner, &image, &1u64.to_le_bytes());
    let writer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_millis(700);
        let mut commits = 1u64;
        while Instant::now() < deadline {
            image[(commits % REGION) as usize] ^= 1;
            let mut tx = owner.begin(REGION).unwrap();
            let number = tx.number();
            tx.put_chunks(0, &image).unwrap();
            let p = tx.commit(&number.to_le_bytes()).unwrap();
            assert!(p.prune_errors.is_empty(), "{:?}", p.prune_errors);
            commits += 1;
        }
        commits
    });
    let (mut checks, mut intact, mut vanished) = (0u64, 0u64, 0u64);
    while !writer.is_finished() {
        let mut reader = Store::open_read_only(&dir).unwrap();
        assert!(reader.unreadable().is_empty(), "{:?}", reader.unreadable());
        for c in reader.check_all().unwrap() {
            match &c.condition {
                Condition::Intact => {
                    // What it holds is what the owner wrote under its number.
                    assert_eq!(c.meta.as_deref(), Some(&c.number.to_le_bytes()[..]));
                    intact += 1;
                }
                Condition::Vanished => vanished += 1,
                other => panic!("generation {} reported {other:?}", c.number),
            }
        }
        checks += 1;
    }
    let commits = writer.join().unwrap();
    eprintln!("{commits} commits, {checks} checks: {intact} intact, {vanished} vanished");
    assert!(checks > 0 && intact > 0);
}

// ---------------------------------------------------------------------------
// Meta::peek

mod peek {
    use proptest::prelude::*;
    use shm_snapshot::layout::{Geometry, Tag, UnitRef, pad};
    use shm_snapshot::meta::Meta;

    const SLOTS: u64 = 8;
    const RING: u64 = 4096;

    fn geometry() -> Geometry {
        Geometry::derive(1 << 20, SLOTS, RING, 4096).unwrap()
    }

    /// A meta blob `decode` accepts: up to `SLOTS` units of consecutive
    /// sequence numbers, back to back in the stream, in any order in the
    /// blob.
    fn valid_meta() -> impl Strategy<Value = Meta> {
        (
            1..1000u64,
            0..1000u64,
            proptest::collection::vec((0..300u64, any::<u64>()), 0..=SLOTS as usize),
            // Any count a client accepts (at most 2^62).
            0..=shm_snapshot::layout::limits::MAX_COUNTER,
            any::<u64>(),
        )
            .prop_map(|(first_seq, start, units, commit_count, order)| {
                let mut offset = start * 8;
                let mut refs: Vec<UnitRef> = units
                    .iter()
                    .enumerate()
                    .map(|(i, &(len, _))| {
                        let seq = first_seq + i as u64;
                        let u = UnitRef {
                            slot: seq & (SLOTS - 1),
                            tag: Tag::valid(seq),
                            offset,
                            len,
                        };
                        offset += pad(len);
                        u
                    })
                    .collect();
                // Shuffled by the random keys.
                let mut keyed: Vec<(u64, UnitRef)> =
                    units.iter().map(|u| u.1 ^ order).zip(refs.drain(..)).collect();
                keyed.sort_by_key(|k| k.0);
                Meta {
                    cursor: offset,
                    next_seq: first_seq + units.len() as u64,
                    commit_count,
                    units: keyed.into_iter().map(|k| k.1).collect(),
                }
            })
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        None,
        Word { index: usize, value: u64 },
        Cut { bytes: usize },
        Append { bytes: Vec<u8> },
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            2 => Just(Mutation::None),
            4 => (any::<usize>(), prop_oneof![0..16u64, any::<u64>()])
                .prop_map(|(index, value)| Mutation::Word { index, value }),
            1 => any::<usize>().prop_map(|bytes| Mutation::Cut { bytes }),
            1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(|bytes| Mutation::Append { bytes }),
        ]
    }

    fn apply(mut blob: Vec<u8>, m: &Mutation) -> Vec<u8> {
        match m {
            Mutation::None => {}
            Mutation::Word { index, value } => {
                let at = index % (blob.len() / 8) * 8;
                blob[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            Mutation::Cut { bytes } => blob.truncate(bytes % blob.len()),
            Mutation::Append { bytes } => blob.extend_from_slice(bytes),
        }
        blob
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn peek_reads_back_whatever_encode_wrote(
            cursor in any::<u64>(),
            next_seq in any::<u64>(),
            commit_count in any::<u64>(),
            units in proptest::collection::vec(any::<(u64, u64, u64, u64)>(), 0..20),
        ) {
            let meta = Meta {
                cursor,
                next_seq,
                commit_count,
                units: units
                    .into_iter()
                    .map(|(slot, tag, offset, len)| UnitRef { slot, tag: Tag(tag), offset, len })
                    .collect(),
            };
            prop_assert_eq!(Meta::peek(&meta.encode()).unwrap(), meta);
        }

        #[test]
        fn peek_agrees_with_decode(meta in valid_meta(), m in mutation()) {
            let g = geometry();
            let blob = apply(meta.encode(), &m);
            match (Meta::peek(&blob), Meta::decode(&blob, &g)) {
                (Ok(peeked), Ok(decoded)) => {
                    // The same fields; decode puts the units in sequence
                    // order, peek leaves them in the blob's.
                    let mut sorted = peeked.units.clone();
                    sorted.sort_by_key(|u| u.seq());
                    prop_assert_eq!(&sorted, &decoded.units);
                    prop_assert_eq!(
                        (peeked.cursor, peeked.next_seq, peeked.commit_count),
                        (decoded.cursor, decoded.next_seq, decoded.commit_count)
                    );
                    if matches!(m, Mutation::None) {
                        prop_assert_eq!(peeked, meta);
                    }
                }
                (Err(p), Err(d)) => prop_assert_eq!(p.to_string(), d.to_string()),
                (Err(p), Ok(_)) => prop_assert!(false, "decode accepted what peek refused: {}", p),
                (Ok(_), Err(d)) => {
                    // decode checks the units against the geometry; a blob
                    // as written always passes.
                    prop_assert!(!matches!(m, Mutation::None), "a valid blob refused: {}", d);
                }
            }
        }
    }
}

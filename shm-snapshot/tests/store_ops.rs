//! The store API behind the operator subcommands: the read-only open,
//! checking every generation, loading one by number, pruning to a count,
//! and the meta peek; and a generation pruned while a reader looks at the
//! store, which is reported gone, never damaged (STORE.md, "The directory"
//! and "Retention").

mod common;

use common::{flip, pattern, record_of, size};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shm_snapshot::store::format::{chunk, header, meta, segment, trailer};
use shm_snapshot::store::{
    CHUNK_BYTES, Checked, Condition, FaultyIo, GenerationKind, IoOp, LockAttempt, PAGE_BYTES, ReadFile,
    RealIo, Store, StoreError, StoreFile, StoreIo, StoreOptions,
};

const CHUNK: u64 = CHUNK_BYTES;
/// Three chunks, the last one short.
const REGION: u64 = 2 * CHUNK + 5000;

/// `keep` generations, no fsync (nothing here is about durability), and
/// everything on the caller's thread, so the directory holds exactly what
/// the calls made.
fn options(keep: usize) -> StoreOptions {
    StoreOptions {
        keep,
        fsync: false,
        background: false,
        ..StoreOptions::default()
    }
}

/// Offers every chunk of `image` and commits; returns the number.
fn commit(store: &mut Store, image: &[u8], meta: &[u8]) -> u64 {
    let mut tx = store.begin(image.len() as u64).expect("begin");
    tx.put_chunks(0, image).expect("put_chunks");
    tx.commit(meta).expect("commit").number
}

/// The store's files in `dir` (segments and base files).
fn store_files(dir: &Path) -> BTreeSet<PathBuf> {
    common::file_names(dir)
        .into_iter()
        .filter(|n| n.starts_with("seg-") || n.starts_with("base-"))
        .map(|n| dir.join(n))
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

/// What each generation was written with.
type Written = BTreeMap<u64, (Vec<u8>, Vec<u8>)>;

/// Where each generation of [`chains`] is: its base file, or the segment
/// holding its record.
type Files = BTreeMap<u64, PathBuf>;

fn meta_of(n: u64) -> Vec<u8> {
    format!("meta of generation {n}").into_bytes()
}

/// Commits `count` generations, each changing a few bytes of one chunk,
/// each in an opening of the store of its own, as a supervisor restarted
/// between generations makes them: every third one (1, 4, 7, ...) opened
/// without a load, so a full generation in a base file of its own; the
/// others opened with a load, so a delta on the one before, the only
/// record of a segment of its own. Every generation is a file of its own,
/// and the chains are 1 <- 2 <- 3, 4 <- 5 <- 6, 7 ... Returns the last
/// opening, which never prunes by itself (keeping 1000).
fn chains(dir: &Path, count: u64) -> (Store, Written, Files) {
    let mut image = pattern(REGION, 7);
    let mut written = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut store = None;
    for g in 1..=count {
        drop(store.take());
        let mut s = Store::open(dir, options(1000)).unwrap();
        if g % 3 != 1 {
            assert_eq!(s.load_newest().unwrap().unwrap().number, g - 1);
        }
        let at = ((g % 3) * CHUNK + g * 37) as usize;
        image[at] ^= 0x5a;
        let n = commit(&mut s, &image, &meta_of(g));
        assert_eq!(n, g);
        let (path, offset, _) = record_of(&s, n);
        assert_eq!(offset, if g % 3 == 1 { 0 } else { segment::LEN as u64 });
        written.insert(n, (image.clone(), meta_of(n)));
        files.insert(n, path);
        store = Some(s);
    }
    let files_present: BTreeSet<PathBuf> = files.values().cloned().collect();
    assert_eq!(files_present.len() as u64, count, "a file per generation");
    (store.expect("at least one generation"), written, files)
}

/// Where generation `n`'s record starts in its file.
fn record_start(files: &Files, n: u64) -> u64 {
    if files[&n]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("seg-")
    {
        segment::LEN as u64
    } else {
        0
    }
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

/// Every generation of `1..=count` intact but those in `other`, and
/// without those in `gone`.
fn expect_without(count: u64, other: &[(u64, Found)], gone: &[u64]) -> Vec<(u64, Found)> {
    let other: BTreeMap<u64, Found> = other.iter().copied().collect();
    (1..=count)
        .filter(|n| !gone.contains(n))
        .map(|n| (n, other.get(&n).copied().unwrap_or(Found::Intact)))
        .collect()
}

/// Every generation of `1..=count` intact but those in `other`.
fn expect(count: u64, other: &[(u64, Found)]) -> Vec<(u64, Found)> {
    expect_without(count, other, &[])
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
    let (mut owner, written, _) = chains(&dir, 5);
    assert!(matches!(
        Store::open(&dir, options(8)),
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
        GenerationKind::Delta { parent: 5 }
    );
    let checked = reader.check_all().unwrap();
    assert_eq!(summary(&checked), expect(6, &[]));
    assert_eq!(checked[5].meta.as_deref(), Some(&b"six"[..]));
}

#[test]
fn read_only_store_creates_changes_and_removes_nothing_and_refuses_to_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (owner, written, files) = chains(&dir, 4);
    drop(owner);
    // No lock file (never made, or cleaned up), a dead writer's temporary
    // file, a damaged generation and a foreign file.
    fs::remove_file(dir.join("lock")).unwrap();
    fs::write(dir.join("base-00000000000000000005.4242.0.tmp"), b"partial").unwrap();
    fs::write(dir.join("notes"), b"mine").unwrap();
    flip(&files[&4], header::LEN as u64 + 200, 0x04);
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
    let (mut store, written, files) = chains(tmp.path(), 7);
    let checked = store.check_all().unwrap();
    assert_eq!(summary(&checked), expect(7, &[]));
    let infos = store.generations();
    assert_eq!(infos.len(), 7);
    for (c, info) in checked.iter().zip(&infos) {
        let n = c.number;
        assert_eq!(c.info.as_ref(), Some(info));
        // A record's size: the whole base file, or the segment but its
        // header.
        assert_eq!(
            c.bytes,
            size(&files[&n]) - record_start(&files, n),
            "generation {n}"
        );
        assert_eq!(c.meta.as_deref(), Some(&written[&n].1[..]));
        assert_eq!(info.is_base(), n % 3 == 1, "generation {n}");
        // Deltas 3 and 6 change the first page, 2 and 5 inherit it.
        assert_eq!(
            c.first_page.as_deref(),
            Some(&written[&n].0[..PAGE_BYTES as usize]),
            "generation {n}"
        );
    }
}

/// Where in generation `n`'s record a piece of each kind lies (as an
/// offset in its file), with a word the error for a byte flipped there
/// names, and whether that byte is part of the record's skeleton, which a
/// scan of a segment checks. Its meta blob is `meta_len` bytes long.
fn pieces(files: &Files, n: u64, meta_len: usize) -> Vec<(&'static str, u64, &'static str, bool)> {
    let start = record_start(files, n) as usize;
    let end = size(&files[&n]) as usize;
    let meta_at = end - trailer::LEN - meta_len - meta::DESCRIPTOR;
    vec![
        ("header", start + header::PARENT, "header_hash", true),
        (
            "chunk descriptor",
            start + header::LEN + chunk::HASH + 3,
            "hash",
            true,
        ),
        (
            "page",
            start + header::LEN + chunk::DESCRIPTOR + 11,
            "hash",
            false,
        ),
        ("meta descriptor", meta_at + meta::HASH, "hash", true),
        ("meta blob", meta_at + meta::DESCRIPTOR + 2, "meta hash", false),
        (
            "trailer",
            end - trailer::LEN + trailer::RECORD_LEN,
            "trailer record_len",
            true,
        ),
    ]
    .into_iter()
    .map(|(what, at, names, skeleton)| (what, at as u64, names, skeleton))
    .collect()
}

#[test]
fn check_all_names_exactly_the_damaged_generation_and_breaks_the_chains_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, _, files) = chains(dir, 7);
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
        let path = &files[&damaged];
        let in_segment = record_start(&files, damaged) > 0;
        for (what, offset, names, skeleton) in pieces(&files, damaged, meta_of(damaged).len()) {
            flip(path, offset, 0x04);
            let checked = store.check_all().unwrap();
            let at = format!("a byte flipped in the {what} of generation {damaged}");
            if in_segment && skeleton {
                // The scan of the segment stops before the record: not a
                // generation, but a tail, and the generation that needs it
                // finds it missing.
                assert_eq!(
                    summary(&checked),
                    expect_without(7, &[(6, Found::BrokenChain { needs: 5 })], &[5]),
                    "{at}"
                );
                let tails = store.tails();
                assert_eq!(tails.len(), 1, "{at}");
                assert_eq!(
                    (&tails[0].path, tails[0].offset, tails[0].after),
                    (path, segment::LEN as u64, None)
                );
                assert!(tails[0].why.contains(names), "{at}: {}", tails[0].why);
            } else {
                assert_eq!(summary(&checked), expect(7, outcome), "{at}");
                let c = &checked[damaged as usize - 1];
                let Condition::Damaged(e) = &c.condition else {
                    unreachable!()
                };
                assert!(e.to_string().contains(names), "{at}: {e}");
                assert_eq!(c.info.is_none(), what == "header", "{at}");
                assert!(c.meta.is_none(), "{at}");
                assert!(store.tails().is_empty(), "{at}");
            }
            for (n, f) in outcome {
                if let Found::BrokenChain { .. } = f {
                    let c = checked.iter().find(|c| c.number == *n).unwrap();
                    assert_eq!(c.meta.as_deref(), Some(&meta_of(*n)[..]), "{at}: {n}");
                }
            }
            flip(path, offset, 0x04);
        }
    }
    assert_eq!(summary(&store.check_all().unwrap()), expect(7, &[]));
}

#[test]
fn check_all_reports_a_truncated_base_damaged_a_torn_segment_as_a_tail_and_a_deleted_base_as_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, _, files) = chains(dir, 7);
    // A base file cut short is damaged, whatever is left of it.
    let path = &files[&4];
    let whole = fs::read(path).unwrap();
    for keep in [whole.len() - 1, whole.len() / 2, 50, 0] {
        fs::write(path, &whole[..keep]).unwrap();
        let checked = store.check_all().unwrap();
        assert_eq!(
            summary(&checked),
            expect(
                7,
                &[
                    (4, Found::Damaged),
                    (5, Found::BrokenChain { needs: 4 }),
                    (6, Found::BrokenChain { needs: 5 })
                ]
            ),
            "base 4 cut to {keep} bytes"
        );
        assert_eq!(checked[3].bytes, keep as u64);
    }
    fs::write(path, &whole).unwrap();
    // A segment cut short ends where its readable part ends: the record cut
    // is a tail, not a generation, and 6 finds 5 missing.
    let path = &files[&5];
    let whole = fs::read(path).unwrap();
    for keep in [whole.len() - 1, whole.len() / 2, 50, 0] {
        fs::write(path, &whole[..keep]).unwrap();
        let checked = store.check_all().unwrap();
        assert_eq!(
            summary(&checked),
            expect_without(7, &[(6, Found::BrokenChain { needs: 5 })], &[5]),
            "segment of 5 cut to {keep} bytes"
        );
        let tails = store.tails();
        assert_eq!(tails.len(), 1, "cut to {keep}");
        let start = if keep < segment::LEN { 0 } else { segment::LEN };
        assert_eq!(
            (&tails[0].path, tails[0].offset, tails[0].bytes),
            (path, start as u64, (keep - start) as u64)
        );
    }
    fs::write(path, &whole).unwrap();

    fs::remove_file(&files[&4]).unwrap();
    let checked = store.check_all().unwrap();
    assert_eq!(
        summary(&checked),
        expect_without(
            7,
            &[
                (5, Found::BrokenChain { needs: 4 }),
                (6, Found::BrokenChain { needs: 5 }),
            ],
            &[4]
        )
    );
    let Condition::BrokenChain(e) = &checked[3].condition else {
        unreachable!()
    };
    assert!(e.to_string().contains("is missing"), "{e}");
}

#[test]
fn check_all_finds_a_damaged_record_in_the_middle_of_a_segment_and_the_records_after_it_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A base and five deltas in one segment.
    let mut store = Store::open(dir, options(1000)).unwrap();
    let mut image = pattern(REGION, 8);
    for g in 1..=6u64 {
        image[(g * 4099) as usize] ^= 1;
        commit(&mut store, &image, &meta_of(g));
    }
    let (segment, start, _) = record_of(&store, 3);
    assert_eq!(record_of(&store, 6).0, segment);
    flip(
        &segment,
        start + (header::LEN + chunk::DESCRIPTOR + 17) as u64,
        0x40,
    );
    let checked = store.check_all().unwrap();
    assert_eq!(
        summary(&checked),
        expect(
            6,
            &[
                (3, Found::Damaged),
                (4, Found::BrokenChain { needs: 3 }),
                (5, Found::BrokenChain { needs: 4 }),
                (6, Found::BrokenChain { needs: 5 })
            ]
        )
    );
    // The others in the segment read whole: their meta is there.
    for c in &checked[3..] {
        assert_eq!(c.meta.as_deref(), Some(&meta_of(c.number)[..]));
    }
}

#[test]
fn check_all_asks_its_io_layer_whether_a_damaged_file_is_gone() {
    // The store seen through an I/O layer at a path that does not exist on
    // the real file system, as an in-memory one would be: a damaged file
    // is damaged, not gone.
    let tmp = tempfile::tempdir().unwrap();
    let (owner, _, files) = chains(tmp.path(), 6);
    drop(owner);
    flip(&files[&5], (segment::LEN + header::LEN + 300) as u64, 0x04);
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
    let (mut owner, written, _) = chains(dir, 7);
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
    let (mut store, written, files) = chains(dir, 6);
    for n in [0, 99] {
        match store.load_generation(n) {
            Err(StoreError::NoSuchGeneration { dir: d, number }) => {
                assert_eq!((d.as_path(), number), (dir, n))
            }
            other => panic!("generation {n}: expected NoSuchGeneration, got {other:?}"),
        }
    }
    flip(&files[&5], (segment::LEN + header::LEN + 100) as u64, 0x04);
    match store.load_generation(5) {
        Err(StoreError::Corrupt { path, what }) => {
            assert_eq!(path, files[&5]);
            assert!(what.contains("hash"), "{what}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match store.load_generation(6) {
        Err(StoreError::BrokenChain { path, needs, .. }) => assert_eq!((path, needs), (files[&6].clone(), 5)),
        other => panic!("expected BrokenChain, got {other:?}"),
    }
    assert_eq!(store.load_generation(4).unwrap().image, written[&4].0);
    fs::remove_file(&files[&2]).unwrap();
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

/// The generations of [`chains`] whose files are present.
fn present(files: &Files) -> BTreeSet<u64> {
    files
        .iter()
        .filter(|(_, p)| p.exists())
        .map(|(&n, _)| n)
        .collect()
}

/// The generations of [`chains`] the removed files held, in the order
/// they were removed.
fn removed_generations(files: &Files, removed: &[shm_snapshot::store::Removed]) -> Vec<u64> {
    removed
        .iter()
        .map(|r| {
            files
                .iter()
                .find(|(_, p)| **p == r.path)
                .map(|(&n, _)| n)
                .unwrap_or_else(|| panic!("{} is no generation's file", r.path.display()))
        })
        .collect()
}

#[test]
fn prune_to_keeps_the_newest_and_their_chains_and_frees_exactly_what_it_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, mut written, files) = chains(dir, 7);
    // 2's header does not verify: its segment holds no generation, and
    // goes all the same.
    flip(&files[&2], (segment::LEN + header::NUMBER) as u64, 0x04);
    written.remove(&2);
    let sizes: BTreeMap<u64, u64> = (1..=7).map(|n| (n, size(&files[&n]))).collect();
    // 7 and 6 kept, and 6's chain: 4 and 5.
    let pruned = store.prune_to(2).unwrap();
    assert_eq!(pruned.newest_restorable, Some(7));
    assert_eq!(removed_generations(&files, &pruned.removed), [3, 2, 1]);
    let removed: Vec<(usize, u64)> = pruned.removed.iter().map(|r| (r.generations, r.bytes)).collect();
    assert_eq!(removed, [(1, sizes[&3]), (0, sizes[&2]), (1, sizes[&1])]);
    assert_eq!(pruned.bytes_freed(), sizes[&1] + sizes[&2] + sizes[&3]);
    assert_eq!(pruned.generations_removed(), 2);
    assert!(pruned.errors.is_empty());
    assert_eq!(present(&files), BTreeSet::from([4, 5, 6, 7]));
    assert_eq!(store_files(dir).len(), 4);
    for n in 4..=7 {
        assert_eq!(store.load_generation(n).unwrap().image, written[&n].0);
    }
    // Nothing more to remove at the same count.
    assert!(store.prune_to(2).unwrap().removed.is_empty());
    let pruned = store.prune_to(1).unwrap();
    assert_eq!(removed_generations(&files, &pruned.removed), [6, 5, 4]);
    assert_eq!(pruned.bytes_freed(), sizes[&4] + sizes[&5] + sizes[&6]);
    assert_eq!(store_files(dir), BTreeSet::from([files[&7].clone()]));
}

#[test]
fn prune_to_with_keeps_the_newest_generation_that_passes_the_acceptance_and_its_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, written, files) = chains(dir, 7);
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
    assert_eq!(present(&files), BTreeSet::from([4, 5, 7]));
    assert_eq!(store_files(dir).len(), 3);
    assert_eq!(store.load_generation(5).unwrap().image, written[&5].0);
    // Refusing everything removes nothing.
    assert!(matches!(
        store.prune_to_with(1, |_, _| Err("refused".to_owned())),
        Err(StoreError::NoVerifiedGeneration { .. })
    ));
    assert_eq!(present(&files), BTreeSet::from([4, 5, 7]));
}

#[test]
fn prune_to_one_whose_newest_is_damaged_keeps_the_newest_verified_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, written, files) = chains(dir, 6);
    // 6's header does not verify: its segment holds no generation. The
    // newest verified is 5, a delta on 4.
    flip(&files[&6], (segment::LEN + header::BASE) as u64, 0x04);
    let sizes: Vec<u64> = [6, 3, 2, 1].iter().map(|n| size(&files[n])).collect();
    let pruned = store.prune_to(1).unwrap();
    assert_eq!(pruned.newest_restorable, Some(5));
    assert_eq!(removed_generations(&files, &pruned.removed), [6, 3, 2, 1]);
    assert_eq!(pruned.bytes_freed(), sizes.iter().sum::<u64>());
    assert_eq!(present(&files), BTreeSet::from([4, 5]));
    let loaded = store.load_newest().unwrap().unwrap();
    assert_eq!((loaded.number, &loaded.image), (5, &written[&5].0));
}

#[test]
fn prune_to_refuses_a_read_only_store_keep_zero_and_a_store_where_nothing_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut store, _, files) = chains(dir, 3);
    let mut reader = Store::open_read_only(dir).unwrap();
    read_only_error(reader.prune_to(1), dir);
    assert!(matches!(
        store.prune_to(0),
        Err(StoreError::InvalidOption { name: "keep", .. })
    ));
    flip(&files[&1], header::LEN as u64 + 64, 0x04);
    let before = dir_state(dir);
    assert!(matches!(
        store.prune_to(1),
        Err(StoreError::NoVerifiedGeneration { tried: 3, .. })
    ));
    assert_eq!(dir_state(dir), before, "a refused prune removed something");
}

// ---------------------------------------------------------------------------
// A model of writes, damage and prunes.

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Damage {
        Flip(u64),
        /// A byte of a header: a segment's, its first record's, or a base
        /// file's.
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
        /// Damages the `pick`-th store file present (modulo their number).
        Damage {
            pick: usize,
            how: Damage,
        },
        Prune {
            keep: usize,
        },
        /// Closes the store and opens it again, loading the newest.
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        let damage = prop_oneof![
            2 => any::<u64>().prop_map(Damage::Flip),
            1 => (0..(segment::LEN + header::LEN) as u64).prop_map(Damage::FlipHeader),
            1 => prop_oneof![0..200u64, any::<u64>()].prop_map(Damage::Truncate),
            1 => Just(Damage::Delete),
        ];
        prop_oneof![
            5 => (0..REGION, 1..=255u8).prop_map(|(at, value)| Op::Commit { at, value }),
            1 => (any::<usize>(), damage).prop_map(|(pick, how)| Op::Damage { pick, how }),
            2 => (1..4usize).prop_map(|keep| Op::Prune { keep }),
            1 => Just(Op::Reopen),
        ]
    }

    /// The generations `check_all` finds intact.
    fn intact(store: &mut Store) -> BTreeSet<u64> {
        store
            .check_all()
            .unwrap()
            .iter()
            .filter(|c| c.condition.is_intact())
            .map(|c| c.number)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn a_prune_keeps_every_generation_it_must_and_each_kept_verified_one_still_loads(
            ops in proptest::collection::vec(op(), 1..30)
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            // A base every few deltas, so there are bases and segments to
            // keep or remove; no retention but the prunes asked for.
            let opts = StoreOptions { base_after_bytes: 3 * PAGE_BYTES, ..options(1000) };
            let mut store = Store::open(dir, opts).unwrap();
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
                        let files: Vec<PathBuf> = store_files(dir).into_iter().collect();
                        if files.is_empty() {
                            continue;
                        }
                        let path = &files[pick % files.len()];
                        let len = size(path);
                        if len == 0 {
                            // Truncated to nothing already: no byte left to
                            // flip or cut, and damaged as it is.
                            continue;
                        }
                        match how {
                            Damage::Flip(at) | Damage::FlipHeader(at) => flip(path, at % len, 0x04),
                            Damage::Truncate(to) => {
                                let bytes = fs::read(path).unwrap();
                                fs::write(path, &bytes[..(to % len) as usize]).unwrap();
                            }
                            Damage::Delete => fs::remove_file(path).unwrap(),
                        }
                    }
                    Op::Prune { keep } => {
                        let before = store_files(dir);
                        let sizes: BTreeMap<PathBuf, u64> = before.iter().map(|p| (p.clone(), size(p))).collect();
                        let intact_before = intact(&mut store);
                        let listed: Vec<u64> = store.generations().iter().map(|g| g.number).collect();
                        let pruned = match store.prune_to(keep) {
                            Ok(p) => p,
                            Err(StoreError::NoVerifiedGeneration { .. }) => {
                                prop_assert!(intact_before.is_empty(), "{:?}", intact_before);
                                prop_assert_eq!(store_files(dir), before);
                                continue;
                            }
                            Err(e) => panic!("prune_to({keep}): {e}"),
                        };
                        prop_assert!(pruned.errors.is_empty(), "{:?}", pruned.errors);
                        let restorable = pruned.newest_restorable;
                        // The newest that verifies, or none in an empty store.
                        prop_assert_eq!(restorable, intact_before.last().copied());
                        // What it removed was there, is gone, and is what
                        // it freed; nothing else went.
                        let removed: BTreeSet<PathBuf> = pruned.removed.iter().map(|r| r.path.clone()).collect();
                        let after = store_files(dir);
                        prop_assert!(removed.is_subset(&before));
                        prop_assert!(removed.is_disjoint(&after));
                        prop_assert!(after.is_subset(&before));
                        prop_assert_eq!(before.len(), after.len() + removed.len());
                        for r in &pruned.removed {
                            prop_assert_eq!(r.bytes, sizes[&r.path]);
                        }
                        // Every kept generation that verified before still
                        // does, and loads to what it was written with: the
                        // newest `keep` listed and the newest restorable.
                        let mut kept: BTreeSet<u64> = listed.iter().rev().take(keep).copied().collect();
                        kept.extend(restorable);
                        let intact_after = intact(&mut store);
                        for n in intact_before.intersection(&kept) {
                            prop_assert!(intact_after.contains(n), "{} no longer intact", n);
                            let loaded = store.load_generation(*n).unwrap();
                            prop_assert!(loaded.image == written[n], "generation {} changed", n);
                            prop_assert_eq!(loaded.meta, n_meta(&written[n]));
                        }
                        // Nothing more to remove at the same count.
                        let again = store.prune_to(keep).unwrap();
                        prop_assert!(again.removed.is_empty(), "{:?}", again.removed);
                    }
                    Op::Reopen => {
                        drop(store);
                        store = Store::open(dir, opts).unwrap();
                        if let Err(e) = store.load_newest() {
                            prop_assert!(matches!(e, StoreError::NoVerifiedGeneration { .. }), "{}", e);
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

    fn fork(&self) -> Box<dyn StoreIo> {
        // Only readers use it: the background work of a writer would need
        // the hook's state shared, which no test here asks for.
        Box::new(HookIo {
            inner: RealIo,
            moved: self.moved.clone(),
            opens: 0,
            before_open: Box::new(|_| {}),
        })
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
            // Bases 1, 4 and 7; pruning to 1 removes the files of 6, 5, 4,
            // 3, 2, 1.
            let (owner, written, files) = chains(&dir, 7);
            let owner = Arc::new(Mutex::new(owner));
            let fired = Arc::new(Mutex::new(false));
            let mut doomed = [6u64, 5, 4, 3, 2, 1].map(|n| files[&n].clone()).into_iter();
            let hook = {
                let (owner, fired) = (owner.clone(), fired.clone());
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
                            if let Some(path) = doomed.next() {
                                fs::remove_file(path).unwrap();
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
            assert!(reader.tails().is_empty(), "{at}: {:?}", reader.tails());
            let listed: BTreeSet<u64> = reader.generations().iter().map(|g| g.number).collect();
            let checked = reader.check_all().expect(&at);
            if !*fired.lock().unwrap() {
                // Every interleaving was tried.
                assert!(start > 20, "{at}: the reader opened too few files");
                break;
            }
            let present = present(&files);
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
    let (owner, _, files) = chains(&dir, 7);
    flip(&files[&2], (segment::LEN + header::LEN + 500) as u64, 0x04);
    let owner = Mutex::new(Some(owner));
    let hook_files = files.clone();
    // The reader's opens: 7 files when opening, 7 when check_all scans,
    // then the records of 1, 2, 3, ...: the owner prunes right after it
    // read 2.
    let hook = move |opened: usize| {
        if opened == 16
            && let Some(mut owner) = owner.lock().unwrap().take()
        {
            let pruned = owner.prune_to(1).unwrap();
            assert_eq!(
                removed_generations(&hook_files, &pruned.removed),
                [6, 5, 4, 3, 2, 1]
            );
        }
    };
    let mut reader = Store::open_read_only_with_io(&dir, Box::new(HookIo::new(hook))).unwrap();
    let checked = reader.check_all().unwrap();
    assert_eq!(present(&files), BTreeSet::from([7]));
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
    // Two generations kept, and a base every other delta built in the
    // background: nearly every commit lets files go.
    let opts = StoreOptions {
        keep: 2,
        fsync: false,
        background: true,
        base_after_bytes: 1,
        ..StoreOptions::default()
    };
    let mut owner = Store::open(&dir, opts).unwrap();
    let mut image = vec![0u8; REGION as usize];
    image[..PAGE_BYTES as usize].copy_from_slice(&pattern(PAGE_BYTES, 5));
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
                other => panic!(
                    "generation {} reported {other:?}; the directory holds {:?} now",
                    c.number,
                    common::file_names(&dir)
                ),
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

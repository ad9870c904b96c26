//! The on-disk generation store: round trips, incremental writes, bases,
//! retention, torn tails, corruption and fallback, and locking (STORE.md).
//! Crashes and injected faults are in `store_crash.rs`, the background
//! work in `store_background.rs`, version 2 stores in `store_legacy.rs`.

mod common;

use common::{
    base_numbers, base_path, commit, file_names, flip, pattern, record_bytes, record_of, segment_numbers,
    size,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use shm_snapshot::store::format::{chunk, header, meta, segment, trailer};
use shm_snapshot::store::{
    CHUNK_BYTES, GenerationKind, Loaded, PAGE_BYTES, Persisted, Store, StoreError, StoreOptions,
};

const CHUNK: u64 = CHUNK_BYTES;

/// Everything on the caller's thread, in a fixed order, so the directory
/// holds exactly what the calls made; `keep` generations kept, and bases
/// only past the default threshold.
fn options(keep: usize) -> StoreOptions {
    StoreOptions {
        keep,
        background: false,
        ..StoreOptions::default()
    }
}

fn load(store: &mut Store) -> Loaded {
    store.load_newest().expect("load").expect("a generation")
}

/// The newest generation as a reader opening the store now finds it.
fn load_fresh(dir: &Path) -> (Loaded, Store) {
    let mut reader = Store::open_read_only(dir).unwrap();
    let loaded = load(&mut reader);
    (loaded, reader)
}

/// Every file of the directory but the lock, with its bytes.
fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    file_names(dir)
        .into_iter()
        .map(|n| {
            let bytes = fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

fn skipped_numbers(loaded: &Loaded) -> Vec<u64> {
    loaded.skipped.iter().map(|(n, _)| *n).collect()
}

/// A store in a fresh temporary directory.
fn fresh(opts: StoreOptions) -> (tempfile::TempDir, PathBuf, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir, opts).unwrap();
    (tmp, dir, store)
}
#[test]
fn empty_store_loads_nothing() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    assert!(store.load_newest().unwrap().is_none());
    assert!(store.generations().is_empty());
}

#[test]
fn base_and_deltas_round_trip_every_byte_and_the_meta() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let len = 5 * CHUNK + 123;
    let mut image = pattern(len, 1);
    let p1 = commit(&mut store, &image, b"meta one");
    assert!(p1.base);
    assert_eq!((p1.number, p1.chunks_written), (1, 6));

    image[10] ^= 0xff;
    image[(5 * CHUNK + 100) as usize] ^= 0xff; // in the short last chunk
    let p2 = commit(&mut store, &image, b"meta two");
    assert!(!p2.base);
    assert_eq!((p2.number, p2.chunks_written), (2, 2));

    image[(3 * CHUNK) as usize] = 7;
    let p3 = commit(&mut store, &image, b"");
    assert_eq!((p3.number, p3.chunks_written), (3, 1));

    // The same store, and a fresh one on the same directory, load it back.
    assert_eq!(load(&mut store).image, image);
    drop(store);
    let mut store = Store::open(&dir, StoreOptions::default()).unwrap();
    let loaded = load(&mut store);
    assert_eq!(loaded.number, 3);
    assert_eq!(loaded.image, image);
    assert!(loaded.meta.is_empty());
    assert!(loaded.skipped.is_empty());
}

#[test]
fn chunks_never_offered_are_zero_in_a_base_and_unchanged_in_a_delta() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let len = 3 * CHUNK;
    let mut tx = store.begin(len).unwrap();
    assert!(tx.is_base());
    tx.put_chunk(1, &vec![9u8; CHUNK as usize]).unwrap();
    tx.commit(b"m").unwrap();
    let mut expected = vec![0u8; len as usize];
    expected[CHUNK as usize..2 * CHUNK as usize].fill(9);
    assert_eq!(load(&mut store).image, expected);

    let mut tx = store.begin(len).unwrap();
    assert!(!tx.is_base());
    assert_eq!(tx.parent(), Some(1));
    tx.put_chunk(2, &vec![5u8; CHUNK as usize]).unwrap();
    tx.commit(b"m").unwrap();
    expected[2 * CHUNK as usize..].fill(5);
    assert_eq!(load(&mut store).image, expected);
}

#[test]
fn a_chunk_offered_twice_keeps_the_last_offer() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let image = pattern(2 * CHUNK, 3);
    commit(&mut store, &image, b"");
    let mut tx = store.begin(2 * CHUNK).unwrap();
    let first = &image[..CHUNK as usize];
    tx.put_chunk(0, &vec![1u8; CHUNK as usize]).unwrap();
    // Back to the parent's bytes: must be written, or the first offer wins.
    tx.put_chunk(0, first).unwrap();
    tx.commit(b"").unwrap();
    assert_eq!(load(&mut store).image, image);
}

#[test]
fn delta_writes_only_changed_chunks() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let len = 64 * CHUNK;
    let mut image = pattern(len, 2);
    let base = commit(&mut store, &image, b"meta");
    assert!(base.bytes_written >= len);

    for i in [3u64, 40, 63] {
        image[(i * CHUNK + 17) as usize] ^= 0x55;
    }
    let meta = vec![0xabu8; 300];
    let p = commit(&mut store, &image, &meta);
    assert!(!p.base);
    assert_eq!(p.chunks_written, 3);
    // A delta stores changed pages, not chunks: one page per changed
    // chunk, and nothing else but the fixed parts of the record.
    assert_eq!(p.pages_written, 3);
    assert_eq!(p.bytes_written, file_len(&[1, 1, 1], meta.len()));

    // Nothing changed: a delta of no chunks, only the fixed parts.
    let p = commit(&mut store, &image, &meta);
    assert_eq!((p.chunks_written, p.pages_written), (0, 0));
    assert_eq!(p.bytes_written, file_len(&[], meta.len()));
    assert_eq!(load(&mut store).image, image);
}

/// The exact size of a generation record whose chunk records store
/// `pages[i]` whole pages each, with a meta blob of `meta` bytes: the
/// header, a 56-byte descriptor per record, the pages, the meta record and
/// the trailer.
fn file_len(pages: &[u64], meta: usize) -> u64 {
    let records: u64 = pages
        .iter()
        .map(|n| chunk::DESCRIPTOR as u64 + n * PAGE_BYTES)
        .sum();
    header::LEN as u64 + records + (meta::DESCRIPTOR + meta + trailer::LEN) as u64
}

#[test]
fn a_delta_changing_one_byte_in_each_of_three_pages_of_a_chunk_writes_those_three_pages() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let len = 8 * CHUNK;
    let mut image = pattern(len, 30);
    commit(&mut store, &image, b"");
    for page in [2u64, 5, 15] {
        image[(4 * CHUNK + page * PAGE_BYTES + 100) as usize] ^= 1;
    }
    let p = commit(&mut store, &image, b"m");
    assert_eq!((p.chunks_written, p.pages_written), (1, 3));
    // Fixed overhead: a 104-byte header, one 56-byte record descriptor, a
    // 48-byte meta descriptor and its 1-byte blob, a 56-byte trailer.
    assert_eq!(p.bytes_written, 3 * PAGE_BYTES + 104 + 56 + 48 + 1 + 56);
    // The record is the last one of its segment, as long as reported.
    let (segment, offset, len) = record_of(&store, 2);
    assert_eq!((len, size(&segment)), (p.bytes_written, offset + len));
    let record = record_bytes(&store, 2);
    let at = header::LEN;
    assert_eq!(u64_at(&record, at + chunk::INDEX), 4);
    assert_eq!(u64_at(&record, at + chunk::PAGES), 1 << 2 | 1 << 5 | 1 << 15);
    assert_eq!(load(&mut store).image, image);
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

#[test]
fn hashes_loaded_from_a_chain_find_exactly_the_changed_pages() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let len = 6 * CHUNK + 2 * PAGE_BYTES + 9;
    let mut image = pattern(len, 36);
    image[..(2 * CHUNK) as usize].fill(0);
    commit(&mut store, &image, b"");
    for g in 0..3u64 {
        image[(g * CHUNK + 3 * PAGE_BYTES) as usize] ^= 1;
        image[(len - 1) as usize] ^= 1;
        commit(&mut store, &image, b"");
    }
    drop(store);
    let mut store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(load(&mut store).image, image);
    // The hashes rebuilt from a base and three deltas match the image:
    // nothing changed writes nothing, two changed pages write two.
    let p = commit(&mut store, &image, b"");
    assert_eq!((p.base, p.pages_written), (false, 0));
    image[(CHUNK + 3 * PAGE_BYTES + 8) as usize] ^= 1;
    image[(len - 2) as usize] ^= 1;
    let p = commit(&mut store, &image, b"");
    assert_eq!((p.chunks_written, p.pages_written), (2, 2));
    assert_eq!(p.bytes_written, file_len(&[1, 1], 0) - PAGE_BYTES + 9);
    assert_eq!(load(&mut store).image, image);
}

#[test]
fn a_base_of_a_region_with_one_non_zero_page_writes_that_page_alone() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let len = 16 * CHUNK + 100;
    let mut image = vec![0u8; len as usize];
    image[(5 * CHUNK + 7 * PAGE_BYTES + 3) as usize] = 0x42;
    // Every chunk offered, all-zero ones included: a base stores only the
    // pages that are not zero.
    let p = commit_batched(&mut store, &image, b"");
    assert!(p.base);
    assert_eq!((p.chunks_written, p.pages_written), (1, 1));
    assert_eq!(p.bytes_written, file_len(&[1], 0));
    let loaded = load(&mut store);
    assert_eq!(loaded.image, image);

    // The next generation, a delta, finds nothing changed.
    let p = commit(&mut store, &image, b"");
    assert!(!p.base);
    assert_eq!(p.bytes_written, file_len(&[], 0));
}

#[test]
fn a_page_zeroed_again_within_a_base_is_written_as_zero() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let mut tx = store.begin(CHUNK).unwrap();
    tx.put_chunk(0, &vec![7u8; CHUNK as usize]).unwrap();
    let mut second = vec![0u8; CHUNK as usize];
    second[..PAGE_BYTES as usize].fill(9);
    tx.put_chunk(0, &second).unwrap();
    let p = tx.commit(b"").unwrap();
    // All 16 pages, then the 16 that differ from the first offer.
    assert_eq!((p.chunks_written, p.pages_written), (2, 32));
    assert_eq!(load(&mut store).image, second);
}

/// Offers `image` to a new generation in one batch and commits.
fn commit_batched(store: &mut Store, image: &[u8], meta: &[u8]) -> Persisted {
    let mut tx = store.begin(image.len() as u64).unwrap();
    tx.put_chunks(0, image).unwrap();
    tx.commit(meta).unwrap()
}

/// Asserts two generation records are the same but for their creation time
/// and the hashes that cover it (the header's and the skeleton's).
fn assert_same_but_time(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    assert_eq!(a[..header::CREATED_MS], b[..header::CREATED_MS], "{what}: header");
    let end = a.len() - trailer::LEN + trailer::HASH;
    assert!(
        a[header::LEN..end] == b[header::LEN..end],
        "{what}: records differ"
    );
}

#[test]
fn put_chunks_writes_the_same_records_as_put_chunk_on_each_chunk() {
    // 40 chunks and a short one: large enough to be hashed on several
    // threads where the machine has them.
    let len = 40 * CHUNK + 3 * PAGE_BYTES + 5;
    let (_t1, _one_dir, mut one) = fresh(options(100));
    let (_t2, _batch_dir, mut batch) = fresh(options(100));
    let mut image = pattern(len, 31);
    image[(7 * CHUNK) as usize..(9 * CHUNK) as usize].fill(0);
    for g in 1..=6u64 {
        let a = commit(&mut one, &image, b"meta");
        let b = commit_batched(&mut batch, &image, b"meta");
        assert_eq!(
            (
                a.number,
                a.base,
                a.bytes_written,
                a.chunks_written,
                a.pages_written
            ),
            (
                b.number,
                b.base,
                b.bytes_written,
                b.chunks_written,
                b.pages_written
            ),
        );
        let what = format!("generation {g}");
        let (fa, fb) = (record_bytes(&one, g), record_bytes(&batch, g));
        assert_same_but_time(&fa, &fb, &what);
        // Change a few pages, some in the short last chunk, some in the
        // zeroed chunks, and a whole chunk.
        for k in 0..5u64 {
            let at = (g * 7919 + k * 523_001) % len;
            image[at as usize] ^= 0x5a;
        }
        image[(len - 1) as usize] ^= 1;
        image[(8 * CHUNK + g * PAGE_BYTES) as usize] = g as u8;
        image[(20 * CHUNK) as usize..(21 * CHUNK) as usize].fill(g as u8);
    }
    assert_eq!(load(&mut one).image, load(&mut batch).image);
}

#[test]
fn a_batch_after_single_offers_of_the_same_chunks_keeps_the_last_offer() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let len = 3 * CHUNK + 10;
    let image = pattern(len, 32);
    commit(&mut store, &image, b"");
    let mut tx = store.begin(len).unwrap();
    tx.put_chunk(1, &vec![1u8; CHUNK as usize]).unwrap();
    tx.put_chunk(3, &[2u8; 10]).unwrap();
    // Back to the parent's bytes in one batch: chunks 1 and 3 must be
    // written again, 0 and 2 not at all.
    tx.put_chunks(0, &image).unwrap();
    let p = tx.commit(b"").unwrap();
    assert_eq!((p.chunks_written, p.pages_written), (4, 2 * 16 + 2));
    let (segment, offset, len) = record_of(&store, 2);
    assert_eq!((len, size(&segment)), (p.bytes_written, offset + len));
    assert_eq!(load(&mut store).image, image);
}

#[test]
fn put_chunks_refuses_a_bad_batch_and_offers_nothing_of_it() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let len = 3 * CHUNK + 10;
    let image = pattern(len, 33);
    commit(&mut store, &image, b"");
    let mut tx = store.begin(len).unwrap();
    let changed = vec![9u8; (3 * CHUNK) as usize];
    // Past the end: chunk 3 is 10 bytes, chunk 4 does not exist.
    let e = tx.put_chunks(2, &changed).unwrap_err();
    assert!(
        matches!(e, StoreError::ChunkLen { index: 3, expected: 10, found } if found == CHUNK),
        "{e}"
    );
    let e = tx.put_chunks(4, &changed[..10]).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::ChunkOutOfRange {
                index: 4,
                chunks: 4,
                ..
            }
        ),
        "{e}"
    );
    let e = tx.put_chunks(u64::MAX, &changed).unwrap_err();
    assert!(matches!(e, StoreError::ChunkOutOfRange { .. }), "{e}");
    // A short piece that is not the region's last chunk.
    let e = tx.put_chunks(0, &changed[..(CHUNK + 10) as usize]).unwrap_err();
    assert!(
        matches!(e, StoreError::ChunkLen { index: 1, expected, found: 10 } if expected == CHUNK),
        "{e}"
    );
    // An empty batch offers nothing.
    tx.put_chunks(7, &[]).unwrap();
    let p = tx.commit(b"").unwrap();
    assert_eq!((p.chunks_written, p.pages_written), (0, 0));
    assert_eq!(load(&mut store).image, image);
}

#[test]
fn a_typical_generation_writes_at_most_twice_its_changed_bytes_plus_64_kib() {
    // A region laid out like a real one: the header and unit table in the
    // first page, a 1 MiB ring, then a 7 MiB arena.
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let len = 8 << 20;
    let ring = 1 << 12;
    let arena = ring + (1 << 20);
    let mut image = pattern(len, 34);
    commit_batched(&mut store, &image, b"");
    let mut changed = 0u64;
    let mut change = |image: &mut Vec<u8>, at: u64, n: u64| {
        for b in &mut image[at as usize..(at + n) as usize] {
            *b = !*b;
        }
        changed += n;
    };
    // Header counters and ten unit-table slots.
    change(&mut image, 64, 24);
    change(&mut image, 512, 10 * 32);
    // Ten 64-byte units, each in a page of its own (the worst case).
    for u in 0..10u64 {
        change(&mut image, ring + u * 25 * PAGE_BYTES + 960, 64);
    }
    // Ten 4 KiB arena writes, none aligned to a page.
    for w in 0..10u64 {
        change(&mut image, arena + w * 611 * 1024 + 1000 + w * 8, PAGE_BYTES);
    }
    // A unit table of 256 units in the meta.
    let meta = vec![0x5au8; 48 + 256 * 32];
    let p = commit_batched(&mut store, &image, &meta);
    assert!(!p.base);
    // 1 page of header and table, 10 of ring, 20 of arena.
    assert_eq!(p.pages_written, 31);
    let target = 2 * changed + (64 << 10);
    assert!(
        p.bytes_written <= target,
        "{} bytes written for {changed} changed (target {target})",
        p.bytes_written
    );
    assert_eq!(load(&mut store).image, image);
}

#[test]
fn a_base_is_written_for_the_first_generation_and_for_a_changed_region_len() {
    let (_tmp, dir, mut store) = fresh(options(8));
    let small = pattern(2 * CHUNK, 5);
    assert!(commit(&mut store, &small, b"").base);
    let bigger = pattern(3 * CHUNK + 1, 6);
    let p = commit(&mut store, &bigger, b"");
    assert!(p.base);
    assert_eq!(base_numbers(&dir), BTreeSet::from([1, 2]));
    let loaded = load(&mut store);
    assert_eq!(loaded.image, bigger);
}

#[test]
fn deltas_after_a_region_len_change_load_after_a_reopen() {
    // The deltas on the new full generation must not continue the segment
    // of the deltas before it, whose records chain to another parent and
    // region length (STORE.md, "A segment", rule 3).
    let (_tmp, dir, mut store) = fresh(options(100));
    let mut small = pattern(2 * CHUNK, 5);
    commit(&mut store, &small, b"small");
    small[3] ^= 1;
    assert!(!commit(&mut store, &small, b"small").base);
    let mut bigger = pattern(3 * CHUNK + 1, 6);
    assert!(commit(&mut store, &bigger, b"bigger").base);
    for g in 4..=6usize {
        bigger[g * 1000] ^= 1;
        assert!(!commit(&mut store, &bigger, b"bigger").base);
    }
    drop(store);
    let (loaded, reader) = load_fresh(&dir);
    assert_eq!((loaded.number, &loaded.image), (6, &bigger));
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    assert!(reader.tails().is_empty(), "{:?}", reader.tails());
}

/// The files the chains of the newest `keep` generations need, from what
/// [`Store::generations`] lists: each generation's base file, or the
/// segment holding its record and what its parent needs.
fn chain_files(store: &Store, keep: usize) -> BTreeSet<PathBuf> {
    let gens: BTreeMap<u64, _> = store.generations().into_iter().map(|g| (g.number, g)).collect();
    let mut needed = BTreeSet::new();
    for &newest in gens.keys().rev().take(keep) {
        let mut n = newest;
        loop {
            let g = gens
                .get(&n)
                .unwrap_or_else(|| panic!("generation {newest} needs {n}, which is not listed"));
            needed.insert(g.path.clone());
            match g.kind {
                GenerationKind::Base => break,
                GenerationKind::Delta { parent } => n = parent,
            }
        }
    }
    needed
}

#[test]
fn retention_keeps_the_newest_generations_and_their_chains_and_removes_whole_files() {
    // A sparse region, whose base is a few pages: a base is built every
    // few deltas, each starting a new segment.
    let len = 8 * CHUNK;
    const GENERATIONS: u64 = 60;
    for keep in [1usize, 3] {
        let (_tmp, dir, mut store) = fresh(StoreOptions {
            keep,
            background: false,
            base_after_bytes: 3 * PAGE_BYTES,
            ..StoreOptions::default()
        });
        let mut image = vec![0u8; len as usize];
        let mut written = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut pruned = 0;
        for g in 1..=GENERATIONS {
            image[((g % 8) * CHUNK + g) as usize] ^= 1;
            let p = commit(&mut store, &image, &g.to_le_bytes());
            pruned += p.pruned;
            assert!(p.prune_errors.is_empty() && p.base_errors.is_empty(), "{p:?}");
            written.insert(p.number, image.clone());
            store.finish_background();
            let present: BTreeSet<PathBuf> = file_names(&dir).into_iter().map(|n| dir.join(n)).collect();
            seen.extend(present.iter().cloned());
            // Nothing a kept chain needs is ever removed.
            let needed = chain_files(&store, keep);
            let missing: Vec<_> = needed.difference(&present).collect();
            assert!(missing.is_empty(), "keep {keep}, after {g}: {missing:?} removed");
            // Besides them: the segment being appended to, the spare, and
            // the files of the generations older than the newest base
            // until the newest `keep` are all past it.
            assert!(
                present.len() <= needed.len() + 2 + 2 * keep,
                "keep {keep}, after {g}: {} files, {} needed",
                present.len(),
                needed.len()
            );
        }
        let present = file_names(&dir);
        assert!(
            seen.len() >= present.len() + 20,
            "keep {keep}: {} files made, {} left",
            seen.len(),
            present.len()
        );
        assert!(pruned >= 20, "keep {keep}: {pruned} files pruned");
        // Each of the newest `keep` loads, as does the newest after a reopen.
        for (&n, image) in written.iter().rev().take(keep) {
            assert!(
                store.load_generation(n).unwrap().image == *image,
                "generation {n}"
            );
        }
        drop(store);
        assert_eq!(load_fresh(&dir).0.image, written[&GENERATIONS]);
    }
}

#[test]
fn generations_lists_number_kind_place_size_region_len_and_time() {
    let (_tmp, dir, mut store) = fresh(options(8));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let image = pattern(CHUNK + 5, 9);
    commit(&mut store, &image, b"x");
    commit(&mut store, &image, b"y");
    let gens = store.generations();
    assert_eq!(gens.len(), 2);
    assert_eq!(gens[0].kind, GenerationKind::Base);
    assert_eq!(gens[1].kind, GenerationKind::Delta { parent: 1 });
    // A base is its file; a delta is a record in a segment, the first after
    // the segment's header.
    let base = base_path(&dir, 1);
    assert_eq!(
        (&gens[0].path, gens[0].offset, gens[0].bytes),
        (&base, 0, size(&base))
    );
    let segment = &gens[1].path;
    assert!(
        segment_numbers(&dir)
            .iter()
            .any(|&s| common::segment_path(&dir, s) == *segment)
    );
    assert_eq!(gens[1].offset, segment::LEN as u64);
    assert_eq!(size(segment), gens[1].offset + gens[1].bytes);
    for g in &gens {
        assert_eq!(g.region_len, CHUNK + 5);
        assert!(g.created_ms >= before && g.created_ms < before + 60_000);
    }
    // A fresh open reports the same.
    drop(store);
    let store = Store::open(&dir, options(8)).unwrap();
    assert_eq!(store.generations(), gens);
}

/// Images and metas by generation number.
type Written = BTreeMap<u64, (Vec<u8>, Vec<u8>)>;

/// Generation 1 a base, 2 and 3 deltas, each changing a byte of chunk 0,
/// their records in one segment; the store closed.
fn base_and_two_deltas(dir: &Path, region: u64) -> Written {
    let mut store = Store::open(dir, options(100)).unwrap();
    let mut image = pattern(region, 10);
    let mut written = BTreeMap::new();
    for g in 1..=3u64 {
        image[(g * 7) as usize] ^= 1;
        let meta = format!("generation {g}").into_bytes();
        commit(&mut store, &image, &meta);
        written.insert(g, (image.clone(), meta));
    }
    assert_eq!(record_of(&store, 2).0, record_of(&store, 3).0);
    written
}

#[test]
fn a_segment_cut_in_the_middle_of_its_last_record_falls_back_to_the_one_before_with_the_tail_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let region = 3 * CHUNK + 10;
    let written = base_and_two_deltas(dir, region);
    let (segment, start, len) = record_of(&load_fresh(dir).1, 3);
    let whole = fs::read(&segment).unwrap();
    assert_eq!(whole.len() as u64, start + len);
    let h = header::LEN as u64;
    let mut cuts = vec![start + 1, start + 8, start + h - 1, start + h, start + h + 1];
    cuts.extend([
        start + h + 56,
        start + len / 2,
        start + len - 57,
        start + len - 56,
        start + len - 1,
    ]);
    cuts.extend((start + 1..start + len).step_by(4099));
    for cut in cuts {
        let at = format!("cut at {cut}");
        fs::write(&segment, &whole[..cut as usize]).unwrap();
        let (loaded, reader) = load_fresh(dir);
        assert_eq!(loaded.number, 2, "{at}");
        assert_eq!(
            (&loaded.image, &loaded.meta),
            (&written[&2].0, &written[&2].1),
            "{at}"
        );
        assert!(loaded.skipped.is_empty(), "{at}: a tail is not a generation");
        let tails = reader.tails();
        assert_eq!(tails.len(), 1, "{at}");
        let t = &tails[0];
        assert_eq!(
            (&t.path, t.offset, t.bytes, t.after),
            (&segment, start, cut - start, Some(2)),
            "{at}"
        );
        assert!(
            t.why.contains("expected") && t.why.contains("found"),
            "{at}: {}",
            t.why
        );
        // The owner goes on from 2; the torn record's number is not given
        // again once its header is on disk.
        let mut owner = Store::open(dir, options(100)).unwrap();
        assert_eq!(load(&mut owner).number, 2);
        let tx = owner.begin(region).unwrap();
        let number = if cut >= start + h { 4 } else { 3 };
        assert_eq!((tx.number(), tx.parent()), (number, Some(2)), "{at}");
    }
    // Bytes after the last record are a tail after it; the record loads.
    let mut longer = whole.clone();
    longer.extend_from_slice(&[0; 10]);
    fs::write(&segment, &longer).unwrap();
    let (loaded, reader) = load_fresh(dir);
    assert_eq!(loaded.number, 3);
    let tails = reader.tails();
    assert_eq!(tails.len(), 1);
    assert_eq!(
        (tails[0].offset, tails[0].bytes, tails[0].after),
        (start + len, 10, Some(3))
    );
    // Whole again, it loads with nothing to report.
    fs::write(&segment, &whole).unwrap();
    let (loaded, reader) = load_fresh(dir);
    assert_eq!((loaded.number, &loaded.image), (3, &written[&3].0));
    assert!(reader.tails().is_empty());
}

#[test]
fn a_base_file_cut_short_or_with_bytes_after_its_record_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = two_bases(dir);
    let path = base_path(dir, 4);
    let whole = fs::read(&path).unwrap();
    let mut longer = whole.clone();
    longer.push(0);
    for (bytes, names) in [
        (&longer[..], "file length"),
        (&whole[..whole.len() - 1], "truncated"),
    ] {
        fs::write(&path, bytes).unwrap();
        let (loaded, _) = load_fresh(dir);
        assert_eq!((loaded.number, &loaded.image), (3, &images[&3]));
        assert_eq!(skipped_numbers(&loaded), vec![5, 4]);
        let e = &loaded.skipped[1].1;
        assert!(
            matches!(e, StoreError::Corrupt { .. }) && e.to_string().contains(names),
            "{e}"
        );
    }
    fs::write(&path, &whole).unwrap();
    assert_eq!(load_fresh(dir).0.image, images[&5]);
}

/// Generation 1 a base, generation 2 a delta of one changed byte with
/// `meta`, the only record of its segment; the store closed. Returns the
/// image of 1, the segment and where record 2 starts in it.
fn two_generations(dir: &Path, meta: &[u8]) -> (Vec<u8>, PathBuf, u64) {
    let mut store = Store::open(dir, options(100)).unwrap();
    let mut image = pattern(2 * CHUNK, 11);
    commit(&mut store, &image, b"first");
    let first = image.clone();
    image[100] ^= 1;
    commit(&mut store, &image, meta);
    let (segment, start, len) = record_of(&store, 2);
    assert_eq!(size(&segment), start + len);
    (first, segment, start)
}

/// How a damaged record shows when the store is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Its skeleton verifies, its payload does not: the generation is
    /// skipped, with why.
    Skipped,
    /// Its skeleton does not verify: the segment's readable part ends
    /// before it, a tail.
    Tail,
}

/// Loads the store afresh: it falls back to generation 1 because of
/// generation 2's record, seen as `seen`, with a reason naming `names`.
fn assert_fell_back(dir: &Path, first: &[u8], seen: Seen, names: &str) {
    let (loaded, reader) = load_fresh(dir);
    assert_eq!(loaded.number, 1, "{names}");
    assert_eq!(loaded.image, first);
    let tails = reader.tails();
    let message = match seen {
        Seen::Skipped => {
            assert_eq!(skipped_numbers(&loaded), vec![2], "{names}");
            assert!(tails.is_empty(), "{names}: {tails:?}");
            loaded.skipped[0].1.to_string()
        }
        Seen::Tail => {
            assert!(loaded.skipped.is_empty(), "{names}: {:?}", loaded.skipped);
            assert_eq!(tails.len(), 1, "{names}");
            assert_eq!((tails[0].offset, tails[0].after), (segment::LEN as u64, None));
            tails[0].why.clone()
        }
    };
    assert!(message.contains(names), "{message}");
    assert!(
        message.contains("expected") && message.contains("found"),
        "{message}"
    );
}

#[test]
fn flipped_byte_in_a_chunk_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, segment, start) = two_generations(tmp.path(), b"meta");
    flip(
        &segment,
        start + (header::LEN + chunk::DESCRIPTOR + 100) as u64,
        0x01,
    );
    assert_fell_back(tmp.path(), &first, Seen::Skipped, "chunk 0 hash");
}

#[test]
fn flipped_byte_in_meta_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, segment, _) = two_generations(tmp.path(), b"the unit table");
    flip(&segment, size(&segment) - trailer::LEN as u64 - 3, 0x01);
    assert_fell_back(tmp.path(), &first, Seen::Skipped, "meta hash");
}

#[test]
fn flipped_byte_in_the_header_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, segment, start) = two_generations(tmp.path(), b"meta");
    flip(&segment, start + header::REGION_LEN as u64, 0x01);
    assert_fell_back(tmp.path(), &first, Seen::Tail, "header_hash");
}

#[test]
fn flipped_byte_in_a_record_descriptor_or_the_trailer_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, segment, start) = two_generations(tmp.path(), b"meta");
    let whole = fs::read(&segment).unwrap();
    let end = whole.len() as u64;
    let meta_at = end - (trailer::LEN + meta::DESCRIPTOR + 4) as u64;
    let at = |offset: usize| start + offset as u64;
    for (at, mask, names) in [
        // Chunk 0 claims to be chunk 1: its bytes still match their hash,
        // the skeleton hash does not.
        (at(header::LEN + chunk::INDEX), 0x01, "trailer skeleton_hash"),
        // The scan checks a record's skeleton, which holds the chunk hash.
        (at(header::LEN + chunk::HASH), 0x01, "trailer skeleton_hash"),
        // A meta length past the end of the file.
        (meta_at + meta::LEN as u64 + 7, 0x01, "meta len"),
        (
            end - (trailer::LEN - trailer::CHUNK_COUNT) as u64,
            0x01,
            "trailer chunk_count",
        ),
        (end - 1, 0x01, "trailer skeleton_hash"),
    ] {
        fs::write(&segment, &whole).unwrap();
        flip(&segment, at, mask);
        assert_fell_back(tmp.path(), &first, Seen::Tail, names);
    }
}

/// A change made to a file's bytes.
type Edit<'a> = dyn Fn(&mut Vec<u8>) + 'a;

#[test]
fn a_corrupt_page_record_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = Store::open(dir, options(100)).unwrap();
    let mut image = pattern(2 * CHUNK, 35);
    commit(&mut store, &image, b"first");
    let first = image.clone();
    // One record of chunk 1 storing pages 2, 5 and 9.
    for page in [2u64, 5, 9] {
        image[(CHUNK + page * PAGE_BYTES + 1) as usize] ^= 1;
    }
    let p = commit(&mut store, &image, b"second");
    assert_eq!((p.chunks_written, p.pages_written), (1, 3));
    let (segment, start, _) = record_of(&store, 2);
    drop(store);
    let whole = fs::read(&segment).unwrap();
    let record = start as usize + header::LEN;
    let pages_at = record + chunk::PAGES;
    let payload = record + chunk::DESCRIPTOR;
    let page = PAGE_BYTES as usize;
    let with = |edit: &Edit<'_>| {
        let mut bytes = whole.clone();
        edit(&mut bytes);
        fs::write(&segment, &bytes).unwrap();
    };
    let set_pages =
        |bitmap: u64| move |b: &mut Vec<u8>| b[pages_at..pages_at + 8].copy_from_slice(&bitmap.to_le_bytes());
    let cases: Vec<(Seen, &str, Box<Edit<'_>>)> = vec![
        // A flipped byte in the second stored page (page 5).
        (
            Seen::Skipped,
            "chunk 1 hash",
            Box::new(|b| b[payload + page + 77] ^= 0x20),
        ),
        // The first and second stored pages swapped: each page is intact,
        // their order is not.
        (
            Seen::Skipped,
            "chunk 1 hash",
            Box::new(|b| {
                let (first, second) = b[payload..payload + 2 * page].split_at_mut(page);
                first.swap_with_slice(second);
            }),
        ),
        // The bitmap names other pages of the same count: every stored byte
        // matches its hash, the skeleton does not.
        (
            Seen::Tail,
            "trailer skeleton_hash",
            Box::new(set_pages(1 << 2 | 1 << 5 | 1 << 10)),
        ),
        // A page past the chunk's 16, and no page at all.
        (
            Seen::Tail,
            "chunk 1 pages",
            Box::new(set_pages(1 << 2 | 1 << 5 | 1 << 16)),
        ),
        (Seen::Tail, "chunk 1 pages", Box::new(set_pages(0))),
        // One page fewer: the scan looks for the next record's tag in the
        // last page's bytes.
        (Seen::Tail, "record tag", Box::new(set_pages(1 << 2 | 1 << 5))),
        // Cut in the middle of the last stored page.
        (
            Seen::Tail,
            "chunk 1 page bytes",
            Box::new(|b| b.truncate(payload + 2 * page + 100)),
        ),
    ];
    for (seen, names, edit) in cases {
        with(&*edit);
        assert_fell_back(dir, &first, seen, names);
    }
    fs::write(&segment, &whole).unwrap();
    assert_eq!(load_fresh(dir).0.image, image);
}

#[test]
fn a_flipped_byte_in_a_record_in_the_middle_of_a_segment_falls_back_to_the_record_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = Store::open(dir, options(100)).unwrap();
    let mut image = pattern(2 * CHUNK, 37);
    let mut written = BTreeMap::new();
    for g in 1..=6u64 {
        image[(g * 4099) as usize] ^= 1;
        commit(&mut store, &image, &g.to_le_bytes());
        written.insert(g, image.clone());
    }
    let (segment, start, _) = record_of(&store, 4);
    assert_eq!(record_of(&store, 6).0, segment, "2 to 6 share a segment");
    drop(store);
    let whole = fs::read(&segment).unwrap();
    // A payload byte: the scan goes past it, the load finds it; 5 and 6
    // need 4 and are skipped by cause.
    flip(
        &segment,
        start + (header::LEN + chunk::DESCRIPTOR + 9) as u64,
        0x08,
    );
    let (loaded, reader) = load_fresh(dir);
    assert_eq!((loaded.number, &loaded.image), (3, &written[&3]));
    assert_eq!(skipped_numbers(&loaded), vec![6, 5, 4]);
    for (n, e) in &loaded.skipped[..2] {
        assert!(matches!(e, StoreError::BrokenChain { needs: 4, .. }), "{n}: {e}");
    }
    assert!(
        loaded.skipped[2].1.to_string().contains("chunk 0 hash"),
        "{}",
        loaded.skipped[2].1
    );
    assert!(reader.tails().is_empty());
    // A skeleton byte: the segment's readable part ends before 4, and what
    // follows is not read at all.
    fs::write(&segment, &whole).unwrap();
    flip(&segment, start + header::CREATED_MS as u64, 0x08);
    let (loaded, reader) = load_fresh(dir);
    assert_eq!((loaded.number, &loaded.image), (3, &written[&3]));
    assert!(loaded.skipped.is_empty());
    let tails = reader.tails();
    assert_eq!(tails.len(), 1);
    assert_eq!((tails[0].offset, tails[0].after), (start, Some(3)));
    assert!(tails[0].why.contains("header_hash"), "{}", tails[0].why);
    assert_eq!(reader.present(), BTreeSet::from([1, 2, 3]));
}

#[test]
fn every_flipped_byte_of_a_small_store_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A region of one short page: a base and two deltas of 3000 bytes each.
    let written = base_and_two_deltas(dir, 3000);
    let reader = Store::open_read_only(dir).unwrap();
    let records: Vec<(u64, u64, u64)> = (2..=3)
        .map(|n| {
            let (_, start, len) = record_of(&reader, n);
            (n, start, len)
        })
        .collect();
    let with_records = record_of(&reader, 2).0;
    drop(reader);
    let files = file_names(dir);
    // The base file, the segment of 2 and 3, and the spare segment.
    assert_eq!(files.len(), 3, "{files:?}");
    let mut checked = 0;
    for name in files {
        let path = dir.join(&name);
        for at in 0..size(&path) {
            let what = format!("{name}: flip at byte {at}");
            flip(&path, at, 0x10);
            let mut reader = Store::open_read_only(dir).unwrap();
            if path == base_path(dir, 1) {
                // Every generation needs the base, which has no record.
                let e = reader.load_newest().unwrap_err();
                assert!(
                    matches!(e, StoreError::NoVerifiedGeneration { tried: 3, .. }),
                    "{what}: {e}"
                );
                assert_eq!(reader.last_load_skipped().len(), 3, "{what}");
            } else {
                // In the spare, nothing is lost. In the segment of 2 and 3:
                // the generation before the record holding the byte, or 1
                // when the byte is in the segment's header.
                let expected = if path != with_records {
                    3
                } else {
                    records
                        .iter()
                        .find(|&&(_, start, len)| (start..start + len).contains(&at))
                        .map_or(1, |&(n, _, _)| n - 1)
                };
                let loaded = load(&mut reader);
                assert_eq!(loaded.number, expected, "{what}");
                assert_eq!(
                    (&loaded.image, &loaded.meta),
                    (&written[&expected].0, &written[&expected].1)
                );
                assert!(
                    !loaded.skipped.is_empty() || !reader.tails().is_empty(),
                    "{what} not reported"
                );
            }
            flip(&path, at, 0x10);
            checked += 1;
        }
    }
    assert!(checked > 3 * 3000);
}

/// Generations 1 to 5: 1 a base file, 2 and 3 deltas on it; then the store
/// reopened without a load, so 4 is a full generation again, a base file
/// with no record in a segment; 5 a delta on 4. Returns each image.
fn two_bases(dir: &Path) -> BTreeMap<u64, Vec<u8>> {
    let mut store = Store::open(dir, options(100)).unwrap();
    let mut image = pattern(2 * CHUNK, 13);
    let mut images = BTreeMap::new();
    for g in 1..=5u64 {
        if g == 4 {
            drop(store);
            store = Store::open(dir, options(100)).unwrap();
        }
        image[g as usize] ^= 1;
        let p = commit(&mut store, &image, b"");
        assert_eq!((p.number, p.base), (g, g == 1 || g == 4));
        images.insert(g, image.clone());
    }
    images
}

#[test]
fn deleted_base_makes_its_deltas_unusable_and_loading_falls_back_further() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = two_bases(dir);
    fs::remove_file(base_path(dir, 4)).unwrap();
    let before = dir_files(dir);
    let mut store = Store::open(dir, options(100)).unwrap();
    let loaded = load(&mut store);
    assert_eq!(loaded.number, 3);
    assert_eq!(loaded.image, images[&3]);
    assert_eq!(skipped_numbers(&loaded), vec![5]);
    let e = &loaded.skipped[0].1;
    assert!(matches!(e, StoreError::BrokenChain { needs: 4, .. }), "{e}");
    assert!(e.to_string().contains("is missing"), "{e}");
    assert_eq!(dir_files(dir), before, "a load must not touch the files");

    // Without the first base either, nothing verifies: an error, not an
    // empty store, and still nothing touched.
    fs::remove_file(base_path(dir, 1)).unwrap();
    let before = dir_files(dir);
    match store.load_newest() {
        Err(StoreError::NoVerifiedGeneration { dir: d, tried }) => {
            assert_eq!(d, dir);
            assert_eq!(tried, 3);
        }
        other => panic!("expected NoVerifiedGeneration, got {other:?}"),
    }
    let skipped: Vec<u64> = store.last_load_skipped().iter().map(|(n, _)| *n).collect();
    assert_eq!(skipped, vec![5, 3, 2]);
    assert_eq!(dir_files(dir), before, "a failed load must not touch the files");

    // The next generation is a base, numbered past every file present.
    let p = commit(&mut store, &images[&5], b"");
    assert!(p.base);
    assert_eq!(p.number, 6);
}

#[test]
fn corrupt_base_is_reported_once_for_itself_and_as_the_cause_for_its_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = two_bases(dir);
    flip(
        &base_path(dir, 4),
        (header::LEN + chunk::DESCRIPTOR + 9) as u64,
        0x01,
    );
    let (loaded, _) = load_fresh(dir);
    assert_eq!((loaded.number, &loaded.image), (3, &images[&3]));
    assert_eq!(skipped_numbers(&loaded), vec![5, 4]);
    assert!(matches!(
        loaded.skipped[0].1,
        StoreError::BrokenChain { needs: 4, .. }
    ));
    assert!(matches!(loaded.skipped[1].1, StoreError::Corrupt { .. }));
}

#[test]
fn a_damaged_base_built_from_the_records_is_bypassed_through_those_records() {
    // A base built in the background is a checkpoint of a generation whose
    // record is in a segment: when the base is damaged, the chain follows
    // the records down to the base before it. A sparse region, a base every
    // three deltas, and every generation kept, so each segment holds three
    // records and stays.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = StoreOptions {
        keep: 100,
        background: false,
        base_after_bytes: 3 * PAGE_BYTES,
        ..StoreOptions::default()
    };
    let mut store = Store::open(dir, opts).unwrap();
    let mut image = vec![0u8; (4 * CHUNK) as usize];
    let mut written = BTreeMap::new();
    for g in 1..=12u64 {
        image[((g % 8) * CHUNK / 2) as usize] ^= 1;
        commit(&mut store, &image, &g.to_le_bytes());
        written.insert(g, image.clone());
    }
    store.finish_background();
    drop(store);
    let checkpoints: Vec<u64> = base_numbers(dir).into_iter().filter(|&n| n > 1).collect();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    // Each checkpoint damaged in turn, then all of them at once.
    let mut damaged = Vec::new();
    for &n in &checkpoints {
        let path = base_path(dir, n);
        let whole = fs::read(&path).unwrap();
        flip(&path, (header::LEN + chunk::DESCRIPTOR + 5) as u64, 0x01);
        let (loaded, mut reader) = load_fresh(dir);
        assert!(
            loaded.number == 12 && loaded.image == written[&12],
            "base {n} damaged"
        );
        for (&g, image) in &written {
            assert!(
                reader.load_generation(g).unwrap().image == *image,
                "base {n} damaged: {g}"
            );
        }
        damaged.push((path, whole));
    }
    let (loaded, _) = load_fresh(dir);
    assert!(
        loaded.number == 12 && loaded.image == written[&12],
        "every checkpoint damaged"
    );
    // An owner that loads past them and goes on writing keeps what its
    // chain really needs: the records, not the damaged bases.
    let mut owner = Store::open(dir, StoreOptions { keep: 2, ..opts }).unwrap();
    assert_eq!(load(&mut owner).number, 12);
    for g in 13..=15u64 {
        image[(g * 100) as usize] ^= 1;
        commit(&mut owner, &image, &g.to_le_bytes());
        written.insert(g, image.clone());
    }
    drop(owner);
    let (loaded, _) = load_fresh(dir);
    assert!(
        loaded.number == 15 && loaded.image == written[&15],
        "loaded {}",
        loaded.number
    );
    for (path, whole) in damaged {
        if path.exists() {
            fs::write(path, whole).unwrap();
        }
    }
}

#[test]
fn numbers_keep_growing_past_a_corrupt_newest_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = Store::open(dir, options(100)).unwrap();
    let mut image = pattern(2 * CHUNK, 15);
    for g in 1..=3u64 {
        image[g as usize] ^= 1;
        commit(&mut store, &image, b"");
    }
    let (segment, start, _) = record_of(&store, 3);
    flip(
        &segment,
        start + (header::LEN + chunk::DESCRIPTOR + 9) as u64,
        0x01,
    );
    // The owner loads while its segment is open: 3 is newest but corrupt.
    let loaded = load(&mut store);
    assert_eq!(loaded.number, 2);
    let mut tx = store.begin(2 * CHUNK).unwrap();
    assert_eq!(tx.number(), 4);
    assert_eq!(tx.parent(), Some(2));
    tx.put_chunk(1, &vec![3u8; CHUNK as usize]).unwrap();
    tx.commit(b"").unwrap();
    let mut expected = loaded.image;
    expected[CHUNK as usize..].fill(3);
    let loaded = load(&mut store);
    assert_eq!(loaded.number, 4);
    assert_eq!(loaded.image, expected);
    assert!(loaded.skipped.is_empty());
    // A fresh open agrees: 4 is readable, not lost after a record whose
    // parent it is not.
    drop(store);
    let (loaded, reader) = load_fresh(dir);
    assert_eq!((loaded.number, &loaded.image), (4, &expected));
    assert!(reader.tails().is_empty(), "{:?}", reader.tails());
}

#[test]
fn a_file_copied_under_another_number_is_refused() {
    let (_tmp, dir, mut store) = fresh(options(8));
    let mut image = pattern(CHUNK, 22);
    commit(&mut store, &image, b"");
    image[1] ^= 1;
    commit(&mut store, &image, b"");
    let (segment, _, _) = record_of(&store, 2);
    drop(store);
    fs::copy(base_path(&dir, 1), base_path(&dir, 5)).unwrap();
    let (loaded, _) = load_fresh(&dir);
    assert_eq!(loaded.number, 2);
    assert_eq!(skipped_numbers(&loaded), vec![5]);
    let message = loaded.skipped[0].1.to_string();
    assert!(message.contains("number at byte 16: expected 5"), "{message}");
    fs::remove_file(base_path(&dir, 5)).unwrap();
    // A segment under another sequence number is not read at all.
    let seq = segment_numbers(&dir).last().unwrap() + 1;
    fs::copy(&segment, common::segment_path(&dir, seq)).unwrap();
    let (loaded, reader) = load_fresh(&dir);
    assert_eq!(loaded.number, 2);
    let tails = reader.tails();
    assert_eq!(tails.len(), 1);
    assert_eq!(
        (&tails[0].path, tails[0].offset),
        (&common::segment_path(&dir, seq), 0)
    );
    assert!(tails[0].why.contains("segment seq"), "{}", tails[0].why);
}

#[test]
fn store_and_its_errors_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<Store>();
    send::<StoreError>();
    send::<Loaded>();
}

#[test]
fn a_generation_begun_without_a_load_is_a_base_numbered_after_the_newest() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let image = pattern(CHUNK, 16);
    commit(&mut store, &image, b"");
    commit(&mut store, &image, b"");
    drop(store);
    let mut store = Store::open(&dir, StoreOptions::default()).unwrap();
    let tx = store.begin(CHUNK).unwrap();
    assert!(tx.is_base());
    assert_eq!(tx.number(), 3);
}

#[test]
fn second_open_of_a_locked_store_fails_with_locked() {
    let (_tmp, dir, store) = fresh(StoreOptions::default());
    match Store::open(&dir, StoreOptions::default()) {
        Err(e @ StoreError::Locked { .. }) => {
            let StoreError::Locked { path, pid } = &e else {
                unreachable!()
            };
            assert_eq!(path, &dir.join("lock"));
            assert_eq!(*pid, Some(std::process::id()));
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&std::process::id().to_string()), "{message}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // Released with the store.
    drop(store);
    Store::open(&dir, StoreOptions::default()).unwrap();
}

#[test]
fn invalid_options_and_region_lengths_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Store::open(tmp.path(), options(0)).unwrap_err();
    assert!(matches!(e, StoreError::InvalidOption { name: "keep", .. }), "{e}");
    let mut store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    for len in [0, shm_snapshot::store::MAX_REGION_LEN + 1] {
        let e = store.begin(len).unwrap_err();
        assert!(matches!(e, StoreError::InvalidRegionLen { .. }), "{e}");
    }
}

#[test]
fn put_chunk_rejects_out_of_range_and_wrong_length_chunks() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let mut tx = store.begin(CHUNK + 10).unwrap();
    let e = tx.put_chunk(2, &[0; 10]).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::ChunkOutOfRange {
                index: 2,
                chunks: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = tx.put_chunk(1, &[0; 11]).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::ChunkLen {
                index: 1,
                expected: 10,
                found: 11
            }
        ),
        "{e}"
    );
    let e = tx.put_chunk(0, &[0; 10]).unwrap_err();
    assert!(matches!(e, StoreError::ChunkLen { .. }), "{e}");
    // The generation is still good after refused offers.
    tx.put_chunk(1, &[4; 10]).unwrap();
    tx.commit(b"").unwrap();
    let loaded = load(&mut store);
    assert_eq!(&loaded.image[CHUNK as usize..], &[4; 10]);
    assert_eq!(file_names(&dir), BTreeSet::from([format!("base-{:020}.snap", 1)]));
}

#[test]
fn dropping_a_generation_without_commit_leaves_no_trace() {
    let (_tmp, dir, mut store) = fresh(options(8));
    let mut image = pattern(2 * CHUNK, 17);
    // Dropped as a base (nothing loaded yet), as the first delta (no
    // segment yet), and as a delta with a segment open.
    for round in 0..3 {
        let before = dir_files(&dir);
        {
            let mut tx = store.begin(2 * CHUNK).unwrap();
            assert_eq!(tx.is_base(), round == 0);
            tx.put_chunk(0, &vec![1; CHUNK as usize]).unwrap();
        }
        assert_eq!(dir_files(&dir), before, "round {round}");
        // The number is free again.
        assert_eq!(store.begin(CHUNK).unwrap().number(), round + 1);
        image[round as usize] ^= 1;
        commit(&mut store, &image, b"kept");
    }
    let loaded = load(&mut store);
    assert_eq!((loaded.number, loaded.image), (3, image));
}

#[test]
fn stale_temporary_files_are_removed_on_open_and_foreign_files_kept() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let image = pattern(CHUNK, 18);
    commit(&mut store, &image, b"");
    drop(store);
    let stale: BTreeSet<PathBuf> = [
        "base-00000000000000000002.4242.0.tmp",
        "seg-00000000000000000003.4242.1.tmp",
        // Left by version 2.
        "gen-00000000000000000002.4242.0.tmp",
    ]
    .iter()
    .map(|n| dir.join(n))
    .collect();
    for path in &stale {
        fs::write(path, b"half a file").unwrap();
    }
    let foreign = dir.join("notes.txt");
    fs::write(&foreign, b"mine").unwrap();
    let mut store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(
        store
            .removed_temp_files()
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        stale
    );
    assert!(stale.iter().all(|p| !p.exists()));
    assert!(foreign.exists());
    assert_eq!(load(&mut store).number, 1);
}

#[test]
fn files_are_0600_and_a_created_directory_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("store");
    let mut store = Store::open(&dir, options(8)).unwrap();
    let mut image = pattern(CHUNK, 19);
    commit(&mut store, &image, b"");
    image[0] ^= 1;
    commit(&mut store, &image, b"");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    assert_eq!(mode(&dir.join("lock")), 0o600);
    // The base, the segment and the spare.
    let files = file_names(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    for name in files {
        assert_eq!(mode(&dir.join(&name)), 0o600, "{name}");
    }
    assert_eq!(
        fs::read_to_string(dir.join("lock")).unwrap(),
        format!("{}\n", std::process::id())
    );
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Poke {
            at: u64,
            value: u8,
        },
        /// Commits, offering the chunks one by one or in one batch.
        Commit {
            batched: bool,
        },
        Abort,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..REGION, any::<u8>()).prop_map(|(at, value)| Op::Poke { at, value }),
            3 => any::<bool>().prop_map(|batched| Op::Commit { batched }),
            1 => Just(Op::Abort),
            1 => Just(Op::Reopen),
        ]
    }

    const REGION: u64 = 3 * CHUNK + 777;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn random_commits_aborts_and_reopens_always_load_the_last_commit(ops in proptest::collection::vec(op(), 1..40)) {
            let tmp = tempfile::tempdir().unwrap();
            // A base after every delta or two: bases, new segments and
            // retention all happen within a few operations.
            let opts = StoreOptions {
                keep: 2,
                fsync: false,
                background: false,
                base_after_bytes: 1,
                ..StoreOptions::default()
            };
            let mut store = Store::open(tmp.path(), opts).unwrap();
            let mut image = vec![0u8; REGION as usize];
            let mut committed: Option<Vec<u8>> = None;
            for op in ops {
                match op {
                    Op::Poke { at, value } => image[at as usize] = value,
                    Op::Commit { batched } => {
                        if batched {
                            commit_batched(&mut store, &image, &image[..8]);
                        } else {
                            commit(&mut store, &image, &image[..8]);
                        }
                        committed = Some(image.clone());
                    }
                    Op::Abort => {
                        let mut tx = store.begin(REGION).unwrap();
                        tx.put_chunk(0, &vec![0xee; CHUNK as usize]).unwrap();
                    }
                    Op::Reopen => {
                        drop(store);
                        store = Store::open(tmp.path(), opts).unwrap();
                        let loaded = store.load_newest().unwrap();
                        prop_assert_eq!(loaded.as_ref().map(|l| &l.image), committed.as_ref());
                        if let Some(l) = loaded {
                            prop_assert_eq!(&l.meta[..], &l.image[..8]);
                            prop_assert!(l.skipped.is_empty());
                        }
                        prop_assert!(store.tails().is_empty(), "{:?}", store.tails());
                    }
                }
            }
            // Two bases at most, the segments since the older one, a
            // spare, and one a previous opening left.
            let files = file_names(tmp.path());
            prop_assert!(files.len() <= 8, "{:?}", files);
        }
    }
}

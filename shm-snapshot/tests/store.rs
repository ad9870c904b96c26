//! The on-disk generation store: round trips, incremental writes, retention,
//! corruption and fallback, locking, and crash and fault injection through
//! the store's I/O layer (STORE.md).

mod common;

use common::{gen_path, pattern};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use shm_snapshot::store::format::{chunk, header, meta, trailer};
use shm_snapshot::store::{
    CHUNK_BYTES, FaultPlan, FaultyIo, GenerationKind, IoOp, Loaded, PAGE_BYTES, Persisted, RealIo, Store,
    StoreError, StoreOptions,
};

const CHUNK: u64 = CHUNK_BYTES;

fn options(keep: usize, full_every: u32) -> StoreOptions {
    StoreOptions {
        keep,
        full_every,
        fsync: true,
    }
}

/// Offers every chunk of `image` and commits.
fn try_commit(store: &mut Store, image: &[u8], meta: &[u8]) -> Result<Persisted, StoreError> {
    let mut tx = store.begin(image.len() as u64)?;
    for (i, c) in image.chunks(CHUNK as usize).enumerate() {
        tx.put_chunk(i as u64, c)?;
    }
    tx.commit(meta)
}

fn commit(store: &mut Store, image: &[u8], meta: &[u8]) -> Persisted {
    try_commit(store, image, meta).expect("commit")
}

fn load(store: &mut Store) -> Loaded {
    store.load_newest().expect("load").expect("a generation")
}

/// Every file of the directory but the lock, with its bytes.
fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "lock")
        .map(|e| (e.file_name().into_string().unwrap(), fs::read(e.path()).unwrap()))
        .collect()
}

fn gen_numbers(dir: &Path) -> Vec<u64> {
    dir_files(dir)
        .keys()
        .filter_map(|n| n.strip_prefix("gen-")?.strip_suffix(".snap")?.parse().ok())
        .collect()
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x01;
    fs::write(path, bytes).unwrap();
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
    // Format v2 stores changed pages, not chunks: one page per changed
    // chunk, and nothing else but the fixed parts of the file.
    assert_eq!(p.pages_written, 3);
    assert_eq!(p.bytes_written, file_len(&[1, 1, 1], meta.len()));

    // Nothing changed: a delta of no chunks, only the fixed parts.
    let p = commit(&mut store, &image, &meta);
    assert_eq!((p.chunks_written, p.pages_written), (0, 0));
    assert_eq!(p.bytes_written, file_len(&[], meta.len()));
    assert_eq!(load(&mut store).image, image);
}

/// The exact size of a generation file whose chunk records store
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
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
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
    let file = fs::read(gen_path(&dir, 2)).unwrap();
    assert_eq!(file.len() as u64, p.bytes_written);
    let at = header::LEN;
    assert_eq!(u64_at(&file, at + chunk::INDEX), 4);
    assert_eq!(u64_at(&file, at + chunk::PAGES), 1 << 2 | 1 << 5 | 1 << 15);
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

/// Asserts two generation files are the same but for their creation time
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
fn put_chunks_writes_the_same_files_as_put_chunk_on_each_chunk() {
    // 40 chunks and a short one: large enough to be hashed on several
    // threads where the machine has them.
    let len = 40 * CHUNK + 3 * PAGE_BYTES + 5;
    let (_t1, one_dir, mut one) = fresh(options(100, 4));
    let (_t2, batch_dir, mut batch) = fresh(options(100, 4));
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
        let (fa, fb) = (
            fs::read(gen_path(&one_dir, g)).unwrap(),
            fs::read(gen_path(&batch_dir, g)).unwrap(),
        );
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
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
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
    assert_eq!(p.bytes_written, fs::metadata(gen_path(&dir, 2)).unwrap().len());
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
fn a_base_is_written_every_full_every_generations() {
    let (_tmp, _dir, mut store) = fresh(options(100, 4));
    // Eight chunks, one changing per generation: the chain never outweighs
    // the region, so only full_every makes bases.
    let mut image = pattern(8 * CHUNK, 4);
    let mut bases = Vec::new();
    for g in 1..=10u64 {
        image[g as usize] ^= 1;
        let p = commit(&mut store, &image, b"");
        if p.base {
            bases.push(p.number);
        }
    }
    assert_eq!(bases, vec![1, 5, 9]);
    assert_eq!(load(&mut store).image, image);

    let (_tmp, _dir, mut store) = fresh(options(100, 1));
    for _ in 0..3 {
        assert!(commit(&mut store, &image, b"").base);
    }
}

#[test]
fn a_changed_region_len_starts_a_new_base() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    commit(&mut store, &pattern(2 * CHUNK, 5), b"");
    let bigger = pattern(3 * CHUNK + 1, 6);
    let p = commit(&mut store, &bigger, b"");
    assert!(p.base);
    let loaded = load(&mut store);
    assert_eq!(loaded.image, bigger);
}

#[test]
fn a_delta_chain_heavier_than_the_region_forces_a_base() {
    let (_tmp, _dir, mut store) = fresh(StoreOptions::default());
    let len = 4 * CHUNK;
    let mut image = pattern(len, 7);
    commit(&mut store, &image, b"");
    let mut kinds = Vec::new();
    for g in 0..4u64 {
        // Two of four chunks change in every page each time (a delta stores
        // changed pages, so every page must change for the whole chunk to
        // be stored): two deltas outweigh the region.
        for chunk in [g % 2, 2 + g % 2] {
            for page in 0..CHUNK / PAGE_BYTES {
                image[(chunk * CHUNK + page * PAGE_BYTES) as usize] ^= 1;
            }
        }
        kinds.push(commit(&mut store, &image, b"").base);
    }
    assert_eq!(kinds, vec![false, false, true, false]);
    assert_eq!(load(&mut store).image, image);
}

#[test]
fn retention_keeps_keep_generations_and_their_chains_and_deletes_the_rest() {
    let (_tmp, dir, mut store) = fresh(options(3, 4));
    let mut image = pattern(8 * CHUNK, 8);
    let mut pruned = 0;
    for g in 1..=10u64 {
        image[g as usize] ^= 1;
        pruned += commit(&mut store, &image, b"").pruned;
    }
    // Bases 1, 5, 9. The newest three are 10, 9, 8; 8 needs 5, 6, 7.
    assert_eq!(gen_numbers(&dir), vec![5, 6, 7, 8, 9, 10]);
    assert_eq!(pruned, 4);
    let listed: Vec<u64> = store.generations().iter().map(|g| g.number).collect();
    assert_eq!(listed, vec![5, 6, 7, 8, 9, 10]);
    assert_eq!(load(&mut store).image, image);

    // keep = 1 keeps the newest and its chain only.
    let (_tmp, dir, mut store) = fresh(options(1, 4));
    for g in 1..=7u64 {
        image[g as usize] ^= 1;
        commit(&mut store, &image, b"");
    }
    assert_eq!(gen_numbers(&dir), vec![5, 6, 7]);
}

#[test]
fn generations_lists_number_kind_size_region_len_and_time() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
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
    assert_eq!(gens[1].kind, GenerationKind::Delta { base: 1, parent: 1 });
    for g in &gens {
        assert_eq!(g.region_len, CHUNK + 5);
        assert_eq!(g.bytes, fs::metadata(gen_path(&dir, g.number)).unwrap().len());
        assert!(g.created_ms >= before && g.created_ms < before + 60_000);
    }
    // A fresh open reports the same.
    drop(store);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(store.generations(), gens);
}

#[test]
fn truncated_newest_generation_falls_back_to_previous_with_the_skip_reported() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let mut image = pattern(3 * CHUNK + 10, 10);
    commit(&mut store, &image, b"one");
    let previous = image.clone();
    image[5] ^= 1;
    image[(3 * CHUNK + 3) as usize] ^= 1;
    commit(&mut store, &image, b"two");
    let path = gen_path(&dir, 2);
    let whole = fs::read(&path).unwrap();
    let len = whole.len() as u64;
    let first = header::LEN as u64;
    let mut cuts: Vec<u64> = vec![0, 1, 8, first - 1, first, first + 1, first + 56, first + 57];
    cuts.extend([len / 2, len - 57, len - 56, len - 55, len - 1]);
    cuts.extend((0..len).step_by(4099));
    for cut in cuts {
        fs::write(&path, &whole[..cut as usize]).unwrap();
        let loaded = load(&mut store);
        assert_eq!(loaded.number, 1, "cut at {cut}");
        assert_eq!(loaded.image, previous);
        assert_eq!(loaded.meta, b"one");
        assert_eq!(skipped_numbers(&loaded), vec![2]);
        let (_, e) = &loaded.skipped[0];
        assert!(matches!(e, StoreError::Corrupt { .. }), "cut at {cut}: {e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
    // A file with bytes after its trailer is refused too.
    let mut longer = whole.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    let loaded = load(&mut store);
    assert_eq!(loaded.number, 1);
    assert!(
        loaded.skipped[0].1.to_string().contains("file length"),
        "{}",
        loaded.skipped[0].1
    );
    // Restored, it loads again.
    fs::write(&path, &whole).unwrap();
    assert_eq!(load(&mut store).image, image);
}

/// Generation 1 a base, generation 2 a delta of one changed full chunk and
/// `meta`. Returns the image of generation 1 and the path of generation 2.
fn two_generations(store: &mut Store, dir: &Path, meta: &[u8]) -> (Vec<u8>, PathBuf) {
    let mut image = pattern(2 * CHUNK, 11);
    commit(store, &image, b"first");
    let first = image.clone();
    image[100] ^= 1;
    commit(store, &image, meta);
    (first, gen_path(dir, 2))
}

fn assert_fell_back(store: &mut Store, first: &[u8], names: &str) {
    let loaded = load(store);
    assert_eq!(loaded.number, 1);
    assert_eq!(loaded.image, first);
    assert_eq!(skipped_numbers(&loaded), vec![2]);
    let message = loaded.skipped[0].1.to_string();
    assert!(message.contains(names), "{message}");
    assert!(
        message.contains("expected") && message.contains("found"),
        "{message}"
    );
}

#[test]
fn flipped_byte_in_a_chunk_is_detected() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let (first, path) = two_generations(&mut store, &dir, b"meta");
    flip(&path, (header::LEN + chunk::DESCRIPTOR + 100) as u64);
    assert_fell_back(&mut store, &first, "chunk 0 hash");
}

#[test]
fn flipped_byte_in_meta_is_detected() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let (first, path) = two_generations(&mut store, &dir, b"the unit table");
    let len = fs::metadata(&path).unwrap().len();
    flip(&path, len - trailer::LEN as u64 - 3);
    assert_fell_back(&mut store, &first, "meta hash");
}

#[test]
fn flipped_byte_in_the_header_is_detected() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let (first, path) = two_generations(&mut store, &dir, b"meta");
    flip(&path, header::REGION_LEN as u64);
    assert_fell_back(&mut store, &first, "header_hash");
}

#[test]
fn flipped_byte_in_a_record_descriptor_or_the_trailer_is_detected() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let (first, path) = two_generations(&mut store, &dir, b"meta");
    let whole = fs::read(&path).unwrap();
    let len = whole.len() as u64;
    let meta_at = len - (trailer::LEN + meta::DESCRIPTOR + 4) as u64;
    for (at, names) in [
        // Chunk 0 claims to be chunk 1: its bytes still match their hash,
        // the skeleton hash does not.
        (header::LEN + chunk::INDEX, "trailer skeleton_hash"),
        (header::LEN + chunk::HASH, "chunk 0 hash"),
        (meta_at as usize + meta::LEN, "meta len"),
        (
            len as usize - trailer::LEN + trailer::CHUNK_COUNT,
            "trailer chunk_count",
        ),
        (len as usize - 1, "trailer skeleton_hash"),
    ] {
        fs::write(&path, &whole).unwrap();
        flip(&path, at as u64);
        assert_fell_back(&mut store, &first, names);
    }
}

/// A change made to a file's bytes.
type Edit<'a> = dyn Fn(&mut Vec<u8>) + 'a;

#[test]
fn a_corrupt_page_record_is_detected() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let mut image = pattern(2 * CHUNK, 35);
    commit(&mut store, &image, b"first");
    let first = image.clone();
    // One record of chunk 1 storing pages 2, 5 and 9.
    for page in [2u64, 5, 9] {
        image[(CHUNK + page * PAGE_BYTES + 1) as usize] ^= 1;
    }
    let p = commit(&mut store, &image, b"second");
    assert_eq!((p.chunks_written, p.pages_written), (1, 3));
    let path = gen_path(&dir, 2);
    let whole = fs::read(&path).unwrap();
    let record = header::LEN;
    let pages_at = record + chunk::PAGES;
    let payload = record + chunk::DESCRIPTOR;
    let page = PAGE_BYTES as usize;
    let with = |edit: &Edit<'_>| {
        let mut bytes = whole.clone();
        edit(&mut bytes);
        fs::write(&path, &bytes).unwrap();
    };
    let set_pages =
        |bitmap: u64| move |b: &mut Vec<u8>| b[pages_at..pages_at + 8].copy_from_slice(&bitmap.to_le_bytes());
    let cases: Vec<(&str, Box<Edit<'_>>)> = vec![
        // A flipped byte in the second stored page (page 5).
        ("chunk 1 hash", Box::new(|b| b[payload + page + 77] ^= 0x20)),
        // The first and second stored pages swapped: each page is intact,
        // their order is not.
        (
            "chunk 1 hash",
            Box::new(|b| {
                let (first, second) = b[payload..payload + 2 * page].split_at_mut(page);
                first.swap_with_slice(second);
            }),
        ),
        // The bitmap names other pages of the same count: every stored byte
        // matches its hash, the skeleton does not.
        (
            "trailer skeleton_hash",
            Box::new(set_pages(1 << 2 | 1 << 5 | 1 << 10)),
        ),
        // A page past the chunk's 16, and no page at all.
        ("chunk 1 pages", Box::new(set_pages(1 << 2 | 1 << 5 | 1 << 16))),
        ("chunk 1 pages", Box::new(set_pages(0))),
        // One page fewer: the two pages read do not make the record's hash.
        ("chunk 1 hash", Box::new(set_pages(1 << 2 | 1 << 5))),
        // Cut in the middle of the last stored page.
        (
            "chunk 1 page 9 bytes",
            Box::new(|b| b.truncate(payload + 2 * page + 100)),
        ),
    ];
    for (names, edit) in cases {
        with(&*edit);
        assert_fell_back(&mut store, &first, names);
    }
    fs::write(&path, &whole).unwrap();
    assert_eq!(load(&mut store).image, image);
}

#[test]
fn every_flipped_byte_of_a_small_generation_is_detected() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let mut image = pattern(3000, 12);
    commit(&mut store, &image, b"first");
    let first = image.clone();
    image[2999] ^= 1;
    commit(&mut store, &image, b"second meta");
    let path = gen_path(&dir, 2);
    let whole = fs::read(&path).unwrap();
    for at in 0..whole.len() {
        let mut bytes = whole.clone();
        bytes[at] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let loaded = load(&mut store);
        assert_eq!(loaded.number, 1, "flip at byte {at} not detected");
        assert_eq!(loaded.image, first);
    }
}

#[test]
fn deleted_base_makes_its_deltas_unusable_and_loading_falls_back_further() {
    let (_tmp, dir, mut store) = fresh(options(100, 3));
    let mut image = pattern(2 * CHUNK, 13);
    let mut images = BTreeMap::new();
    for g in 1..=5u64 {
        image[g as usize] ^= 1;
        commit(&mut store, &image, b"");
        images.insert(g, image.clone());
    }
    // Bases 1 and 4; 5 is a delta on 4.
    fs::remove_file(gen_path(&dir, 4)).unwrap();
    let before = dir_files(&dir);
    let loaded = load(&mut store);
    assert_eq!(loaded.number, 3);
    assert_eq!(loaded.image, images[&3]);
    assert_eq!(skipped_numbers(&loaded), vec![5]);
    let e = &loaded.skipped[0].1;
    assert!(matches!(e, StoreError::BrokenChain { needs: 4, .. }), "{e}");
    assert!(e.to_string().contains("is missing"), "{e}");
    assert_eq!(dir_files(&dir), before, "a load must not touch the files");

    // Without the first base either, nothing verifies: an error, not an
    // empty store, and still nothing touched.
    fs::remove_file(gen_path(&dir, 1)).unwrap();
    let before = dir_files(&dir);
    match store.load_newest() {
        Err(StoreError::NoVerifiedGeneration { dir: d, tried }) => {
            assert_eq!(d, dir);
            assert_eq!(tried, 3);
        }
        other => panic!("expected NoVerifiedGeneration, got {other:?}"),
    }
    let skipped: Vec<u64> = store.last_load_skipped().iter().map(|(n, _)| *n).collect();
    assert_eq!(skipped, vec![5, 3, 2]);
    assert_eq!(dir_files(&dir), before, "a failed load must not touch the files");

    // The next generation is a base, numbered past every file present.
    let p = commit(&mut store, &image, b"");
    assert!(p.base);
    assert_eq!(p.number, 6);
}

#[test]
fn corrupt_base_is_reported_once_for_itself_and_as_the_cause_for_its_deltas() {
    let (_tmp, dir, mut store) = fresh(options(100, 3));
    let mut image = pattern(2 * CHUNK, 14);
    for g in 1..=5u64 {
        image[g as usize] ^= 1;
        commit(&mut store, &image, b"");
    }
    flip(&gen_path(&dir, 4), (header::LEN + chunk::DESCRIPTOR + 9) as u64);
    let loaded = load(&mut store);
    assert_eq!(loaded.number, 3);
    assert_eq!(skipped_numbers(&loaded), vec![5, 4]);
    assert!(matches!(
        loaded.skipped[0].1,
        StoreError::BrokenChain { needs: 4, .. }
    ));
    assert!(matches!(loaded.skipped[1].1, StoreError::Corrupt { .. }));
}

#[test]
fn numbers_keep_growing_past_a_corrupt_newest_generation() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let mut image = pattern(2 * CHUNK, 15);
    for g in 1..=3u64 {
        image[g as usize] ^= 1;
        commit(&mut store, &image, b"");
    }
    flip(&gen_path(&dir, 3), 0);
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
}

#[test]
fn a_generation_file_copied_under_another_number_is_refused() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let image = pattern(CHUNK, 22);
    commit(&mut store, &image, b"");
    fs::copy(gen_path(&dir, 1), gen_path(&dir, 2)).unwrap();
    let loaded = load(&mut store);
    assert_eq!(loaded.number, 1);
    assert_eq!(skipped_numbers(&loaded), vec![2]);
    let message = loaded.skipped[0].1.to_string();
    assert!(message.contains("number at byte 16: expected 2"), "{message}");
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
    for opts in [options(0, 4), options(4, 0)] {
        let e = Store::open(tmp.path(), opts).unwrap_err();
        assert!(matches!(e, StoreError::InvalidOption { .. }), "{e}");
    }
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
    assert_eq!(gen_numbers(&dir), vec![1]);
}

#[test]
fn dropping_a_generation_without_commit_leaves_no_trace() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let image = pattern(2 * CHUNK, 17);
    commit(&mut store, &image, b"kept");
    let before = dir_files(&dir);
    {
        let mut tx = store.begin(2 * CHUNK).unwrap();
        tx.put_chunk(0, &vec![1; CHUNK as usize]).unwrap();
    }
    assert_eq!(dir_files(&dir), before);
    let loaded = load(&mut store);
    assert_eq!((loaded.number, loaded.image), (1, image));
    // The number is free again.
    assert_eq!(store.begin(CHUNK).unwrap().number(), 2);
}

#[test]
fn stale_temporary_files_are_removed_on_open_and_foreign_files_kept() {
    let (_tmp, dir, mut store) = fresh(StoreOptions::default());
    let image = pattern(CHUNK, 18);
    commit(&mut store, &image, b"");
    drop(store);
    let stale = dir.join("gen-00000000000000000002.4242.0.tmp");
    fs::write(&stale, b"half a generation").unwrap();
    let foreign = dir.join("notes.txt");
    fs::write(&foreign, b"mine").unwrap();
    let mut store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert!(!stale.exists());
    assert!(foreign.exists());
    assert_eq!(load(&mut store).number, 1);
}

#[test]
fn files_are_0600_and_a_created_directory_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("store");
    let mut store = Store::open(&dir, StoreOptions::default()).unwrap();
    commit(&mut store, &pattern(CHUNK, 19), b"");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    assert_eq!(mode(&dir.join("lock")), 0o600);
    assert_eq!(mode(&gen_path(&dir, 1)), 0o600);
    assert_eq!(
        fs::read_to_string(dir.join("lock")).unwrap(),
        format!("{}\n", std::process::id())
    );
}

/// Three generations (1 base, 2 delta, 3 base with `full_every = 2`), then a
/// fourth, a delta of two changed chunks whose commit prunes 1 and 2.
fn fault_setup(dir: &Path) -> (Store, shm_snapshot::store::Faults, Vec<u8>, Vec<u8>) {
    let (io, faults) = FaultyIo::new(Box::new(RealIo));
    let mut store = Store::open_with_io(dir, options(2, 2), Box::new(io)).unwrap();
    let mut image = pattern(4 * CHUNK + 99, 20);
    for g in 1..=3u64 {
        image[g as usize] ^= 1;
        commit(&mut store, &image, b"old");
    }
    let mut next = image.clone();
    next[0] ^= 1;
    next[(4 * CHUNK + 1) as usize] ^= 1;
    (store, faults, image, next)
}

#[test]
fn a_failure_at_any_io_step_of_a_commit_leaves_the_previous_generation_and_its_files() {
    let mut failed_steps = 0;
    let mut prune_steps = 0;
    for after in 0.. {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let (mut store, faults, previous, next) = fault_setup(&dir);
        let before = dir_files(&dir);
        faults.arm(FaultPlan::once(IoOp::MUTATING, after));
        let result = try_commit(&mut store, &next, b"new");
        faults.heal();
        if faults.injected() == 0 {
            assert_eq!(result.unwrap().number, 4);
            break;
        }
        match result {
            Err(e) => {
                failed_steps += 1;
                assert!(matches!(e, StoreError::Io { .. }), "step {after}: {e}");
                assert_eq!(dir_files(&dir), before, "step {after} left files behind");
                let loaded = load(&mut store);
                assert_eq!((loaded.number, &loaded.image), (3, &previous), "step {after}");
                assert!(loaded.skipped.is_empty());
            }
            Ok(p) => {
                // Only a removal while pruning may fail without failing the
                // commit.
                prune_steps += 1;
                assert_eq!(p.prune_errors.len(), 1, "step {after}");
                assert_eq!(p.pruned, 1);
                assert_eq!(load(&mut store).image, next);
            }
        }
        // A later commit succeeds, and a fresh open agrees.
        let mut later = next.clone();
        later[77] ^= 1;
        let p = commit(&mut store, &later, b"later");
        drop(store);
        let mut store = Store::open(&dir, options(2, 2)).unwrap();
        let loaded = load(&mut store);
        assert_eq!((loaded.number, loaded.image), (p.number, later));
    }
    // Create, header, 2 chunks, meta, trailer, sync, rename, sync dir; then
    // two removals while pruning.
    assert_eq!((failed_steps, prune_steps), (9, 2));
}

#[test]
fn a_full_disk_at_any_step_fails_the_commit_and_a_later_one_succeeds_once_space_returns() {
    let space = [IoOp::Create, IoOp::Write, IoOp::SyncFile];
    for after in 0.. {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let (mut store, faults, previous, next) = fault_setup(&dir);
        let before = dir_files(&dir);
        faults.arm(FaultPlan::disk_full(&space, after));
        let result = try_commit(&mut store, &next, b"new");
        if faults.injected() == 0 {
            result.unwrap();
            break;
        }
        let e = result.unwrap_err();
        assert!(e.to_string().contains("injected fault"), "{e}");
        // A second attempt while the disk is still full fails the same way.
        assert!(try_commit(&mut store, &next, b"new").is_err());
        assert_eq!(dir_files(&dir), before, "step {after} left files behind");
        assert_eq!(load(&mut store).image, previous);
        faults.heal();
        let p = commit(&mut store, &next, b"new");
        assert_eq!(p.number, 4);
        assert_eq!(load(&mut store).image, next);
    }
}

#[test]
fn a_failed_directory_sync_whose_cleanup_also_fails_leaves_a_complete_unacknowledged_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (mut store, faults, _previous, next) = fault_setup(&dir);
    faults.arm(FaultPlan {
        ops: vec![IoOp::SyncDir, IoOp::Remove],
        after: 0,
        sticky: true,
        kind: std::io::ErrorKind::Other,
    });
    let e = try_commit(&mut store, &next, b"new").unwrap_err();
    assert!(e.to_string().contains("syncing the store directory"), "{e}");
    faults.heal();
    assert_eq!(store.current_generation(), Some(3));
    assert!(store.generations().iter().any(|g| g.number == 4));
    // The store goes on from 3; 4 is complete and would load if it were
    // the newest.
    let mut tx = store.begin(next.len() as u64).unwrap();
    assert_eq!((tx.number(), tx.parent()), (5, Some(3)));
    for (i, c) in next.chunks(CHUNK as usize).enumerate() {
        tx.put_chunk(i as u64, c).unwrap();
    }
    tx.commit(b"five").unwrap();
    let loaded = load(&mut store);
    assert_eq!((loaded.number, loaded.image), (5, next));
}

/// An in-memory file system that keeps, for every file, the bytes written
/// (live) and the bytes synced (durable), and for the directory the live
/// entries and the entries as of its last sync. A crash at operation `k`
/// captures what could survive it and fails everything after.
mod mem {
    use std::collections::{BTreeMap, BTreeSet};
    use std::ffi::OsString;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use shm_snapshot::store::{LockAttempt, ReadFile, StoreFile, StoreIo};

    #[derive(Default, Clone)]
    struct Inode {
        live: Vec<u8>,
        durable: Vec<u8>,
    }

    /// What survives a crash.
    #[derive(Clone, Copy, Debug)]
    pub enum Survivor {
        /// Power loss before the directory reached the disk: synced entries,
        /// synced bytes.
        DirNotSynced,
        /// Power loss after the directory (but no more file data) reached the
        /// disk: live entries, synced bytes.
        DirSynced,
        /// The process was killed: everything written survives.
        ProcessKilled,
    }

    #[derive(Default)]
    pub struct Fs {
        inodes: Vec<Inode>,
        live: BTreeMap<PathBuf, usize>,
        durable: BTreeMap<PathBuf, usize>,
        locks: BTreeSet<PathBuf>,
        ops: u64,
        crash_at: Option<u64>,
        dead: bool,
        pub crashed: Vec<(Survivor, Fs)>,
    }

    impl Fs {
        pub fn crashing_at(k: u64) -> Fs {
            Fs {
                crash_at: Some(k),
                ..Fs::default()
            }
        }

        pub fn ops(&self) -> u64 {
            self.ops
        }

        fn image(&self, entries: &BTreeMap<PathBuf, usize>, live_bytes: bool) -> Fs {
            let mut fs = Fs::default();
            for (path, &ino) in entries {
                let i = &self.inodes[ino];
                let bytes = if live_bytes { &i.live } else { &i.durable };
                fs.inodes.push(Inode {
                    live: bytes.clone(),
                    durable: bytes.clone(),
                });
                fs.live.insert(path.clone(), fs.inodes.len() - 1);
            }
            fs.durable = fs.live.clone();
            fs
        }

        /// One mutating operation: counts it, or crashes before it.
        fn step(&mut self) -> io::Result<()> {
            if self.dead {
                return Err(io::Error::other("the process is dead"));
            }
            if Some(self.ops) == self.crash_at {
                self.crashed = vec![
                    (Survivor::DirNotSynced, self.image(&self.durable, false)),
                    (Survivor::DirSynced, self.image(&self.live, false)),
                    (Survivor::ProcessKilled, self.image(&self.live, true)),
                ];
                self.dead = true;
                return Err(io::Error::other("crashed"));
            }
            self.ops += 1;
            Ok(())
        }
    }

    #[derive(Clone)]
    pub struct MemIo(pub Arc<Mutex<Fs>>);

    impl MemIo {
        fn fs(&self) -> std::sync::MutexGuard<'_, Fs> {
            self.0.lock().unwrap()
        }
    }

    fn not_found() -> io::Error {
        io::Error::from(io::ErrorKind::NotFound)
    }

    struct Guard(Arc<Mutex<Fs>>, PathBuf);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.lock().unwrap().locks.remove(&self.1);
        }
    }

    struct MemFile(Arc<Mutex<Fs>>, usize);

    impl StoreFile for MemFile {
        fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut fs = self.0.lock().unwrap();
            fs.step()?;
            fs.inodes[self.1].live.extend_from_slice(bytes);
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            let mut fs = self.0.lock().unwrap();
            fs.step()?;
            let i = &mut fs.inodes[self.1];
            i.durable = i.live.clone();
            Ok(())
        }
    }

    impl StoreIo for MemIo {
        fn create_dir_all(&mut self, _dir: &Path) -> io::Result<()> {
            Ok(())
        }

        fn lock(&mut self, path: &Path) -> io::Result<LockAttempt> {
            if !self.fs().locks.insert(path.to_owned()) {
                return Ok(LockAttempt::Held { holder: None });
            }
            Ok(LockAttempt::Acquired(Box::new(Guard(
                self.0.clone(),
                path.to_owned(),
            ))))
        }

        fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
            let fs = self.fs();
            Ok(fs
                .live
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name().map(|n| n.to_owned()))
                .collect())
        }

        fn create_new(&mut self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
            let mut fs = self.fs();
            fs.step()?;
            if fs.live.contains_key(path) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs.inodes.push(Inode::default());
            let ino = fs.inodes.len() - 1;
            fs.live.insert(path.to_owned(), ino);
            Ok(Box::new(MemFile(self.0.clone(), ino)))
        }

        fn open_read(&mut self, path: &Path) -> io::Result<ReadFile> {
            let fs = self.fs();
            let ino = *fs.live.get(path).ok_or_else(not_found)?;
            let bytes = fs.inodes[ino].live.clone();
            Ok(ReadFile {
                len: bytes.len() as u64,
                reader: Box::new(io::Cursor::new(bytes)),
            })
        }

        fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            let mut fs = self.fs();
            fs.step()?;
            let ino = fs.live.remove(from).ok_or_else(not_found)?;
            fs.live.insert(to.to_owned(), ino);
            Ok(())
        }

        fn sync_dir(&mut self, _dir: &Path) -> io::Result<()> {
            let mut fs = self.fs();
            fs.step()?;
            fs.durable = fs.live.clone();
            Ok(())
        }

        fn remove(&mut self, path: &Path) -> io::Result<()> {
            let mut fs = self.fs();
            fs.step()?;
            fs.live.remove(path).map(|_| ()).ok_or_else(not_found)
        }
    }
}

use mem::{Fs, MemIo, Survivor};
use std::sync::{Arc, Mutex};

const CRASH_DIR: &str = "/store";
const CRASH_REGION: u64 = 3 * CHUNK + 500;

/// Opens a store on `fs`, loads, and commits seven generations, each
/// changing a chunk or two. Returns each acknowledged generation with its
/// image and meta; stops at the first error (the crash).
fn crash_workload(fs: Arc<Mutex<Fs>>, fsync: bool) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let opts = StoreOptions {
        keep: 2,
        full_every: 3,
        fsync,
    };
    let mut acked = Vec::new();
    let Ok(mut store) = Store::open_with_io(Path::new(CRASH_DIR), opts, Box::new(MemIo(fs))) else {
        return acked;
    };
    if store.load_newest().is_err() {
        return acked;
    }
    let mut image = pattern(CRASH_REGION, 21);
    for g in 0..7u64 {
        image[((g % 4) * CHUNK) as usize] ^= 1;
        if g % 3 == 0 {
            image[(CRASH_REGION - 1) as usize] ^= 1;
        }
        let meta = format!("generation {g}").into_bytes();
        match try_commit(&mut store, &image, &meta) {
            Ok(p) => acked.push((p.number, image.clone(), meta)),
            Err(_) => break,
        }
    }
    acked
}

fn crash_everywhere(fsync: bool) {
    let full = Arc::new(Mutex::new(Fs::default()));
    let all = crash_workload(full.clone(), fsync);
    assert_eq!(all.len(), 7);
    let expected: BTreeMap<u64, (Vec<u8>, Vec<u8>)> = all.into_iter().map(|(n, i, m)| (n, (i, m))).collect();
    let total = full.lock().unwrap().ops();
    for k in 0..total {
        let fs = Arc::new(Mutex::new(Fs::crashing_at(k)));
        let acked = crash_workload(fs.clone(), fsync);
        let newest_acked = acked.last().map(|(n, _, _)| *n);
        let survivors = std::mem::take(&mut fs.lock().unwrap().crashed);
        assert_eq!(survivors.len(), 3, "crash point {k} not reached");
        for (survivor, image) in survivors {
            let at = format!("crash before step {k}, {survivor:?}, fsync {fsync}");
            let io = MemIo(Arc::new(Mutex::new(image)));
            let opts = StoreOptions {
                keep: 2,
                full_every: 3,
                fsync,
            };
            let mut store = Store::open_with_io(Path::new(CRASH_DIR), opts, Box::new(io)).expect(&at);
            let durable = fsync || matches!(survivor, Survivor::ProcessKilled);
            match store.load_newest() {
                Ok(Some(l)) => {
                    // Whatever loads is exactly a generation that was written.
                    let (image, meta) = &expected[&l.number];
                    assert_eq!((&l.image, &l.meta), (image, meta), "{at}");
                    if durable {
                        assert!(
                            Some(l.number) >= newest_acked,
                            "{at}: lost an acknowledged generation"
                        );
                    }
                }
                Ok(None) => assert!(!durable || newest_acked.is_none(), "{at}: store came back empty"),
                Err(e) => {
                    assert!(!durable, "{at}: {e}");
                    assert!(matches!(e, StoreError::NoVerifiedGeneration { .. }), "{at}: {e}");
                }
            }
            // The store is writable again, and what it writes loads.
            let fresh = pattern(CRASH_REGION, 99);
            commit(&mut store, &fresh, b"after the crash");
            assert_eq!(load(&mut store).image, fresh, "{at}");
        }
    }
}

#[test]
fn a_crash_at_any_io_step_reopens_to_a_verified_generation_holding_every_acknowledged_one() {
    crash_everywhere(true);
}

#[test]
fn without_fsync_a_power_loss_may_lose_generations_but_never_loads_a_wrong_one() {
    crash_everywhere(false);
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
            let opts = StoreOptions { keep: 2, full_every: 3, fsync: false };
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
                    }
                }
            }
            prop_assert!(store.generations().len() <= 2 + 3);
        }
    }
}

//! A store written by version 2 (one `gen-<number>.snap` file per
//! generation) loads, is carried forward, and its files go once newer
//! bases cover what is kept (STORE.md, "Stores written by version 2").

mod common;

use common::{commit, legacy_numbers, legacy_path, pattern, segment_numbers};
use std::fs;
use std::path::Path;

use shm_snapshot::store::format::{
    self, Header, LEGACY_VERSION, all_pages, chunk_count, chunk_descriptor, chunk_len, meta_descriptor,
    page_len, pages_in, pages_of, record_hash,
};
use shm_snapshot::store::{
    CHUNK_BYTES, Condition, GenerationKind, PAGE_BYTES, Store, StoreError, StoreOptions,
};

const CHUNK: u64 = CHUNK_BYTES;
/// Three chunks, the last one short, and its last page short too.
const REGION: u64 = 2 * CHUNK + 2 * PAGE_BYTES + 100;

/// The bytes of a version 2 generation file: one record, generation
/// `number` of the chain whose base is `base`, a delta on `parent` (0 for
/// the base itself), holding the pages of `image` that `stored` names (by
/// their index in the region), and `meta`. Built with the format's
/// encoding helpers, as version 2 wrote it.
fn v2_file(number: u64, base: u64, parent: u64, image: &[u8], stored: &[u64], meta: &[u8]) -> Vec<u8> {
    let region_len = image.len() as u64;
    let header = Header {
        version: LEGACY_VERSION,
        number,
        base,
        parent,
        region_len,
        created_ms: 1_700_000_000_000 + number,
    };
    let encoded = header.encode();
    let mut skeleton = blake3::Hasher::new();
    skeleton.update(&encoded);
    let mut file = encoded.to_vec();
    let per_chunk = CHUNK / PAGE_BYTES;
    let mut chunks = 0;
    for index in 0..chunk_count(region_len) {
        let bitmap = stored
            .iter()
            .filter(|&&p| p / per_chunk == index)
            .fold(0u64, |b, &p| b | 1 << (p % per_chunk));
        if bitmap == 0 {
            continue;
        }
        let len = chunk_len(region_len, index).unwrap();
        assert_eq!(bitmap & !all_pages(len), 0, "page past chunk {index}");
        let start = |p: u64| (index * CHUNK + p * PAGE_BYTES) as usize;
        let pages: Vec<&[u8]> = pages_of(bitmap)
            .map(|p| &image[start(p)..start(p) + page_len(len, p) as usize])
            .collect();
        let hashes: Vec<blake3::Hash> = pages.iter().map(|b| blake3::hash(b)).collect();
        let descriptor = chunk_descriptor(index, bitmap, &record_hash(&hashes));
        skeleton.update(&descriptor);
        file.extend_from_slice(&descriptor);
        for page in pages {
            file.extend_from_slice(page);
        }
        chunks += 1;
    }
    let descriptor = meta_descriptor(meta.len() as u64, &blake3::hash(meta));
    skeleton.update(&descriptor);
    file.extend_from_slice(&descriptor);
    file.extend_from_slice(meta);
    let record_len = (file.len() + format::trailer::LEN) as u64;
    file.extend_from_slice(&format::trailer(chunks, record_len, &mut skeleton));
    file
}

/// Images and metas of the version 2 store written into `dir`: a base
/// holding the region's non-zero pages, and two deltas.
fn write_v2_store(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    fs::create_dir_all(dir).unwrap();
    let mut image = vec![0u8; REGION as usize];
    let nonzero = [0u64, 3, 17, 33, 34];
    for &p in &nonzero {
        let at = (p * PAGE_BYTES) as usize;
        let end = (at + PAGE_BYTES as usize).min(image.len());
        image[at..end].copy_from_slice(&pattern((end - at) as u64, p + 1));
    }
    assert_eq!(pages_in(chunk_len(REGION, 2).unwrap()), 3);
    let mut generations = Vec::new();
    let meta = |n: u64| format!("version 2 generation {n}").into_bytes();
    fs::write(legacy_path(dir, 1), v2_file(1, 1, 0, &image, &nonzero, &meta(1))).unwrap();
    generations.push((image.clone(), meta(1)));
    // 2 changes a page of chunk 0 and the short last page.
    image[(3 * PAGE_BYTES + 5) as usize] ^= 0xff;
    image[(REGION - 1) as usize] ^= 0xff;
    fs::write(legacy_path(dir, 2), v2_file(2, 1, 1, &image, &[3, 34], &meta(2))).unwrap();
    generations.push((image.clone(), meta(2)));
    // 3 writes a page that was zero.
    image[(20 * PAGE_BYTES) as usize..(21 * PAGE_BYTES) as usize].fill(7);
    fs::write(legacy_path(dir, 3), v2_file(3, 1, 2, &image, &[20], &meta(3))).unwrap();
    generations.push((image, meta(3)));
    generations
}

fn options() -> StoreOptions {
    StoreOptions {
        keep: 2,
        background: false,
        base_after_bytes: 1,
        ..StoreOptions::default()
    }
}

#[test]
fn a_store_written_by_version_2_loads_and_is_carried_forward_until_its_files_go() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let v2 = write_v2_store(&dir);

    // Read as it is: three generations in files of their own.
    let mut store = Store::open(&dir, options()).unwrap();
    let gens = store.generations();
    let kinds: Vec<(u64, GenerationKind)> = gens.iter().map(|g| (g.number, g.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, GenerationKind::Base),
            (2, GenerationKind::Delta { parent: 1 }),
            (3, GenerationKind::Delta { parent: 2 })
        ]
    );
    for g in &gens {
        assert_eq!((&g.path, g.offset), (&legacy_path(&dir, g.number), 0));
        assert_eq!(g.bytes, common::size(&g.path));
    }
    let checked = store.check_all().unwrap();
    assert_eq!(checked.len(), 3);
    for (c, (_, meta)) in checked.iter().zip(&v2) {
        assert!(
            matches!(c.condition, Condition::Intact),
            "{}: {:?}",
            c.number,
            c.condition
        );
        assert_eq!(c.meta.as_deref(), Some(&meta[..]));
    }
    for (n, (image, meta)) in (1u64..).zip(&v2) {
        let loaded = store.load_generation(n).unwrap();
        assert!(loaded.image == *image && loaded.meta == *meta, "generation {n}");
    }
    let loaded = store.load_newest().unwrap().unwrap();
    assert_eq!(loaded.number, 3);
    assert!(loaded.image == v2[2].0 && loaded.meta == v2[2].1 && loaded.skipped.is_empty());

    // Carried forward: the next generation is a delta on 3, in a segment.
    let mut image = loaded.image;
    image[(17 * PAGE_BYTES + 1) as usize] ^= 1;
    let p = commit(&mut store, &image, b"four");
    assert_eq!((p.number, p.base), (4, false));
    assert_eq!(segment_numbers(&dir).len(), 2, "the segment of 4 and the spare");
    drop(store);
    let mut store = Store::open(&dir, options()).unwrap();
    let loaded = store.load_newest().unwrap().unwrap();
    assert!(loaded.number == 4 && loaded.image == image && loaded.meta == b"four");

    // Once newer bases cover every kept generation, retention removes the
    // version 2 files.
    let mut written = vec![(4u64, image.clone())];
    for g in 5..=20u64 {
        if legacy_numbers(&dir).is_empty() {
            break;
        }
        image[(((g % 3) * 16 + 1) * PAGE_BYTES + g) as usize] ^= 1;
        let p = commit(&mut store, &image, &g.to_le_bytes());
        written.push((p.number, image.clone()));
        store.finish_background();
    }
    assert!(legacy_numbers(&dir).is_empty(), "the version 2 files stayed");
    drop(store);
    let mut reader = Store::open_read_only(&dir).unwrap();
    let loaded = reader.load_newest().unwrap().unwrap();
    let (newest, newest_image) = written.last().unwrap();
    assert!(loaded.number == *newest && loaded.image == *newest_image);
    for (n, image) in written.iter().rev().take(2) {
        assert!(
            reader.load_generation(*n).unwrap().image == *image,
            "generation {n}"
        );
    }
}

#[test]
fn a_damaged_version_2_delta_falls_back_to_the_one_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let v2 = write_v2_store(dir);
    let path = legacy_path(dir, 3);
    let len = common::size(&path);
    // A page byte of 3, then its trailer: each is found, and 2 loads.
    for at in [
        (format::header::LEN + format::chunk::DESCRIPTOR + 10) as u64,
        len - 1,
    ] {
        common::flip(&path, at, 0x02);
        let mut reader = Store::open_read_only(dir).unwrap();
        let loaded = reader.load_newest().unwrap().unwrap();
        assert!(loaded.number == 2 && loaded.image == v2[1].0, "flip at {at}");
        assert_eq!(loaded.skipped.len(), 1);
        assert!(
            matches!(loaded.skipped[0], (3, StoreError::Corrupt { .. })),
            "{:?}",
            loaded.skipped
        );
        common::flip(&path, at, 0x02);
    }
    // A version 2 file under a segment's or a base's name is refused.
    fs::copy(legacy_path(dir, 1), common::base_path(dir, 1)).unwrap();
    let mut reader = Store::open_read_only(dir).unwrap();
    let problems: Vec<u64> = reader.unreadable().iter().map(|(n, _)| *n).collect();
    assert_eq!(problems, [1]);
    assert!(
        reader.unreadable()[0].1.to_string().contains("version"),
        "{}",
        reader.unreadable()[0].1
    );
    let loaded = reader.load_newest().unwrap().unwrap();
    assert!(loaded.number == 3 && loaded.image == v2[2].0);
}

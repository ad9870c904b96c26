//! A full scan of a region the store already holds: `put_chunks` over
//! unchanged data, so nothing is written (a delta is assembled in memory
//! and the aborted one is dropped) and the time is hashing and comparing.
//! Target: a 1 GiB region at 6 GB/s or more on two cores.
//!
//! `cargo bench -p shm-snapshot --bench scan`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shm_snapshot::store::{CHUNK_BYTES, Store, StoreOptions};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Pseudo-random bytes, 8 at a time (splitmix64), fast enough to fill 1 GiB
/// in well under a second.
fn data(len: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len as usize];
    for (i, word) in bytes.chunks_exact_mut(8).enumerate() {
        let mut z = (i as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes
}

/// A store in a temporary directory whose newest generation holds `bytes`,
/// so the next generation is a delta on it. No fsync and no base built in
/// the background: the scan is measured, not the disk.
fn stored(bytes: &[u8]) -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let options = StoreOptions {
        keep: 2,
        fsync: false,
        base_after_bytes: u64::MAX,
        ..StoreOptions::default()
    };
    let mut store = Store::open(tmp.path(), options).expect("open");
    let mut tx = store.begin(bytes.len() as u64).expect("begin");
    tx.put_chunks(0, bytes).expect("base");
    tx.commit(b"").expect("commit base");
    // Sanity: the same bytes again change nothing.
    let mut tx = store.begin(bytes.len() as u64).expect("begin");
    assert!(!tx.is_base());
    tx.put_chunks(0, bytes).expect("scan");
    let p = tx.commit(b"").expect("commit");
    assert_eq!(p.chunks_written, 0, "an unchanged scan wrote chunks");
    (tmp, store)
}

/// One scan: begin a delta, offer every chunk, abort.
fn scan_once(store: &mut Store, bytes: &[u8], batched: bool) {
    let mut tx = store.begin(bytes.len() as u64).expect("begin");
    if batched {
        tx.put_chunks(0, black_box(bytes)).expect("put_chunks");
    } else {
        for (i, chunk) in bytes.chunks(CHUNK_BYTES as usize).enumerate() {
            tx.put_chunk(i as u64, black_box(chunk)).expect("put_chunk");
        }
    }
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("full scan");
    // A 1 GiB scan takes 100 to 250 ms: ten samples (55 scans) need about
    // 15 s.
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    for (name, len, seconds) in [("64MiB", 64 * MIB, 5), ("1GiB", GIB, 15)] {
        let bytes = data(len);
        let (_tmp, mut store) = stored(&bytes);
        group.measurement_time(Duration::from_secs(seconds));
        group.throughput(Throughput::Bytes(len));
        group.bench_function(format!("put_chunks/{name}"), |b| {
            b.iter(|| scan_once(&mut store, &bytes, true))
        });
        // The same scan one chunk at a time, on the calling thread alone.
        group.bench_function(format!("put_chunk/{name}"), |b| {
            b.iter(|| scan_once(&mut store, &bytes, false))
        });
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);

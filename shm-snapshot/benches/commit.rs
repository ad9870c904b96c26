//! Commit latency into a 1 MiB ring: 8 B, 4 KiB and 64 KiB units.
//!
//! `cargo bench -p shm-snapshot --bench commit`. Results in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shm_snapshot::{Client, Config, Region};

/// 8 MiB leaves room for the header, table and counters beside the 1 MiB
/// ring, and an arena like a small real program's.
const REGION_BYTES: u64 = 8 << 20;

fn commit(c: &mut Criterion) {
    let config = Config {
        ring_bytes: 1 << 20,
        ..Config::default()
    };
    let region = Region::anonymous(REGION_BYTES).expect("memfd");
    let mut client = Client::open(region, &config).expect("blank region");
    let mut group = c.benchmark_group("commit");
    for (name, len) in [("8B", 8usize), ("4KiB", 4 << 10), ("64KiB", 64 << 10)] {
        let unit: Vec<u8> = (0..len).map(|i| i as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| {
            b.iter(|| client.commit(black_box(&unit)).expect("fits"))
        });
    }
    group.finish();

    // The same copy as plain memcpy, for scale.
    let mut group = c.benchmark_group("memcpy");
    let src = vec![7u8; 64 << 10];
    let mut dst = vec![0u8; 64 << 10];
    group.throughput(Throughput::Bytes(src.len() as u64));
    group.bench_function("64KiB", |b| b.iter(|| dst.copy_from_slice(black_box(&src))));
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);

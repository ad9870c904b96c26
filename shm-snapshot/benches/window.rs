//! The snapshot window of a program that marks none of its writes
//! (`ArenaScan::Hash`, what `--arena-scan=auto` falls back to): every page
//! of the region is read and hashed between Pre and Post to find what
//! changed. One `take` of a quiet region full of data, whose newest
//! generation the store already holds, is that whole scan and nothing to
//! write: its time over the region's length is the scan rate.
//!
//! `cargo bench -p shm-snapshot --features host --bench window`.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shm_snapshot::snapshot::{self, ArenaScan, Outcome, Snapshotter};
use shm_snapshot::store::{Store, StoreOptions};
use shm_snapshot::{Client, Config, Region};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn window(c: &mut Criterion) {
    let mut group = c.benchmark_group("window, every page hashed");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    for (name, len, seconds) in [("256MiB", 256 * MIB, 5), ("1GiB", GIB, 15)] {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let options = StoreOptions {
            fsync: false,
            base_after_bytes: u64::MAX,
            ..StoreOptions::default()
        };
        let mut store = Store::open(tmp.path(), options).expect("open");
        let region = Region::anonymous(len).expect("region");
        let file = region.file().try_clone().expect("dup");
        let mut client = Client::open(region, &Config::default()).expect("client");
        // Data in every arena page, written without marking it.
        let arena = client.arena().len();
        let observer = snapshot::observe_file(&file).expect("observe").expect("laid out");
        let at = observer.geometry().arena_offset;
        let mut piece = vec![0u8; MIB as usize];
        for (k, off) in (0..arena).step_by(piece.len()).enumerate() {
            let n = piece.len().min(arena - off);
            piece[..n].fill(k as u8 | 1);
            std::os::unix::fs::FileExt::write_all_at(&file, &piece[..n], at + off as u64).expect("write");
        }
        client.commit(b"unit").expect("commit");
        let mut snapshotter = Snapshotter::new(ArenaScan::Hash);
        snapshotter.blank(len);
        let first = snapshotter.take(&observer, &mut store).expect("first generation");
        assert!(matches!(first, Outcome::Persisted { .. }), "{first:?}");
        group.measurement_time(Duration::from_secs(seconds));
        group.throughput(Throughput::Bytes(len));
        group.bench_function(format!("take/{name}"), |b| {
            b.iter(|| {
                let outcome = snapshotter.take(&observer, &mut store).expect("take");
                assert!(matches!(outcome, Outcome::Unchanged { .. }), "{outcome:?}");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);

//! Commit latency through the Rust client, with the loop and timing of
//! `bench/commit_latency.c`, so the two compare: `bench/run.sh` runs both.
//! Figures in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Instant;

use shm::{Client, Config, Region};

/// Rounds per size; the fastest is reported.
const ROUNDS: u32 = 30;
/// Commits per round of 8-byte units (fewer for larger ones).
const COMMITS: u64 = 200_000;

fn main() {
    let region = Region::anonymous(8 << 20).expect("a private region");
    let mut client = Client::open(region, &Config::default()).expect("laid out");
    for len in [8usize, 4096, 65536] {
        let unit: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let commits = match len {
            65536.. => COMMITS / 100,
            4096.. => COMMITS / 10,
            _ => COMMITS,
        };
        let mut best = f64::MAX;
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for _ in 0..commits {
                client.commit(black_box(&unit)).expect("fits the ring");
            }
            best = best.min(start.elapsed().as_nanos() as f64 / commits as f64);
        }
        println!("rust commit {len} B: {best:.2} ns");
    }
}

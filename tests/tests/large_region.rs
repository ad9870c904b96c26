//! A large region under a committing program: the supervisor's private
//! memory stays a few percent of the region, through real processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shm_snapshot_tests::{PATIENCE, Proc, bin, generations, workdir};

/// The region: 1 GiB.
const REGION: u64 = 1 << 30;
/// Arena bytes the program fills with data before it commits small writes:
/// half the region. A supervisor holding a copy of the region holds this.
const FILL: u64 = 512 << 20;
/// The bound: 2% of the region plus 64 MiB.
const BOUND: u64 = REGION / 50 + (64 << 20);

/// `RssAnon` of process `pid` in bytes: its private memory (heap, stacks
/// and anonymous mappings; the region's shared pages are `RssShmem`).
/// `None` once the process is gone.
fn rss_anon(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[test]
fn supervising_a_1_gib_region_full_of_data_takes_private_memory_of_a_few_percent_of_it() {
    let dir = workdir();
    let child = bin("arena-child");
    let fill = FILL.to_string();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--size=1GiB", "--fsync=never"],
        &[child.to_str().expect("utf-8 path"), "--fill", &fill],
    );
    let pid = sup.pid();
    // Sampled every 10 ms from the start: the region reserved, the fill
    // and the generations that carry it, the small writes after.
    let most = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (most, samples, stop) = (most.clone(), samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(bytes) = rss_anon(pid) {
                    most.fetch_max(bytes, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    sup.expect_out("filled");
    sup.expect_out("committed 2000");
    // Generations after the fill reach the store: the fill is in it, and
    // the supervisor keeps up with the small writes.
    let store = dir.path().join("state");
    let newest = || generations(&store).last().copied().unwrap_or(0);
    let then = newest();
    let deadline = Instant::now() + PATIENCE;
    while newest() < then + 5 {
        assert!(
            Instant::now() < deadline,
            "no 5 generations after generation {then} within {PATIENCE:?}; saw:\n{}",
            sup.transcript()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sup.expect_out("committed 3000");
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    sup.signal(libc::SIGTERM);
    sup.wait();
    let (most, samples) = (most.load(Ordering::Relaxed), samples.load(Ordering::Relaxed));
    assert!(samples > 10, "only {samples} readings of /proc/{pid}/status");
    assert!(
        most > 1 << 20,
        "RssAnon read as {most} bytes: not a reading of a running supervisor"
    );
    assert!(
        most <= BOUND,
        "the supervisor's private memory reached {} MiB, over the bound of {} MiB for a 1 GiB region holding {} MiB of data",
        most >> 20,
        BOUND >> 20,
        FILL >> 20
    );
    eprintln!("most RssAnon: {} MiB over {samples} readings", most >> 20);
}

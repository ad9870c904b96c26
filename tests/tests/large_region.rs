//! A large region under a committing program: the supervisor's private
//! memory stays a few percent of the region, through real processes.

use std::time::{Duration, Instant};

use shm_snapshot_bench::private::{Sampler, rss_anon};
use shm_snapshot_tests::{PATIENCE, Proc, bin, generations, workdir};

/// The region: 1 GiB.
const REGION: u64 = 1 << 30;
/// Arena bytes the program fills with data before it commits small writes:
/// half the region. A supervisor holding a copy of the region holds this.
const FILL: u64 = 512 << 20;
/// The bound: 2% of the region plus 64 MiB.
const BOUND: u64 = REGION / 50 + (64 << 20);

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
    // `RssAnon` (private memory: heap, stacks, anonymous pages; the
    // region's shared pages are `RssShmem`), sampled every 10 ms from the
    // start: the region reserved, the fill and the generations that carry
    // it, the small writes after.
    let sampler = Sampler::start(pid as u32, Duration::from_millis(10));
    let running = rss_anon(pid as u32).expect("the supervisor's /proc/<pid>/status");
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
    let most = sampler.finish().expect("readings of the supervisor's RssAnon");
    sup.signal(libc::SIGTERM);
    sup.wait();
    // The snapshotter's page hashes alone are 2 MiB at 1 GiB: a smaller
    // figure is not a reading of this supervisor.
    assert!(
        running > 0 && most >= 2 << 20,
        "RssAnon read as {running} bytes at start and {most} at most"
    );
    assert!(
        most <= BOUND,
        "the supervisor's private memory reached {} MiB, over the bound of {} MiB for a 1 GiB region holding {} MiB of data",
        most >> 20,
        BOUND >> 20,
        FILL >> 20
    );
    eprintln!("most RssAnon: {} MiB", most >> 20);
}

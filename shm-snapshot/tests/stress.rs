//! Bounded stress tests of a client committing as fast as it can while an
//! observer takes snapshots of the same memfd through a read-only mapping,
//! from another thread and from another process.
//!
//! The ring is small and the table has few slots, so nearly every commit
//! reuses a slot and a fair share of them wrap over older units' bytes: the
//! observer constantly copies units that are being overwritten. Every unit
//! the observer's Post keeps must be intact, byte for byte, along with the
//! arena record it describes.

#![cfg(not(loom))]

use std::fs::File;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use shm_snapshot::layout::UnitRef;
use shm_snapshot::{Client, Config, Observer, Region, UnitId};

/// Big enough for an arena record per slot; small enough to create in a
/// blink.
const REGION_BYTES: u64 = 8 << 20;

/// Eight slots and a 64 KiB ring: with units of up to 24 KiB, slot reuse and
/// ring wrap-around happen every few commits.
const CONFIG: Config = Config {
    slots: 8,
    ring_bytes: 64 << 10,
    chunk_bytes: 64 << 10,
};

/// The committer runs at least this long, so every run makes thousands of
/// commits...
const MIN_COMMIT_TIME: Duration = Duration::from_millis(750);

/// ...and then until the observer has seen `ENOUGH`, or this long at most:
/// on a busy machine the two sides may seldom run at the same time, and
/// the run goes on to find races rather than pass without them.
const MAX_COMMIT_TIME: Duration = Duration::from_secs(4);

/// Upper bound on commits, should the machine be very fast.
const MAX_COMMITS: u64 = 1_000_000;

/// What the observer must see before the committer may stop early: units
/// kept and checked, snapshots that raced a commit, and torn copies that
/// Post rejected. An idle two-core machine gets there in well under a
/// second.
const ENOUGH: Seen = Seen {
    snapshots: 0,
    overlapping: 50,
    kept: 1000,
    rejected: 0,
    torn: 10,
};

/// What a run must have seen to pass, however busy the machine: units kept
/// and checked, and at least one snapshot that raced a commit.
const MIN_KEPT: u64 = 200;
const MIN_OVERLAPPING: u64 = 1;

/// Bytes of the header at the start of every unit long enough to hold one:
/// the unit's id, its length and a checksum of the rest.
const UNIT_HEADER: usize = 16;

/// Bytes of the arena record each unit describes, kept at index
/// `seq % slots`: the unit that next writes that record reuses the slot, so
/// its reservation invalidates the unit first (the arena contract).
const ARENA_RECORD: usize = 64;

/// The environment variable that makes this test binary the committer of
/// the cross-process test, and the marker of the line it reports on.
const CHILD_ENV: &str = "SHM_SNAPSHOT_STRESS_COMMITTER";
const CHILD_REPORT: &str = "stress committer: last unit ";
/// The test that runs as the committer process.
const CHILD_TEST: &str = "committer_process_commits_into_the_region_at_fd_3";

/// Held by each run, so the two runs take turns at the machine's cores
/// instead of starving each other's committer and observer.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_run_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SplitMix64: a cheap, well-mixed function of a counter.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The length of unit `seq`: mostly up to 4 KiB, one in eight up to 24 KiB
/// so that the ring wraps over several older units at once. Zero-length and
/// header-less units happen too.
fn unit_len(seq: u64) -> usize {
    let h = mix(seq);
    let max = if h & 7 == 0 { 24 << 10 } else { 4 << 10 };
    ((h >> 8) % (max + 1)) as usize
}

/// Deterministic bytes derived from `seed`, `len` of them.
fn stream(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len.div_ceil(8) as u64)
        .flat_map(|i| mix(seed ^ i.rotate_left(40)).to_le_bytes())
        .collect();
    bytes.truncate(len);
    bytes
}

fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The bytes of unit `seq`: a header (id, length, checksum of the body)
/// when the unit is long enough, then a body derived from the id.
fn unit_bytes(seq: u64) -> Vec<u8> {
    let len = unit_len(seq);
    let mut bytes = stream(seq, len);
    if len >= UNIT_HEADER {
        let sum = checksum(&bytes[UNIT_HEADER..]);
        bytes[..8].copy_from_slice(&seq.to_le_bytes());
        bytes[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        bytes[12..16].copy_from_slice(&sum.to_le_bytes());
    }
    bytes
}

/// Whether `bytes` are exactly unit `seq`: a unit with a header must agree
/// with itself (id, length, checksum) and with the body its id derives.
fn unit_is_intact(seq: u64, bytes: &[u8]) -> bool {
    if bytes.len() >= UNIT_HEADER {
        let field = |range: std::ops::Range<usize>| &bytes[range];
        let self_consistent = field(0..8) == seq.to_le_bytes()
            && field(8..12) == (bytes.len() as u32).to_le_bytes()
            && field(12..16) == checksum(&bytes[UNIT_HEADER..]).to_le_bytes();
        if !self_consistent {
            return false;
        }
    }
    bytes == unit_bytes(seq)
}

/// The arena record unit `seq` describes.
fn arena_record(seq: u64) -> Vec<u8> {
    stream(!seq, ARENA_RECORD)
}

fn arena_record_at(seq: u64) -> u64 {
    (seq % CONFIG.slots) * ARENA_RECORD as u64
}

/// Whether the committer should stop, `started` being when it started and
/// `enough` whether the observer has seen enough.
fn time_to_stop(started: Instant, enough: bool) -> bool {
    let elapsed = started.elapsed();
    elapsed >= MAX_COMMIT_TIME || (elapsed >= MIN_COMMIT_TIME && enough)
}

/// Commits units 1, 2, ... with their arena records until `stop` (asked
/// every 64 commits) or `MAX_COMMITS`; returns the last id.
fn commit_until(client: &mut Client, stop: impl Fn() -> bool) -> u64 {
    let mut last = 0;
    while last < MAX_COMMITS && (last % 64 != 0 || !stop()) {
        let seq = last + 1;
        let (id, ()) = client
            .commit_with(&unit_bytes(seq), |tx| {
                assert_eq!(tx.id(), UnitId(seq));
                tx.arena()
                    .write(arena_record_at(seq) as usize, &arena_record(seq))
            })
            .expect("unit fits the ring and record fits the arena");
        assert_eq!(id, UnitId(seq));
        last = seq;
    }
    last
}

/// What the observer saw over a run.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    snapshots: u64,
    /// Snapshots during which the commit count moved.
    overlapping: u64,
    kept: u64,
    rejected: u64,
    /// Pre units whose copy was not intact; Post must have rejected each.
    torn: u64,
}

/// The observer's side of a run: snapshots of the region until `stop`.
struct Snapshotter {
    observer: Observer,
    seen: Seen,
    pre: Vec<UnitRef>,
    kept: Vec<UnitRef>,
}

impl Snapshotter {
    fn new(observer: Observer) -> Snapshotter {
        Snapshotter {
            observer,
            seen: Seen::default(),
            pre: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// One snapshot: Pre, copy every Pre unit and its arena record, Post.
    /// Asserts every kept unit and record intact; returns the kept units'
    /// ids in sequence order.
    fn snapshot(&mut self) -> Vec<u64> {
        let observer = &self.observer;
        let arena = observer.geometry().arena_offset;
        let count_before = observer.commit_count();
        let anomalies = observer.pre(&mut self.pre);
        assert!(anomalies.is_clean(), "Pre found {anomalies:?}");
        let copies: Vec<(Vec<u8>, Vec<u8>)> = self
            .pre
            .iter()
            .map(|u| {
                let mut record = vec![0u8; ARENA_RECORD];
                observer
                    .copy_range(arena + arena_record_at(u.seq()), &mut record)
                    .expect("arena record inside the region");
                (observer.copy_unit(u), record)
            })
            .collect();
        let anomalies = observer.post(&self.pre, &mut self.kept);
        assert!(anomalies.is_clean(), "Post found {anomalies:?}");
        if observer.commit_count() != count_before {
            self.seen.overlapping += 1;
        }
        self.seen.snapshots += 1;
        for (unit, (bytes, record)) in self.pre.iter().zip(&copies) {
            let intact = unit_is_intact(unit.seq(), bytes) && *record == arena_record(unit.seq());
            if self.kept.contains(unit) {
                assert!(
                    unit_is_intact(unit.seq(), bytes),
                    "Post kept unit {unit:?} but its copy is torn"
                );
                assert_eq!(
                    *record,
                    arena_record(unit.seq()),
                    "Post kept unit {unit:?} but its arena record is torn"
                );
                self.seen.kept += 1;
            } else {
                self.seen.rejected += 1;
                self.seen.torn += u64::from(!intact);
            }
        }
        for pair in self.kept.windows(2) {
            assert!(
                pair[0].seq() < pair[1].seq() && pair[0].end() <= pair[1].offset,
                "{pair:?}"
            );
        }
        self.kept.iter().map(UnitRef::seq).collect()
    }

    /// Snapshots until `done` says so, calling `enough` once when it has
    /// seen `ENOUGH`; then checks the run counted.
    fn run(&mut self, mut done: impl FnMut() -> bool, enough: impl FnOnce()) {
        let mut enough = Some(enough);
        while !done() {
            self.snapshot();
            let seen = &self.seen;
            let enough_seen = seen.kept >= ENOUGH.kept
                && seen.overlapping >= ENOUGH.overlapping
                && seen.torn >= ENOUGH.torn;
            if let Some(enough) = enough.take_if(|_| enough_seen) {
                enough();
            }
        }
        let seen = &self.seen;
        eprintln!("{seen:?}");
        assert!(seen.kept >= MIN_KEPT, "too few units checked: {seen:?}");
        assert!(
            seen.overlapping >= MIN_OVERLAPPING,
            "no snapshot raced a commit: {seen:?}"
        );
    }

    /// After the committer stopped: every valid unit is kept, the newest
    /// being the last one committed.
    fn assert_quiet_region_ends_with(&mut self, last: u64) {
        let kept = self.snapshot();
        assert_eq!(
            kept.last(),
            Some(&last),
            "kept after the committer stopped: {kept:?}"
        );
        assert_eq!(self.pre.len(), self.kept.len(), "a quiet region loses no unit");
    }
}

/// Maps `file` read-only and observes it.
fn observe_read_only(file: &File) -> Observer {
    let file = file.try_clone().expect("dup the memfd");
    // SAFETY: the file is a memfd made by `Region::anonymous`, sealed against
    // shrinking, so the mapping never loses its pages.
    let region = unsafe { Region::from_file_read_only(file) }.expect("map the memfd read-only");
    Observer::new(region).expect("laid-out region is observable")
}

#[test]
fn units_kept_while_another_thread_commits_are_intact() {
    let _turn = one_run_at_a_time();
    let region = Region::anonymous(REGION_BYTES).expect("create a region");
    let file = region.file().try_clone().expect("dup the memfd");
    let mut client = Client::open(region, &CONFIG).expect("blank region lays out");
    let mut snapshotter = Snapshotter::new(observe_read_only(&file));
    let enough = AtomicBool::new(false);
    let done = AtomicBool::new(false);

    let last = thread::scope(|scope| {
        let committer = scope.spawn(|| {
            let started = Instant::now();
            let last = commit_until(&mut client, || time_to_stop(started, enough.load(Relaxed)));
            done.store(true, Relaxed);
            last
        });
        snapshotter.run(|| done.load(Relaxed), || enough.store(true, Relaxed));
        committer.join().expect("committer thread panicked")
    });

    snapshotter.assert_quiet_region_ends_with(last);
    let recovered = client.recover().expect("client recovers its units");
    assert_eq!(recovered.last().map(|u| u.id), Some(UnitId(last)));
    for unit in &recovered {
        assert!(
            unit_is_intact(unit.id.0, &unit.bytes),
            "recovered {:?} is torn",
            unit.id
        );
    }
}

#[test]
fn units_kept_while_another_process_commits_are_intact() {
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let _turn = one_run_at_a_time();

    let region = Region::anonymous(REGION_BYTES).expect("create a region");
    let file = region.file().try_clone().expect("dup the memfd");
    // Lay the region out here; the committer process attaches to it.
    drop(Client::open(region, &CONFIG).expect("blank region lays out"));
    let mut snapshotter = Snapshotter::new(observe_read_only(&file));

    let mut command = Command::new(std::env::current_exe().expect("path of this test binary"));
    command
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let memfd = file.as_raw_fd();
    // Runs between fork and exec: only async-signal-safe system calls, no
    // allocation, no lock.
    let place_region_at_fd_3 = move || {
        // SAFETY: `memfd` stays open in the parent until the child is spawned,
        // so it is open in the forked child while this runs.
        let source = unsafe { BorrowedFd::borrow_raw(memfd) };
        if memfd == 3 {
            // dup2 onto itself would leave close-on-exec set.
            rustix::io::fcntl_setfd(source, rustix::io::FdFlags::empty())?;
        } else {
            // SAFETY: fd 3 is only named here as dup2's target; `ManuallyDrop`
            // keeps this handle from ever closing it.
            let mut target = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(3) });
            rustix::io::dup2(source, &mut target)?;
        }
        Ok(())
    };
    // SAFETY: the closure is async-signal-safe (see above), as code between
    // fork and exec must be.
    unsafe { command.pre_exec(place_region_at_fd_3) };
    let mut child = command.spawn().expect("spawn the committer process");

    // Closing the committer's stdin tells it the observer has seen enough.
    let mut tell_enough = child.stdin.take();
    let started = Instant::now();
    snapshotter.run(
        || {
            if started.elapsed() > MAX_COMMIT_TIME * 5 {
                let _ = child.kill();
                panic!("committer process did not finish");
            }
            child.try_wait().expect("poll the committer process").is_some()
        },
        || drop(tell_enough.take()),
    );
    let status = child.wait().expect("wait for the committer process");
    let mut output = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut output)
        .expect("read the committer's report");
    assert!(status.success(), "committer process failed ({status}):\n{output}");
    // The harness prints the test's name on the same line, before the report.
    let last: u64 = output
        .split_once(CHILD_REPORT)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("committer process did not report its last unit:\n{output}"));

    snapshotter.assert_quiet_region_ends_with(last);
}

/// The committer of `units_kept_while_another_process_commits_are_intact`:
/// does nothing unless that test started this binary as its child. Stops
/// early once its stdin closes: the observer has seen enough.
#[test]
fn committer_process_commits_into_the_region_at_fd_3() {
    use std::os::fd::FromRawFd;

    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // SAFETY: the parent test placed its memfd at fd 3 of this process, and
    // nothing else here owns fd 3.
    let file = unsafe { File::from_raw_fd(3) };
    // SAFETY: the memfd was made by `Region::anonymous`, sealed against
    // shrinking.
    let region = unsafe { Region::from_file(file) }.expect("map the inherited region");
    let mut client = Client::open(region, &CONFIG).expect("attach to the laid-out region");
    assert!(client.recover().expect("recover").is_empty());
    let enough = std::sync::Arc::new(AtomicBool::new(false));
    let told = enough.clone();
    thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        told.store(true, Relaxed);
    });
    let started = Instant::now();
    let last = commit_until(&mut client, || time_to_stop(started, enough.load(Relaxed)));
    println!("{CHILD_REPORT}{last}");
}

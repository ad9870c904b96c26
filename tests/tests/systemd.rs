//! The supervisor under a stand-in for systemd: a real notify socket made by
//! the test (no systemd needed), the region passed through the file
//! descriptor store and handed back to a second supervisor.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;
use std::time::Duration;

use shm_snapshot_tests::systemd::{
    NotifySocket, is_memfd, resealed_copy, supervise_with_stored_region,
    supervise_with_stored_region_and_a_closed_fd, supervise_with_unaddressed_region,
};
use shm_snapshot_tests::torture::{flip_byte, open_store, record};
use shm_snapshot_tests::{Proc, Stream, bin, generations, send, wait_gone, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

/// A region small enough to copy in no time, large enough for the default
/// 1 MiB ring.
const SIZE: &str = "--size=4MiB";
const SIZE_BYTES: u64 = 4 << 20;

fn child_pid(line: &str) -> i32 {
    line.strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .expect("pid line")
}

/// The payloads of the `recovered` lines of the last start.
fn recovered(proc: &Proc) -> Vec<String> {
    let mut current = Vec::new();
    for line in proc.lines(Stream::Out) {
        if line.starts_with("pid ") {
            current.clear();
        } else if let Some(rest) = line.strip_prefix("recovered ") {
            current.push(rest.split_once(' ').expect("id payload").1.to_owned());
        }
    }
    current
}

/// Waits for the program's `ready`, which may have come already: stdout
/// and stderr race each other, so it can arrive before a supervisor line
/// logged earlier that the test waited for.
fn ready(sup: &mut Proc) {
    sup.seen_or_expect(Stream::Out, |l| l == "ready", "ready");
}

fn units(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|k| format!("unit-{k}")).collect()
}

/// The supervisor on store `state` in `dir`, notifying `notify`.
fn supervise(dir: &std::path::Path, notify: &NotifySocket, env: &[(&str, &str)], args: &[&str]) -> Proc {
    let mut command = Command::new(bin("shm-restore"));
    command
        .arg("--snapshot=state")
        .args([SIZE, "--fsync=never", "--backoff=10ms"])
        .args(args)
        .current_dir(dir)
        .env("NOTIFY_SOCKET", notify.path());
    for (key, value) in env {
        command.env(key, value);
    }
    Proc::spawn(command)
}

/// The one descriptor `FDSTORE=1` carried, after checking the message.
fn stored_region(notify: &mut NotifySocket) -> OwnedFd {
    let at = notify.expect(|n| n.has("FDSTORE=1"), "FDSTORE=1");
    let stored = &mut notify.seen[at];
    assert_eq!(stored.value("FDNAME"), Some("SHM_SHARED_FD"), "{:?}", stored.text);
    assert_eq!(stored.fds.len(), 1, "FDSTORE=1 carries the region");
    let fd = stored.fds.pop().expect("one descriptor");
    assert!(is_memfd(&fd), "the stored descriptor is a memfd");
    fd
}

#[test]
fn supervisor_notifies_ready_status_watchdog_fdstore_and_stopping() {
    let dir = workdir();
    let mut notify = NotifySocket::bind(dir.path());
    let mut sup = supervise(
        dir.path(),
        &notify,
        &[("WATCHDOG_USEC", "200000")],
        &["--", CHILD, "--commit", "3", "--then", "sleep"],
    );
    let pid = child_pid(&sup.expect_out("pid "));

    let region = File::from(stored_region(&mut notify));
    assert_eq!(region.metadata().expect("fstat").len(), SIZE_BYTES);

    // READY=1 comes once the program runs: its status names the pid the
    // program printed, which exists only after the start.
    let ready = notify.expect(|n| n.has("READY=1"), "READY=1");
    let fdstore = notify.expect(|n| n.has("FDSTORE=1"), "FDSTORE=1");
    assert!(
        fdstore < ready,
        "the region is stored before the service is ready"
    );
    let status = notify.seen[ready].value("STATUS").expect("READY=1 with a status");
    assert!(
        status.starts_with(&format!("running pid {pid}, generation ")) && status.ends_with(", restarts 0"),
        "{status}"
    );

    // Once the commits are persisted, the status names a generation.
    sup.expect_out("done");
    notify.expect(
        |n| {
            n.value("STATUS").is_some_and(|s| {
                s.starts_with(&format!("running pid {pid}, generation ")) && !s.contains("generation none")
            })
        },
        "STATUS with a generation",
    );

    // WATCHDOG=1 every half WATCHDOG_USEC: about 15 in 1.5 s.
    let before = notify.seen.len();
    notify.collect_for(Duration::from_millis(1500));
    let pings = notify.seen[before..]
        .iter()
        .filter(|n| n.has("WATCHDOG=1"))
        .count();
    assert!(
        (10..=20).contains(&pings),
        "{pings} pings in 1.5 s at WATCHDOG_USEC=200000:\n{}",
        notify.transcript()
    );

    // A relaunch shows in the status.
    send(pid, libc::SIGKILL);
    let second = child_pid(&sup.expect_out("pid "));
    notify.expect(
        |n| {
            n.value("STATUS").is_some_and(|s| {
                s.starts_with(&format!("running pid {second}, ")) && s.ends_with(", restarts 1")
            })
        },
        "STATUS after the relaunch",
    );

    sup.signal(libc::SIGTERM);
    notify.expect(|n| n.has("STOPPING=1"), "STOPPING=1");
    let status = sup.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", sup.transcript());
    notify.collect_for(Duration::from_millis(50));
    let readies = notify.seen.iter().filter(|n| n.has("READY=1")).count();
    assert_eq!(
        readies,
        1,
        "READY=1 once, not at every relaunch:\n{}",
        notify.transcript()
    );
}

#[test]
fn the_program_sees_none_of_the_supervisors_systemd_variables() {
    let dir = workdir();
    let mut notify = NotifySocket::bind(dir.path());
    // WATCHDOG_PID names the supervisor: a shell sets it to its own pid
    // and execs the supervisor.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" "$@""#)
        .arg(bin("shm-restore"))
        .args([
            "--snapshot=state",
            SIZE,
            "--fsync=never",
            "--",
            CHILD,
            "--list-fds",
            "--then",
            "sleep",
        ])
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "200000");
    let mut sup = Proc::spawn(command);
    ready(&mut sup);
    // The supervisor was given all three (its environment at exec)...
    let given = std::fs::read(format!("/proc/{}/environ", sup.pid())).expect("the supervisor's environ");
    let given: Vec<String> = given
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for want in [
        format!("NOTIFY_SOCKET={}", notify.path().display()),
        "WATCHDOG_USEC=200000".to_owned(),
        format!("WATCHDOG_PID={}", sup.pid()),
    ] {
        assert!(
            given.contains(&want),
            "the supervisor was given {want}: {given:?}"
        );
    }
    // ...and used them: it pings the watchdog.
    notify.expect(|n| n.has("WATCHDOG=1"), "WATCHDOG=1");
    // The program sees none of them.
    let out = sup.lines(Stream::Out);
    for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        let unset = format!("env {name} unset");
        assert!(
            out.contains(&unset),
            "{name} reaches the program:\n{}",
            sup.transcript()
        );
    }
    sup.signal(libc::SIGTERM);
    sup.wait();
}

#[test]
fn notifications_reach_an_abstract_socket() {
    let dir = workdir();
    let mut notify = NotifySocket::bind_abstract(&format!("shm-restore-test-{}", std::process::id()));
    let mut sup = supervise(dir.path(), &notify, &[], &["--", CHILD, "--then", "sleep"]);
    notify.expect(|n| n.has("READY=1"), "READY=1");
    sup.signal(libc::SIGTERM);
    notify.expect(|n| n.has("STOPPING=1"), "STOPPING=1");
    sup.wait();
}

/// Runs a supervisor with `--no-continuous` until the store holds units
/// 0..3 (a post-mortem generation) while the region holds units 0..6, then
/// kills the supervisor with SIGKILL. Returns the region as systemd's
/// file descriptor store would have kept it.
fn memory_ahead_of_disk(dir: &std::path::Path) -> File {
    memory_ahead_of_disk_by(dir, 3)
}

/// [`memory_ahead_of_disk`] with `commits` units committed by each of the
/// two programs: the store holds the first program's units (as many as
/// the unit table keeps), the region the second's too.
fn memory_ahead_of_disk_by(dir: &std::path::Path, commits: u32) -> File {
    let mut notify = NotifySocket::bind(dir);
    let commits_arg = commits.to_string();
    let mut sup = supervise(
        dir,
        &notify,
        &[],
        &[
            "--no-continuous",
            "--",
            CHILD,
            "--commit",
            &commits_arg,
            "--then",
            "sleep",
        ],
    );
    let first = child_pid(&sup.expect_out("pid "));
    let region = File::from(stored_region(&mut notify));
    sup.expect_out("done");
    send(first, libc::SIGKILL);
    let second = child_pid(&sup.expect_out("pid "));
    sup.expect_out("done");
    // Persisted by the snapshot thread once the relaunched program runs.
    sup.seen_or_expect(
        Stream::Err,
        shm_snapshot_tests::units_in_store_after_death,
        "the units committed before the death in the store",
    );
    assert_eq!(recovered(&sup).last(), Some(&format!("unit-{}", commits - 1)));
    sup.signal(libc::SIGKILL);
    sup.wait();
    assert!(wait_gone(second), "the program dies with its supervisor");
    region
}

#[test]
fn region_handed_back_from_the_fd_store_keeps_what_the_disk_lacks() {
    let dir = workdir();
    let region = memory_ahead_of_disk(dir.path());
    let mut notify = NotifySocket::bind(dir.path());
    let mut sup = supervise_with_stored_region(
        dir.path(),
        &region,
        Some(notify.path()),
        &[
            "--snapshot=state",
            SIZE,
            "--fsync=never",
            "--no-continuous",
            "--",
            CHILD,
            "--then",
            "sleep",
        ],
    );
    let taken = sup.expect_err("region taken back from the fd store");
    assert!(
        taken.contains("units=6"),
        "the newer units are persisted: {taken}"
    );
    ready(&mut sup);
    assert_eq!(recovered(&sup), units(0..6), "{}", sup.transcript());
    // The same memfd goes back into the store.
    let stored = File::from(stored_region(&mut notify));
    let inode = |f: &File| f.metadata().expect("fstat").ino();
    assert_eq!(inode(&stored), inode(&region));
    let removals = notify.seen.iter().filter(|n| n.has("FDSTOREREMOVE=1")).count();
    assert_eq!(removals, 0, "a region taken back is not removed from the store");
    sup.signal(libc::SIGTERM);
    sup.wait();
}

/// The supervisor on the store in `dir`, handed back `region`, once it
/// took it back: its units are persisted (`units=6`) and the program
/// recovers all six.
fn takes_back(dir: &std::path::Path, region: &File) -> Proc {
    let mut sup = supervise_with_stored_region(
        dir,
        region,
        None,
        &[
            "--snapshot=state",
            SIZE,
            "--fsync=never",
            "--",
            CHILD,
            "--then",
            "sleep",
        ],
    );
    let taken = sup.expect_err("region taken back from the fd store");
    assert!(taken.contains("units=6"), "{}", sup.transcript());
    ready(&mut sup);
    assert_eq!(recovered(&sup), units(0..6), "{}", sup.transcript());
    sup
}

#[test]
fn take_back_skips_a_generation_that_verifies_but_does_not_restore() {
    // As a normal start does: the newest generation's meta blob is sound
    // on disk but no region accepts it; the region is compared with the
    // one before.
    let dir = workdir();
    let region = memory_ahead_of_disk(dir.path());
    {
        let mut store = open_store(&dir.path().join("state"));
        let loaded = store.load_newest().expect("loading").expect("a generation");
        let mut tx = store.begin(loaded.image.len() as u64).expect("begin");
        tx.put_chunks(0, &loaded.image).expect("chunks");
        tx.commit(b"not a unit table").expect("commit");
    }
    let mut sup = takes_back(dir.path(), &region);
    let skipped = sup.seen_or_expect(
        Stream::Err,
        |l| l.contains("skipping a damaged generation"),
        "the skip",
    );
    assert!(skipped.contains("generation=2"), "{skipped}");
    sup.signal(libc::SIGTERM);
    sup.wait();
}

#[test]
fn region_is_taken_back_when_no_generation_on_disk_verifies() {
    // A normal start would stop (or, with --start-empty-if-damaged, start
    // blank); the region verifies on its own and is the only state left.
    let dir = workdir();
    let region = memory_ahead_of_disk(dir.path());
    let state = dir.path().join("state");
    // Every generation's record gets a flipped byte in its header.
    let records: Vec<_> = generations(&state).iter().map(|&n| record(&state, n)).collect();
    assert!(!records.is_empty());
    for r in &records {
        flip_byte(&r.path, (r.offset + 20) as i64);
    }
    assert!(generations(&state).is_empty());
    let mut damaged: Vec<_> = records.into_iter().map(|r| r.path).collect();
    damaged.dedup();
    let before: Vec<Vec<u8>> = damaged
        .iter()
        .map(|f| std::fs::read(f).expect("reading"))
        .collect();
    let mut sup = takes_back(dir.path(), &region);
    sup.seen_or_expect(
        Stream::Err,
        |l| l.contains("no generation on disk verifies"),
        "the warning",
    );
    sup.signal(libc::SIGTERM);
    sup.wait();
    let after: Vec<Vec<u8>> = damaged
        .iter()
        .map(|f| std::fs::read(f).expect("reading"))
        .collect();
    assert!(before == after, "the damaged generations stay as they were");
    assert!(
        !generations(&state).is_empty(),
        "the region's units are persisted as a new generation"
    );
}

/// Prepares a region as `memory_ahead_of_disk` leaves it with `spoil`,
/// hands it back to a second supervisor, and checks that it refuses it
/// for a reason containing `why`, puts a fresh memfd into the store in its
/// place, and starts the program on the newest generation on disk, whose
/// units are `expected`.
fn refused_region_falls_back_to_disk(
    spoil: impl FnOnce(&std::path::Path, File) -> File,
    why: &str,
    expected: Vec<String>,
) {
    refused_region_ahead_by_falls_back_to_disk(3, spoil, why, expected)
}

/// [`refused_region_falls_back_to_disk`] on [`memory_ahead_of_disk_by`]
/// `commits`.
fn refused_region_ahead_by_falls_back_to_disk(
    commits: u32,
    spoil: impl FnOnce(&std::path::Path, File) -> File,
    why: &str,
    expected: Vec<String>,
) {
    let dir = workdir();
    let region = spoil(dir.path(), memory_ahead_of_disk_by(dir.path(), commits));
    let mut notify = NotifySocket::bind(dir.path());
    let mut sup = supervise_with_stored_region(
        dir.path(),
        &region,
        Some(notify.path()),
        &[
            "--snapshot=state",
            SIZE,
            "--fsync=never",
            "--",
            CHILD,
            "--then",
            "sleep",
        ],
    );
    let refused = sup.expect_err("is not taken back");
    assert!(refused.contains(why), "{refused}");
    ready(&mut sup);
    assert_eq!(recovered(&sup), expected, "the newest generation on disk");
    assert!(
        !sup.lines(Stream::Err)
            .iter()
            .any(|l| l.contains("region taken back")),
        "{}",
        sup.transcript()
    );
    // The untrusted memfd leaves the store; a fresh one takes its place.
    let removal = notify.expect(|n| n.has("FDSTOREREMOVE=1"), "FDSTOREREMOVE=1");
    assert_eq!(notify.seen[removal].value("FDNAME"), Some("SHM_SHARED_FD"));
    let stored = File::from(stored_region(&mut notify));
    let inode = |f: &File| f.metadata().expect("fstat").ino();
    assert_ne!(inode(&stored), inode(&region));
    sup.signal(libc::SIGTERM);
    sup.wait();
}

#[test]
fn region_with_a_scribbled_header_is_not_taken_back() {
    refused_region_falls_back_to_disk(
        |_, region| {
            region
                .write_all_at(b"scribble", 0)
                .expect("scribbling over the magic");
            region
        },
        "header does not verify",
        units(0..3),
    );
}

#[test]
fn region_with_a_corrupt_slot_is_not_taken_back() {
    // Slot 7 is empty (units 1..=6 live in slots 1..=6); tag 3 has
    // undefined state bits.
    let slot_7 = shm_snapshot::layout::HEADER_BYTES + 7 * shm_snapshot::layout::slot::SIZE;
    refused_region_falls_back_to_disk(
        |_, region| {
            region
                .write_all_at(&3u64.to_le_bytes(), slot_7)
                .expect("scribbling a tag");
            region
        },
        "1 corrupt slots",
        units(0..3),
    );
}

#[test]
fn region_older_than_the_store_is_not_taken_back() {
    refused_region_falls_back_to_disk(
        |dir, region| {
            // Another supervisor on the store moves it past the region.
            let mut sup = Proc::supervise(
                dir,
                "state",
                &[SIZE, "--fsync=never"],
                &[CHILD, "--commit", "4", "--then", "sleep"],
            );
            sup.expect_out("done");
            sup.signal(libc::SIGTERM);
            sup.wait();
            region
        },
        "older than the store",
        units(0..7),
    );
}

/// Another supervisor on the store, while the region waits in the fd
/// store: it restores units 0..3 and commits `commits` more, of
/// `unit_bytes` bytes each, persisted when it stops.
fn another_run_on_the_store(dir: &std::path::Path, commits: &str, unit_bytes: &str) {
    let mut sup = Proc::supervise(
        dir,
        "state",
        &[SIZE, "--fsync=never"],
        &[
            CHILD,
            "--commit",
            commits,
            "--unit-bytes",
            unit_bytes,
            "--then",
            "sleep",
        ],
    );
    sup.expect_out("done");
    sup.signal(libc::SIGTERM);
    sup.wait();
}

#[test]
fn region_ahead_of_a_store_another_run_moved_on_is_not_taken_back() {
    // The store's newest generation (units 0..3 and the other run's two
    // padded ones) has fewer units than the region (0..6), but the region's
    // units 4 and 5 are not the store's: taking it back would replace the
    // other run's history with a stale one.
    let mut expected = units(0..3);
    expected.extend(["unit-3..........", "unit-4.........."].map(String::from));
    refused_region_falls_back_to_disk(
        |dir, region| {
            another_run_on_the_store(dir, "2", "16");
            region
        },
        "its unit 4 differs from generation",
        expected,
    );
}

#[test]
fn region_whose_newest_unit_differs_from_the_stores_is_not_taken_back() {
    // The other run commits the same three units the region holds, so the
    // store's newest unit has the region's newest sequence number, offset
    // and length; only the bytes tell the histories apart.
    refused_region_falls_back_to_disk(
        |dir, region| {
            another_run_on_the_store(dir, "3", "0");
            let observer = shm_snapshot::snapshot::observe_file(&region)
                .expect("observing the region")
                .expect("laid out");
            let (mut pre, mut kept) = (Vec::new(), Vec::new());
            observer.pre(&mut pre);
            observer.post(&pre, &mut kept);
            let newest = kept.last().expect("units");
            assert_eq!((newest.seq(), newest.len), (6, 6), "unit-5 in seq 6");
            region
                .write_all_at(b"unit-9", observer.geometry().ring_at(newest.offset))
                .expect("rewriting the newest unit's bytes");
            region
        },
        "its unit 6 differs from generation",
        units(0..6),
    );
}

#[test]
fn region_whose_program_wrote_the_stores_units_out_of_its_ring_is_not_taken_back() {
    // 300 units per program on a 256-slot table: the store's newest unit
    // (the first program's last) has left the region's ring, so nothing in
    // the region shows it continues that generation. Refused; the disk's
    // generation (its newest 256 units) is the fallback.
    refused_region_ahead_by_falls_back_to_disk(
        300,
        |_, region| region,
        "is no longer in its ring",
        units(44..300),
    );
}

#[test]
fn region_sealed_against_writes_is_not_taken_back() {
    // The unit table could not be rewritten, nor the program map it
    // writable; nothing is persisted from it either.
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    refused_region_falls_back_to_disk(
        |_, region| resealed_copy(&region, seals),
        "sealed against writes",
        units(0..3),
    );
}

#[test]
fn region_open_to_further_seals_is_not_taken_back() {
    // Whoever else holds it could seal it against writes at any time.
    refused_region_falls_back_to_disk(
        |_, region| resealed_copy(&region, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
        "further seals",
        units(0..3),
    );
}

#[test]
fn descriptors_without_listen_pid_are_not_taken() {
    // systemd always sets LISTEN_PID; LISTEN_FDS without it was meant for
    // some other process, and the region at fd 3 is not the supervisor's.
    let dir = workdir();
    let region = memory_ahead_of_disk(dir.path());
    let mut notify = NotifySocket::bind(dir.path());
    let mut sup = supervise_with_unaddressed_region(
        dir.path(),
        &region,
        Some(notify.path()),
        &[
            "--snapshot=state",
            SIZE,
            "--fsync=never",
            "--",
            CHILD,
            "--then",
            "sleep",
        ],
    );
    ready(&mut sup);
    assert_eq!(
        recovered(&sup),
        units(0..3),
        "the disk's units: {}",
        sup.transcript()
    );
    assert!(
        !sup.lines(Stream::Err).iter().any(|l| l.contains("fd store")),
        "{}",
        sup.transcript()
    );
    let stored = File::from(stored_region(&mut notify));
    let inode = |f: &File| f.metadata().expect("fstat").ino();
    assert_ne!(inode(&stored), inode(&region), "a fresh region is stored");
    assert_eq!(
        notify.seen.iter().filter(|n| n.has("FDSTOREREMOVE=1")).count(),
        0,
        "nothing was taken from the store, so nothing is removed"
    );
    sup.signal(libc::SIGTERM);
    sup.wait();
}

#[test]
fn an_announced_descriptor_that_is_not_open_is_skipped() {
    let dir = workdir();
    let region = memory_ahead_of_disk(dir.path());
    let mut notify = NotifySocket::bind(dir.path());
    let mut sup = supervise_with_stored_region_and_a_closed_fd(
        dir.path(),
        &region,
        Some(notify.path()),
        &[
            "--snapshot=state",
            SIZE,
            "--fsync=never",
            "--",
            CHILD,
            "--then",
            "sleep",
        ],
    );
    let warning = sup.expect_err("is not open");
    assert!(warning.contains("fd=4"), "{warning}");
    sup.expect_err("region taken back from the fd store");
    ready(&mut sup);
    assert_eq!(recovered(&sup), units(0..6), "{}", sup.transcript());
    let stored = File::from(stored_region(&mut notify));
    let inode = |f: &File| f.metadata().expect("fstat").ino();
    assert_eq!(inode(&stored), inode(&region));
    sup.signal(libc::SIGTERM);
    let status = sup.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", sup.transcript());
}

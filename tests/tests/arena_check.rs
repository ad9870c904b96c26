//! `--arena-scan=check` against a real program: an arena write the program
//! did not mark is reported in one line, once.

use shm_snapshot_tests::{Proc, Stream, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

#[test]
fn check_mode_names_the_chunk_of_an_unmarked_write_and_its_generation() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--arena-scan=check", "--size=8MiB", "--fsync=never"],
        // Commits keep coming after the write (until the test stops it),
        // so the check sees one published after it however late its
        // snapshots run.
        &[
            CHILD,
            "--unmarked-write",
            "7",
            "--store",
            "state",
            "--commit",
            "1000",
            "--pause-ms",
            "20",
            "--then",
            "sleep",
        ],
    );
    sup.expect_out("unmarked 7");
    let line = sup.expect_err("unmarked arena write");
    assert!(
        line.contains("chunk 7 (arena bytes 458752..524288)") && line.contains("found by generation "),
        "{line}"
    );
    sup.signal(libc::SIGTERM);
    sup.wait();
    let reports = sup
        .lines(Stream::Err)
        .iter()
        .filter(|l| l.contains("unmarked arena write"))
        .count();
    assert_eq!(reports, 1, "{}", sup.transcript());
}

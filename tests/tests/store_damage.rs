//! A damaged store across real processes: flipped bytes, truncation and
//! deleted files in the newest generation make the supervisor fall back to
//! the newest generation that is intact, saying which it skipped and why;
//! a store in which nothing is intact stops it with one error line and is
//! left exactly as it was, unless the user asks to start empty.

use std::path::Path;

use shm_snapshot::store::StoreOptions;
use shm_snapshot_tests::torture::{
    fingerprint, flip_byte, generation_field, generation_path, open_store, truncate, units_of,
};
use shm_snapshot_tests::{Proc, Stream, generation_files, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

/// One generation per run (at its exit), fast relaunches, a small region.
const AT_EXIT: &[&str] = &[
    "--no-continuous",
    "--fsync=never",
    "--size=4MiB",
    "--backoff=10ms",
];

/// Runs the supervisor once on `dir/state` with unit-child committing
/// `commits` units; returns the run after it exits with status 0.
fn run(dir: &Path, commits: &str, extra: &[&str]) -> Proc {
    let flags: Vec<&str> = AT_EXIT.iter().chain(extra).copied().collect();
    let mut run = Proc::supervise(dir, "state", &flags, &[CHILD, "--commit", commits]);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    run
}

/// Three runs: generation 1 (a base) holds unit-0..1, generation 2 (a
/// delta on 1) unit-0..4, generation 3 (a delta on 2) unit-0..8.
fn three_generations(dir: &Path) {
    for commits in ["2", "3", "4"] {
        run(dir, commits, &[]);
    }
    let store = open_store(&dir.join("state"));
    let kinds: Vec<_> = store
        .generations()
        .iter()
        .map(|g| (g.number, g.is_base()))
        .collect();
    assert_eq!(kinds, [(1, true), (2, false), (3, false)]);
}

/// The payloads unit-child printed as recovered at its first start.
fn recovered(proc: &Proc) -> Vec<String> {
    proc.lines(Stream::Out)
        .iter()
        .take_while(|l| *l != "ready")
        .filter_map(|l| l.strip_prefix("recovered "))
        .map(|rest| rest.split_once(' ').expect("id payload").1.to_owned())
        .collect()
}

fn units(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("unit-{k}")).collect()
}

/// Starts the supervisor on the damaged store; it must restore the
/// generation holding `expect_units` units and warn once per skipped
/// generation, each warning naming it and containing `why`. Returns the
/// warnings.
fn assert_falls_back(dir: &Path, expect_units: usize, skipped: &[(u64, &str)]) -> Vec<String> {
    let mut run = Proc::supervise(dir, "state", AT_EXIT, &[CHILD]);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    assert_eq!(recovered(&run), units(expect_units), "{}", run.transcript());
    let warnings: Vec<String> = run
        .lines(Stream::Err)
        .into_iter()
        .filter(|l| l.contains("skipping a damaged generation"))
        .collect();
    assert_eq!(warnings.len(), skipped.len(), "{}", run.transcript());
    for (number, why) in skipped {
        let file = format!("gen-{number:020}.snap");
        assert!(
            warnings
                .iter()
                .any(|w| generation_field(w) == Some(*number) && w.contains(&file) && w.contains(why)),
            "no warning naming generation {number} and `{why}`:\n{}",
            run.transcript()
        );
    }
    warnings
}

fn newest(dir: &Path) -> std::path::PathBuf {
    generation_path(&dir.join("state"), 3)
}

#[test]
fn flipped_byte_in_the_newest_header_falls_back_to_the_one_before() {
    let dir = workdir();
    three_generations(dir.path());
    // Inside the `number` field: the header hash no longer matches.
    flip_byte(&newest(dir.path()), 20);
    assert_falls_back(dir.path(), 5, &[(3, "header_hash")]);
}

#[test]
fn flipped_byte_in_the_newest_chunk_data_falls_back_to_the_one_before() {
    let dir = workdir();
    three_generations(dir.path());
    // The first chunk record's payload starts after the 104-byte header
    // and its 56-byte descriptor.
    flip_byte(&newest(dir.path()), 104 + 56 + 10);
    assert_falls_back(dir.path(), 5, &[(3, "chunk")]);
}

#[test]
fn flipped_byte_in_the_newest_meta_falls_back_to_the_one_before() {
    let dir = workdir();
    three_generations(dir.path());
    // The meta blob's last byte sits just before the 56-byte trailer.
    flip_byte(&newest(dir.path()), -57);
    assert_falls_back(dir.path(), 5, &[(3, "meta")]);
}

#[test]
fn newest_truncated_inside_its_header_falls_back_to_the_one_before() {
    let dir = workdir();
    three_generations(dir.path());
    truncate(&newest(dir.path()), 50);
    assert_falls_back(dir.path(), 5, &[(3, "header")]);
}

#[test]
fn deleted_newest_generation_is_simply_absent() {
    let dir = workdir();
    three_generations(dir.path());
    std::fs::remove_file(newest(dir.path())).unwrap();
    assert_falls_back(dir.path(), 5, &[]);
}

#[test]
fn deleted_delta_the_newest_builds_on_falls_back_to_an_intact_chain() {
    let dir = workdir();
    three_generations(dir.path());
    std::fs::remove_file(generation_path(&dir.path().join("state"), 2)).unwrap();
    // 3 needs 2; 1 is a base of its own.
    assert_falls_back(dir.path(), 2, &[(3, "needs generation 2, which is missing")]);
}

#[test]
fn deleted_base_of_the_newest_falls_back_to_an_older_intact_chain() {
    let dir = workdir();
    let state = dir.path().join("state");
    run(dir.path(), "2", &[]);
    run(dir.path(), "3", &[]);
    // Generation 3: generation 2's image and meta again, as a base of its
    // own (a store that writes only bases).
    {
        let mut store = shm_snapshot::store::Store::open(
            &state,
            StoreOptions {
                full_every: 1,
                fsync: false,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let loaded = store.load_newest().unwrap().unwrap();
        assert_eq!(loaded.number, 2);
        let mut tx = store.begin(loaded.image.len() as u64).unwrap();
        assert!(tx.is_base());
        tx.put_chunks(0, &loaded.image).unwrap();
        tx.commit(&loaded.meta).unwrap();
    }
    // Generation 4: a delta on the base 3, holding unit-0..8.
    run(dir.path(), "4", &[]);
    let store = open_store(&state);
    let kinds: Vec<_> = store.generations().iter().map(|g| (g.number, g.base())).collect();
    assert_eq!(kinds, [(1, 1), (2, 1), (3, 3), (4, 3)]);
    drop(store);
    std::fs::remove_file(generation_path(&state, 3)).unwrap();
    // 4 cannot be reassembled; 2's chain (1, 2) is intact.
    assert_falls_back(dir.path(), 5, &[(4, "needs generation 3, which is missing")]);
}

#[test]
fn generation_that_verifies_but_does_not_restore_is_skipped_like_a_damaged_one() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    // Generation 4: generation 3's image with a meta blob no region
    // accepts (sound hashes, unusable contents).
    {
        let mut store = open_store(&state);
        let loaded = store.load_newest().unwrap().unwrap();
        let mut tx = store.begin(loaded.image.len() as u64).unwrap();
        tx.put_chunks(0, &loaded.image).unwrap();
        tx.commit(b"not a unit table").unwrap();
    }
    assert_falls_back(dir.path(), 9, &[(4, "verifies but cannot be restored")]);
}

/// Damages every generation: 1 flipped in its chunk data, 2 truncated, 3
/// flipped in its header.
fn damage_everything(state: &Path) {
    flip_byte(&generation_path(state, 1), 104 + 56 + 10);
    let two = generation_path(state, 2);
    truncate(&two, std::fs::metadata(&two).unwrap().len() - 10);
    flip_byte(&generation_path(state, 3), 20);
}

#[test]
fn every_generation_damaged_stops_with_one_clear_error_and_changes_nothing() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    damage_everything(&state);
    // The lock file holds its owner's pid, rewritten by whoever takes it.
    let before = fingerprint(&state, &["lock"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut run = Proc::supervise(dir.path(), "state", AT_EXIT, &[CHILD]);
    assert_eq!(run.wait().code(), Some(1), "{}", run.transcript());
    assert!(
        !run.lines(Stream::Out).iter().any(|l| l.starts_with("pid ")),
        "the program was started:\n{}",
        run.transcript()
    );
    let errors: Vec<String> = run
        .lines(Stream::Err)
        .into_iter()
        .filter(|l| l.starts_with("shm-restore: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.transcript());
    let error = &errors[0];
    for part in [
        "no generation in state verifies",
        "3 damaged: 3, 2, 1",
        "nothing was changed",
        "--start-empty-if-damaged",
        "verify",
    ] {
        assert!(error.contains(part), "`{part}` missing from: {error}");
    }
    // By cause: 1 and 3 are damaged themselves; 2 needs 1, so it is named
    // on 1's line, not on a line of its own.
    for (number, why) in [
        (1, "chunk 0 hash"),
        (1, "generation 2 depends on it"),
        (3, "header_hash"),
    ] {
        let file = format!("gen-{number:020}.snap");
        assert!(
            run.lines(Stream::Err)
                .iter()
                .any(|l| l.contains("damaged generation") && l.contains(&file) && l.contains(why)),
            "generation {number} and `{why}` not named:\n{}",
            run.transcript()
        );
    }
    let causes = run
        .lines(Stream::Err)
        .iter()
        .filter(|l| l.contains("damaged generation"))
        .count();
    assert_eq!(causes, 2, "one line per cause:\n{}", run.transcript());
    assert_eq!(fingerprint(&state, &["lock"]), before, "the store changed");
}

#[test]
fn every_generation_damaged_with_the_flag_starts_empty_and_keeps_the_damaged_files() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    damage_everything(&state);
    let damaged = fingerprint(&state, &["lock"]);
    let run = run(dir.path(), "2", &["--start-empty-if-damaged"]);
    assert_eq!(recovered(&run), Vec::<String>::new(), "{}", run.transcript());
    assert!(
        run.lines(Stream::Err).iter().any(|l| l.contains("blank region")
            && l.contains("--start-empty-if-damaged")
            && l.contains("damaged=\"3, 2, 1\"")),
        "{}",
        run.transcript()
    );
    // The damaged files are untouched; the new generation is numbered after
    // them and is a base (nothing damaged is built on).
    let after = fingerprint(&state, &["lock"]);
    for (name, state) in &damaged {
        assert_eq!(after.get(name), Some(state), "{name} changed");
    }
    assert_eq!(generation_files(&state).len(), 4);
    let mut store = open_store(&state);
    let four = store
        .generations()
        .into_iter()
        .find(|g| g.number == 4)
        .expect("generation 4");
    assert!(four.is_base());
    let loaded = store.load_newest().unwrap().unwrap();
    assert_eq!(loaded.number, 4);
    assert_eq!(units_of(&loaded), [b"unit-0".to_vec(), b"unit-1".to_vec()]);
    drop(store);
    // The next start needs no flag: generation 4 verifies.
    let mut next = Proc::supervise(dir.path(), "state", AT_EXIT, &[CHILD]);
    assert_eq!(next.wait().code(), Some(0), "{}", next.transcript());
    assert_eq!(recovered(&next), units(2));
}

#[test]
fn damaged_generations_count_towards_keep_and_go_once_keep_newer_ones_exist() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    damage_everything(&state);
    // keep 3: generation 4 keeps 2 and 3, and 1 which 2's (intact) header
    // says it builds on; 5 keeps 3; after 6, only new generations are left.
    // The new generations never build on a damaged one.
    let keep = ["--start-empty-if-damaged", "--keep=3"];
    let numbers = |state: &Path| -> Vec<String> {
        generation_files(state)
            .iter()
            .map(|p| {
                p.file_name().unwrap().to_string_lossy()[4..24]
                    .trim_start_matches('0')
                    .to_owned()
            })
            .collect()
    };
    run(dir.path(), "1", &keep);
    assert_eq!(numbers(&state), ["1", "2", "3", "4"]);
    run(dir.path(), "1", &keep);
    assert_eq!(numbers(&state), ["3", "4", "5"]);
    run(dir.path(), "1", &keep);
    assert_eq!(numbers(&state), ["4", "5", "6"]);
    let mut store = open_store(&state);
    let loaded = store.load_newest().unwrap().unwrap();
    assert!(loaded.skipped.is_empty());
    assert_eq!(units_of(&loaded).len(), 3);
}

#[test]
fn with_the_flag_a_death_before_the_first_generation_restarts_on_a_blank_region_again() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    damage_everything(&state);
    // Laid out, nothing committed, ended by itself: the post-mortem has
    // nothing to persist and restores what the store holds, which is
    // still nothing that verifies.
    let run = run(dir.path(), "0", &["--start-empty-if-damaged"]);
    let log = run.transcript();
    assert!(
        !run.lines(Stream::Err)
            .iter()
            .any(|l| l.starts_with("shm-restore: ")),
        "{log}"
    );
    // Dying twice, once before laying the region out: each death restarts
    // on a blank region, until the restart limit ends it with the
    // program's own status.
    let flags: Vec<&str> = AT_EXIT
        .iter()
        .chain(&["--start-empty-if-damaged", "--restart-limit=2"])
        .copied()
        .collect();
    let script = dir.path().join("dies.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             n=$(cat starts 2>/dev/null || echo 0); n=$((n + 1)); echo $n > starts\n\
             [ $n -eq 1 ] && exit 7\n\
             exec {CHILD} --commit 0 --then exit:7\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut dies = Proc::supervise(dir.path(), "state", &flags, &[script.to_str().unwrap()]);
    assert_eq!(dies.wait().code(), Some(7), "{}", dies.transcript());
    let err = dies.lines(Stream::Err);
    assert_eq!(
        err.iter().filter(|l| l.contains("child started")).count(),
        3,
        "{}",
        dies.transcript()
    );
    assert!(
        err.iter().any(|l| l.contains("restart limit reached")),
        "{}",
        dies.transcript()
    );
    assert_eq!(generation_files(&state).len(), 3, "nothing new was persisted");
}

#[test]
fn a_damaged_base_is_reported_once_with_how_many_generations_depend_on_it() {
    let dir = workdir();
    let state = dir.path().join("state");
    // A base and eleven deltas built on it, one per run.
    for _ in 0..12 {
        run(dir.path(), "1", &[]);
    }
    assert_eq!(generation_files(&state).len(), 12);
    flip_byte(&generation_path(&state, 1), 104 + 56 + 10);
    let mut start = Proc::supervise(dir.path(), "state", AT_EXIT, &[CHILD]);
    assert_eq!(start.wait().code(), Some(1), "{}", start.transcript());
    let err = start.lines(Stream::Err);
    let causes: Vec<&String> = err.iter().filter(|l| l.contains("damaged generation")).collect();
    assert_eq!(
        causes.len(),
        1,
        "one line for the one cause:\n{}",
        start.transcript()
    );
    let file = format!("gen-{:020}.snap", 1);
    assert!(
        causes[0].contains(&file) && causes[0].contains("11 newer generations depend on it (12-2)"),
        "{}",
        start.transcript()
    );
    let error = err
        .iter()
        .find(|l| l.starts_with("shm-restore: "))
        .expect("an error line");
    assert!(error.contains("(12 damaged: 12-1)"), "{error}");
    assert!(error.contains("shm-restore verify state"), "{error}");

    // verify says the same: one line for the cause, then the summary.
    let verify = shm_snapshot_tests::ops::shm_restore(dir.path(), &["verify", "state"]);
    let lines: Vec<&str> = verify.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", verify.stderr);
    assert!(
        lines[0].starts_with("shm-restore: generation 1 is damaged: ")
            && lines[0].contains("11 newer generations depend on it (12-2)"),
        "{}",
        verify.stderr
    );
    assert!(
        lines[1].contains("12 of 12 generations in state are damaged"),
        "{}",
        verify.stderr
    );
}

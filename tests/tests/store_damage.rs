//! A damaged store across real processes: flipped bytes, truncation and
//! deleted files make the supervisor fall back to the newest generation
//! that is intact, saying what it skipped and why, one line per cause; a
//! store in which nothing is intact stops it with one error line and is
//! left exactly as it was, unless the user asks to start empty.
//!
//! A generation is a record: a delta in a segment (`seg-<seq>.log`), or a
//! full image in a base file (`base-<n>.snap`). Damage inside a record's
//! pages or meta blob leaves it listed and makes it fail to load (the
//! supervisor skips it, naming it); damage to a record's header or
//! structure ends its segment's readable part there (a *tail*, which the
//! supervisor reports as such at start: the records from there on are not
//! generations of the store).

use std::path::Path;

use shm_snapshot::store::{GenerationKind, Store, StoreOptions};
use shm_snapshot_tests::ops::shm_restore;
use shm_snapshot_tests::torture::{
    fingerprint, flip_byte, generation_field, open_store, record, truncate, units_of,
};
use shm_snapshot_tests::{Proc, Stream, generations, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

/// One generation per run (at its exit), fast relaunches, a small region.
const AT_EXIT: &[&str] = &[
    "--no-continuous",
    "--fsync=never",
    "--size=4MiB",
    "--backoff=10ms",
];

/// Bytes before a record's first page: its 104-byte header and the first
/// chunk record's 56-byte descriptor (STORE.md, "A generation record").
const FIRST_PAGE: u64 = 104 + 56;
/// From a record's end back to the last byte of its meta blob: the 56-byte
/// trailer, and one.
const LAST_META_BYTE: u64 = 57;

/// Runs the supervisor once on `dir/state` with unit-child committing
/// `commits` units; returns the run after it exits with status 0.
fn run(dir: &Path, commits: &str, extra: &[&str]) -> Proc {
    let flags: Vec<&str> = AT_EXIT.iter().chain(extra).copied().collect();
    let mut run = Proc::supervise(dir, "state", &flags, &[CHILD, "--commit", commits]);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    run
}

/// The name of the file holding generation `number` of `state`.
fn file_of(state: &Path, number: u64) -> String {
    file_name(&record(state, number).path)
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Each generation's number and kind.
fn kinds(state: &Path) -> Vec<(u64, GenerationKind)> {
    Store::open_read_only(state)
        .unwrap()
        .generations()
        .iter()
        .map(|g| (g.number, g.kind))
        .collect()
}

/// Three runs: generation 1 (a base file) holds unit-0..1, generation 2 (a
/// delta on 1, in a segment) unit-0..4, generation 3 (a delta on 2, in
/// another segment: each supervisor starts one of its own) unit-0..8.
fn three_generations(dir: &Path) {
    for commits in ["2", "3", "4"] {
        run(dir, commits, &[]);
    }
    let state = dir.join("state");
    assert_eq!(
        kinds(&state),
        [
            (1, GenerationKind::Base),
            (2, GenerationKind::Delta { parent: 1 }),
            (3, GenerationKind::Delta { parent: 2 }),
        ]
    );
    assert!(file_of(&state, 1).starts_with("base-"));
    assert!(file_of(&state, 2).starts_with("seg-"));
    assert!(file_of(&state, 3).starts_with("seg-"));
    assert_ne!(file_of(&state, 2), file_of(&state, 3));
}

/// Flips a byte of generation `number`'s record, `at` bytes from its start.
fn flip_in_record(state: &Path, number: u64, at: u64) {
    let r = record(state, number);
    assert!(at < r.bytes);
    flip_byte(&r.path, (r.offset + at) as i64);
}

/// Flips the last byte of generation `number`'s meta blob.
fn flip_meta(state: &Path, number: u64) {
    let r = record(state, number);
    flip_byte(&r.path, (r.offset + r.bytes - LAST_META_BYTE) as i64);
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

/// The supervisor's warnings about segments whose end does not read.
fn tail_warnings(proc: &Proc) -> Vec<String> {
    proc.lines(Stream::Err)
        .into_iter()
        .filter(|l| l.contains("WARN segment ") && l.contains("do not read"))
        .collect()
}

/// What a start on a damaged store must do: restore the generation holding
/// `units` units; warn once per skipped generation, naming it, the file
/// holding it and why; and once per segment tail, naming the segment and
/// why. Nothing else is skipped or warned about.
struct Expect<'a> {
    units: usize,
    skipped: &'a [(u64, &'a str, &'a str)],
    tails: &'a [(&'a str, &'a str)],
}

fn assert_falls_back(dir: &Path, expect: Expect) {
    let mut run = Proc::supervise(dir, "state", AT_EXIT, &[CHILD]);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    assert_eq!(recovered(&run), units(expect.units), "{}", run.transcript());
    let warnings: Vec<String> = run
        .lines(Stream::Err)
        .into_iter()
        .filter(|l| l.contains("skipping a damaged generation"))
        .collect();
    assert_eq!(warnings.len(), expect.skipped.len(), "{}", run.transcript());
    for (number, file, why) in expect.skipped {
        assert!(
            warnings
                .iter()
                .any(|w| generation_field(w) == Some(*number) && w.contains(file) && w.contains(why)),
            "no warning naming generation {number}, {file} and `{why}`:\n{}",
            run.transcript()
        );
    }
    let tails = tail_warnings(&run);
    assert_eq!(tails.len(), expect.tails.len(), "{}", run.transcript());
    for (file, why) in expect.tails {
        assert!(
            tails.iter().any(|w| w.contains(file) && w.contains(why)),
            "no warning about the tail of {file} with `{why}`:\n{}",
            run.transcript()
        );
    }
}

#[test]
fn flipped_byte_in_the_newest_record_header_ends_its_segment_and_falls_back_to_the_one_before() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    let segment = file_of(&state, 3);
    // Inside the `number` field: the header hash no longer matches, so the
    // record is not a generation, and its segment reads no further.
    flip_in_record(&state, 3, 20);
    assert_eq!(generations(&state), [1, 2]);
    assert_falls_back(
        dir.path(),
        Expect {
            units: 5,
            skipped: &[],
            tails: &[(&segment, "header_hash")],
        },
    );
}

#[test]
fn flipped_byte_in_the_newest_chunk_data_falls_back_to_the_one_before() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    let segment = file_of(&state, 3);
    flip_in_record(&state, 3, FIRST_PAGE + 10);
    assert_falls_back(
        dir.path(),
        Expect {
            units: 5,
            skipped: &[(3, &segment, "chunk")],
            tails: &[],
        },
    );
}

#[test]
fn flipped_byte_in_the_newest_meta_falls_back_to_the_one_before() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    let segment = file_of(&state, 3);
    flip_meta(&state, 3);
    assert_falls_back(
        dir.path(),
        Expect {
            units: 5,
            skipped: &[(3, &segment, "meta")],
            tails: &[],
        },
    );
}

#[test]
fn newest_record_cut_inside_its_header_falls_back_to_the_one_before() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    let r = record(&state, 3);
    // What an append a crash interrupted leaves.
    truncate(&r.path, r.offset + 50);
    assert_falls_back(
        dir.path(),
        Expect {
            units: 5,
            skipped: &[],
            tails: &[(&file_name(&r.path), "truncated")],
        },
    );
}

#[test]
fn deleted_segment_of_the_newest_generation_is_simply_absent() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    std::fs::remove_file(record(&state, 3).path).unwrap();
    assert_falls_back(
        dir.path(),
        Expect {
            units: 5,
            skipped: &[],
            tails: &[],
        },
    );
}

#[test]
fn deleted_segment_the_newest_builds_on_falls_back_to_an_intact_chain() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    let newest = file_of(&state, 3);
    std::fs::remove_file(record(&state, 2).path).unwrap();
    // 3 needs 2; 1 is a base of its own.
    assert_falls_back(
        dir.path(),
        Expect {
            units: 2,
            skipped: &[(3, &newest, "needs generation 2, which is missing")],
            tails: &[],
        },
    );
}

#[test]
fn deleted_base_of_the_newest_falls_back_to_an_older_intact_chain() {
    let dir = workdir();
    let state = dir.path().join("state");
    run(dir.path(), "2", &[]);
    run(dir.path(), "3", &[]);
    // Generation 3: generation 2's image and meta again, as a base file of
    // its own. A store that has loaded nothing writes a full generation
    // (loading one by number leaves the next delta's parent unset).
    {
        let mut store = Store::open(
            &state,
            StoreOptions {
                fsync: false,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let loaded = store.load_generation(2).unwrap();
        let mut tx = store.begin(loaded.image.len() as u64).unwrap();
        assert!(tx.is_base());
        tx.put_chunks(0, &loaded.image).unwrap();
        tx.commit(&loaded.meta).unwrap();
    }
    // Generation 4: a delta on the base 3, holding unit-0..8.
    run(dir.path(), "4", &[]);
    assert_eq!(
        kinds(&state),
        [
            (1, GenerationKind::Base),
            (2, GenerationKind::Delta { parent: 1 }),
            (3, GenerationKind::Base),
            (4, GenerationKind::Delta { parent: 3 }),
        ]
    );
    let newest = file_of(&state, 4);
    let base = record(&state, 3).path;
    assert_eq!(file_name(&base), format!("base-{:020}.snap", 3));
    std::fs::remove_file(base).unwrap();
    // 4 cannot be reassembled; 2's chain (1, 2) is intact.
    assert_falls_back(
        dir.path(),
        Expect {
            units: 5,
            skipped: &[(4, &newest, "needs generation 3, which is missing")],
            tails: &[],
        },
    );
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
    let newest = file_of(&state, 4);
    assert_falls_back(
        dir.path(),
        Expect {
            units: 9,
            skipped: &[(4, &newest, "verifies but cannot be restored")],
            tails: &[],
        },
    );
}

/// Damages every generation: the base file of 1 in its chunk data, the
/// record of 2 in its chunk data (2 builds on 1, so 1's damage is what
/// stops it), and the segment of 3 cut short inside its record, as an
/// append a crash interrupted leaves it. Returns the name of 3's segment.
fn damage_everything(state: &Path) -> String {
    let three = record(state, 3);
    flip_in_record(state, 1, FIRST_PAGE + 10);
    flip_in_record(state, 2, FIRST_PAGE + 10);
    truncate(&three.path, three.offset + three.bytes - 10);
    file_name(&three.path)
}

#[test]
fn every_generation_damaged_stops_with_one_clear_error_and_changes_nothing() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    let base = file_of(&state, 1);
    let torn = damage_everything(&state);
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
        "2 damaged: 2, 1",
        "nothing was changed",
        "--start-empty-if-damaged",
        "verify",
    ] {
        assert!(error.contains(part), "`{part}` missing from: {error}");
    }
    // By cause: 1 is damaged itself, and 2 needs 1, so it is named on 1's
    // line, not on a line of its own. The torn record of 3 is no
    // generation: its segment's tail is reported on a line of its own.
    let causes: Vec<String> = run
        .lines(Stream::Err)
        .into_iter()
        .filter(|l| l.contains("damaged generation"))
        .collect();
    assert_eq!(causes.len(), 1, "one line per cause:\n{}", run.transcript());
    for part in [&base, "chunk 0 hash", "generation 2 depends on it"] {
        assert!(causes[0].contains(part), "`{part}` missing from: {}", causes[0]);
    }
    let tails = tail_warnings(&run);
    assert_eq!(tails.len(), 1, "{}", run.transcript());
    assert!(
        tails[0].contains(&torn) && tails[0].contains("from its first record on"),
        "{}",
        tails[0]
    );
    assert_eq!(fingerprint(&state, &["lock"]), before, "the store changed");
}

#[test]
fn every_generation_damaged_with_the_flag_starts_empty_and_keeps_the_damaged_files() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    let holding = [record(&state, 1).path, record(&state, 2).path];
    damage_everything(&state);
    let damaged = fingerprint(&state, &["lock"]);
    let run = run(dir.path(), "2", &["--start-empty-if-damaged"]);
    assert_eq!(recovered(&run), Vec::<String>::new(), "{}", run.transcript());
    assert!(
        run.lines(Stream::Err).iter().any(|l| l.contains("blank region")
            && l.contains("--start-empty-if-damaged")
            && l.contains("damaged=\"2, 1\"")),
        "{}",
        run.transcript()
    );
    // The files holding the damaged generations are untouched; the new
    // generation is numbered after every number the store holds (the torn
    // record's too) and is a base (nothing damaged is built on).
    let after = fingerprint(&state, &["lock"]);
    for path in &holding {
        let name = file_name(path);
        assert_eq!(after.get(&name), damaged.get(&name), "{name} changed");
    }
    assert_eq!(generations(&state), [1, 2, 4]);
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
    let d = dir.path();
    let state = d.join("state");
    three_generations(d);
    damage_everything(&state);
    // Retention runs when the store picks up a base, and when asked; here
    // it is asked, after each run, by `prune`, which applies the same
    // rule: the newest 3 generations and their chains are kept, damaged
    // ones count among them, and whole files go. The new generations never
    // build on a damaged one.
    let keep = ["--start-empty-if-damaged"];
    let prune = |left: &[u64]| {
        let ran = shm_restore(d, &["prune", "state", "--keep", "3"]);
        assert_eq!(ran.code, Some(0), "{}", ran.show());
        assert_eq!(generations(&state), left, "{}", ran.show());
    };
    // 4 keeps 2 and 1, which 2's (intact) header says it builds on.
    run(d, "1", &keep);
    prune(&[1, 2, 4]);
    // 5 keeps 2 (and so 1).
    run(d, "1", &keep);
    prune(&[1, 2, 4, 5]);
    // After 6, only new generations are left.
    run(d, "1", &keep);
    prune(&[4, 5, 6]);
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
    let before = generations(&state);
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
    assert_eq!(generations(&state), before, "nothing new was persisted");
}

#[test]
fn a_damaged_base_is_reported_once_with_how_many_generations_depend_on_it() {
    let dir = workdir();
    let state = dir.path().join("state");
    // A base and eleven deltas built on it, one per run.
    for _ in 0..12 {
        run(dir.path(), "1", &[]);
    }
    assert_eq!(generations(&state), (1..=12).collect::<Vec<u64>>());
    let base = file_of(&state, 1);
    assert_eq!(base, format!("base-{:020}.snap", 1));
    flip_in_record(&state, 1, FIRST_PAGE + 10);
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
    assert!(
        causes[0].contains(&base) && causes[0].contains("11 newer generations depend on it (12-2)"),
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
    let verify = shm_restore(dir.path(), &["verify", "state"]);
    let lines: Vec<&str> = verify.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", verify.stderr);
    assert!(
        lines[0].starts_with("shm-restore: generation 1 is damaged: ")
            && lines[0].contains(&base)
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

#[test]
fn a_damaged_base_file_falls_back_to_the_records_it_checkpoints() {
    let dir = workdir();
    let state = dir.path().join("state");
    three_generations(dir.path());
    // Generations 4 and 5 (3's image and units again) appended to one
    // segment, and a base of 5 built in the background once the records
    // since the base pass the threshold, which 5 is the first to do. 4
    // needs that segment, so 5's record stays beside its base file.
    let unchanged = {
        let since_base = record(&state, 2).bytes + record(&state, 3).bytes;
        let mut store = open_store(&state);
        let loaded = store.load_newest().unwrap().unwrap();
        drop(store);
        // A record of an unchanged image: header, meta record, trailer.
        let unchanged = 104 + 48 + loaded.meta.len() as u64 + 56;
        let mut store = Store::open(
            &state,
            StoreOptions {
                fsync: false,
                base_after_bytes: since_base + unchanged + 1,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        assert_eq!(store.load_newest().unwrap().unwrap().number, 3);
        for number in [4, 5] {
            let mut tx = store.begin(loaded.image.len() as u64).unwrap();
            assert_eq!((tx.number(), tx.parent()), (number, Some(number - 1)));
            tx.put_chunks(0, &loaded.image).unwrap();
            assert_eq!(tx.commit(&loaded.meta).unwrap().bytes_written, unchanged);
        }
        store.finish_background();
        unchanged
    };
    let base = record(&state, 5);
    assert_eq!(file_name(&base.path), format!("base-{:020}.snap", 5));
    let four = record(&state, 4);
    let segment_len = std::fs::metadata(&four.path).unwrap().len();
    assert_eq!(segment_len, four.offset + 2 * unchanged, "5's record follows 4's");
    flip_in_record(&state, 5, FIRST_PAGE + 10);

    let mut start = Proc::supervise(dir.path(), "state", AT_EXIT, &[CHILD]);
    let restored = start.expect_err("generation restored");
    assert_eq!(generation_field(&restored), Some(5), "{}", start.transcript());
    assert_eq!(start.wait().code(), Some(0), "{}", start.transcript());
    assert_eq!(recovered(&start), units(9));

    // verify names the damaged file all the same.
    let verify = shm_restore(dir.path(), &["verify", "state"]);
    assert_eq!(verify.code, Some(1), "{}", verify.show());
    let lines: Vec<&str> = verify.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", verify.show());
    assert!(
        lines[0].starts_with(
            "shm-restore: generation 5: its base file does not verify, so it restores from its record: "
        ) && lines[0].contains(&file_name(&base.path))
            && lines[0].contains("chunk 0 hash"),
        "{}",
        verify.show()
    );
    assert_eq!(
        lines[1],
        "shm-restore: every generation in state verifies, but 1 base file is damaged; newest verified: 5"
    );
}

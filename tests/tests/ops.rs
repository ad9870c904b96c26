//! The operator subcommands against stores made by real supervisor runs:
//! inspect, verify, export, import, prune, watch and cleanup, their
//! failure messages, and what they do while a supervisor runs.

use std::path::Path;

use std::time::{Duration, Instant};

use shm_snapshot::snapshot;
use shm_snapshot::store::format::{Header, header};
use shm_snapshot::store::{LOCK_FILE, Store, StoreOptions};
use shm_snapshot::{Client, Config, Region};
use shm_snapshot_tests::ops::{Ran, eventually, shm_restore};
use shm_snapshot_tests::torture::{flip_byte, record, truncate};
use shm_snapshot_tests::{Proc, Stream, bin, generations, is_gone, store_files, wait_gone, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

/// Fast relaunches, no syncing (tests), a small region.
const FAST: &[&str] = &[
    "--backoff=10ms",
    "--backoff-max=50ms",
    "--fsync=never",
    "--size=4MiB",
];

fn at_exit_only() -> Vec<&'static str> {
    FAST.iter().copied().chain(["--no-continuous"]).collect()
}

/// Runs the supervisor on `store` until its program, committing `commits`
/// units, exits 0: one more generation (at exit only).
fn run_once(dir: &Path, store: &str, commits: &str) {
    let mut run = Proc::supervise(dir, store, &at_exit_only(), &[CHILD, "--commit", commits]);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
}

/// `s` as hex, as `inspect --units` shows a unit's first bytes.
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn assert_ok(ran: &Ran) {
    assert_eq!(ran.code, Some(0), "{}", ran.show());
}

/// Exit status 1 and a last stderr line `shm-restore: …` containing `text`.
fn assert_fails_with(ran: &Ran, text: &str) {
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    let last = ran.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("shm-restore: ") && last.contains(text),
        "expected a last line mentioning {text:?}:\n{}",
        ran.show()
    );
}

/// The units a program opening the region image at `path` recovers.
fn recovered_from_image(path: &Path) -> Vec<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: the file is this test's own and nothing else changes its size.
    let region = unsafe { Region::from_file(file) }.unwrap();
    let client = Client::open(region, &Config::default()).unwrap();
    client
        .recover()
        .unwrap()
        .into_iter()
        .map(|u| String::from_utf8(u.bytes).unwrap())
        .collect()
}

fn json(ran: &Ran) -> serde_json::Value {
    assert_ok(ran);
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.show()))
}

#[test]
fn read_only_commands_work_while_a_supervisor_runs_and_changing_ones_refuse() {
    let dir = workdir();
    let d = dir.path();
    let mut sup = Proc::supervise(d, "state", FAST, &[CHILD, "--commit", "5", "--then", "sleep"]);
    let child: i32 = sup.expect_out("pid ")[4..].parse().unwrap();
    sup.expect_out("done");
    let sup_pid = sup.pid().to_string();
    // Continuous snapshots: a generation holding all five units soon.
    let newest = eventually("a generation with 5 units", || {
        let doc = json(&shm_restore(d, &["inspect", "state", "--json"]));
        let newest = doc["newest_verified"].as_u64()?;
        let gens = doc["generations"].as_array()?;
        let g = gens.iter().find(|g| g["number"] == newest)?;
        (g["units"] == 5 && g["status"] == "ok").then_some(newest)
    });

    let table = shm_restore(d, &["inspect", "state"]);
    assert_ok(&table);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("GENERATION  CREATED (UTC)"),
        "{}",
        table.show()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().next() == Some(&newest.to_string())
                && l.ends_with("ok")
                && l.contains(" 5 ")),
        "{}",
        table.show()
    );
    assert!(
        lines.last().unwrap().contains("newest verified: "),
        "{}",
        table.show()
    );

    // The supervisor holds the store: inspect says it is being written.
    let doc = json(&shm_restore(d, &["inspect", "state", "--json"]));
    assert_eq!(doc["being_written"], true, "{doc}");
    assert_eq!(doc["writer_pid"], sup.pid(), "{doc}");

    let units = shm_restore(d, &["inspect", "state", "--units"]);
    assert_ok(&units);
    for k in 0..5 {
        let payload = hex(&format!("unit-{k}"));
        assert!(
            units.stdout.lines().any(|l| l.ends_with(&payload)),
            "unit-{k} ({payload}) missing:\n{}",
            units.show()
        );
    }

    assert_ok(&shm_restore(d, &["verify", "state"]));

    let watch = shm_restore(d, &["watch", "state", "--once"]);
    assert_ok(&watch);
    assert!(
        watch.stdout.contains(&format!("child       pid {child},")),
        "{}",
        watch.show()
    );
    assert!(
        watch.stdout.contains(&format!("supervisor  pid {sup_pid},")),
        "{}",
        watch.show()
    );
    assert!(watch.stdout.contains("running"), "{}", watch.show());

    assert_ok(&shm_restore(d, &["export", "state", "-o", "image"]));
    assert_eq!(
        recovered_from_image(&d.join("image")),
        ["unit-0", "unit-1", "unit-2", "unit-3", "unit-4"]
    );
    assert_fails_with(
        &shm_restore(d, &["export", "state", "-o", "image"]),
        "image exists; use --force",
    );
    assert_ok(&shm_restore(d, &["export", "state", "-o", "image", "--force"]));

    let in_use = format!("state is in use by a running supervisor (pid {sup_pid})");
    assert_fails_with(&shm_restore(d, &["prune", "state", "--keep", "1"]), &in_use);
    assert_fails_with(&shm_restore(d, &["cleanup", "state"]), &in_use);
    assert_fails_with(
        &shm_restore(d, &["import", "image", "--snapshot", "state"]),
        &in_use,
    );

    sup.signal(libc::SIGTERM);
    assert_eq!(
        sup.wait().code(),
        Some(128 + libc::SIGTERM),
        "{}",
        sup.transcript()
    );
    assert!(is_gone(child));
    // A clean exit leaves the store's files and its lock, nothing else.
    let files = store_files(&d.join("state"));
    let mut left: Vec<String> = std::fs::read_dir(d.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !files.contains(p))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["lock"]);
    let doc = json(&shm_restore(d, &["inspect", "state", "--json"]));
    assert_eq!(doc["being_written"], false, "{doc}");
    let watch = shm_restore(d, &["watch", "state", "--once"]);
    assert_eq!(watch.code, Some(1), "{}", watch.show());
    assert!(
        watch.stdout.contains("no supervisor running on state"),
        "{}",
        watch.show()
    );
    assert!(
        watch.stdout.contains("newest generation on disk: "),
        "{}",
        watch.show()
    );
}

#[test]
fn read_only_commands_never_fail_on_a_store_a_supervisor_commits_and_prunes_flat_out() {
    let dir = workdir();
    let d = dir.path();
    // Hundreds of generations a second, each pruned a few commits later.
    // The program commits every 100 µs, a few candidates at a time, so its
    // table does not fill (and end it) within the test.
    let mut sup = Proc::supervise(
        d,
        "state",
        &["--size=16MiB", "--interval=0", "--fsync=never", "--keep=2"],
        &[
            bin("primes-snapshot").to_str().unwrap(),
            "--interval=100us",
            "--batch=10",
        ],
    );
    sup.expect_out("restored primes=0");
    eventually("a few generations", || {
        (generations(&d.join("state")).len() >= 2).then_some(())
    });
    // Retention removes whole files once a newer base is built (every few
    // hundred milliseconds here): some of these go while the readers run.
    let first_files = store_files(&d.join("state"));
    let started = Instant::now();
    let (mut rounds, mut pruned) = (0, 0);
    let mut newest = String::new();
    while started.elapsed() < Duration::from_secs(5) {
        for args in [
            &["export", "state", "-o", "image", "--force"][..],
            &["inspect", "state", "--units"],
            &["verify", "state"],
        ] {
            assert_ok(&shm_restore(d, args));
        }
        // A generation asked for by number (the newest the last round
        // exported, likely pruned by now) is read, or said to be pruned.
        if !newest.is_empty() {
            let one = shm_restore(d, &["inspect", "state", "--units", "--generation", &newest]);
            if one.code != Some(0) {
                let pruned_now = format!("generation {newest} was pruned by the running supervisor");
                let gone = format!("generation {newest} is not in state");
                assert!(
                    one.stderr.contains(&pruned_now) || one.stderr.contains(&gone),
                    "{}",
                    one.show()
                );
                pruned += 1;
            }
        }
        let export = shm_restore(d, &["export", "state", "-o", "image", "--force"]);
        assert_ok(&export);
        newest = export.stdout["exported generation ".len()..]
            .split_once(' ')
            .unwrap()
            .0
            .to_owned();
        rounds += 1;
    }
    let now = store_files(&d.join("state"));
    assert!(
        first_files.iter().any(|f| !now.contains(f)),
        "no file was removed while the readers ran: {first_files:?}, {now:?}"
    );
    // The last export is a region primes-snapshot's units recover from.
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.join("image"))
        .unwrap();
    // SAFETY: the file is this test's own and nothing else changes its size.
    let region = unsafe { Region::from_file(image) }.unwrap();
    let client = Client::open(region, &Config::default()).unwrap();
    assert!(
        !client.recover().unwrap().is_empty(),
        "the exported image holds no unit"
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(
        sup.wait().code(),
        Some(128 + libc::SIGTERM),
        "{}",
        sup.transcript()
    );
    eprintln!("{rounds} rounds, {pruned} generations asked for by number were pruned");
}

#[test]
fn verify_export_and_inspect_name_a_damaged_generation() {
    let dir = workdir();
    let d = dir.path();
    run_once(d, "state", "2");
    run_once(d, "state", "3");
    let state = d.join("state");
    assert_eq!(generations(&state), [1, 2]);
    assert_ok(&shm_restore(d, &["verify", "state"]));

    // The middle of generation 2's record: among its pages.
    let two = record(&state, 2);
    flip_byte(&two.path, (two.offset + two.bytes / 2) as i64);
    let segment = two.path.file_name().unwrap().to_string_lossy().into_owned();

    let verify = shm_restore(d, &["verify", "state"]);
    assert_fails_with(
        &verify,
        "1 of 2 generations in state are damaged; newest verified: 1",
    );
    let lines: Vec<&str> = verify.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", verify.show());
    assert!(
        lines[0].starts_with("shm-restore: generation 2 is damaged: generation file ")
            && lines[0].contains(&segment)
            && lines[0].contains("is corrupt"),
        "{}",
        verify.show()
    );

    let inspect = json(&shm_restore(d, &["inspect", "state", "--json"]));
    assert_eq!(inspect["newest_verified"], 1);
    assert_eq!(inspect["generations"][0]["number"], 2);
    assert_eq!(inspect["generations"][0]["status"], "damaged");
    assert_eq!(inspect["generations"][0]["file"], segment.as_str());
    assert_eq!(inspect["generations"][1]["status"], "ok");
    assert_eq!(inspect["generations"][1]["units"], 2);

    assert_fails_with(
        &shm_restore(d, &["export", "state", "--generation", "2", "-o", "two"]),
        "cannot export generation 2: generation file",
    );
    assert!(!d.join("two").exists());
    assert_fails_with(
        &shm_restore(d, &["export", "state", "--generation", "7", "-o", "seven"]),
        "generation 7 is not in state",
    );
    // Without a number: the newest that verifies.
    let export = shm_restore(d, &["export", "state", "-o", "one"]);
    assert_ok(&export);
    assert!(
        export.stdout.contains("exported generation 1 "),
        "{}",
        export.show()
    );
    assert_eq!(recovered_from_image(&d.join("one")), ["unit-0", "unit-1"]);
}

#[test]
fn inspect_shows_each_generation_as_a_base_or_a_delta_on_its_parent_in_its_file() {
    let dir = workdir();
    let d = dir.path();
    let state = d.join("state");
    for commits in ["1", "1", "1"] {
        run_once(d, "state", commits);
    }
    let name = |n: u64| {
        record(&state, n)
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let doc = json(&shm_restore(d, &["inspect", "state", "--json"]));
    let shown: Vec<(u64, &str, Option<u64>, &str)> = doc["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["number"].as_u64().unwrap(),
                g["kind"].as_str().unwrap(),
                g["parent"].as_u64(),
                g["file"].as_str().unwrap(),
            )
        })
        .collect();
    let (one, two, three) = (name(1), name(2), name(3));
    assert_eq!(
        shown,
        [
            (3, "delta", Some(2), three.as_str()),
            (2, "delta", Some(1), two.as_str()),
            (1, "base", None, one.as_str()),
        ]
    );
    assert!(one.starts_with("base-") && two.starts_with("seg-") && three.starts_with("seg-"));
    // Every file of the store, with its size; nothing is being written.
    let files: Vec<(String, u64)> = store_files(&state)
        .iter()
        .map(|f| {
            (
                f.file_name().unwrap().to_string_lossy().into_owned(),
                f.metadata().unwrap().len(),
            )
        })
        .collect();
    let listed: Vec<(String, u64)> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_owned(),
                f["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, files);
    assert_eq!(doc["being_written"], false);
    assert_eq!(doc["tails"], serde_json::json!([]));
    let table = shm_restore(d, &["inspect", "state"]);
    assert_ok(&table);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].contains("  FILE  "), "{}", table.show());
    for (line, kind, file) in [
        (lines[1], "delta on 2", &three),
        (lines[2], "delta on 1", &two),
        (lines[3], "base", &one),
    ] {
        assert!(
            line.contains(kind) && line.contains(file.as_str()),
            "{}",
            table.show()
        );
    }
    assert!(
        lines[4].starts_with(&format!("3 generations in {} files, ", files.len())),
        "{}",
        table.show()
    );
}

/// Two runs, then the segment of generation 2 cut inside its record, as an
/// append a crash interrupted leaves it. Returns the segment's file name.
fn store_with_a_torn_newest_record(d: &Path) -> String {
    run_once(d, "state", "2");
    run_once(d, "state", "1");
    run_once(d, "state", "1");
    let state = d.join("state");
    let three = record(&state, 3);
    truncate(&three.path, three.offset + three.bytes - 10);
    assert_eq!(generations(&state), [1, 2]);
    three.path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_torn_record_is_a_segment_tail_not_a_generation_and_verify_counts_it_when_nobody_writes() {
    let dir = workdir();
    let d = dir.path();
    let segment = store_with_a_torn_newest_record(d);
    let doc = json(&shm_restore(d, &["inspect", "state", "--json"]));
    assert_eq!(doc["newest_verified"], 2);
    assert_eq!(doc["generations"].as_array().unwrap().len(), 2, "{doc}");
    let tails = doc["tails"].as_array().unwrap();
    assert_eq!(tails.len(), 1, "{doc}");
    assert_eq!(tails[0]["file"], segment.as_str());
    assert_eq!(tails[0]["offset"], 64, "its first record: {doc}");
    assert_eq!(tails[0]["after"], serde_json::Value::Null);
    assert_eq!(tails[0]["state"], "interrupted");
    let table = shm_restore(d, &["inspect", "state"]);
    assert_ok(&table);
    assert!(
        table.stdout.lines().any(|l| l
            .starts_with(&format!("segment state/{segment} does not read from byte 64 on"))
            && l.contains("an append a crash interrupted, or damage")),
        "{}",
        table.show()
    );

    let verify = shm_restore(d, &["verify", "state"]);
    assert_fails_with(
        &verify,
        "every generation in state verifies, but 1 segment ends in bytes that do not read; newest verified: 2",
    );
    let lines: Vec<&str> = verify.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", verify.show());
    assert!(
        lines[0].starts_with(&format!("shm-restore: segment state/{segment} does not read")),
        "{}",
        verify.show()
    );
    // Reading changed nothing.
    assert_eq!(generations(&d.join("state")), [1, 2]);
}

#[test]
fn a_torn_end_of_the_newest_segment_of_a_store_being_written_is_a_record_being_appended() {
    let dir = workdir();
    let d = dir.path();
    let segment = store_with_a_torn_newest_record(d);
    // Held as a writer holds it: the lock taken, the store open.
    let writer = shm_snapshot_tests::torture::open_store(&d.join("state"));
    let doc = json(&shm_restore(d, &["inspect", "state", "--json"]));
    assert_eq!(doc["being_written"], true, "{doc}");
    assert_eq!(doc["writer_pid"], std::process::id(), "{doc}");
    assert_eq!(doc["tails"][0]["file"], segment.as_str(), "{doc}");
    assert_eq!(doc["tails"][0]["state"], "appending", "{doc}");
    let verify = shm_restore(d, &["verify", "state"]);
    assert_ok(&verify);
    assert!(
        verify
            .stdout
            .starts_with("state: all 2 generations verify (1 base, 1 delta, ")
            && verify.stdout.trim_end().ends_with(
                "; newest verified: 2; 1 segment tail not counted while the store is being written"
            ),
        "{}",
        verify.show()
    );
    drop(writer);
    // A process another test forks meanwhile may hold a duplicate of the
    // lock's descriptor until its exec closes it.
    eventually("the lock released", || {
        let doc = json(&shm_restore(d, &["inspect", "state", "--json"]));
        (doc["being_written"] == false).then_some(())
    });
    assert_fails_with(
        &shm_restore(d, &["verify", "state"]),
        "1 segment ends in bytes that do not read",
    );
}

/// Whether `shown` (a size as the subcommands print it: `812 B`,
/// `5.1 KiB`) is `bytes`, to the one decimal shown.
fn shows_size(shown: &str, bytes: u64) -> bool {
    let Some((value, unit)) = shown.split_once(' ') else {
        return false;
    };
    let scale = match unit {
        "B" => return value.parse() == Ok(bytes),
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        _ => return false,
    };
    let Ok(value) = value.parse::<f64>() else {
        return false;
    };
    (value * scale - bytes as f64).abs() <= 0.05 * scale && bytes as f64 >= scale
}

#[test]
fn prune_keeps_the_newest_verified_generation_and_reports_what_it_freed() {
    let dir = workdir();
    let d = dir.path();
    let state = d.join("state");
    // 1 (a base file) and 2 (a delta on 1, in a segment); an import makes
    // 3 a base, the next run 4 a delta on 3: 1 and 2 are needed by nothing
    // newer.
    run_once(d, "state", "1");
    run_once(d, "state", "1");
    assert_ok(&shm_restore(d, &["export", "state", "-o", "image"]));
    let import = shm_restore(d, &["import", "image", "--snapshot", "state"]);
    assert_ok(&import);
    assert!(
        import.stdout.contains("as generation 3 (base, "),
        "{}",
        import.show()
    );
    run_once(d, "state", "1");
    assert_eq!(generations(&state), [1, 2, 3, 4]);
    let [one, two, three, four] = [1, 2, 3, 4].map(|n| record(&state, n));
    let files = store_files(&state);
    let sizes: Vec<u64> = files.iter().map(|f| f.metadata().unwrap().len()).collect();
    // The newest is damaged: keeping 1 keeps it, and the newest verified (3)
    // with its chain (itself). Everything else goes: the files of 1 and 2,
    // and the segments each run made ahead of time and never used.
    flip_byte(&four.path, (four.offset + four.bytes / 2) as i64);
    let kept = [three.path.clone(), four.path.clone()];
    let prune = shm_restore(d, &["prune", "state", "--keep", "1"]);
    assert_ok(&prune);
    let lines: Vec<&str> = prune.stdout.lines().collect();
    let removed: Vec<(&Path, u64)> = files
        .iter()
        .zip(&sizes)
        .filter(|(f, _)| !kept.contains(f))
        .map(|(f, &size)| (f.as_path(), size))
        .collect();
    assert_eq!(lines.len(), removed.len() + 1, "{}", prune.show());
    // Newest first: the file holding 2 before the one holding 1.
    let position = |path: &Path| {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        lines
            .iter()
            .position(|l| l.starts_with(&format!("removed state/{name} (")))
            .unwrap_or_else(|| panic!("{name} not removed:\n{}", prune.show()))
    };
    assert!(position(&two.path) < position(&one.path), "{}", prune.show());
    for (path, size) in &removed {
        let line = lines[position(path)];
        let held = if *path == two.path {
            "generation 2"
        } else if *path == one.path {
            "generation 1"
        } else {
            "no generation"
        };
        let shown = line
            .split_once(" (")
            .and_then(|(_, rest)| rest.strip_prefix(&format!("{held}, ")))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{line:?} does not say {held:?}:\n{}", prune.show()));
        assert!(
            shows_size(shown, *size),
            "{} is {size} bytes, not {shown}",
            path.display()
        );
    }
    let total: u64 = removed.iter().map(|(_, size)| size).sum();
    let freed = lines[removed.len()]
        .strip_prefix(&format!(
            "removed 2 generations in {} files, freed ",
            removed.len()
        ))
        .and_then(|rest| rest.strip_suffix("; 2 left, newest verified: 3"))
        .unwrap_or_else(|| panic!("{}", prune.show()));
    assert!(shows_size(freed, total), "{total} bytes removed, {freed} freed");
    assert_eq!(store_files(&state), kept);
    assert_eq!(generations(&state), [3, 4]);
    // What is left still restores generation 3.
    let units = shm_restore(d, &["inspect", "state", "--units"]);
    assert_ok(&units);
    assert!(units.stdout.starts_with("generation 3, "), "{}", units.show());
    assert!(units.stdout.contains(&hex("unit-0")), "{}", units.show());
}

/// Adds to the store in `dir` a base holding generation `from`'s image and
/// a meta blob of 64 zero bytes: it verifies, but no supervisor restores it.
/// Returns its number.
fn add_unrestorable_base(dir: &Path, from: u64) -> u64 {
    let options = StoreOptions {
        keep: usize::MAX,
        fsync: false,
        ..StoreOptions::default()
    };
    let mut store = Store::open(dir, options).unwrap();
    let image = store.load_generation(from).unwrap().image;
    let meta = [0u8; 64];
    assert!(snapshot::restorable(&image, &meta).is_err());
    let mut tx = store.begin(image.len() as u64).unwrap();
    assert!(tx.is_base());
    tx.put_chunks(0, &image).unwrap();
    tx.commit(&meta).unwrap().number
}

/// Gens 1 (base) and 2 (delta) from real runs, and 3, a base that verifies
/// but that no supervisor restores.
fn store_with_an_unrestorable_newest(d: &Path) {
    run_once(d, "state", "2");
    run_once(d, "state", "1");
    assert_eq!(add_unrestorable_base(&d.join("state"), 2), 3);
}

#[test]
fn prune_keeps_the_newest_generation_a_supervisor_restores_not_one_it_refuses() {
    let dir = workdir();
    let d = dir.path();
    store_with_an_unrestorable_newest(d);
    let prune = shm_restore(d, &["prune", "state", "--keep", "1"]);
    assert_ok(&prune);
    // Nothing goes: 3 is the newest, 2 the newest a supervisor restores,
    // and 2 needs 1.
    assert_eq!(
        prune.stdout,
        "removed 0 generations in 0 files, freed 0 B; 3 left, newest verified: 2\n",
        "{}",
        prune.show()
    );
    assert_eq!(generations(&d.join("state")), [1, 2, 3]);
    // The next supervisor skips 3 and restores 2.
    let mut run = Proc::supervise(d, "state", &at_exit_only(), &[CHILD]);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    let recovered: Vec<String> = run
        .lines(Stream::Out)
        .iter()
        .filter_map(|l| {
            l.strip_prefix("recovered ")
                .map(|r| r.split_once(' ').unwrap().1.to_owned())
        })
        .collect();
    assert_eq!(recovered, ["unit-0", "unit-1", "unit-2"], "{}", run.transcript());
}

#[test]
fn verify_inspect_and_export_judge_generations_as_the_supervisor_does() {
    let dir = workdir();
    let d = dir.path();
    store_with_an_unrestorable_newest(d);

    let verify = shm_restore(d, &["verify", "state"]);
    assert_fails_with(
        &verify,
        "1 of 3 generations in state cannot be restored; newest verified: 2",
    );
    let lines: Vec<&str> = verify.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", verify.show());
    assert!(
        lines[0].starts_with("shm-restore: generation 3 verifies but cannot be restored: "),
        "{}",
        verify.show()
    );

    let inspect = json(&shm_restore(d, &["inspect", "state", "--json"]));
    assert_eq!(inspect["newest_verified"], 2);
    let newest = &inspect["generations"][0];
    assert_eq!(newest["number"], 3);
    assert_eq!(newest["status"], "unrestorable");
    assert!(
        newest["problem"]
            .as_str()
            .unwrap()
            .starts_with("verifies but cannot be restored: "),
        "{inspect}"
    );
    assert_eq!(inspect["generations"][1]["status"], "ok");
    let table = shm_restore(d, &["inspect", "state"]);
    assert_ok(&table);
    assert!(
        table.stdout.lines().nth(1).unwrap().ends_with("unrestorable"),
        "{}",
        table.show()
    );

    let units = shm_restore(d, &["inspect", "state", "--units"]);
    assert_ok(&units);
    assert!(units.stdout.starts_with("generation 2, "), "{}", units.show());
    let export = shm_restore(d, &["export", "state", "-o", "image"]);
    assert_ok(&export);
    assert!(
        export.stdout.starts_with("exported generation 2 "),
        "{}",
        export.show()
    );
    assert_eq!(
        recovered_from_image(&d.join("image")),
        ["unit-0", "unit-1", "unit-2"]
    );
}

#[test]
fn inspect_shows_a_creation_time_past_year_9999_as_milliseconds() {
    let dir = workdir();
    let d = dir.path();
    run_once(d, "state", "1");
    let file = &record(&d.join("state"), 1).path;
    // A header whose hash agrees with a creation time RFC 3339 cannot
    // write.
    let mut bytes = std::fs::read(file).unwrap();
    let mut h = Header::decode(bytes[..header::LEN].try_into().unwrap()).unwrap();
    h.created_ms = u64::MAX;
    bytes[..header::LEN].copy_from_slice(&h.encode());
    std::fs::write(file, bytes).unwrap();
    let shown = format!("{} ms after the epoch", u64::MAX);
    let table = shm_restore(d, &["inspect", "state"]);
    assert_ok(&table);
    assert!(table.stdout.contains(&shown), "{}", table.show());
    let doc = json(&shm_restore(d, &["inspect", "state", "--json"]));
    assert_eq!(doc["generations"][0]["created"], shown.as_str());
    let units = shm_restore(d, &["inspect", "state", "--units", "--generation", "1"]);
    assert!(units.code == Some(0) || units.code == Some(1), "{}", units.show());
    assert!(!units.stderr.contains("panicked"), "{}", units.show());
}

#[test]
fn an_exported_image_imports_into_a_new_store_and_restores() {
    let dir = workdir();
    let d = dir.path();
    run_once(d, "a", "3");
    assert_ok(&shm_restore(d, &["export", "a", "-o", "image"]));
    let import = shm_restore(d, &["import", "image", "--snapshot", "b"]);
    assert_ok(&import);
    assert!(
        import.stdout.contains("as generation 1 (base, 3 units"),
        "{}",
        import.show()
    );
    let mut run = Proc::supervise(d, "b", &at_exit_only(), &[CHILD]);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    let recovered: Vec<String> = run
        .lines(shm_snapshot_tests::Stream::Out)
        .iter()
        .filter_map(|l| {
            l.strip_prefix("recovered ")
                .map(|r| r.split_once(' ').unwrap().1.to_owned())
        })
        .collect();
    assert_eq!(recovered, ["unit-0", "unit-1", "unit-2"]);

    // A store holds one region size.
    let mut big = Proc::supervise(
        d,
        "c",
        &["--size=8MiB", "--no-continuous", "--fsync=never"],
        &[CHILD, "--commit", "1"],
    );
    assert_eq!(big.wait().code(), Some(0), "{}", big.transcript());
    assert_fails_with(
        &shm_restore(d, &["import", "image", "--snapshot", "c"]),
        "c holds a region of 8388608 bytes (generation 1), image is 4194304 bytes",
    );
    // Not region images.
    std::fs::write(d.join("zeros"), vec![0u8; 1 << 20]).unwrap();
    assert_fails_with(
        &shm_restore(d, &["import", "zeros", "--snapshot", "d"]),
        "zeros is not a region image: its header is blank",
    );
    std::fs::write(d.join("text"), b"hello, world\n".repeat(1000)).unwrap();
    assert_fails_with(
        &shm_restore(d, &["import", "text", "--snapshot", "d"]),
        "text is not a usable region image: ",
    );
    assert!(store_files(&d.join("d")).is_empty());
    assert_fails_with(
        &shm_restore(d, &["import", "missing", "--snapshot", "d"]),
        "cannot read missing",
    );
}

#[test]
fn cleanup_after_a_killed_supervisor_removes_its_leftovers_and_processes() {
    let dir = workdir();
    let d = dir.path();
    // The supervisor's orphans become this process's children, and stay
    // zombies until it reaps them: the child's zombie is still in the
    // program's group when cleanup counts what it kills (no test in this
    // binary but this one leaves orphans).
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let mut sup = Proc::supervise(
        d,
        "state",
        FAST,
        &[CHILD, "--grandchild", "--commit", "3", "--then", "sleep"],
    );
    let child: i32 = sup.expect_out("pid ")[4..].parse().unwrap();
    let grandchild: i32 = sup.expect_out("grandchild ")[11..].parse().unwrap();
    sup.expect_out("done");
    eventually("a generation and the status file", || {
        (d.join("state/status.json").exists() && !generations(&d.join("state")).is_empty()).then_some(())
    });
    sup.signal(libc::SIGKILL);
    sup.wait();
    assert!(wait_gone(child), "the child dies with its supervisor");
    assert!(
        std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok(),
        "the child stays a zombie until reaped"
    );
    assert!(
        !is_gone(grandchild),
        "the grandchild outlives a SIGKILLed supervisor"
    );
    // A generation being written when the supervisor died.
    let temp = d.join("state/base-00000000000000000099.4242.0.tmp");
    std::fs::write(&temp, b"partial").unwrap();

    let watch = shm_restore(d, &["watch", "state", "--once"]);
    assert_eq!(watch.code, Some(1), "{}", watch.show());
    assert!(
        watch.stdout.contains("no supervisor running on state"),
        "{}",
        watch.show()
    );

    let cleanup = shm_restore(d, &["cleanup", "state"]);
    assert_ok(&cleanup);
    for text in [
        "removed temporary file state/base-00000000000000000099.4242.0.tmp",
        "removed stale status file state/status.json",
        // The grandchild alone: the child died with the supervisor, and
        // its zombie, if not reaped yet, is not a process to kill.
        "killed 1 leftover process of the program's process group",
        "cleared stale lock state/lock (last held by pid ",
    ] {
        assert!(cleanup.stdout.contains(text), "no {text:?}:\n{}", cleanup.show());
    }
    assert!(wait_gone(grandchild), "cleanup kills what the program left");
    for pid in [child, grandchild] {
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap();
    }
    rustix::process::set_child_subreaper(None).unwrap();
    let files = store_files(&d.join("state"));
    let left: Vec<std::path::PathBuf> = std::fs::read_dir(d.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        !files.is_empty()
            && left
                .iter()
                .all(|p| files.contains(p) || p.file_name() == Some(LOCK_FILE.as_ref())),
        "{left:?}"
    );
    // The lock file stays (removing it races a supervisor starting), empty.
    assert_eq!(std::fs::read(d.join("state").join(LOCK_FILE)).unwrap(), b"");
    assert_ok(&shm_restore(d, &["verify", "state"]));
    let again = shm_restore(d, &["cleanup", "state"]);
    assert_ok(&again);
    assert_eq!(again.stdout, "state: nothing to clean up\n");
}

#[test]
fn subcommands_on_a_missing_directory_or_a_non_store_fail_in_one_line() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::write(d.join("file"), b"x").unwrap();
    let commands: [&[&str]; 6] = [
        &["inspect"],
        &["verify"],
        &["export", "-o", "out"],
        &["prune", "--keep", "1"],
        &["watch", "--once"],
        &["cleanup"],
    ];
    for (target, message) in [
        ("missing", "no store at missing: no such directory"),
        (
            "empty",
            "empty is not a shm-snapshot store (no lock file, no segments, no base files)",
        ),
        ("file", "file is not a store: not a directory"),
    ] {
        for command in commands {
            let mut args = vec![command[0], target];
            args.extend(&command[1..]);
            let ran = shm_restore(d, &args);
            assert_fails_with(&ran, message);
            assert_eq!(ran.stderr.lines().count(), 1, "{args:?}: {}", ran.show());
        }
    }
    assert!(!d.join("missing").exists(), "nothing creates a missing store");
    assert!(!d.join("out").exists());
}

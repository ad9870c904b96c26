//! A hostile program across real processes: while it commits genuine
//! units, it writes random bytes into its region's header, unit table and
//! ring at random moments (see `hostile-child`). The supervisor keeps
//! running, warns, and persists no unit the program did not commit.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use shm_snapshot_tests::torture::{copy_store, is_genuine, newest_generations, open_store, units_of};
use shm_snapshot_tests::{Proc, Stream, workdir};

const HOSTILE: &str = env!("CARGO_BIN_EXE_hostile-child");

/// Generations the store keeps restorable.
const KEEP: usize = 16;

/// Checks every unit of `units` is genuine and was printed as committed.
fn assert_genuine(what: &str, units: &[Vec<u8>], committed: &HashSet<Vec<u8>>) {
    for unit in units {
        assert!(
            is_genuine(unit) && committed.contains(unit),
            "{what} holds a unit the program never committed: {:?}",
            String::from_utf8_lossy(unit)
        );
    }
}

#[test]
fn hostile_child_scribbling_on_its_region_never_gets_a_forged_unit_persisted() {
    let dir = workdir();
    let state = dir.path().join("state");
    let seconds = 12;
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &[
            "--size=4MiB",
            "--fsync=never",
            "--interval=2ms",
            &format!("--keep={KEEP}"),
        ],
        &[HOSTILE, "--seconds", &seconds.to_string()],
    );
    sup.expect_out("committed ");
    // Copies of the store taken while the program runs: what is persisted
    // throughout, not only the last generations retention keeps.
    let copies = workdir();
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(400));
        taken.push(copy_store(&state, &copies.path().join(taken.len().to_string())));
    }
    let status = sup.wait();
    let transcript = sup.transcript();
    assert_eq!(
        status.code(),
        Some(0),
        "the supervisor did not end with the program:\n{transcript}"
    );
    let err = sup.lines(Stream::Err);
    assert!(
        !err.iter()
            .any(|l| l.starts_with("shm-restore:") || l.contains("panicked")),
        "{transcript}"
    );
    let out = sup.lines(Stream::Out);
    assert_eq!(out.last().map(String::as_str), Some("done"), "{transcript}");
    let attacks = |what: &str| {
        out.iter()
            .filter(|l| l.starts_with(&format!("attack {what}")))
            .count()
    };
    let (header, table, ring) = (attacks("header"), attacks("table"), attacks("ring"));
    let chain = attacks("chain");
    assert!(
        header >= 5 && table >= 5 && ring >= 5 && chain >= 3,
        "too few attacks: {header} {table} {ring} {chain}"
    );
    let warned = |text: &str| err.iter().any(|l| l.contains("WARN") && l.contains(text));
    assert!(
        warned("unit table has corrupt entries"),
        "no warning about the table:\n{transcript}"
    );
    assert!(
        warned("region is not usable"),
        "no warning about the header:\n{transcript}"
    );
    let committed: HashSet<Vec<u8>> = out
        .iter()
        .filter_map(|l| l.strip_prefix("committed "))
        .map(|p| p.as_bytes().to_vec())
        .collect();

    let mut checked = HashSet::new();
    for copy in &taken {
        let mut store = open_store(copy);
        if let Some(loaded) = store
            .load_newest()
            .unwrap_or_else(|e| panic!("{}: {e}", copy.display()))
        {
            let units = units_of(&loaded);
            assert_genuine(&format!("generation {}", loaded.number), &units, &committed);
            if !units.is_empty() {
                checked.insert(loaded.number);
            }
        }
    }
    // The generations --keep keeps restorable.
    let last = newest_generations(&state, KEEP);
    assert!(!last.is_empty());
    for loaded in &last {
        let units = units_of(loaded);
        assert_genuine(&format!("generation {}", loaded.number), &units, &committed);
        if !units.is_empty() {
            checked.insert(loaded.number);
        }
    }
    // Generations kept coming while the program misbehaved.
    assert!(
        checked.len() >= taken.len() / 2,
        "only {} generations with units among {} copies and the store:\n{transcript}",
        checked.len(),
        taken.len()
    );
    // The store itself opens cleanly after all that.
    let mut store = open_store(&state);
    assert!(store.load_newest().unwrap().unwrap().skipped.is_empty());
}

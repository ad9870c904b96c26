//! A store version 2 wrote (one `gen-<n>.snap` file per generation),
//! across real processes: the subcommands list and verify it, a
//! supervisor restores it as it is and carries it forward (its next
//! generation is a delta on the version 2 one, appended to a segment), and
//! the version 2 files go once a newer base covers every kept generation.
//!
//! The version 2 files are made from version 3 records of the same
//! generations: the record layout did not change between the versions,
//! only the header's `version` and its `base` field (version 3's
//! `reserved`), so each record gets version 2's header and its hashes are
//! made again (STORE.md, "Stores written by version 2").

use std::path::Path;

use shm_snapshot::store::GenerationKind;
use shm_snapshot::store::format::{self, Header, chunk, header, meta, trailer};
use shm_snapshot_tests::ops::{Ran, shm_restore};
use shm_snapshot_tests::torture::{open_store, record, units_of};
use shm_snapshot_tests::{Proc, Stream, generations, store_files, workdir};

const CHILD: &str = env!("CARGO_BIN_EXE_unit-child");

/// One generation per run (at its exit), a small region.
const AT_EXIT: &[&str] = &["--no-continuous", "--fsync=never", "--size=4MiB"];

fn run(dir: &Path, commits: &str) -> Proc {
    let mut run = Proc::supervise(dir, "state", AT_EXIT, &[CHILD, "--commit", commits]);
    assert_eq!(run.wait().code(), Some(0), "{}", run.transcript());
    run
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// `record`, a version 3 record, as version 2 wrote it: `version` 2 and
/// `base` (the first generation of its chain) in the header, the header
/// hash and the skeleton hash in the trailer made again (STORE.md, "A
/// generation record").
fn as_version_2(record: &[u8], base: u64) -> Vec<u8> {
    let mut out = record.to_vec();
    let mut h = Header::decode(record[..header::LEN].try_into().unwrap()).unwrap();
    h.version = format::LEGACY_VERSION;
    h.base = base;
    out[..header::LEN].copy_from_slice(&h.encode());
    let mut skeleton = blake3::Hasher::new();
    skeleton.update(&out[..header::LEN]);
    let mut at = header::LEN;
    let mut chunks = 0;
    while out[at..at + 8] == format::CHUNK_TAG {
        let index = u64_at(&out, at + chunk::INDEX);
        let pages = u64_at(&out, at + chunk::PAGES);
        skeleton.update(&out[at..at + chunk::DESCRIPTOR]);
        let len = format::chunk_len(h.region_len, index).unwrap();
        at += chunk::DESCRIPTOR + format::payload_len(len, pages) as usize;
        chunks += 1;
    }
    assert_eq!(out[at..at + 8], format::META_TAG);
    let blob = u64_at(&out, at + meta::LEN) as usize;
    skeleton.update(&out[at..at + meta::DESCRIPTOR]);
    at += meta::DESCRIPTOR + blob;
    assert_eq!(at + trailer::LEN, out.len());
    let end = format::trailer(chunks, out.len() as u64, &mut skeleton);
    out[at..].copy_from_slice(&end);
    out
}

/// Generations 1 (unit-0..1) and 2 (unit-0..4, a delta on 1) as version 2
/// left them: `gen-1.snap` and `gen-2.snap`, nothing else but the lock.
fn version_2_store(dir: &Path) {
    run(dir, "2");
    run(dir, "3");
    let state = dir.join("state");
    for (number, base) in [(1, 1), (2, 1)] {
        let r = record(&state, number);
        let bytes = std::fs::read(&r.path).unwrap();
        let at = r.offset as usize;
        let v2 = as_version_2(&bytes[at..at + r.bytes as usize], base);
        std::fs::write(state.join(format!("gen-{number:020}.snap")), v2).unwrap();
    }
    for file in store_files(&state) {
        if !file.file_name().unwrap().to_string_lossy().starts_with("gen-") {
            std::fs::remove_file(file).unwrap();
        }
    }
}

fn assert_ok(ran: &Ran) {
    assert_eq!(ran.code, Some(0), "{}", ran.show());
}

/// The payloads unit-child printed as recovered.
fn recovered(proc: &Proc) -> Vec<String> {
    proc.lines(Stream::Out)
        .iter()
        .filter_map(|l| l.strip_prefix("recovered "))
        .map(|rest| rest.split_once(' ').unwrap().1.to_owned())
        .collect()
}

#[test]
fn a_version_2_store_is_listed_restored_and_carried_forward() {
    let dir = workdir();
    let d = dir.path();
    let state = d.join("state");
    version_2_store(d);

    let doc: serde_json::Value =
        serde_json::from_str(&shm_restore(d, &["inspect", "state", "--json"]).stdout).unwrap();
    let listed: Vec<(u64, &str, Option<u64>, &str, &str)> = doc["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["number"].as_u64().unwrap(),
                g["kind"].as_str().unwrap(),
                g["parent"].as_u64(),
                g["file"].as_str().unwrap(),
                g["status"].as_str().unwrap(),
            )
        })
        .collect();
    let gen_file = |n: u64| format!("gen-{n:020}.snap");
    assert_eq!(
        listed,
        [
            (2, "delta", Some(1), gen_file(2).as_str(), "ok"),
            (1, "base", None, gen_file(1).as_str(), "ok"),
        ],
        "{doc}"
    );
    let verify = shm_restore(d, &["verify", "state"]);
    assert_ok(&verify);
    assert!(
        verify
            .stdout
            .starts_with("state: all 2 generations verify (1 base, 1 delta, "),
        "{}",
        verify.show()
    );

    // Restored as it is; the next generation is a delta on it, in a
    // segment.
    let third = run(d, "1");
    assert_eq!(
        recovered(&third),
        ["unit-0", "unit-1", "unit-2", "unit-3", "unit-4"]
    );
    let three = record(&state, 3);
    assert_eq!(three.kind, GenerationKind::Delta { parent: 2 });
    assert!(
        three
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seg-")
    );
    let fourth = run(d, "0");
    assert_eq!(recovered(&fourth).len(), 6, "{}", fourth.transcript());

    // A newer base (an import) covers what is kept: the version 2 files go.
    assert_ok(&shm_restore(d, &["export", "state", "-o", "image"]));
    assert_ok(&shm_restore(d, &["import", "image", "--snapshot", "state"]));
    let prune = shm_restore(d, &["prune", "state", "--keep", "1"]);
    assert_ok(&prune);
    for n in [1, 2] {
        assert!(
            prune
                .stdout
                .contains(&format!("removed state/{} (generation {n}, ", gen_file(n))),
            "{}",
            prune.show()
        );
    }
    assert_eq!(generations(&state), [4]);
    assert!(
        store_files(&state)
            .iter()
            .all(|f| !f.file_name().unwrap().to_string_lossy().starts_with("gen-"))
    );
    let mut store = open_store(&state);
    let loaded = store.load_newest().unwrap().unwrap();
    assert_eq!(units_of(&loaded).len(), 6);
}

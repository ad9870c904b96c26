//! The table examples (C in shm-snapshot-c/examples/table.c, Python in
//! python/examples/table.py): their progress lines, the check that no
//! start restored less than was committed, and their table's functions, to
//! forge regions they must refuse.

use shm_snapshot::{Client, Config, Region};

/// One line of a table example's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `restored entries=N`.
    Restored(u64),
    /// `committed entries=N seq=S`.
    Committed(u64),
}

/// A table example's progress lines in `out`; panics on any other line.
pub fn progress(out: &str) -> Vec<Progress> {
    out.lines()
        .map(|line| {
            let entries = line
                .split(' ')
                .find_map(|kv| kv.strip_prefix("entries="))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no entries= in stdout line {line:?}"));
            match line.split(' ').next() {
                Some("restored") => Progress::Restored(entries),
                Some("committed") => Progress::Committed(entries),
                _ => panic!("unexpected stdout line {line:?}"),
            }
        })
        .collect()
}

/// Checks that no start restored less than was committed before it.
/// Returns the number of starts.
pub fn check_nothing_lost(lines: &[Progress]) -> Result<usize, String> {
    let (mut committed, mut starts) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        match *line {
            Progress::Committed(n) => committed = n,
            Progress::Restored(n) => {
                starts += 1;
                if n < committed {
                    return Err(format!(
                        "start {starts} (stdout line {}) restored entries={n}, but entries={committed} had been committed",
                        i + 1
                    ));
                }
                committed = n;
            }
        }
    }
    Ok(starts)
}

/// Entry `i` of the table: splitmix64 of `i`.
pub fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The checksum a unit carries over `entries`.
pub fn fold(entries: &[u64]) -> u64 {
    entries.iter().fold(0xcbf2_9ce4_8422_2325, |h, e| {
        (h ^ e).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The unit a table example commits for its first `entries` entries.
pub fn unit_for(entries: u64) -> Vec<u8> {
    let table: Vec<u64> = (0..entries).map(mix).collect();
    let mut unit = entries.to_le_bytes().to_vec();
    unit.extend(fold(&table).to_le_bytes());
    unit
}

/// An 8 MiB region whose newest unit says `entries` entries fold to
/// `checksum`, over an arena holding `table`: what a table example must
/// take as it is, or refuse with status 3.
pub fn region_claiming(entries: u64, checksum: u64, table: &[u64]) -> std::fs::File {
    let region = Region::anonymous(8 << 20).expect("region");
    let file = region.file().try_clone().expect("fd");
    let mut client = Client::open(region, &Config::default()).expect("laid out");
    let mut unit = entries.to_le_bytes().to_vec();
    unit.extend(checksum.to_le_bytes());
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
    client
        .commit_with(&unit, |tx| tx.arena().write(0, &bytes))
        .expect("committing");
    file
}

/// The units of the region image at `path`, read by the Rust client, as
/// `unit <seq> <hex>` lines: what the examples' `--dump` prints.
pub fn dump(path: &std::path::Path) -> String {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("opening the image");
    // SAFETY: the test's own file, which nothing shrinks while it is open.
    let region = unsafe { Region::from_file(file) }.expect("mapping the image");
    let client = Client::open(region, &Config::default()).expect("the image opens");
    client
        .recover()
        .expect("recovering")
        .iter()
        .map(|u| {
            let hex: String = u.bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("unit {} {hex}\n", u.id.0)
        })
        .collect()
}

/// The table example's arguments for a run that commits ten units and
/// exits: 320 entries, 32 a commit, no pause between commits.
pub const TEN_COMMITS: [&str; 6] = ["--limit", "320", "--batch", "32", "--interval-ms", "0"];

/// What [`dump`] prints for the region a run with [`TEN_COMMITS`] left:
/// ten units, the table growing by 32 entries each, their checksums as the
/// Rust side folds them.
pub fn ten_commits_dump() -> String {
    (1..=10u64)
        .map(|k| {
            let hex: String = unit_for(32 * k).iter().map(|b| format!("{b:02x}")).collect();
            format!("unit {k} {hex}\n")
        })
        .collect()
}

/// Runs `program` (the command line of a program that commits and exits 0)
/// under `shm-restore` with an 8 MiB region on the store `state` in `dir`,
/// waits for it, and exports the newest generation to `dir/image`, whose
/// path it returns.
pub fn run_and_export(dir: &std::path::Path, program: &[&str]) -> std::path::PathBuf {
    let mut sup = crate::Proc::supervise(dir, "state", &["--size=8MiB", "--fsync=never"], program);
    let status = sup.wait();
    assert_eq!(status.code(), Some(0), "{}", sup.transcript());
    let out = std::process::Command::new(crate::bin("shm-restore"))
        .current_dir(dir)
        .args(["export", "state", "-o", "image"])
        .output()
        .expect("running shm-restore export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("image")
}

/// The command line of a Rust program that commits twelve units of 40
/// bytes and exits 0.
pub fn rust_units() -> Vec<String> {
    [
        crate::bin("unit-child").to_str().expect("UTF-8"),
        "--commit",
        "12",
        "--unit-bytes",
        "40",
        "--then",
        "exit:0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Checks what a chaos run of a table example (`--report=report.json` in
/// `dir`, `kills` kills) left: no start found its restored table
/// inconsistent, nothing committed was lost, the run exited 0, the report
/// counts every kill and no failure, and most starts printed what they
/// restored. Prints one line of figures naming `example`.
pub fn check_chaos_run(finished: &crate::chaos::Finished, dir: &std::path::Path, kills: u64, example: &str) {
    let log = finished.transcript();
    assert!(
        !finished.err.lines().any(|l| l.starts_with("inconsistent")),
        "a start found its restored table inconsistent:\n{log}"
    );
    let lines = progress(&finished.out);
    let starts = check_nothing_lost(&lines).unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(finished.status.code(), Some(0), "{log}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("report"))
            .expect("JSON");
    assert_eq!(report["kills"], kills, "{report:#}");
    assert_eq!(report["failures"]["total"], 0, "{report:#}");
    assert_eq!(report["last_run"]["committed"], true, "{report:#}");
    assert!(
        starts as u64 > kills / 2,
        "most starts printed what they restored: {starts} of {}",
        kills + 1
    );
    let committed = lines
        .iter()
        .filter(|l| matches!(l, Progress::Committed(_)))
        .count();
    println!(
        "{example}: {kills} kills, 0 failures, {starts} restores checked, {committed} commits, restore p50 {} ms, p99 {} ms",
        report["restore_ms"]["p50"], report["restore_ms"]["p99"]
    );
}

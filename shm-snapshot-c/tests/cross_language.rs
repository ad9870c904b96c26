//! Regions cross languages through the store: a region the C example
//! committed, exported with `shm-restore export`, holds for the Rust client
//! exactly the units the C client reads back from it, and a region a Rust
//! program committed reads the same through the C client.

mod support;

use std::path::Path;
use std::process::Command;

use shm_snapshot_tests::table::{TEN_COMMITS, dump, run_and_export, rust_units, ten_commits_dump};
use shm_snapshot_tests::workdir;

/// What the C example's `--dump` prints for the image at `image`.
fn c_dump(image: &Path) -> String {
    let out = Command::new(support::table())
        .arg("--dump")
        .arg(image)
        .output()
        .expect("running the C example");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn units_the_c_client_committed_read_back_identically_through_the_rust_client() {
    let dir = workdir();
    let table = support::table();
    let mut program = vec![table.to_str().expect("UTF-8")];
    program.extend(TEN_COMMITS);
    let image = run_and_export(dir.path(), &program);
    let rust = dump(&image);
    assert_eq!(
        rust,
        c_dump(&image),
        "the Rust and the C client read the same units"
    );
    // And they are the units the C example committed: ten of them, the
    // table growing by 32 entries each, their checksums as Rust folds them.
    assert_eq!(rust, ten_commits_dump());
}

#[test]
fn units_a_rust_program_committed_read_back_identically_through_the_c_client() {
    let dir = workdir();
    let program = rust_units();
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    let image = run_and_export(dir.path(), &program);
    let c = c_dump(&image);
    assert_eq!(c, dump(&image));
    assert_eq!(c.lines().count(), 12, "{c}");
    let first = c.lines().next().expect("a unit");
    let payload: String = "unit-0"
        .bytes()
        .chain(std::iter::repeat_n(b'.', 34))
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(first, format!("unit 1 {payload}"));
}

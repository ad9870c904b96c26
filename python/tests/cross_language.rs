//! Regions cross languages through the store: a region the Python example
//! committed, exported with `shm-restore export`, holds for the Rust
//! client exactly the units the Python client reads back from it, and a
//! region a Rust program committed reads the same through Python.

mod support;

use std::path::Path;
use std::process::Command;

use shm_snapshot_tests::table::{TEN_COMMITS, dump, run_and_export, rust_units, ten_commits_dump};
use shm_snapshot_tests::workdir;
use support::{python, table};

/// What the Python example's `--dump` prints for the image at `image`.
fn python_dump(image: &Path) -> String {
    let out = Command::new(python())
        .arg(table())
        .arg("--dump")
        .arg(image)
        .output()
        .expect("running the Python example");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn units_the_python_client_committed_read_back_identically_through_the_rust_client() {
    let dir = workdir();
    let (python, example) = (python(), table());
    let mut program = vec![python.to_str().expect("UTF-8"), example.to_str().expect("UTF-8")];
    program.extend(TEN_COMMITS);
    let image = run_and_export(dir.path(), &program);
    let rust = dump(&image);
    assert_eq!(
        rust,
        python_dump(&image),
        "the Rust and the Python client read the same units"
    );
    assert_eq!(rust, ten_commits_dump());
}

#[test]
fn units_a_rust_program_committed_read_back_identically_through_the_python_client() {
    let dir = workdir();
    let program = rust_units();
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    let image = run_and_export(dir.path(), &program);
    let from_python = python_dump(&image);
    assert_eq!(from_python, dump(&image));
    assert_eq!(from_python.lines().count(), 12, "{from_python}");
}

//! Regions cross languages through the store: a region the Python example
//! committed, exported with `shm-restore export`, holds for the Rust
//! client exactly the units the Python client reads back from it, and a
//! region a Rust program committed reads the same through Python.

mod support;

use std::path::Path;
use std::process::Command;

use shm_snapshot_tests::table::{dump, unit_for};
use shm_snapshot_tests::{Proc, bin, workdir};
use support::{python, table};

fn export(dir: &Path) -> std::path::PathBuf {
    let out = Command::new(bin("shm-restore"))
        .current_dir(dir)
        .args(["export", "state", "-o", "image"])
        .output()
        .expect("running shm-restore export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("image")
}

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
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--size=8MiB", "--fsync=never"],
        &[
            python.to_str().expect("UTF-8"),
            example.to_str().expect("UTF-8"),
            "--limit",
            "320",
            "--batch",
            "32",
            "--interval-ms",
            "0",
        ],
    );
    let status = sup.wait();
    assert_eq!(status.code(), Some(0), "{}", sup.transcript());
    let image = export(dir.path());
    let rust = dump(&image);
    assert_eq!(
        rust,
        python_dump(&image),
        "the Rust and the Python client read the same units"
    );
    let expected: String = (1..=10u64)
        .map(|k| {
            let hex: String = unit_for(32 * k).iter().map(|b| format!("{b:02x}")).collect();
            format!("unit {k} {hex}\n")
        })
        .collect();
    assert_eq!(rust, expected);
}

#[test]
fn units_a_rust_program_committed_read_back_identically_through_the_python_client() {
    let dir = workdir();
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--size=8MiB", "--fsync=never"],
        &[
            bin("unit-child").to_str().expect("UTF-8"),
            "--commit",
            "12",
            "--unit-bytes",
            "40",
            "--then",
            "exit:0",
        ],
    );
    let status = sup.wait();
    assert_eq!(status.code(), Some(0), "{}", sup.transcript());
    let image = export(dir.path());
    let from_python = python_dump(&image);
    assert_eq!(from_python, dump(&image));
    assert_eq!(from_python.lines().count(), 12, "{from_python}");
}

//! Regions cross languages through the store: a region the C example
//! committed, exported with `shm-restore export`, holds for the Rust client
//! exactly the units the C client reads back from it, and a region a Rust
//! program committed reads the same through the C client.

mod support;

use std::path::Path;
use std::process::Command;

use shm_snapshot_tests::table::{dump, unit_for};
use shm_snapshot_tests::{Proc, bin, workdir};

/// Exports the newest generation of the store `state` in `dir` to
/// `dir/image`.
fn export(dir: &Path) -> std::path::PathBuf {
    let image = dir.join("image");
    let out = Command::new(bin("shm-restore"))
        .current_dir(dir)
        .args(["export", "state", "-o", "image"])
        .output()
        .expect("running shm-restore export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    image
}

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
    let mut sup = Proc::supervise(
        dir.path(),
        "state",
        &["--size=8MiB", "--fsync=never"],
        &[
            table.to_str().expect("UTF-8"),
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
        c_dump(&image),
        "the Rust and the C client read the same units"
    );
    // And they are the units the C example committed: ten of them, the
    // table growing by 32 entries each, their checksums as Rust folds them.
    let expected: String = (1..=10u64)
        .map(|k| {
            let hex: String = unit_for(32 * k).iter().map(|b| format!("{b:02x}")).collect();
            format!("unit {k} {hex}\n")
        })
        .collect();
    assert_eq!(rust, expected);
}

#[test]
fn units_a_rust_program_committed_read_back_identically_through_the_c_client() {
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

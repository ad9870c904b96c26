//! The Python API, tested from Python (`tests/test_client.py`, unittest)
//! against the package as installed.

mod support;

use std::process::Command;

#[test]
fn the_python_api_tests_pass() {
    let out = Command::new(support::python())
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(support::package_dir().join("tests"))
        .args(["-p", "test_*.py"])
        .env_remove("LISTEN_FDS")
        .output()
        .expect("running the Python tests");
    let report = String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    // unittest ends with "Ran N tests" and "OK"; a discovery that found
    // nothing would pass with N = 0.
    let ran: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .expect("a count of tests");
    assert!(ran >= 10, "only {ran} Python tests ran:\n{report}");
}

//! primes-snapshot without a supervisor: it runs on a private region and
//! keeps its output contract. (This test also makes `cargo test` build the
//! binary the cross-process tests run.)

use std::process::Command;

#[test]
fn without_a_supervisor_it_runs_on_a_private_region_and_stops_at_its_limit() {
    let out = Command::new(env!("CARGO_BIN_EXE_primes-snapshot"))
        .args(["--limit", "25", "--batch", "10", "--interval", "0"])
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"restored primes=0 last=0"));
    // 25 primes end at 97: the last commit says so, and each one before it
    // reports progress in steps of the batch.
    assert_eq!(lines.last(), Some(&"committed primes=25 last=97"));
    assert!(
        lines[1..].iter().all(|l| l.starts_with("committed primes=")),
        "{stdout}"
    );
    assert!(String::from_utf8(out.stderr).unwrap().contains("no supervisor"));
}

#[test]
fn a_bad_flag_is_refused_with_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_primes-snapshot"))
        .arg("--batch=0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

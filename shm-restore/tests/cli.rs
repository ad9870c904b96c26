//! Bad arguments: one clear line on stderr, exit status 2, nothing started.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let dir = std::env::temp_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_shm-restore"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().expect("exited"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn assert_usage_error(args: &[&str], mentions: &str) {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 2, "args {args:?}: stderr {stderr}");
    assert!(stdout.is_empty(), "args {args:?}: stdout {stdout}");
    assert_eq!(stderr.lines().count(), 1, "args {args:?}: not one line: {stderr}");
    assert!(stderr.starts_with("shm-restore: "), "{stderr}");
    assert!(
        stderr.contains(mentions),
        "args {args:?}: {stderr} does not mention {mentions}"
    );
}

#[test]
fn missing_snapshot_directory_is_one_line_and_status_2() {
    assert_usage_error(&["./program"], "--snapshot");
}

#[test]
fn missing_command_is_one_line_and_status_2() {
    assert_usage_error(&["--snapshot=state"], "COMMAND");
}

#[test]
fn malformed_size_duration_and_policy_are_one_line_and_status_2() {
    assert_usage_error(&["--snapshot=s", "--size=lots", "x"], "lots");
    assert_usage_error(&["--snapshot=s", "--size=0", "x"], "--size");
    assert_usage_error(&["--snapshot=s", "--size=1KiB", "x"], "needs at least 1.0 MiB");
    assert_usage_error(&["--snapshot=s", "--grace=soon", "x"], "soon");
    assert_usage_error(&["--snapshot=s", "--restart=sometimes", "x"], "sometimes");
    assert_usage_error(&["--snapshot=s", "--keep=0", "x"], "--keep");
    assert_usage_error(&["--snapshot=s", "--bogus", "x"], "--bogus");
}

#[test]
fn help_shows_an_example_and_exits_0() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("shm-restore --snapshot=./state -- ./my-program"),
        "{stdout}"
    );
    assert!(stdout.contains("--restart-limit"), "{stdout}");
}

#[test]
fn a_program_that_does_not_exist_is_reported_before_anything_starts() {
    let dir = tempfile_dir();
    let store = format!("--snapshot={}/state", dir.display());
    let (code, _, stderr) = run(&[&store, "--", "./no-such-program"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("shm-restore: cannot start ./no-such-program: no such file")
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shm-restore-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn help_lists_every_subcommand_and_the_run_form() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("shm-restore [OPTIONS] --snapshot <DIR> [--] <COMMAND>..."),
        "{stdout}"
    );
    for sub in [
        "inspect", "verify", "export", "import", "prune", "watch", "cleanup",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "{sub} missing from:\n{stdout}"
        );
    }
}

#[test]
fn subcommand_usage_errors_are_one_line_and_status_2() {
    assert_usage_error(&["inspect"], "<DIR>");
    assert_usage_error(&["prune", "state"], "--keep");
    assert_usage_error(&["prune", "state", "--keep=0"], "--keep");
    assert_usage_error(&["export", "state"], "--output");
    assert_usage_error(&["import", "image"], "--snapshot");
    assert_usage_error(&["inspect", "state", "--generation=3"], "--units");
    assert_usage_error(&["verify", "state", "--bogus"], "--bogus");
}

#[test]
fn a_program_named_like_a_subcommand_still_runs_in_the_run_form() {
    let dir = tempfile_dir();
    let store = format!("--snapshot={}/named", dir.display());
    for args in [
        &[&store, "inspect"][..],
        &[&store, "--", "verify", "--json", "-v"][..],
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.lines().last().is_some_and(|l| {
                let program = args.iter().rev().find(|a| !a.starts_with('-')).unwrap();
                l.starts_with(&format!("shm-restore: cannot start {program}: "))
            }),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_store_path_that_is_a_file_is_one_line_that_says_so() {
    let file = std::env::temp_dir().join(format!("shm-restore-cli-file-{}", std::process::id()));
    std::fs::write(&file, b"not a store").unwrap();
    let below = format!("--snapshot={}/state", file.display());
    let (code, _, stderr) = run(&[&below, "--", "/bin/true"]);
    assert_eq!((code, stderr.lines().count()), (1, 1), "{stderr}");
    assert!(
        stderr.contains("a part of its path is a file, not a directory"),
        "{stderr}"
    );
    let snapshot = format!("--snapshot={}", file.display());
    let (code, stdout, stderr) = run(&[&snapshot, "--", "/bin/true"]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.starts_with("shm-restore: cannot use ") && stderr.contains("it is a file, not a directory"),
        "{stderr}"
    );
}

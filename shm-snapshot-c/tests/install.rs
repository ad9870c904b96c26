//! The install script and its pkg-config file: a program built with
//! `pkg-config --cflags --libs shm_snapshot` against an installed prefix
//! links the shared library and runs.

mod support;

use std::process::Command;

#[test]
fn a_program_builds_from_the_installed_pkg_config_file_and_runs() {
    let prefix =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prefix-{}", std::process::id()));
    let out = Command::new("sh")
        .arg(support::crate_dir().join("install.sh"))
        .arg(&prefix)
        .arg(support::lib_dir())
        .output()
        .expect("running install.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pkgconfig = prefix.join("lib/pkgconfig");
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "shm_snapshot"])
        .env("PKG_CONFIG_PATH", &pkgconfig)
        .output()
        .expect("running pkg-config");
    assert!(
        flags.status.success(),
        "{}",
        String::from_utf8_lossy(&flags.stderr)
    );
    let flags = String::from_utf8(flags.stdout).expect("UTF-8");
    assert!(flags.contains("-lshm_snapshot"), "{flags}");

    let program = prefix.join("table");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut command = Command::new(cc);
    command
        .args(["-std=c11", "-Wall", "-Werror", "-D_POSIX_C_SOURCE=200809L"])
        .arg(support::crate_dir().join("examples/table.c"))
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&program);
    support::run_compiler(command);
    let run = Command::new(&program)
        .args(["--limit", "64", "--interval-ms", "0"])
        .env("LD_LIBRARY_PATH", prefix.join("lib"))
        .env_remove("LISTEN_FDS")
        .output()
        .expect("running the program");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "restored entries=0\ncommitted entries=64 seq=1\n"
    );
    let ldd = Command::new("ldd")
        .arg(&program)
        .env("LD_LIBRARY_PATH", prefix.join("lib"))
        .output()
        .expect("running ldd");
    let linked = String::from_utf8_lossy(&ldd.stdout);
    assert!(
        linked.contains("libshm_snapshot.so"),
        "linked dynamically: {linked}"
    );
    std::fs::remove_dir_all(&prefix).ok();
}

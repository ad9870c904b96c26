//! The header compiles as C++ (its declarations are `extern "C"`) and a
//! C++ program links against the library and runs.

mod support;

use std::process::Command;

#[test]
fn a_cpp_program_includes_the_header_and_commits() {
    let output = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("shm-snapshot-c-units-cpp");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let mut command = Command::new(cxx);
    command
        .args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(support::crate_dir().join("include"))
        .arg(support::crate_dir().join("tests/cpp/units.cpp"))
        .arg(support::lib_dir().join("libshm_snapshot.a"))
        .args(support::NATIVE_LIBS)
        .arg("-o")
        .arg(&output);
    support::run_compiler(command);
    let out = Command::new(&output).output().expect("running the C++ program");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 first\n2 second\n");
}

//! Building the C and C++ sources of the tests against the library cargo
//! built for them, and reading what the example prints.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The libraries a Rust static library needs from the system
/// (`rustc --print native-static-libs` on Linux with glibc).
pub const NATIVE_LIBS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

/// The directory holding `libshm_snapshot.a` and `.so`: cargo builds this
/// crate's library (all its crate types) before its tests, into the same
/// `deps` directory as the test executable, so they are always current.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().expect("target/<profile>/deps").to_path_buf()
}

/// The crate's directory.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a compiler, panicking with its output if it fails.
pub fn run_compiler(mut command: Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e} (a C compiler is needed: set CC)"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles the C file `source` (relative to the crate) into `output`,
/// linked statically against the library, with every warning an error.
pub fn compile_c(source: &str, output: &Path) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut command = Command::new(cc);
    command
        .args([
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-D_POSIX_C_SOURCE=200809L",
        ])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join(source))
        .arg(lib_dir().join("libshm_snapshot.a"))
        .args(NATIVE_LIBS)
        .arg("-o")
        .arg(output);
    run_compiler(command);
}

/// The example program `examples/table.c`, compiled once per test
/// executable.
pub fn table() -> &'static Path {
    static TABLE: OnceLock<PathBuf> = OnceLock::new();
    TABLE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shm-snapshot-c");
        std::fs::create_dir_all(&dir).expect("build directory");
        let exe = std::env::current_exe().expect("test executable");
        let name = format!(
            "table-{}",
            exe.file_name().and_then(|n| n.to_str()).unwrap_or("test")
        );
        let output = dir.join(name);
        compile_c("examples/table.c", &output);
        output
    })
}

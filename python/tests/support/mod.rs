//! The Python interpreter the package was installed into, and the example.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The interpreter of the virtual environment `scripts/test` installs the
/// package into (`SHM_SNAPSHOT_PYTHON`).
pub fn python() -> PathBuf {
    let python = std::env::var_os("SHM_SNAPSHOT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "SHM_SNAPSHOT_PYTHON is not set: run the tests with scripts/test, which builds the Python \
             package into a virtual environment under target/ and sets it"
            )
        });
    assert!(
        python.exists(),
        "SHM_SNAPSHOT_PYTHON={} does not exist",
        python.display()
    );
    python
}

/// The package's directory.
pub fn package_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The example program.
pub fn table() -> PathBuf {
    package_dir().join("examples/table.py")
}

//! The checked-in header is what cbindgen makes of the crate now.
//!
//! `SHM_SNAPSHOT_WRITE_HEADER=1 cargo test -p shm-snapshot-c --test header`
//! writes it after a change of the C interface.

use std::path::Path;

#[test]
fn checked_in_header_matches_the_crate() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("generating the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = crate_dir.join("include/shm_snapshot.h");
    if std::env::var_os("SHM_SNAPSHOT_WRITE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("writing the header");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} is stale: regenerate it with `SHM_SNAPSHOT_WRITE_HEADER=1 cargo test -p shm-snapshot-c --test header` and commit it",
        path.display()
    );
}

//! Finding the binaries a runner starts. The runners build nothing: they run
//! what `cargo build --release --workspace` left in `<target>/release`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

/// `<target>/release`, beside the profile directory the running executable
/// comes from (`<target>/<profile>/<runner>`), whichever profile built it.
pub fn release_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not inside <target>/<profile>/", exe.display()))?;
    Ok(target.join("release"))
}

/// The binary `name` in `release`, or an error naming it and how to build it.
pub fn binary(release: &Path, name: &str) -> Result<PathBuf> {
    let path = release.join(name);
    ensure!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --release --workspace`",
        path.display()
    );
    Ok(path)
}

//! The store on disk: its size, and whether it is on tmpfs.

use std::path::Path;

use anyhow::{Context, Result};

/// `f_type` of a tmpfs in statfs(2).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Total bytes (apparent sizes) of the regular files under `dir`.
pub fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            total += tree_bytes(&path)?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Whether `path` is on tmpfs, where fsync costs nothing.
pub fn is_tmpfs(path: &Path) -> Result<bool> {
    let stat = rustix::fs::statfs(path)?;
    // The field's type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let kind = stat.f_type as i64;
    Ok(kind == TMPFS_MAGIC)
}

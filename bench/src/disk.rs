//! The store on disk: its files and their size, and whether it is on tmpfs.

use std::path::Path;

use anyhow::{Context, Result};

/// `f_type` of a tmpfs in statfs(2).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The regular files under a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tree {
    /// How many there are, in every subdirectory too.
    pub files: u64,
    /// Their total size (apparent sizes, not blocks).
    pub bytes: u64,
}

/// The regular files under `dir`, counted and sized.
pub fn tree(dir: &Path) -> Result<Tree> {
    let mut total = Tree::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            let below = tree(&path)?;
            total.files += below.files;
            total.bytes += below.bytes;
        } else if meta.is_file() {
            total.files += 1;
            total.bytes += meta.len();
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

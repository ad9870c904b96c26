//! The disk's own sync latency, measured in the file system a store goes
//! on, so the supervisor's figures can be judged against the disk they ran
//! on. Two probes, each a few hundred times:
//!
//! - **append**: append 4 KiB to one file, then `fdatasync` it: what an
//!   append-only store pays per batch (each append also grows the file, so
//!   the sync carries its new size);
//! - **replace**: create a file, write 4 KiB, `fsync` it, rename it over the
//!   previous one and `fsync` the directory: what a store that writes a new
//!   file per generation pays.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::stats::Spread;

/// Bytes written before each sync: one page, the smallest write a store
/// makes.
pub const WRITE_BYTES: usize = 4096;

/// Which sequence a probe times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Append 4 KiB to a file and `fdatasync` it.
    Append,
    /// Create, write 4 KiB, `fsync`, rename over the previous file, `fsync`
    /// the directory.
    Replace,
}

impl Probe {
    /// Both probes, in the order a run takes them.
    pub const ALL: [Probe; 2] = [Probe::Append, Probe::Replace];

    /// What the probe does, for a table.
    pub fn describe(self) -> &'static str {
        match self {
            Probe::Append => "append 4 KiB + fdatasync",
            Probe::Replace => "create + write 4 KiB + fsync + rename + directory fsync",
        }
    }

    /// A short name, for JSON.
    pub fn key(self) -> &'static str {
        match self {
            Probe::Append => "append_fdatasync",
            Probe::Replace => "create_fsync_rename_dirsync",
        }
    }
}

/// Times `samples` rounds of `probe` in a fresh temporary directory under
/// `parent` (removed afterwards). Every sample is kept; the first ones are
/// not set apart, as a store's first syncs are not either.
pub fn measure(probe: Probe, parent: &Path, samples: usize) -> Result<Spread> {
    let dir = tempfile::Builder::new()
        .prefix("shm-sync-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let data = page();
    let mut nanos = Vec::with_capacity(samples);
    match probe {
        Probe::Append => {
            let path = dir.path().join("append");
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            for _ in 0..samples {
                let start = Instant::now();
                file.write_all(&data)
                    .and_then(|()| file.sync_data())
                    .with_context(|| format!("appending to {}", path.display()))?;
                nanos.push(elapsed_ns(start));
            }
        }
        Probe::Replace => {
            let directory =
                File::open(dir.path()).with_context(|| format!("opening {}", dir.path().display()))?;
            let staged = dir.path().join("replace.tmp");
            let target = dir.path().join("replace");
            for _ in 0..samples {
                let start = Instant::now();
                let mut file = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(&staged)
                    .with_context(|| format!("creating {}", staged.display()))?;
                file.write_all(&data)
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("writing {}", staged.display()))?;
                drop(file);
                std::fs::rename(&staged, &target)
                    .with_context(|| format!("renaming {} to {}", staged.display(), target.display()))?;
                directory
                    .sync_all()
                    .with_context(|| format!("syncing the directory {}", dir.path().display()))?;
                nanos.push(elapsed_ns(start));
            }
        }
    }
    Spread::of_nanos(&nanos).context("no sample taken")
}

/// A page of bytes that are neither zero nor all alike.
fn page() -> Vec<u8> {
    (0..WRITE_BYTES).map(|i| (i * 31 % 251) as u8 + 1).collect()
}

fn elapsed_ns(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_probes_take_their_samples_and_leave_nothing_behind() {
        let parent = tempfile::tempdir().expect("temporary directory");
        for probe in Probe::ALL {
            let spread = measure(probe, parent.path(), 3).expect("measured");
            assert!(
                spread.p50 <= spread.p99 && spread.p99 <= spread.max,
                "{probe:?}: {spread:?}"
            );
        }
        let left = std::fs::read_dir(parent.path()).expect("listing").count();
        assert_eq!(left, 0, "the probes' directories are removed");
    }
}

//! Opening a store for a subcommand: read-only without the lock, or
//! locked for a change, each with the messages an operator needs.

use std::path::Path;

use anyhow::{Result, bail};
use shm_snapshot::store::{LOCK_FILE, Store, StoreError, StoreOptions};

/// Fails unless `dir` is an existing store directory: it holds the lock
/// file a supervisor creates, or generation files.
pub fn check_is_store(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no store at {}: no such directory", dir.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{} is not a store: not a directory", dir.display())
        }
        Err(e) => bail!("cannot read {}: {e}", dir.display()),
    };
    let is_store = entries.filter_map(Result::ok).any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name == LOCK_FILE || (name.starts_with("gen-") && name.ends_with(".snap"))
    });
    if !is_store {
        bail!(
            "{} is not a shm-snapshot store (no lock file, no generation files)",
            dir.display()
        );
    }
    Ok(())
}

/// Opens the store in `dir` read-only, without its lock: a supervisor may
/// be writing it.
pub fn open_read_only(dir: &Path) -> Result<Store> {
    check_is_store(dir)?;
    Ok(Store::open_read_only(dir)?)
}

/// Opens the store in `dir` with its lock, for a change; refuses a store a
/// running supervisor holds.
pub fn open_locked(dir: &Path, options: StoreOptions) -> Result<Store> {
    match Store::open(dir, options) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { pid, .. }) => Err(in_use(dir, pid)),
        Err(e) => Err(e.into()),
    }
}

/// The refusal for a store in use.
pub fn in_use(dir: &Path, pid: Option<u32>) -> anyhow::Error {
    let holder = pid.map_or_else(String::new, |pid| format!(" (pid {pid})"));
    anyhow::anyhow!(
        "{} is in use by a running supervisor{holder}; stop it first",
        dir.display()
    )
}

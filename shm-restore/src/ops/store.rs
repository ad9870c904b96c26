//! Opening a store for a subcommand: read-only without the lock, or
//! locked for a change, each with the messages an operator needs; and
//! whether someone is writing a store, asked without touching it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Result, bail};
use shm_snapshot::store::{LOCK_FILE, Store, StoreError, StoreOptions};

/// Fails unless `dir` is an existing store directory: it holds the lock
/// file a store's owner creates, or files the store reads (segments, base
/// files, version 2 generation files).
pub fn check_is_store(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no store at {}: no such directory", dir.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{} is not a store: not a directory", dir.display())
        }
        Err(e) => bail!("cannot read {}: {e}", dir.display()),
    }
    if dir.join(LOCK_FILE).exists() {
        return Ok(());
    }
    // The store's own listing decides what its files are (it only reads).
    let store = Store::open_read_only(dir)?;
    if store.files().is_empty() && store.present().is_empty() {
        bail!(
            "{} is not a shm-snapshot store (no lock file, no segments, no base files)",
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

/// Who is writing the store in `dir` right now, if anyone: the process
/// holding the `flock` on its lock file, as the kernel lists it in
/// `/proc/locks`. `Some(None)` when the holder's pid is not visible here
/// (another pid namespace).
///
/// Asked without touching the store: taking the lock, even shared and for
/// an instant, would make a supervisor starting at that moment fail.
/// Only the owner writes a store, so a store nobody holds is not being
/// written. The lock file is matched by inode number alone: the device
/// numbers the kernel prints there and the ones `stat` gives disagree on
/// some file systems (overlayfs), and a false match only makes a reader
/// more lenient about the end of a segment.
pub fn writer(dir: &Path) -> Option<Option<u32>> {
    let inode = std::fs::metadata(dir.join(LOCK_FILE)).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| flock_holder(line, inode))
}

/// The holder's pid in a `/proc/locks` line that grants an `flock` on
/// inode `inode` (`1: FLOCK  ADVISORY  WRITE 4242 fe:00:10207494 0 EOF`);
/// `None` for any other line, such as one of a process waiting for the
/// lock (`1: -> FLOCK ...`).
fn flock_holder(line: &str, inode: u64) -> Option<Option<u32>> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, "FLOCK", _, _, pid, file, ..] = fields[..] else {
        return None;
    };
    let ino: u64 = file.rsplit(':').next()?.parse().ok()?;
    (ino == inode).then(|| pid.parse().ok().filter(|&pid| pid != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_flock_on_the_inode_is_found_and_waiters_and_other_locks_are_not() {
        let held = "1: FLOCK  ADVISORY  WRITE 4242 fe:00:10207494 0 EOF";
        assert_eq!(flock_holder(held, 10207494), Some(Some(4242)));
        assert_eq!(flock_holder(held, 10207495), None);
        let waiting = "1: -> FLOCK  ADVISORY  WRITE 4243 fe:00:10207494 0 EOF";
        assert_eq!(flock_holder(waiting, 10207494), None);
        let posix = "2: POSIX  ADVISORY  WRITE 4244 fe:00:10207494 0 EOF";
        assert_eq!(flock_holder(posix, 10207494), None);
        let hidden = "3: FLOCK  ADVISORY  WRITE 0 fe:00:10207494 0 EOF";
        assert_eq!(flock_holder(hidden, 10207494), Some(None));
    }

    #[test]
    fn a_store_this_process_holds_is_being_written_and_then_not() {
        let dir = std::env::temp_dir().join(format!("shm-restore-writer-{}", std::process::id()));
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        assert_eq!(writer(&dir), Some(Some(std::process::id())));
        drop(store);
        // A process another test forks may hold a duplicate of the lock's
        // descriptor until its exec closes it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while writer(&dir).is_some() {
            assert!(std::time::Instant::now() < deadline, "the lock is still held");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

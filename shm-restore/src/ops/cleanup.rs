//! `shm-restore cleanup DIR`: removes what a dead supervisor left in its
//! store: temporary files, its status file, the processes its program
//! started, and the pid its lock file records (the file itself stays).
//! Refuses while a supervisor holds the store.

use std::process::ExitCode;

use anyhow::{Result, bail};
use shm_snapshot::store::{LOCK_FILE, StoreOptions};

use super::args::Cleanup;
use super::store::{check_is_store, open_locked};
use crate::{leftovers, status};

/// Runs `cleanup`.
pub fn run(a: &Cleanup) -> Result<ExitCode> {
    check_is_store(&a.dir)?;
    let lock_path = a.dir.join(LOCK_FILE);
    // The pid the last owner wrote, read before taking the lock rewrites it.
    let had_lock = lock_path.exists();
    let last_owner = std::fs::read_to_string(&lock_path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    // Taking the lock refuses a live supervisor, and removes the temporary
    // generation files a dead one left.
    let options = StoreOptions {
        keep: usize::MAX,
        ..StoreOptions::default()
    };
    let store = open_locked(&a.dir, options)?;
    let mut removed = 0;
    for temp in store.removed_temp_files() {
        println!("removed temporary file {}", temp.display());
        removed += 1;
    }
    for temp in status::remove_temp_files(&a.dir) {
        println!("removed temporary file {}", temp.display());
        removed += 1;
    }
    let status_path = a.dir.join(status::STATUS_FILE);
    if std::fs::remove_file(&status_path).is_ok() {
        println!("removed stale status file {}", status_path.display());
        removed += 1;
    }
    if let Some(left) = leftovers::kill_recorded(&a.dir) {
        match left.killed {
            0 => println!(
                "removed the record of the program's process group {} (nothing of it left running)",
                left.pgid
            ),
            1 => println!(
                "killed 1 leftover process of the program's process group {} and removed its record",
                left.pgid
            ),
            n => println!(
                "killed {n} leftover processes of the program's process group {} and removed its record",
                left.pgid
            ),
        }
        removed += 1;
    }
    // The lock file stays: removing it would let a supervisor that opened
    // it before the removal and locks it after hold a lock on a file no
    // longer in the directory while a second one creates a new file and
    // locks that too. Only the pid recorded in it goes (taking the lock
    // wrote ours), truncated while we hold the lock.
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .and_then(|f| f.set_len(0))
    {
        bail!("cannot clear the pid recorded in {}: {e}", lock_path.display());
    }
    if let (true, Some(pid)) = (had_lock, last_owner) {
        println!(
            "cleared stale lock {} (last held by pid {pid}; the file stays)",
            lock_path.display()
        );
        removed += 1;
    }
    drop(store);
    if removed == 0 {
        println!("{}: nothing to clean up", a.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

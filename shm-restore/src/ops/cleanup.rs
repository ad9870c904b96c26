//! `shm-restore cleanup DIR`: removes what a dead supervisor left in its
//! store: temporary files, its status file, the processes its program
//! started, and its lock file. Refuses while a supervisor holds the store.

use std::process::ExitCode;

use anyhow::Result;
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
    // Removed while we hold it: a supervisor starting now makes a new one.
    // One that taking the lock created is no leftover.
    if std::fs::remove_file(&lock_path).is_ok() && had_lock {
        let owner = last_owner.map_or_else(String::new, |pid| format!(" (last held by pid {pid})"));
        println!("removed stale lock {}{owner}", lock_path.display());
        removed += 1;
    }
    drop(store);
    if removed == 0 {
        println!("{}: nothing to clean up", a.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

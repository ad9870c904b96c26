//! One owner per store: an exclusive `flock` on the directory's `lock` file,
//! which also records the owner's pid so a refused second owner can say who
//! holds it.
//!
//! `flock` belongs to the open file description, so it is released when the
//! owner's descriptor closes, including when the owner is killed: a stale
//! lock file never blocks a new owner. Two `Store`s in one process open the
//! file separately and exclude each other too.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

use super::io::LockAttempt;

/// Name of the lock file in the store's directory.
pub const LOCK_FILE: &str = "lock";

/// Takes the lock at `path` on the real file system (see
/// [`super::StoreIo::lock`]).
pub(crate) fn acquire(path: &Path) -> io::Result<LockAttempt> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut text = String::new();
            // The pid is only informative: an unreadable one is reported as
            // unknown rather than as an error.
            let holder = file.read_to_string(&mut text).ok().and_then(|_| parse_pid(&text));
            return Ok(LockAttempt::Held { holder });
        }
        Err(e) => return Err(e.into()),
    }
    file.set_len(0)?;
    file.write_all_at(format_pid(std::process::id()).as_bytes(), 0)?;
    Ok(LockAttempt::Acquired(Box::new(file)))
}

/// The lock file's contents for `pid`.
pub(crate) fn format_pid(pid: u32) -> String {
    format!("{pid}\n")
}

/// The pid recorded in a lock file, if it holds one.
pub(crate) fn parse_pid(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|pid| *pid != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_round_trips_and_garbage_is_unknown() {
        assert_eq!(parse_pid(&format_pid(4242)), Some(4242));
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("x1\n"), None);
        assert_eq!(parse_pid("0\n"), None);
    }
}

//! Processes a killed supervisor left behind.
//!
//! The program dies with its supervisor (PDEATHSIG), but processes the
//! program started only die if someone kills its process group, and a
//! supervisor killed by SIGKILL cannot. So the supervisor records the
//! program's process group in the store directory, and the next supervisor
//! on that store kills whatever is left of it before starting anything.
//!
//! Pids are reused, so a recorded group is killed only if it still has a
//! member that is visibly ours: it holds a shm-snapshot memfd, or carries
//! the hand-over variable `LISTEN_FDNAMES=SHM_SHARED_FD` in its environment.

use std::path::{Path, PathBuf};

use tracing::warn;

/// The record's file name in the store directory.
const RECORD: &str = "program.pgid";

fn record_path(store: &Path) -> PathBuf {
    store.join(RECORD)
}

/// Records `pgid` as the running program's process group.
pub fn record(store: &Path, pgid: i32) {
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(record_path(store))
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{pgid}\n").as_bytes()));
    if let Err(e) = written {
        warn!(
            "cannot record the program's process group in the store ({e}); a supervisor killed by SIGKILL may leave its descendants running"
        );
    }
}

/// Forgets the record once the program's group is gone.
pub fn clear(store: &Path) {
    let _ = std::fs::remove_file(record_path(store));
}

/// What [`kill_recorded`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    /// The recorded process group.
    pub pgid: i32,
    /// Its members killed (0 if none was left, or none was ours).
    pub killed: usize,
}

/// Kills what is left of a recorded group from a previous supervisor and
/// removes the record; `None` if there was no record.
pub fn kill_recorded(store: &Path) -> Option<Leftover> {
    let text = std::fs::read_to_string(record_path(store)).ok()?;
    let Ok(pgid) = text.trim().parse::<i32>() else {
        clear(store);
        return Some(Leftover { pgid: 0, killed: 0 });
    };
    let members = members_of(pgid);
    let ours = members.iter().any(|pid| is_ours(*pid));
    if ours {
        warn!(
            pgid,
            processes = members.len(),
            "killing what a previous supervisor's program left running"
        );
        if let Some(group) = rustix::process::Pid::from_raw(pgid) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
    clear(store);
    Some(Leftover {
        pgid,
        killed: if ours { members.len() } else { 0 },
    })
}

/// The live pids whose process group is `pgid`, from /proc. Zombies are
/// left out: they are dead already (their parent has not reaped them yet),
/// so counting them would report killing a process that was not running.
fn members_of(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(stat_of(*pid), Some(s) if s.pgid == pgid && s.state != 'Z'))
        .collect()
}

/// What /proc/<pid>/stat says of a process.
struct Stat {
    /// Field 3: R, S, D, Z (zombie), T, ...
    state: char,
    /// Field 5: the process group.
    pgid: i32,
}

/// Fields 3 and 5 of /proc/<pid>/stat, counted after the parenthesised
/// command name (which may itself hold spaces and parentheses).
fn stat_of(pid: i32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgid = fields.nth(1)?.parse().ok()?;
    Some(Stat { state, pgid })
}

/// Whether `pid` holds a shm-snapshot memfd or was handed a region.
fn is_ours(pid: i32) -> bool {
    let holds_region = std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:shm-snapshot"))
        })
    });
    holds_region
        || std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            let marker = format!("LISTEN_FDNAMES={}", shm_snapshot::FD_NAME);
            env.split(|b| *b == 0).any(|var| var == marker.as_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_group_is_read_past_a_command_name_with_spaces() {
        let me = std::process::id() as i32;
        let expected = rustix::process::getpgid(None).unwrap().as_raw_nonzero().get();
        let stat = stat_of(me).unwrap();
        assert_eq!(stat.pgid, expected);
        // The main thread's: running the test, or waiting for its thread.
        assert!(matches!(stat.state, 'R' | 'S'), "state {}", stat.state);
        assert!(members_of(expected).contains(&me));
    }

    /// Spawns `argv` in a process group of its own.
    fn in_own_group(argv: &[&str]) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(argv[0])
            .args(&argv[1..])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_zombie_is_not_a_member_a_live_process_is() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut live = in_own_group(&["sleep", "30"]);
        let mut dead = in_own_group(&["true"]);
        let (live_pid, dead_pid) = (live.id() as i32, dead.id() as i32);
        // Not reaped yet: `true` stays a zombie in its group until waited for.
        while stat_of(dead_pid).is_none_or(|s| s.state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "true never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(stat_of(dead_pid).map(|s| s.pgid), Some(dead_pid));
        let zombie_members = members_of(dead_pid);
        let live_members = members_of(live_pid);
        live.kill().unwrap();
        live.wait().unwrap();
        dead.wait().unwrap();
        assert_eq!(zombie_members, Vec::<i32>::new());
        assert_eq!(live_members, vec![live_pid]);
    }
}

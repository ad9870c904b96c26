//! Running `shm-restore`'s subcommands from tests: one call, its status
//! and output, bounded by [`crate::PATIENCE`].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{PATIENCE, bin};

/// What a finished command did.
#[derive(Debug)]
pub struct Ran {
    /// Its exit status (`None` if a signal ended it).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Ran {
    /// Everything, for failure messages.
    pub fn show(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `shm-restore args...` in `dir` to completion. Panics if it takes
/// longer than [`PATIENCE`].
pub fn shm_restore(dir: &Path, args: &[&str]) -> Ran {
    let child = Command::new(bin("shm-restore"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shm-restore");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.expect("waiting for shm-restore"),
        Err(_) => {
            crate::send(pid, libc::SIGKILL);
            panic!("shm-restore {args:?} did not finish within {PATIENCE:?}");
        }
    };
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `check` until it returns `Some`, for at most [`PATIENCE`].
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

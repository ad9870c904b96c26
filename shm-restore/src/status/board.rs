//! What the lifecycle reports (the program's pid, restarts, the
//! supervisor's state) and the reporter's wake-up, plus the newest
//! generation as the reporter last read it, for readers that must not
//! wait for the store.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::file::{State, now_ms};

/// What the lifecycle reports, and the reporter's wake-up.
#[derive(Debug)]
pub struct Board {
    inner: Mutex<Lifecycle>,
    changed: Condvar,
}

/// The lifecycle's figures at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    /// What the supervisor is doing.
    pub state: State,
    /// The running program's pid.
    pub child_pid: Option<i32>,
    /// When it started, milliseconds since the Unix epoch.
    pub child_started_ms: Option<u64>,
    /// Relaunches so far.
    pub restarts: u64,
    /// Programs started so far.
    launches: u64,
    /// The newest generation persisted or restored, as the reporter last
    /// read it.
    pub generation: Option<u64>,
    /// The reporter should stop.
    pub done: bool,
    /// Something changed since the reporter last looked.
    dirty: bool,
}

impl Default for Board {
    fn default() -> Board {
        Board {
            inner: Mutex::new(Lifecycle {
                state: State::Starting,
                child_pid: None,
                child_started_ms: None,
                restarts: 0,
                launches: 0,
                generation: None,
                done: false,
                dirty: true,
            }),
            changed: Condvar::new(),
        }
    }
}

impl Board {
    fn update(&self, f: impl FnOnce(&mut Lifecycle)) {
        let mut l = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut l);
        l.dirty = true;
        self.changed.notify_all();
    }

    /// The program started with `pid`.
    pub fn child_started(&self, pid: i32) {
        self.update(|l| {
            l.launches += 1;
            l.restarts = l.launches - 1;
            l.state = State::Running;
            l.child_pid = Some(pid);
            l.child_started_ms = Some(now_ms());
        });
    }

    /// The program ended; unless stopping, a relaunch follows.
    pub fn child_ended(&self) {
        self.update(|l| {
            l.child_pid = None;
            l.child_started_ms = None;
            if l.state != State::Stopping {
                l.state = State::Restarting;
            }
        });
    }

    /// A stop signal came.
    pub fn stopping(&self) {
        self.update(|l| l.state = State::Stopping);
    }

    /// The reporter is to stop.
    pub fn done(&self) {
        self.update(|l| l.done = true);
    }

    /// The reporter read the newest generation.
    pub fn set_generation(&self, generation: Option<u64>) {
        let mut l = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        l.generation = generation.or(l.generation);
    }

    /// The figures now.
    pub fn now(&self) -> Lifecycle {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until something changes or `timeout` passes; the figures then,
    /// and whether they changed since the last call.
    pub fn wait(&self, timeout: Duration) -> (Lifecycle, bool) {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |l| !l.dirty && !l.done)
            .unwrap_or_else(|e| e.into_inner());
        let changed = std::mem::take(&mut guard.dirty);
        (*guard, changed)
    }

    /// One line for a service manager: `running pid N, generation G,
    /// restarts R`, or `between runs, ...`.
    pub fn summary(&self) -> String {
        self.now().summary()
    }
}

impl Lifecycle {
    /// See [`Board::summary`].
    pub fn summary(&self) -> String {
        let generation = self
            .generation
            .map_or_else(|| "none".to_owned(), |g| g.to_string());
        let restarts = self.restarts;
        match self.child_pid {
            None => format!("between runs, generation {generation}, restarts {restarts}"),
            Some(pid) => format!("running pid {pid}, generation {generation}, restarts {restarts}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_pid_generation_and_restarts() {
        let board = Board::default();
        assert_eq!(board.summary(), "between runs, generation none, restarts 0");
        board.child_started(41);
        board.child_ended();
        board.child_started(42);
        board.child_ended();
        board.child_started(42);
        board.set_generation(Some(7));
        board.set_generation(None);
        assert_eq!(board.summary(), "running pid 42, generation 7, restarts 2");
    }
}

//! Starting, pausing and stopping the snapshot thread.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shm_snapshot::Observer;

use super::shared::{Shared, lock};
use super::worker::Worker;

/// Whether the snapshot thread may snapshot, and for which run of the
/// program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No program runs, or the lifecycle is working on the region.
    Paused,
    /// A program runs; the number tells runs apart.
    Running(u64),
    /// The supervisor is ending.
    Shutdown,
}

/// Starts, pauses and stops the snapshot thread.
pub(super) struct Control {
    phase: Mutex<Phase>,
    changed: Condvar,
    /// Set while `set` waits for the phase lock: the thread does not start
    /// another sleep under it, so a pause waits for one sleep at most
    /// instead of losing the lock to the thread again and again.
    leaving: AtomicBool,
    /// The observer the thread sleeps on while it follows a run, so `set`
    /// can end that sleep at once.
    sleeper: Mutex<Option<Arc<Observer>>>,
}

impl Control {
    pub(super) fn set(&self, phase: Phase) {
        // ORDERING: SeqCst store, read under the phase lock by
        // `while_running`; the lock itself orders the rest.
        self.leaving.store(true, Ordering::SeqCst);
        if let Some(observer) = &*self.sleeper.lock().unwrap_or_else(|e| e.into_inner()) {
            // A wake that comes just before the thread's futex wait is lost;
            // that sleep then ends by its own timeout (IDLE_WAIT).
            observer.interrupt_wait();
        }
        let mut guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *guard = phase;
        self.leaving.store(false, Ordering::SeqCst);
        drop(guard);
        self.changed.notify_all();
    }

    /// Makes `observer` the one `set` wakes (`None` when the run ends).
    pub(super) fn sleeping_on(&self, observer: Option<Arc<Observer>>) {
        *self.sleeper.lock().unwrap_or_else(|e| e.into_inner()) = observer;
    }

    pub(super) fn get(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` while the phase is still `Running(run)`, holding the phase
    /// lock throughout: once `pause` has returned, nothing run this way can
    /// still touch the region. (The thread's `stop_waiting` after such a
    /// sleep runs outside the lock and may still clear the host's flag word
    /// after `pause` returned; clear is what a restore leaves there anyway.)
    /// `None` if the run has ended.
    pub(super) fn while_running<T>(&self, run: u64, f: impl FnOnce() -> T) -> Option<T> {
        let guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        (*guard == Phase::Running(run) && !self.leaving.load(Ordering::SeqCst)).then(f)
    }

    /// Sleeps `duration` unless the phase leaves `Running(run)` first.
    pub(super) fn sleep_while_running(&self, run: u64, duration: Duration) {
        let guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .changed
            .wait_timeout_while(guard, duration, |p| *p == Phase::Running(run))
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Waits until the phase is not `Paused`, or `timeout` passes.
    pub(super) fn wait_unpaused(&self, timeout: Duration) -> Phase {
        let guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |p| *p == Phase::Paused)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// The snapshot thread's handle.
pub struct SnapshotThread {
    control: Arc<Control>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
    runs: u64,
}
impl SnapshotThread {
    /// Starts the thread, paused, on the region in `file`.
    pub fn start(
        file: File,
        shared: Arc<Mutex<Shared>>,
        interval: Duration,
        enabled: bool,
    ) -> std::io::Result<Self> {
        lock(&shared).stats.started = Some(Instant::now());
        let control = Arc::new(Control {
            phase: Mutex::new(Phase::Paused),
            changed: Condvar::new(),
            leaving: AtomicBool::new(false),
            sleeper: Mutex::new(None),
        });
        let thread = if enabled {
            let (control, shared) = (control.clone(), shared.clone());
            Some(
                std::thread::Builder::new()
                    .name("snapshots".into())
                    .spawn(move || {
                        Worker::new(file, shared, control, interval).run();
                    })?,
            )
        } else {
            None
        };
        Ok(SnapshotThread {
            control,
            shared,
            thread,
            runs: 0,
        })
    }

    /// Whether snapshots are taken while the program runs (not only after
    /// it ends, by the lifecycle).
    pub fn is_continuous(&self) -> bool {
        self.thread.is_some()
    }

    /// Lets the thread snapshot a newly started program.
    pub fn resume(&mut self) {
        self.runs += 1;
        self.control.set(Phase::Running(self.runs));
    }

    /// Stops snapshotting and returns the shared state once any snapshot in
    /// progress has finished.
    pub fn pause(&self) -> MutexGuard<'_, Shared> {
        self.control.set(Phase::Paused);
        lock(&self.shared)
    }

    /// [`SnapshotThread::pause`], unless the thread is in the middle of a
    /// snapshot: then `None` at once (the thread still stops following the
    /// run once that snapshot is done).
    pub fn try_pause(&self) -> Option<MutexGuard<'_, Shared>> {
        self.control.set(Phase::Paused);
        match self.shared.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The shared state.
    pub fn shared(&self) -> Arc<Mutex<Shared>> {
        self.shared.clone()
    }

    /// Stops the thread for good.
    pub fn shutdown(&mut self) {
        self.control.set(Phase::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SnapshotThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

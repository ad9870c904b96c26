//! Group commit: one `fdatasync` covers every record appended before it
//! began, on a thread of its own, so the writer never waits for a sync it
//! does not need (STORE.md, "Persisting a delta").

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::io::StoreFile;

/// Generations that became durable: generation `number` (and every older
/// one the same sync covered), at `at`, when the sync returned. The state
/// generation `number` holds survives a crash from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// The newest generation made durable.
    pub number: u64,
    /// When the sync returned.
    pub at: Instant,
}

/// Most [`Synced`] entries kept for [`super::Store::take_synced`]: a caller
/// that never takes them costs bounded memory; the newest entry always
/// stays.
const MAX_LOG: usize = 4096;

#[derive(Default)]
struct State {
    /// Handles on segments given since the thread last looked.
    new_files: Vec<(u64, Box<dyn StoreFile>)>,
    /// The newest number appended to each segment and not synced yet, by
    /// segment sequence number.
    marks: BTreeMap<u64, u64>,
    /// The newest number appended.
    appended: u64,
    /// The newest number acknowledged durable.
    synced: u64,
    log: Vec<Synced>,
    /// The first sync that failed; nothing is acknowledged after it.
    failed: Option<io::Error>,
    stop: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // Plain numbers and handles: still meaningful after a panic elsewhere.
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sync side of the store's writer: acknowledges appended records once
/// a sync covering them returned.
pub(crate) struct Syncer {
    shared: Shared,
    /// The segment handles, when syncing happens on the caller's thread.
    inline: Option<BTreeMap<u64, Box<dyn StoreFile>>>,
    thread: Option<JoinHandle<()>>,
    fsync: bool,
}

impl Syncer {
    /// A syncer with nothing appended yet; with `background`, its thread.
    /// Without `fsync`, appending acknowledges at once.
    pub fn new(fsync: bool, background: bool) -> Syncer {
        let shared: Shared = Arc::default();
        let mut inline = None;
        let mut thread = None;
        if fsync && background {
            let s = shared.clone();
            // A thread that cannot start leaves syncing to the caller.
            match std::thread::Builder::new()
                .name("store-sync".to_owned())
                .spawn(move || run(&s))
            {
                Ok(t) => thread = Some(t),
                Err(_) => inline = Some(BTreeMap::new()),
            }
        } else {
            inline = Some(BTreeMap::new());
        }
        Syncer {
            shared,
            inline,
            thread,
            fsync,
        }
    }

    /// Takes over what `failed`, a syncer whose sync failed, acknowledged
    /// before the failure: its newest durable generation, and the
    /// acknowledgements not taken yet. Those generations stay durable;
    /// nothing `failed` was given after them is acknowledged.
    pub fn take_over(&mut self, failed: Syncer) {
        let (synced, log) = {
            let mut f = lock(&failed.shared);
            (f.synced, std::mem::take(&mut f.log))
        };
        // Stops its thread, which acknowledges nothing after a failure.
        drop(failed);
        let mut s = lock(&self.shared);
        s.synced = s.synced.max(synced);
        s.appended = s.appended.max(synced);
        let newer = std::mem::replace(&mut s.log, log);
        s.log.extend(newer);
    }

    /// Starts syncing segment `seq` through `handle` (another handle on the
    /// file the writer appends to).
    pub fn add_segment(&mut self, seq: u64, handle: Box<dyn StoreFile>) {
        match &mut self.inline {
            Some(files) => {
                files.insert(seq, handle);
            }
            None => lock(&self.shared).new_files.push((seq, handle)),
        }
    }

    /// Records that generation `number` was appended to segment `seq`.
    /// Without `fsync` it is acknowledged at once; on the caller's thread
    /// it is synced now; otherwise the sync thread is woken.
    pub fn appended(&mut self, seq: u64, number: u64) -> io::Result<()> {
        {
            let mut s = lock(&self.shared);
            s.appended = s.appended.max(number);
            if !self.fsync {
                s.synced = s.appended;
                push_log(&mut s, number, Instant::now());
                return Ok(());
            }
            s.marks.insert(seq, number);
        }
        match &mut self.inline {
            Some(files) => round_inline(files, &self.shared),
            None => {
                self.shared.1.notify_all();
                Ok(())
            }
        }
    }

    /// Records a generation made durable by other means (a full image in
    /// a base file, synced and renamed into place) as acknowledged. It
    /// depends on no record, so older records still waiting for a sync do
    /// not hold it back: the state it holds is durable.
    pub fn durable(&mut self, number: u64) {
        let mut s = lock(&self.shared);
        s.appended = s.appended.max(number);
        s.synced = s.synced.max(number);
        push_log(&mut s, number, Instant::now());
    }

    /// Waits until generation `number` is durable, or a sync failed.
    pub fn wait(&mut self, number: u64) -> io::Result<()> {
        self.wait_until(|s| s.synced >= number)
    }

    /// Waits until everything appended is durable, or a sync failed.
    pub fn wait_all(&mut self) -> io::Result<()> {
        self.wait_until(|s| s.synced >= s.appended)
    }

    fn wait_until(&mut self, done: impl Fn(&State) -> bool) -> io::Result<()> {
        let mut s = lock(&self.shared);
        loop {
            if let Some(e) = &s.failed {
                return Err(io::Error::new(e.kind(), e.to_string()));
            }
            if done(&s) {
                return Ok(());
            }
            s = self.shared.1.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The failure of a sync, once: what it covered is not acknowledged.
    pub fn take_failure(&mut self) -> Option<io::Error> {
        lock(&self.shared).failed.take()
    }

    /// The newest generation acknowledged durable.
    pub fn synced(&self) -> u64 {
        lock(&self.shared).synced
    }

    /// The acknowledgements since the last call, oldest first.
    pub fn take_log(&mut self) -> Vec<Synced> {
        std::mem::take(&mut lock(&self.shared).log)
    }
}

impl Drop for Syncer {
    /// Stops the thread after it synced what was appended (a sync that
    /// fails is simply not acknowledged).
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn push_log(s: &mut State, number: u64, at: Instant) {
    if s.log.len() >= MAX_LOG {
        s.log.remove(0);
    }
    s.log.push(Synced { number, at });
}

/// The sync thread: waits for appended records, syncs, acknowledges.
fn run(shared: &Shared) {
    let mut files: BTreeMap<u64, Box<dyn StoreFile>> = BTreeMap::new();
    loop {
        let (marks, target) = {
            let mut s = lock(shared);
            loop {
                let waiting = s.failed.is_none() && !s.marks.is_empty();
                if waiting || s.stop {
                    break;
                }
                s = shared.1.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.failed.is_some() || s.marks.is_empty() {
                return;
            }
            files.extend(s.new_files.drain(..));
            (s.marks.clone(), s.appended)
        };
        let outcome = sync_marked(&mut files, &marks);
        let mut s = lock(shared);
        finish(&mut s, &mut files, outcome, target);
        drop(s);
        shared.1.notify_all();
    }
}

/// One round on the caller's thread.
fn round_inline(files: &mut BTreeMap<u64, Box<dyn StoreFile>>, shared: &Shared) -> io::Result<()> {
    let (marks, target) = {
        let s = lock(shared);
        if let Some(e) = &s.failed {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        (s.marks.clone(), s.appended)
    };
    let outcome = sync_marked(files, &marks);
    let failed = outcome
        .as_ref()
        .err()
        .map(|e| io::Error::new(e.kind(), e.to_string()));
    finish(&mut lock(shared), files, outcome, target);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Syncs each marked segment, oldest first, so a record is never
/// acknowledged while a record before it in the log is not durable.
fn sync_marked(files: &mut BTreeMap<u64, Box<dyn StoreFile>>, marks: &BTreeMap<u64, u64>) -> io::Result<()> {
    for seq in marks.keys() {
        if let Some(file) = files.get_mut(seq) {
            file.sync_data()?;
        }
    }
    Ok(())
}

/// After a round: acknowledges through `target`, or records the failure;
/// drops handles on older segments with nothing left to sync.
fn finish(
    s: &mut State,
    files: &mut BTreeMap<u64, Box<dyn StoreFile>>,
    outcome: io::Result<()>,
    target: u64,
) {
    match outcome {
        Ok(()) => {
            s.synced = s.synced.max(target);
            s.marks.retain(|_, n| *n > target);
            push_log(s, target, Instant::now());
            let newest = files.keys().next_back().copied();
            files.retain(|seq, _| Some(*seq) == newest || s.marks.contains_key(seq));
        }
        Err(e) => {
            s.failed.get_or_insert(e);
        }
    }
}

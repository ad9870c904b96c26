//! The killer: sends a chaos kill to the program's group, at once or at the
//! moment its kind aims for, found by spinning on the region through the
//! read-only observer.

use std::fs::File;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use shm_snapshot::Observer;
use shm_snapshot::layout::slot;
use shm_snapshot::snapshot::observe_file;
use tracing::info;

use super::schedule::KillKind;

/// Spin iterations between clock reads and checks that the program lives
/// (a clock read costs tens of nanoseconds, an iteration a few).
const SPIN_CHECK_EVERY: u64 = 64;

/// The longest a worst-moment kill spins for its moment. Spinning keeps a
/// core busy, and a program that commits less often than this is served
/// by the plain kill the spin falls back to.
pub(super) const MOMENT_WAIT: Duration = Duration::from_secs(1);

/// How often a spinning kill asks the lifecycle whether it must act first:
/// stop signals and hangs wait at most this long for it.
pub(super) const PEEK_EVERY: Duration = Duration::from_millis(1);

/// Spin iterations between reads of every arena chunk counter (a thousand
/// loads for a 64 MiB region; the ring word and the tag are read every time).
const COUNTERS_EVERY: u64 = 16;

/// What became of a worst-moment kill's wait.
enum Moment {
    /// Found: what the region showed before the moment.
    Caught(Option<Sighting>),
    /// Not found within the bound: kill anyway.
    FellBack,
    /// The program ended by itself first: no kill.
    Gone,
    /// The lifecycle has something to do first: no kill for now.
    Interrupted,
}

/// A chaos kill sent to a run.
pub(super) struct Strike {
    /// The moment it aimed for.
    pub(super) kind: KillKind,
    /// It found its moment (else it fell back to a plain kill).
    pub(super) caught: bool,
    /// For a caught mid-write kill: the region before the write was seen.
    pub(super) sighting: Option<Sighting>,
    /// When it was sent.
    pub(super) at: Instant,
}

/// A run of the program as the killer sees it.
pub(super) struct Target {
    /// The program's process, leader of its group.
    pid: libc::pid_t,
    /// The read-only observer of the region, made once the run has laid it out.
    observer: Option<Observer>,
}

impl Target {
    /// The run started as process `pid`.
    pub(super) fn new(pid: libc::pid_t) -> Target {
        Target { pid, observer: None }
    }

    /// The region's observer, made once the run has laid it out.
    pub(super) fn observer(&mut self, region: &File) -> Option<&Observer> {
        if self.observer.is_none() {
            self.observer = observe_file(region).ok().flatten();
        }
        self.observer.as_ref()
    }
}

/// Whether the program's process has ended (it stays unreaped: the
/// lifecycle reaps it and learns how).
fn has_ended(pid: libc::pid_t) -> bool {
    let Some(pid) = Pid::from_raw(pid) else {
        return true;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    !matches!(rustix::process::waitid(WaitId::Pid(pid), options), Ok(None))
}

/// Kills the run of `target` at the moment `kind` aims for, waiting until
/// `until` at most unless `interrupt` says the lifecycle must act first.
/// Returns the kill sent, if one was.
pub(super) fn strike(
    target: &mut Target,
    kind: KillKind,
    region: &File,
    until: Instant,
    interrupt: &mut dyn FnMut() -> bool,
) -> Option<Strike> {
    let moment = match kind {
        KillKind::Timer => Moment::FellBack,
        KillKind::AfterCommit | KillKind::MidWrite => watch(target, kind, region, until, interrupt),
    };
    let (caught, sighting) = match moment {
        Moment::Gone | Moment::Interrupted => return None,
        Moment::Caught(sighting) => (true, sighting),
        Moment::FellBack => (false, None),
    };
    if kind != KillKind::Timer && !caught {
        info!(kind = ?kind, "chaos: no such moment in time; a plain kill instead");
    }
    if let Some(pgid) = Pid::from_raw(target.pid) {
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    }
    Some(Strike {
        kind,
        caught,
        sighting,
        at: Instant::now(),
    })
}

/// The region words that move when a commit starts (FORMAT.md, "Committing
/// a unit"): the ring word at the cursor (step 3), the tag of the next
/// unit's slot (step 2 when the slot is reused, step 4), the cursor and
/// `next_seq` (step 4, before the count). All untrusted hints, read through
/// the observer's bounds-checked copy.
#[derive(Debug, PartialEq, Eq)]
struct Marks {
    cursor: u64,
    next_seq: u64,
    ring_word: u64,
    tag: u64,
}

/// The region as a mid-write kill saw it before the write it aimed at.
pub(super) struct Sighting {
    count: u64,
    marks: Marks,
    counters: Vec<u64>,
}

impl Sighting {
    /// Whether the dead program's region still shows the write begun and
    /// not counted: the kill landed inside the commit.
    pub(super) fn landed_in(&self, o: &Observer) -> bool {
        let mut counters = Vec::new();
        o.chunk_counters(&mut counters);
        o.commit_count() == self.count && (marks(o) != self.marks || counters != self.counters)
    }
}

fn marks(o: &Observer) -> Marks {
    let g = o.geometry();
    let word = |at: u64| {
        let mut bytes = [0u8; 8];
        // In bounds by construction (ring_at masks, slot_of masks); a
        // failure would read as 0, which only weakens the hint.
        let _ = o.copy_range(at, &mut bytes);
        u64::from_le_bytes(bytes)
    };
    let (cursor, next_seq) = (o.cursor(), o.next_seq());
    Marks {
        cursor,
        next_seq,
        ring_word: word(g.ring_at(cursor)),
        tag: word(g.slot_field(g.slot_of(next_seq), slot::TAG)),
    }
}

/// Spins until the moment `kind` aims for, the bound, the program's end, or
/// `interrupt` returning true.
fn watch(
    target: &mut Target,
    kind: KillKind,
    region: &File,
    until: Instant,
    interrupt: &mut dyn FnMut() -> bool,
) -> Moment {
    let pid = target.pid;
    let mut spins = 0u64;
    let mut base: Option<(u64, Marks, Vec<u64>)> = None;
    let mut counters = Vec::new();
    let mut peek_at = Instant::now();
    loop {
        if spins.is_multiple_of(SPIN_CHECK_EVERY) {
            if has_ended(pid) {
                return Moment::Gone;
            }
            let now = Instant::now();
            if now >= peek_at {
                if interrupt() {
                    return Moment::Interrupted;
                }
                peek_at = now + PEEK_EVERY;
            }
            if now >= until {
                return Moment::FellBack;
            }
        }
        spins += 1;
        let Some(o) = target.observer(region) else {
            // Not laid out yet: nothing to watch until it is.
            std::thread::sleep(Duration::from_micros(100));
            continue;
        };
        let count = o.commit_count();
        let Some((base_count, base_marks, base_counters)) = &mut base else {
            let m = marks(o);
            o.chunk_counters(&mut counters);
            base = Some((count, m, counters.clone()));
            continue;
        };
        if count != *base_count {
            if kind == KillKind::AfterCommit {
                return Moment::Caught(None);
            }
            // A commit completed: watch for the next one to start.
            *base_count = count;
            *base_marks = marks(o);
            o.chunk_counters(base_counters);
            continue;
        }
        if kind != KillKind::MidWrite {
            std::hint::spin_loop();
            continue;
        }
        let now = marks(o);
        let mut moved = now != *base_marks;
        if !moved && spins.is_multiple_of(COUNTERS_EVERY) {
            o.chunk_counters(&mut counters);
            moved = counters != *base_counters;
        }
        // Only a write the count has not caught up with is mid-commit.
        if moved && o.commit_count() == count {
            return Moment::Caught(Some(Sighting {
                count,
                marks: std::mem::replace(base_marks, now),
                counters: std::mem::take(base_counters),
            }));
        }
        std::hint::spin_loop();
    }
}

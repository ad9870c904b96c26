//! The seeded schedule: for each kill, when it is due, the moment it aims
//! for, and where the next run's region comes from.

use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::flags::{KillRange, RestoreFrom};

/// The moment a kill aims for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillKind {
    /// When the interval is up.
    Timer,
    /// The moment the commit count moves, once the interval is up.
    AfterCommit,
    /// The moment a commit is seen started and not yet counted.
    MidWrite,
}

/// Where the region of the run after a kill is planned to come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The region as the killed run left it (after its post-mortem generation).
    Memory,
    /// The newest generation in the store, written over the whole region.
    Disk,
}

/// One planned kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// Microseconds from the start of the run to when the kill is due.
    pub after_us: u64,
    /// The moment it aims for.
    pub kind: KillKind,
    /// Where the next run's region comes from.
    pub restore: Source,
}

/// The plan, drawn from the seed one kill at a time, in order: kill `i` is
/// the same for a seed whatever happened before it.
pub(super) struct Schedule {
    rng: ChaCha8Rng,
    range: KillRange,
    from: RestoreFrom,
    planned: Vec<Planned>,
}

impl Schedule {
    /// The schedule of `seed`, for kills in `range`, relaunches from `from`.
    pub(super) fn new(seed: u64, range: KillRange, from: RestoreFrom) -> Schedule {
        Schedule {
            // ChaCha8's stream is portable and fixed across versions; every
            // draw below is made from its raw words by hand (not by rand's
            // range sampling, whose algorithm may change between versions),
            // so a seed repeats a schedule across versions, builds and
            // machines.
            rng: ChaCha8Rng::seed_from_u64(seed),
            range,
            from,
            planned: Vec::new(),
        }
    }

    /// Kill `index`, if it has been planned.
    pub(super) fn peek(&self, index: usize) -> Option<Planned> {
        self.planned.get(index).copied()
    }

    /// Kill `index` (0 = the first), drawn with those before it if not yet.
    pub(super) fn get(&mut self, index: usize) -> Planned {
        while self.planned.len() <= index {
            let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            let (min, max) = (us(self.range.min), us(self.range.max));
            // The modulo's bias is below span / 2^64: nothing at the spans
            // of a kill range in microseconds.
            let span = (max - min).saturating_add(1);
            let after_us = min + self.rng.next_u64() % span;
            let kind = match self.rng.next_u64() % 3 {
                0 => KillKind::Timer,
                1 => KillKind::AfterCommit,
                _ => KillKind::MidWrite,
            };
            // Drawn in every mode, so the intervals and kinds of a seed do
            // not depend on --chaos-restore.
            let coin = self.rng.next_u64() & 1 == 1;
            let restore = match self.from {
                RestoreFrom::Disk => Source::Disk,
                RestoreFrom::Memory => Source::Memory,
                RestoreFrom::Mixed if coin => Source::Disk,
                RestoreFrom::Mixed => Source::Memory,
            };
            self.planned.push(Planned {
                after_us,
                kind,
                restore,
            });
        }
        self.planned[index]
    }

    /// The kills drawn so far, in order.
    pub(super) fn drawn(&self) -> &[Planned] {
        &self.planned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::flags::range;

    #[test]
    fn a_seed_fixes_the_schedule_and_draws_stay_in_range() {
        let plan = |seed, from| {
            let mut s = Schedule::new(seed, range(20, 500), from);
            (0..200).map(|i| s.get(i)).collect::<Vec<_>>()
        };
        let a = plan(7, RestoreFrom::Mixed);
        assert_eq!(a, plan(7, RestoreFrom::Mixed));
        assert_ne!(a, plan(8, RestoreFrom::Mixed));
        assert!(a.iter().all(|p| (20_000..=500_000).contains(&p.after_us)));
        for kind in [KillKind::Timer, KillKind::AfterCommit, KillKind::MidWrite] {
            assert!(
                a.iter().filter(|p| p.kind == kind).count() > 30,
                "{kind:?} drawn too rarely"
            );
        }
        let disk = a.iter().filter(|p| p.restore == Source::Disk).count();
        assert!((60..=140).contains(&disk), "about half from disk, got {disk}");
        let all_disk = plan(7, RestoreFrom::Disk);
        assert!(all_disk.iter().all(|p| p.restore == Source::Disk));
        let same_times = |b: &[Planned]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x.after_us, x.kind) == (y.after_us, y.kind))
        };
        assert!(same_times(&all_disk), "the restore mode does not move the kills");
    }

    #[test]
    fn a_seed_draws_the_same_schedule_in_every_version() {
        // Pinned: these follow from ChaCha8's fixed stream and the draws
        // made from it by hand, and must never change.
        let mut s = Schedule::new(42, range(20, 500), RestoreFrom::Mixed);
        let got: Vec<_> = (0..3).map(|i| s.get(i)).collect();
        let plan = |after_us, kind| Planned {
            after_us,
            kind,
            restore: Source::Memory,
        };
        assert_eq!(
            got,
            [
                plan(68_626, KillKind::AfterCommit),
                plan(409_425, KillKind::MidWrite),
                plan(482_563, KillKind::Timer),
            ]
        );
    }
}

//! Damage reported by cause: one damaged (or missing) generation file makes
//! every generation whose chain needs it unusable too. A store whose base
//! is damaged holds one problem, not one per delta built on it, and a
//! person reading about it wants that one problem, how many generations it
//! takes down, and which.

use std::fmt;

use super::error::StoreError;

/// Why some generations of a store cannot be used, grouped by cause.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Damage {
    /// One entry per cause, the newest cause first.
    pub causes: Vec<Cause>,
}

/// One cause: a generation file that is damaged, refused or missing, and
/// the generations unusable because their chains need it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Cause {
    /// The generation whose problem is reported in `error`: the damaged
    /// one, or for a missing generation the oldest one that needs it
    /// (whose error names the missing one).
    pub generation: u64,
    /// What is wrong with it.
    pub error: StoreError,
    /// The number of the missing generation, when the cause is a
    /// generation file that is not there at all.
    pub missing: Option<u64>,
    /// The other generations that cannot be used because their chains
    /// need this cause's generation, newest first.
    pub dependents: Vec<u64>,
}

impl Damage {
    /// Groups `failures` (each unusable generation with its error, in any
    /// order) by cause. `present` tells whether a generation file exists
    /// in the store: a generation that a failure needs, that is neither
    /// present nor among the failures, is a missing cause of its own.
    ///
    /// A failure is a dependent when it is a
    /// [`StoreError::BrokenChain`] whose needed generation is itself
    /// unusable (among the failures, or missing); otherwise (its own file
    /// is damaged, or its chain is inconsistent with a sound parent) it is
    /// a cause.
    pub fn group(failures: Vec<(u64, StoreError)>, present: impl Fn(u64) -> bool) -> Damage {
        use std::collections::{BTreeMap, BTreeSet};
        let needs: BTreeMap<u64, u64> = failures
            .iter()
            .filter_map(|(n, e)| match e {
                StoreError::BrokenChain { needs, .. } if needs != n => Some((*n, *needs)),
                _ => None,
            })
            .collect();
        let failed: BTreeSet<u64> = failures.iter().map(|(n, _)| *n).collect();
        // Which needed generation is unusable: a failure, or not there.
        let unusable = |n: u64| failed.contains(&n) || !present(n);
        // The cause behind `n`: follow what it needs while that is
        // unusable. Chains only point to older generations, so this ends;
        // the step bound guards against a malformed cycle all the same.
        let root = |mut n: u64| {
            for _ in 0..=failures.len() {
                match needs.get(&n) {
                    Some(&parent) if unusable(parent) && failed.contains(&parent) => n = parent,
                    Some(&parent) if unusable(parent) => return (n, Some(parent)),
                    _ => return (n, None),
                }
            }
            (n, None)
        };
        // Cause key: the missing generation, or the damaged one.
        let mut causes: BTreeMap<u64, Cause> = BTreeMap::new();
        let mut roots: BTreeMap<u64, (u64, Option<u64>)> = BTreeMap::new();
        for (n, _) in &failures {
            roots.insert(*n, root(*n));
        }
        let mut failures = failures;
        // Oldest first, so a missing cause reports its oldest dependent.
        failures.sort_by_key(|(n, _)| *n);
        let mut dependents: Vec<(u64, u64)> = Vec::new();
        for (n, error) in failures {
            let (root, missing) = roots[&n];
            let key = missing.unwrap_or(root);
            if n == root && !causes.contains_key(&key) {
                causes.insert(
                    key,
                    Cause {
                        generation: n,
                        error,
                        missing,
                        dependents: Vec::new(),
                    },
                );
            } else {
                dependents.push((key, n));
            }
        }
        for (key, n) in dependents.into_iter().rev() {
            if let Some(cause) = causes.get_mut(&key) {
                cause.dependents.push(n);
            }
        }
        Damage {
            causes: causes.into_values().rev().collect(),
        }
    }

    /// Whether nothing is damaged.
    pub fn is_empty(&self) -> bool {
        self.causes.is_empty()
    }

    /// How many generations are unusable, causes and dependents.
    pub fn generations(&self) -> usize {
        self.causes.iter().map(|c| 1 + c.dependents.len()).sum()
    }

    /// Every unusable generation's number, newest first.
    pub fn numbers(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .causes
            .iter()
            .flat_map(|c| std::iter::once(c.generation).chain(c.dependents.iter().copied()))
            .collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all
    }
}

impl fmt::Display for Cause {
    /// The cause on one line: its error, then what depends on it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        match self.dependents.len() {
            0 => Ok(()),
            1 => write!(f, "; generation {} depends on it", self.dependents[0]),
            n => write!(
                f,
                "; {n} newer generations depend on it ({})",
                Numbers(&self.dependents)
            ),
        }
    }
}

/// Generation numbers, newest first, as a short list: runs of four or
/// more consecutive numbers as `high-low`, and at most [`Numbers::SHOWN`]
/// items before an ellipsis.
#[derive(Debug, Clone, Copy)]
pub struct Numbers<'a>(pub &'a [u64]);

impl Numbers<'_> {
    /// Items (numbers or runs) written before the rest is elided.
    pub const SHOWN: usize = 8;
}

impl fmt::Display for Numbers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<(u64, u64)> = Vec::new();
        for &n in self.0 {
            match items.last_mut() {
                Some((_, low)) if low.checked_sub(1) == Some(n) => *low = n,
                _ => items.push((n, n)),
            }
        }
        // A run of two or three reads better spelled out.
        let mut spelled: Vec<String> = Vec::new();
        for (high, low) in items {
            if high - low >= 3 {
                spelled.push(format!("{high}-{low}"));
            } else {
                spelled.extend((low..=high).rev().map(|n| n.to_string()));
            }
        }
        let shown = spelled.len().min(Self::SHOWN);
        write!(f, "{}", spelled[..shown].join(", "))?;
        if spelled.len() > shown {
            write!(f, ", …")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn corrupt(n: u64) -> StoreError {
        StoreError::Corrupt {
            path: PathBuf::from(format!("gen-{n}.snap")),
            what: "chunk 0 hash mismatch".into(),
        }
    }

    fn needs(n: u64, parent: u64, why: &str) -> StoreError {
        StoreError::BrokenChain {
            path: PathBuf::from(format!("gen-{n}.snap")),
            needs: parent,
            why: why.into(),
        }
    }

    #[test]
    fn a_damaged_base_is_one_cause_with_every_delta_on_it_as_a_dependent() {
        let mut failures = vec![(1, corrupt(1))];
        failures.extend((2..=532).map(|n| (n, needs(n, n - 1, "does not verify"))));
        let damage = Damage::group(failures, |_| true);
        assert_eq!(damage.causes.len(), 1);
        let cause = &damage.causes[0];
        assert_eq!((cause.generation, cause.missing), (1, None));
        assert_eq!(cause.dependents.len(), 531);
        assert_eq!(cause.dependents[0], 532, "newest first");
        assert_eq!(damage.generations(), 532);
        let line = cause.to_string();
        assert!(line.contains("gen-1.snap is corrupt"), "{line}");
        assert!(
            line.contains("; 531 newer generations depend on it (532-2)"),
            "{line}"
        );
    }

    #[test]
    fn a_missing_generation_is_reported_through_its_oldest_dependent() {
        let failures = vec![
            (4, needs(4, 3, "does not verify")),
            (3, needs(3, 2, "is missing")),
        ];
        let damage = Damage::group(failures, |n| n != 2);
        assert_eq!(damage.causes.len(), 1);
        let cause = &damage.causes[0];
        assert_eq!((cause.generation, cause.missing), (3, Some(2)));
        assert_eq!(cause.dependents, [4]);
        assert!(cause.to_string().contains("which is missing"));
    }

    #[test]
    fn separate_damage_stays_separate_and_a_bad_link_to_a_sound_parent_is_its_own_cause() {
        let failures = vec![
            (3, corrupt(3)),
            (2, needs(2, 1, "does not verify")),
            (1, corrupt(1)),
            (6, needs(6, 5, "belongs to the chain of base 5, not of base 4")),
        ];
        let damage = Damage::group(failures, |_| true);
        let causes: Vec<(u64, Vec<u64>)> = damage
            .causes
            .iter()
            .map(|c| (c.generation, c.dependents.clone()))
            .collect();
        assert_eq!(causes, [(6, vec![]), (3, vec![]), (1, vec![2])]);
        assert_eq!(damage.numbers(), [6, 3, 2, 1]);
    }

    #[test]
    fn numbers_fold_long_runs_and_elide_past_a_few_items() {
        assert_eq!(Numbers(&[3, 2, 1]).to_string(), "3, 2, 1");
        assert_eq!(Numbers(&[9, 8, 7, 6, 4]).to_string(), "9-6, 4");
        let many: Vec<u64> = (0..20).map(|n| 100 - 2 * n).collect();
        assert_eq!(Numbers(&many).to_string(), "100, 98, 96, 94, 92, 90, 88, 86, …");
    }
}

//! What the lifecycle and the snapshot thread share, and the totals kept
//! for the summary.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shm_snapshot::snapshot::{Outcome, Snapshotter};
use shm_snapshot::store::Store;
use tracing::{error, info};

use crate::lag::LagHistogram;
use crate::replica::upload::Feed;

/// What the lifecycle and the snapshot thread share: one owner of the store
/// at a time.
pub struct Shared {
    /// The store.
    pub store: Store,
    /// The incremental snapshotter (what the newest generation covers).
    pub snapshotter: Snapshotter,
    /// Counters for the summary.
    pub stats: Stats,
    /// The replica's uploader, fed the generations that became durable.
    pub replica: Option<Feed>,
}

/// Totals for the summary at exit.
#[derive(Debug, Default)]
pub struct Stats {
    /// Generations persisted (while running and after deaths).
    pub generations: u64,
    /// Bytes the store wrote.
    pub bytes_written: u64,
    /// Bytes of data the store found changed and wrote.
    pub bytes_changed: u64,
    /// Attempts in which every unit changed during the copy.
    pub skipped: u64,
    /// Commit-to-durable lag, weighted by commits.
    pub(super) lags: LagHistogram,
    pub(super) started: Option<Instant>,
}

impl Stats {
    /// Counts a persisted generation.
    pub fn persisted(&mut self, outcome: &Outcome) {
        if let Outcome::Persisted { persisted, .. } = outcome {
            self.generations += 1;
            self.bytes_written += persisted.bytes_written;
            self.bytes_changed += persisted.pages_written * shm_snapshot::store::PAGE_BYTES;
        }
    }

    /// Commit-to-durable lags so far.
    pub fn lags(&self) -> &LagHistogram {
        &self.lags
    }

    /// Logs the summary line.
    pub fn log_summary(&self) {
        let elapsed = self
            .started
            .map_or(Duration::ZERO, |t| t.elapsed())
            .as_secs_f64()
            .max(1e-9);
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        let (p50, p99, max) = if self.lags.is_empty() {
            ("n/a".to_owned(), "n/a".to_owned(), "n/a".to_owned())
        } else {
            (
                ms(self.lags.quantile(0.50)),
                ms(self.lags.quantile(0.99)),
                ms(self.lags.max()),
            )
        };
        info!(
            generations = self.generations,
            per_second = format!("{:.1}", self.generations as f64 / elapsed),
            lag_p50_ms = p50,
            lag_p99_ms = p99,
            lag_max_ms = max,
            bytes_written = self.bytes_written,
            bytes_changed = self.bytes_changed,
            skipped = self.skipped,
            "snapshot summary"
        );
    }
}
/// Locks the shared state, surviving a panic of the other holder (the
/// state stays usable: the store is only ever changed by whole generations).
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}
/// What [`Shared::persist_staged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagedPersist {
    /// No generation was staged.
    Nothing,
    /// The staged generation is in the store.
    Persisted,
    /// Writing it failed (logged); the region is ahead of the store.
    Failed,
}

impl Shared {
    /// Hands the replica's uploader what became durable, if replicating.
    pub fn feed_replica(&mut self) {
        if let Some(feed) = &self.replica {
            feed.feed(&mut self.store);
        }
    }

    /// Persists the generation a post-mortem staged, if one
    /// waits: counted and logged like any generation, a failure logged as
    /// the region being ahead of the store.
    pub fn persist_staged(&mut self) -> StagedPersist {
        let started = Instant::now();
        match self.snapshotter.persist_staged(&mut self.store) {
            Ok(None) => StagedPersist::Nothing,
            Ok(Some(outcome)) => {
                self.stats.persisted(&outcome);
                if let Outcome::Persisted { persisted, .. } = &outcome {
                    info!(
                        generation = persisted.number,
                        ms = started.elapsed().as_millis() as u64,
                        "generation persisted (taken after a death)"
                    );
                }
                self.feed_replica();
                StagedPersist::Persisted
            }
            Err(e) => {
                error!(
                    "could not persist the generation taken after a death: {e}; the region is ahead of the store (nothing is lost while the supervisor runs)"
                );
                StagedPersist::Failed
            }
        }
    }
}

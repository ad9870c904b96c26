//! The uploader: one thread, with the replica's client and its runtime,
//! that ships generations already durable in the local store to the
//! replica in batches (REPLICA.md, "Uploading"). The snapshot thread only
//! hands it where new records are ([`Feed::feed`]); nothing on the
//! program's or the local store's path waits for the network.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use object_store::UpdateVersion;
use shm_snapshot::store::{RecordPlaces, Store};

use super::client::Client;
use super::layout::{CommitPoint, Writer};
use super::lease::Held;
use crate::lag::LagHistogram;

mod figures;
mod pieces;
mod worker;

pub use figures::{LeaseState, ReplicaFigures, log_summary};
use worker::Worker;

/// Records waiting past this many bytes are shipped before the interval
/// ends.
pub const EARLY_BYTES: u64 = 64 << 20;
/// Most bytes of records in one segment piece: what a program changing
/// 64 MiB a second makes in the default interval, so one piece (and one
/// PUT) a tick carries it.
pub const MAX_PIECE_BYTES: u64 = 64 << 20;
/// The replica gets a new base once the segments since its last one weigh
/// more than this or twice that base: a restore reads at most about three
/// bases' worth, and a base goes up at most once per two of its own size
/// of segments (the local store's threshold, half a base, would upload a
/// 64 MiB base every second or two at 1,000 commits/s).
const REPLICA_BASE_AFTER_BYTES: u64 = 16 << 20;
/// A lease is used only with this much of it left: an upload that started
/// then ends well before the lease could pass to another supervisor.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// Of [`FINAL_UPLOAD`], what giving the lease up at the end may take.
const RELEASE_TIME: Duration = Duration::from_secs(2);
/// The uploader thread's nice value (Linux gives each thread its own).
const UPLOADER_NICE: i32 = 10;
/// Longest a clean stop waits to upload the generations not yet in the
/// replica (`--help` says so).
pub const FINAL_UPLOAD: Duration = Duration::from_secs(10);

/// Bytes of records waiting for upload past which the uploader stops
/// holding them and starts over from a newer base: at least 1 GiB, and
/// twice the region.
pub fn max_behind(region_len: u64) -> u64 {
    (1u64 << 30).max(region_len.saturating_mul(2))
}

/// A durable local generation not yet in the replica.
#[derive(Debug)]
struct Local {
    places: RecordPlaces,
    durable_at: Instant,
}

#[derive(Debug)]
struct FeedState {
    new: Vec<(RecordPlaces, Instant)>,
    new_bytes: u64,
    fed_up_to: u64,
    hold: Option<u64>,
    figures: ReplicaFigures,
    lag: LagHistogram,
    stop_by: Option<Instant>,
}

#[derive(Debug)]
struct FeedShared {
    state: Mutex<FeedState>,
    wake: Condvar,
}

impl FeedShared {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        // Plain figures and lists: meaningful after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The snapshot thread's side: hands the uploader what became durable.
#[derive(Debug, Clone)]
pub struct Feed(Arc<FeedShared>);

impl Feed {
    /// Hands the uploader the generations `store` made durable since the
    /// last call and the bases it built, and applies the uploader's hold
    /// (what retention must keep until it is uploaded).
    pub fn feed(&self, store: &mut Store) {
        let durable = store.durable_generation().unwrap_or(0);
        let bases = store.take_new_bases();
        let mut s = self.0.lock();
        let now = Instant::now();
        let mut new = Vec::new();
        if durable > s.fed_up_to {
            new = store.record_places(s.fed_up_to + 1..=durable);
            s.fed_up_to = durable;
        }
        for b in bases {
            new.extend(store.record_places(b..=b));
        }
        let bytes: u64 = new.iter().filter_map(|p| p.delta.as_ref()).map(|d| d.len).sum();
        s.new.extend(new.into_iter().map(|p| (p, now)));
        s.new_bytes += bytes;
        store.hold(s.hold);
        if s.new_bytes >= EARLY_BYTES {
            self.0.wake.notify_all();
        }
    }

    /// The figures now.
    pub fn figures(&self) -> ReplicaFigures {
        let s = self.0.lock();
        let mut f = s.figures.clone();
        if !s.lag.is_empty() {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            f.lag_p50_ms = Some(ms(s.lag.quantile(0.5)));
            f.lag_p99_ms = Some(ms(s.lag.quantile(0.99)));
        }
        f
    }
}

/// The uploader thread.
#[derive(Debug)]
pub struct Uploader {
    feed: Feed,
    thread: Option<JoinHandle<()>>,
}

/// What the uploader starts from.
#[derive(Debug)]
pub struct Joined {
    /// The replica's client.
    pub client: Client,
    /// This supervisor run.
    pub me: Writer,
    /// The lease, taken.
    pub lease: Held,
    /// The commit point as this run last wrote it, and its version.
    pub commit: CommitPoint,
    /// Its version.
    pub commit_version: UpdateVersion,
    /// Generations the replica keeps restorable (`--keep`).
    pub keep: u64,
    /// How often a batch is shipped.
    pub interval: Duration,
}

impl Uploader {
    /// Starts uploading; the local generations newer than the replica's
    /// newest are read from `store`, which is held from now on.
    pub fn start(start: Joined, store: &mut Store) -> std::io::Result<Uploader> {
        let head = start.commit.newest;
        let all = store.record_places(..);
        let newest_base = all.iter().rev().find(|p| p.base.is_some()).map(|p| p.number);
        let has_head = all
            .iter()
            .any(|p| p.number == head && p.created_ms == start.commit.newest_created_ms);
        drop(all);
        if head > 0 && !has_head {
            // The replica holds generations this store does not (a pull
            // that fell back to an older generation, or records local
            // retention removed): the next generation is a full one,
            // numbered above the replica's, which the replica starts over
            // from.
            store.start_over_after(head);
        }
        let durable = store.generations().last().map_or(0, |g| g.number);
        // What the uploader may still read: the generations after the
        // replica's newest, and the newest local base (the replica's first
        // piece when it is empty, a checkpoint otherwise).
        let from = match (head, newest_base) {
            (0, base) => base.unwrap_or(1),
            (_, Some(base)) if has_head => base.min(head + 1),
            _ => head + 1,
        };
        let now = Instant::now();
        let existing: Vec<_> = store
            .record_places(from..)
            .into_iter()
            .map(|p| (p, now))
            .collect();
        store.hold(Some(from));
        let figures = ReplicaFigures {
            url: start.client.url().to_string(),
            lease: LeaseState::Held,
            lease_until_ms: start.lease.lease.until_ms,
            newest_generation: (head > 0).then_some(head),
            behind_generations: existing.len() as u64,
            behind_seconds: 0.0,
            last_upload_ms: None,
            puts: 0,
            lease_puts: 0,
            bytes_uploaded: 0,
            lag_p50_ms: None,
            lag_p99_ms: None,
            error: None,
        };
        let shared = Arc::new(FeedShared {
            state: Mutex::new(FeedState {
                new: existing,
                new_bytes: 0,
                fed_up_to: durable,
                hold: Some(from),
                figures,
                lag: LagHistogram::default(),
                stop_by: None,
            }),
            wake: Condvar::new(),
        });
        let next_seq = start
            .commit
            .pieces
            .iter()
            .map(|p| p.seq)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let mut worker = Worker {
            client: start.client,
            me: start.me,
            lease: start.lease,
            commit: start.commit,
            commit_version: start.commit_version,
            keep: start.keep,
            interval: start.interval,
            feed: shared.clone(),
            local: BTreeMap::new(),
            next_seq,
            base: None,
            garbage: Vec::new(),
            failing: None,
            waiting_for_base: false,
            lease_state: LeaseState::Held,
        };
        let thread = std::thread::Builder::new()
            .name("replica".into())
            .spawn(move || {
                // Below the snapshot and sync threads, like the store's
                // background work: uploads wait, generations do not.
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), UPLOADER_NICE);
                worker.run()
            })?;
        Ok(Uploader {
            feed: Feed(shared),
            thread: Some(thread),
        })
    }

    /// The snapshot thread's handle.
    pub fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// Uploads what is durable and not yet uploaded, for at most `limit`,
    /// gives the lease up, and stops. Returns the figures then.
    pub fn finish(mut self, limit: Duration) -> ReplicaFigures {
        {
            let mut s = self.feed.0.lock();
            s.stop_by = Some(Instant::now() + limit);
            self.feed.0.wake.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.feed.figures()
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            {
                let mut s = self.feed.0.lock();
                s.stop_by = Some(Instant::now());
                self.feed.0.wake.notify_all();
            }
            let _ = t.join();
        }
    }
}

//! The uploader: one thread, with the replica's client and its runtime,
//! that ships generations already durable in the local store to the
//! replica in batches (REPLICA.md, "Uploading"). The snapshot thread only
//! hands it where new records are ([`Feed::feed`]); nothing on the
//! program's or the local store's path waits for the network.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};
use shm_snapshot::store::format::check_record;
use shm_snapshot::store::format::segment::SegmentHeader;
use shm_snapshot::store::{RecordPlace, RecordPlaces, Store};
use tracing::{info, warn};

use super::client::{Cas, Client};
use super::layout::{COMMIT, CommitPoint, Kind, Piece, Writer};
use super::lease::{Held, Renewed, now_ms};
use crate::lag::LagHistogram;

/// Records waiting past this many bytes are shipped before the interval
/// ends.
pub const EARLY_BYTES: u64 = 64 << 20;
/// Most bytes of records in one segment piece: what a program changing
/// 64 MiB a second makes in the default interval, so one piece (and one
/// PUT) a tick carries it.
pub const MAX_PIECE_BYTES: u64 = 64 << 20;
/// The replica gets a new base once the segments since its last one weigh
/// more than this or that base: a restore reads at most about two bases'
/// worth, and a base goes up at most once per its own size of segments
/// (the local store's threshold, half a base, would upload a 64 MiB base
/// every second at 1,000 commits/s).
const BASE_AFTER_BYTES: u64 = 16 << 20;
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

/// The lease as the uploader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Held and renewed.
    Held,
    /// Not renewed in time (the object store did not answer): uploads
    /// wait until it is renewed.
    Expired,
    /// Another supervisor took it: this one no longer uploads.
    Lost,
    /// Given up at a clean stop.
    Released,
}

/// The replica's figures, for `status.json`, `watch`, `STATUS=` and the
/// summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// The replica's URL.
    pub url: String,
    /// The lease.
    pub lease: LeaseState,
    /// Until when it holds, ms since the Unix epoch.
    pub lease_until_ms: u64,
    /// The newest generation the commit point names.
    pub newest_generation: Option<u64>,
    /// Generations durable locally and not yet in the replica.
    pub behind_generations: u64,
    /// How long the oldest of them has waited, in seconds.
    pub behind_seconds: f64,
    /// When the commit point last moved, ms since the Unix epoch.
    pub last_upload_ms: Option<u64>,
    /// PUT requests made (pieces, commit points, leases).
    pub puts: u64,
    /// Those of them that wrote the lease.
    pub lease_puts: u64,
    /// Bytes of pieces uploaded.
    pub bytes_uploaded: u64,
    /// Median lag from durable locally to named by the commit point, ms.
    pub lag_p50_ms: Option<f64>,
    /// Its 99th percentile.
    pub lag_p99_ms: Option<f64>,
    /// The current episode's error, if uploads are failing.
    pub error: Option<String>,
}

impl LeaseState {
    /// The word `watch` shows.
    pub fn word(self) -> &'static str {
        match self {
            LeaseState::Held => "held",
            LeaseState::Expired => "expired (not renewed in time)",
            LeaseState::Lost => "lost to another supervisor",
            LeaseState::Released => "released",
        }
    }
}

impl Figures {
    /// The replica's part of a `STATUS=` line.
    pub fn summary(&self) -> String {
        let newest = self
            .newest_generation
            .map_or_else(|| "none".to_owned(), |g| g.to_string());
        format!(
            "replica generation {newest}, {} behind, lease {}",
            self.behind_generations,
            match self.lease {
                LeaseState::Held => "held",
                LeaseState::Expired => "expired",
                LeaseState::Lost => "lost",
                LeaseState::Released => "released",
            }
        )
    }
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
    figures: Figures,
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
    pub fn figures(&self) -> Figures {
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
pub struct Start {
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
    pub fn start(start: Start, store: &mut Store) -> std::io::Result<Uploader> {
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
        let figures = Figures {
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
        let next_seq = start.commit.pieces.iter().map(|p| p.seq).max().unwrap_or(0) + 1;
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
    pub fn finish(mut self, limit: Duration) -> Figures {
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

struct Worker {
    client: Client,
    me: Writer,
    lease: Held,
    commit: CommitPoint,
    commit_version: UpdateVersion,
    keep: u64,
    interval: Duration,
    feed: Arc<FeedShared>,
    /// Durable local generations newer than the replica's newest.
    local: BTreeMap<u64, Local>,
    next_seq: u64,
    /// The newest local base not yet in the replica as a base piece: what
    /// the replica starts over from, or checkpoints with.
    base: Option<Local>,
    /// Pieces the commit point no longer names whose removal failed;
    /// tried again after each commit.
    garbage: Vec<String>,
    /// Since when uploads fail (one line per episode).
    failing: Option<Instant>,
    waiting_for_base: bool,
    lease_state: LeaseState,
}

/// What one step did.
enum Step {
    /// A piece went in and the commit point moved.
    Uploaded,
    /// Nothing to upload (or nothing that can be yet).
    Idle,
}

impl Worker {
    fn run(&mut self) {
        let mut next_try = Instant::now();
        loop {
            let stop_by = self.wait(next_try);
            // Ticks keep their cadence whatever an upload takes: a record
            // waits half an interval and one upload, on average.
            let tick = Instant::now();
            self.absorb();
            self.bound();
            if self.lease_state != LeaseState::Lost {
                self.keep_lease();
            }
            let mut uploaded = false;
            let mut failed = false;
            if let Some(by) = stop_by {
                // Uploads get the stop's bound less what giving the lease
                // up may take.
                self.client
                    .set_deadline(Some(by.checked_sub(RELEASE_TIME).unwrap_or(by)));
            }
            if self.lease_state == LeaseState::Held {
                match self.step() {
                    Ok(Step::Uploaded) => {
                        uploaded = true;
                        self.recovered();
                    }
                    Ok(Step::Idle) => self.recovered(),
                    Err(e) => {
                        failed = true;
                        self.failed(e);
                    }
                }
            }
            self.publish();
            if let Some(by) = stop_by {
                let caught_up = self.local.is_empty() || self.lease_state != LeaseState::Held;
                let upload_by = by.checked_sub(RELEASE_TIME).unwrap_or(by);
                if caught_up || Instant::now() >= upload_by {
                    if !caught_up {
                        warn!(
                            behind = self.local.len(),
                            "replica: the clean stop's upload did not finish within {}s; the replica holds generation {}",
                            FINAL_UPLOAD.as_secs(),
                            self.commit.newest
                        );
                    }
                    self.client.set_deadline(Some(by));
                    self.release();
                    self.publish();
                    return;
                }
                if failed {
                    // Not a busy loop against a server that is down.
                    std::thread::sleep(
                        Duration::from_millis(100).min(upload_by.saturating_duration_since(Instant::now())),
                    );
                }
            }
            // A batch cut at its size limit: the rest at once.
            next_try = if uploaded && self.pending_bytes() >= MAX_PIECE_BYTES {
                Instant::now()
            } else {
                tick + self.interval
            };
        }
    }

    /// Sleeps until `until`, enough records waiting, or a stop; returns
    /// the stop's deadline, if one came.
    fn wait(&self, until: Instant) -> Option<Instant> {
        let mut s = self.feed.lock();
        loop {
            if s.stop_by.is_some() {
                return s.stop_by;
            }
            let now = Instant::now();
            if now >= until || s.new_bytes >= EARLY_BYTES {
                return None;
            }
            s = self
                .feed
                .wake
                .wait_timeout(s, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Takes what the snapshot thread fed.
    fn absorb(&mut self) {
        let new = {
            let mut s = self.feed.lock();
            s.new_bytes = 0;
            std::mem::take(&mut s.new)
        };
        let replica_base = self.replica_base().map_or(0, |p| p.first);
        for (places, durable_at) in new {
            // A base newer than the replica's newest base, whether or not
            // its generation went up as a delta already. (The newest local
            // base is in the chain of the newest generation, which local
            // retention keeps; the hold keeps it from the next feed on.)
            if places.base.is_some()
                && places.number > replica_base
                && self.base.as_ref().is_none_or(|b| b.places.number < places.number)
            {
                let mut s = self.feed.lock();
                s.hold = Some(s.hold.map_or(places.number, |h| h.min(places.number)));
                drop(s);
                self.base = Some(Local {
                    places: places.clone(),
                    durable_at,
                });
            }
            if places.number <= self.commit.newest {
                continue;
            }
            match self.local.get_mut(&places.number) {
                // A base built of a generation already fed.
                Some(l) => {
                    if places.base.is_some() {
                        l.places.base = places.base;
                    }
                }
                None => {
                    self.local.insert(places.number, Local { places, durable_at });
                }
            }
        }
    }

    /// Past [`max_behind`] bytes waiting, the hold moves up to the newest
    /// local base: local retention may then remove what was not uploaded,
    /// and the replica starts over from that base.
    fn bound(&mut self) {
        let waiting = self.pending_bytes();
        let region = self.local.values().next_back().map_or(0, |l| l.places.region_len);
        let limit = max_behind(region);
        if waiting <= limit {
            return;
        }
        let Some(base) = self
            .local
            .values()
            .rev()
            .find(|l| l.places.base.is_some())
            .map(|l| l.places.number)
        else {
            return;
        };
        if self.local.keys().next().is_some_and(|&n| n >= base) {
            return;
        }
        warn!(
            waiting_mib = waiting >> 20,
            "replica: more than {} MiB of generations wait for upload; the replica starts over from generation {base}, and the local store may remove the older ones",
            limit >> 20
        );
        self.local.retain(|&n, _| n >= base);
        self.feed.lock().hold = Some(base);
    }

    fn pending_bytes(&self) -> u64 {
        self.local
            .values()
            .filter_map(|l| l.places.delta.as_ref())
            .map(|d| d.len)
            .sum()
    }

    /// Renews the lease when due. A lease that cannot be renewed expires
    /// (uploads wait); one someone else wrote is lost (uploads stop).
    fn keep_lease(&mut self) {
        if !self.lease.renew_due() && self.lease_state == LeaseState::Held {
            return;
        }
        match self.lease.renew(&self.client) {
            Ok(Renewed::Yes) => {
                self.count_lease_put();
                if self.lease_state == LeaseState::Expired {
                    info!("replica: lease renewed; uploads resume");
                }
                self.lease_state = LeaseState::Held;
            }
            Ok(Renewed::Lost(holder)) => {
                self.count_lease_put();
                self.deposed(holder.map(|l| l.writer.describe()));
            }
            Err(e) => {
                if self.lease.valid(LEASE_MARGIN) {
                    self.failed(e.0);
                } else if self.lease_state == LeaseState::Held {
                    warn!(
                        "replica: the lease could not be renewed before it expired ({e}); uploads stop until it is (local snapshots go on)"
                    );
                    self.lease_state = LeaseState::Expired;
                    self.failing.get_or_insert(Instant::now());
                }
            }
        }
    }

    fn deposed(&mut self, by: Option<String>) {
        if self.lease_state != LeaseState::Lost {
            warn!(
                "replica: {} took the replica over; this supervisor no longer uploads (local snapshots go on)",
                by.as_deref().unwrap_or("another supervisor")
            );
        }
        self.lease_state = LeaseState::Lost;
        self.local.clear();
        self.feed.lock().hold = None;
    }

    fn release(&mut self) {
        if self.lease_state == LeaseState::Held && self.lease.release(&self.client).is_ok() {
            self.count_lease_put();
            self.lease_state = LeaseState::Released;
        }
    }

    fn failed(&mut self, e: String) {
        if self.failing.is_none() {
            warn!(
                "replica: {e}; local snapshots go on, uploads retry every {:?}",
                self.interval
            );
            self.failing = Some(Instant::now());
        }
        self.feed.lock().figures.error = Some(e);
    }

    fn recovered(&mut self) {
        if let Some(since) = self.failing.take() {
            info!(
                after_s = since.elapsed().as_secs(),
                behind = self.local.len(),
                "replica: uploads resumed"
            );
        }
        self.feed.lock().figures.error = None;
    }

    fn count_lease_put(&self) {
        let mut s = self.feed.lock();
        s.figures.puts += 1;
        s.figures.lease_puts += 1;
    }

    fn count_put(&self, bytes: u64) {
        let mut s = self.feed.lock();
        s.figures.puts += 1;
        s.figures.bytes_uploaded += bytes;
    }

    fn publish(&self) {
        let mut s = self.feed.lock();
        s.figures.lease = self.lease_state;
        s.figures.lease_until_ms = self.lease.lease.until_ms;
        s.figures.newest_generation = (self.commit.newest > 0).then_some(self.commit.newest);
        s.figures.behind_generations = self.local.len() as u64;
        s.figures.behind_seconds = self
            .local
            .values()
            .next()
            .map_or(0.0, |l| l.durable_at.elapsed().as_secs_f64());
    }

    /// The deltas that continue the replica's newest generation, oldest
    /// first, up to a piece's worth.
    fn chain(&self) -> Vec<u64> {
        let mut prev = self.commit.newest;
        let mut bytes = 0;
        let mut chain = Vec::new();
        for l in self.local.values() {
            match &l.places.delta {
                Some(d) if d.parent == prev && (chain.is_empty() || bytes + d.len <= MAX_PIECE_BYTES) => {
                    bytes += d.len;
                    prev = l.places.number;
                    chain.push(l.places.number);
                }
                _ => break,
            }
        }
        chain
    }

    /// The replica's newest base piece.
    fn replica_base(&self) -> Option<&Piece> {
        self.commit
            .pieces
            .iter()
            .filter(|p| p.kind == Kind::Base)
            .max_by_key(|p| p.first)
    }

    /// Uploads one piece and moves the commit point to it.
    fn step(&mut self) -> Result<Step, String> {
        if self.local.is_empty() {
            return Ok(Step::Idle);
        }
        let head = self.commit.newest;
        let (base_number, base_bytes) = self.replica_base().map_or((0, 0), |p| (p.first, p.bytes));
        let since_base: u64 = self
            .commit
            .pieces
            .iter()
            .filter(|p| p.kind == Kind::Segment && p.last > base_number)
            .map(|p| p.bytes)
            .sum();
        let chain = if head == 0 { Vec::new() } else { self.chain() };
        let base_due = since_base > BASE_AFTER_BYTES.max(base_bytes);
        // A base continues nothing: when the deltas do not continue the
        // replica, only one newer than its newest generation will do.
        let usable = |b: &&Local| !chain.is_empty() || b.places.number > head;
        let base = self.base.as_ref().filter(usable);
        let (piece, generations) = if !(chain.is_empty() || base_due && base.is_some()) {
            self.segment_piece(&chain)?
        } else if let Some(base) = base {
            self.base_piece(base)?
        } else {
            if !self.waiting_for_base {
                info!(
                    replica = head,
                    "replica: the local generations do not continue the replica's newest; uploads wait for the store's next base"
                );
                self.waiting_for_base = true;
            }
            return Ok(Step::Idle);
        };
        self.waiting_for_base = false;
        let is_base = piece.kind == Kind::Base;
        let mut next = self.commit.clone();
        next.writer = self.me.clone();
        next.updated_ms = now_ms();
        if piece.last > next.newest {
            next.newest = piece.last;
            next.newest_created_ms = piece.last_created_ms;
        }
        let seq = piece.seq;
        next.pieces.push(piece);
        let dropped = next.retain(self.keep);
        // An upload may have outlasted a third of the lease: renewed now,
        // conditionally, it is still ours or it is lost.
        if !self.lease.valid(LEASE_MARGIN) || self.lease.renew_due() {
            self.keep_lease();
            if self.lease_state != LeaseState::Held {
                return Err("the lease is not held; the commit point waits for its renewal".into());
            }
        }
        if !self.put_commit(&next)? {
            return Ok(Step::Idle);
        }
        if seq > 0 {
            self.next_seq = seq + 1;
        }
        if is_base {
            self.base = None;
        }
        // An object left behind is never read (the commit point does not
        // name it); removals that fail are tried again after the next
        // commit.
        self.garbage.extend(dropped.into_iter().map(|p| p.name));
        self.garbage.retain(|name| self.client.delete(name).is_err());
        let now = Instant::now();
        let newest = self.commit.newest;
        let mut s = self.feed.lock();
        for n in generations {
            if let Some(l) = self.local.get(&n) {
                s.lag.record(now.saturating_duration_since(l.durable_at), 1);
            }
        }
        self.local.retain(|&n, _| n > newest);
        s.hold = Some(
            self.base
                .as_ref()
                .map_or(newest + 1, |b| b.places.number.min(newest + 1)),
        );
        s.figures.last_upload_ms = Some(self.commit.updated_ms);
        Ok(Step::Uploaded)
    }

    /// Writes `next` as the commit point, conditionally on the version this
    /// run last wrote. A lost race is read again: a write of ours that timed
    /// out but landed is adopted (and the step tried again); another
    /// writer's means this one is deposed. Whether `next` was written.
    fn put_commit(&mut self, next: &CommitPoint) -> Result<bool, String> {
        let written = self
            .client
            .put_if(
                COMMIT,
                Bytes::from(next.encode()),
                Some(self.commit_version.clone()),
            )
            .map_err(|e| e.0)?;
        self.count_put(0);
        match written {
            Cas::Written(version) => {
                self.commit = next.clone();
                self.commit_version = version;
                Ok(true)
            }
            Cas::Lost => {
                let found = super::read_commit(&self.client).map_err(|e| format!("{e:#}"))?;
                match found {
                    Some((commit, version)) if commit.writer == self.me => {
                        // Ours: the pieces it names are ours and verified.
                        self.commit = commit;
                        self.commit_version = version;
                        self.local.retain(|&n, _| n > self.commit.newest);
                        Ok(false)
                    }
                    other => {
                        let by = other.map(|(c, _)| c.writer.describe());
                        self.deposed(by);
                        Ok(false)
                    }
                }
            }
        }
    }

    /// Uploads a segment piece of `chain`: a segment header and the
    /// records, each checked whole first (a record that does not check is
    /// left out with the ones after it: nothing the commit point names may
    /// fail to verify). A first record past [`MAX_PIECE_BYTES`] (a program
    /// that rewrote most of a large region) goes up alone, streamed.
    fn segment_piece(&mut self, chain: &[u64]) -> Result<(Piece, Vec<u64>), String> {
        let seq = self.next_seq;
        let header = SegmentHeader {
            seq,
            created_ms: now_ms(),
        };
        let first = &self.local[&chain[0]];
        let first_delta = first.places.delta.clone().expect("a chain holds deltas");
        if first_delta.len > MAX_PIECE_BYTES {
            let file = File::open(&first_delta.path)
                .map_err(|e| format!("reading {}: {e}", first_delta.path.display()))?;
            let name = Piece::segment_name(seq, &self.me);
            let hash = self
                .client
                .put_from_file(
                    &name,
                    &header.encode(),
                    &file,
                    first_delta.offset,
                    first_delta.len,
                )
                .map_err(|e| e.0)?;
            self.count_put(64 + first_delta.len);
            let piece = self.describe_segment(name, seq, &chain[..1], 64 + first_delta.len, hash);
            return Ok((piece, chain[..1].to_vec()));
        }
        let mut bytes =
            Vec::with_capacity(64 + MAX_PIECE_BYTES.min(first_delta.len * chain.len() as u64) as usize);
        bytes.extend_from_slice(&header.encode());
        let mut files = Files::default();
        let mut taken = 0;
        for &n in chain {
            let d = self.local[&n]
                .places
                .delta
                .as_ref()
                .expect("a chain holds deltas");
            let start = bytes.len();
            files.read(d, &mut bytes)?;
            match check_record(&bytes[start..]) {
                Ok(h) if h.number == n && h.parent == d.parent => taken += 1,
                found => {
                    bytes.truncate(start);
                    let why = match found {
                        Err(defect) => defect.to_string(),
                        Ok(h) => format!("it holds generation {} on {}", h.number, h.parent),
                    };
                    warn!(
                        generation = n,
                        "replica: the local record of generation {n} does not check ({why}); it is not uploaded, and the replica waits for a newer base"
                    );
                    // Nothing that builds on it goes up either.
                    self.local.retain(|&g, _| g < n);
                    break;
                }
            }
        }
        if taken == 0 {
            return Err(format!(
                "the local record of generation {} does not check",
                chain[0]
            ));
        }
        let hash = blake3::hash(&bytes);
        let len = bytes.len() as u64;
        let name = Piece::segment_name(seq, &self.me);
        self.client.put(&name, Bytes::from(bytes)).map_err(|e| e.0)?;
        self.count_put(len);
        let piece = self.describe_segment(name, seq, &chain[..taken], len, hash);
        Ok((piece, chain[..taken].to_vec()))
    }

    fn describe_segment(
        &self,
        name: String,
        seq: u64,
        chain: &[u64],
        bytes: u64,
        hash: blake3::Hash,
    ) -> Piece {
        let first = &self.local[&chain[0]].places;
        let last = &self.local[&chain[chain.len() - 1]].places;
        Piece {
            name,
            kind: Kind::Segment,
            seq,
            first: first.number,
            last: last.number,
            count: chain.len() as u64,
            parent: first.delta.as_ref().map_or(0, |d| d.parent),
            last_created_ms: last.created_ms,
            bytes,
            blake3: hash.to_hex().to_string(),
        }
    }

    /// Uploads a base piece: the local base file of `base`, whole; checked
    /// first when it is read into memory (up to [`MAX_PIECE_BYTES`]), sent
    /// in parts past that (the store checked every page against its hash
    /// when it built the base).
    fn base_piece(&self, base: &Local) -> Result<(Piece, Vec<u64>), String> {
        let place = base.places.base.as_ref().expect("chosen for its base");
        let number = base.places.number;
        let name = Piece::base_name(number, &self.me);
        let hash = if place.len <= MAX_PIECE_BYTES {
            let mut bytes = Vec::with_capacity(place.len as usize);
            Files::default().read(place, &mut bytes)?;
            match check_record(&bytes) {
                Ok(h) if h.number == number && h.parent == 0 => {}
                Ok(h) => {
                    return Err(format!(
                        "the local base of generation {number} holds generation {}",
                        h.number
                    ));
                }
                Err(defect) => {
                    return Err(format!(
                        "the local base of generation {number} does not check ({defect})"
                    ));
                }
            }
            let hash = blake3::hash(&bytes);
            self.client.put(&name, Bytes::from(bytes)).map_err(|e| e.0)?;
            hash
        } else {
            let file =
                File::open(&place.path).map_err(|e| format!("reading {}: {e}", place.path.display()))?;
            self.client
                .put_from_file(&name, &[], &file, place.offset, place.len)
                .map_err(|e| e.0)?
        };
        self.count_put(place.len);
        let piece = Piece {
            name,
            kind: Kind::Base,
            seq: 0,
            first: number,
            last: number,
            count: 1,
            parent: 0,
            last_created_ms: base.places.created_ms,
            bytes: place.len,
            blake3: hash.to_hex().to_string(),
        };
        // Every generation up to it is in the replica now, through it.
        let covered = self.local.range(..=number).map(|(&n, _)| n).collect();
        Ok((piece, covered))
    }
}

/// Open local files, so a segment's records are read through one handle.
#[derive(Default)]
struct Files {
    open: Vec<(PathBuf, File)>,
}

impl Files {
    /// Appends the record at `place` to `out`.
    fn read(&mut self, place: &RecordPlace, out: &mut Vec<u8>) -> Result<(), String> {
        let i = match self.open.iter().position(|(p, _)| *p == place.path) {
            Some(i) => i,
            None => {
                let f =
                    File::open(&place.path).map_err(|e| format!("reading {}: {e}", place.path.display()))?;
                self.open.push((place.path.clone(), f));
                self.open.len() - 1
            }
        };
        let start = out.len();
        out.resize(start + place.len as usize, 0);
        self.open[i]
            .1
            .read_exact_at(&mut out[start..], place.offset)
            .map_err(|e| format!("reading {} at {}: {e}", place.path.display(), place.offset))
    }
}

/// Logs the replica's summary line at exit.
pub fn log_summary(f: &Figures) {
    let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
    info!(
        replica = f.url,
        newest_generation = f.newest_generation,
        behind_generations = f.behind_generations,
        puts = f.puts,
        lease_puts = f.lease_puts,
        bytes_uploaded = f.bytes_uploaded,
        lag_p50_ms = ms(f.lag_p50_ms),
        lag_p99_ms = ms(f.lag_p99_ms),
        lease = ?f.lease,
        "replica summary"
    );
}

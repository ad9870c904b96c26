//! The uploader thread's loop: the lease kept, one piece a tick, the
//! commit point moved conditionally (REPLICA.md, "Uploading").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::UpdateVersion;
use tracing::{info, warn};

use super::{
    EARLY_BYTES, FINAL_UPLOAD, FeedShared, LEASE_MARGIN, LeaseState, Local, MAX_PIECE_BYTES, RELEASE_TIME,
    REPLICA_BASE_AFTER_BYTES, max_behind,
};
use crate::replica::client::{Cas, Client};
use crate::replica::layout::{COMMIT, CommitPoint, Kind, Piece, Writer};
use crate::replica::lease::{Held, Renewed, now_ms};

pub(super) struct Worker {
    pub(super) client: Client,
    pub(super) me: Writer,
    pub(super) lease: Held,
    pub(super) commit: CommitPoint,
    pub(super) commit_version: UpdateVersion,
    pub(super) keep: u64,
    pub(super) interval: Duration,
    pub(super) feed: Arc<FeedShared>,
    /// Durable local generations newer than the replica's newest.
    pub(super) local: BTreeMap<u64, Local>,
    pub(super) next_seq: u64,
    /// The newest local base not yet in the replica as a base piece: what
    /// the replica starts over from, or checkpoints with.
    pub(super) base: Option<Local>,
    /// Pieces the commit point no longer names whose removal failed;
    /// tried again after each commit.
    pub(super) garbage: Vec<String>,
    /// Since when uploads fail (one line per episode).
    pub(super) failing: Option<Instant>,
    pub(super) waiting_for_base: bool,
    pub(super) lease_state: LeaseState,
}

/// What one step did.
enum Step {
    /// A piece went in and the commit point moved.
    Uploaded,
    /// Nothing to upload (or nothing that can be yet).
    Idle,
}

impl Worker {
    pub(super) fn run(&mut self) {
        let mut next_try = Instant::now();
        loop {
            let stop_by = self.wait(next_try);
            // Ticks keep their cadence whatever an upload takes: a record
            // waits half an interval and one upload, on average.
            let tick = Instant::now();
            if let Some(by) = stop_by {
                // Every request gets the stop's bound less what giving the
                // lease up may take.
                self.client
                    .set_deadline(Some(by.checked_sub(RELEASE_TIME).unwrap_or(by)));
            }
            self.absorb();
            self.bound();
            if self.lease_state != LeaseState::Lost {
                self.keep_lease();
            }
            let mut uploaded = false;
            let mut failed = false;
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

    pub(super) fn count_put(&self, bytes: u64) {
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
            .fold(0u64, |sum, p| sum.saturating_add(p.bytes));
        let chain = if head == 0 { Vec::new() } else { self.chain() };
        let base_due = since_base > REPLICA_BASE_AFTER_BYTES.max(base_bytes.saturating_mul(2));
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
                let found = crate::replica::read_commit(&self.client).map_err(|e| format!("{e:#}"))?;
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
}

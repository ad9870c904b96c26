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
use shm_snapshot::store::format::segment::SegmentHeader;
use shm_snapshot::store::{RecordPlace, RecordPlaces, Store};
use tracing::{info, warn};

use super::client::{Cas, Client};
use super::layout::{COMMIT, CommitPoint, Kind, Piece, Writer};
use super::lease::{Held, Renewed, now_ms};
use crate::lag::LagHistogram;

/// Records waiting past this many bytes are shipped before the interval
/// ends.
pub const EARLY_BYTES: u64 = 16 << 20;
/// Most bytes of records in one segment piece.
const MAX_PIECE_BYTES: u64 = 16 << 20;
/// The replica gets a new base once the segments since its last one weigh
/// more than this or half that base, as the local store does.
const BASE_AFTER_BYTES: u64 = 8 << 20;
/// A lease is used only with this much of it left: an upload that started
/// then ends well before the lease could pass to another supervisor.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
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
        let durable = store.generations().last().map_or(0, |g| g.number);
        // The newest local base: where the replica starts over when its
        // newest generation is not in the local chain.
        let from = if head > 0 {
            head + 1
        } else {
            store
                .record_places(..)
                .iter()
                .rev()
                .find(|p| p.base.is_some())
                .map_or(1, |p| p.number)
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
            failing: None,
            waiting_for_base: false,
            lease_state: LeaseState::Held,
        };
        let thread = std::thread::Builder::new()
            .name("replica".into())
            .spawn(move || worker.run())?;
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
            self.absorb();
            self.bound();
            if self.lease_state != LeaseState::Lost {
                self.keep_lease();
            }
            let mut uploaded = false;
            if self.lease_state == LeaseState::Held {
                match self.step() {
                    Ok(Step::Uploaded) => {
                        uploaded = true;
                        self.recovered();
                    }
                    Ok(Step::Idle) => self.recovered(),
                    Err(e) => self.failed(e),
                }
            }
            self.publish();
            if let Some(by) = stop_by {
                let caught_up = self.local.is_empty() || self.lease_state != LeaseState::Held;
                if caught_up || Instant::now() >= by {
                    if !caught_up {
                        warn!(
                            behind = self.local.len(),
                            "replica: the clean stop's upload did not finish within {}s; the replica holds generation {}",
                            FINAL_UPLOAD.as_secs(),
                            self.commit.newest
                        );
                    }
                    self.release();
                    self.publish();
                    return;
                }
            }
            // More waiting (a batch cut at its size limit): at once.
            next_try = if uploaded && self.pending_bytes() > 0 {
                Instant::now()
            } else {
                Instant::now() + self.interval
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
        for (places, durable_at) in new {
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
                self.count_put(0);
                if self.lease_state == LeaseState::Expired {
                    info!("replica: lease renewed; uploads resume");
                }
                self.lease_state = LeaseState::Held;
            }
            Ok(Renewed::Lost(holder)) => {
                self.count_put(0);
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
            self.count_put(0);
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
    fn chain(&self) -> Vec<&Local> {
        let mut prev = self.commit.newest;
        let mut bytes = 0;
        let mut chain = Vec::new();
        for l in self.local.values() {
            match &l.places.delta {
                Some(d) if d.parent == prev && (chain.is_empty() || bytes + d.len <= MAX_PIECE_BYTES) => {
                    bytes += d.len;
                    prev = l.places.number;
                    chain.push(l);
                }
                _ => break,
            }
        }
        chain
    }

    /// Uploads one piece and moves the commit point to it.
    fn step(&mut self) -> Result<Step, String> {
        if self.local.is_empty() {
            return Ok(Step::Idle);
        }
        let head = self.commit.newest;
        let since_base: u64 = self
            .commit
            .pieces
            .iter()
            .rev()
            .take_while(|p| p.kind == Kind::Segment)
            .map(|p| p.bytes)
            .sum();
        let base_bytes = self
            .commit
            .pieces
            .iter()
            .rev()
            .find(|p| p.kind == Kind::Base)
            .map_or(0, |p| p.bytes);
        let newest_base = self.local.values().rev().find(|l| l.places.base.is_some());
        let chain = if head == 0 { Vec::new() } else { self.chain() };
        let base_due = since_base > BASE_AFTER_BYTES.max(base_bytes / 2);
        let (piece, generations) = if !(chain.is_empty() || base_due && newest_base.is_some()) {
            let (piece, bytes, generations) = self.segment_piece(&chain)?;
            self.client.put(&piece.name, bytes).map_err(|e| e.0)?;
            self.count_put(piece.bytes);
            (piece, generations)
        } else if let Some(base) = newest_base {
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
        let mut next = self.commit.clone();
        next.writer = self.me.clone();
        next.updated_ms = now_ms();
        next.newest = piece.last;
        next.newest_created_ms = piece.last_created_ms;
        let seq = piece.seq;
        next.pieces.push(piece);
        let dropped = next.retain(self.keep);
        if !self.lease.valid(LEASE_MARGIN) {
            return Err("the lease is about to expire; the commit point waits for its renewal".into());
        }
        match self
            .client
            .put_if(
                COMMIT,
                Bytes::from(next.encode()),
                Some(self.commit_version.clone()),
            )
            .map_err(|e| e.0)?
        {
            Cas::Written(version) => {
                self.count_put(0);
                self.commit = next;
                self.commit_version = version;
            }
            Cas::Lost => {
                self.count_put(0);
                let by = super::lease::holder(&self.client).map(|l| l.writer.describe());
                self.deposed(by);
                return Ok(Step::Idle);
            }
        }
        if seq > 0 {
            self.next_seq = seq + 1;
        }
        for p in dropped {
            // Best effort: an object left behind is never read (the commit
            // point does not name it) and the next retention tries again.
            let _ = self.client.delete(&p.name);
        }
        let now = Instant::now();
        let newest = self.commit.newest;
        let mut s = self.feed.lock();
        for n in generations {
            if let Some(l) = self.local.get(&n) {
                s.lag.record(now.saturating_duration_since(l.durable_at), 1);
            }
        }
        self.local.retain(|&n, _| n > newest);
        s.hold = Some(newest + 1);
        s.figures.last_upload_ms = Some(self.commit.updated_ms);
        Ok(Step::Uploaded)
    }

    /// A segment piece of `chain`: a segment header and the records.
    fn segment_piece(&self, chain: &[&Local]) -> Result<(Piece, Bytes, Vec<u64>), String> {
        let seq = self.next_seq;
        let header = SegmentHeader {
            seq,
            created_ms: now_ms(),
        };
        let total: u64 = chain
            .iter()
            .filter_map(|l| l.places.delta.as_ref())
            .map(|d| d.len)
            .sum();
        let mut bytes = Vec::with_capacity(64 + total as usize);
        bytes.extend_from_slice(&header.encode());
        let mut files = Files::default();
        for l in chain {
            let d = l.places.delta.as_ref().expect("a chain holds deltas");
            files.read(d, &mut bytes)?;
        }
        let first = chain.first().expect("a chain is not empty");
        let last = chain.last().expect("a chain is not empty");
        let piece = Piece {
            name: Piece::segment_name(seq, &self.me),
            kind: Kind::Segment,
            seq,
            first: first.places.number,
            last: last.places.number,
            count: chain.len() as u64,
            parent: first.places.delta.as_ref().map_or(0, |d| d.parent),
            last_created_ms: last.places.created_ms,
            bytes: bytes.len() as u64,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
        };
        Ok((
            piece,
            Bytes::from(bytes),
            chain.iter().map(|l| l.places.number).collect(),
        ))
    }

    /// Uploads a base piece: the local base file of `base`, whole, read
    /// and sent in parts.
    fn base_piece(&self, base: &Local) -> Result<(Piece, Vec<u64>), String> {
        let place = base.places.base.as_ref().expect("chosen for its base");
        let number = base.places.number;
        let name = Piece::base_name(number, &self.me);
        let file = File::open(&place.path).map_err(|e| format!("reading {}: {e}", place.path.display()))?;
        let hash = self
            .client
            .put_from_file(&name, &file, place.offset, place.len)
            .map_err(|e| e.0)?;
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
        bytes_uploaded = f.bytes_uploaded,
        lag_p50_ms = ms(f.lag_p50_ms),
        lag_p99_ms = ms(f.lag_p99_ms),
        lease = ?f.lease,
        "replica summary"
    );
}

//! The replica's objects (REPLICA.md): the commit point that names what
//! the replica holds, the lease that names its one writer, and the names
//! of the pieces (base files and segments, byte for byte as the store
//! writes them). Everything read from the bucket is checked before use:
//! the bucket is as untrusted as the region.

use serde::{Deserialize, Serialize};

/// The commit point's object name.
pub const COMMIT: &str = "commit.json";
/// The lease's object name.
pub const LEASE: &str = "lease.json";
/// The `format` of both documents.
pub const FORMAT: &str = "shm-snapshot-replica";
/// Their version.
pub const VERSION: u64 = 1;
/// Largest document read (a commit point lists a few dozen objects).
pub const MAX_DOCUMENT: usize = 4 << 20;
/// Largest piece: a base of the largest region the store takes, and its
/// record overhead.
pub const MAX_PIECE: u64 = (1 << 40) + (1 << 30);

/// Who writes a replica: one supervisor run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// The host name.
    pub host: String,
    /// The supervisor's pid.
    pub pid: u32,
    /// Random, per supervisor run: names this run's pieces and tells its
    /// lease from another's.
    pub token: String,
}

impl Writer {
    /// This supervisor run.
    pub fn me() -> Writer {
        let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
        Writer {
            host,
            pid: std::process::id(),
            token: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// "host pid N" (a host name from the bucket shown without control
    /// characters).
    pub fn describe(&self) -> String {
        let host: String = self.host.chars().filter(|c| !c.is_control()).take(255).collect();
        format!("{host} pid {}", self.pid)
    }
}

/// What a piece holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One generation's full record: a store's base file.
    Base,
    /// Delta records, each on the one before: a store's segment.
    Segment,
}

/// One piece the commit point names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Its object name.
    pub name: String,
    /// Base or segment.
    pub kind: Kind,
    /// A segment's sequence number (its file name in a store); 0 for a base.
    pub seq: u64,
    /// The first generation it holds.
    pub first: u64,
    /// The last.
    pub last: u64,
    /// How many generations it holds.
    pub count: u64,
    /// The parent of its first record (0 for a base).
    pub parent: u64,
    /// When its last generation was begun, ms since the Unix epoch.
    pub last_created_ms: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// BLAKE3 of its bytes, hex.
    pub blake3: String,
}

impl Piece {
    /// The object name of a base piece of generation `number` by `writer`.
    pub fn base_name(number: u64, writer: &Writer) -> String {
        format!("base-{number:020}-{}.snap", writer.token)
    }

    /// The object name of segment piece `seq` by `writer`.
    pub fn segment_name(seq: u64, writer: &Writer) -> String {
        format!("seg-{seq:020}-{}.log", writer.token)
    }

    /// The file it becomes in a store directory.
    pub fn file_name(&self) -> String {
        match self.kind {
            Kind::Base => shm_snapshot::store::base_file_name(self.first),
            Kind::Segment => shm_snapshot::store::segment_file_name(self.seq),
        }
    }

    fn check(&self) -> Result<(), String> {
        let named = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("piece {:?}: {what}", self.name))
            }
        };
        named(
            !self.name.is_empty() && !self.name.contains('/') && self.name != COMMIT && self.name != LEASE,
            "not a piece name",
        )?;
        named(
            self.first >= 1 && self.first <= self.last,
            "first and last generations out of order",
        )?;
        named(
            self.count >= 1 && self.count <= self.last - self.first + 1,
            "impossible generation count",
        )?;
        named(self.bytes <= MAX_PIECE, "larger than any store record")?;
        named(
            self.blake3.len() == 64 && self.blake3.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a BLAKE3 hash",
        )?;
        match self.kind {
            Kind::Base => named(
                self.seq == 0 && self.parent == 0 && self.first == self.last && self.count == 1,
                "a base holds one generation",
            ),
            Kind::Segment => named(
                self.seq >= 1 && self.parent < self.first,
                "a segment's first parent is older",
            ),
        }
    }
}

/// The commit point: the only object a restore follows. A generation is in
/// the replica once the commit point names a piece holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPoint {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u64,
    /// Who wrote it last.
    pub writer: Writer,
    /// When, ms since the Unix epoch.
    pub updated_ms: u64,
    /// The newest generation the pieces hold (0: none yet).
    pub newest: u64,
    /// When it was begun, ms since the Unix epoch: with its number, what
    /// tells it from a generation of the same number elsewhere.
    pub newest_created_ms: u64,
    /// The pieces, oldest first: each base followed by the segments on it.
    pub pieces: Vec<Piece>,
}

impl CommitPoint {
    /// An empty replica's, written by `writer`.
    pub fn empty(writer: &Writer, now_ms: u64) -> CommitPoint {
        CommitPoint {
            format: FORMAT.into(),
            version: VERSION,
            writer: writer.clone(),
            updated_ms: now_ms,
            newest: 0,
            newest_created_ms: 0,
            pieces: Vec::new(),
        }
    }

    /// Decodes and checks a commit point read from the bucket.
    pub fn decode(bytes: &[u8]) -> Result<CommitPoint, String> {
        if bytes.len() > MAX_DOCUMENT {
            return Err(format!(
                "{COMMIT} is {} bytes, more than a commit point can be",
                bytes.len()
            ));
        }
        let c: CommitPoint =
            serde_json::from_slice(bytes).map_err(|e| format!("{COMMIT} does not parse: {e}"))?;
        if c.format != FORMAT || c.version != VERSION {
            return Err(format!(
                "{COMMIT} is {} version {}, not {FORMAT} version {VERSION}",
                c.format, c.version
            ));
        }
        let mut newest = 0;
        let mut last_seq = 0;
        let mut bases = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        for p in &c.pieces {
            p.check().map_err(|e| format!("{COMMIT}: {e}"))?;
            newest = newest.max(p.last);
            let fresh = names.insert(p.name.as_str())
                && match p.kind {
                    Kind::Base => bases.insert(p.first),
                    Kind::Segment => std::mem::replace(&mut last_seq, p.seq) < p.seq,
                };
            if !fresh {
                return Err(format!(
                    "{COMMIT}: piece {:?} repeats a name, a base or a segment number, or its segment number is not above the one before",
                    p.name
                ));
            }
        }
        if newest != c.newest {
            return Err(format!(
                "{COMMIT} names generation {} as the newest, its pieces {newest}",
                c.newest
            ));
        }
        Ok(c)
    }

    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a commit point serializes");
        v.push(b'\n');
        v
    }

    /// Generations the pieces hold (a generation in a base and a segment
    /// both is counted twice).
    pub fn generations(&self) -> u64 {
        self.pieces
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(p.count))
    }

    /// Drops the pieces no longer needed to restore the newest `keep`
    /// generations (numbers from `newest - keep + 1` on: where numbers
    /// skip, more are kept): every piece older than the newest base at or
    /// below the oldest of them. Returns the dropped pieces.
    pub fn retain(&mut self, keep: u64) -> Vec<Piece> {
        let oldest_kept = self.newest.saturating_sub(keep.saturating_sub(1)).max(1);
        let Some(base) = self
            .pieces
            .iter()
            .filter(|p| p.kind == Kind::Base && p.first <= oldest_kept)
            .map(|p| p.first)
            .max()
        else {
            return Vec::new();
        };
        let needed = |p: &Piece| match p.kind {
            Kind::Base => p.first >= base,
            Kind::Segment => p.last > base,
        };
        let (kept, dropped) = self.pieces.drain(..).partition(needed);
        self.pieces = kept;
        dropped
    }
}

/// The lease: which supervisor may move the commit point, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u64,
    /// The holder.
    pub writer: Writer,
    /// When it was taken, ms since the Unix epoch.
    pub acquired_ms: u64,
    /// Until when it holds unless renewed, ms since the Unix epoch.
    pub until_ms: u64,
}

impl Lease {
    /// Decodes and checks a lease read from the bucket.
    pub fn decode(bytes: &[u8]) -> Result<Lease, String> {
        if bytes.len() > MAX_DOCUMENT {
            return Err(format!(
                "{LEASE} is {} bytes, more than a lease can be",
                bytes.len()
            ));
        }
        let l: Lease = serde_json::from_slice(bytes).map_err(|e| format!("{LEASE} does not parse: {e}"))?;
        if l.format != FORMAT || l.version != VERSION {
            return Err(format!(
                "{LEASE} is {} version {}, not {FORMAT} version {VERSION}",
                l.format, l.version
            ));
        }
        Ok(l)
    }

    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a lease serializes");
        v.push(b'\n');
        v
    }
}

/// A time in ms since the Unix epoch, as UTC text (as a number of ms when
/// past what the format shows: the bucket is not trusted).
pub fn utc(ms: u64) -> String {
    // Year 9999 ends at 253402300800 s.
    if ms >= 253_402_300_800_000 {
        return format!("{ms} ms after the epoch");
    }
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

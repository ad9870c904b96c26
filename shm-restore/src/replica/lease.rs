//! One writer per replica: a lease object written with conditional puts
//! (create if absent, then compare-and-swap on its version), renewed well
//! within its lifetime (REPLICA.md, "The lease").

use std::time::Duration;

use bytes::Bytes;
use object_store::UpdateVersion;

use super::client::{Cas, Client, ClientError};
use super::layout::{FORMAT, LEASE, Lease, MAX_DOCUMENT, VERSION, Writer, utc};

/// Why a lease was not taken.
#[derive(Debug)]
pub enum Refused {
    /// Another live supervisor holds it.
    Held(Lease),
    /// The object store failed, or its lease object does not read.
    Failed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Held(l) => write!(
                f,
                "the replica is held by {} until {} (--take-over replaces it)",
                l.writer.describe(),
                utc(l.until_ms)
            ),
            Refused::Failed(why) => f.write_str(why),
        }
    }
}

impl From<ClientError> for Refused {
    fn from(e: ClientError) -> Refused {
        Refused::Failed(e.0)
    }
}

/// A lease this supervisor holds (or held: see [`Held::renew`]).
#[derive(Debug)]
pub struct Held {
    /// The lease as last written.
    pub lease: Lease,
    version: UpdateVersion,
    duration: Duration,
}

/// What renewing found.
#[derive(Debug)]
pub enum Renewed {
    /// Renewed until the new `until_ms`.
    Yes,
    /// Someone else wrote the lease: this supervisor is deposed. The
    /// holder now, if the lease reads.
    Lost(Option<Lease>),
}

fn lease_for(me: &Writer, acquired_ms: u64, now_ms: u64, duration: Duration) -> Lease {
    Lease {
        format: FORMAT.into(),
        version: VERSION,
        writer: me.clone(),
        acquired_ms,
        until_ms: now_ms + duration.as_millis() as u64,
    }
}

/// Takes the lease of the replica for `me`, for `duration`: when there is
/// none, when the one there has expired, or (with `take_over`) whoever
/// holds it. Every write is conditional, so of two supervisors racing for
/// it exactly one wins; the other is refused naming the winner.
pub fn acquire(client: &Client, me: &Writer, duration: Duration, take_over: bool) -> Result<Held, Refused> {
    // A race lost to a holder that then vanished is tried once more.
    for _ in 0..3 {
        let now = now_ms();
        let lease = lease_for(me, now, now, duration);
        let (current, version) = match client.get(LEASE, MAX_DOCUMENT as u64)? {
            None => (None, None),
            Some((bytes, version)) => match Lease::decode(&bytes) {
                Ok(l) => (Some(l), Some(version)),
                // A lease object that does not read holds nothing; it is
                // replaced (conditionally, like any other).
                Err(_) => (None, Some(version)),
            },
        };
        if let Some(current) = &current
            && current.until_ms > now
            && current.writer != *me
            && !take_over
        {
            return Err(Refused::Held(current.clone()));
        }
        match client.put_if(LEASE, Bytes::from(lease.encode()), version)? {
            Cas::Written(version) => {
                return Ok(Held {
                    lease,
                    version,
                    duration,
                });
            }
            Cas::Lost => continue,
        }
    }
    match client
        .get(LEASE, MAX_DOCUMENT as u64)?
        .map(|(b, _)| Lease::decode(&b))
    {
        Some(Ok(l)) => Err(Refused::Held(l)),
        _ => Err(Refused::Failed(
            "the lease changed under every attempt to take it".into(),
        )),
    }
}

impl Held {
    /// Renews the lease for its duration from now, if it is still ours.
    pub fn renew(&mut self, client: &Client) -> Result<Renewed, ClientError> {
        let lease = lease_for(
            &self.lease.writer,
            self.lease.acquired_ms,
            now_ms(),
            self.duration,
        );
        if self.put(client, &lease)? {
            return Ok(Renewed::Yes);
        }
        // A write of ours that timed out but landed moved the version: the
        // lease read back is still ours, and is adopted.
        match client.get(LEASE, MAX_DOCUMENT as u64)? {
            Some((bytes, version)) => match Lease::decode(&bytes) {
                Ok(l) if l.writer == self.lease.writer => {
                    self.version = version;
                    self.lease = l;
                    self.renew(client)
                }
                Ok(l) => Ok(Renewed::Lost(Some(l))),
                Err(_) => Ok(Renewed::Lost(None)),
            },
            None => Ok(Renewed::Lost(None)),
        }
    }

    /// Gives the lease up (it expires at once), if it is still ours.
    pub fn release(&mut self, client: &Client) -> Result<(), ClientError> {
        let mut lease = self.lease.clone();
        lease.until_ms = now_ms();
        self.put(client, &lease).map(drop)
    }

    fn put(&mut self, client: &Client, lease: &Lease) -> Result<bool, ClientError> {
        match client.put_if(LEASE, Bytes::from(lease.encode()), Some(self.version.clone()))? {
            Cas::Written(version) => {
                self.version = version;
                self.lease = lease.clone();
                Ok(true)
            }
            Cas::Lost => Ok(false),
        }
    }

    /// Whether the lease is still valid by this machine's clock, with
    /// `margin` to spare.
    pub fn valid(&self, margin: Duration) -> bool {
        now_ms() + (margin.as_millis() as u64) < self.lease.until_ms
    }

    /// Whether it is time to renew: a third of its duration has passed.
    pub fn renew_due(&self) -> bool {
        let renew_at = self.lease.until_ms - (self.duration.as_millis() as u64) * 2 / 3;
        now_ms() >= renew_at
    }
}

/// The lease in the bucket now, if one reads.
pub fn holder(client: &Client) -> Option<Lease> {
    client
        .get(LEASE, MAX_DOCUMENT as u64)
        .ok()
        .flatten()
        .and_then(|(b, _)| Lease::decode(&b).ok())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

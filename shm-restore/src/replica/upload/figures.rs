//! What the uploader reports: the lease's state and the replica's figures,
//! for `status.json`, `watch`, `STATUS=` and the exit summary.

use serde::{Deserialize, Serialize};
use tracing::info;

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
pub struct ReplicaFigures {
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

impl ReplicaFigures {
    /// The replica's part of a `STATUS=` line.
    pub fn summary(&self) -> String {
        let newest = self
            .newest_generation
            .map_or_else(|| "none".to_owned(), |g| g.to_string());
        format!(
            "replica generation {newest}, {} behind ({:.0}s), {} PUTs, {:.1} MiB up, lease {}",
            self.behind_generations,
            self.behind_seconds,
            self.puts,
            self.bytes_uploaded as f64 / (1u64 << 20) as f64,
            match self.lease {
                LeaseState::Held => "held",
                LeaseState::Expired => "expired",
                LeaseState::Lost => "lost",
                LeaseState::Released => "released",
            }
        )
    }
}

/// Logs the replica's summary line at exit.
pub fn log_summary(f: &ReplicaFigures) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_lag_puts_bytes_and_the_lease() {
        let f = ReplicaFigures {
            url: "s3://b/p".into(),
            lease: LeaseState::Expired,
            lease_until_ms: 0,
            newest_generation: Some(41),
            behind_generations: 3,
            behind_seconds: 2.4,
            last_upload_ms: None,
            puts: 17,
            lease_puts: 2,
            bytes_uploaded: 3 << 20,
            lag_p50_ms: None,
            lag_p99_ms: None,
            error: None,
        };
        assert_eq!(
            f.summary(),
            "replica generation 41, 3 behind (2s), 17 PUTs, 3.0 MiB up, lease expired"
        );
    }
}

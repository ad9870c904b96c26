//! Replication of the store's generations to S3-compatible object storage
//! (REPLICA.md): joining a replica before the store is restored (the
//! lease, the commit point, a pull into an empty store, the refusal of a
//! diverged one), then the uploader.

pub mod client;
pub mod layout;
pub mod lease;
pub mod pull;
pub mod upload;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use shm_snapshot::store::{Store, StoreOptions};
use tracing::{info, warn};

use client::{Cas, Client, ReplicaUrl};
use layout::{COMMIT, CommitPoint, MAX_DOCUMENT, Writer, utc};
use lease::now_ms;

/// The replica flags, resolved.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Where.
    pub url: ReplicaUrl,
    /// How often a batch is shipped.
    pub interval: Duration,
    /// The lease's duration.
    pub lease: Duration,
    /// Take the lease from a live holder.
    pub take_over: bool,
}

/// Reads the commit point: `None` for an empty replica.
pub fn read_commit(client: &Client) -> Result<Option<(CommitPoint, object_store::UpdateVersion)>> {
    match client.get(COMMIT, MAX_DOCUMENT as u64)? {
        None => Ok(None),
        Some((bytes, version)) => {
            let commit = CommitPoint::decode(&bytes).map_err(|e| {
                anyhow::anyhow!("replica {}: {e}; nothing in it is used or changed", client.url())
            })?;
            Ok(Some((commit, version)))
        }
    }
}

/// Joins the replica before the store is restored: takes the lease,
/// writes the commit point as this run's (so a deposed writer's late
/// upload can no longer move it), pulls the replica into a store with no
/// generation, and refuses a store whose newest generations the replica
/// does not continue. Returns the store (reopened after a pull) and what
/// the uploader starts from.
pub fn join(
    options: &ReplicaOptions,
    keep: u64,
    store: Store,
    store_options: StoreOptions,
) -> Result<(Store, upload::Joined)> {
    let url = &options.url;
    let client = Client::s3(url).map_err(|e| anyhow::anyhow!("replica {e}"))?;
    let me = Writer::me();
    let mut held = lease::acquire(&client, &me, options.lease, options.take_over)
        .map_err(|e| anyhow::anyhow!("replica {url}: {e}"))?;
    // A start refused after the lease was taken gives it back at once, so
    // the supervisor that should write the replica is not kept waiting.
    let joined = (|| {
        let found = read_commit(&client)?;
        let (mut commit, version) = match found {
            Some((c, v)) => (c, Some(v)),
            None => (CommitPoint::empty(&me, now_ms()), None),
        };
        // Checked before anything in the replica changes.
        let dir = store.dir().to_owned();
        let pulling = store.generations().is_empty() && commit.newest > 0;
        if !pulling {
            check_continues(&store, &commit, &me, url, &dir)?;
        }
        if version.is_some() && commit.writer != me {
            info!(
                "replica {url}: taking over from {} (commit point of {}, generation {})",
                commit.writer.describe(),
                utc(commit.updated_ms),
                commit.newest
            );
        }
        // The commit point rewritten as this run's: from now on a deposed
        // writer's conditional write fails (REPLICA.md, "Fencing").
        commit.writer = me.clone();
        commit.updated_ms = now_ms();
        let commit_version = match client
            .put_if(COMMIT, Bytes::from(commit.encode()), version)
            .map_err(|e| anyhow::anyhow!("replica {e}"))?
        {
            Cas::Written(v) => v,
            Cas::Lost => {
                bail!(
                    "replica {url}: the commit point changed while this supervisor took the lease; start again"
                )
            }
        };
        let store = if pulling {
            let pulled = pull::pull(&client, &commit, &dir, None, store_options.fsync)
                .map_err(|e| anyhow::anyhow!(e))?;
            for why in &pulled.rejected {
                warn!("replica {url}: {why}; an older generation is used");
            }
            info!(
                generation = pulled.newest,
                pieces = pulled.pieces,
                bytes = pulled.bytes,
                "pulled from the replica {url}"
            );
            drop(store);
            Store::open(&dir, store_options)?
        } else {
            store
        };
        Ok::<_, anyhow::Error>((store, commit, commit_version))
    })();
    let (store, commit, commit_version) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            let _ = held.release(&client);
            return Err(e);
        }
    };
    let start = upload::Joined {
        client,
        me,
        lease: held,
        commit,
        commit_version,
        keep,
        interval: options.interval,
    };
    Ok((store, start))
}

/// Refuses a local store the replica does not continue: the replica's
/// newest generation must be in the local store (the same number, begun
/// at the same millisecond), unless this host wrote it and the local
/// store has since moved past it and let it go.
fn check_continues(
    store: &Store,
    commit: &CommitPoint,
    me: &Writer,
    url: &ReplicaUrl,
    dir: &Path,
) -> Result<()> {
    if commit.newest == 0 {
        return Ok(());
    }
    let local_newest = store.generations().last().map(|g| g.number);
    let Some(local_newest) = local_newest else {
        // A pull left nothing the store reads: the load says why.
        return Ok(());
    };
    let replica_newest = store.record_places(commit.newest..=commit.newest);
    match replica_newest.first() {
        Some(p) if p.created_ms == commit.newest_created_ms => Ok(()),
        None if local_newest > commit.newest && commit.writer.host == me.host => {
            warn!(
                "replica {url}: its newest generation {} is no longer in the local store (newest {local_newest}); the replica starts over from a local base",
                commit.newest
            );
            Ok(())
        }
        _ => bail!(
            "the local store {} (newest generation {local_newest}) and the replica {url} (newest generation {}, written by {} at {}) do not share their newest generations; to restore from the replica, move {} aside or pull into an empty directory (shm-restore pull {url} --snapshot DIR); to keep this store, use another replica",
            dir.display(),
            commit.newest,
            commit.writer.describe(),
            utc(commit.updated_ms),
            dir.display()
        ),
    }
}

/// A client of `url`, for the subcommands.
pub fn connect(url: &str) -> Result<Client> {
    let url = ReplicaUrl::parse(url).map_err(|e| anyhow::anyhow!(e))?;
    Client::s3(&url)
        .map_err(|e| anyhow::anyhow!("replica {e}"))
        .context("connecting")
}

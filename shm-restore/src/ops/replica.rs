//! `shm-restore pull URL --snapshot DIR` and `shm-restore inspect --replica
//! URL`: a local store from a replica, and what a replica holds.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde::Serialize;
use shm_snapshot::store::{Store, StoreOptions};

use super::args::Pull;
use super::load;
use super::show::human;
use super::store::{open_locked, open_read_only};
use crate::replica::layout::{CommitPoint, Lease, Piece, utc};
use crate::replica::lease::{holder, now_ms};
use crate::replica::{self, pull};

/// `pull --json`.
#[derive(Debug, Serialize)]
struct PulledJson {
    replica: String,
    store: String,
    generation: u64,
    pieces: usize,
    bytes: u64,
    rejected: Vec<String>,
}

/// Runs `pull`.
pub fn pull(a: &Pull) -> Result<ExitCode> {
    let options = StoreOptions {
        fsync: !a.no_fsync,
        ..StoreOptions::default()
    };
    let store = open_locked(&a.snapshot, options)?;
    if let Some(newest) = store.generations().last() {
        bail!(
            "{} holds generations already (newest {}): pull into an empty directory",
            a.snapshot.display(),
            newest.number
        );
    }
    let client = replica::connect(&a.url)?;
    let Some((commit, _)) = replica::read_commit(&client)? else {
        bail!("the replica {} holds no generation", client.url());
    };
    let pulled = pull::pull(&client, &commit, &a.snapshot, a.generation, options.fsync)
        .map_err(|e| anyhow::anyhow!(e))?;
    for why in &pulled.rejected {
        eprintln!("shm-restore: {why}; an older generation is used");
    }
    drop(store);
    // The store's own reader verifies every record, as a supervisor's
    // restore would.
    let mut store = Store::open(&a.snapshot, options)?;
    let Some(loaded) = load::newest(&mut store)? else {
        bail!("nothing pulled from {} restores", client.url());
    };
    if let Some(wanted) = a.generation
        && loaded.number != wanted
    {
        bail!(
            "generation {wanted} did not restore from the replica {}; the newest that does is {}",
            client.url(),
            loaded.number
        );
    }
    let out = PulledJson {
        replica: client.url().to_string(),
        store: a.snapshot.display().to_string(),
        generation: loaded.number,
        pieces: pulled.pieces,
        bytes: pulled.bytes,
        rejected: pulled.rejected,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "pulled generation {} from {} into {}: {} pieces, {}",
            out.generation,
            out.replica,
            out.store,
            out.pieces,
            human(out.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `inspect --replica --json`.
#[derive(Debug, Serialize)]
struct ReplicaJson {
    replica: String,
    newest_generation: Option<u64>,
    newest_created_ms: Option<u64>,
    updated_ms: Option<u64>,
    writer: Option<String>,
    generations: u64,
    bytes: u64,
    pieces: Vec<Piece>,
    lease: Option<LeaseJson>,
    local: Option<LocalJson>,
}

#[derive(Debug, Serialize)]
struct LeaseJson {
    holder: String,
    pid: u32,
    until_ms: u64,
    live: bool,
}

/// How far a local store is ahead of the replica.
#[derive(Debug, Serialize)]
struct LocalJson {
    store: String,
    newest_generation: Option<u64>,
    behind_generations: u64,
    behind_seconds: f64,
}

/// Runs `inspect --replica URL [DIR]`.
pub fn inspect(url: &str, dir: Option<&Path>, json: bool) -> Result<ExitCode> {
    let client = replica::connect(url)?;
    let commit = replica::read_commit(&client)?.map(|(c, _)| c);
    let lease = holder(&client);
    let local = match dir {
        Some(dir) => Some(local(dir, commit.as_ref())?),
        None => None,
    };
    let has = |c: &CommitPoint| c.newest > 0;
    let out = ReplicaJson {
        replica: client.url().to_string(),
        newest_generation: commit.as_ref().filter(|c| has(c)).map(|c| c.newest),
        newest_created_ms: commit.as_ref().filter(|c| has(c)).map(|c| c.newest_created_ms),
        updated_ms: commit.as_ref().map(|c| c.updated_ms),
        writer: commit.as_ref().map(|c| c.writer.describe()),
        generations: commit.as_ref().map_or(0, |c| c.generations()),
        bytes: commit.as_ref().map_or(0, |c| {
            c.pieces.iter().fold(0u64, |sum, p| sum.saturating_add(p.bytes))
        }),
        pieces: commit.as_ref().map_or_else(Vec::new, |c| c.pieces.clone()),
        lease: lease.as_ref().map(|l: &Lease| LeaseJson {
            holder: l.writer.host.clone(),
            pid: l.writer.pid,
            until_ms: l.until_ms,
            live: l.until_ms > now_ms(),
        }),
        local,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("replica     {}", out.replica);
    match (&commit, out.newest_generation) {
        (Some(c), Some(n)) => {
            println!(
                "newest      generation {n}, begun {}; commit point written by {} at {}",
                utc(c.newest_created_ms),
                c.writer.describe(),
                utc(c.updated_ms)
            );
            println!(
                "holds       {} ({} pieces, {})",
                pull::generations_held(c),
                c.pieces.len(),
                human(out.bytes)
            );
            for p in &c.pieces {
                println!(
                    "  {:<8} {:>20} .. {:<20} {:>10}  {}",
                    format!("{:?}", p.kind).to_lowercase(),
                    p.first,
                    p.last,
                    human(p.bytes),
                    p.name
                );
            }
        }
        _ => println!("newest      no generation"),
    }
    match &lease {
        Some(l) if l.until_ms > now_ms() => println!(
            "lease       held by {} until {}",
            l.writer.describe(),
            utc(l.until_ms)
        ),
        Some(l) => println!(
            "lease       free (last held by {}, expired {})",
            l.writer.describe(),
            utc(l.until_ms)
        ),
        None => println!("lease       none"),
    }
    if let Some(l) = &out.local {
        println!(
            "local       {}: newest generation {}; the replica is {} generations ({:.1} s) behind it",
            l.store,
            l.newest_generation
                .map_or_else(|| "none".into(), |n| n.to_string()),
            l.behind_generations,
            l.behind_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The local store in `dir` against the replica's commit point.
fn local(dir: &Path, commit: Option<&CommitPoint>) -> Result<LocalJson> {
    let store = open_read_only(dir)?;
    let generations = store.generations();
    let replica_newest = commit.map_or(0, |c| c.newest);
    let newer: Vec<_> = generations.iter().filter(|g| g.number > replica_newest).collect();
    let behind_seconds = match (newer.last(), commit) {
        (Some(g), Some(c)) if c.newest > 0 => {
            g.created_ms.saturating_sub(c.newest_created_ms) as f64 / 1000.0
        }
        (Some(g), _) => {
            generations
                .first()
                .map_or(0, |f| g.created_ms.saturating_sub(f.created_ms)) as f64
                / 1000.0
        }
        (None, _) => 0.0,
    };
    Ok(LocalJson {
        store: dir.display().to_string(),
        newest_generation: generations.last().map(|g| g.number),
        behind_generations: newer.len() as u64,
        behind_seconds,
    })
}

//! A local store from the replica: the pieces the commit point names for
//! one generation, each checked against its BLAKE3 hash, written into the
//! store directory under the store's own names with the store's own
//! durability (a temporary name, synced, renamed, the directory synced).
//! The store's reader then verifies every record as it would its own.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::client::Client;
use super::layout::{CommitPoint, Kind, Piece};

/// What a pull wrote.
#[derive(Debug, Default)]
pub struct Pulled {
    /// The newest generation the pieces written hold.
    pub newest: u64,
    /// Pieces written.
    pub pieces: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Pieces that did not verify (missing, wrong length or hash), one
    /// line each: they and what depends on them were left out.
    pub rejected: Vec<String>,
}

/// Fetches piece `p` into `dir` under its store name: streamed into a
/// temporary file, checked against its length and BLAKE3 hash, synced
/// (with `fsync`), renamed. `Ok(Err(why))` when the piece does not verify
/// (nothing is left of it); `Err` when the local disk fails.
fn fetch(client: &Client, p: &Piece, dir: &Path, fsync: bool) -> Result<Result<PathBuf, String>, String> {
    let name = p.file_name();
    // Named like the store's own temporary files, so an interrupted pull
    // leaves nothing the store does not remove when it next opens.
    let (stem, _) = name.rsplit_once('.').unwrap_or((&name, ""));
    let temp = dir.join(format!("{stem}.{}.0.tmp", std::process::id()));
    let path = dir.join(&name);
    let disk = |e: std::io::Error| format!("writing {}: {e}", temp.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(disk)?;
    let got = client.get_to_file(&p.name, &mut file, p.bytes);
    let verdict = match got {
        Err(e) => Err(e.0),
        Ok(None) => Err(format!("piece {} is missing", p.name)),
        Ok(Some((len, _))) if len != p.bytes => Err(format!(
            "piece {} is {len} bytes, the commit point says {}",
            p.name, p.bytes
        )),
        Ok(Some((_, hash))) if hash.to_hex().as_str() != p.blake3 => {
            Err(format!("piece {} does not match its BLAKE3 hash", p.name))
        }
        Ok(Some(_)) => Ok(()),
    };
    if let Err(why) = verdict {
        let _ = std::fs::remove_file(&temp);
        return Ok(Err(why));
    }
    let done = (if fsync { file.sync_all() } else { Ok(()) }).and_then(|()| std::fs::rename(&temp, &path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&temp);
        return Err(disk(e));
    }
    Ok(Ok(path))
}

/// Which pieces restore generation `target`: the newest base at or below
/// it, then the segments holding records after that base up to `target`,
/// in segment order. Bases in `rejected_bases` are passed over for older
/// ones.
fn plan<'a>(commit: &'a CommitPoint, target: u64, rejected_bases: &[String]) -> Option<Vec<&'a Piece>> {
    let base = commit
        .pieces
        .iter()
        .filter(|p| p.kind == Kind::Base && p.first <= target && !rejected_bases.contains(&p.name))
        .max_by_key(|p| p.first)?;
    let mut segments: Vec<&Piece> = commit
        .pieces
        .iter()
        .filter(|p| p.kind == Kind::Segment && p.last > base.first && p.first <= target)
        .collect();
    segments.sort_by_key(|p| p.seq);
    Some(std::iter::once(base).chain(segments).collect())
}

/// Pulls generation `target` (the newest, if `None`) into the empty store
/// directory `dir`, which the caller holds locked. A piece that does not
/// verify is left out with what depends on it, and an older generation
/// is used: pieces up to the first bad segment, or an older base when a
/// base is bad. Nothing of the store is loaded here: the caller opens and
/// loads it, which verifies every record. Returns what was written, or an
/// error when nothing restores.
pub fn pull(
    client: &Client,
    commit: &CommitPoint,
    dir: &Path,
    target: Option<u64>,
    fsync: bool,
) -> Result<Pulled, String> {
    let target = target.unwrap_or(commit.newest);
    if !commit
        .pieces
        .iter()
        .any(|p| p.first <= target && target <= p.last)
    {
        return Err(format!(
            "generation {target} is not in the replica {} (it holds {})",
            client.url(),
            generations_held(commit)
        ));
    }
    let mut pulled = Pulled::default();
    let mut rejected_bases = Vec::new();
    loop {
        let Some(pieces) = plan(commit, target, &rejected_bases) else {
            return Err(format!(
                "no generation up to {target} in the replica {} verifies: {}",
                client.url(),
                pulled.rejected.join("; ")
            ));
        };
        let base = pieces[0];
        if let Err(why) = fetch(client, base, dir, fsync)? {
            pulled.rejected.push(why);
            rejected_bases.push(base.name.clone());
            continue;
        }
        let mut written = 1;
        pulled.newest = base.first;
        pulled.bytes = base.bytes;
        let mut last = base.last;
        for p in &pieces[1..] {
            match fetch(client, p, dir, fsync)? {
                Ok(_) => {
                    written += 1;
                    pulled.newest = p.last.min(target);
                    pulled.bytes += p.bytes;
                    last = p.last;
                }
                Err(why) => {
                    // The segments after it build on its records.
                    pulled.rejected.push(why);
                    break;
                }
            }
        }
        pulled.pieces = written;
        if last > target {
            cut_after(dir, target)
                .map_err(|e| format!("cutting the pulled segment after generation {target}: {e}"))?;
        }
        if fsync {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
        }
        return Ok(pulled);
    }
}

/// Cuts the segment holding `target` right after its record, so the store
/// pulled ends at `target`.
fn cut_after(dir: &Path, target: u64) -> std::io::Result<()> {
    let store = shm_snapshot::store::Store::open_read_only(dir).map_err(std::io::Error::other)?;
    let places = store.record_places(target..=target);
    let Some(place) = places.first() else {
        return Err(std::io::Error::other(format!(
            "generation {target} is not among the records pulled"
        )));
    };
    let Some(delta) = place.delta.clone() else {
        return Ok(());
    };
    let file = std::fs::OpenOptions::new().write(true).open(&delta.path)?;
    file.set_len(delta.offset + delta.len)?;
    file.sync_all()?;
    // Segments after it hold only newer generations.
    for later in store.record_places(target + 1..) {
        if let Some(d) = later.delta
            && d.path != delta.path
        {
            let _ = std::fs::remove_file(&d.path);
        }
    }
    Ok(())
}

/// "generations 3 to 97" or "no generation".
pub fn generations_held(commit: &CommitPoint) -> String {
    match (commit.pieces.first(), commit.pieces.last()) {
        (Some(first), Some(_)) => format!(
            "{} generations, {} to {}",
            commit.generations(),
            first.first,
            commit.newest
        ),
        _ => "no generation".into(),
    }
}

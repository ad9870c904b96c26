//! `shm-restore import FILE --snapshot DIR`: a raw region image becomes a
//! new generation (a base) of a store, after it is checked like a live
//! region: its header by the library, its units proven the way a snapshot
//! proves them. Takes the store's lock.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use shm_snapshot::snapshot::{self, ArenaScan, Outcome, Snapshotter};
use shm_snapshot::store::{MAX_REGION_LEN, StoreOptions};

use super::args::Import;
use super::show::human;
use super::store::open_locked;
use crate::memory;
use crate::region::HostRegion;

/// Runs `import`.
pub fn run(a: &Import) -> Result<ExitCode> {
    let meta = std::fs::metadata(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", a.file.display());
    }
    let len = meta.len();
    if len == 0 || len > MAX_REGION_LEN {
        bail!(
            "{} is {len} bytes; a region image is 1 byte to {} long",
            a.file.display(),
            human(MAX_REGION_LEN)
        );
    }
    // An image the memory available cannot hold as a region is refused
    // before the store is opened or anything reserved.
    let room = memory::ensure_room(len, &a.snapshot)?;
    // A store made for this, keeping what it held: retention is not the
    // importer's business (prune is).
    let options = StoreOptions {
        keep: usize::MAX,
        ..StoreOptions::default()
    };
    let mut store = open_locked(&a.snapshot, options)?;
    if let Some(other) = store.generations().iter().find(|g| g.region_len != len) {
        bail!(
            "{} holds a region of {} bytes (generation {}), {} is {len} bytes: a store holds one region size; import into a new store",
            a.snapshot.display(),
            other.region_len,
            other.number,
            a.file.display()
        );
    }
    // Copied into a sealed memfd of our own, so the file changing under us
    // cannot change what is checked and persisted.
    let region = HostRegion::create(room)?;
    copy_into(&a.file, region.file())?;
    let observer = match snapshot::observe_file(region.file()) {
        Ok(Some(observer)) => observer,
        Ok(None) => bail!("{} is not a region image: its header is blank", a.file.display()),
        Err(e) => bail!("{} is not a usable region image: {e}", a.file.display()),
    };
    let outcome = Snapshotter::new(ArenaScan::Hash)
        .take(&observer, &mut store)
        .with_context(|| format!("cannot import {}", a.file.display()))?;
    match outcome {
        Outcome::Persisted {
            persisted,
            units,
            anomalies,
            ..
        } => {
            if !anomalies.is_clean() {
                println!("left out corrupt unit table entries: {anomalies:?}");
            }
            println!(
                "imported {} into {} as generation {} ({}, {units} units, {} on disk)",
                a.file.display(),
                a.snapshot.display(),
                persisted.number,
                if persisted.base { "base" } else { "delta" },
                human(persisted.bytes_written)
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::NoConsistentUnit { .. } => bail!(
            "{} holds no valid unit: nothing to restore from it, nothing imported",
            a.file.display()
        ),
        other => bail!("unexpected snapshot outcome {other:?}"),
    }
}

/// Copies the file at `from` into `to` from its start.
fn copy_into(from: &Path, to: &std::fs::File) -> Result<()> {
    let mut src = std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let mut dst = to;
    let copied =
        std::io::copy(&mut src, &mut dst).with_context(|| format!("cannot read {}", from.display()))?;
    if copied != to.metadata().map(|m| m.len()).unwrap_or(copied) {
        bail!("{} changed size while it was read", from.display());
    }
    Ok(())
}

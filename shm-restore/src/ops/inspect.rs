//! `shm-restore inspect DIR`: the generations of a store, newest first, or
//! the units of one. Reads only, without the lock.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use shm_snapshot::layout::{Geometry, UnitRef};
use shm_snapshot::meta::Meta;
use shm_snapshot::snapshot;
use shm_snapshot::store::{Checked, Condition, GenerationKind, Loaded, Store, StoreError};

use super::args::Inspect;
use shm_snapshot::restore::{checked_restorable, newest_checked_restorable};

use super::load::{self, TRIES};
use super::show::{self, human};
use super::store::{self, open_read_only};
use super::tails::{self, TailJson};

/// Bytes of each unit `--units` shows.
const HEAD_BYTES: u64 = 16;

/// One generation in `inspect --json` (shape documented in the README).
#[derive(Debug, Serialize)]
struct GenerationJson {
    number: u64,
    created_ms: Option<u64>,
    created: Option<String>,
    kind: Option<&'static str>,
    parent: Option<u64>,
    /// The file holding it: its base file, or its segment.
    file: Option<String>,
    units: Option<usize>,
    region_bytes: Option<u64>,
    bytes_on_disk: u64,
    status: &'static str,
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct StoreJson {
    store: String,
    newest_verified: Option<u64>,
    /// Whether a process holds the store's lock (a supervisor writing it).
    being_written: bool,
    /// That process, when its pid is visible.
    writer_pid: Option<u32>,
    generations: Vec<GenerationJson>,
    /// Where segments stop being readable before their end.
    tails: Vec<TailJson>,
    /// The store's files: segments, base files, version 2 files.
    files: Vec<FileJson>,
}

/// One file of the store in `inspect --json`.
#[derive(Debug, Serialize)]
struct FileJson {
    file: String,
    bytes: u64,
}

/// One unit in `inspect --units --json`.
#[derive(Debug, Serialize)]
struct UnitJson {
    seq: u64,
    len: u64,
    first_persisted_ms: Option<u64>,
    first_persisted: Option<String>,
    first_persisted_generation: Option<u64>,
    head_hex: String,
}

#[derive(Debug, Serialize)]
struct UnitsJson {
    store: String,
    generation: u64,
    created_ms: Option<u64>,
    units: Vec<UnitJson>,
}

/// The status word of a generation, and what is wrong with it (for one
/// that is `ok`, a base file that does not verify, if it has one).
pub fn status(c: &Checked) -> (&'static str, Option<String>) {
    match &c.condition {
        Condition::Intact => match checked_restorable(c) {
            Ok(()) => ("ok", c.damaged_base.as_ref().map(base_damage)),
            Err(why) => (
                "unrestorable",
                Some(format!("verifies but cannot be restored: {why}")),
            ),
        },
        Condition::Damaged(e) => ("damaged", Some(e.to_string())),
        Condition::BrokenChain(e) => ("broken-chain", Some(e.to_string())),
        Condition::Vanished => ("pruned", Some("removed while being read (pruned)".to_owned())),
    }
}

/// What is wrong with a generation that restores from its record because
/// its base file does not verify.
pub fn base_damage(e: &StoreError) -> String {
    format!("its base file does not verify, so it restores from its record: {e}")
}

fn units_of(c: &Checked) -> Option<Meta> {
    Meta::peek(c.meta.as_deref()?).ok()
}

/// Runs `inspect`.
pub fn run(a: &Inspect, dir: &Path) -> Result<ExitCode> {
    let mut store = open_read_only(dir)?;
    let checked = load::check_all(&mut store)?;
    if a.units {
        return units(a, dir, &mut store, checked);
    }
    let rows: Vec<GenerationJson> = checked
        .iter()
        .rev()
        .map(|c| {
            let (status, problem) = status(c);
            let info = c.info.as_ref();
            let (kind, parent) = match info.map(|i| i.kind) {
                Some(GenerationKind::Base) => (Some("base"), None),
                Some(GenerationKind::Delta { parent, .. }) => (Some("delta"), Some(parent)),
                _ => (None, None),
            };
            // A generation whose header does not verify is reported under
            // the file named for it.
            let path = info
                .map(|i| i.path.clone())
                .or_else(|| store.generation_path(c.number));
            GenerationJson {
                number: c.number,
                created_ms: info.map(|i| i.created_ms),
                created: info.map(|i| show::time(i.created_ms)),
                kind,
                parent,
                file: path.as_deref().map(file_name),
                units: units_of(c).map(|m| m.units.len()),
                region_bytes: info.map(|i| i.region_len),
                bytes_on_disk: c.bytes,
                status,
                problem,
            }
        })
        .collect();
    let newest_verified = newest_checked_restorable(&checked);
    let writer = store::writer(dir);
    let being_written = writer.is_some();
    let tails = tails::tails(&store, being_written);
    let files = files(&store, &checked);
    if a.json {
        let doc = StoreJson {
            store: dir.display().to_string(),
            newest_verified,
            being_written,
            writer_pid: writer.flatten(),
            generations: rows,
            tails,
            files,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() && tails.is_empty() {
        println!("{}: no generations", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let dash = || "-".to_owned();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.number.to_string(),
                r.created.clone().unwrap_or_else(dash),
                match (r.kind, r.parent) {
                    (Some("delta"), Some(p)) => format!("delta on {p}"),
                    (Some(k), _) => k.to_owned(),
                    _ => dash(),
                },
                r.units.map_or_else(dash, |u| u.to_string()),
                r.region_bytes.map_or_else(dash, human),
                human(r.bytes_on_disk),
                r.file.clone().unwrap_or_else(dash),
                r.status.to_owned(),
            ]
        })
        .collect();
    if !table.is_empty() {
        print!(
            "{}",
            show::table(
                &[
                    "GENERATION",
                    "CREATED (UTC)",
                    "KIND",
                    "UNITS",
                    "REGION",
                    "ON DISK",
                    "FILE",
                    "STATUS"
                ],
                &["GENERATION", "UNITS", "REGION", "ON DISK"],
                &table,
            )
        );
    }
    for r in &rows {
        if let Some(problem) = &r.problem {
            println!("generation {}: {problem}", r.number);
        }
    }
    for t in &tails {
        println!("{}", t.line(being_written));
    }
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let writing = match writer {
        Some(Some(pid)) => format!("; being written by pid {pid}"),
        Some(None) => "; being written".to_owned(),
        None => String::new(),
    };
    println!(
        "{} in {}, {} on disk; newest verified: {}{writing}",
        show::count(rows.len(), "generation"),
        show::count(files.len(), "file"),
        human(total),
        newest_verified.map_or_else(|| "none".to_owned(), |n| n.to_string())
    );
    Ok(ExitCode::SUCCESS)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The store's files as of its last scan, with their sizes now: those it
/// reads, and those named for a generation whose header does not verify.
/// A file removed since (by the owner's retention) is left out.
fn files(store: &Store, checked: &[Checked]) -> Vec<FileJson> {
    let mut paths = store.files();
    paths.extend(
        checked
            .iter()
            .filter(|c| c.info.is_none())
            .filter_map(|c| store.generation_path(c.number)),
    );
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::metadata(&p).ok()?.len();
            Some(FileJson {
                file: file_name(&p),
                bytes,
            })
        })
        .collect()
}

/// `inspect --units`: the units of one generation.
fn units(a: &Inspect, dir: &Path, store: &mut Store, checked: Vec<Checked>) -> Result<ExitCode> {
    let (number, loaded, checked) = match a.generation {
        Some(n) => {
            let loaded =
                load::generation(store, n).with_context(|| format!("generation {n} cannot be read"))?;
            (n, loaded, checked)
        }
        None => newest_with_units(dir, store, checked)?,
    };
    let g = snapshot::image_geometry(&loaded.image)
        .with_context(|| format!("generation {number} does not hold a region"))?;
    let meta = Meta::decode(&loaded.meta, &g)
        .with_context(|| format!("generation {number} does not hold a usable unit table"))?;
    // The oldest generation on disk, up to this one, that holds each unit.
    let mut first: BTreeMap<(u64, u64, u64), (u64, u64)> = BTreeMap::new();
    for c in checked.iter().filter(|c| c.number <= number) {
        let (Some(m), Some(info)) = (units_of(c), c.info.as_ref()) else {
            continue;
        };
        for u in &m.units {
            first
                .entry((u.seq(), u.offset, u.len))
                .or_insert((c.number, info.created_ms));
        }
    }
    let created_ms = checked
        .iter()
        .find(|c| c.number == number)
        .and_then(|c| c.info.as_ref())
        .map(|i| i.created_ms);
    let units: Vec<UnitJson> = meta
        .units
        .iter()
        .map(|u| {
            let seen = first.get(&(u.seq(), u.offset, u.len));
            UnitJson {
                seq: u.seq(),
                len: u.len,
                first_persisted_ms: seen.map(|s| s.1),
                first_persisted: seen.map(|s| show::time(s.1)),
                first_persisted_generation: seen.map(|s| s.0),
                head_hex: show::hex(&head(&loaded.image, &g, u)),
            }
        })
        .collect();
    if a.json {
        let doc = UnitsJson {
            store: dir.display().to_string(),
            generation: number,
            created_ms,
            units,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "generation {number}{}: {} units",
        created_ms.map_or_else(String::new, |ms| format!(", created {}", show::time(ms))),
        units.len()
    );
    if units.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = units
        .iter()
        .map(|u| {
            vec![
                u.seq.to_string(),
                u.len.to_string(),
                u.first_persisted.clone().unwrap_or_else(dash),
                u.first_persisted_generation.map_or_else(dash, |n| n.to_string()),
                u.head_hex.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        show::table(
            &[
                "SEQ",
                "LENGTH",
                "FIRST PERSISTED (UTC)",
                "IN GENERATION",
                "FIRST BYTES"
            ],
            &["SEQ", "LENGTH", "IN GENERATION"],
            &rows,
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// The newest generation a supervisor would restore, loaded, with the check
/// it was picked from. On a store a running supervisor prunes, the pick can
/// be gone before it is read: then the store is checked again and the
/// newest picked again, [`load::TRIES`] times at most.
fn newest_with_units(
    dir: &Path,
    store: &mut Store,
    mut checked: Vec<Checked>,
) -> Result<(u64, Loaded, Vec<Checked>)> {
    let mut attempt = 1;
    loop {
        let number = match newest_checked_restorable(&checked) {
            Some(n) => n,
            None if checked.is_empty() => bail!("{} holds no generations", dir.display()),
            None => bail!("no generation in {} verifies and can be restored", dir.display()),
        };
        match store.load_generation(number) {
            Ok(loaded) => return Ok((number, loaded, checked)),
            Err(e)
                if attempt == TRIES
                    || !load::pruned_before_load(&e) && store.vanished_since_scan().is_empty() =>
            {
                return Err(e).with_context(|| format!("generation {number} cannot be read"));
            }
            Err(_) => {
                attempt += 1;
                checked = load::check_all(store)?;
            }
        }
    }
}

/// The first [`HEAD_BYTES`] of a unit's bytes in a region image. The unit
/// passed [`Meta::decode`] against the image's geometry, so its bytes lie
/// in the ring (wrapping at its end).
fn head(image: &[u8], g: &Geometry, u: &UnitRef) -> Vec<u8> {
    g.ring_spans(u.offset, u.len.min(HEAD_BYTES))
        .into_iter()
        .flat_map(|(at, len)| &image[at as usize..(at + len) as usize])
        .copied()
        .collect()
}

//! `shm-restore verify DIR`: every generation and every piece of it
//! checked against its BLAKE3 hashes, each chain against its members, and
//! every segment read to its end. Reads only, without the lock.

use std::process::ExitCode;

use anyhow::Result;
use shm_snapshot::restore::{checked_damage, checked_restorable, newest_checked_restorable};
use shm_snapshot::store::{Condition, StoreError};

use super::args::Verify;
use super::inspect;
use super::load;
use super::show::{count, human};
use super::store::{self, open_read_only};
use super::tails;

/// Runs `verify`: exit 0 when every generation verifies and can be
/// restored and, in a store nobody is writing, every segment reads to its
/// end; 1 otherwise, with one line on stderr per cause of damage (naming
/// how many generations depend on it), per generation that verifies but a
/// supervisor would not restore, and per segment tail counted, and the
/// summary last. While a supervisor writes the store, tails are not
/// counted (see [`tails`]).
pub fn run(a: &Verify) -> Result<ExitCode> {
    let mut store = open_read_only(&a.dir)?;
    let checked = load::check_all(&mut store)?;
    let dir = a.dir.display();
    let mut damaged = 0;
    let mut unrestorable = 0;
    let mut pruned = 0;
    let mut damaged_bases = 0;
    let (mut bases, mut deltas, mut bytes) = (0, 0, 0);
    for c in &checked {
        match &c.condition {
            Condition::Intact if let Err(why) = checked_restorable(c) => {
                unrestorable += 1;
                eprintln!(
                    "shm-restore: generation {} verifies but cannot be restored: {why}",
                    c.number
                );
            }
            Condition::Intact => {
                if let Some(e) = &c.damaged_base {
                    damaged_bases += 1;
                    eprintln!(
                        "shm-restore: generation {}: {}",
                        c.number,
                        inspect::base_damage(e)
                    );
                }
                bytes += c.bytes;
                match c.info.as_ref().is_some_and(|i| i.is_base()) {
                    true => bases += 1,
                    false => deltas += 1,
                }
            }
            Condition::Damaged(_) | Condition::BrokenChain(_) => damaged += 1,
            Condition::Vanished => pruned += 1,
        }
    }
    let newest = newest_checked_restorable(&checked).map_or_else(|| "none".to_owned(), |n| n.to_string());
    let present = checked
        .iter()
        .filter(|c| !matches!(c.condition, Condition::Vanished))
        .count();
    for cause in checked_damage(checked).causes {
        let what = match cause.error {
            StoreError::BrokenChain { .. } => "cannot be restored",
            _ => "is damaged",
        };
        eprintln!("shm-restore: generation {} {what}: {cause}", cause.generation);
    }
    let writer = store::writer(&a.dir);
    let being_written = writer.is_some();
    let tails = tails::tails(&store, being_written);
    let mut torn = 0;
    for t in tails.iter().filter(|t| t.is_problem(being_written)) {
        eprintln!("shm-restore: {}", t.line(being_written));
        torn += 1;
    }
    let mut notes = String::new();
    if pruned > 0 {
        notes.push_str(&format!(
            "; {pruned} pruned by the running supervisor while being read"
        ));
    }
    let appending = tails.len() - torn;
    if appending > 0 {
        notes.push_str(&format!(
            "; {} not counted while the store is being written",
            count(appending, "segment tail")
        ));
    }
    // Problems that are not generations: files that do not read whole.
    let mut files = Vec::new();
    match torn {
        0 => {}
        1 => files.push("1 segment ends in bytes that do not read".to_owned()),
        n => files.push(format!("{n} segments end in bytes that do not read")),
    }
    match damaged_bases {
        0 => {}
        1 => files.push("1 base file is damaged".to_owned()),
        n => files.push(format!("{n} base files are damaged")),
    }
    if damaged + unrestorable > 0 || !files.is_empty() {
        let mut what = match (damaged, unrestorable) {
            (0, 0) if present == 0 => format!("{dir} holds no generation"),
            (0, 0) => format!("every generation in {dir} verifies"),
            (d, 0) => format!("{d} of {present} generations in {dir} are damaged"),
            (0, u) => format!("{u} of {present} generations in {dir} cannot be restored"),
            (d, u) => format!("{d} of {present} generations in {dir} are damaged, {u} cannot be restored"),
        };
        if !files.is_empty() {
            what.push_str(if damaged + unrestorable == 0 {
                ", but "
            } else {
                ", "
            });
            what.push_str(&files.join(", "));
        }
        eprintln!("shm-restore: {what}; newest verified: {newest}{notes}");
        return Ok(ExitCode::from(1));
    }
    if present == 0 {
        println!("{dir}: no generations to verify{notes}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{dir}: all {} verify ({}, {}, {}); newest verified: {newest}{notes}",
        count(present, "generation"),
        count(bases, "base"),
        count(deltas, "delta"),
        human(bytes)
    );
    Ok(ExitCode::SUCCESS)
}

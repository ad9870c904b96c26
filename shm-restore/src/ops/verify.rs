//! `shm-restore verify DIR`: every generation and every piece of it
//! checked against its BLAKE3 hashes, each chain against its members.
//! Reads only, without the lock.

use std::process::ExitCode;

use anyhow::Result;
use shm_snapshot::restore::{checked_damage, checked_restorable, newest_checked_restorable};
use shm_snapshot::store::{Condition, StoreError};

use super::args::Verify;
use super::show::{count, human};
use super::store::open_read_only;

/// Runs `verify`: exit 0 when every generation verifies and can be
/// restored, 1 otherwise, with one line on stderr per cause of damage
/// (naming how many generations depend on it) and per generation that
/// verifies but a supervisor would not restore, and the summary last.
pub fn run(a: &Verify) -> Result<ExitCode> {
    let mut store = open_read_only(&a.dir)?;
    let checked = store.check_all()?;
    let dir = a.dir.display();
    let mut damaged = 0;
    let mut unrestorable = 0;
    let mut pruned = 0;
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
    let pruned = match pruned {
        0 => String::new(),
        n => format!("; {n} pruned by the running supervisor while being read"),
    };
    if damaged + unrestorable > 0 {
        let what = match (damaged, unrestorable) {
            (d, 0) => format!("{d} of {present} generations in {dir} are damaged"),
            (0, u) => format!("{u} of {present} generations in {dir} cannot be restored"),
            (d, u) => format!("{d} of {present} generations in {dir} are damaged, {u} cannot be restored"),
        };
        eprintln!("shm-restore: {what}; newest verified: {newest}{pruned}");
        return Ok(ExitCode::from(1));
    }
    if present == 0 {
        println!("{dir}: no generations to verify{pruned}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{dir}: all {} verify ({}, {}, {}); newest verified: {newest}{pruned}",
        count(present, "generation"),
        count(bases, "base"),
        count(deltas, "delta"),
        human(bytes)
    );
    Ok(ExitCode::SUCCESS)
}

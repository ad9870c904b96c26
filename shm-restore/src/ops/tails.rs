//! Segment tails as the read-only subcommands report them: where a
//! segment stops being readable before its end (STORE.md, "A segment").
//! A tail is not a generation. While the store is being written, the one
//! at the end of the log is a record being appended as it is read, and
//! any other is what a crash left before the writer opened the store;
//! neither is damage. In a store nobody writes, a tail is an append a
//! crash interrupted or damage, which a reader cannot tell apart: `verify`
//! counts it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use shm_snapshot::store::{Store, Tail};

/// What a tail is, as far as a reader can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// At the end of the log of a store being written: a record being
    /// appended while it was read.
    Appending,
    /// Anywhere else: an append a crash interrupted (or, in a store nobody
    /// writes, possibly damage).
    Interrupted,
}

/// One tail, for reports.
#[derive(Debug, Serialize)]
pub struct TailJson {
    /// The segment's file name.
    pub file: String,
    /// Where its unreadable part starts, in bytes from its start.
    pub offset: u64,
    /// Bytes from there to its end.
    pub bytes: u64,
    /// The newest generation before it in the segment.
    pub after: Option<u64>,
    /// What it is.
    pub state: State,
    /// Why the record there does not read.
    pub problem: String,
    /// The segment's path, for messages.
    #[serde(skip)]
    pub path: PathBuf,
}

impl TailJson {
    /// Whether `verify` counts it as a problem: a tail of a store nobody
    /// is writing.
    pub fn is_problem(&self, being_written: bool) -> bool {
        !being_written
    }

    /// What it is, in words, for a store that is or is not `being_written`.
    pub fn meaning(&self, being_written: bool) -> &'static str {
        match (self.state, being_written) {
            (State::Appending, _) => "a record being appended while the store was read",
            (State::Interrupted, true) => {
                "the trace of an append a crash interrupted before the store's writer opened it"
            }
            (State::Interrupted, false) => "an append a crash interrupted, or damage",
        }
    }

    /// One line: the segment, where it stops being readable, what that is,
    /// and why.
    pub fn line(&self, being_written: bool) -> String {
        let after = match self.after {
            Some(n) => format!("after generation {n}"),
            None => "before any generation".to_owned(),
        };
        format!(
            "segment {} does not read from byte {} on ({}, {after}): {}; nothing from there on is a generation ({})",
            self.path.display(),
            self.offset,
            super::show::human(self.bytes),
            self.meaning(being_written),
            self.problem
        )
    }
}

/// The tails of `store` as of its last scan, oldest segment first. Those
/// at the end of the log (no later segment holds a generation or a tail)
/// of a store `being_written` are [`State::Appending`].
pub fn tails(store: &Store, being_written: bool) -> Vec<TailJson> {
    let tails = store.tails();
    // The newest segment holding a generation or a tail: names order as
    // sequence numbers do.
    let last: Option<PathBuf> = store
        .generations()
        .into_iter()
        .map(|g| g.path)
        .filter(|p| is_segment(p))
        .chain(tails.iter().map(|t| t.path.clone()))
        .max();
    tails
        .into_iter()
        .map(|t: Tail| {
            let state = if being_written && last.as_ref() == Some(&t.path) {
                State::Appending
            } else {
                State::Interrupted
            };
            TailJson {
                file: t
                    .path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                offset: t.offset,
                bytes: t.bytes,
                after: t.after,
                state,
                problem: t.why,
                path: t.path,
            }
        })
        .collect()
}

fn is_segment(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "log")
}

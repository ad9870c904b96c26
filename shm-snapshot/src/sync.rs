//! The atomics the protocol is written against: std's, or loom's when the
//! crate is built with `--cfg loom` so the commit/observe protocol can be
//! model-checked.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering, fence};

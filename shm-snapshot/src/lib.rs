//! Crash-safe program state in a shared memory region.
//!
//! A program keeps its state in a region (a memfd) that a supervisor,
//! `shm-restore`, hands it. The program *commits units*: small records that
//! become visible atomically and say which of its state is final. The
//! supervisor copies consistent states of the region to disk while the
//! program runs, and after a crash restores the newest one, so the restarted
//! program finds every unit it committed. Committing never waits: no lock,
//! no system call, no allocation.
//!
//! The region format is specified byte by byte in `FORMAT.md` beside this
//! crate; [`layout`] is its only definition in code.
//!
//! ```
//! use shm_snapshot::{Client, Config, Region};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Under shm-restore the region comes from the unsafe constructor
//! // `Region::from_env()`; without one, a fresh region of its own:
//! let region = Region::anonymous(4 << 20)?;
//! let mut client = Client::open(region, &Config::default())?;
//! assert!(client.recover()?.is_empty());
//!
//! // Write state into the arena, then commit a unit that describes it. The
//! // arena write inside the closure is ordered before the unit is visible.
//! let primes: Vec<u8> = [2u64, 3, 5, 7].iter().flat_map(|p| p.to_le_bytes()).collect();
//! client.commit_with(b"primes=4", |tx| tx.arena().write(0, &primes))?;
//!
//! // The program dies; the next one opens the same region and recovers.
//! let mut client = Client::open(client.into_region(), &Config::default())?;
//! let units = client.recover()?;
//! assert_eq!(units.last().unwrap().bytes, b"primes=4");
//! let mut table = vec![0u8; 32];
//! client.arena().read(0, &mut table)?;
//! assert_eq!(table, primes);
//! client.commit(b"primes=5")?;
//! # Ok(())
//! # }
//! ```
//!
//! The host side, [`Observer`] (cargo feature `host`), reads a live region
//! through a read-only mapping and tells which units are consistent in a
//! copy made while the program kept running.

#![warn(missing_docs)]
// The loom model builds the protocol without files or the environment.
#![cfg_attr(loom, allow(dead_code))]

mod arena;
mod client;
mod env;
mod error;
pub mod layout;
// What a generation records besides the region's bytes: written by
// snapshots, applied by restores, carried by the store.
#[cfg(feature = "host")]
pub mod meta;
#[cfg(feature = "host")]
mod observe;
mod region;
// The restore policy reads the store and decodes what it holds.
#[cfg(all(feature = "host", not(loom)))]
pub mod restore;
// The store and snapshots need real files; the loom model has none.
#[cfg(all(feature = "host", not(loom)))]
pub mod snapshot;
#[cfg(all(feature = "host", not(loom)))]
pub mod store;
mod sync;
mod words;

pub use arena::{Arena, ArenaWords};
pub use client::{Client, Config, Tx, Unit, UnitId};
pub use env::FD_NAME;
pub use error::{ArenaError, CommitError, CommitWithError, RegionError};
#[cfg(feature = "host")]
pub use observe::{Anomalies, Observer};
pub use region::Region;

//! primes-snapshot: a prime sieve that keeps its table of primes in a
//! shm-snapshot region and proves, at every start, that what it restored is
//! consistent.
//!
//! The arena holds the primes found so far as little-endian u64s, in order.
//! Each commit is a unit `(primes, last)`: the first `primes` entries of the
//! table are final and every candidate up to `last` has been checked. Entries
//! past `primes` may be written before their unit is published; they are not
//! final until it is, and a restart overwrites them.
//!
//! Output, one line each on stdout, flushed:
//! `restored primes=<N> last=<P>` at start, `committed primes=<N> last=<P>`
//! after each commit. An inconsistent restore prints `inconsistent: <why>`
//! on stderr and exits with status 3.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shm_snapshot::{Client, Config, Region};

/// Exit status when the restored state is inconsistent.
const EXIT_INCONSISTENT: u8 = 3;

/// A prime sieve whose table survives kill -9 under shm-restore.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Candidates checked per commit.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Pause between commits (e.g. 0, 10ms, 1s).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Exit with status 0 once this many primes are final.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Region size when running without a supervisor, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    size: u64,
}

/// The unit a commit publishes: how many table entries are final, and the
/// last candidate checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    primes: u64,
    last: u64,
}

impl Progress {
    fn encode(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.primes.to_le_bytes());
        bytes[8..].copy_from_slice(&self.last.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Progress, String> {
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("unit of {} bytes, expected 16", bytes.len()))?;
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Ok(Progress {
            primes: word(0),
            last: word(8),
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Inconsistent(why)) => {
            eprintln!("inconsistent: {why}");
            ExitCode::from(EXIT_INCONSISTENT)
        }
        Err(Failure::Other(why)) => {
            eprintln!("primes-snapshot: {why}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Inconsistent(String),
    Other(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Other(e.to_string())
    }
}

fn open_region(args: &Args) -> Result<Region, Failure> {
    if std::env::var_os("LISTEN_FDS").is_none() {
        eprintln!(
            "primes-snapshot: no supervisor; running on a private region (its state ends with this process)"
        );
        return Ok(Region::anonymous(args.size)?);
    }
    // SAFETY: this is the only place the process takes the handed-over
    // descriptor, and shm-restore seals the region against shrinking.
    Ok(unsafe { Region::from_env() }?)
}

fn run(args: &Args) -> Result<(), Failure> {
    let mut client = Client::open(open_region(args)?, &Config::default())?;
    let progress = match client.recover()?.last() {
        Some(unit) => Progress::decode(&unit.bytes).map_err(Failure::Inconsistent)?,
        None => Progress { primes: 0, last: 0 },
    };
    let capacity = client.arena().len() as u64 / 8;
    let mut table = load_table(&client, progress, capacity)?;
    validate(&table, progress).map_err(Failure::Inconsistent)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "restored primes={} last={}", progress.primes, progress.last)?;
    out.flush()?;

    let mut progress = progress;
    loop {
        if args.limit.is_some_and(|limit| progress.primes >= limit) {
            return Ok(());
        }
        let first_new = table.len();
        let end = progress.last.saturating_add(args.batch);
        for candidate in progress.last + 1..=end {
            if args.limit.is_some_and(|limit| table.len() as u64 >= limit) {
                break;
            }
            if is_prime(candidate, &table) {
                if table.len() as u64 >= capacity {
                    eprintln!("primes-snapshot: the table is full ({capacity} primes); stopping");
                    return Ok(());
                }
                table.push(candidate);
            }
            progress.last = candidate;
        }
        progress.primes = table.len() as u64;
        let new: Vec<u8> = table[first_new..].iter().flat_map(|p| p.to_le_bytes()).collect();
        client.commit_with(&progress.encode(), |tx| tx.arena().write(first_new * 8, &new))?;
        writeln!(out, "committed primes={} last={}", progress.primes, progress.last)?;
        out.flush()?;
        if !args.interval.is_zero() {
            std::thread::sleep(args.interval);
        }
    }
}

/// Reads the final part of the table out of the arena.
fn load_table(client: &Client, progress: Progress, capacity: u64) -> Result<Vec<u64>, Failure> {
    if progress.primes > capacity {
        return Err(Failure::Inconsistent(format!(
            "primes={} but the arena holds at most {capacity}",
            progress.primes
        )));
    }
    let mut bytes = vec![0u8; progress.primes as usize * 8];
    client.arena().read(0, &mut bytes)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Trial division by the primes found so far (all primes below `n` are in
/// `table` when candidates are checked in order).
fn is_prime(n: u64, table: &[u64]) -> bool {
    if n < 2 {
        return false;
    }
    for &p in table {
        if p.saturating_mul(p) > n {
            return true;
        }
        if n.is_multiple_of(p) {
            return false;
        }
    }
    true
}

/// Checks a restored table against an independent sieve up to `last`: every
/// entry prime, strictly increasing, none missing, and `primes` and `last`
/// agreeing with it.
fn validate(table: &[u64], progress: Progress) -> Result<(), String> {
    if progress.primes as usize != table.len() {
        return Err(format!(
            "primes={} but {} entries were read",
            progress.primes,
            table.len()
        ));
    }
    if let Some(w) = table.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!("table not strictly increasing: {} then {}", w[0], w[1]));
    }
    if let Some(&top) = table.last()
        && top > progress.last
    {
        return Err(format!("table ends at {top}, past last={}", progress.last));
    }
    let bound =
        usize::try_from(progress.last).map_err(|_| format!("last={} is out of reach", progress.last))?;
    let sieve = sieve(bound);
    let mut entries = table.iter();
    for (n, &is_prime) in sieve.iter().enumerate() {
        if !is_prime {
            continue;
        }
        match entries.next() {
            Some(&p) if p == n as u64 => {}
            Some(&p) => return Err(format!("prime {n} is missing (table has {p} in its place)")),
            None => {
                return Err(format!(
                    "prime {n} <= last={} is missing from the table",
                    progress.last
                ));
            }
        }
    }
    if let Some(p) = entries.next() {
        return Err(format!("{p} is in the table but is not prime"));
    }
    Ok(())
}

/// Sieve of Eratosthenes: `result[n]` tells whether `n` is prime, for `n <= bound`.
fn sieve(bound: usize) -> Vec<bool> {
    let mut prime = vec![true; bound + 1];
    prime[0] = false;
    if bound >= 1 {
        prime[1] = false;
    }
    let mut i = 2;
    while i * i <= bound {
        if prime[i] {
            for multiple in (i * i..=bound).step_by(i) {
                prime[multiple] = false;
            }
        }
        i += 1;
    }
    prime
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primes_to(n: u64) -> Vec<u64> {
        (2..=n)
            .filter(|&c| {
                is_prime(
                    c,
                    &(2..c).filter(|&d| (2..d).all(|e| d % e != 0)).collect::<Vec<_>>(),
                )
            })
            .collect()
    }

    #[test]
    fn a_true_table_validates() {
        let table = primes_to(100);
        assert_eq!(
            validate(
                &table,
                Progress {
                    primes: table.len() as u64,
                    last: 100
                }
            ),
            Ok(())
        );
        assert_eq!(validate(&[], Progress { primes: 0, last: 0 }), Ok(()));
        assert_eq!(validate(&[], Progress { primes: 0, last: 1 }), Ok(()));
    }

    #[test]
    fn a_missing_prime_is_named() {
        let mut table = primes_to(30);
        table.retain(|&p| p != 13);
        let err = validate(
            &table,
            Progress {
                primes: table.len() as u64,
                last: 30,
            },
        )
        .unwrap_err();
        assert_eq!(err, "prime 13 is missing (table has 17 in its place)");
    }

    #[test]
    fn a_composite_or_disordered_or_short_table_is_refused() {
        assert_eq!(
            validate(&[2, 3, 4], Progress { primes: 3, last: 4 }),
            Err("4 is in the table but is not prime".into())
        );
        assert!(
            validate(&[3, 2], Progress { primes: 2, last: 3 })
                .unwrap_err()
                .contains("increasing")
        );
        assert!(
            validate(&[2, 3], Progress { primes: 2, last: 10 })
                .unwrap_err()
                .contains("5 <= last=10")
        );
        assert!(
            validate(&[2, 3, 5, 7, 11], Progress { primes: 5, last: 10 })
                .unwrap_err()
                .contains("past last")
        );
    }

    #[test]
    fn progress_round_trips_and_refuses_other_lengths() {
        let p = Progress { primes: 5, last: 12 };
        assert_eq!(Progress::decode(&p.encode()), Ok(p));
        assert!(Progress::decode(&[0; 8]).is_err());
    }
}

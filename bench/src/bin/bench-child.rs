//! bench-child: the synthetic program of the end-to-end benchmark
//! (BENCHMARKS.md, "End-to-end"). Under `shm-restore` it commits at a fixed
//! rate; each commit writes fresh bytes into the arena and publishes a unit
//! that describes them. It prints nothing while it runs (unless asked to
//! `--announce`, below), only an error line (`bench-child: <what>`) if
//! something fails.
//!
//! A unit is four little-endian u64s, then zeros up to `--unit-bytes`: the
//! commit number, the arena offset of its write, the write's length, and the
//! data's fingerprint (the xor of its 8-byte words, the last one zero-padded).
//! Each write starts `GAP` bytes past the end of the previous one and wraps at
//! the arena's end. After a relaunch it carries on after the newest unit it
//! recovers.
//!
//! It stops when `--for` has elapsed (status 0) or when a signal kills it
//! (SIGTERM from the supervisor: the default action).
//!
//! With `--announce` it prints these lines on stdout, each flushed at once,
//! for the runners (BENCHMARKS.md, "End-to-end" and "Relaunch after a
//! kill"; `shm_snapshot_bench::announce` parses them):
//!
//! - `started <ns> <pid>`: the CLOCK_MONOTONIC reading taken first thing in
//!   `main`, before the flags are parsed or the region opened, and its pid;
//! - `recovered <units>`: how many units the region held when it was opened
//!   (any program's units count, not only this one's);
//! - `committed <ns>`: the clock once its first commit of this run is made
//!   (never, with `--rate 0`).
//!
//! With `--progress-every D` it also prints `progress <commits> <ns>` after
//! the first commit at or past each multiple of D since its start: the
//! commits of this run so far and the clock then, so a runner can tell the
//! rate it kept.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use clap::Parser;
use shm_snapshot::{Client, CommitWithError, Config, Region};
use shm_snapshot_bench::clock::monotonic_ns;

/// Bytes from the end of one write to the start of the next. A multiple of 8,
/// so most stores are whole words as in real programs, that does not divide a
/// page, so the writes' offsets drift across page boundaries instead of lining
/// up with them.
const GAP: u64 = 136;

/// Bytes of a unit's fields; `--unit-bytes` cannot be smaller.
const UNIT_FIELDS: u64 = 32;

/// Falling this far behind the schedule (a stalled machine) starts a new
/// schedule from now, instead of committing a burst to catch up.
const MAX_BEHIND: Duration = Duration::from_secs(1);

/// How long one sleep of an idle child lasts; it sleeps again after each.
const IDLE_NAP: Duration = Duration::from_secs(3600);

/// Synthetic program for the end-to-end benchmark: commits at a fixed rate
/// into the region shm-restore hands it.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Commits per second; 0 opens the region and then idles.
    #[arg(long, value_name = "PER_SECOND")]
    rate: u32,

    /// Bytes of each unit (at least 32: commit number, offset, length, fingerprint).
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(UNIT_FIELDS..))]
    unit_bytes: u64,

    /// Bytes of fresh arena data each commit writes.
    #[arg(long, value_name = "BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    arena_write: u64,

    /// Before the first commit on a region that holds no unit, write this many bytes of fresh data into the arena, a MiB a commit (e.g. 512MiB), so a region starts full of data. [default: 0]
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    fill: u64,

    /// Exit with status 0 after this long (e.g. 10s, 2m). [default: run until killed]
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    run_for: Option<Duration>,

    /// Print `started <CLOCK_MONOTONIC ns> <pid>` on stdout at start, `recovered <units>` once the region is open, and `committed <ns>` after the first commit. [default: print nothing]
    #[arg(long)]
    announce: bool,

    /// Print `progress <commits> <CLOCK_MONOTONIC ns>` on stdout about this often (e.g. 100ms). [default: never]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    progress_every: Option<Duration>,
}

fn main() -> ExitCode {
    // Read before anything else: the relaunch benchmark measures up to here.
    let started = monotonic_ns();
    let args = Args::parse();
    let announced = if args.announce {
        announce(&format!(
            "started {started} {}",
            rustix::process::getpid().as_raw_nonzero()
        ))
    } else {
        Ok(())
    };
    match announced.and_then(|()| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-child: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: this is the only place the process takes the handed-over
    // descriptor, and shm-restore seals the region against shrinking.
    let region = unsafe { Region::from_env() }.context("taking the region handed over by shm-restore")?;
    let mut client = Client::open(region, &Config::default()).context("opening the region")?;
    let units = client.recover().context("recovering the region's units")?;
    if args.announce {
        announce(&format!("recovered {}", units.len()))?;
    }
    let stop_at = args.run_for.map(|d| Instant::now() + d);
    if args.rate == 0 {
        idle(stop_at);
        return Ok(());
    }
    let mut newest = units.last().map(|u| u.bytes.clone());
    if newest.is_none() && args.fill > 0 {
        let piece = FILL_WRITE.min(client.arena().len() as u64);
        let mut filler = Writer::new(&client, None, args.unit_bytes, piece)?;
        for _ in 0..args.fill.div_ceil(piece) {
            filler.commit(&mut client)?;
        }
        newest = Some(filler.unit.clone());
    }
    let mut writer = Writer::new(&client, newest.as_deref(), args.unit_bytes, args.arena_write)?;
    let mut schedule = Schedule::new(args.rate);
    let mut progress = args.progress_every.map(Progress::new);
    let mut made: u64 = 0;
    loop {
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        writer.commit(&mut client)?;
        made += 1;
        if made == 1 && args.announce {
            announce(&format!("committed {}", monotonic_ns()))?;
        }
        if let Some(progress) = &mut progress {
            progress.after_commit(made)?;
        }
        schedule.wait_for_next();
    }
}

/// The `progress` lines: one after the first commit at or past each
/// multiple of the period.
struct Progress {
    every_ns: u64,
    next_ns: u64,
}

impl Progress {
    fn new(every: Duration) -> Progress {
        let every_ns = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX).max(1);
        Progress {
            every_ns,
            next_ns: monotonic_ns().saturating_add(every_ns),
        }
    }

    /// Prints the line if one is due, `made` commits into the run.
    fn after_commit(&mut self, made: u64) -> Result<()> {
        let now = monotonic_ns();
        if now >= self.next_ns {
            announce(&format!("progress {made} {now}"))?;
            // The next multiple after now: a stall skips lines, it does not
            // queue them.
            let behind = (now - self.next_ns) / self.every_ns + 1;
            self.next_ns = self.next_ns.saturating_add(behind.saturating_mul(self.every_ns));
        }
        Ok(())
    }
}

/// Prints `line` on stdout and flushes it, so a reader sees it at once even
/// through a pipe.
fn announce(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("printing to stdout (--announce)")
}

/// Sleeps until `stop_at`, or forever.
fn idle(stop_at: Option<Instant>) {
    loop {
        let nap = match stop_at {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None => IDLE_NAP,
        };
        if nap.is_zero() {
            return;
        }
        std::thread::sleep(nap);
    }
}

/// Commit deadlines at absolute times `start + k / rate`: a late wake-up
/// shortens the next sleep instead of delaying every later commit, so the
/// rate holds on average.
struct Schedule {
    start: Instant,
    rate: u32,
    /// Commits made since `start`.
    done: u64,
}

impl Schedule {
    fn new(rate: u32) -> Schedule {
        Schedule {
            start: Instant::now(),
            rate,
            done: 0,
        }
    }

    /// Counts one commit and sleeps until the next one is due.
    fn wait_for_next(&mut self) {
        self.done += 1;
        let nanos = u128::from(self.done) * 1_000_000_000 / u128::from(self.rate);
        let due = self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let now = Instant::now();
        match due.checked_duration_since(now) {
            Some(left) => std::thread::sleep(left),
            None if now - due > MAX_BEHIND => {
                self.start = now;
                self.done = 0;
            }
            None => {}
        }
    }
}

/// Bytes each commit of `--fill` writes.
const FILL_WRITE: u64 = 1 << 20;

/// Makes the commits: fresh data at a moving offset, and the unit that
/// describes it. Its buffers are reused, so a commit allocates nothing.
struct Writer {
    data: Vec<u8>,
    unit: Vec<u8>,
    /// Number of the next commit.
    next: u64,
    /// Arena offset of the next write.
    offset: u64,
    /// Offsets run from 0 to `last_offset`, where a write still fits.
    last_offset: u64,
}

impl Writer {
    /// A writer for `client`'s arena that carries on after `newest`, the
    /// newest unit the region held, if it is one of this program's.
    fn new(client: &Client, newest: Option<&[u8]>, unit_bytes: u64, arena_write: u64) -> Result<Writer> {
        let arena = client.arena().len() as u64;
        ensure!(
            arena_write <= arena,
            "--arena-write {arena_write} is larger than the arena ({arena} bytes)"
        );
        let mut writer = Writer {
            data: vec![0; usize::try_from(arena_write)?],
            unit: vec![0; usize::try_from(unit_bytes)?],
            next: 0,
            offset: 0,
            last_offset: arena - arena_write,
        };
        if let Some([number, offset, len, _]) = newest.and_then(decode) {
            writer.next = number.wrapping_add(1);
            writer.offset = writer.after(offset, len);
        }
        Ok(writer)
    }

    /// Where the write after one of `len` bytes at `offset` goes.
    fn after(&self, offset: u64, len: u64) -> u64 {
        offset.saturating_add(len).saturating_add(GAP) % (self.last_offset + 1)
    }

    fn commit(&mut self, client: &mut Client) -> Result<()> {
        let (number, offset, len) = (self.next, self.offset, self.data.len() as u64);
        let fingerprint = fill(&mut self.data, number);
        for (i, field) in [number, offset, len, fingerprint].into_iter().enumerate() {
            self.unit[i * 8..i * 8 + 8].copy_from_slice(&field.to_le_bytes());
        }
        let data = &self.data;
        let at = usize::try_from(offset)?;
        client
            .commit_with(&self.unit, |tx| tx.arena().write(at, data))
            .map_err(|e| match e {
                CommitWithError::Commit(e) => anyhow!(e),
                CommitWithError::Aborted(e) => anyhow!(e),
            })
            .with_context(|| format!("commit {number} (writing {len} bytes at arena offset {offset})"))?;
        self.next = number.wrapping_add(1);
        self.offset = self.after(offset, len);
        Ok(())
    }
}

/// The fields of a unit this program committed, or `None` for a shorter one.
fn decode(unit: &[u8]) -> Option<[u64; 4]> {
    let fields = unit.get(..UNIT_FIELDS as usize)?;
    let word = |i: usize| u64::from_le_bytes(fields[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some([word(0), word(1), word(2), word(3)])
}

/// Fills `data` with pseudo-random bytes unique to commit `number` and
/// returns their fingerprint.
fn fill(data: &mut [u8], number: u64) -> u64 {
    // splitmix64: cheap, and every commit's bytes differ from the last's.
    let mut state = number.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut fingerprint = 0;
    for chunk in data.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
        let mut padded = [0u8; 8];
        padded[..chunk.len()].copy_from_slice(chunk);
        fingerprint ^= u64::from_le_bytes(padded);
    }
    fingerprint
}

//! Command-line flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use shm_snapshot::RegionError;
use shm_snapshot::layout::Geometry;

use crate::region::human;

const EXAMPLES: &str = "\
Examples:
  shm-restore --snapshot=./state -- ./my-program --its --args
  shm-restore --snapshot=/var/lib/app --size=1GiB --restart=always ./worker

The program finds its region at fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES=SHM_SHARED_FD,
LISTEN_PID=<its pid>).

Relaunches: a program that committed since its start and then died (kill -9,
OOM, crash) is started again at once, and that does not count toward
--restart-limit; at most 20 such relaunches a second on average (bursts of 40),
so a program that commits and dies at once does not keep a core busy. A program
that dies without committing gets the backoff, and --restart-limit applies.

Exit status: the program's own; 128+N if signal N killed it; 1 if the
supervisor failed or the restart limit was reached; 2 for bad arguments. In
chaos mode: 0 if no run failed by itself, 4 if any did.";

/// When a program that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    /// Unless it exited with status 0.
    OnFailure,
    /// Whatever its status.
    Always,
    /// Never: the supervisor ends with it.
    Never,
}

/// How changed arena chunks are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArenaScan {
    /// Counters once the program moves any, hashing until then.
    Auto,
    /// The program's write counters only.
    Hints,
    /// Hash every arena chunk for every generation.
    Hash,
    /// As hash, and log the first arena write the program did not mark.
    Check,
}

impl From<ArenaScan> for shm_snapshot::snapshot::ArenaScan {
    fn from(scan: ArenaScan) -> Self {
        match scan {
            ArenaScan::Auto => Self::Auto,
            ArenaScan::Hints => Self::Hints,
            ArenaScan::Hash => Self::Hash,
            ArenaScan::Check => Self::Check,
        }
    }
}

/// When the store syncs to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Sync every generation's data and directory entry.
    Always,
    /// Never sync.
    Never,
}

/// Run a program whose state lives in a shared memory region; persist
/// consistent snapshots of the region and restore the newest one before
/// every relaunch.
#[derive(Debug, Parser)]
#[command(name = "shm-restore", version, after_help = EXAMPLES)]
pub struct Args {
    /// Snapshot store directory (created 0700 if missing; one supervisor at a time).
    #[arg(long, value_name = "DIR")]
    pub snapshot: PathBuf,

    /// Region size, in bytes or human units (64MiB, 1GiB); rounded up to a page; this, and about 4% of it and 48 MiB more for the supervisor, must be available (README, "Memory"). [default: 64MiB]
    #[arg(long, value_name = "SIZE", default_value = "64MiB", hide_default_value = true, value_parser = parse_size)]
    pub size: u64,

    /// When to start the program again after it ends.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = Restart::OnFailure)]
    pub restart: Restart,

    /// Relaunches after deaths without progress (no commit since that run started) allowed within --restart-window before giving up. A death after a commit is relaunched at once and not counted.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub restart_limit: u32,

    /// Window for --restart-limit (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub restart_window: Duration,

    /// Delay before relaunching a program that died without committing; doubles after each such quick death up to --backoff-max.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub backoff: Duration,

    /// Longest delay between relaunches.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// On SIGTERM/SIGINT/SIGHUP, how long the program has to exit before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Minimum spacing between generations while the last one is being synced (0: one as soon as a commit lands).
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration)]
    pub interval: Duration,

    /// SIGKILL and relaunch the program when its heartbeat (moved by every commit and by Client::heartbeat) has not moved for this long (e.g. 30s). [default: off]
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub hang_timeout: Option<Duration>,

    /// Persist generations only when the program ends, not while it runs.
    #[arg(long)]
    pub no_continuous: bool,

    /// How changed arena chunks are found: the program's write counters, hashing every chunk, counters once the program moves any, or hashing and logging the first unmarked write (for program authors).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = ArenaScan::Auto)]
    pub arena_scan: ArenaScan,

    /// Whether a generation is synced to disk before it counts as persisted
    /// (never: for tmpfs and tests; a power loss may then lose generations).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = Fsync::Always)]
    pub fsync: Fsync,

    /// Generations kept restorable, the newest N; files none of them needs go whole once a newer base is built.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,

    /// When generations exist but none verifies, start the program on a blank region (the damaged files stay) instead of stopping.
    #[arg(long)]
    pub start_empty_if_damaged: bool,

    /// More log lines (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Fewer log lines (-q warnings and errors only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub quiet: u8,

    /// Replicate generations to S3-compatible object storage (s3://bucket/prefix; credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP). An empty --snapshot directory is restored from it first. On a clean stop, what is not uploaded yet is uploaded first, for at most 10s.
    #[arg(long, value_name = "URL", value_parser = parse_replica)]
    pub replica: Option<crate::replica::client::ReplicaUrl>,

    /// How often generations durable locally are shipped to the replica, in one piece per batch (sooner past 64 MiB waiting).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_timeout, requires = "replica")]
    pub replica_interval: Duration,

    /// How long the replica's lease holds unless renewed (renewed every third of it); a supervisor that cannot renew it stops uploading. Each host judges expiry by its own clock: hosts sharing a replica need clocks that agree to well within this.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_lease, requires = "replica")]
    pub replica_lease: Duration,

    /// Take the replica's lease even while another supervisor holds it (that one stops uploading).
    #[arg(long, requires = "replica")]
    pub take_over: bool,

    #[command(flatten)]
    pub chaos: crate::chaos::ChaosFlags,

    /// The program to run and its arguments (a `--` before it is optional).
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// The smallest unit of a region's size: a page.
const PAGE: u64 = shm_snapshot::layout::PAGE;

fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e} (expected e.g. 64MiB, 1GiB)"))?;
    if bytes == 0 {
        return Err("a region needs at least one page".into());
    }
    let bytes = bytes
        .checked_next_multiple_of(PAGE)
        .ok_or_else(|| "too large".to_owned())?;
    // A region no client can lay out with the default layout is refused
    // here rather than by every program that tries.
    let default = shm_snapshot::Config::default();
    match Geometry::derive(bytes, default.slots, default.ring_bytes, default.chunk_bytes) {
        Err(RegionError::TooSmall { needed, .. }) => Err(format!(
            "{} is too small: the default layout (header, unit table, 1 MiB ring) needs at least {} ({needed} bytes)",
            human(bytes),
            human(needed)
        )),
        // The largest size is the store's and the client's to refuse.
        _ => Ok(bytes),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 250ms, 10s, 5m)"))
}

fn parse_replica(s: &str) -> Result<crate::replica::client::ReplicaUrl, String> {
    crate::replica::client::ReplicaUrl::parse(s)
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let lease = parse_duration(s)?;
    if lease < Duration::from_secs(3) {
        return Err("a lease shorter than 3s cannot be renewed in time".into());
    }
    Ok(lease)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let timeout = parse_duration(s)?;
    if timeout.is_zero() {
        return Err("a timeout must be longer than zero".into());
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_flags_pass_through_without_a_double_dash() {
        let args =
            Args::try_parse_from(["shm-restore", "--snapshot=dir", "./child", "--its-flag", "-v"]).unwrap();
        assert_eq!(args.command, ["./child", "--its-flag", "-v"]);
        assert_eq!(args.verbose, 0);
    }

    #[test]
    fn sizes_take_human_units_and_round_up_to_a_page() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("2000001"), Ok(2002944), "up to the next page");
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn a_size_below_what_the_default_layout_needs_is_refused_naming_the_minimum() {
        let why = parse_size("1KiB").unwrap_err();
        assert!(
            why.contains("too small") && why.contains("1064960 bytes"),
            "{why}"
        );
        assert_eq!(parse_size("1064960"), Ok(1064960));
        assert_eq!(
            parse_size("1064959"),
            Ok(1064960),
            "rounded up to a page, it fits"
        );
        assert!(parse_size("1060864").is_err(), "a page less does not");
    }
}

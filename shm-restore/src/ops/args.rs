//! The subcommands' flags, and the top-level parser that puts them beside
//! the run form.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cli::Args;

// The whole command line: the run form's flags, or one subcommand. Only
// `main` decides which: a first argument that names a subcommand (or asks
// for help) is parsed here, anything else by the run form's own `Args`, so
// the run form parses exactly as it always has. This parser also renders
// `shm-restore --help`, listing both.
/// The command line with subcommands.
#[derive(Debug, Parser)]
#[command(
    name = "shm-restore",
    version,
    about = "Run a program whose state lives in a shared memory region; persist consistent snapshots of \
             the region and restore the newest one before every relaunch. Subcommands inspect, check, \
             copy and clean a store.",
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    subcommand_value_name = "SUBCOMMAND",
    subcommand_help_heading = "Subcommands (shm-restore <SUBCOMMAND> --help for each)",
    override_usage = "shm-restore [OPTIONS] --snapshot <DIR> [--] <COMMAND>...\n       shm-restore <SUBCOMMAND> [ARGS]"
)]
pub struct Cli {
    /// The run form.
    #[command(flatten)]
    pub run: Option<Args>,
    /// A subcommand.
    #[command(subcommand)]
    pub op: Option<Op>,
}

/// A subcommand on a store.
#[derive(Debug, Subcommand)]
pub enum Op {
    /// List a store's generations, newest first (read-only; safe while a supervisor runs).
    Inspect(Inspect),
    /// Check every generation against its BLAKE3 hashes and that it restores, and every file read to its end; exit 1 naming each that fails.
    Verify(Verify),
    /// Write a generation as a raw region image (the bytes a restore puts in the region).
    Export(Export),
    /// Add a raw region image to a store as a new generation (a base).
    Import(Import),
    /// Remove the files (segments, base files) the newest N generations and the newest one a supervisor restores do not need.
    Prune(Prune),
    /// Live view of the supervisor running on a store, refreshed every second.
    Watch(Watch),
    /// Make a local store from a replica (nothing is started): the newest generation, or --generation N.
    Pull(Pull),
    /// Remove what a dead supervisor left in a store: temporary files, its status, the pid in
    /// its lock file, its program's processes.
    Cleanup(Cleanup),
}

/// `inspect` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Units carry no commit time (committing reads no clock): --units shows when
each unit was first persisted, the creation time of the oldest generation
on disk that holds it. Times are UTC. A segment that stops being readable
before its end (a record being appended, or one a crash cut short) is
listed after the generations, as a tail: it is not a generation.")]
pub struct Inspect {
    /// The store directory.
    #[arg(value_name = "DIR", required_unless_present = "replica")]
    pub dir: Option<PathBuf>,
    /// Inspect a replica instead (s3://bucket/prefix): its generations, how far behind the store in DIR it is (when DIR is given too), its lease holder.
    #[arg(long, value_name = "URL", conflicts_with_all = ["units", "watch"])]
    pub replica: Option<String>,
    /// Print JSON instead of a table (shape in the README).
    #[arg(long)]
    pub json: bool,
    /// List a generation's units: sequence number, length, first persisted, first bytes in hex.
    #[arg(long)]
    pub units: bool,
    /// The generation --units lists. [default: the newest a supervisor would restore]
    #[arg(long, value_name = "N", requires = "units")]
    pub generation: Option<u64>,
    /// Same as `shm-restore watch DIR`.
    #[arg(long, conflicts_with_all = ["json", "units"])]
    pub watch: bool,
}

/// `verify` flags.
#[derive(Debug, clap::Args)]
pub struct Verify {
    /// The store directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `export` flags.
#[derive(Debug, clap::Args)]
pub struct Export {
    /// The store directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The generation to export. [default: the newest a supervisor would restore]
    #[arg(long, value_name = "N")]
    pub generation: Option<u64>,
    /// The image file to write (region-sized; refused if it exists unless --force).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `import` flags.
#[derive(Debug, clap::Args)]
pub struct Import {
    /// A raw region image (from `export`, or a region a program wrote).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The store directory (created 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub snapshot: PathBuf,
}

/// `prune` flags.
#[derive(Debug, clap::Args)]
pub struct Prune {
    /// The store directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Generations to keep (the newest N, plus the newest one a supervisor restores and what their chains need).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
}

/// `watch` flags.
#[derive(Debug, clap::Args)]
pub struct Watch {
    /// The store directory of the supervisor to watch.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print one view and exit.
    #[arg(long)]
    pub once: bool,
}

/// `pull` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Credentials and endpoint come from the environment, as for --replica:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
AWS_ALLOW_HTTP=true for a plain-HTTP endpoint. Every piece is checked
against its BLAKE3 hash; a piece that does not verify is left out and an
older generation is used (said on stderr). The store is then opened and its
newest generation loaded, as a supervisor would.")]
pub struct Pull {
    /// The replica (s3://bucket/prefix).
    #[arg(value_name = "URL")]
    pub url: String,
    /// The store directory to make (created 0700 if missing; must hold no generation).
    #[arg(long, value_name = "DIR")]
    pub snapshot: PathBuf,
    /// The generation to pull. [default: the newest in the replica]
    #[arg(long, value_name = "N")]
    pub generation: Option<u64>,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
    /// Write without syncing (for tmpfs and tests).
    #[arg(long)]
    pub no_fsync: bool,
}

/// `cleanup` flags.
#[derive(Debug, clap::Args)]
pub struct Cleanup {
    /// The store directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Whether the first argument selects a subcommand (or top-level help or
/// version) rather than the run form, whose first argument is always an
/// option.
pub fn is_subcommand(first: Option<&std::ffi::OsStr>) -> bool {
    use clap::CommandFactory;
    let Some(first) = first.and_then(|f| f.to_str()) else {
        return false;
    };
    matches!(first, "-h" | "--help" | "-V" | "--version" | "help")
        || Cli::command().get_subcommands().any(|c| c.get_name() == first)
}

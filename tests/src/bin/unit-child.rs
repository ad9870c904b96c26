//! A test program for the supervisor: prints what it recovered, commits
//! numbered units, then does what it is told.
//!
//! `unit-child [--commit N] [--unit-bytes B] [--pause-ms M] [--unmarked-write CHUNK --store DIR] [--then sleep|exit:CODE|ignore-term|heartbeat] [--grandchild] [--list-fds]`
//!
//! `--pause-ms M` sleeps M ms after each commit. `--unmarked-write CHUNK`,
//! after the first commit, waits for a generation file in the store `DIR`
//! (so the supervisor has a copy of the region from before the write),
//! writes arena chunk 0 through the client (which marks it), then arena
//! chunk CHUNK through the region's file, as a client that forgets to mark
//! a write does, and prints `unmarked <CHUNK>`.
//!
//! `--then heartbeat` stays busy without committing, calling
//! `Client::heartbeat` every 20 ms.
//!
//! `--list-fds` prints, after the pid, `fds <n> ...` (the open
//! descriptors), `env LISTEN_PID=<value>`, and for each of `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC` and `WATCHDOG_PID` either `env NAME=<value>` or
//! `env NAME unset`.
//!
//! Output, one line each, flushed: `pid <pid>`, `recovered <id> <payload>`
//! per unit, `ready`, `committed <id> <payload>` per commit, `done`.
//! Payloads are `unit-<k>` padded with `.` to B bytes; k continues after the
//! highest recovered k, so a test can tell recovered units from new ones.

use std::io::Write;

use shm_snapshot::{Client, Config, Region};

fn main() {
    let mut commits = 0u64;
    let mut unit_bytes = 0usize;
    let mut then = String::from("exit:0");
    let mut grandchild = false;
    let mut list_fds = false;
    let mut pause_ms = 0u64;
    let mut unmarked: Option<u64> = None;
    let mut store: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--commit" => commits = args.next().and_then(|v| v.parse().ok()).expect("--commit N"),
            "--unit-bytes" => unit_bytes = args.next().and_then(|v| v.parse().ok()).expect("--unit-bytes B"),
            "--then" => then = args.next().expect("--then WHAT"),
            "--grandchild" => grandchild = true,
            "--list-fds" => list_fds = true,
            "--pause-ms" => pause_ms = args.next().and_then(|v| v.parse().ok()).expect("--pause-ms M"),
            "--store" => store = Some(args.next().expect("--store DIR").into()),
            "--unmarked-write" => {
                unmarked = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--unmarked-write CHUNK"),
                )
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if then == "ignore-term" {
        // Before anything is printed, so a test that reads `done` knows the
        // signal is ignored. SAFETY: SIG_IGN installs no handler and touches
        // no memory; nothing else in this process relies on SIGTERM.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "pid {}", std::process::id()).unwrap();
    if list_fds {
        writeln!(out, "fds {}", open_fds().join(" ")).unwrap();
        writeln!(
            out,
            "env LISTEN_PID={}",
            std::env::var("LISTEN_PID").unwrap_or_default()
        )
        .unwrap();
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            match std::env::var_os(name) {
                Some(value) => writeln!(out, "env {name}={}", value.to_string_lossy()).unwrap(),
                None => writeln!(out, "env {name} unset").unwrap(),
            }
        }
    }
    // SAFETY: the only place this process takes the handed-over descriptor;
    // the supervisor seals the region against shrinking.
    let region = unsafe { Region::from_env() }.unwrap_or_else(|e| {
        eprintln!("unit-child: {e}");
        std::process::exit(4)
    });
    let mut client = Client::open(region, &Config::default()).unwrap_or_else(|e| {
        eprintln!("unit-child: {e}");
        std::process::exit(5)
    });
    let mut next = 0u64;
    for unit in client.recover().expect("recover") {
        let payload = String::from_utf8(unit.bytes).expect("utf-8 payload");
        let k: u64 = payload
            .trim_end_matches('.')
            .trim_start_matches("unit-")
            .parse()
            .expect("numbered payload");
        next = next.max(k + 1);
        writeln!(out, "recovered {} {payload}", unit.id.0).unwrap();
    }
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    if grandchild {
        // Left running on purpose: the test checks the group kill ends it.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("sleep");
        writeln!(out, "grandchild {}", child.id()).unwrap();
    }
    for k in next..next + commits {
        let mut payload = format!("unit-{k}");
        while payload.len() < unit_bytes {
            payload.push('.');
        }
        let id = client.commit(payload.as_bytes()).expect("commit");
        writeln!(out, "committed {} {payload}", id.0).unwrap();
        out.flush().unwrap();
        if pause_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        }
        if let Some(chunk) = unmarked.take() {
            use std::os::unix::fs::FileExt;
            wait_for_generation(store.as_deref().expect("--unmarked-write needs --store DIR"));
            client.arena().write(0, b"marked").expect("arena write");
            let g = *client.geometry();
            let at = g.arena_offset + chunk * g.chunk_bytes;
            client
                .region()
                .file()
                .write_all_at(b"not marked", at)
                .expect("writing the region's file");
            writeln!(out, "unmarked {chunk}").unwrap();
        }
    }
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
    match then.as_str() {
        "heartbeat" => loop {
            client.heartbeat();
            std::thread::sleep(std::time::Duration::from_millis(20));
        },
        "sleep" => loop {
            std::thread::sleep(std::time::Duration::from_secs(1000));
        },
        "ignore-term" => {
            // SIGTERM was set to be ignored at start.
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1000));
            }
        }
        exit => {
            let code = exit
                .strip_prefix("exit:")
                .and_then(|c| c.parse().ok())
                .expect("--then exit:CODE");
            std::process::exit(code)
        }
    }
}

/// The descriptors open in this process, but the one reading the list.
fn open_fds() -> Vec<String> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    let mut fds: Vec<u32> = dir
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|target| !target.starts_with("/proc")))
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    fds.sort_unstable();
    fds.iter().map(u32::to_string).collect()
}

/// Waits until the store `dir` holds a generation file; exits with status
/// 6 if none comes within 30 s.
fn wait_for_generation(dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let found = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "snap"));
        if found {
            return;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("unit-child: no generation in {} within 30 s", dir.display());
            std::process::exit(6);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

//! Replication to a real S3-compatible server (SeaweedFS on loopback,
//! started by each test): real supervisors replicate, a second directory
//! standing for a second machine pulls and restores, two supervisors race
//! for one replica, the server is paused and killed mid-run, and a piece
//! corrupted in the bucket is caught on pull.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use shm_snapshot_bench::seaweed::Server;
use shm_snapshot_tests::{Proc, Stream, bin, workdir};

const BUCKET: &str = "replica-tests";
const URL: &str = "s3://replica-tests/app";

/// A supervisor on `dir/store` replicating to the server, running
/// primes-snapshot.
fn supervise(server: &Server, dir: &Path, store: &str, flags: &[&str]) -> Proc {
    let mut command = Command::new(bin("shm-restore"));
    command
        .current_dir(dir)
        .envs(server.env())
        .arg(format!("--snapshot={store}"))
        .args([
            "--size=4MiB",
            "--fsync=never",
            "--replica",
            URL,
            "--replica-interval=200ms",
        ])
        .args(flags)
        .arg("--")
        .arg(bin("primes-snapshot"))
        .args(["--interval=2ms", "--batch=200"]);
    Proc::spawn(command)
}

/// A server with the bucket, a work directory, and a supervisor with
/// `flags` on store `a` in it, replicating, its program started on an
/// empty region.
fn first_machine(flags: &[&str]) -> (Server, tempfile::TempDir, Proc) {
    let server = Server::start();
    server.create_bucket(BUCKET);
    let dir = workdir();
    let mut a = supervise(&server, dir.path(), "a", flags);
    a.expect_out("restored primes=0");
    (server, dir, a)
}

/// Runs `shm-restore` with `args` against the server.
fn shm_restore(server: &Server, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("shm-restore"))
        .current_dir(dir)
        .envs(server.env())
        .args(args)
        .output()
        .expect("shm-restore runs")
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// `inspect --replica --json`.
fn replica(server: &Server, dir: &Path) -> Value {
    json(&shm_restore(
        server,
        dir,
        &["inspect", "--replica", URL, "--json"],
    ))
}

fn replica_newest(server: &Server, dir: &Path) -> u64 {
    replica(server, dir)["newest_generation"].as_u64().unwrap_or(0)
}

/// Asserts that `replica` (from `inspect --replica --json`) was last
/// written by the supervisor with `pid`.
fn assert_written_by(replica: &Value, pid: impl std::fmt::Display) {
    let writer = replica["writer"].as_str().unwrap_or_default();
    assert!(
        writer.ends_with(&format!(" pid {pid}")),
        "not written by pid {pid}: {replica}"
    );
}

/// The supervisor's `status.json` in `store`, once there is one that reads.
fn status(store: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = std::fs::read(store.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no status.json in {}", store.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `ok` holds, polling; `what` names it in the failure.
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn primes_of(line: &str) -> u64 {
    line.split("primes=")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .expect("primes=N")
}

/// The newest generation of a store, as `inspect --json` lists it.
fn local_newest(server: &Server, dir: &Path, store: &str) -> u64 {
    let v = json(&shm_restore(server, dir, &["inspect", store, "--json"]));
    v["newest_verified"].as_u64().expect("a verified generation")
}

#[test]
fn a_second_machine_pulls_restores_and_carries_on_replicating() {
    let (server, dir, mut a) = first_machine(&[]);
    // Some generations reach the replica while the program runs.
    wait_until("generations in the replica", || {
        replica_newest(&server, dir.path()) >= 20
    });
    // The status file shows it.
    wait_until("the replica's figures in status.json", || {
        let s = status(&dir.path().join("a"));
        s["replica"]["lease"] == "held"
            && s["replica"]["puts"].as_u64().unwrap() >= 2
            && s["replica"]["newest_generation"].as_u64().is_some()
            && s["replica"]["last_upload_ms"].as_u64().is_some()
    });
    // A clean stop uploads the final generation before the supervisor exits.
    a.signal(libc::SIGTERM);
    a.wait();
    let last_primes = a
        .lines(Stream::Out)
        .iter()
        .rev()
        .find(|l| l.starts_with("committed primes="))
        .map(|l| primes_of(l))
        .expect("commits");
    let final_generation = local_newest(&server, dir.path(), "a");
    let r = replica(&server, dir.path());
    assert_eq!(
        r["newest_generation"].as_u64(),
        Some(final_generation),
        "{r}\n{}",
        a.transcript()
    );
    assert_eq!(r["lease"]["live"], false, "a clean stop releases the lease: {r}");
    assert!(
        a.lines(Stream::Err).iter().any(|l| l.contains("replica summary")),
        "{}",
        a.transcript()
    );

    // `pull` makes a store of it in another directory, nothing started.
    let pulled = json(&shm_restore(
        &server,
        dir.path(),
        &["pull", URL, "--snapshot", "pulled", "--json", "--no-fsync"],
    ));
    assert_eq!(pulled["generation"].as_u64(), Some(final_generation), "{pulled}");
    let verify = shm_restore(&server, dir.path(), &["verify", "pulled"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The other machine: an empty directory, the same replica.
    let mut b = supervise(&server, dir.path(), "b", &[]);
    let restored = primes_of(&b.expect_out("restored primes="));
    assert!(
        restored >= last_primes,
        "restored {restored} primes, but {last_primes} were committed before the clean stop:\n{}",
        b.transcript()
    );
    assert!(
        b.lines(Stream::Err)
            .iter()
            .any(|l| l.contains("pulled from the replica")),
        "{}",
        b.transcript()
    );
    // It carries on replicating from there.
    wait_until("the second machine's generations in the replica", || {
        replica_newest(&server, dir.path()) > final_generation
    });
    let r = replica(&server, dir.path());
    assert_written_by(&r, b.pid());
    let b_pid = b.pid();
    b.signal(libc::SIGTERM);
    b.wait();

    // The first machine's store no longer holds the replica's newest
    // generation: refused, naming both, nothing changed.
    let before = local_newest(&server, dir.path(), "a");
    let replica_before = replica(&server, dir.path());
    let mut again = supervise(&server, dir.path(), "a", &[]);
    let status = again.wait();
    assert_eq!(status.code(), Some(1), "{}", again.transcript());
    let line = again.seen_or_expect(
        Stream::Err,
        |l| l.contains("do not share their newest generations"),
        "the refusal",
    );
    assert!(line.contains(URL), "{line}");
    assert_eq!(local_newest(&server, dir.path(), "a"), before);
    // The refused start changed nothing in the replica and gave the lease
    // back.
    let after = replica(&server, dir.path());
    assert_written_by(&after, b_pid);
    assert_eq!(after["newest_generation"], replica_before["newest_generation"]);
    assert_eq!(
        after["updated_ms"], replica_before["updated_ms"],
        "the commit point was rewritten"
    );
    assert_eq!(after["lease"]["live"], false, "{after}");
}

#[test]
fn one_writer_per_replica_and_a_stopped_holder_is_replaced() {
    let (server, dir, mut a) = first_machine(&["--replica-lease=3s"]);
    wait_until("generations in the replica", || {
        replica_newest(&server, dir.path()) >= 5
    });

    // Credentials the server refuses: the start is refused in one line
    // naming the server's answer, and the replica is untouched.
    let mut wrong = Command::new(bin("shm-restore"));
    wrong
        .current_dir(dir.path())
        .envs(server.env())
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["--snapshot=c", "--size=4MiB", "--replica", URL, "--"])
        .arg(bin("primes-snapshot"));
    let out = wrong.output().expect("shm-restore runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let refusal = stderr
        .lines()
        .find(|l| l.starts_with("shm-restore: "))
        .unwrap_or_default();
    assert!(refusal.contains("403") && refusal.contains(URL), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "the program ran");

    // A second supervisor is refused while the first holds the lease.
    let mut b = supervise(&server, dir.path(), "b", &["--replica-lease=3s"]);
    assert_eq!(b.wait().code(), Some(1), "{}", b.transcript());
    let line = b.seen_or_expect(
        Stream::Err,
        |l| l.contains("the replica is held by"),
        "the refusal",
    );
    assert!(
        line.contains(&format!("pid {}", a.pid())) && line.contains("--take-over"),
        "{line}"
    );
    assert!(!dir.path().join("b").join("status.json").exists());

    // The holder stops (SIGSTOP) past its lease: the second takes over
    // without --take-over, from the replica.
    a.signal(libc::SIGSTOP);
    wait_until("the stopped holder's lease to expire", || {
        replica(&server, dir.path())["lease"]["live"] == false
    });
    let mut b = supervise(&server, dir.path(), "b", &["--replica-lease=3s"]);
    b.expect_out("restored primes=");
    let taken = replica_newest(&server, dir.path());
    wait_until("the new holder's generations", || {
        replica_newest(&server, dir.path()) > taken
    });

    // The old holder wakes: its lease is gone, and it says so and stops
    // uploading; the commit point stays the new holder's.
    a.signal(libc::SIGCONT);
    a.expect_err("took the replica over");
    let r = replica(&server, dir.path());
    assert_written_by(&r, b.pid());
    let a_status = status(&dir.path().join("a"));
    // The new holder goes on moving the commit point; it stays its own.
    let b_newest = replica_newest(&server, dir.path());
    wait_until("the new holder's next commit point", || {
        replica_newest(&server, dir.path()) > b_newest
    });
    assert_written_by(&replica(&server, dir.path()), b.pid());
    // The deposed supervisor's local snapshots go on.
    let g = a_status["generations"].as_u64().unwrap();
    wait_until("the deposed supervisor's local generations", || {
        status(&dir.path().join("a"))["generations"].as_u64().unwrap() > g
    });
    assert_eq!(status(&dir.path().join("a"))["replica"]["lease"], "lost");
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    a.wait();
    b.wait();
}

#[test]
fn the_server_paused_then_killed_mid_run_costs_the_program_nothing_and_the_lag_drains() {
    let (mut server, dir, mut a) = first_machine(&[]);
    let store = dir.path().join("a");
    wait_until("generations in the replica", || {
        replica_newest(&server, dir.path()) >= 5
    });

    for episode in ["paused", "killed"] {
        match episode {
            "paused" => server.pause(),
            _ => server.kill(),
        }
        // Local generations go on while the replica falls behind, until
        // the uploader has seen a request fail (a stopped server answers
        // nothing: that takes a request's timeout).
        let g = status(&store)["generations"].as_u64().unwrap();
        wait_until("local generations while the server is down", || {
            let s = status(&store);
            s["generations"].as_u64().unwrap() > g + 50
                && s["replica"]["behind_generations"].as_u64().unwrap() > 10
                && !s["replica"]["error"].is_null()
        });
        match episode {
            "paused" => server.resume(),
            _ => server.restart(),
        }
        // Back: the lag drains.
        wait_until("the lag to drain", || {
            let s = status(&store);
            s["replica"]["behind_generations"].as_u64().unwrap() < 5 && s["replica"]["error"].is_null()
        });
    }
    a.signal(libc::SIGTERM);
    a.wait();
    let errors: Vec<_> = a
        .lines(Stream::Err)
        .into_iter()
        .filter(|l| l.contains("replica:") && l.contains("retry"))
        .collect();
    assert!(
        !errors.is_empty() && errors.len() <= 2,
        "one line per episode:\n{}",
        errors.join("\n")
    );
    assert!(
        a.lines(Stream::Err)
            .iter()
            .filter(|l| l.contains("uploads resumed"))
            .count()
            >= 2,
        "{}",
        a.transcript()
    );
    // The replica holds the final generation, and it restores.
    let final_generation = local_newest(&server, dir.path(), "a");
    assert_eq!(replica_newest(&server, dir.path()), final_generation);
}

#[test]
fn a_corrupted_piece_is_caught_on_pull_and_an_older_generation_used() {
    let (server, dir, mut a) = first_machine(&[]);
    wait_until("several pieces in the replica", || {
        replica(&server, dir.path())["pieces"].as_array().unwrap().len() >= 3
    });
    a.signal(libc::SIGTERM);
    a.wait();
    let r = replica(&server, dir.path());
    let newest = r["newest_generation"].as_u64().unwrap();
    let piece = r["pieces"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(piece["kind"], "segment", "{r}");
    let key = format!("app/{}", piece["name"].as_str().unwrap());
    let mut bytes = server.get(BUCKET, &key).expect("the piece is in the bucket");
    let at = bytes.len() - 50;
    bytes[at] ^= 0x40;
    server.put(BUCKET, &key, &bytes);
    let out = shm_restore(
        &server,
        dir.path(),
        &["pull", URL, "--snapshot", "pulled", "--json", "--no-fsync"],
    );
    let pulled = json(&out);
    let generation = pulled["generation"].as_u64().unwrap();
    assert!(
        generation < piece["first"].as_u64().unwrap() && generation < newest,
        "pulled {generation}: {pulled}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match its BLAKE3 hash"), "{stderr}");
    // What was pulled restores, and the program's own validation passes.
    let mut b = Proc::spawn({
        let mut c = Command::new(bin("shm-restore"));
        c.current_dir(dir.path())
            .args([
                "--snapshot=pulled",
                "--size=4MiB",
                "--fsync=never",
                "--restart=never",
                "--",
            ])
            .arg(bin("primes-snapshot"))
            .args(["--limit=1"]);
        c
    });
    let restored = primes_of(&b.expect_out("restored primes="));
    assert!(restored > 0);
    assert!(b.wait().success(), "{}", b.transcript());

    // A supervisor on an empty directory does the same, says which piece
    // it left out, and carries on replicating above the replica's newest.
    let mut c = supervise(&server, dir.path(), "c", &[]);
    let from_replica = primes_of(&c.expect_out("restored primes="));
    assert!(
        from_replica > 0 && from_replica < last_primes(&a),
        "{}",
        c.transcript()
    );
    c.seen_or_expect(
        Stream::Err,
        |l| l.contains("does not match its BLAKE3 hash"),
        "the rejected piece",
    );
    wait_until("generations above the replica's newest", || {
        replica_newest(&server, dir.path()) > newest
    });
    let c_pid = c.pid();
    c.signal(libc::SIGTERM);
    c.wait();
    let r = replica(&server, dir.path());
    assert_written_by(&r, c_pid);
    let again = json(&shm_restore(
        &server,
        dir.path(),
        &["pull", URL, "--snapshot", "again", "--json", "--no-fsync"],
    ));
    assert_eq!(again["generation"], r["newest_generation"], "{again}");
    assert_eq!(again["rejected"].as_array().unwrap().len(), 0, "{again}");
}

/// The primes of the last commit a run printed.
fn last_primes(p: &Proc) -> u64 {
    p.lines(Stream::Out)
        .iter()
        .rev()
        .find(|l| l.starts_with("committed primes="))
        .map(|l| primes_of(l))
        .expect("commits")
}

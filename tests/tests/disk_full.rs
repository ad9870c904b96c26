//! A store on a real filesystem that fills up: a size-limited tmpfs
//! mounted in a private mount namespace (`unshare -Urm`), filled from
//! outside through `/proc/<pid>/root`. While it is full the program keeps
//! committing, the generations already there stay intact, the supervisor
//! reports the error once per episode, and snapshots resume when space
//! returns.
//!
//! Errors of other kinds at each I/O step are covered in the library, where
//! the store's I/O layer can inject them (shm-snapshot/tests/store.rs,
//! `FaultyIo`); the release binary has no way to inject them, on purpose.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shm_snapshot_tests::torture::{FileState, every_generation, primes_of};
use shm_snapshot_tests::{PATIENCE, Proc, Stream, bin, generations, store_files, workdir};

/// The tmpfs: room for a few generations of the 4 MiB region, no more.
const TMPFS_SIZE: &str = "size=8m";

/// Fails (never skips) when the machine cannot make a private mount.
fn assert_unshare_works() {
    let probe = Command::new("unshare")
        .args(["-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs `unshare -Urm` and a tmpfs mount inside it (user namespaces enabled); it failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("this test needs the `unshare` program (util-linux): {e}"),
    }
}

/// The supervisor on a store in a fresh tmpfs at `mount`, in its own
/// mount namespace; `unshare` and `sh` exec into it, so its pid is the
/// supervisor's.
fn supervise_on_tmpfs(dir: &Path, mount: &Path) -> Proc {
    let script = r#"mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@""#;
    let mut command = Command::new("unshare");
    command
        .current_dir(dir)
        .args(["-Urm", "sh", "-c", script, "sh", TMPFS_SIZE])
        .arg(mount)
        .arg(bin("shm-restore"))
        .arg(format!("--snapshot={}", mount.join("state").display()))
        .args(["--size=4MiB", "--fsync=always", "--interval=5ms", "--"])
        .arg(bin("primes-snapshot"))
        .args(["--interval=2ms", "--batch=100"]);
    Proc::spawn(command)
}

/// Fills the filesystem holding `path` with a file until it refuses more.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("creating the filler");
    let block = vec![0xa5u8; 64 << 10];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // Whatever a partial block left.
    let _ = file.write_all(&[0xa5]);
}

/// The store's files ([`store_files`]), by name, with their contents; one
/// removed while they are read (retention) is left out.
fn files(store: &Path) -> BTreeMap<String, FileState> {
    let mut files = BTreeMap::new();
    for path in store_files(store) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (Ok(meta), Ok(bytes)) = (path.metadata(), std::fs::read(&path)) else {
            continue;
        };
        let state = FileState {
            len: meta.len(),
            modified: meta.modified().expect("modification time"),
            bytes,
        };
        files.insert(name, state);
    }
    files
}

/// Copies the store's files out of the tmpfs.
fn copy_out(files: &BTreeMap<String, FileState>, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    for (name, state) in files {
        std::fs::write(into.join(name), &state.bytes).unwrap();
    }
    into.to_owned()
}

fn count(proc: &Proc, stream: Stream, text: &str) -> usize {
    proc.lines(stream).iter().filter(|l| l.contains(text)).count()
}

/// Waits until `cond` holds on the process's output, reading as it goes.
fn wait_for(proc: &mut Proc, what: &str, cond: impl Fn(&Proc) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond(proc) {
        assert!(Instant::now() < deadline, "no {what}:\n{}", proc.transcript());
        // Any line will do; it is recorded in `seen`.
        proc.expect(Stream::Out, |_| true, what);
    }
}

#[test]
fn full_disk_is_reported_once_per_episode_and_snapshots_resume_when_space_returns() {
    assert_unshare_works();
    let dir = workdir();
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let mut sup = supervise_on_tmpfs(dir.path(), &mount);
    sup.expect_out("restored primes=0");
    let root = PathBuf::from(format!("/proc/{}/root", sup.pid()));
    let store = root.join(mount.strip_prefix("/").unwrap()).join("state");
    let filler = store.parent().unwrap().join("filler");
    let copies = workdir();
    for episode in 1..=2 {
        // Generations are being written before the disk fills.
        let deadline = Instant::now() + PATIENCE;
        while generations(&store).is_empty() {
            assert!(Instant::now() < deadline, "no generation:\n{}", sup.transcript());
            std::thread::sleep(Duration::from_millis(10));
        }
        fill(&filler);
        wait_for(&mut sup, "error for the full disk", |p| {
            count(p, Stream::Err, "could not persist a generation") == episode
        });
        let error = sup
            .lines(Stream::Err)
            .into_iter()
            .rfind(|l| l.contains("could not persist a generation"))
            .unwrap();
        assert!(error.contains("No space left on device"), "{error}");
        // While full: the program carries on, nothing is written into the
        // store (a failed append is cut back off its segment), the newest
        // generation stays the newest, and nothing more is reported.
        let before = files(&store);
        let newest_listed = generations(&copy_out(
            &before,
            &copies.path().join(format!("{episode}-before")),
        ))
        .last()
        .copied();
        let committed = count(&sup, Stream::Out, "committed primes=");
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            sup.expect(
                Stream::Out,
                |l| l.starts_with("committed primes="),
                "commits while the disk is full",
            );
        }
        assert!(count(&sup, Stream::Out, "committed primes=") >= committed + 50);
        let during = files(&store);
        // A file may go (retention of a base finished before the disk
        // filled); none comes, and none changes.
        for (name, state) in &during {
            let was = before
                .get(name)
                .unwrap_or_else(|| panic!("{name} appeared while the disk was full"));
            assert!(
                (state.len, &state.bytes) == (was.len, &was.bytes),
                "{name} changed while the disk was full"
            );
        }
        assert_eq!(
            count(&sup, Stream::Err, "could not persist a generation"),
            episode,
            "{}",
            sup.transcript()
        );
        // They load, every one of them, the newest still the newest.
        let copy = copy_out(&during, &copies.path().join(episode.to_string()));
        let loaded = every_generation(&copy);
        assert_eq!(loaded.len(), generations(&copy).len());
        assert_eq!(loaded.first().map(|l| l.number), newest_listed);
        let newest_before = loaded.first().map(primes_of).unwrap();
        // Space returns: snapshots resume, newer than what was there.
        std::fs::remove_file(&filler).unwrap();
        wait_for(&mut sup, "resumption", |p| {
            count(p, Stream::Err, "snapshots are persisted again") == episode
        });
        let after = files(&store);
        let newest = every_generation(&copy_out(&after, &copies.path().join(format!("{episode}-after"))));
        assert!(
            newest[0].number > loaded[0].number,
            "no new generation after the episode"
        );
        assert!(primes_of(&newest[0]) >= newest_before);
    }
    sup.signal(libc::SIGTERM);
    let status = sup.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", sup.transcript());
    assert_eq!(
        count(&sup, Stream::Err, "could not persist a generation"),
        2,
        "{}",
        sup.transcript()
    );
    assert!(
        !sup.lines(Stream::Err)
            .iter()
            .any(|l| l.starts_with("shm-restore:"))
    );
}

//! A region the machine cannot hold is refused before anything is made,
//! through the real binary.
//!
//! Every supervisor here runs with a file size limit (RLIMIT_FSIZE) far
//! below the region it asks for. A memfd is a file: one that skipped the
//! check could not size its region either, and would die of SIGXFSZ
//! instead of reserving memory page by page. So a broken check fails these
//! tests without endangering the machine, and a run that ends with the
//! refusal and exit status 1 (not SIGXFSZ) never sized a memfd.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use shm_snapshot_tests::{Proc, Stream, bin, workdir};

/// The file size limit of the supervisors here: far below any region they
/// are asked for, and above anything a refused run would write (nothing).
const FILE_SIZE_LIMIT: u64 = 64 << 20;

/// Starts `shm-restore` with `args` in `dir`, under [`FILE_SIZE_LIMIT`].
fn guarded(dir: &Path, args: &[&str]) -> Proc {
    let mut command = Command::new(bin("shm-restore"));
    command.args(args).current_dir(dir);
    // SAFETY: setrlimit is async-signal-safe, allocates nothing and
    // changes only the child's own limit.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FILE_SIZE_LIMIT,
                rlim_max: FILE_SIZE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Proc::spawn(command)
}

/// `MemAvailable` of this machine, in bytes.
fn mem_available() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("MemAvailable in /proc/meminfo");
    kib * 1024
}

/// The one stderr line of a run that ended with `code`.
fn only_error_line(proc: &mut Proc, code: i32) -> String {
    let status = proc.wait();
    assert_eq!(status.code(), Some(code), "{status}; saw:\n{}", proc.transcript());
    let lines = proc.lines(Stream::Err);
    assert_eq!(lines.len(), 1, "one line; saw:\n{}", proc.transcript());
    lines[0].clone()
}

#[test]
fn a_size_far_beyond_the_memory_available_is_refused_before_anything_is_made() {
    let dir = workdir();
    let mut sup = guarded(dir.path(), &["--snapshot=x", "--size=100TiB", "--", "/bin/true"]);
    let line = only_error_line(&mut sup, 1);
    assert!(
        line.starts_with(
            "shm-restore: a region of 100.0 TiB needs 103.9 TiB of memory (the region and 3.9 TiB for the supervisor), but "
        ) && line.contains(" is available (")
            && line.ends_with("; nothing was reserved: lower --size or free memory"),
        "{line}"
    );
    assert!(!dir.path().join("x").exists(), "the store directory was made");
}

#[test]
fn a_size_that_fits_alone_but_not_with_the_supervisors_memory_is_refused() {
    // The region alone fits in what is available; with the supervisor's
    // own memory (a fixed part of 48 MiB and more), it does not.
    let size = (mem_available() - (8 << 20)) / 4096 * 4096;
    let size_flag = format!("--size={size}");
    let dir = workdir();
    let mut sup = guarded(dir.path(), &["--snapshot=x", &size_flag, "--", "/bin/true"]);
    let line = only_error_line(&mut sup, 1);
    assert!(
        line.contains(" needs ") && line.contains(" is available ("),
        "{line}"
    );
    assert!(!dir.path().join("x").exists(), "the store directory was made");
}

#[test]
fn a_size_below_the_minimum_is_still_a_usage_error() {
    let dir = workdir();
    let mut sup = guarded(dir.path(), &["--snapshot=x", "--size=1KiB", "--", "/bin/true"]);
    let line = only_error_line(&mut sup, 2);
    assert!(
        line.starts_with("shm-restore: invalid value '1KiB' for '--size <SIZE>': 4.0 KiB is too small")
            && line.ends_with("(see --help)"),
        "{line}"
    );
    assert!(!dir.path().join("x").exists());
}

#[test]
fn an_image_too_large_for_the_memory_available_is_not_imported() {
    // A sparse image as large as a store takes, 1 TiB: it costs no disk.
    let image_len = shm_snapshot::store::MAX_REGION_LEN;
    assert!(
        mem_available() < image_len,
        "this test needs a machine with less than {image_len} bytes available"
    );
    let dir = workdir();
    let image = std::fs::File::create(dir.path().join("big.img")).expect("image file");
    image.set_len(image_len).expect("a sparse 1 TiB file");
    let mut import = guarded(dir.path(), &["import", "big.img", "--snapshot=x"]);
    let line = only_error_line(&mut import, 1);
    assert!(
        line.starts_with("shm-restore: a region of 1.0 TiB needs 1.0 TiB of memory")
            && line.ends_with("; nothing was reserved"),
        "{line}"
    );
    assert!(!dir.path().join("x").exists(), "the store directory was made");
}

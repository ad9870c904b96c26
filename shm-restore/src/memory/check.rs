//! The check before a region is created: its [`Cost`] against the least
//! memory this process can still be given. A region is created only from
//! a [`Room`], which only this check makes, so no path reserves a region
//! unchecked.
//!
//! The check exists because reserving cannot fail cleanly: a memfd's pages
//! are reserved one by one, and pages nobody has mapped are charged to no
//! process, so a size the machine cannot hold runs it out of memory and the
//! OOM killer takes other processes before the supervisor.
//!
//! A figure that cannot be read is left out with a warning. With none at
//! all (a kernel before 3.14 has no `MemAvailable`, and no cgroup v2 limit
//! applies) the region is reserved unchecked, as before the check existed:
//! refusing every start there would take supervision away from a machine
//! that may well hold the region.

use std::fmt;
use std::path::Path;

use tracing::{debug, warn};

use super::available::{self, Available, Figure};
use super::cost::Cost;
use crate::region::human;

/// Leave to create a region of some length: the check found room for it.
#[derive(Debug)]
pub struct Room {
    len: u64,
}

impl Room {
    /// The region's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// A region refused because the memory available cannot hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What the region would cost.
    pub cost: Cost,
    /// The least memory available, which is less.
    pub available: Figure,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut need, mut have) = (human(self.cost.total()), human(self.available.bytes));
        // Rounding must not make the two look equal.
        if need == have {
            need = format!("{} bytes", self.cost.total());
            have = format!("{} bytes", self.available.bytes);
        }
        write!(
            f,
            "a region of {} needs {need} of memory (the region and {} for the supervisor), but {have} is available ({}); nothing was reserved",
            human(self.cost.region),
            human(self.cost.supervisor),
            self.available.source,
        )
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// The refusal of the size `--size` asked for, with what to do about it.
    pub fn of_size_flag(self) -> anyhow::Error {
        anyhow::anyhow!("{self}: lower --size or free memory")
    }
}

/// Checks that a region of `len` bytes and the supervisor's memory for it
/// fit in what this process can still be given, reading the figures from
/// /proc and /sys. Warns about figures it cannot read.
pub fn ensure_room(len: u64, store_dir: &Path) -> Result<Room, Refusal> {
    let stored = stored_bytes(store_dir);
    let available = available::probe(&|path| std::fs::read_to_string(path));
    for why in &available.unreadable {
        warn!(
            "a figure of available memory cannot be read, so the region's size is checked without it: {why}"
        );
    }
    if available.figures.is_empty() {
        warn!("no figure of available memory could be read: the region is reserved without a check");
    }
    let figures: Vec<String> = available
        .figures
        .iter()
        .map(|f| format!("{} ({})", human(f.bytes), f.source))
        .collect();
    debug!(
        needs = human(Cost::of(len, stored).total()),
        available = figures.join("; "),
        "memory for a {} region",
        human(len)
    );
    decide(len, stored, &available)
}

/// The bytes of the files in the store directory `dir` (0 when it does not
/// exist or cannot be read): a bound on the pages a restore at start reads
/// into memory. Nothing is created or locked.
pub fn stored_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The decision: room when the region's total cost is at most the least
/// figure, or when there is no figure.
fn decide(len: u64, stored: u64, available: &Available) -> Result<Room, Refusal> {
    let cost = Cost::of(len, stored);
    match available.least() {
        Some(least) if cost.total() > least.bytes => Err(Refusal {
            cost,
            available: least.clone(),
        }),
        _ => Ok(Room { len }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io;
    use std::path::Path;

    use super::available::{MEMINFO, MOUNTINFO, PROC_CGROUP, Source, probe};
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    /// Files by path; any other path is missing.
    struct Files(HashMap<String, String>);

    impl Files {
        /// A machine with `mem_available_kib` in /proc/meminfo, in cgroup
        /// `/app.slice/app.service` of a cgroup v2 mounted at /sys/fs/cgroup.
        fn machine(mem_available_kib: u64) -> Files {
            Files(HashMap::new())
                .with(
                    MEMINFO,
                    &format!("MemTotal: 99999999 kB\nMemAvailable: {mem_available_kib} kB\n"),
                )
                .with(PROC_CGROUP, "0::/app.slice/app.service\n")
                .with(
                    MOUNTINFO,
                    "22 1 0:21 / /proc rw - proc proc rw\n30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n",
                )
        }

        fn with(mut self, path: &str, text: &str) -> Files {
            self.0.insert(path.to_owned(), text.to_owned());
            self
        }

        fn without(mut self, path: &str) -> Files {
            self.0.remove(path);
            self
        }

        /// A cgroup's `memory.max`, `memory.current` and file cache.
        fn cgroup(self, path: &str, max: &str, current: u64, file_cache: u64) -> Files {
            let dir = format!("/sys/fs/cgroup{path}");
            self.with(&format!("{dir}/memory.max"), &format!("{max}\n"))
                .with(&format!("{dir}/memory.current"), &format!("{current}\n"))
                .with(
                    &format!("{dir}/memory.stat"),
                    &format!(
                        "anon 1\nfile {file_cache}\nactive_file {}\ninactive_file {}\nshmem 7\n",
                        file_cache / 4,
                        file_cache - file_cache / 4
                    ),
                )
        }

        fn available(&self) -> Available {
            probe(&|path: &Path| {
                self.0
                    .get(path.to_str().expect("test paths are UTF-8"))
                    .cloned()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
            })
        }

        fn decide(&self, len: u64) -> Result<Room, Refusal> {
            decide(len, 0, &self.available())
        }
    }

    const KIB_22_GIB: u64 = 22 << 20;

    #[test]
    fn a_size_far_above_mem_available_is_refused_naming_both_figures() {
        let refusal = Files::machine(KIB_22_GIB).decide(100 * TIB).unwrap_err();
        assert_eq!(refusal.available.source, Source::MemAvailable);
        assert_eq!(refusal.available.bytes, 22 * GIB);
        assert_eq!(
            refusal.to_string(),
            "a region of 100.0 TiB needs 103.9 TiB of memory (the region and 3.9 TiB for the supervisor), but 22.0 GiB is available (MemAvailable in /proc/meminfo); nothing was reserved"
        );
    }

    #[test]
    fn a_size_that_fits_with_the_supervisors_memory_gets_room_and_one_that_does_not_is_refused() {
        let files = Files::machine(KIB_22_GIB);
        assert_eq!(files.decide(21 * GIB).map(|r| r.len()).ok(), Some(21 * GIB));
        // 21.5 GiB alone fits in 22 GiB; with the supervisor's tables and
        // fixed part it does not.
        let refusal = files.decide(43 * GIB / 2).unwrap_err();
        assert_eq!(refusal.cost, Cost::of(43 * GIB / 2, 0));
        assert!(refusal.cost.total() > 22 * GIB);
    }

    #[test]
    fn a_store_to_restore_at_start_counts_up_to_the_region() {
        let available = Files::machine(KIB_22_GIB).available();
        assert!(decide(12 * GIB, 0, &available).is_ok());
        // Restoring 10 GiB of pages at start does not fit beside them.
        let refusal = decide(12 * GIB, 10 * GIB, &available).unwrap_err();
        assert_eq!(refusal.cost, Cost::of(12 * GIB, 10 * GIB));
    }

    #[test]
    fn the_store_size_is_what_its_files_hold_and_nothing_for_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(stored_bytes(&dir.path().join("missing")), 0);
        std::fs::write(dir.path().join("seg-1.log"), vec![1; 5000]).unwrap();
        std::fs::write(dir.path().join("base-1.snap"), vec![1; 3000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(stored_bytes(dir.path()), 8000);
    }

    #[test]
    fn exactly_the_available_figure_is_enough() {
        let len = 4 * GIB;
        let kib = Cost::of(len, 0).total() / 1024;
        assert!(Files::machine(kib).decide(len).is_ok());
        assert!(Files::machine(kib - 1).decide(len).is_err());
    }

    #[test]
    fn a_cgroup_limit_below_mem_available_decides_and_is_named() {
        let files =
            Files::machine(KIB_22_GIB).cgroup("/app.slice/app.service", &(4 * GIB).to_string(), GIB, 0);
        let refusal = files.decide(3 * GIB).unwrap_err();
        assert_eq!(refusal.available.bytes, 3 * GIB);
        assert_eq!(
            refusal.available.source,
            Source::Cgroup {
                path: "/app.slice/app.service".into(),
                max: 4 * GIB,
                in_use: GIB
            }
        );
        assert!(
            refusal.to_string().ends_with(
                "but 3.0 GiB is available (cgroup /app.slice/app.service: memory.max 4.0 GiB, 1.0 GiB in use); nothing was reserved"
            ),
            "{refusal}"
        );
        assert!(files.decide(GIB).is_ok());
    }

    #[test]
    fn memory_max_of_max_is_no_limit() {
        let files = Files::machine(KIB_22_GIB).cgroup("/app.slice/app.service", "max", 20 * GIB, 0);
        assert_eq!(files.available().figures.len(), 1);
        assert!(files.decide(21 * GIB).is_ok());
        assert_eq!(
            files.decide(43 * GIB / 2).unwrap_err().available.source,
            Source::MemAvailable
        );
    }

    #[test]
    fn missing_cgroup_files_mean_no_limit_and_no_warning() {
        // No memory.max anywhere (the memory controller not enabled, or
        // the root cgroup).
        let files = Files::machine(KIB_22_GIB);
        let available = files.available();
        assert_eq!(available.figures.len(), 1);
        assert!(available.unreadable.is_empty(), "{:?}", available.unreadable);
        // No cgroup v2 at all: no 0:: line, or no cgroup2 mount, or no
        // /proc/self/cgroup.
        for files in [
            Files::machine(KIB_22_GIB).with(PROC_CGROUP, "4:memory:/x\n1:cpu:/\n"),
            Files::machine(KIB_22_GIB).with(MOUNTINFO, "22 1 0:21 / /proc rw - proc proc rw\n"),
            Files::machine(KIB_22_GIB).without(PROC_CGROUP),
        ] {
            let available = files.available();
            assert_eq!(available.figures.len(), 1);
            assert!(available.unreadable.is_empty());
            assert!(files.decide(10 * GIB).is_ok());
        }
    }

    #[test]
    fn a_parents_limit_holds_for_a_cgroup_without_one() {
        let files = Files::machine(KIB_22_GIB)
            .cgroup("/app.slice/app.service", "max", 0, 0)
            .cgroup("/app.slice", &(8 * GIB).to_string(), 6 * GIB, 0);
        let refusal = files.decide(2 * GIB).unwrap_err();
        assert_eq!(refusal.available.bytes, 2 * GIB);
        assert!(matches!(&refusal.available.source, Source::Cgroup { path, .. } if path == "/app.slice"));
    }

    #[test]
    fn the_tightest_of_several_limits_decides() {
        let files = Files::machine(KIB_22_GIB)
            .cgroup("/app.slice/app.service", &(6 * GIB).to_string(), GIB, 0)
            .cgroup("/app.slice", &(16 * GIB).to_string(), 12 * GIB, 0)
            .cgroup("", &(20 * GIB).to_string(), 2 * GIB, 0);
        let available = files.available();
        assert_eq!(available.figures.len(), 4);
        assert_eq!(available.least().map(|f| f.bytes), Some(4 * GIB));
    }

    #[test]
    fn file_cache_in_a_cgroup_counts_as_available() {
        // 3.5 GiB charged, 3 GiB of it the store's files in the page cache.
        let files = Files::machine(KIB_22_GIB).cgroup(
            "/app.slice/app.service",
            &(4 * GIB).to_string(),
            7 * GIB / 2,
            3 * GIB,
        );
        assert_eq!(files.available().least().map(|f| f.bytes), Some(7 * GIB / 2));
        assert!(files.decide(GIB).is_ok());
        // Without memory.stat the cache cannot be told apart: the smaller
        // figure.
        let files = files.without("/sys/fs/cgroup/app.slice/app.service/memory.stat");
        assert_eq!(files.available().least().map(|f| f.bytes), Some(GIB / 2));
        assert!(files.decide(GIB).is_err());
    }

    #[test]
    fn a_cgroup_using_more_than_its_limit_has_nothing_available() {
        let files =
            Files::machine(KIB_22_GIB).cgroup("/app.slice/app.service", &GIB.to_string(), GIB + MIB, 0);
        let refusal = files.decide(2 * MIB).unwrap_err();
        assert_eq!(refusal.available.bytes, 0);
    }

    #[test]
    fn a_malformed_meminfo_is_left_out_with_its_reason_and_never_panics() {
        for meminfo in ["", "MemTotal: 1 kB\n", "MemAvailable: many kB\n", "\0\u{fffd}"] {
            let files = Files::machine(KIB_22_GIB).with(MEMINFO, meminfo);
            let available = files.available();
            assert!(available.figures.is_empty());
            assert_eq!(available.unreadable.len(), 1);
            assert!(
                available.unreadable[0].starts_with("/proc/meminfo: "),
                "{:?}",
                available.unreadable
            );
            // The documented fallback: with no figure, room.
            assert!(files.decide(100 * TIB).is_ok());
        }
        // A cgroup limit still decides without MemAvailable.
        let files = Files::machine(0).with(MEMINFO, "MemAvailable: many kB\n").cgroup(
            "/app.slice/app.service",
            &(3 * GIB).to_string(),
            0,
            0,
        );
        assert!(files.decide(GIB).is_ok());
        assert!(files.decide(100 * TIB).is_err());
    }

    #[test]
    fn an_unreadable_meminfo_is_left_out_with_its_reason() {
        let available = Files::machine(KIB_22_GIB).without(MEMINFO).available();
        assert!(available.figures.is_empty());
        assert_eq!(available.unreadable.len(), 1);
    }

    #[test]
    fn malformed_cgroup_files_are_left_out_with_their_reason() {
        let service = "/sys/fs/cgroup/app.slice/app.service";
        for (file, text) in [
            ("memory.max", "4G\n"),
            ("memory.max", ""),
            ("memory.current", "lots\n"),
        ] {
            let files = Files::machine(KIB_22_GIB)
                .cgroup("/app.slice/app.service", &GIB.to_string(), 0, 0)
                .with(&format!("{service}/{file}"), text);
            let available = files.available();
            assert_eq!(available.figures.len(), 1, "{file} {text:?}");
            assert_eq!(available.unreadable.len(), 1);
            assert!(
                available.unreadable[0].starts_with(&format!("{service}/{file}: ")),
                "{:?}",
                available.unreadable
            );
        }
        // A limit without memory.current cannot be used either.
        let files = Files::machine(KIB_22_GIB)
            .cgroup("/app.slice/app.service", &GIB.to_string(), 0, 0)
            .without(&format!("{service}/memory.current"));
        assert_eq!(files.available().unreadable.len(), 1);
        // A garbled memory.stat only loses the file cache.
        let files = Files::machine(KIB_22_GIB)
            .cgroup("/app.slice/app.service", &(2 * GIB).to_string(), GIB, 0)
            .with(&format!("{service}/memory.stat"), "active_file\n\0garbage");
        assert_eq!(files.available().least().map(|f| f.bytes), Some(GIB));
    }

    #[test]
    fn figures_that_round_alike_are_shown_in_bytes() {
        let len = 4 * GIB;
        let have = Cost::of(len, 0).total() - 1;
        let refusal = decide(
            len,
            0,
            &Available {
                figures: vec![Figure {
                    bytes: have,
                    source: Source::MemAvailable,
                }],
                unreadable: vec![],
            },
        )
        .unwrap_err();
        let line = refusal.to_string();
        assert!(
            line.contains(&format!("needs {} bytes of memory", have + 1))
                && line.contains(&format!("but {have} bytes is available")),
            "{line}"
        );
    }
}

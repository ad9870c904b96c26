//! How much memory this process can still be given: `MemAvailable` from
//! `/proc/meminfo`, and for each cgroup v2 from this process's own up to
//! the root of the hierarchy that has a `memory.max`, that limit less what
//! the cgroup uses. Each figure is parsed from the text of its file, read
//! through a function the caller gives, so tests give the text.
//!
//! A cgroup's limit holds for every cgroup below it, so the walk goes up
//! to the mount's root: a service with no limit of its own inside a slice
//! or a container that has one is bound by that one. What a cgroup uses is
//! `memory.current` less the file cache in it (`active_file` and
//! `inactive_file` of `memory.stat`), which the kernel drops before it
//! refuses the cgroup memory, as `MemAvailable` counts it for the machine:
//! without that, a cgroup whose store files filled its page cache would
//! refuse a region it can hold. cgroup v1 limits are not read.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::region::human;

/// The machine-wide figure's file.
pub const MEMINFO: &str = "/proc/meminfo";
/// This process's cgroups, one line per hierarchy; cgroup v2's is `0::PATH`.
pub const PROC_CGROUP: &str = "/proc/self/cgroup";
/// This process's mounts, which say where cgroup v2 is mounted.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Reads a file's text; the real one is `std::fs::read_to_string`.
pub type Reader<'a> = &'a dyn Fn(&Path) -> io::Result<String>;

/// An amount of memory this process can still be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// Bytes.
    pub bytes: u64,
    /// Where it comes from.
    pub source: Source,
}

/// Where a [`Figure`] comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `MemAvailable` in /proc/meminfo: the kernel's estimate of what can
    /// be had without swapping.
    MemAvailable,
    /// A cgroup v2 limit, less what the cgroup uses besides file cache.
    Cgroup {
        /// The cgroup, as /proc/self/cgroup names it.
        path: String,
        /// Its `memory.max`.
        max: u64,
        /// Its `memory.current` less its file cache.
        in_use: u64,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::MemAvailable => write!(f, "MemAvailable in {MEMINFO}"),
            Source::Cgroup { path, max, in_use } => write!(
                f,
                "cgroup {path}: memory.max {}, {} in use",
                human(*max),
                human(*in_use)
            ),
        }
    }
}

/// Every figure found.
#[derive(Debug, Default)]
pub struct Available {
    /// The figures read.
    pub figures: Vec<Figure>,
    /// Figures that should have been there but could not be read or
    /// parsed, each with its file and why. A missing cgroup file is not
    /// one: it means no limit at that level.
    pub unreadable: Vec<String>,
}

impl Available {
    /// The smallest figure: what decides. `None` when none could be read.
    pub fn least(&self) -> Option<&Figure> {
        self.figures.iter().min_by_key(|f| f.bytes)
    }
}

/// Reads every figure through `read`.
pub fn probe(read: Reader<'_>) -> Available {
    let mut found = Available::default();
    let meminfo = read(Path::new(MEMINFO))
        .map_err(|e| e.to_string())
        .and_then(|text| mem_available(&text));
    match meminfo {
        Ok(bytes) => found.figures.push(Figure {
            bytes,
            source: Source::MemAvailable,
        }),
        Err(why) => found.unreadable.push(format!("{MEMINFO}: {why}")),
    }
    cgroup_limits(read, &mut found);
    found
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
pub fn mem_available(meminfo: &str) -> Result<u64, String> {
    let value = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .ok_or("it has no MemAvailable line")?;
    let malformed = || format!("MemAvailable is {:?}, not a number of kB", value.trim());
    let mut words = value.split_whitespace();
    let (Some(kib), Some("kB"), None) = (words.next(), words.next(), words.next()) else {
        return Err(malformed());
    };
    kib.parse::<u64>()
        .ok()
        .and_then(|kib| kib.checked_mul(1024))
        .ok_or_else(malformed)
}

/// Adds a figure for every cgroup v2 level with a limit, from this
/// process's cgroup up to the root of the mounted hierarchy. Without
/// cgroup v2 (no `0::` line, no cgroup2 mount, files not there) there is
/// nothing to add.
fn cgroup_limits(read: Reader<'_>, found: &mut Available) {
    let Ok(cgroups) = read(Path::new(PROC_CGROUP)) else {
        return;
    };
    let Some(path) = cgroups.lines().find_map(|line| line.strip_prefix("0::")) else {
        return;
    };
    let Ok(mounts) = read(Path::new(MOUNTINFO)) else {
        return;
    };
    let Some((root, mount_point)) = cgroup2_mount(&mounts) else {
        return;
    };
    // A cgroup outside what is mounted here: its files cannot be read.
    let Some(below) = below_root(path, root) else {
        return;
    };
    let mut levels: Vec<&str> = below.split('/').filter(|s| !s.is_empty()).collect();
    loop {
        let dir = levels
            .iter()
            .fold(PathBuf::from(mount_point), |dir, level| dir.join(level));
        match limit_of(read, &dir) {
            Ok(Some((max, in_use))) => found.figures.push(Figure {
                bytes: max.saturating_sub(in_use),
                source: Source::Cgroup {
                    path: cgroup_name(root, &levels),
                    max,
                    in_use,
                },
            }),
            Ok(None) => {}
            Err(why) => found.unreadable.push(why),
        }
        if levels.pop().is_none() {
            break;
        }
    }
}

/// The root and the mount point of the first cgroup2 mount in a
/// /proc/self/mountinfo text (`ID PARENT MAJ:MIN ROOT POINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPER`).
fn cgroup2_mount(mountinfo: &str) -> Option<(&str, &str)> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        let mut fields = mount.split_whitespace().skip(3);
        Some((fields.next()?, fields.next()?))
    })
}

/// `path` relative to the mount's `root`, when it lies under it.
fn below_root<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// A cgroup's name as /proc/self/cgroup writes it.
fn cgroup_name(root: &str, levels: &[&str]) -> String {
    let root = root.trim_end_matches('/');
    if levels.is_empty() && root.is_empty() {
        "/".to_owned()
    } else if levels.is_empty() {
        root.to_owned()
    } else {
        format!("{root}/{}", levels.join("/"))
    }
}

/// The `memory.max` of the cgroup in `dir` and what it uses besides file
/// cache; `None` when it has no limit (no `memory.max`, which the root
/// and a cgroup without the memory controller lack, or `max`).
fn limit_of(read: Reader<'_>, dir: &Path) -> Result<Option<(u64, u64)>, String> {
    let file = |name: &str| dir.join(name);
    let max = match read(&file("memory.max")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", file("memory.max").display())),
    };
    if max.trim() == "max" {
        return Ok(None);
    }
    let max = bytes(&max).map_err(|why| format!("{}: {why}", file("memory.max").display()))?;
    let current = read(&file("memory.current"))
        .map_err(|e| e.to_string())
        .and_then(|text| bytes(&text))
        .map_err(|why| format!("{}: {why}", file("memory.current").display()))?;
    // Without memory.stat no file cache is counted as free: the figure is
    // then smaller than the truth, never larger.
    let cache = read(&file("memory.stat")).map_or(0, |text| file_cache(&text));
    Ok(Some((max, current.saturating_sub(cache))))
}

/// A file holding one number of bytes.
fn bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    text.parse().map_err(|_| {
        format!(
            "{:?} is not a number of bytes",
            text.chars().take(40).collect::<String>()
        )
    })
}

/// The file cache of a `memory.stat` text: `active_file` plus
/// `inactive_file`, lines that cannot be parsed counting 0.
fn file_cache(stat: &str) -> u64 {
    stat.lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(key, _)| matches!(*key, "active_file" | "inactive_file"))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_kib_and_given_in_bytes() {
        let meminfo = "MemTotal:       24684092 kB\nMemFree:         1157212 kB\nMemAvailable:   24015332 kB\nBuffers:          123 kB\n";
        assert_eq!(mem_available(meminfo), Ok(24015332 * 1024));
    }

    #[test]
    fn a_meminfo_without_mem_available_or_with_a_bad_value_is_an_error_naming_it() {
        assert_eq!(
            mem_available("MemTotal: 1 kB\n"),
            Err("it has no MemAvailable line".to_owned())
        );
        for bad in [
            "MemAvailable: lots kB",
            "MemAvailable: 12 MB",
            "MemAvailable: 12",
            "MemAvailable: 12 kB extra",
            "MemAvailable: 99999999999999999999 kB",
            "MemAvailable: 18014398509481984 kB",
            "MemAvailable:",
        ] {
            let why = mem_available(bad).unwrap_err();
            assert!(why.contains("not a number of kB"), "{bad}: {why}");
        }
    }

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_mounts() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(cgroup2_mount(mountinfo), Some(("/", "/sys/fs/cgroup/unified")));
        assert_eq!(
            cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
        assert_eq!(cgroup2_mount("garbage\n - cgroup2\n"), None);
    }

    #[test]
    fn a_cgroup_path_is_taken_relative_to_the_mounts_root() {
        assert_eq!(below_root("/a/b", "/"), Some("/a/b"));
        assert_eq!(below_root("/a/b", "/a"), Some("/b"));
        assert_eq!(below_root("/a", "/a"), Some(""));
        assert_eq!(below_root("/ab", "/a"), None);
        assert_eq!(below_root("/c", "/a"), None);
        assert_eq!(cgroup_name("/", &[]), "/");
        assert_eq!(cgroup_name("/", &["a", "b"]), "/a/b");
        assert_eq!(cgroup_name("/a", &[]), "/a");
        assert_eq!(cgroup_name("/a", &["b"]), "/a/b");
    }

    #[test]
    fn file_cache_adds_active_and_inactive_file_only() {
        let stat = "anon 100\nfile 900\nactive_file 300\ninactive_file 500\nshmem 100\n";
        assert_eq!(file_cache(stat), 800);
        assert_eq!(file_cache("active_file x\ninactive_file 5\n"), 5);
        assert_eq!(file_cache(""), 0);
    }
}

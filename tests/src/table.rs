//! The table examples (C in shm-snapshot-c/examples/table.c, Python in
//! python/examples/table.py): their progress lines, the check that no
//! start restored less than was committed, and their table's functions, to
//! forge regions they must refuse.

use shm_snapshot::{Client, Config, Region};

/// One line of a table example's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `restored entries=N`.
    Restored(u64),
    /// `committed entries=N seq=S`.
    Committed(u64),
}

/// A table example's progress lines in `out`; panics on any other line.
pub fn progress(out: &str) -> Vec<Progress> {
    out.lines()
        .map(|line| {
            let entries = line
                .split(' ')
                .find_map(|kv| kv.strip_prefix("entries="))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no entries= in stdout line {line:?}"));
            match line.split(' ').next() {
                Some("restored") => Progress::Restored(entries),
                Some("committed") => Progress::Committed(entries),
                _ => panic!("unexpected stdout line {line:?}"),
            }
        })
        .collect()
}

/// Checks that no start restored less than was committed before it.
/// Returns the number of starts.
pub fn check_nothing_lost(lines: &[Progress]) -> Result<usize, String> {
    let (mut committed, mut starts) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        match *line {
            Progress::Committed(n) => committed = n,
            Progress::Restored(n) => {
                starts += 1;
                if n < committed {
                    return Err(format!(
                        "start {starts} (stdout line {}) restored entries={n}, but entries={committed} had been committed",
                        i + 1
                    ));
                }
                committed = n;
            }
        }
    }
    Ok(starts)
}

/// Entry `i` of the table: splitmix64 of `i`.
pub fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The checksum a unit carries over `entries`.
pub fn fold(entries: &[u64]) -> u64 {
    entries.iter().fold(0xcbf2_9ce4_8422_2325, |h, e| {
        (h ^ e).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The unit a table example commits for its first `entries` entries.
pub fn unit_for(entries: u64) -> Vec<u8> {
    let table: Vec<u64> = (0..entries).map(mix).collect();
    let mut unit = entries.to_le_bytes().to_vec();
    unit.extend(fold(&table).to_le_bytes());
    unit
}

/// An 8 MiB region whose newest unit says `entries` entries fold to
/// `checksum`, over an arena holding `table`: what a table example must
/// take as it is, or refuse with status 3.
pub fn region_claiming(entries: u64, checksum: u64, table: &[u64]) -> std::fs::File {
    let region = Region::anonymous(8 << 20).expect("region");
    let file = region.file().try_clone().expect("fd");
    let mut client = Client::open(region, &Config::default()).expect("laid out");
    let mut unit = entries.to_le_bytes().to_vec();
    unit.extend(checksum.to_le_bytes());
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
    client
        .commit_with(&unit, |tx| tx.arena().write(0, &bytes))
        .expect("committing");
    file
}

/// The units of the region image at `path`, read by the Rust client, as
/// `unit <seq> <hex>` lines: what the examples' `--dump` prints.
pub fn dump(path: &std::path::Path) -> String {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("opening the image");
    // SAFETY: the test's own file, which nothing shrinks while it is open.
    let region = unsafe { Region::from_file(file) }.expect("mapping the image");
    let client = Client::open(region, &Config::default()).expect("the image opens");
    client
        .recover()
        .expect("recovering")
        .iter()
        .map(|u| {
            let hex: String = u.bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("unit {} {hex}\n", u.id.0)
        })
        .collect()
}

//! Helpers for the adversarial tests: opening a store a dead supervisor
//! left, decoding what its generations hold, damaging files, and taking a
//! fingerprint of a directory to prove nothing in it changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use shm_snapshot::store::{GenerationInfo, Loaded, Store, StoreError, StoreOptions};
use shm_snapshot::{Client, Config, Region, snapshot};

/// Opens the store at `dir` with the library, read-mostly (no fsync; the
/// tests only load). A process forked by a test running beside this one
/// may briefly hold a duplicate of a previous lock descriptor until its
/// exec closes it, so a locked store is retried for a few seconds.
pub fn open_store(dir: &Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open(
            dir,
            StoreOptions {
                fsync: false,
                ..StoreOptions::default()
            },
        ) {
            Ok(store) => return store,
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("opening the store {}: {e}", dir.display()),
        }
    }
}

/// The units a loaded generation holds, oldest first: its image restored
/// into a private region, then recovered by a client as a program would.
pub fn units_of(loaded: &Loaded) -> Vec<Vec<u8>> {
    let region = Region::anonymous(loaded.image.len() as u64).expect("anonymous region");
    snapshot::restore(region.file(), loaded)
        .unwrap_or_else(|e| panic!("generation {} does not restore: {e}", loaded.number));
    let client = Client::open(region, &Config::default())
        .unwrap_or_else(|e| panic!("generation {} does not open: {e}", loaded.number));
    client
        .recover()
        .unwrap_or_else(|e| panic!("generation {} does not recover: {e}", loaded.number))
        .into_iter()
        .map(|u| u.bytes)
        .collect()
}

/// The progress primes-snapshot records in a generation: the `primes` of
/// its newest unit (16 bytes: primes, last; both u64 little-endian), 0 for
/// a generation without units.
pub fn primes_of(loaded: &Loaded) -> u64 {
    match units_of(loaded).last() {
        None => 0,
        Some(unit) => {
            assert_eq!(
                unit.len(),
                16,
                "generation {}: not a primes-snapshot unit",
                loaded.number
            );
            u64::from_le_bytes(unit[..8].try_into().expect("8 bytes"))
        }
    }
}

/// Every generation the store at `dir` lists, newest first, each loaded on
/// its own (its chain reassembled and verified) through a reader without
/// the lock, so the store is left alone. Panics naming the first that does
/// not load: a listed generation must.
pub fn every_generation(dir: &Path) -> Vec<Loaded> {
    newest_generations(dir, usize::MAX)
}

/// [`every_generation`], for the newest `n` generations only: those a
/// store with `--keep n` keeps restorable. (It may list older ones, until
/// their files go; loading each on its own reads its whole chain.)
pub fn newest_generations(dir: &Path, n: usize) -> Vec<Loaded> {
    let mut store =
        Store::open_read_only(dir).unwrap_or_else(|e| panic!("reading the store {}: {e}", dir.display()));
    let numbers: Vec<u64> = store
        .generations()
        .iter()
        .rev()
        .take(n)
        .map(|g| g.number)
        .collect();
    numbers
        .into_iter()
        .map(|n| {
            store
                .load_generation(n)
                .unwrap_or_else(|e| panic!("generation {n} of {} does not load: {e}", dir.display()))
        })
        .collect()
}

/// Where generation `number` of the store at `dir` is: the file holding it
/// (its segment, or its base file) and its record's offset and size there.
pub fn record(dir: &Path, number: u64) -> GenerationInfo {
    let store =
        Store::open_read_only(dir).unwrap_or_else(|e| panic!("reading the store {}: {e}", dir.display()));
    store
        .generations()
        .into_iter()
        .find(|g| g.number == number)
        .unwrap_or_else(|| panic!("generation {number} is not in {}", dir.display()))
}

/// Copies the store files of `from` ([`crate::store_files`]) into `into`,
/// which is created, as they are at one moment: when a file listed is
/// removed before it is copied (a running supervisor's retention, which
/// may also have left the files copied so far without the base that
/// replaced them), the copy starts over. Retention removes only files no
/// kept chain needs once their replacement is durable, so a copy of every
/// file listed at one moment holds whole chains. Returns `into`.
pub fn copy_store(from: &Path, into: &Path) -> PathBuf {
    /// Copies begun before giving up: each needs a removal to land
    /// within the few milliseconds a copy takes.
    const TRIES: usize = 10;
    for _ in 0..TRIES {
        if into.exists() {
            std::fs::remove_dir_all(into).expect("removing an incomplete copy");
        }
        std::fs::create_dir_all(into).expect("creating the copy's directory");
        let mut whole = true;
        for file in crate::store_files(from) {
            match std::fs::copy(&file, into.join(file.file_name().expect("file name"))) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => whole = false,
                Err(e) => panic!("copying {}: {e}", file.display()),
            }
        }
        if whole {
            return into.to_owned();
        }
    }
    panic!(
        "files of {} kept vanishing while it was copied, {TRIES} times",
        from.display()
    );
}

/// Flips bit 6 of the byte at `offset` of `path` (from the end when
/// `offset` is negative).
pub fn flip_byte(path: &Path, offset: i64) {
    let mut bytes = std::fs::read(path).expect("reading the file to damage");
    let at = if offset < 0 {
        bytes.len() - offset.unsigned_abs() as usize
    } else {
        offset as usize
    };
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).expect("writing the damaged file");
}

/// Cuts `path` to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("truncating");
}

/// What a file is: its bytes, its length as the file system reports it, and
/// its modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// Its length.
    pub len: u64,
    /// Its modification time.
    pub modified: SystemTime,
    /// Its bytes (compared whole: stronger than a hash of them).
    pub bytes: Vec<u8>,
}

/// Every file of `dir` but `except`, by name.
pub fn fingerprint(dir: &Path, except: &[&str]) -> BTreeMap<String, FileState> {
    std::fs::read_dir(dir)
        .expect("listing the directory")
        .map(|e| e.expect("directory entry"))
        .filter(|e| !except.iter().any(|x| e.file_name() == *x))
        .map(|e| {
            let meta = e.metadata().expect("metadata");
            let state = FileState {
                len: meta.len(),
                modified: meta.modified().expect("modification time"),
                bytes: std::fs::read(e.path()).expect("reading"),
            };
            (e.file_name().to_string_lossy().into_owned(), state)
        })
        .collect()
}

/// The number in a log line's `generation=N` field.
pub fn generation_field(line: &str) -> Option<u64> {
    line.split("generation=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The length of every payload the hostile child commits: a multiple of 8,
/// so each unit advances the ring's stream by exactly this much.
pub const GENUINE_BYTES: usize = 32;

/// The checksum of genuine payload `k`: FNV-1a 64 of `g<k>`, keyed.
fn genuine_checksum(k: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ 0x5eed_0f40_5711_e5e5;
    for byte in format!("g{k}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The hostile child's payload number `k`: `g<k, 13 digits>-<checksum, 16
/// hex digits>-`, [`GENUINE_BYTES`] long.
pub fn genuine_payload(k: u64) -> String {
    let payload = format!("g{k:013}-{:016x}-", genuine_checksum(k));
    assert_eq!(payload.len(), GENUINE_BYTES);
    payload
}

/// Whether `bytes` is a genuine payload (its checksum matches its number).
pub fn is_genuine(bytes: &[u8]) -> bool {
    let number = bytes
        .get(1..14)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok());
    number.is_some_and(|k| genuine_payload(k).as_bytes() == bytes)
}

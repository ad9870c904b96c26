//! A hostile program for the supervisor: it commits genuine units, and at
//! random moments writes random bytes into its region's header, unit table
//! and ring, as a buggy or malicious program could.
//!
//! `hostile-child --seconds S [--seed N]`
//!
//! Output, one line each, flushed: `committed <payload>` per genuine unit,
//! `attack <what>` per scribble, `done` at the end (exit status 0). It must
//! start on a blank region.
//!
//! Every genuine payload is [`genuine_payload`]: it carries its own
//! checksum, so a unit assembled from anything else is recognisable.
//!
//! The attacks:
//! - header: 1 to 16 random bytes anywhere in the first 256 bytes (fixed
//!   fields, counters, the host's flag word), put back after 1 to 40 ms so
//!   the supervisor has something to resume on;
//! - unit table: 1 to 4 whole slots overwritten with random bytes; half the
//!   time the first is the unit the newest forgery (below) lies in, so that
//!   forgery overlaps nothing and only the unit before it shows it is false;
//! - ring: up to 256 random bytes anywhere in the ring except where the
//!   units still valid lie;
//! - chain: the slot of the second newest unit rewritten with its own valid
//!   tag and a range 8 bytes into the newest unit (every field in bounds
//!   and the sequence number in the right slot: only the ring's chain
//!   shows it is false). Its bytes are a genuine payload's last 24: never
//!   a genuine payload, so a test sees it if it is ever persisted.
//!
//! Not attempted, because no host can tell them from commits (FORMAT.md,
//! "What no host can tell"): rewriting the bytes of a unit while it is
//! valid; changing a valid slot's fields so that its range still meets its
//! neighbours'; a valid tag with the sequence number `next_seq` in the slot
//! the next commit uses (exactly a commit cut between its tag store and its
//! `next_seq` store, which the format counts as committed); and a forged
//! unit with neither neighbour in number left. A host catches a forgery
//! only through a neighbour it contradicts (the unit it lies in, or the
//! unit before it), and the client reuses the older neighbour's slot one
//! commit before the forgery's. So before the last neighbour of a forgery
//! goes, by a table attack or by that reuse, the child withdraws the
//! forgery: it stores its tag invalid and prints `withdraw <seq>`.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use shm_snapshot::layout::{self, Geometry, slot};
use shm_snapshot::{Client, Config, Region};

use shm_snapshot_tests::torture::{GENUINE_BYTES, genuine_payload};

fn main() {
    let mut seconds = 10u64;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).expect("--seconds S"),
            "--seed" => seed = Some(args.next().and_then(|v| v.parse().ok()).expect("--seed N")),
            other => panic!("unknown argument {other}"),
        }
    }
    let mut rng = match seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };
    // SAFETY: the only place this process takes the handed-over region;
    // the supervisor seals it against shrinking.
    let region = unsafe { Region::from_env() }.unwrap_or_else(|e| {
        eprintln!("hostile-child: {e}");
        std::process::exit(4)
    });
    let mut client = Client::open(region, &Config::default()).unwrap_or_else(|e| {
        eprintln!("hostile-child: {e}");
        std::process::exit(5)
    });
    if !client.recover().expect("recover").is_empty() {
        eprintln!("hostile-child: must start on a blank region");
        std::process::exit(6);
    }
    let g = *client.geometry();
    // The region through its descriptor: writes land in the same pages the
    // client and the supervisor map.
    let file = client.region().file().try_clone().expect("dup the region");
    let mut out = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // Header bytes to put back, and when.
    let mut restore: Option<(Instant, u64, Vec<u8>)> = None;
    let mut forgeries = Forgeries::new(g.slots);
    let withdraw = |seq: u64, out: &mut std::io::StdoutLock<'_>| {
        let tag = g.slot_field(g.slot_of(seq), slot::TAG);
        file.write_all_at(&layout::Tag::invalid(seq).0.to_le_bytes(), tag)
            .expect("withdrawing a forgery");
        writeln!(out, "withdraw {seq}").unwrap();
    };
    let mut k = 0u64;
    while Instant::now() < deadline {
        // This commit reuses the slot of unit `k + 1 - slots`.
        for seq in forgeries.orphaned(None, k + 1) {
            withdraw(seq, &mut out);
        }
        let p = genuine_payload(k);
        client.commit(p.as_bytes()).expect("commit");
        writeln!(out, "committed {p}").unwrap();
        out.flush().unwrap();
        k += 1;
        forgeries.committed(k);
        // The stream offset where the next unit goes: every unit is PAYLOAD
        // bytes, from a blank region.
        let cursor = k * GENUINE_BYTES as u64;
        if let Some((at, offset, bytes)) = restore.take_if(|(at, _, _)| Instant::now() >= *at) {
            let _ = at;
            file.write_all_at(&bytes, offset).expect("restoring the header");
            writeln!(out, "attack header restored").unwrap();
        }
        if rng.random_bool(0.02) {
            match rng.random_range(0..5) {
                0 if restore.is_none() => {
                    let len = rng.random_range(1..=16u64);
                    let offset = rng.random_range(0..layout::header::END + 56 - len);
                    let mut saved = vec![0u8; len as usize];
                    file.read_exact_at(&mut saved, offset)
                        .expect("reading the header");
                    file.write_all_at(&random_bytes(&mut rng, len), offset)
                        .expect("scribbling");
                    let later = Duration::from_millis(rng.random_range(1..40));
                    restore = Some((Instant::now() + later, offset, saved));
                    writeln!(out, "attack header {offset}+{len}").unwrap();
                }
                1 => {
                    let slots = rng.random_range(1..=4u64);
                    let lies_in = forgeries.newest().map(|seq| seq + 1);
                    let mut first = lies_in.filter(|_| rng.random_bool(0.5));
                    let unmasked = first.is_some();
                    for _ in 0..slots {
                        let index = match first.take() {
                            Some(seq) => g.slot_of(seq),
                            None => rng.random_range(0..g.slots),
                        };
                        if let Some(seq) = held(&g, k, index) {
                            for forged in forgeries.orphaned(Some(seq), k) {
                                withdraw(forged, &mut out);
                            }
                            forgeries.lost(seq);
                        }
                        let at = g.table_offset + index * slot::SIZE;
                        file.write_all_at(&random_bytes(&mut rng, slot::SIZE), at)
                            .expect("scribbling");
                    }
                    match lies_in.filter(|_| unmasked) {
                        Some(seq) => writeln!(out, "attack table {slots} slots, unit {seq} first"),
                        None => writeln!(out, "attack table {slots} slots"),
                    }
                    .unwrap();
                }
                3 | 4 if k >= 2 => {
                    // Unit j (from 1) has sequence number j and stream
                    // offset (j - 1) * GENUINE_BYTES, from a blank region.
                    let seq = k - 1;
                    let index = g.slot_of(seq);
                    let field = |f| g.slot_field(index, f);
                    let offset = (k - 1) * GENUINE_BYTES as u64 + 8;
                    let len = GENUINE_BYTES as u64 - 8;
                    file.write_all_at(&offset.to_le_bytes(), field(slot::OFFSET))
                        .expect("forging");
                    file.write_all_at(&len.to_le_bytes(), field(slot::LEN))
                        .expect("forging");
                    file.write_all_at(&layout::Tag::valid(seq).0.to_le_bytes(), field(slot::TAG))
                        .expect("forging");
                    forgeries.forged(seq);
                    writeln!(out, "attack chain {seq}").unwrap();
                }
                _ => {
                    // The valid units lie in the last `slots` units' bytes
                    // before the cursor; anything else in the ring is stale
                    // or not yet written.
                    let live = g.slots * GENUINE_BYTES as u64;
                    let len = rng.random_range(1..=256u64);
                    let free = g.ring_bytes - live - len;
                    let stream = cursor + rng.random_range(0..free);
                    let at = g.ring_at(stream);
                    let room = g.ring_offset + g.ring_bytes - at;
                    let len = len.min(room);
                    file.write_all_at(&random_bytes(&mut rng, len), at)
                        .expect("scribbling");
                    writeln!(out, "attack ring {len}").unwrap();
                }
            }
            out.flush().unwrap();
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..2000)));
    }
    if let Some((_, offset, bytes)) = restore {
        file.write_all_at(&bytes, offset).expect("restoring the header");
    }
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
}

/// The sequence number slot `index` holds once units `1..=units` were
/// committed from a blank region, if any.
fn held(g: &Geometry, units: u64, index: u64) -> Option<u64> {
    let back = (units + g.slots - index) % g.slots;
    units.checked_sub(back).filter(|&seq| seq >= 1)
}

/// The chain attack's forgeries still valid in the region, and the units a
/// table attack or a withdrawal took out of it, to tell when a forgery is
/// about to lose its last neighbour in number.
struct Forgeries {
    slots: u64,
    /// Forged sequence numbers still valid, oldest first.
    live: Vec<u64>,
    /// Sequence numbers whose slots were overwritten or withdrawn before
    /// the client reused them.
    lost: BTreeSet<u64>,
}

impl Forgeries {
    fn new(slots: u64) -> Forgeries {
        Forgeries {
            slots,
            live: Vec::new(),
            lost: BTreeSet::new(),
        }
    }

    /// The newest forgery still valid.
    fn newest(&self) -> Option<u64> {
        self.live.last().copied()
    }

    /// Unit `seq`'s slot now holds a forgery of it.
    fn forged(&mut self, seq: u64) {
        self.lost.remove(&seq);
        self.live.retain(|&s| s != seq);
        self.live.push(seq);
    }

    /// Unit `seq`'s slot was overwritten.
    fn lost(&mut self, seq: u64) {
        self.live.retain(|&s| s != seq);
        self.lost.insert(seq);
    }

    /// Units `1..=units` are committed: forgeries and losses in reused slots
    /// are over.
    fn committed(&mut self, units: u64) {
        let reused = |seq: &u64| seq + self.slots <= units;
        self.live.retain(|s| !reused(s));
        self.lost.retain(|s| !reused(s));
    }

    /// The forgeries left with neither neighbour in number once unit `losing`
    /// (if any) is lost and units `1..=units` are committed, oldest first;
    /// each is counted as withdrawn, and the caller withdraws it before the
    /// neighbour goes. A forgery that is itself `losing` goes with its slot.
    fn orphaned(&mut self, losing: Option<u64>, units: u64) -> Vec<u64> {
        let mut orphans = Vec::new();
        for seq in self.live.clone() {
            if Some(seq) == losing {
                continue;
            }
            let gone =
                |s: u64| s == 0 || Some(s) == losing || s + self.slots <= units || self.lost.contains(&s);
            if gone(seq - 1) && gone(seq + 1) {
                self.lost(seq);
                orphans.push(seq);
            }
        }
        orphans
    }
}

fn random_bytes(rng: &mut StdRng, len: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len as usize];
    rng.fill(&mut bytes[..]);
    bytes
}

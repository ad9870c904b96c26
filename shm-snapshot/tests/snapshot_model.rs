//! The snapshotter against a model: whatever a quiet region held when a
//! generation was taken is what the store's newest generation holds, page
//! for page, through marked and unmarked writes, forgotten references,
//! restarts on a restored region, and a staging area so small that most
//! pages go through its spill file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use proptest::prelude::*;
use shm_snapshot::restore::{self, Restorable};
use shm_snapshot::snapshot::{self, ArenaScan, Outcome, Snapshotter};
use shm_snapshot::store::{FaultPlan, FaultyIo, IoOp, PAGE_BYTES, RealIo, Store, StoreOptions};
use shm_snapshot::{Client, Config, Region};

const REGION: u64 = 4 << 20;

#[derive(Debug, Clone)]
enum Op {
    /// `pages` pages from arena page `page` filled with `byte`, through
    /// the client (which marks the chunks it writes).
    Marked { page: u64, pages: u64, byte: u8 },
    /// As `Marked`, through the region's file: a program that does not
    /// mark its writes (only an arena scan that compares pages sees it).
    Unmarked { page: u64, pages: u64, byte: u8 },
    /// A unit committed, then a generation taken.
    Take,
    /// Pages rewritten behind the snapshotter's back (unmarked, as a
    /// restore or a hand-back rewrites a region), the snapshotter told to
    /// forget what it knows, then a generation taken: every page is read
    /// again.
    ForgetAndTake { page: u64, pages: u64, byte: u8 },
    /// A unit committed and a generation taken while the store's next
    /// write fails (as on a full disk): the generation is not persisted,
    /// what it staged goes with the next one.
    FailingTake,
    /// As a supervisor restarting on the store: the newest generation
    /// written into a new blank region, the snapshotter told of it, the
    /// program reopening it.
    Restart,
}

fn op(unmarked: bool) -> impl Strategy<Value = Op> {
    // Zero half the time: a page written back to zero is what a wrong
    // page hash of the zero page would miss.
    let write = (0u64..700, 1u64..40, prop_oneof![Just(0u8), any::<u8>()]);
    prop_oneof![
        4 => write.clone().prop_map(|(page, pages, byte)| Op::Marked { page, pages, byte }),
        (if unmarked { 3 } else { 0 }) => write.clone().prop_map(|(page, pages, byte)| Op::Unmarked { page, pages, byte }),
        3 => Just(Op::Take),
        1 => write.clone().prop_map(|(page, pages, byte)| Op::ForgetAndTake { page, pages, byte }),
        1 => Just(Op::Restart),
        1 => Just(Op::FailingTake),
    ]
}

fn scenario() -> impl Strategy<Value = (ArenaScan, usize, Vec<Op>)> {
    prop_oneof![
        Just(ArenaScan::Auto),
        Just(ArenaScan::Hash),
        Just(ArenaScan::Check),
        Just(ArenaScan::Hints)
    ]
    .prop_flat_map(|scan| {
        let unmarked = scan == ArenaScan::Hash;
        (Just(scan), 1usize..8, prop::collection::vec(op(unmarked), 1..30))
    })
}

/// The region's bytes from `from` on, as its file reads.
fn region_bytes(file: &File, from: u64) -> Vec<u8> {
    let mut bytes = vec![0; (REGION - from) as usize];
    file.read_exact_at(&mut bytes, from).unwrap();
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_newest_generation_holds_the_quiet_region_as_it_was((scan, staging_pages, ops) in scenario()) {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { fsync: false, ..StoreOptions::default() };
        let (io, faults) = FaultyIo::new(Box::new(RealIo));
        let mut store = Store::open_with_io(dir.path(), options, Box::new(io)).unwrap();
        let region = Region::anonymous(REGION).unwrap();
        let mut file = region.file().try_clone().unwrap();
        let mut client = Client::open(region, &Config::default()).unwrap();
        let mut observer = snapshot::observe_file(&file).unwrap().expect("laid out");
        let g = *observer.geometry();
        let arena_pages = g.arena_len / PAGE_BYTES;
        // Where a write of `pages` pages from arena page `page` goes (kept
        // inside the arena), and its bytes.
        let write = |page: u64, pages: u64, byte: u8| {
            let page = page % arena_pages;
            let pages = pages.min(arena_pages - page);
            (page * PAGE_BYTES, vec![byte; (pages * PAGE_BYTES) as usize])
        };
        let mut snapshotter = Snapshotter::new(scan).with_staging_bytes(staging_pages * PAGE_BYTES as usize);
        snapshotter.blank(REGION);
        let mut taken = 0;
        for op in ops {
            match op {
                Op::Marked { page, pages, byte } => {
                    let (at, bytes) = write(page, pages, byte);
                    client.commit_with(b"marked", |tx| tx.arena().write(at as usize, &bytes)).unwrap();
                }
                Op::Unmarked { page, pages, byte } => {
                    let (at, bytes) = write(page, pages, byte);
                    file.write_all_at(&bytes, g.arena_offset + at).unwrap();
                }
                Op::Restart if taken > 0 => {
                    let Restorable::Generation(generation) =
                        restore::newest_restorable(&mut store, Some(REGION)).unwrap()
                    else {
                        panic!("the newest generation does not restore");
                    };
                    let region = Region::anonymous(REGION).unwrap();
                    generation.write_to_blank(region.file()).unwrap();
                    snapshotter.restored_image(&generation.meta, &generation.image, &generation.data_pages);
                    file = region.file().try_clone().unwrap();
                    client = Client::open(region, &Config::default()).unwrap();
                    client.recover().unwrap();
                    observer = snapshot::observe_file(&file).unwrap().expect("laid out");
                }
                Op::Restart => {}
                Op::FailingTake => {
                    client.commit(format!("failing take {taken}").as_bytes()).unwrap();
                    faults.arm(FaultPlan::once(&[IoOp::Write], 0));
                    // Staged whatever happens; the write that fails may be
                    // this generation's or the store's own in the background.
                    let staged = snapshotter.stage(&observer, &mut store).unwrap();
                    prop_assert!(matches!(staged, Outcome::Staged { .. }), "{:?}", staged);
                    let _ = snapshotter.persist_staged(&mut store);
                    faults.heal();
                }
                Op::Take | Op::ForgetAndTake { .. } => {
                    if let Op::ForgetAndTake { page, pages, byte } = op {
                        let (at, bytes) = write(page, pages, byte);
                        file.write_all_at(&bytes, g.arena_offset + at).unwrap();
                        snapshotter.forget();
                    }
                    client.commit(format!("take {taken}").as_bytes()).unwrap();
                    // Staged first: every change is held now, in memory up to
                    // the bound and the rest in the spill file.
                    let outcome = snapshotter.stage(&observer, &mut store).unwrap();
                    prop_assert!(matches!(outcome, Outcome::Staged { .. }), "{:?}", outcome);
                    let outcome = snapshotter.persist_staged(&mut store).unwrap();
                    prop_assert!(matches!(outcome, Some(Outcome::Persisted { .. })), "{:?}", outcome);
                    taken += 1;
                    let loaded = store.load_newest().unwrap().expect("a generation");
                    // The counters, the ring and the arena page for page;
                    // the header and table are rewritten from the meta on
                    // restore.
                    let from = g.counters_offset as usize;
                    let want = region_bytes(&file, from as u64);
                    let got = &loaded.image[from..];
                    if let Some(at) = (0..want.len()).find(|&i| want[i] != got[i]) {
                        prop_assert!(false, "generation {} differs from the region at byte {} (page {})", taken, from + at, (from + at) as u64 / PAGE_BYTES);
                    }
                }
            }
        }
    }
}

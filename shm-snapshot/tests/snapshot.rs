//! Snapshots of a live region into a store: what is kept, what is copied.

use shm_snapshot::meta::Meta;
use shm_snapshot::snapshot::{self, ArenaScan, Outcome, Snapshotter};
use shm_snapshot::store::{Store, StoreOptions};
use shm_snapshot::{Client, Config, Observer, Region, RegionError};
use std::fs::File;
use std::os::unix::fs::FileExt;

const REGION: u64 = 8 << 20;

fn options() -> StoreOptions {
    StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    }
}

/// A client on a fresh region, and an observer of the same memfd through a
/// read-only mapping, as the supervisor has.
fn client_and_observer() -> (Client, Observer) {
    let region = Region::anonymous(REGION).unwrap();
    let file = region.file().try_clone().unwrap();
    let client = Client::open(region, &Config::default()).unwrap();
    (client, observe(&file))
}

/// An observer of the laid-out region in `file`, a sealed memfd.
fn observe(file: &File) -> Observer {
    snapshot::observe_file(file)
        .expect("an anonymous region is sealed against shrinking")
        .expect("laid out")
}

fn persisted_units(store: &mut Store) -> Vec<(u64, Vec<u8>)> {
    let loaded = store.load_newest().unwrap().expect("a generation");
    let g = snapshot::image_geometry(&loaded.image).unwrap();
    let meta = Meta::decode(&loaded.meta, &g).unwrap();
    // Rebuild the region as a restart would, and read the units back
    // through a client: the proof that the generation is usable.
    let region = Region::anonymous(loaded.image.len() as u64).unwrap();
    snapshot::restore(region.file(), &loaded).unwrap();
    let client = Client::open(region, &Config::default()).unwrap();
    let units: Vec<_> = client
        .recover()
        .unwrap()
        .into_iter()
        .map(|u| (u.id.0, u.bytes))
        .collect();
    assert_eq!(
        units.iter().map(|u| u.0).collect::<Vec<_>>(),
        meta.units.iter().map(|u| u.seq()).collect::<Vec<_>>()
    );
    units
}

#[test]
fn unit_invalidated_and_rewritten_during_the_copy_is_not_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    // Four slots: the fifth commit reuses the first unit's slot.
    let region = Region::anonymous(REGION).unwrap();
    let file = region.file().try_clone().unwrap();
    let mut client = Client::open(
        region,
        &Config {
            slots: 4,
            ..Config::default()
        },
    )
    .unwrap();
    let observer = observe(&file);
    for k in 1..=4u8 {
        client.commit(&[k; 100]).unwrap();
    }
    let mut snapshotter = Snapshotter::new(ArenaScan::Auto);
    let outcome = snapshotter
        .take_with(&observer, &mut store, || {
            // Paused between the copy and Post: the program invalidates
            // unit 1 by reusing its slot, and writes new bytes.
            client.commit(&[9; 100]).unwrap();
        })
        .unwrap();
    let Outcome::Persisted { units, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        units, 3,
        "units 2-4 were valid throughout; unit 1 changed during the copy"
    );
    let kept = persisted_units(&mut store);
    assert_eq!(kept.iter().map(|u| u.0).collect::<Vec<_>>(), [2, 3, 4]);
    for (id, bytes) in &kept {
        assert_eq!(bytes, &vec![*id as u8; 100], "unit {id} is byte-identical");
    }
}

#[test]
fn every_unit_changing_during_the_copy_persists_nothing_and_is_reported_starved() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    client.commit(b"only unit").unwrap();
    let outcome = Snapshotter::default()
        .take_with(&observer, &mut store, || {
            // A unit as large as the ring overwrites every older one.
            client.commit(&vec![7; 1 << 20]).unwrap();
        })
        .unwrap();
    assert!(
        matches!(outcome, Outcome::NoConsistentUnit { pre_units: 1, .. }),
        "{outcome:?}"
    );
    assert!(store.load_newest().unwrap().is_none(), "nothing was persisted");
}

#[test]
fn a_delta_copies_only_new_ring_bytes_and_the_arena_chunks_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::new(ArenaScan::Auto);
    client
        .commit_with(b"first", |tx| tx.arena().write(0, &[1; 4096]))
        .unwrap();
    let first = snapshotter.take(&observer, &mut store).unwrap();
    assert!(matches!(first, Outcome::Persisted { .. }), "{first:?}");

    // One more unit and one arena write far from the first.
    let far = 5 << 20;
    client
        .commit_with(b"second", |tx| tx.arena().write(far, &[2; 4096]))
        .unwrap();
    let Outcome::Persisted {
        bytes_scanned,
        persisted,
        ..
    } = snapshotter.take(&observer, &mut store).unwrap()
    else {
        panic!("a delta")
    };
    assert!(!persisted.base);
    // Header and table (one chunk), the ring chunk holding the new unit,
    // the arena chunk(s) written: a handful of 64 KiB chunks, not 8 MiB.
    assert!(bytes_scanned <= 4 * 65536, "scanned {bytes_scanned} bytes");
    let loaded = store.load_newest().unwrap().unwrap();
    let g = *observer.geometry();
    let at = (g.arena_offset + far as u64) as usize;
    assert_eq!(&loaded.image[at..at + 4096], &[2; 4096][..]);
    assert_eq!(
        persisted_units(&mut store)
            .iter()
            .map(|u| u.1.clone())
            .collect::<Vec<_>>(),
        [b"first".to_vec(), b"second".to_vec()]
    );
}

#[test]
fn arena_writes_without_hints_are_found_by_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::new(ArenaScan::Auto);
    client.commit(b"first").unwrap();
    snapshotter.take(&observer, &mut store).unwrap();
    // Written around the client, as a client that never marks writes
    // does: no counter moves.
    let far = 3 << 20;
    unmarked_write(&client, far, &0xfeed_u64.to_le_bytes());
    client.commit(b"second").unwrap();
    snapshotter.take(&observer, &mut store).unwrap();
    let loaded = store.load_newest().unwrap().unwrap();
    let at = observer.geometry().arena_offset as usize + far;
    assert_eq!(
        u64::from_le_bytes(loaded.image[at..at + 8].try_into().unwrap()),
        0xfeed
    );
}

/// Writes arena bytes through the region's file, moving no counter: what a
/// client written from FORMAT.md that forgets to mark does.
fn unmarked_write(client: &Client, arena_offset: usize, bytes: &[u8]) {
    let at = client.geometry().arena_offset + arena_offset as u64;
    client.region().file().write_all_at(bytes, at).unwrap();
}

/// The persisted newest generation's arena bytes at `arena_offset`.
fn persisted_arena(
    store: &mut Store,
    g: &shm_snapshot::layout::Geometry,
    arena_offset: usize,
    len: usize,
) -> Vec<u8> {
    let loaded = store.load_newest().unwrap().unwrap();
    let at = g.arena_offset as usize + arena_offset;
    loaded.image[at..at + len].to_vec()
}

#[test]
fn auto_follows_the_marks_once_any_moved_so_an_unmarked_write_is_not_copied() {
    // The rule check mode is there to catch: under auto, a program that
    // marks some writes must mark all of them.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::new(ArenaScan::Auto);
    client
        .commit_with(b"marked", |tx| tx.arena().write(0, &[1; 64]))
        .unwrap();
    snapshotter.take(&observer, &mut store).unwrap();
    unmarked_write(&client, 2 << 20, &[2; 64]);
    client.commit(b"describes the unmarked write").unwrap();
    snapshotter.take(&observer, &mut store).unwrap();
    let g = *observer.geometry();
    assert_eq!(persisted_arena(&mut store, &g, 0, 64), [1; 64]);
    assert_eq!(
        persisted_arena(&mut store, &g, 2 << 20, 64),
        [0; 64],
        "not copied"
    );
    assert_eq!(snapshotter.unmarked_write(), None, "auto reports nothing");
}

#[test]
fn check_reports_an_unmarked_write_once_a_later_commit_shows_it_was_never_marked() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::new(ArenaScan::Check);
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = reports.clone();
    snapshotter.on_unmarked_write(move |w| sink.lock().unwrap().push(*w));
    client
        .commit_with(b"marked", |tx| tx.arena().write(0, &[1; 64]))
        .unwrap();
    snapshotter.take(&observer, &mut store).unwrap();

    let chunk = client.arena().chunk_bytes();
    unmarked_write(&client, 5 * chunk + 8, &[2; 64]);
    client.commit(b"after the write").unwrap();
    snapshotter.take(&observer, &mut store).unwrap();
    assert_eq!(
        snapshotter.unmarked_write(),
        None,
        "not proven yet: it may be marked later"
    );
    client
        .commit(b"later still, and the write was never marked")
        .unwrap();
    let Outcome::Persisted { persisted, .. } = snapshotter.take(&observer, &mut store).unwrap() else {
        panic!("a generation")
    };
    let found = snapshotter.unmarked_write().expect("reported");
    assert_eq!(found.chunk, 5);
    assert_eq!(found.arena_offset, 5 * chunk as u64);
    assert_eq!(found.counter, 0);
    assert_eq!(found.generation, persisted.number);
    assert_eq!(*reports.lock().unwrap(), [found], "told once");
    let line = found.to_string();
    assert!(
        line.starts_with("unmarked arena write: chunk 5 (arena bytes ") && !line.contains('\n'),
        "{line}"
    );
    // Check copies what it compares: the generations hold the write.
    let g = *observer.geometry();
    assert_eq!(persisted_arena(&mut store, &g, 5 * chunk + 8, 64), [2; 64]);

    // A second unmarked write is copied too, and not reported again.
    unmarked_write(&client, 7 * chunk, &[3; 8]);
    for unit in [b"one", b"two"] {
        client.commit(unit).unwrap();
        snapshotter.take(&observer, &mut store).unwrap();
    }
    assert_eq!(reports.lock().unwrap().len(), 1);
    assert_eq!(persisted_arena(&mut store, &g, 7 * chunk, 8), [3; 8]);
}

#[test]
fn check_says_nothing_of_a_write_marked_after_a_snapshot_saw_it() {
    // A program marks after it writes: a snapshot between the two sees the
    // bytes changed and the counter not yet moved.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::new(ArenaScan::Check);
    client
        .commit_with(b"marked", |tx| tx.arena().write(0, &[1; 64]))
        .unwrap();
    snapshotter.take(&observer, &mut store).unwrap();
    let at = 3 * client.arena().chunk_bytes();
    unmarked_write(&client, at, &[4; 16]);
    snapshotter.take(&observer, &mut store).unwrap();
    // The mark lands (the same bytes again, through the API), then a commit.
    client
        .commit_with(b"now marked", |tx| tx.arena().write(at, &[4; 16]))
        .unwrap();
    client.commit(b"and later").unwrap();
    snapshotter.take(&observer, &mut store).unwrap();
    assert_eq!(snapshotter.unmarked_write(), None);
}

#[test]
fn check_says_nothing_of_a_program_that_never_marks() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::new(ArenaScan::Check);
    for k in 0..3u8 {
        unmarked_write(&client, usize::from(k) << 16, &[k + 1; 32]);
        client.commit(&[k]).unwrap();
        snapshotter.take(&observer, &mut store).unwrap();
    }
    assert_eq!(snapshotter.unmarked_write(), None);
    let g = *observer.geometry();
    assert_eq!(persisted_arena(&mut store, &g, 2 << 16, 32), [3; 32]);
}

#[test]
fn a_commit_wakes_a_host_sleeping_on_the_commit_count_long_before_its_timeout() {
    let (mut client, observer) = client_and_observer();
    client.commit(b"before").unwrap();
    let seen = observer.commit_count();
    let long = std::time::Duration::from_secs(20);
    std::thread::scope(|scope| {
        let host = scope.spawn(|| {
            let started = std::time::Instant::now();
            // A wake can be lost to a race (FORMAT.md, "Waking the host");
            // the host then sleeps again until its timeout.
            while observer.commit_count() == seen {
                observer.wait_for_commit(seen, long).unwrap();
            }
            observer.stop_waiting().unwrap();
            started.elapsed()
        });
        // Commit only once the host has said it sleeps: this commit is the
        // one that must wake it.
        let flags = shm_snapshot::layout::header::HOST_FLAGS;
        let region = client.region();
        let mut word = [0u8; 8];
        while {
            std::os::unix::fs::FileExt::read_exact_at(region.file(), &mut word, flags).unwrap();
            u64::from_le_bytes(word) == 0
        } {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        client.commit(b"wake up").unwrap();
        let slept = host.join().unwrap();
        assert!(
            slept < std::time::Duration::from_secs(5),
            "woken after {slept:?}, not by the commit"
        );
    });
    let mut word = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(
        client.region().file(),
        &mut word,
        shm_snapshot::layout::header::HOST_FLAGS,
    )
    .unwrap();
    assert_eq!(u64::from_le_bytes(word), 0, "the host cleared its flag");
}

/// Loads the newest generation into a fresh region and opens it as a
/// restarted program would.
fn restore_and_open(store: &mut Store) -> Client {
    let loaded = store.load_newest().unwrap().expect("a generation");
    let region = Region::anonymous(loaded.image.len() as u64).unwrap();
    snapshot::restore(region.file(), &loaded).expect("every persisted generation restores");
    Client::open(region, &Config::default()).expect("and opens")
}

#[test]
fn generations_taken_while_a_child_scribbles_on_the_header_all_restore() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let file = client.region().file().try_clone().unwrap();
    let stop = AtomicBool::new(false);
    /// Stops the scribbler however the test body ends, so a failing
    /// assertion fails the test instead of leaving the scope waiting.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let (mut persisted, mut refused) = (0, 0);
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        // A hostile child flips the version between 1 and 2 as fast as it
        // can, so some flips land after a snapshot checked the header and
        // before it copied it.
        scope.spawn(|| {
            let version = shm_snapshot::layout::header::VERSION;
            while !stop.load(Ordering::Relaxed) {
                for v in [2u64, 1] {
                    file.write_all_at(&v.to_le_bytes(), version).unwrap();
                }
            }
        });
        let mut snapshotter = Snapshotter::default();
        // Up to 40 generations in 3 s; on a loaded machine, where the
        // scribbler may win most races, on until the 10 the test needs
        // (the long deadline only guards against a hang).
        let started = std::time::Instant::now();
        let enough = |persisted: usize| {
            let elapsed = started.elapsed();
            persisted >= 40
                || (persisted >= 10 && elapsed > std::time::Duration::from_secs(3))
                || elapsed > std::time::Duration::from_secs(120)
        };
        while !enough(persisted) {
            client.commit(b"kept").unwrap();
            match snapshotter.take(&observer, &mut store) {
                Ok(Outcome::Persisted { .. }) => {
                    persisted += 1;
                    let restored = restore_and_open(&mut store);
                    assert_eq!(restored.recover().unwrap().last().unwrap().bytes, b"kept");
                }
                Ok(other) => panic!("{other:?}"),
                // The header check caught a flip: nothing persisted.
                Err(_) => refused += 1,
            }
        }
    });
    assert!(persisted >= 10, "{persisted} persisted, {refused} refused");
}

#[test]
fn generation_taken_while_a_child_scribbles_on_its_commit_count_restores() {
    use shm_snapshot::layout::header;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    client.commit(b"kept").unwrap();
    // The count is only checked by a client attaching, never by the
    // header check a snapshot makes: a generation must not carry it over.
    client
        .region()
        .file()
        .write_all_at(&u64::MAX.to_le_bytes(), header::COMMIT_COUNT)
        .unwrap();
    let outcome = Snapshotter::default().take(&observer, &mut store).unwrap();
    assert!(
        matches!(outcome, Outcome::Persisted { units: 1, .. }),
        "{outcome:?}"
    );
    let restored = restore_and_open(&mut store);
    assert_eq!(restored.recover().unwrap().last().unwrap().bytes, b"kept");
}

#[test]
fn a_unit_with_the_last_sequence_number_persists_and_restores() {
    use shm_snapshot::layout::{Tag, header, limits, slot};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (client, observer) = client_and_observer();
    // A table holding only the unit with the largest sequence number a tag
    // can hold, as a child that used them all would leave.
    let g = *client.geometry();
    let file = client.region().file();
    let seq = limits::MAX_COUNTER - 1;
    let index = g.slot_of(seq);
    for (field, value) in [(slot::OFFSET, 0), (slot::LEN, 8), (slot::TAG, Tag::valid(seq).0)] {
        file.write_all_at(&value.to_le_bytes(), g.slot_field(index, field))
            .unwrap();
    }
    file.write_all_at(&(seq + 1).to_le_bytes(), header::NEXT_SEQ)
        .unwrap();
    let outcome = Snapshotter::default().take(&observer, &mut store).unwrap();
    assert!(
        matches!(outcome, Outcome::Persisted { units: 1, .. }),
        "{outcome:?}"
    );
    let mut restored = restore_and_open(&mut store);
    assert_eq!(restored.recover().unwrap()[0].id.0, seq);
    assert!(
        restored.commit(b"one too many").is_err(),
        "sequence numbers are used up"
    );
}

#[test]
fn observing_a_file_that_could_shrink_is_refused() {
    use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, memfd_create};
    let blank = Region::anonymous(REGION).unwrap();
    assert!(
        snapshot::observe_file(blank.file()).unwrap().is_none(),
        "a sealed region not laid out yet"
    );
    // A laid-out region's bytes, copied into files that differ in their seals.
    let (client, _) = client_and_observer();
    let mut image = vec![0u8; REGION as usize];
    client.region().file().read_exact_at(&mut image, 0).unwrap();
    let holding_image = |file: File| {
        file.write_all_at(&image, 0).unwrap();
        file
    };
    let memfd = || File::from(memfd_create("region", MemfdFlags::ALLOW_SEALING).unwrap());
    let grow_sealed = holding_image(memfd());
    fcntl_add_seals(&grow_sealed, SealFlags::GROW).unwrap();
    for (file, seals, what) in [
        (holding_image(tempfile::tempfile().unwrap()), 0, "a regular file"),
        (holding_image(memfd()), 0, "a memfd without seals"),
        (
            grow_sealed.try_clone().unwrap(),
            SealFlags::GROW.bits(),
            "a memfd sealed only against growing",
        ),
    ] {
        let err = snapshot::observe_file(&file).expect_err(what);
        assert!(
            matches!(err, RegionError::NotSealed { seals: s } if s == seals),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains("not sealed against shrinking"), "{err}");
    }
    fcntl_add_seals(&grow_sealed, SealFlags::SHRINK).unwrap();
    let observer = snapshot::observe_file(&grow_sealed)
        .expect("sealed against shrinking now")
        .expect("laid out");
    assert_eq!(observer.geometry(), client.geometry());
}

#[test]
fn a_restore_writes_only_the_pages_that_differ_and_leaves_what_a_full_rewrite_would() {
    use shm_snapshot::restore::{self, Restorable};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    client
        .commit_with(b"table", |tx| tx.arena().write(8192, &[7u8; 3 * 4096]))
        .unwrap();
    let taken = Snapshotter::default().take(&observer, &mut store).unwrap();
    assert!(matches!(taken, Outcome::Persisted { .. }), "{taken:?}");
    let Restorable::Generation(generation) = restore::newest_restorable(&mut store, Some(REGION)).unwrap()
    else {
        panic!("a generation to restore")
    };
    // The reference: the whole image, then its meta.
    let full = Region::anonymous(REGION).unwrap();
    let loaded = store.load_newest().unwrap().expect("a generation");
    snapshot::restore(full.file(), &loaded).unwrap();
    let read = |file: &File| {
        let mut bytes = vec![0u8; REGION as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    };

    let region = Region::anonymous(REGION).unwrap();
    let first = generation.write_to(region.file()).unwrap();
    assert!(first.bytes > 0 && first.bytes < REGION / 2, "{first:?}");
    assert!(
        read(region.file()) == read(full.file()),
        "differs from a full rewrite"
    );

    // Again on the region it just wrote: at most the header and the unit
    // table, which the meta rewrites, differ from the image.
    let again = generation.write_to(region.file()).unwrap();
    assert!(again.bytes <= generation.geometry.ring_offset, "{again:?}");
    assert!(read(region.file()) == read(full.file()));

    // A page the program changed since is put back, and only it.
    region
        .file()
        .write_all_at(&[1u8; 10], generation.geometry.arena_offset + 8192)
        .unwrap();
    let mended = generation.write_to(region.file()).unwrap();
    assert!(
        mended.bytes >= 4096 && mended.bytes <= 4096 + generation.geometry.ring_offset,
        "{mended:?}"
    );
    assert!(read(region.file()) == read(full.file()));
}

/// The payloads a client recovers from the newest generation in `store`.
fn newest_payloads(store: &mut Store) -> Vec<Vec<u8>> {
    persisted_units(store)
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect()
}

#[test]
fn a_staged_generation_is_persisted_as_it_was_staged_though_the_region_moved_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::default();
    client.commit(b"first").unwrap();
    let staged = snapshotter.stage(&observer, &mut store).unwrap();
    assert!(matches!(staged, Outcome::Staged { units: 1, .. }), "{staged:?}");
    assert!(snapshotter.has_staged());
    assert!(store.generations().is_empty(), "staging writes nothing");
    client.commit(b"second").unwrap();
    let persisted = snapshotter.persist_staged(&mut store).unwrap();
    assert!(
        matches!(persisted, Some(Outcome::Persisted { units: 1, .. })),
        "{persisted:?}"
    );
    assert!(!snapshotter.has_staged());
    assert_eq!(newest_payloads(&mut store), [b"first".to_vec()]);
    assert!(
        snapshotter.persist_staged(&mut store).unwrap().is_none(),
        "nothing waits"
    );
}

#[test]
fn a_snapshot_proving_the_units_persisted_last_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::default();
    client.commit(b"one").unwrap();
    assert!(matches!(
        snapshotter.take(&observer, &mut store).unwrap(),
        Outcome::Persisted { .. }
    ));
    let unchanged = snapshotter.take(&observer, &mut store).unwrap();
    assert!(matches!(unchanged, Outcome::Unchanged { .. }), "{unchanged:?}");
    assert_eq!(store.generations().len(), 1);
    client.commit(b"two").unwrap();
    assert!(matches!(
        snapshotter.take(&observer, &mut store).unwrap(),
        Outcome::Persisted { .. }
    ));
    assert_eq!(store.generations().len(), 2);

    // A restore tells the snapshotter what the region holds: the same
    // units proven again are nothing new either.
    let region = Region::anonymous(REGION).unwrap();
    let loaded = store.load_newest().unwrap().expect("a generation");
    snapshot::restore(region.file(), &loaded).unwrap();
    let g = snapshot::image_geometry(&loaded.image).unwrap();
    let mut fresh = Snapshotter::default();
    fresh.restored(&Meta::decode(&loaded.meta, &g).unwrap());
    let again = fresh.take(&observe(region.file()), &mut store).unwrap();
    assert!(matches!(again, Outcome::Unchanged { .. }), "{again:?}");
    assert_eq!(store.generations().len(), 2);
}

#[test]
fn after_a_failed_persist_the_same_units_are_persisted_again() {
    use shm_snapshot::store::{FaultPlan, FaultyIo, IoOp, RealIo};
    let dir = tempfile::tempdir().unwrap();
    let (io, faults) = FaultyIo::new(Box::new(RealIo));
    let mut store = Store::open_with_io(dir.path(), options(), Box::new(io)).unwrap();
    let (mut client, observer) = client_and_observer();
    let mut snapshotter = Snapshotter::default();
    client.commit(b"kept").unwrap();
    assert!(matches!(
        snapshotter.stage(&observer, &mut store).unwrap(),
        Outcome::Staged { .. }
    ));
    faults.arm(FaultPlan::once(&[IoOp::Write], 0));
    assert!(snapshotter.persist_staged(&mut store).is_err());
    assert!(!snapshotter.has_staged(), "a failed generation is dropped");
    faults.heal();
    let retried = snapshotter.take(&observer, &mut store).unwrap();
    assert!(
        matches!(retried, Outcome::Persisted { units: 1, .. }),
        "{retried:?}"
    );
    assert_eq!(newest_payloads(&mut store), [b"kept".to_vec()]);
}

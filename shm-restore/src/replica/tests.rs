//! The replica's logic against the object store's in-memory backend and
//! real stores in temporary directories: upload, pull, the lease, the
//! commit point's fencing, corrupt pieces. The same paths against a real
//! server and real supervisors are in the workspace's `replica` tests.

use std::time::{Duration, Instant};

use bytes::Bytes;
use shm_snapshot::store::{CHUNK_BYTES, Store, StoreOptions};

use super::client::{Cas, Client, ReplicaUrl};
use super::layout::{COMMIT, CommitPoint, Kind, Writer};
use super::lease::{self, Refused, Renewed};
use super::pull::pull;
use super::upload::{Joined, LeaseState, Uploader};

const LEN: u64 = 4 * CHUNK_BYTES;

fn url() -> ReplicaUrl {
    ReplicaUrl::parse("s3://bucket/some/prefix").unwrap()
}

fn options() -> StoreOptions {
    StoreOptions {
        fsync: false,
        keep: 4,
        ..StoreOptions::default()
    }
}

/// A region image whose chunk `i % 4` holds `i` (so each generation
/// changes one chunk).
fn write(store: &mut Store, image: &mut [u8], i: u64) {
    let chunk = (i % 4) as usize * CHUNK_BYTES as usize;
    image[chunk..chunk + 8].copy_from_slice(&i.to_le_bytes());
    let mut tx = store.begin(LEN).unwrap();
    tx.put_chunks(0, image).unwrap();
    tx.commit(&i.to_le_bytes()).unwrap();
}

/// Starts an uploader on `store`, with a fresh lease and commit point on
/// `client`'s objects.
fn uploader(client: &Client, store: &mut Store, interval: Duration) -> Uploader {
    let me = Writer::me();
    let held = lease::acquire(client, &me, Duration::from_secs(30), false).unwrap();
    let commit = CommitPoint::empty(&me, lease::now_ms());
    let Cas::Written(version) = client.put_if(COMMIT, Bytes::from(commit.encode()), None).unwrap() else {
        panic!("an empty bucket takes a commit point");
    };
    let start = Joined {
        client: client.share(),
        me,
        lease: held,
        commit,
        commit_version: version,
        keep: 4,
        interval,
    };
    Uploader::start(start, store).unwrap()
}

/// A store in a temporary directory holding generation 1 of a region
/// image, and an uploader on it shipping every `interval` to a fresh
/// in-memory replica.
struct Replicating {
    dir: tempfile::TempDir,
    client: Client,
    store: Store,
    image: Vec<u8>,
    up: Uploader,
    feed: super::upload::Feed,
}

fn replicating(interval: Duration) -> Replicating {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::in_memory(&url());
    let mut store = Store::open(dir.path(), options()).unwrap();
    let mut image = vec![0u8; LEN as usize];
    write(&mut store, &mut image, 1);
    let up = uploader(&client, &mut store, interval);
    let feed = up.feed();
    Replicating {
        dir,
        client,
        store,
        image,
        up,
        feed,
    }
}

fn commit_of(client: &Client) -> CommitPoint {
    let (bytes, _) = client.get(COMMIT, u64::MAX).unwrap().expect("a commit point");
    CommitPoint::decode(&bytes).unwrap()
}

/// Waits until the replica names generation `n`.
fn wait_for(client: &Client, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while commit_of(client).newest < n {
        assert!(
            Instant::now() < deadline,
            "generation {n} never reached the replica"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn load(dir: &std::path::Path) -> (u64, Vec<u8>, Vec<u8>) {
    let mut store = Store::open(dir, options()).unwrap();
    let loaded = store.load_newest().unwrap().expect("a generation");
    (loaded.number, loaded.image, loaded.meta)
}

#[test]
fn generations_reach_the_replica_in_batches_and_pull_back_byte_for_byte() {
    let b = tempfile::tempdir().unwrap();
    let Replicating {
        dir: a,
        client,
        mut store,
        mut image,
        up,
        feed,
    } = replicating(Duration::from_millis(200));
    for i in 2..=300 {
        write(&mut store, &mut image, i);
        feed.feed(&mut store);
    }
    wait_for(&client, 300);
    let figures = up.finish(Duration::from_secs(10));
    assert_eq!(figures.newest_generation, Some(300));
    assert_eq!(figures.behind_generations, 0);
    assert_eq!(figures.lease, LeaseState::Released);
    let commit = commit_of(&client);
    // Batches: far fewer pieces (and PUTs) than generations.
    let segments = commit.pieces.iter().filter(|p| p.kind == Kind::Segment).count();
    assert!(figures.puts < 100, "{} PUTs for 300 generations", figures.puts);
    assert!(commit.pieces[0].kind == Kind::Base, "{commit:?}");
    assert!(segments >= 1);
    drop(store);
    let pulled = pull(&client, &commit, b.path(), None, false).unwrap();
    assert!(pulled.rejected.is_empty(), "{:?}", pulled.rejected);
    assert_eq!(pulled.newest, 300);
    let (n, pulled_image, meta) = load(b.path());
    assert_eq!(n, 300);
    assert_eq!(meta, 300u64.to_le_bytes());
    assert!(
        pulled_image == image,
        "the pulled image differs from the region written"
    );
    let (local_n, local_image, _) = load(a.path());
    assert_eq!((local_n, local_image == pulled_image), (300, true));
}

#[test]
fn a_corrupt_newest_piece_is_refused_on_pull_and_an_older_generation_used() {
    let b = tempfile::tempdir().unwrap();
    let Replicating {
        dir: _a,
        client,
        mut store,
        mut image,
        up,
        feed,
    } = replicating(Duration::from_millis(50));
    write(&mut store, &mut image, 2);
    feed.feed(&mut store);
    wait_for(&client, 2);
    for i in 3..=5 {
        write(&mut store, &mut image, i);
    }
    feed.feed(&mut store);
    wait_for(&client, 5);
    up.finish(Duration::from_secs(10));
    let commit = commit_of(&client);
    let newest = commit.pieces.last().unwrap().clone();
    assert_eq!((newest.kind, newest.last), (Kind::Segment, 5), "{commit:?}");
    // One flipped byte in the newest piece.
    let (bytes, _) = client.get(&newest.name, u64::MAX).unwrap().unwrap();
    let mut bad = bytes.to_vec();
    let at = bad.len() - 100;
    bad[at] ^= 1;
    client.put(&newest.name, Bytes::from(bad)).unwrap();
    let pulled = pull(&client, &commit, b.path(), None, false).unwrap();
    assert_eq!(pulled.rejected.len(), 1, "{:?}", pulled.rejected);
    assert!(pulled.rejected[0].contains("BLAKE3"), "{:?}", pulled.rejected);
    let (n, _, meta) = load(b.path());
    assert_eq!(n, newest.first - 1, "the generation before the bad piece");
    assert_eq!(meta, n.to_le_bytes());
}

#[test]
fn pull_of_an_older_generation_stops_there() {
    let b = tempfile::tempdir().unwrap();
    let Replicating {
        dir: _a,
        client,
        mut store,
        mut image,
        up,
        feed,
    } = replicating(Duration::from_millis(50));
    for i in 2..=10 {
        write(&mut store, &mut image, i);
    }
    feed.feed(&mut store);
    wait_for(&client, 10);
    up.finish(Duration::from_secs(10));
    let commit = commit_of(&client);
    pull(&client, &commit, b.path(), Some(7), false).unwrap();
    let (n, _, meta) = load(b.path());
    assert_eq!((n, meta), (7, 7u64.to_le_bytes().to_vec()));
    let c = tempfile::tempdir().unwrap();
    let err = pull(&client, &commit, c.path(), Some(11), false).unwrap_err();
    assert!(err.contains("generation 11 is not in the replica"), "{err}");
}

#[test]
fn a_live_lease_refuses_a_second_writer_naming_the_holder_unless_taken_over() {
    let client = Client::in_memory(&url());
    let first = Writer::me();
    let mut held = lease::acquire(&client, &first, Duration::from_secs(30), false).unwrap();
    let second = Writer::me();
    match lease::acquire(&client.share(), &second, Duration::from_secs(30), false) {
        Err(Refused::Held(l)) => {
            assert_eq!(l.writer, first);
            let line = Refused::Held(l).to_string();
            assert!(
                line.contains(&first.host) && line.contains("--take-over"),
                "{line}"
            );
        }
        other => panic!("a second writer was not refused: {other:?}"),
    }
    let taken = lease::acquire(&client, &second, Duration::from_secs(30), true).unwrap();
    assert_eq!(taken.lease.writer, second);
    // The first holder's renewal finds the lease moved: deposed.
    match held.renew(&client).unwrap() {
        Renewed::Lost(Some(l)) => assert_eq!(l.writer, second),
        other => panic!("the deposed holder renewed: {other:?}"),
    }
}

#[test]
fn an_expired_lease_is_taken_without_take_over() {
    let client = Client::in_memory(&url());
    let first = Writer::me();
    let mut held = lease::acquire(&client, &first, Duration::from_secs(30), false).unwrap();
    held.release(&client).unwrap();
    let second = Writer::me();
    let taken = lease::acquire(&client, &second, Duration::from_secs(30), false).unwrap();
    assert_eq!(taken.lease.writer, second);
}

#[test]
fn a_deposed_uploader_never_moves_the_commit_point() {
    let Replicating {
        dir: _a,
        client,
        mut store,
        mut image,
        up,
        feed,
    } = replicating(Duration::from_millis(20));
    wait_for(&client, 1);
    // Another supervisor takes over and writes the commit point as its
    // own (what joining a replica does).
    let other = Writer::me();
    lease::acquire(&client, &other, Duration::from_secs(30), true).unwrap();
    let (bytes, version) = client.get(COMMIT, u64::MAX).unwrap().unwrap();
    let mut fenced = CommitPoint::decode(&bytes).unwrap();
    fenced.writer = other.clone();
    assert!(matches!(
        client
            .put_if(COMMIT, Bytes::from(fenced.encode()), Some(version))
            .unwrap(),
        Cas::Written(_)
    ));
    for i in 2..=20 {
        write(&mut store, &mut image, i);
    }
    feed.feed(&mut store);
    let deadline = Instant::now() + Duration::from_secs(30);
    while feed.figures().lease != LeaseState::Lost {
        assert!(
            Instant::now() < deadline,
            "the uploader never noticed it was deposed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let figures = up.finish(Duration::from_secs(1));
    assert_eq!(figures.lease, LeaseState::Lost);
    let commit = commit_of(&client);
    assert_eq!(commit.writer, other, "the deposed writer moved the commit point");
    assert_eq!(commit.newest, 1);
}

#[test]
fn the_commit_point_keeps_what_the_newest_generations_need() {
    let a = tempfile::tempdir().unwrap();
    let client = Client::in_memory(&url());
    let mut store = Store::open(a.path(), options()).unwrap();
    // Chunks of random bytes: deltas big enough that bases follow.
    let mut image = vec![0u8; 64 * CHUNK_BYTES as usize];
    let mut tx = store.begin(image.len() as u64).unwrap();
    tx.put_chunks(0, &image).unwrap();
    tx.commit(b"0").unwrap();
    let up = uploader(&client, &mut store, Duration::from_millis(10));
    let feed = up.feed();
    let mut x = 1u64;
    for i in 1..=200u64 {
        for b in image.chunks_mut(8) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let mut tx = store.begin(image.len() as u64).unwrap();
        tx.put_chunks(0, &image).unwrap();
        tx.commit(&i.to_le_bytes()).unwrap();
        feed.feed(&mut store);
        if i % 20 == 0 {
            wait_for(&client, i + 1);
        }
    }
    wait_for(&client, 201);
    up.finish(Duration::from_secs(10));
    let commit = commit_of(&client);
    let bases = commit.pieces.iter().filter(|p| p.kind == Kind::Base).count();
    assert!(
        (1..=2).contains(&bases),
        "old bases are dropped: {:?}",
        commit.pieces
    );
    // Newer bases went up (the first one, of generation 1, is gone), and
    // the replica holds a bounded part of the 800 MiB uploaded: for each
    // of at most two bases the newest 4 generations need, the base (4 MiB),
    // the segments before the next checkpoint (16 MiB) and one more piece
    // (at most 64 MiB; how many deltas a piece holds depends on how busy
    // the machine is): 168 MiB at most.
    let oldest_base = commit
        .pieces
        .iter()
        .filter(|p| p.kind == Kind::Base)
        .map(|p| p.first)
        .min();
    assert!(oldest_base > Some(100), "{:?}", commit.pieces);
    let held: u64 = commit.pieces.iter().map(|p| p.bytes).sum();
    assert!(
        held <= 168 << 20,
        "the replica holds {held} bytes: {:?}",
        commit.pieces
    );
    assert!(commit.generations() >= 4, "the newest keep generations stay");
    // Nothing in the bucket that the commit point does not name is read;
    // the dropped pieces are gone.
    let named: Vec<_> = commit.pieces.iter().map(|p| p.name.clone()).collect();
    let b = tempfile::tempdir().unwrap();
    pull(&client, &commit, b.path(), None, false).unwrap();
    let (n, pulled, _) = load(b.path());
    assert_eq!(n, 201);
    assert!(pulled == image);
    assert!(!named.is_empty());
}

#[test]
fn a_base_larger_than_a_part_goes_up_in_parts_and_pulls_back_whole() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let client = Client::in_memory(&url());
    let mut store = Store::open(a.path(), options()).unwrap();
    // 80 MiB of bytes that do not repeat: a base of five parts.
    let mut image = vec![0u8; 1280 * CHUNK_BYTES as usize];
    let mut x = 7u64;
    for b in image.chunks_mut(8) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        b.copy_from_slice(&x.to_le_bytes());
    }
    let mut tx = store.begin(image.len() as u64).unwrap();
    tx.put_chunks(0, &image).unwrap();
    tx.commit(b"big").unwrap();
    let up = uploader(&client, &mut store, Duration::from_millis(20));
    wait_for(&client, 1);
    up.finish(Duration::from_secs(10));
    let commit = commit_of(&client);
    assert_eq!(commit.pieces[0].kind, Kind::Base);
    assert!(commit.pieces[0].bytes > super::upload::MAX_PIECE_BYTES);
    pull(&client, &commit, b.path(), None, false).unwrap();
    let (n, pulled, meta) = load(b.path());
    assert_eq!((n, meta.as_slice()), (1, &b"big"[..]));
    assert!(pulled == image);
}

#[test]
fn a_commit_point_of_our_own_that_moved_under_us_is_adopted_not_taken_for_a_rival() {
    let Replicating {
        dir: _a,
        client,
        mut store,
        mut image,
        up,
        feed,
    } = replicating(Duration::from_millis(20));
    wait_for(&client, 1);
    // What a write that timed out but landed leaves: the same document,
    // ours, under a version the uploader never saw.
    let (bytes, _) = client.get(COMMIT, u64::MAX).unwrap().unwrap();
    client.put(COMMIT, bytes).unwrap();
    for i in 2..=5 {
        write(&mut store, &mut image, i);
    }
    feed.feed(&mut store);
    wait_for(&client, 5);
    let figures = up.finish(Duration::from_secs(10));
    assert_eq!(figures.lease, LeaseState::Released, "{figures:?}");
}

#[test]
fn a_local_record_that_does_not_check_is_never_named_by_the_commit_point() {
    let a = tempfile::tempdir().unwrap();
    let client = Client::in_memory(&url());
    let mut store = Store::open(a.path(), options()).unwrap();
    let mut image = vec![0u8; LEN as usize];
    for i in 1..=6 {
        write(&mut store, &mut image, i);
    }
    // Generation 4's record, damaged on disk after it was written.
    let place = store.record_places(4..=4)[0].delta.clone().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&place.path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"\xff", place.offset + place.len / 2).unwrap();
    let up = uploader(&client, &mut store, Duration::from_millis(20));
    wait_for(&client, 3);
    up.finish(Duration::from_secs(5));
    let commit = commit_of(&client);
    assert_eq!(commit.newest, 3, "{commit:?}");
    let b = tempfile::tempdir().unwrap();
    pull(&client, &commit, b.path(), None, false).unwrap();
    assert_eq!(load(b.path()).0, 3);
}

#[test]
fn a_commit_point_that_repeats_a_segment_or_lies_about_its_newest_is_refused() {
    let me = Writer::me();
    let mut c = CommitPoint::empty(&me, 0);
    let piece = |kind, seq, first, last| super::layout::Piece {
        name: format!("p{seq}-{first}"),
        kind,
        seq,
        first,
        last,
        count: last - first + 1,
        parent: if kind == Kind::Base { 0 } else { first - 1 },
        last_created_ms: 0,
        bytes: 1,
        blake3: "0".repeat(64),
    };
    c.pieces = vec![piece(Kind::Base, 0, 1, 1), piece(Kind::Segment, 1, 2, 5)];
    c.newest = 5;
    assert!(CommitPoint::decode(&c.encode()).is_ok());
    c.pieces.push(piece(Kind::Segment, 1, 6, 7));
    c.newest = 7;
    assert!(
        CommitPoint::decode(&c.encode())
            .unwrap_err()
            .contains("segment number")
    );
    c.pieces.pop();
    c.newest = 9;
    assert!(CommitPoint::decode(&c.encode()).unwrap_err().contains("newest"));
    assert!(super::layout::utc(u64::MAX).contains("ms after the epoch"));
}

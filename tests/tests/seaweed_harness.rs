//! The SeaweedFS harness: a real S3 server on loopback whose raw-object
//! helpers see what an S3 client sees, and which keeps its objects through
//! a pause and a crash.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shm_snapshot_bench::seaweed::Server;

const BUCKET: &str = "harness-bucket";

/// An S3 client for `bucket` configured from the server's environment,
/// as `AmazonS3Builder::from_env` would be in a child process.
fn s3_client(server: &Server, bucket: &str) -> AmazonS3 {
    let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
    for (key, value) in server.env() {
        let key: AmazonS3ConfigKey = key
            .to_ascii_lowercase()
            .parse()
            .unwrap_or_else(|e| panic!("{key} is no S3 setting: {e}"));
        builder = builder.with_config(key, value);
    }
    builder.build().expect("S3 client from the server's environment")
}

fn s3_get(runtime: &tokio::runtime::Runtime, s3: &AmazonS3, key: &str) -> Vec<u8> {
    runtime.block_on(async {
        let got = s3.get(&Path::from(key)).await;
        let got = got.unwrap_or_else(|e| panic!("S3 GET {key}: {e}"));
        got.bytes()
            .await
            .unwrap_or_else(|e| panic!("S3 GET {key}: {e}"))
            .to_vec()
    })
}

fn s3_put(runtime: &tokio::runtime::Runtime, s3: &AmazonS3, key: &str, bytes: &'static [u8]) {
    runtime
        .block_on(s3.put(&Path::from(key), PutPayload::from_static(bytes)))
        .unwrap_or_else(|e| panic!("S3 PUT {key}: {e}"));
}

/// Whether a GET to `endpoint` goes unanswered for half a second.
fn unanswered(endpoint: &str) -> bool {
    let address = endpoint.strip_prefix("http://").expect("an http endpoint");
    let mut stream = TcpStream::connect(address).expect("a paused server still accepts connections");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("sending a request");
    let mut byte = [0u8; 1];
    stream
        .read(&mut byte)
        .is_err_and(|e| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

#[test]
fn raw_objects_match_s3_and_survive_a_pause_and_a_crash() {
    let started = Instant::now();
    let mut server = Server::start();
    eprintln!("weed mini answered {:?} after its start", started.elapsed());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let s3 = s3_client(&server, BUCKET);

    // Before the bucket exists S3 refuses writes into it, as AWS does.
    let early = runtime.block_on(s3.put(&Path::from("early"), PutPayload::from_static(b"x")));
    assert!(early.is_err(), "a write into a missing bucket succeeded");
    server.create_bucket(BUCKET);
    server.create_bucket(BUCKET);
    assert_eq!(server.list(BUCKET, ""), Vec::<String>::new());

    // Written raw, read through S3.
    server.put(BUCKET, "gen/0001", b"first");
    server.put(BUCKET, "gen/0002", &[0, 1, 2, 255]);
    server.put(BUCKET, "with space+plus.bin", b"odd name");
    server.put(BUCKET, "empty", b"");
    assert_eq!(s3_get(&runtime, &s3, "gen/0001"), b"first");
    assert_eq!(s3_get(&runtime, &s3, "gen/0002"), [0, 1, 2, 255]);
    assert_eq!(s3_get(&runtime, &s3, "with space+plus.bin"), b"odd name");
    assert_eq!(s3_get(&runtime, &s3, "empty"), b"");

    // Written through S3, read raw.
    s3_put(&runtime, &s3, "gen/0003", b"third");
    s3_put(&runtime, &s3, "genesis", b"not a generation");
    assert_eq!(server.get(BUCKET, "gen/0003").as_deref(), Some(&b"third"[..]));
    assert_eq!(server.get(BUCKET, "gen"), None, "a prefix is no object");
    assert_eq!(server.get(BUCKET, "missing"), None);

    // Listed raw and through S3 alike.
    assert_eq!(server.list(BUCKET, "gen/"), ["gen/0001", "gen/0002", "gen/0003"]);
    assert_eq!(
        server.list(BUCKET, "gen"),
        ["gen/0001", "gen/0002", "gen/0003", "genesis"]
    );
    let listed = runtime
        .block_on(s3.list_with_delimiter(Some(&Path::from("gen"))))
        .expect("S3 list");
    let listed: Vec<String> = listed.objects.iter().map(|o| o.location.to_string()).collect();
    assert_eq!(listed, server.list(BUCKET, "gen/"));

    // Damaged raw, the damage seen through S3.
    server.put(BUCKET, "gen/0002", b"damaged");
    assert_eq!(s3_get(&runtime, &s3, "gen/0002"), b"damaged");

    server.pause();
    assert!(unanswered(&server.endpoint()), "a paused server answered");
    server.resume();
    assert_eq!(s3_get(&runtime, &s3, "gen/0001"), b"first");

    server.kill();
    let address = server.endpoint().replace("http://", "");
    assert!(
        TcpStream::connect(&address).is_err(),
        "a killed server accepts connections"
    );
    let restarted = Instant::now();
    server.restart();
    eprintln!("weed mini answered {:?} after its restart", restarted.elapsed());
    assert_eq!(server.get(BUCKET, "gen/0001").as_deref(), Some(&b"first"[..]));
    assert_eq!(server.get(BUCKET, "gen/0002").as_deref(), Some(&b"damaged"[..]));
    let s3 = s3_client(&server, BUCKET);
    assert_eq!(s3_get(&runtime, &s3, "gen/0003"), b"third");
    assert_eq!(
        server.list(BUCKET, ""),
        [
            "empty",
            "gen/0001",
            "gen/0002",
            "gen/0003",
            "genesis",
            "with space+plus.bin"
        ]
    );
}

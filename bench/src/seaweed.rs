//! A real S3-compatible server for the object-store tests: SeaweedFS's
//! `weed mini` (master, volume server, filer and S3 gateway in one
//! process), on loopback, in a temporary directory, on ports of its own.
//!
//! `scripts/test` installs the pinned `weed` and names it in
//! `SHM_TEST_WEED`. Every port `weed mini` opens is set by a flag, so each
//! [`Server`] picks free ones and servers run in parallel, within and
//! across test processes; nothing is serialized.
//!
//! Containment:
//! - Everything listens on 127.0.0.1 (`-ip`, `-ip.bind`) and talks only to
//!   itself; telemetry is off, the WebDAV server, the admin UI, the Iceberg
//!   and Lance catalogs are off. One thing is not under our control: before
//!   binding, `weed mini` checks that each port is free by opening and at
//!   once closing a listener on the wildcard address (`isPortAvailable` in
//!   `weed/command/mini.go`); nothing is accepted there.
//! - The environment is cleared (`WEED_*` variables configure weed, and
//!   `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` would add an identity),
//!   and `HOME`, `TMPDIR` and the working directory point into the
//!   temporary directory, so no `*.toml` from `~/.seaweedfs` or `.` is read
//!   (weed still looks in `/etc/seaweedfs` and `/usr/local/etc/seaweedfs`).
//! - The gRPC services also listen on unix sockets whose paths weed fixes:
//!   `/tmp/seaweedfs-<service>-grpc-<port>.sock`. Weed replaces a stale one
//!   when it starts; [`Server`]'s drop removes its own once weed is dead.
//!
//! Raw objects ([`Server::get`], [`Server::put`], [`Server::list`]) go
//! through the filer's HTTP API, not S3: an S3 bucket is the filer
//! directory `/buckets/<bucket>` and an object `<key>` the file
//! `/buckets/<bucket>/<key>`, one to one both ways (the harness test checks
//! it against an S3 client), and the filer needs no request signing, so the
//! helpers need no AWS client and no async runtime: a few lines of
//! HTTP/1.1 over a `TcpStream` do.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start or a request may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// The environment variable naming the `weed` binary.
pub const WEED_ENV: &str = "SHM_TEST_WEED";

/// The access key of the server's one identity.
pub const ACCESS_KEY: &str = "testkey";

/// The secret key of the server's one identity.
pub const SECRET_KEY: &str = "testsecret";

/// The region clients sign for (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";

/// How long a start or restart may take until S3 and the filer answer.
/// `weed mini` answers in about a second on an idle machine; CI machines
/// are loaded and shared.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// The pause between two readiness probes: short against a start of about
/// a second, long enough not to busy a loaded machine.
const POLL: Duration = Duration::from_millis(50);

/// How long one readiness probe waits for an answer. A server that is up
/// answers in milliseconds; a longer wait only delays the next probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times [`Server::start`] tries fresh ports, and a restart the
/// same ones, when weed exits while starting: a port found free can be
/// taken by another process before weed binds it, and weed then exits.
const LAUNCH_ATTEMPTS: usize = 3;

/// Lines of weed's log quoted in a panic message.
const LOG_TAIL_LINES: usize = 40;

/// Entries the filer returns per directory listing page (its own maximum
/// is `-filer.dirListLimit`, 1000 by default).
const LIST_PAGE: usize = 1000;

/// The bit of a filer entry's `Mode` that marks a directory (Go's
/// `os.ModeDir`).
const MODE_DIR: u64 = 1 << 31;

/// The ports of one server: every port `weed mini` opens, set by a flag
/// each, in the order of [`Ports::FLAGS`].
#[derive(Debug, Clone, Copy)]
struct Ports([u16; 11]);

impl Ports {
    /// The flag setting each port.
    const FLAGS: [&str; 11] = [
        "s3.port",
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
        // Off, but weed checks the port is free all the same.
        "webdav.port",
    ];

    fn s3(self) -> u16 {
        self.0[0]
    }

    fn filer(self) -> u16 {
        self.0[6]
    }

    /// The gRPC ports, with the service name weed puts in their unix
    /// socket's path.
    fn grpc(self) -> [(&'static str, u16); 5] {
        [
            ("s3", self.0[1]),
            ("master", self.0[3]),
            ("volume", self.0[5]),
            ("filer", self.0[7]),
            ("admin", self.0[9]),
        ]
    }

    /// Distinct ports free on 127.0.0.1 right now. They come from below
    /// (or above) the kernel's ephemeral range where there is room, so a
    /// client connection elsewhere cannot take one between a kill and a
    /// restart; else the kernel picks them.
    fn pick() -> Ports {
        let mut held: Vec<TcpListener> = Vec::new();
        let mut ports = [0u16; 11];
        let range = outside_ephemeral_range();
        for slot in &mut ports {
            let listener = loop {
                let port = match &range {
                    Some(range) => rand::random_range(range.clone()),
                    None => 0,
                };
                if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                    break listener;
                }
            };
            *slot = listener
                .local_addr()
                .expect("a bound listener has an address")
                .port();
            // Held until all are picked, so no two are the same.
            held.push(listener);
        }
        Ports(ports)
    }
}

/// A range of ports outside `net.ipv4.ip_local_port_range` with room for
/// many servers, if there is one.
fn outside_ephemeral_range() -> Option<std::ops::Range<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().map(|n| n.parse::<u16>());
    let (low, high) = (bounds.next()?.ok()?, bounds.next()?.ok()?);
    // Well clear of the well-known and commonly configured ports below.
    const FLOOR: u16 = 20_000;
    const ROOM: u16 = 2_000;
    if low >= FLOOR + ROOM {
        Some(FLOOR..low)
    } else if high <= u16::MAX - ROOM {
        Some(high + 1..u16::MAX)
    } else {
        None
    }
}

/// A running `weed mini` with an S3 endpoint on 127.0.0.1, its data in a
/// temporary directory it owns. Dropping it kills weed (SIGKILL to its
/// process group: SIGTERM may leave it running) and removes the directory.
pub struct Server {
    weed: PathBuf,
    /// Holds `data/` (weed's `-dir`), `tmp/` (its `TMPDIR` and `HOME`),
    /// `s3.json` and `weed.log`.
    dir: tempfile::TempDir,
    ports: Ports,
    /// Weed, the leader of its own process group; `None` once killed.
    child: Option<Child>,
    /// Launches so far, numbered in the log.
    launches: usize,
}

/// Why a launch did not end with a server that answers.
enum LaunchFailure {
    /// Weed exited while starting (a port taken under it, say).
    Exited(std::process::ExitStatus),
    /// S3 and the filer did not both answer within [`START_PATIENCE`];
    /// weed was killed.
    Silent,
}

impl Server {
    /// Starts `weed mini` on free loopback ports and waits until its S3
    /// endpoint and its filer answer (at most [`START_PATIENCE`]).
    ///
    /// Weed gets SIGKILL when the thread that started it exits
    /// (`PR_SET_PDEATHSIG`), so a test process killed outright leaves no
    /// server behind: start it on the thread that owns it.
    ///
    /// Panics if `SHM_TEST_WEED` is not set, or with the tail of weed's log
    /// if it does not come up.
    pub fn start() -> Server {
        let weed = match std::env::var_os(WEED_ENV) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => {
                panic!("{WEED_ENV} is not set: run the tests through scripts/test, which installs SeaweedFS")
            }
        };
        assert!(
            weed.is_file(),
            "{WEED_ENV}={} is not a file: run the tests through scripts/test, which installs SeaweedFS",
            weed.display()
        );
        // weed runs in its own directory: a relative path is made absolute.
        let weed = std::fs::canonicalize(&weed).unwrap_or(weed);
        let dir = tempfile::Builder::new()
            .prefix("seaweed-")
            .tempdir()
            .expect("temporary directory for weed");
        for sub in ["data", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).expect("directory in weed's temporary directory");
        }
        let config = serde_json::json!({
            "identities": [{
                "name": "test",
                "credentials": [{ "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(dir.path().join("s3.json"), config.to_string()).expect("writing weed's s3.json");
        let mut server = Server {
            weed,
            dir,
            ports: Ports::pick(),
            child: None,
            launches: 0,
        };
        for attempt in 1..=LAUNCH_ATTEMPTS {
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchFailure::Exited(_)) if attempt < LAUNCH_ATTEMPTS => server.ports = Ports::pick(),
                Err(failure) => server.fail(failure),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3())
    }

    /// The environment an S3 client (an `object_store` built from the
    /// environment, the AWS SDKs and CLI) needs to reach this server with
    /// its identity: keys, region, endpoint, and permission to use plain HTTP.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }

    /// Makes bucket `name` (nothing happens if it exists): the filer
    /// directory `/buckets/<name>`, which the S3 gateway serves as a bucket
    /// from the moment it exists. Panics on a name S3 would refuse (3 to 63
    /// lower-case letters, digits, `-` and `.`, a letter or digit at each
    /// end), which the filer would take.
    pub fn create_bucket(&self, name: &str) {
        let valid = (3..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        assert!(valid, "{name:?} is not a valid S3 bucket name");
        let response = self.filer("POST", &format!("/buckets/{}/", encode(name, false)), &[], b"");
        // 409: the directory exists already.
        assert!(
            matches!(response.status, 200 | 201 | 409),
            "creating bucket {name}: filer answered {}",
            response.describe()
        );
    }

    /// The bytes of object `key` in `bucket`, or `None` if there is no
    /// such object (a key that is only a prefix of others is none).
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let path = object_path(bucket, key);
        let entry = self.filer_entry(&path)?;
        if entry_is_dir(&entry) {
            return None;
        }
        let response = self.filer("GET", &path, &[], b"");
        match response.status {
            200 => Some(response.body),
            404 => None,
            _ => panic!("reading {bucket}/{key}: filer answered {}", response.describe()),
        }
    }

    /// Writes object `key` in `bucket`, replacing any object there; S3
    /// serves it at once. Panics if the bucket does not exist (the filer
    /// would make it).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        assert!(
            self.filer_entry(&object_path(bucket, ""))
                .is_some_and(|e| entry_is_dir(&e)),
            "writing {bucket}/{key}: bucket {bucket} does not exist (create_bucket makes it)"
        );
        let response = self.filer(
            "PUT",
            &object_path(bucket, key),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        );
        assert!(
            response.status == 201 || response.status == 200,
            "writing {bucket}/{key}: filer answered {}",
            response.describe()
        );
    }

    /// The keys in `bucket` that start with `prefix`, sorted as S3 lists
    /// them (by bytes). Empty if the bucket does not exist. Leaves out
    /// `.uploads/`, where the gateway keeps unfinished multipart uploads.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        // Only the directory that holds every key with this prefix is read.
        let start = &prefix[..prefix.rfind('/').map_or(0, |i| i + 1)];
        let mut keys = Vec::new();
        let mut dirs = vec![start.to_owned()];
        while let Some(dir) = dirs.pop() {
            for (key, is_dir) in self.list_dir(bucket, &dir) {
                if is_dir {
                    let below = format!("{key}/");
                    let relevant = below.starts_with(prefix) || prefix.starts_with(&below);
                    if relevant && below != ".uploads/" {
                        dirs.push(below);
                    }
                } else if key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        keys
    }

    /// Stops weed (SIGSTOP to its process group): connections are still
    /// accepted, requests are not answered until [`Server::resume`].
    pub fn pause(&self) {
        self.signal_group(rustix::process::Signal::STOP);
    }

    /// Lets a paused weed run on (SIGCONT to its process group).
    pub fn resume(&self) {
        self.signal_group(rustix::process::Signal::CONT);
    }

    /// Kills weed (SIGKILL to its process group) and waits for it: a
    /// crash, nothing flushed or closed. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Starts weed again on the same data and ports (killing it first if
    /// it runs) and waits until it answers, as [`Server::start`] does.
    pub fn restart(&mut self) {
        self.kill();
        for attempt in 1..=LAUNCH_ATTEMPTS {
            match self.launch() {
                Ok(()) => return,
                // The same ports: whoever took one may let it go.
                Err(LaunchFailure::Exited(_)) if attempt < LAUNCH_ATTEMPTS => std::thread::sleep(POLL * 10),
                Err(failure) => self.fail(failure),
            }
        }
    }

    /// The last lines weed wrote (its log holds all its launches), for
    /// failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// Starts weed and waits until it answers; on failure nothing runs.
    fn launch(&mut self) -> Result<(), LaunchFailure> {
        self.launches += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening weed.log");
        let ports: Vec<String> = Ports::FLAGS
            .iter()
            .zip(self.ports.0)
            .map(|(flag, port)| format!("-{flag}={port}"))
            .collect();
        writeln!(log, "=== launch {}: {}", self.launches, ports.join(" ")).expect("writing weed.log");
        let dir = self.dir.path();
        let mut command = Command::new(&self.weed);
        // Global flag before the command: glog to stderr, that is the log
        // file, instead of files in /tmp.
        command.args(["-logtostderr", "mini"]);
        command.arg(format!("-dir={}", dir.join("data").display()));
        command.args([
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            // As S3 does: a write to a missing bucket fails.
            "-s3.autoCreateBucket=false",
        ]);
        command.arg(format!("-s3.config={}", dir.join("s3.json").display()));
        command.args(&ports);
        // Sockets otherwise at /tmp/seaweedfs-{filer,s3}-<port>.sock, where
        // they would outlive a SIGKILL; a unix socket path has at most 107 bytes.
        for (flag, name) in [("filer.localSocket", "filer.sock"), ("s3.localSocket", "s3.sock")] {
            let socket = dir.join(name);
            if socket.as_os_str().len() < 100 {
                command.arg(format!("-{flag}={}", socket.display()));
            }
        }
        command
            .env_clear()
            .env("HOME", dir.join("tmp"))
            .env("TMPDIR", dir.join("tmp"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating weed.log"))
            .stderr(log)
            // Its own process group, which the signals address as a whole.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and changes only the child.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.weed.display()));
        self.child = Some(child);
        self.wait_until_answering()
    }

    /// Polls until the S3 endpoint answers an HTTP request (any status:
    /// an unsigned one gets 403) and the filer serves its root directory.
    fn wait_until_answering(&mut self) -> Result<(), LaunchFailure> {
        let deadline = Instant::now() + START_PATIENCE;
        let child = self.child.as_mut().expect("launched");
        let answers = |port, target| request(port, "GET", target, &[], b"", PROBE_TIMEOUT).ok();
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("waiting for weed") {
                self.child = None;
                return Err(LaunchFailure::Exited(status));
            }
            if answers(self.ports.s3(), "/").is_some()
                && answers(self.ports.filer(), "/?metadata=true").is_some_and(|r| r.status == 200)
            {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        self.kill();
        Err(LaunchFailure::Silent)
    }

    fn fail(&self, failure: LaunchFailure) -> ! {
        let what = match failure {
            LaunchFailure::Exited(status) => format!("exited while starting ({status})"),
            LaunchFailure::Silent => format!("did not answer within {START_PATIENCE:?}"),
        };
        panic!(
            "weed mini ({}) {what}; its log (tail):\n{}",
            self.weed.display(),
            self.log_tail()
        );
    }

    fn signal_group(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("weed is not running (killed?)");
        let group = rustix::process::Pid::from_child(child);
        rustix::process::kill_process_group(group, signal)
            .unwrap_or_else(|e| panic!("signalling weed's process group: {e}"));
    }

    /// A request to the filer; panics if it does not answer within
    /// [`PATIENCE`] (a paused server does not).
    fn filer(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.ports.filer(), method, target, headers, body, PATIENCE).unwrap_or_else(|e| {
            panic!(
                "filer request {method} {target}: {e}; weed's log (tail):\n{}",
                self.log_tail()
            )
        })
    }

    /// The filer's entry (JSON) at `path`, `None` if there is none.
    fn filer_entry(&self, path: &str) -> Option<serde_json::Value> {
        let response = self.filer("GET", &format!("{path}?metadata=true"), &[], b"");
        match response.status {
            200 => Some(
                serde_json::from_slice(&response.body)
                    .unwrap_or_else(|e| panic!("filer entry of {path}: {e}: {}", response.describe())),
            ),
            404 => None,
            _ => panic!("filer entry of {path}: filer answered {}", response.describe()),
        }
    }

    /// The entries of directory `dir` (empty or ending in `/`) of `bucket`,
    /// as keys with whether each is a directory; empty if there is no such
    /// directory.
    fn list_dir(&self, bucket: &str, dir: &str) -> Vec<(String, bool)> {
        let root = format!("/buckets/{bucket}/");
        let mut entries = Vec::new();
        let mut after = String::new();
        loop {
            let target = format!(
                "{}?limit={LIST_PAGE}&lastFileName={}",
                object_path(bucket, dir),
                encode(&after, true)
            );
            let response = self.filer("GET", &target, &[("Accept", "application/json")], b"");
            match response.status {
                200 => {}
                404 => return entries,
                _ => panic!("listing {bucket}/{dir}: filer answered {}", response.describe()),
            }
            let page: serde_json::Value = serde_json::from_slice(&response.body)
                .unwrap_or_else(|e| panic!("listing {bucket}/{dir}: {e}: {}", response.describe()));
            let listed = page["Entries"].as_array().map_or(&[][..], Vec::as_slice);
            for entry in listed {
                let path = entry["FullPath"].as_str().expect("a filer entry has a FullPath");
                let key = path
                    .strip_prefix(&root)
                    .unwrap_or_else(|| panic!("{path} listed under {root}"));
                entries.push((key.to_owned(), entry_is_dir(entry)));
            }
            if listed.is_empty() || page["ShouldDisplayLoadMore"] != true {
                return entries;
            }
            after = page["LastFileName"]
                .as_str()
                .expect("a page has a LastFileName")
                .to_owned();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A test failing while weed runs may fail because of it.
        if self.child.is_some() && std::thread::panicking() {
            eprintln!("weed's log (tail):\n{}", self.log_tail());
        }
        self.kill();
        // Weed's gRPC sockets in /tmp, now stale, unless a new server took
        // a port meanwhile and listens there.
        for (service, port) in self.ports.grpc() {
            let socket = format!("/tmp/seaweedfs-{service}-grpc-{port}.sock");
            if std::os::unix::net::UnixStream::connect(&socket)
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
            {
                let _ = std::fs::remove_file(&socket);
            }
        }
    }
}

/// SIGKILLs `child`'s process group and reaps the child.
fn kill_group(child: &mut Child) {
    let group = rustix::process::Pid::from_child(child);
    // Fails only if the group is gone already.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let _ = child.wait();
}

/// Whether a filer entry (its JSON) is a directory.
fn entry_is_dir(entry: &serde_json::Value) -> bool {
    entry["Mode"].as_u64().is_some_and(|mode| mode & MODE_DIR != 0)
}

/// The filer path of object `key` in `bucket`, percent-encoded.
fn object_path(bucket: &str, key: &str) -> String {
    format!("/buckets/{}/{}", encode(bucket, false), encode(key, false))
}

/// Percent-encodes all but unreserved characters, and `/` unless
/// `slash_too` (for a query value).
fn encode(text: &str, slash_too: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (b == b'/' && !slash_too) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP response, its body whole.
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    /// Its status and the start of its body, for failure messages.
    fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(500)]).into_owned();
        format!("{}: {body}", self.status)
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on a connection of its own
/// (`Connection: close`, so the response ends where the stream does), each
/// step within `timeout`.
fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if matches!(method, "PUT" | "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Parses a whole response: status line, headers, and a body delimited by
/// `Content-Length`, chunked, or by the end of the stream.
fn parse_response(raw: &[u8], head_only: bool) -> io::Result<Response> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| invalid("response without an end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("response headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| invalid(format!("bad header {line:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let rest = &raw[end + 4..];
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else if let Some(length) = length {
        rest.get(..length)
            .ok_or_else(|| invalid(format!("body of {} bytes, {length} announced", rest.len())))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut rest: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or_else(|| invalid("chunk without a size line"))?;
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| invalid("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or_else(|| invalid("truncated chunk"))?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or_else(|| invalid("truncated chunk"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_body_is_decoded() {
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n";
        let response = parse_response(raw, false).expect("valid response");
        assert_eq!((response.status, &response.body[..]), (200, &b"abcdef"[..]));
    }

    #[test]
    fn body_is_cut_at_its_content_length() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcdef";
        let response = parse_response(raw, false).expect("valid response");
        assert_eq!((response.status, &response.body[..]), (404, &b"abc"[..]));
    }

    #[test]
    fn keys_are_encoded_but_for_their_slashes() {
        assert_eq!(encode("a b/c%d~", false), "a%20b/c%25d~");
        assert_eq!(encode("a/b", true), "a%2Fb");
    }
}

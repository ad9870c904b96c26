//! The replica's object storage, behind one synchronous client: the
//! `object_store` crate's S3 client (or its in-memory store, for tests)
//! driven by a current-thread tokio runtime owned by whoever holds the
//! client. Every call is bounded in time: a paused or vanished server
//! costs a timeout, never a thread stuck for good.

use std::cell::Cell;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, GetResult, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion, WriteMultipart,
};

/// Larger ones go up in parts of this size, at most two in flight.
pub const PART_BYTES: usize = 16 << 20;
/// One request's limit (a segment or base upload included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Retries of one call (server errors, timeouts) before it fails.
const MAX_RETRIES: usize = 2;
/// All retries of one call together.
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a replica lives: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaUrl {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl ReplicaUrl {
    /// Parses `s3://bucket/prefix`.
    pub fn parse(url: &str) -> Result<ReplicaUrl, String> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(if url.starts_with("file://") {
                format!(
                    "{url}: file:// replicas are not supported (the commit point needs conditional updates, which a directory cannot give); use an S3-compatible server"
                )
            } else {
                format!("{url}: expected s3://bucket/prefix")
            });
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if bucket.len() < 3 || !bucket.chars().all(valid) {
            return Err(format!(
                "{url}: {bucket:?} is not a bucket name (3 or more of a-z, 0-9, '-', '.')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|p| p.is_empty() && !prefix.is_empty() || p == "." || p == "..")
        {
            return Err(format!(
                "{url}: the prefix {prefix:?} has an empty, '.' or '..' part"
            ));
        }
        Ok(ReplicaUrl {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl std::fmt::Display for ReplicaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// What a conditional write found.
#[derive(Debug)]
pub enum Cas {
    /// Written; the object's new version.
    Written(UpdateVersion),
    /// The object was not as expected (someone else wrote it, or it is
    /// missing, or it exists already).
    Lost,
}

/// A failed call to the object store, in one line.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

/// A synchronous client of one replica's objects.
pub struct Client {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    url: ReplicaUrl,
    /// Calls are cut short here, when set (a clean stop's bound).
    deadline: Cell<Option<Instant>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One line for an object-store error: its kind and the innermost cause,
/// without the crate's multi-line source chain.
fn line(e: &object_store::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    // An S3 error body: its code and message, not the XML around them.
    let tag = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].to_owned())
    };
    if let (Some(code), Some(message)) = (tag("Code"), tag("Message")) {
        let status = text.split('<').next().unwrap_or("").trim().trim_end_matches(':');
        text = format!("{status} ({code}: {message})");
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Client {
    /// A client of the S3 replica at `url`, with the credentials, region
    /// and endpoint from the standard environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`).
    pub fn s3(url: &ReplicaUrl) -> Result<Client, String> {
        // These options replace the ones `from_env` read: AWS_ALLOW_HTTP
        // is applied again here.
        let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let options = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_allow_http(allow_http);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&url.bucket)
            .with_client_options(options)
            .with_retry(retry);
        // `from_env` reads AWS_ENDPOINT but not the newer AWS_ENDPOINT_URL.
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder.with_endpoint(endpoint);
        }
        if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            builder = builder.with_region("us-east-1");
        }
        let store = builder.build().map_err(|e| format!("{url}: {}", line(&e)))?;
        Client::with_store(Arc::new(store), url.clone())
    }

    /// A client of an in-memory store (for tests), named `url`.
    #[cfg(test)]
    pub fn in_memory(url: &ReplicaUrl) -> Client {
        Client::with_store(Arc::new(object_store::memory::InMemory::new()), url.clone())
            .expect("a current-thread runtime starts")
    }

    /// Another client of the same objects, on a runtime of its own.
    #[cfg(test)]
    pub fn share(&self) -> Client {
        Client::with_store(self.store.clone(), self.url.clone()).expect("a current-thread runtime starts")
    }

    fn with_store(store: Arc<dyn ObjectStore>, url: ReplicaUrl) -> Result<Client, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the replica's runtime: {e}"))?;
        Ok(Client {
            store,
            runtime,
            url,
            deadline: Cell::new(None),
        })
    }

    /// Cuts every call short at `deadline` from now on (`None`: each call
    /// has only its own timeouts).
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        self.deadline.set(deadline);
    }

    /// Runs `call` on the runtime, cut short at the deadline if one is set.
    fn run<T>(
        &self,
        name: &str,
        call: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let Some(deadline) = self.deadline.get() else {
            return self.runtime.block_on(call);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        self.runtime
            .block_on(async { tokio::time::timeout(left, call).await })
            .unwrap_or_else(|_| {
                Err(ClientError(format!(
                    "{}/{name}: no answer before the clean stop's deadline",
                    self.url
                )))
            })
    }

    /// The replica's URL.
    pub fn url(&self) -> &ReplicaUrl {
        &self.url
    }

    fn key(&self, name: &str) -> Key {
        if self.url.prefix.is_empty() {
            Key::from(name)
        } else {
            Key::from(format!("{}/{name}", self.url.prefix))
        }
    }

    fn fail(&self, what: &str, name: &str, e: &object_store::Error) -> ClientError {
        ClientError(format!("{what} {}/{name}: {}", self.url, line(e)))
    }

    /// Starts reading object `name`; `None` if there is none.
    async fn open(&self, name: &str) -> Result<Option<GetResult>, ClientError> {
        match self.store.get(&self.key(name)).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("reading", name, &e)),
        }
    }

    /// Object `name` and its version; `None` if there is none. An object
    /// longer than `cap` bytes is refused before it is read.
    pub fn get(&self, name: &str, cap: u64) -> Result<Option<(Bytes, UpdateVersion)>, ClientError> {
        self.run(name, async {
            let Some(result) = self.open(name).await? else {
                return Ok(None);
            };
            if result.meta.size > cap {
                return Err(ClientError(format!(
                    "{}/{name} is {} bytes, more than it can be ({cap})",
                    self.url, result.meta.size
                )));
            }
            let version = UpdateVersion {
                e_tag: result.meta.e_tag.clone(),
                version: result.meta.version.clone(),
            };
            let bytes = result.bytes().await.map_err(|e| self.fail("reading", name, &e))?;
            Ok(Some((bytes, version)))
        })
    }

    /// Writes object `name` as `prefix` followed by the `len` bytes of
    /// `file` at `offset`, replacing any, in a multipart upload of
    /// [`PART_BYTES`] parts, at most two in flight: an object of many
    /// gigabytes is never held in memory. Returns the BLAKE3 hash of the
    /// bytes sent.
    pub fn put_from_file(
        &self,
        name: &str,
        prefix: &[u8],
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<blake3::Hash, ClientError> {
        let read = |buf: &mut [u8], at: u64| {
            file.read_exact_at(buf, offset + at)
                .map_err(|e| ClientError(format!("reading what {}/{name} is made of: {e}", self.url)))
        };
        let key = self.key(name);
        self.run(name, async {
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| self.fail("writing", name, &e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut hasher = blake3::Hasher::new();
            hasher.update(prefix);
            writer.write(prefix);
            let mut buf = vec![0; PART_BYTES];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(PART_BYTES as u64) as usize;
                if let Err(e) = read(&mut buf[..n], at) {
                    writer.abort().await.ok();
                    return Err(e);
                }
                hasher.update(&buf[..n]);
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| self.fail("writing", name, &e))?;
                writer.write(&buf[..n]);
                at += n as u64;
            }
            writer
                .finish()
                .await
                .map_err(|e| self.fail("writing", name, &e))?;
            Ok(hasher.finalize())
        })
    }

    /// Reads object `name` into `file` (from its start) as it arrives;
    /// returns its length and BLAKE3 hash, or `None` if there is none.
    /// Reading stops past `limit` bytes (the length returned is then more
    /// than `limit`).
    pub fn get_to_file(
        &self,
        name: &str,
        file: &mut File,
        limit: u64,
    ) -> Result<Option<(u64, blake3::Hash)>, ClientError> {
        self.run(name, async {
            let Some(result) = self.open(name).await? else {
                return Ok(None);
            };
            let mut stream = result.into_stream();
            let mut hasher = blake3::Hasher::new();
            let mut len = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.fail("reading", name, &e))?;
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .map_err(|e| ClientError(format!("writing {}/{name} to disk: {e}", self.url)))?;
                len += chunk.len() as u64;
                if len > limit {
                    break;
                }
            }
            Ok(Some((len, hasher.finalize())))
        })
    }

    /// Writes object `name` whole, replacing any.
    pub fn put(&self, name: &str, bytes: Bytes) -> Result<(), ClientError> {
        let key = self.key(name);
        self.run(name, async {
            self.store
                .put(&key, PutPayload::from_bytes(bytes))
                .await
                .map(drop)
                .map_err(|e| self.fail("writing", name, &e))
        })
    }

    /// Writes object `name` if it does not exist (`version: None`) or if
    /// its version is `version`.
    pub fn put_if(
        &self,
        name: &str,
        bytes: Bytes,
        version: Option<UpdateVersion>,
    ) -> Result<Cas, ClientError> {
        let key = self.key(name);
        let mode = match version {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v),
        };
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        self.run(name, async {
            match self
                .store
                .put_opts(&key, PutPayload::from_bytes(bytes), options)
                .await
            {
                Ok(put) => Ok(Cas::Written(put.into())),
                // A lost race; a server may answer a missing object's
                // If-Match with either.
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::NotFound { .. },
                ) => Ok(Cas::Lost),
                Err(e) => Err(self.fail("writing", name, &e)),
            }
        })
    }

    /// Removes object `name` (none is no error).
    pub fn delete(&self, name: &str) -> Result<(), ClientError> {
        let key = self.key(name);
        self.run(name, async {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.fail("removing", name, &e)),
            }
        })
    }
}

//! The remote object store: a blocking facade over one S3-compatible bucket (and key prefix).
//!
//! It owns the `object_store` S3 client and a small tokio runtime that drives it, so the rest of
//! dedupfs (plain threads, no async) calls ordinary blocking methods. It knows nothing of packs,
//! chunks or volumes: it moves bytes by key. `tests/remote_garage.rs` is its contract suite, run
//! against a real Garage server.
//!
//! Contract:
//! - **Bounded time.** Connecting gives up after `connect_timeout`, one request after
//!   `request_timeout`; transient failures (connection refused or reset, 5xx, 429, and timeouts
//!   of idempotent requests) are retried with exponential backoff and jitter, at most
//!   `max_retries` times and not after `retry_timeout`. No call hangs on a dead endpoint.
//! - **`put` overwrites and is idempotent.** A retry after an ambiguous failure (the reply lost
//!   after the server stored the object) stores the same bytes again. Callers that need an object
//!   written once must name it so that a repeated put is harmless (immutable, content- or
//!   generation-named keys).
//! - **Conditional writes are advisory.** `create` sends `If-None-Match: *` and `replace_if`
//!   `If-Match`; some stores ignore both and overwrite (Garage 2.5 does, see
//!   `tests/remote_garage.rs`). [`RemoteStore::conditional_create_honoured`] tells which kind
//!   of store this is; never rely on the headers alone for mutual exclusion.
//! - **Integrity in transit.** Requests are signed with SigV4 over the body's SHA-256, so the
//!   server refuses an upload damaged on the way instead of storing it.
//! - **Errors name what to fix**: endpoint unreachable, credentials refused, bucket missing,
//!   object missing ([`RemoteError`]).
//!
//! Not to be called from inside an async runtime (its `block_on` would panic); dedupfs has none.

use crate::error::RemoteError;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime};

pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// The open multipart uploads a journal records, one `KEY UPLOAD-ID` line each (a missing
/// journal records none).
fn read_journal(journal: &std::path::Path) -> Result<Vec<(String, String)>> {
    match std::fs::read_to_string(journal) {
        Ok(t) => Ok(t
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, id)| (k.to_string(), id.to_string()))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(RemoteError::LocalRead {
            key: journal.display().to_string(),
            detail: e.to_string(),
        }),
    }
}

/// Makes `journal` record exactly `open`, durably (a temporary name, fsync, rename, fsync of
/// the directory; removed when empty).
fn write_journal(journal: &std::path::Path, open: &[(String, String)]) -> Result<()> {
    let local = |e: std::io::Error| RemoteError::LocalWrite {
        key: journal.display().to_string(),
        detail: e.to_string(),
    };
    let dir = journal.parent().unwrap_or(std::path::Path::new("."));
    if open.is_empty() {
        match std::fs::remove_file(journal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(local(e)),
        }
    } else {
        let tmp = journal.with_extension("tmp");
        let text: String = open.iter().map(|(k, id)| format!("{k} {id}\n")).collect();
        let f = std::fs::File::create(&tmp).map_err(local)?;
        std::io::Write::write_all(&mut &f, text.as_bytes()).map_err(local)?;
        f.sync_all().map_err(local)?;
        std::fs::rename(&tmp, journal).map_err(local)?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(local)
}

/// Largest piece of an object moved in one request by [`RemoteStore::put_file`] and
/// [`RemoteStore::get_to`] (and so held in memory).
pub const PART_LEN: u64 = 16 << 20;

/// The region when neither `AWS_REGION` nor `AWS_DEFAULT_REGION` names one (AWS's default;
/// S3-compatible stores have their own: Garage's is whatever its `s3_region` says).
pub const DEFAULT_REGION: &str = "us-east-1";

/// How to reach the bucket. `Debug` leaves the secret out.
#[derive(Clone)]
pub struct RemoteConfig {
    /// `http(s)://host:port` of an S3-compatible store; `None` for AWS S3 itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Prepended (with a `/`) to every key; empty for none.
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// TCP connect (and TLS handshake) limit. Small: a store that does not accept a connection
    /// in this time is down or unreachable, and the caller should hear so quickly.
    pub connect_timeout: Duration,
    /// Limit for one request, body included: must fit the largest object (a 32 MiB pack) at the
    /// slowest link the volume should still work over (60 s: about 0.5 MiB/s).
    pub request_timeout: Duration,
    pub max_retries: usize,
    /// No retry starts after this long since the first attempt.
    pub retry_timeout: Duration,
}

impl RemoteConfig {
    /// A bucket on AWS S3 in [`DEFAULT_REGION`], with the default limits; set `endpoint`,
    /// `region` and `prefix` for anything else.
    pub fn new(bucket: &str, access_key_id: &str, secret_access_key: &str) -> RemoteConfig {
        RemoteConfig {
            endpoint: None,
            region: DEFAULT_REGION.to_string(),
            bucket: bucket.to_string(),
            prefix: String::new(),
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            max_retries: 6,
            retry_timeout: Duration::from_secs(30),
        }
    }

    /// `s3://BUCKET/PREFIX` with the endpoint, region and credentials from the environment:
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
    pub fn from_env(url: &str) -> Result<RemoteConfig> {
        RemoteConfig::from_vars(url, |name| std::env::var(name).ok())
    }

    /// [`RemoteConfig::from_env`] with the variables read through `var` (for tests: setting
    /// the process environment is unsafe while other threads run).
    pub fn from_vars(url: &str, var: impl Fn(&str) -> Option<String>) -> Result<RemoteConfig> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let required = |name: &str| {
            var(name)
                .ok_or_else(|| RemoteError::Config(format!("{name} is not set (needed for {url})")))
        };
        let mut config = RemoteConfig::new(
            &bucket,
            &required("AWS_ACCESS_KEY_ID")?,
            &required("AWS_SECRET_ACCESS_KEY")?,
        );
        config.prefix = prefix;
        config.endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        if let Some(region) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            config.region = region;
        }
        config.session_token = var("AWS_SESSION_TOKEN");
        Ok(config)
    }

    /// The endpoint as error messages name it.
    pub fn endpoint_display(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }
}

impl fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .finish_non_exhaustive()
    }
}

/// `s3://BUCKET[/PREFIX]` -> (bucket, prefix without leading or trailing `/`).
pub fn parse_s3_url(url: &str) -> Result<(String, String)> {
    let bad =
        |why: &str| RemoteError::Config(format!("{url}: {why} (expected s3://BUCKET/PREFIX)"));
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket"));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        object_path(prefix).map_err(|_| bad("the prefix is not a valid key"))?;
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// What `head` and `list` report of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the configured prefix.
    pub key: String,
    pub size: u64,
    /// The store's clock when the object was last written (HTTP-date precision, whole seconds,
    /// from `head`; list results may be finer).
    pub last_modified: SystemTime,
    pub e_tag: Option<String>,
}

impl From<object_store::ObjectMeta> for ObjectInfo {
    fn from(m: object_store::ObjectMeta) -> Self {
        ObjectInfo {
            key: m.location.to_string(),
            size: m.size,
            last_modified: m.last_modified.into(),
            e_tag: m.e_tag,
        }
    }
}

/// One bucket (under a prefix), with blocking methods. Cheap to share between threads (`&self`
/// everywhere); concurrent calls run concurrently.
pub struct RemoteStore {
    runtime: tokio::runtime::Runtime,
    store: PrefixStore<AmazonS3>,
    endpoint: String,
    bucket: String,
    key_id: String,
    /// `s3://BUCKET/PREFIX`, as messages about the whole store name it.
    root: String,
}

/// Worker threads of the runtime: they only poll sockets; the callers' threads do the rest.
const RUNTIME_THREADS: usize = 2;

impl RemoteStore {
    /// Builds the client without touching the network (see [`RemoteStore::open`]).
    pub fn new(config: &RemoteConfig) -> Result<RemoteStore> {
        if config.bucket.is_empty() {
            return Err(RemoteError::Config("no bucket given".to_string()));
        }
        // Credentials are required: without them the AWS client would fall back to probing
        // instance metadata (169.254.169.254), which hangs or misleads off EC2.
        if config.access_key_id.is_empty() || config.secret_access_key.is_empty() {
            return Err(RemoteError::Config(
                "an access key id and a secret key are required \
                 (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
                    .to_string(),
            ));
        }
        install_tls_provider();
        let endpoint = config.endpoint_display();
        let mut client = ClientOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout);
        if endpoint.starts_with("http://") {
            client = client.with_allow_http(true);
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: config.max_retries,
            retry_timeout: config.retry_timeout,
        };
        // Path-style requests (host/bucket/key): S3-compatible stores (Garage, MinIO without
        // DNS set up) do not resolve bucket.host names; AWS accepts both.
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_virtual_hosted_style_request(false)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(e) = &config.endpoint {
            builder = builder.with_endpoint(e);
        }
        if let Some(t) = &config.session_token {
            builder = builder.with_token(t);
        }
        let s3 = builder
            .build()
            .map_err(|e| RemoteError::Config(format!("{endpoint}: {e}")))?;
        let store = PrefixStore::new(s3, config.prefix.as_str());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("dedupfs-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot start the I/O runtime: {e}")))?;
        Ok(RemoteStore {
            runtime,
            store,
            endpoint,
            bucket: config.bucket.clone(),
            key_id: config.access_key_id.clone(),
            root: format!("s3://{}/{}", config.bucket, config.prefix),
        })
    }

    /// [`RemoteStore::new`], then [`RemoteStore::check`]: the store answers, knows the key and
    /// has the bucket.
    pub fn open(config: &RemoteConfig) -> Result<RemoteStore> {
        let store = RemoteStore::new(config)?;
        store.check()?;
        Ok(store)
    }

    /// One listing request under the prefix. A missing bucket, refused credentials or an
    /// unreachable endpoint come back as their own errors, with the response's reason (a HEAD
    /// of a missing bucket has no body to tell it from a missing object).
    pub fn check(&self) -> Result<()> {
        self.runtime
            .block_on(async { self.store.list(None).try_next().await })
            .map(|_| ())
            .map_err(|e| self.error("LIST", &self.root, e))
    }

    /// Stores `bytes` under `key`, replacing any object there. Retried on transient failures.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_mode(key, bytes, PutMode::Overwrite)
    }

    /// Stores `bytes` under `key` only if no object is there (`If-None-Match: *`):
    /// [`RemoteError::AlreadyExists`] otherwise, on stores that honour the header. A retry of
    /// an ambiguous attempt that did store the object also reports `AlreadyExists`.
    pub fn create(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_mode(key, bytes, PutMode::Create)
    }

    /// Replaces the object under `key` only if its ETag is still `e_tag` (`If-Match`):
    /// [`RemoteError::Precondition`] otherwise, on stores that honour the header.
    pub fn replace_if(&self, key: &str, bytes: Vec<u8>, e_tag: &str) -> Result<()> {
        let version = UpdateVersion {
            e_tag: Some(e_tag.to_string()),
            version: None,
        };
        self.put_mode(key, bytes, PutMode::Update(version))
    }

    fn put_mode(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> Result<()> {
        let path = self.path(key)?;
        let opts = PutOptions::from(mode);
        self.runtime
            .block_on(self.store.put_opts(&path, PutPayload::from(bytes), opts))
            .map(|_| ())
            .map_err(|e| self.error("PUT", key, e))
    }

    /// Stores the first `len` bytes of `file` under `key`, replacing any object there, with
    /// at most [`PART_LEN`] bytes of it in memory: one PUT up to that size, a multipart upload
    /// in parts of that size (more past 9,000 parts, under S3's limit of 10,000) beyond it,
    /// each part retried on its own. Idempotent like [`RemoteStore::put`].
    ///
    /// A multipart upload is recorded in `journal` (a local file, written durably once the
    /// upload exists and removed once it is complete or aborted): a failed one is aborted (its
    /// parts deleted) and, if even that fails, or the process dies first, left in `journal`
    /// for [`RemoteStore::abort_abandoned`].
    pub fn put_file(
        &self,
        key: &str,
        file: &std::fs::File,
        len: u64,
        journal: &std::path::Path,
    ) -> Result<()> {
        self.put_file_parts(key, file, len, journal, None)
    }

    /// Test support: [`RemoteStore::put_file`] that stops after `parts` parts and returns as a
    /// process killed there would leave things: the upload open, its journal in place.
    #[doc(hidden)]
    pub fn put_file_abandoned_after(
        &self,
        key: &str,
        file: &std::fs::File,
        len: u64,
        journal: &std::path::Path,
        parts: usize,
    ) -> Result<()> {
        self.put_file_parts(key, file, len, journal, Some(parts))
    }

    fn put_file_parts(
        &self,
        key: &str,
        file: &std::fs::File,
        len: u64,
        journal: &std::path::Path,
        stop_after: Option<usize>,
    ) -> Result<()> {
        use object_store::multipart::MultipartStore;
        use std::os::unix::fs::FileExt;
        let read = |at: u64, n: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, at)
                .map_err(|e| RemoteError::LocalRead {
                    key: key.to_string(),
                    detail: e.to_string(),
                })?;
            Ok(buf)
        };
        if len <= PART_LEN {
            return self.put(key, read(0, len as usize)?);
        }
        let part = PART_LEN.max(len.div_ceil(9_000).next_multiple_of(1 << 20));
        let path = self.path(key)?;
        let id = self
            .runtime
            .block_on(self.store.create_multipart(&path))
            .map_err(|e| self.error("PUT", key, e))?;
        let mut open = read_journal(journal)?;
        let forget = |mut open: Vec<(String, String)>| {
            open.retain(|(_, i)| *i != id);
            write_journal(journal, &open)
        };
        let abort = |e: RemoteError| -> RemoteError {
            match self
                .runtime
                .block_on(self.store.abort_multipart(&path, &id))
            {
                Ok(()) => {
                    if let Err(w) = read_journal(journal).and_then(forget) {
                        tracing::warn!("{w}");
                    }
                }
                Err(a) => tracing::warn!(
                    "multipart upload of {key} left open, recorded in {} for the next attempt: {}",
                    journal.display(),
                    self.error("DELETE", key, a)
                ),
            }
            e
        };
        open.push((key.to_string(), id.clone()));
        write_journal(journal, &open).map_err(&abort)?;
        let mut parts = Vec::new();
        let mut at = 0;
        while at < len {
            if stop_after == Some(parts.len()) {
                return Ok(());
            }
            let n = part.min(len - at) as usize;
            let bytes = read(at, n).map_err(&abort)?;
            let done = self
                .runtime
                .block_on(
                    self.store
                        .put_part(&path, &id, parts.len(), PutPayload::from(bytes)),
                )
                .map_err(|e| abort(self.error("PUT", key, e)))?;
            parts.push(done);
            at += n as u64;
        }
        self.runtime
            .block_on(self.store.complete_multipart(&path, &id, parts))
            .map_err(|e| abort(self.error("PUT", key, e)))?;
        // Stored. A journal line left by a failure here is forgotten by the next
        // abort_abandoned (the upload is gone: NotFound).
        if let Err(e) = read_journal(journal).and_then(forget) {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// Aborts the multipart uploads recorded in `journal` (see [`RemoteStore::put_file`])
    /// and forgets them; one that cannot be aborted now stays recorded (the first such error
    /// is returned). Returns how many were aborted (or found gone already).
    pub fn abort_abandoned(&self, journal: &std::path::Path) -> Result<usize> {
        use object_store::multipart::MultipartStore;
        let open = read_journal(journal)?;
        if open.is_empty() {
            return Ok(0);
        }
        let (mut kept, mut first_err, mut done) = (Vec::new(), None, 0);
        for (key, id) in open {
            let r = self.path(&key).and_then(|path| {
                self.runtime
                    .block_on(self.store.abort_multipart(&path, &id))
                    .map_err(|e| self.error("DELETE", &key, e))
            });
            match r {
                // Gone already: completed, or aborted before the journal was rewritten.
                Ok(()) | Err(RemoteError::NotFound { .. }) => {
                    tracing::info!("aborted a multipart upload of {key} left unfinished");
                    done += 1;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    kept.push((key, id));
                }
            }
        }
        write_journal(journal, &kept)?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// The whole object, written to `file` from its current position, in ranges of at most
    /// [`PART_LEN`] bytes (each retried on its own, each within the request timeout), so
    /// that memory stays bounded and a large object downloads over a slow link. Returns its
    /// length.
    /// Every range is asked for with the ETag of the first HEAD (`If-Match`): an object
    /// replaced meanwhile is reported as changed ([`RemoteError::Precondition`]) rather than
    /// downloaded half old, half new.
    pub fn get_to(&self, key: &str, file: &mut std::fs::File) -> Result<u64> {
        let head = self.head(key)?;
        let (len, e_tag) = (head.size, head.e_tag);
        let mut at = 0;
        while at < len {
            let end = (at + PART_LEN).min(len);
            let bytes = self.range_if(key, at..end, e_tag.clone())?;
            std::io::Write::write_all(file, &bytes).map_err(|e| RemoteError::LocalWrite {
                key: key.to_string(),
                detail: e.to_string(),
            })?;
            at = end;
        }
        Ok(len)
    }

    /// The whole object.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        self.runtime
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map(Vec::from)
            .map_err(|e| self.error("GET", key, e))
    }

    /// Bytes `range` of the object, exactly: a range reaching past the end is an error, not a
    /// short result. An empty range is read without a request.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.range_if(key, range, None)
    }

    /// [`RemoteStore::get_range`], of the object version with ETag `if_match` when given
    /// ([`RemoteError::Precondition`] if the object is another one now).
    fn range_if(&self, key: &str, range: Range<u64>, if_match: Option<String>) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let opts = object_store::GetOptions {
            if_match,
            range: Some(object_store::GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let bytes = self
            .runtime
            .block_on(async { self.store.get_opts(&path, opts).await?.bytes().await })
            .map_err(|e| self.error("GET", key, e))?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(RemoteError::ShortRead {
                key: key.to_string(),
                start: range.start,
                end: range.end,
                got: bytes.len() as u64,
            });
        }
        Ok(Vec::from(bytes))
    }

    /// Size, Last-Modified (the store's clock) and ETag of the object.
    pub fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = self.path(key)?;
        let meta = self
            .runtime
            .block_on(self.store.head(&path))
            .map_err(|e| self.error("HEAD", key, e))?;
        Ok(ObjectInfo::from(meta))
    }

    /// Every object whose key starts with the path `prefix` (whole `/`-separated segments:
    /// `packs` lists `packs/1` but not `packs2`; empty for all), in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = if prefix.trim_matches('/').is_empty() {
            None
        } else {
            Some(self.path(prefix.trim_matches('/'))?)
        };
        let mut found: Vec<ObjectInfo> = self
            .runtime
            .block_on(async {
                let mut out = Vec::new();
                let mut stream = self.store.list(path.as_ref());
                while let Some(meta) = stream.try_next().await? {
                    out.push(ObjectInfo::from(meta));
                }
                Ok(out)
            })
            .map_err(|e| self.error("LIST", prefix, e))?;
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    /// Removes the object; removing a missing object is not an error (S3's semantics).
    pub fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        self.runtime
            .block_on(self.store.delete(&path))
            .map_err(|e| self.error("DELETE", key, e))
    }

    /// Whether the store refuses a `create` of an existing object, found by trying it on
    /// `probe_key` (which must be the caller's own scratch key: it is overwritten and deleted).
    pub fn conditional_create_honoured(&self, probe_key: &str) -> Result<bool> {
        self.delete(probe_key)?;
        self.create(probe_key, b"first".to_vec())?;
        let honoured = match self.create(probe_key, b"second".to_vec()) {
            Err(RemoteError::AlreadyExists { .. }) => true,
            Ok(()) => false,
            Err(e) => return Err(e),
        };
        self.delete(probe_key)?;
        Ok(honoured)
    }

    fn path(&self, key: &str) -> Result<ObjectPath> {
        object_path(key)
    }

    /// Turns a client error into one that says what to fix. object_store reports the HTTP
    /// status as the variant and keeps the response body (S3's XML `<Code>` and `<Message>`)
    /// and the transport error (`HttpError`) in the source chain.
    fn error(&self, op: &'static str, key: &str, e: object_store::Error) -> RemoteError {
        let text = chain_text(&e);
        let auth = |text: &str| RemoteError::Auth {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            key_id: self.key_id.clone(),
            detail: s3_reason(text),
        };
        // Not every request maps the status to a variant (a LIST error is `Generic`), but
        // every S3 error response with a body names its cause in `<Code>`.
        match xml_field(&text, "Code").as_deref() {
            Some("NoSuchBucket") => {
                return RemoteError::NoBucket {
                    endpoint: self.endpoint.clone(),
                    bucket: self.bucket.clone(),
                };
            }
            Some("NoSuchKey") => {
                return RemoteError::NotFound {
                    key: key.to_string(),
                };
            }
            Some(code) if AUTH_CODES.contains(&code) => return auth(&text),
            _ => {}
        }
        match e {
            object_store::Error::NotFound { .. } => RemoteError::NotFound {
                key: key.to_string(),
            },
            object_store::Error::AlreadyExists { .. } => RemoteError::AlreadyExists {
                key: key.to_string(),
            },
            object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. } => {
                RemoteError::Precondition {
                    key: key.to_string(),
                }
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => auth(&text),
            e => match http_error_kind(&e) {
                Some(HttpErrorKind::Connect) | Some(HttpErrorKind::Request) => {
                    RemoteError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        detail: text,
                    }
                }
                Some(HttpErrorKind::Timeout) => RemoteError::Timeout {
                    endpoint: self.endpoint.clone(),
                    op,
                    key: key.to_string(),
                    detail: text,
                },
                _ => RemoteError::Other {
                    endpoint: self.endpoint.clone(),
                    op,
                    key: key.to_string(),
                    detail: text,
                },
            },
        }
    }
}

/// Makes ring the process's TLS crypto provider, unless one is already chosen. We build
/// reqwest's rustls without a bundled provider and give object_store ring for signing: the
/// default (aws-lc-rs) compiles a C library that doubled a clean release build's CPU time.
fn install_tls_provider() {
    // Err only means a provider is installed already, which serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// S3 error codes that mean "these credentials may not do this": the key, the secret, the
/// region (part of the signature), the clock (signatures expire) or the key's permissions.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "RequestTimeTooSkewed",
    "SignatureDoesNotMatch",
];

fn object_path(key: &str) -> Result<ObjectPath> {
    ObjectPath::parse(key)
        .ok()
        .filter(|p| !p.as_ref().is_empty())
        .ok_or_else(|| RemoteError::Config(format!("{key:?} is not a valid object key")))
}

/// The error and its sources, `: `-separated (object_store puts the useful part, the response
/// body or the socket error, several levels down).
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn http_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        source = s.source();
    }
    None
}

/// `<Code>: <Message>` of an S3 error body inside `text`, or `text` itself.
fn s3_reason(text: &str) -> String {
    match (xml_field(text, "Code"), xml_field(text, "Message")) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code,
        (None, Some(msg)) => msg,
        (None, None) => text.to_string(),
    }
}

/// The text of the first `<tag>` element in `text`, with XML's predefined entities decoded.
fn xml_field(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&format!("</{tag}>"))?;
    Some(
        text[start..start + len]
            .replace("&apos;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_give_bucket_and_prefix() {
        let p = |u| parse_s3_url(u).unwrap();
        assert_eq!(p("s3://b"), ("b".into(), "".into()));
        assert_eq!(p("s3://b/"), ("b".into(), "".into()));
        assert_eq!(p("s3://b/vols/one/"), ("b".into(), "vols/one".into()));
        assert!(parse_s3_url("http://b/x").is_err());
        assert!(parse_s3_url("s3:///x").is_err());
        assert!(parse_s3_url("s3://b/a//c").is_err());
    }

    #[test]
    fn config_from_variables() {
        let vars = |name: &str| {
            match name {
                "AWS_ACCESS_KEY_ID" => Some("GK1"),
                "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t"),
                "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:3900"),
                "AWS_REGION" => Some("garage"),
                _ => None,
            }
            .map(String::from)
        };
        let c = RemoteConfig::from_vars("s3://bkt/pre", vars).unwrap();
        assert_eq!(c.bucket, "bkt");
        assert_eq!(c.prefix, "pre");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(c.region, "garage");
        assert!(!format!("{c:?}").contains("s3cr3t"));

        let missing = RemoteConfig::from_vars("s3://bkt", |_| None).unwrap_err();
        assert!(
            missing.to_string().contains("AWS_ACCESS_KEY_ID"),
            "{missing}"
        );
    }

    #[test]
    fn clients_build_for_https_http_and_aws() {
        // Builds reqwest's rustls client with the ring provider (a missing provider panics
        // here, not at the first request).
        for endpoint in [
            Some("https://s3.example.net"),
            Some("http://127.0.0.1:1"),
            None,
        ] {
            let c = RemoteConfig {
                endpoint: endpoint.map(String::from),
                ..RemoteConfig::new("b", "k", "s")
            };
            RemoteStore::new(&c).unwrap();
        }
        let no_key = RemoteConfig::new("b", "", "s");
        assert!(matches!(
            RemoteStore::new(&no_key),
            Err(RemoteError::Config(_))
        ));
    }

    #[test]
    fn s3_error_bodies_give_code_and_message() {
        let body = "403 Forbidden: <?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>\
                    <Message>Forbidden: Invalid signature</Message></Error>";
        assert_eq!(
            s3_reason(body),
            "AccessDenied: Forbidden: Invalid signature"
        );
        assert_eq!(s3_reason("connection refused"), "connection refused");
        let body = "<Code>AuthorizationHeaderMalformed</Code><Message>scope: &apos;a&amp;b&apos;\
                    </Message>";
        assert_eq!(
            s3_reason(body),
            "AuthorizationHeaderMalformed: scope: 'a&b'"
        );
    }
}

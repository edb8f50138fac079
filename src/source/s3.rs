//! S3 and DigitalOcean Spaces (aws-sdk-s3): listing page by page, bodies streamed with a cap,
//! every vendor error classified where it is converted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use futures::Stream;

use aws_smithy_http_client::tls;

use super::endpoint::{Endpoint, GuardedResolver, RefusedAddress};
use super::ranged::RangedReader;
use super::rate::RateLimiter;
use super::{Listed, ObjectMeta, Opened, Source, SourceKind};
use crate::error::{ErrorCode, FileError};
use crate::job::Secret;

/// Access key credentials.
#[derive(Debug, Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key (redacted in `Debug`).
    pub secret_key: Secret,
}

/// Client settings from `[s3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3ClientSettings {
    /// Attempts per request, including the first (throttling and 5xx are retried).
    pub max_attempts: u32,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for one whole operation, retries included (bodies are bounded by stall detection).
    pub operation_timeout: Duration,
    /// How long a body may stall before it is abandoned (and resumed).
    pub stall_timeout: Duration,
    /// Connect to internal addresses too (local test servers); otherwise every connection's
    /// DNS answer is checked by a [`GuardedResolver`].
    pub allow_private: bool,
}

/// Objects under `s3://bucket/prefix`, or the one object `s3://bucket/key`.
#[derive(Debug, Clone)]
pub struct S3Source {
    /// The configured client.
    client: Client,
    /// The bucket.
    bucket: String,
    /// Key prefix listed ("" for the whole bucket).
    prefix: String,
    /// S3 or Spaces, for record metadata.
    kind: SourceKind,
    /// Set when the target names one object: only it is listed.
    single: Option<ObjectMeta>,
    /// List only keys after this one (a continued listing).
    start_after: Option<String>,
    /// The process-wide request rate cap, shared by every source.
    limiter: Arc<RateLimiter>,
}

/// Clients kept at most; a worker serving more distinct credentials at once builds anew.
const MAX_CLIENTS: usize = 256;

/// One client per (endpoint, access key, secret), shared: each client holds a connection pool
/// and resolved settings, so jobs for the same data source reuse them.
#[derive(Debug)]
pub struct S3Clients {
    settings: S3ClientSettings,
    /// Keyed by endpoint URL, access key and a hash of the secret (a rotated secret is a new
    /// client; the secret itself is not kept as a key).
    clients: Mutex<HashMap<ClientKey, Client>>,
}

/// Endpoint URL, access key, BLAKE3 of the secret.
type ClientKey = (String, String, [u8; 32]);

impl S3Clients {
    /// An empty cache of clients with `settings`.
    #[must_use]
    pub fn new(settings: S3ClientSettings) -> Self {
        S3Clients {
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `endpoint` and `credentials`, built on first use. The endpoint must
    /// already have passed the [`super::endpoint::EndpointPolicy`].
    pub fn client(&self, endpoint: &Endpoint, credentials: &S3Credentials) -> Client {
        let key = (
            endpoint.url.clone(),
            credentials.access_key.clone(),
            *blake3::hash(credentials.secret_key.expose().as_bytes()).as_bytes(),
        );
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let client = build_client(endpoint, credentials, self.settings);
        clients.insert(key, client.clone());
        client
    }

    /// Clients built and kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no client has been built.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn build_client(
    endpoint: &Endpoint,
    credentials: &S3Credentials,
    settings: S3ClientSettings,
) -> Client {
    let credentials = Credentials::new(
        &credentials.access_key,
        credentials.secret_key.expose(),
        None,
        None,
        "ingestd",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(endpoint.region.clone()))
        .credentials_provider(credentials)
        .endpoint_url(&endpoint.url)
        // Path style works on every S3-compatible store and with dotted bucket names.
        .force_path_style(true)
        // S3-compatible providers reject the checksum headers the SDK now sends by default.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_timeout(settings.operation_timeout)
                .build(),
        )
        .stalled_stream_protection(
            StalledStreamProtectionConfig::enabled()
                .grace_period(settings.stall_timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts));
    let config = if settings.allow_private {
        config
    } else {
        config.http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .build_with_resolver(GuardedResolver),
        )
    };
    Client::from_conf(config.build())
}

impl S3Source {
    /// A source for `bucket`/`prefix` read with `client` (from [`S3Clients`]).
    #[must_use]
    pub fn new(
        client: Client,
        kind: SourceKind,
        bucket: &str,
        prefix: &str,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        S3Source {
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            kind,
            single: None,
            start_after: None,
            limiter,
        }
    }

    /// The same source listing only keys after `key` (to continue a listing elsewhere).
    #[must_use]
    pub fn after(mut self, key: Option<&str>) -> Self {
        self.start_after = key.map(str::to_owned);
        self
    }

    /// Every bucket the key can see (the source's own bucket plays no part).
    ///
    /// # Errors
    /// Classified errors: `ACCESS_DENIED` for wrong credentials, `SOURCE_UNAVAILABLE` when the
    /// endpoint keeps failing.
    pub async fn buckets(&self) -> Result<Vec<BucketMeta>, FileError> {
        list_buckets(&self.client, &self.limiter).await
    }

    /// Narrows the source to the object its prefix names, when there is one (`s3://b/key`).
    ///
    /// # Errors
    /// Classified errors other than "not found" (wrong credentials, missing bucket).
    pub async fn narrow_to_exact_object(mut self) -> Result<Self, FileError> {
        self.single = self.exact_object().await?;
        Ok(self)
    }

    /// Whether the source is one object (found by [`S3Source::narrow_to_exact_object`]).
    #[must_use]
    pub fn is_single(&self) -> bool {
        self.single.is_some()
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn bucket(&self) -> &str {
        &self.bucket
    }

    pub(super) fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// `object` as `Read + Seek` from ranged GETs, pinned to its listed version, for formats
    /// that seek. Use it on a blocking thread: each missing block is fetched on this runtime.
    ///
    /// # Errors
    /// When called outside a tokio runtime.
    pub fn random_access(&self, object: &ObjectMeta) -> Result<RangedReader, FileError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|err| {
            FileError::permanent(
                ErrorCode::Internal,
                format!("random access needs a runtime: {err}"),
            )
        })?;
        Ok(RangedReader::new(
            runtime,
            self.clone(),
            object.key.clone(),
            object.etag.clone(),
            object.size,
        ))
    }

    /// The object `prefix` names, if it exists.
    async fn exact_object(&self) -> Result<Option<ObjectMeta>, FileError> {
        if self.prefix.is_empty() || self.prefix.ends_with('/') {
            return Ok(None);
        }
        match self.head(&self.prefix).await {
            Ok(object) => Ok(Some(object)),
            Err(err) if err.code == ErrorCode::NoSuchKey => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The object `key` of the source's bucket, described by a HEAD request.
    ///
    /// # Errors
    /// `NO_SUCH_KEY` when it does not exist (HEAD cannot tell a missing bucket apart), else a
    /// classified error.
    pub async fn head(&self, key: &str) -> Result<ObjectMeta, FileError> {
        self.limiter.acquire().await;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(ObjectMeta {
                content_type: head.content_type().map(str::to_owned),
                ..object_meta(
                    &self.bucket,
                    key,
                    head.content_length(),
                    head.e_tag(),
                    head.last_modified(),
                )
            }),
            Err(err)
                if err.as_service_error().is_some_and(
                    aws_sdk_s3::operation::head_object::HeadObjectError::is_not_found,
                ) =>
            {
                Err(FileError::permanent(
                    ErrorCode::NoSuchKey,
                    format!("s3://{}/{key} does not exist", self.bucket),
                ))
            }
            Err(err) => Err(classify(&err, "checking", &self.bucket, key)),
        }
    }
}

/// A bucket as ListBuckets describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketMeta {
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created: Option<SystemTime>,
}

/// Every bucket the client's key can see, page by page (ListBuckets pages past 10,000).
async fn list_buckets(
    client: &Client,
    limiter: &RateLimiter,
) -> Result<Vec<BucketMeta>, FileError> {
    let mut buckets = Vec::new();
    let mut token: Option<String> = None;
    loop {
        limiter.acquire().await;
        let page = client
            .list_buckets()
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|err| classify(&err, "listing buckets at", "", ""))?;
        buckets.extend(page.buckets().iter().filter_map(|bucket| {
            Some(BucketMeta {
                name: bucket.name()?.to_owned(),
                created: bucket
                    .creation_date()
                    .and_then(|t| SystemTime::try_from(*t).ok()),
            })
        }));
        match page.continuation_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
            _ => {
                // S3 lists by name; some compatible stores do not.
                buckets.sort_by(|a, b| a.name.cmp(&b.name));
                return Ok(buckets);
            }
        }
    }
}

/// An object as S3 describes it in listings and HEAD responses (no content type in listings).
fn object_meta(
    bucket: &str,
    key: &str,
    size: Option<i64>,
    etag: Option<&str>,
    last_modified: Option<&aws_sdk_s3::primitives::DateTime>,
) -> ObjectMeta {
    ObjectMeta {
        bucket: Some(bucket.to_owned()),
        key: key.to_owned(),
        size: size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        etag: etag.map(str::to_owned),
        last_modified: last_modified.and_then(|t| SystemTime::try_from(*t).ok()),
        content_type: None,
    }
}

/// Turns an SDK error into a classified file error. Messages carry the operation, the object
/// and the provider's code — never credentials.
pub(super) fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    doing: &str,
    bucket: &str,
    key: &str,
) -> FileError {
    let what = if key.is_empty() {
        format!("{doing} s3://{bucket}")
    } else {
        format!("{doing} s3://{bucket}/{key}")
    };
    if let SdkError::DispatchFailure(failure) = err
        && let Some(refused) = failure
            .as_connector_error()
            .and_then(|e| refused_address(e))
    {
        return FileError::permanent(ErrorCode::EndpointNotAllowed, format!("{what}: {refused}"));
    }
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let detail = service.err().message().unwrap_or("");
            let message = format!("{what}: {status} {code} {detail}")
                .trim_end()
                .to_owned();
            match (code, status) {
                ("NoSuchKey", _) => FileError::permanent(ErrorCode::NoSuchKey, message),
                ("NoSuchBucket", _) => FileError::permanent(ErrorCode::NoSuchBucket, message),
                (
                    "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "NotSignedUp"
                    | "InvalidToken"
                    | "ExpiredToken"
                    | "AllAccessDisabled",
                    _,
                )
                | (_, 401 | 403) => FileError::permanent(ErrorCode::AccessDenied, message),
                (_, 404) => FileError::permanent(ErrorCode::NoSuchKey, message),
                ("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout", _)
                | (_, 429 | 500..=599) => {
                    FileError::transient(ErrorCode::SourceUnavailable, message)
                }
                _ => FileError::permanent(ErrorCode::ReadFailed, message),
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            FileError::transient(
                ErrorCode::SourceUnavailable,
                format!("{what}: the endpoint did not answer ({})", kind_of(err)),
            )
        }
        _ => FileError::permanent(ErrorCode::ReadFailed, format!("{what}: {}", kind_of(err))),
    }
}

/// The [`RefusedAddress`] behind a failed connection, if that is what failed it.
fn refused_address<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a RefusedAddress> {
    let mut cause = Some(err);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<RefusedAddress>() {
            return Some(refused);
        }
        cause = current.source();
    }
    None
}

fn kind_of<E, R>(err: &SdkError<E, R>) -> &'static str {
    match err {
        SdkError::ConstructionFailure(_) => "request could not be built",
        SdkError::TimeoutError(_) => "timed out",
        SdkError::DispatchFailure(_) => "connection failed",
        SdkError::ResponseError(_) => "malformed response",
        SdkError::ServiceError(_) => "service error",
        _ => "unknown error",
    }
}

/// Paging state of a listing.
struct Pages {
    client: Client,
    limiter: Arc<RateLimiter>,
    bucket: String,
    prefix: String,
    /// Objects of the current page not yet handed out.
    buffered: VecDeque<Listed>,
    /// Keys up to this one are left out (first page only; the token carries it on).
    start_after: Option<String>,
    /// Where the next page starts; `None` before the first page.
    token: Option<String>,
    /// No more pages.
    done: bool,
    /// Objects listed so far.
    listed: u64,
    /// The prefix looks like one key (`s3://bucket/report.txt`): when nothing matches, say
    /// that the key does not exist rather than sync nothing.
    named_key: bool,
    /// The server said there was more but gave no way to get it: the listing did not end.
    cut_short: Option<FileError>,
}

impl Pages {
    /// What the end of the listing has to say: that it was cut short, or that the key it
    /// names does not exist; nothing when it simply ended.
    fn ended(&mut self) -> Option<Listed> {
        let error = if let Some(error) = self.cut_short.take() {
            error
        } else if self.listed == 0 && self.named_key {
            self.listed = 1;
            FileError::permanent(
                ErrorCode::NoSuchKey,
                format!(
                    "s3://{}/{} does not exist, and no key starts with it",
                    self.bucket, self.prefix
                ),
            )
        } else {
            return None;
        };
        Some(Listed::Problem {
            bucket: Some(self.bucket.clone()),
            key: self.prefix.clone(),
            error,
            skip: false,
        })
    }
}

impl Source for S3Source {
    fn kind(&self) -> SourceKind {
        self.kind
    }

    fn list(&self) -> impl Stream<Item = Listed> + Send + 'static {
        let pages = Pages {
            client: self.client.clone(),
            limiter: Arc::clone(&self.limiter),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            start_after: self.start_after.clone(),
            buffered: self
                .single
                .clone()
                .map(Listed::Object)
                .into_iter()
                .collect(),
            token: None,
            done: self.single.is_some(),
            listed: 0,
            named_key: !self.prefix.is_empty() && !self.prefix.ends_with('/'),
            cut_short: None,
        };
        futures::stream::unfold(pages, |mut pages| async move {
            loop {
                if let Some(item) = pages.buffered.pop_front() {
                    pages.listed += 1;
                    return Some((item, pages));
                }
                if pages.done {
                    return pages.ended().map(|problem| (problem, pages));
                }
                let mut request = pages
                    .client
                    .list_objects_v2()
                    .bucket(&pages.bucket)
                    .prefix(&pages.prefix);
                if let Some(token) = pages.token.take() {
                    request = request.continuation_token(token);
                } else if let Some(after) = pages.start_after.take() {
                    request = request.start_after(after);
                }
                pages.limiter.acquire().await;
                match request.send().await {
                    Ok(page) => {
                        pages.token = page.next_continuation_token().map(str::to_owned);
                        pages.done = pages.token.is_none() || page.is_truncated() != Some(true);
                        if pages.token.is_none() && page.is_truncated() == Some(true) {
                            // Not the end of the listing: what was not listed may exist.
                            pages.cut_short = Some(FileError::transient(
                                ErrorCode::SourceUnavailable,
                                format!(
                                    "listing s3://{}/{}: the server said the listing goes on \
                                     but gave no continuation token",
                                    pages.bucket, pages.prefix
                                ),
                            ));
                        }
                        let bucket = pages.bucket.clone();
                        pages
                            .buffered
                            .extend(page.contents().iter().filter_map(|object| {
                                let key = object.key()?;
                                // Folder markers ("photos/", 0 bytes) are not files.
                                if key.ends_with('/') && object.size().unwrap_or(0) == 0 {
                                    return None;
                                }
                                Some(Listed::Object(object_meta(
                                    &bucket,
                                    key,
                                    object.size(),
                                    object.e_tag(),
                                    object.last_modified(),
                                )))
                            }));
                    }
                    Err(err) => {
                        pages.done = true;
                        pages.listed += 1;
                        let error = classify(&err, "listing", &pages.bucket, &pages.prefix);
                        let key = pages.prefix.clone();
                        return Some((
                            Listed::Problem {
                                bucket: Some(pages.bucket.clone()),
                                key,
                                error,
                                skip: false,
                            },
                            pages,
                        ));
                    }
                }
            }
        })
    }

    fn random_access(
        &self,
        object: &ObjectMeta,
    ) -> Result<Box<dyn super::RandomAccess>, FileError> {
        Ok(Box::new(S3Source::random_access(self, object)?))
    }

    async fn open(&self, object: &ObjectMeta) -> Result<Opened, FileError> {
        let mut get = Get {
            client: self.client.clone(),
            limiter: Arc::clone(&self.limiter),
            bucket: self.bucket.clone(),
            key: object.key.clone(),
            etag: object.etag.clone(),
            at: 0,
            total: None,
            interruptions: 0,
        };
        let response = match get.send().await {
            Ok(response) => response,
            Err(err) if is_precondition_failed(&err) => {
                // Replaced since it was listed; nothing has been read yet, so read the new one.
                tracing::debug!(bucket = %get.bucket, key = %get.key, "object replaced since listing; reading the new version");
                get.etag = None;
                get.send()
                    .await
                    .map_err(|err| classify(&err, "reading", &get.bucket, &get.key))?
            }
            Err(err) => return Err(classify(&err, "reading", &get.bucket, &get.key)),
        };
        get.etag = response.e_tag().map(str::to_owned).or(get.etag);
        get.total = response
            .content_length()
            .and_then(|n| u64::try_from(n).ok());
        let opened_etag = get.etag.clone();
        let content_type = response.content_type().map(str::to_owned);
        let body =
            futures::stream::try_unfold((get, response.body), |(mut get, mut body)| async move {
                loop {
                    match body.try_next().await {
                        Ok(Some(bytes)) => {
                            get.at += bytes.len() as u64;
                            return Ok(Some((bytes, (get, body))));
                        }
                        Ok(None) => return Ok(None),
                        // Broke off after the last byte: nothing is missing.
                        Err(_) if get.total == Some(get.at) => return Ok(None),
                        Err(err) => body = get.resume(err.to_string()).await?,
                    }
                }
            });
        Ok(Opened {
            etag: opened_etag,
            content_type,
            body: Box::pin(body),
        })
    }
}

/// One object being read: enough to resume where its body broke off, pinned to its version.
struct Get {
    client: Client,
    limiter: Arc<RateLimiter>,
    bucket: String,
    key: String,
    /// The version being read; every request after the first is pinned to it (`If-Match`).
    etag: Option<String>,
    /// Bytes received so far.
    at: u64,
    /// The object's length, from the first response.
    total: Option<u64>,
    /// Resumes so far.
    interruptions: u32,
}

impl Get {
    /// GET from `at` on, pinned to `etag` when known.
    async fn send(
        &self,
    ) -> Result<
        aws_sdk_s3::operation::get_object::GetObjectOutput,
        SdkError<
            aws_sdk_s3::operation::get_object::GetObjectError,
            aws_sdk_s3::config::http::HttpResponse,
        >,
    > {
        let mut request = self.client.get_object().bucket(&self.bucket).key(&self.key);
        if let Some(etag) = &self.etag {
            request = request.if_match(etag);
        }
        if self.at > 0 {
            request = request.range(format!("bytes={}-", self.at));
        }
        self.limiter.acquire().await;
        request.send().await
    }

    /// A new body from where the last one broke off with `cause`.
    async fn resume(&mut self, cause: String) -> Result<ByteStream, FileError> {
        let where_ = format!("s3://{}/{}", self.bucket, self.key);
        if self.interruptions >= MAX_INTERRUPTIONS || self.etag.is_none() {
            return Err(FileError::transient(
                ErrorCode::SourceUnavailable,
                format!(
                    "reading {where_}: the body broke off {} times, last: {cause}",
                    self.interruptions + 1
                ),
            ));
        }
        self.interruptions += 1;
        tracing::debug!(object = %where_, at = self.at, error = %cause, "body broke off; resuming");
        let response = match self.send().await {
            Ok(response) => response,
            Err(err) if is_precondition_failed(&err) => {
                return Err(FileError::transient(
                    ErrorCode::ObjectChanged,
                    format!(
                        "{where_} was replaced after {} bytes of it had been read; read it again",
                        self.at
                    ),
                ));
            }
            Err(err) => return Err(classify(&err, "reading", &self.bucket, &self.key)),
        };
        // From byte 0 there is no range to honour.
        if self.at > 0 && !range_starts_at(response.content_range(), self.at) {
            return Err(FileError::transient(
                ErrorCode::SourceUnavailable,
                format!(
                    "reading {where_}: the server ignored the range request to resume at byte {}",
                    self.at
                ),
            ));
        }
        Ok(response.body)
    }
}

/// Whether a ranged response's `Content-Range` starts at byte `at` (a server may ignore the
/// range and send the whole object instead).
pub(super) fn range_starts_at(content_range: Option<&str>, at: u64) -> bool {
    content_range.is_some_and(|range| range.starts_with(&format!("bytes {at}-")))
}

/// Resumes and restarts allowed while reading one object.
const MAX_INTERRUPTIONS: u32 = 5;

pub(super) fn is_precondition_failed<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match err {
        SdkError::ServiceError(service) => {
            service.raw().status().as_u16() == 412
                || service.err().code() == Some("PreconditionFailed")
        }
        _ => false,
    }
}

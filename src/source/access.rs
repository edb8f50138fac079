//! Reaching S3-compatible endpoints on behalf of a request — the one-shot command's or a job's:
//! the endpoint policy, the process's client cache and its request rate cap, all from `[s3]`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::endpoint::{Endpoint, EndpointPolicy};
use super::rate::RateLimiter;
use super::{S3ClientSettings, S3Clients, S3Credentials, S3Source};
use crate::error::{ErrorCode, FileError};

/// Opens [`S3Source`]s for endpoints that pass the policy, sharing clients and the rate cap.
#[derive(Debug, Clone)]
pub struct S3Access {
    clients: Arc<S3Clients>,
    limiter: Arc<RateLimiter>,
    policy: EndpointPolicy,
    default_endpoint: String,
    /// Endpoint URLs whose name passed the full check.
    checked: Arc<Mutex<HashSet<String>>>,
}

/// Endpoints remembered as checked at most; beyond, the set starts over.
const MAX_CHECKED: usize = 1024;

impl S3Access {
    /// Access as `[s3]` describes it; `allow_private` adds to `s3.allow_private_endpoints`.
    #[must_use]
    pub fn new(config: &S3Config, allow_private: bool) -> Self {
        let allow_private = allow_private || config.allow_private_endpoints;
        let settings = S3ClientSettings {
            max_attempts: config.max_attempts,
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
            operation_timeout: Duration::from_secs(config.operation_timeout_secs),
            stall_timeout: Duration::from_secs(config.stall_timeout_secs),
            allow_private,
        };
        S3Access {
            clients: Arc::new(S3Clients::new(settings)),
            limiter: Arc::new(RateLimiter::new(config.max_requests_per_second)),
            policy: EndpointPolicy {
                allowed_hosts: config.allowed_hosts.clone(),
                allow_private,
            },
            default_endpoint: config.default_endpoint.clone(),
            checked: Arc::default(),
        }
    }

    fn resolved(&self, url: &str) -> bool {
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(url)
    }

    fn remember(&self, url: &str) {
        let mut checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if checked.len() >= MAX_CHECKED {
            checked.clear();
        }
        checked.insert(url.to_owned());
    }

    /// A source for `bucket`/`prefix` at `endpoint` (the configured default when `None`).
    ///
    /// # Errors
    /// `ENDPOINT_NOT_ALLOWED` when the endpoint is malformed or refused by the policy,
    /// `SOURCE_UNAVAILABLE` when its name does not resolve.
    pub async fn open(
        &self,
        endpoint: Option<&str>,
        credentials: &S3Credentials,
        bucket: &str,
        prefix: &str,
    ) -> Result<S3Source, FileError> {
        let raw = endpoint.unwrap_or(&self.default_endpoint);
        let endpoint = Endpoint::parse(raw)
            .map_err(|why| FileError::permanent(ErrorCode::EndpointNotAllowed, why))?;
        // Resolving the name once per endpoint is enough: every connection of its client is
        // checked again by the client's resolver, so a job per object costs no DNS query.
        if self.resolved(&endpoint.url) {
            self.policy.check_name(&endpoint)?;
        } else {
            self.policy.check(&endpoint).await?;
            self.remember(&endpoint.url);
        }
        let client = self.clients.client(&endpoint, credentials);
        Ok(S3Source::new(
            client,
            endpoint.kind,
            bucket,
            prefix,
            Arc::clone(&self.limiter),
        ))
    }
}

/// `[s3]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The endpoint used when a command or job gives none.
    #[serde(default = "default_s3_endpoint")]
    pub default_endpoint: String,
    /// Hosts that may be contacted: exact names or `*.domain`.
    #[serde(default = "default_allowed_hosts")]
    pub allowed_hosts: Vec<String>,
    /// Allow http and private or loopback addresses (local test servers only).
    #[serde(default)]
    pub allow_private_endpoints: bool,
    /// Attempts per request including the first; throttling and 5xx are retried with backoff.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Seconds to establish a connection.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Seconds one operation (a listing page, an object read) may take, retries included.
    #[serde(default = "default_operation_timeout_secs")]
    pub operation_timeout_secs: u64,
    /// Seconds a body may stall (below 1 byte/s) before the read is abandoned and resumed.
    #[serde(default = "default_stall_timeout_secs")]
    pub stall_timeout_secs: u64,
    /// Requests per second this process sends at most, over all buckets; 0 = no cap.
    #[serde(default = "default_max_requests_per_second")]
    pub max_requests_per_second: u32,
    /// Access key id of one-shot runs when neither `--access-key-id` nor `AWS_ACCESS_KEY_ID`
    /// gives one (jobs carry their own).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Its secret, when `AWS_SECRET_ACCESS_KEY` is not set; better given as the environment
    /// variable `INGESTD__S3__SECRET_ACCESS_KEY` than written in a file.
    #[serde(default)]
    pub secret_access_key: Option<crate::secret::Secret>,
}

/// The SDK's own default grace period for stalled bodies.
fn default_stall_timeout_secs() -> u64 {
    20
}

/// Below DigitalOcean Spaces' limit of about 1500 requests per second per IP address.
fn default_max_requests_per_second() -> u32 {
    1000
}

/// AWS's global S3 endpoint.
fn default_s3_endpoint() -> String {
    "https://s3.amazonaws.com".to_owned()
}

/// The public S3 and Spaces domains.
fn default_allowed_hosts() -> Vec<String> {
    super::endpoint::DEFAULT_ALLOWED_HOSTS
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The SDK's standard retry mode default.
fn default_max_attempts() -> u32 {
    3
}

/// Long enough for a slow TLS handshake, short enough to fail over quickly.
fn default_connect_timeout_secs() -> u64 {
    5
}

/// Five minutes: a large text object read over a slow link.
fn default_operation_timeout_secs() -> u64 {
    300
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            default_endpoint: default_s3_endpoint(),
            allowed_hosts: default_allowed_hosts(),
            allow_private_endpoints: false,
            max_attempts: default_max_attempts(),
            connect_timeout_secs: default_connect_timeout_secs(),
            operation_timeout_secs: default_operation_timeout_secs(),
            stall_timeout_secs: default_stall_timeout_secs(),
            max_requests_per_second: default_max_requests_per_second(),
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

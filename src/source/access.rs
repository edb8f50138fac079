//! Reaching S3-compatible endpoints on behalf of a request — the one-shot command's or a job's:
//! the endpoint policy, the process's client cache and its request rate cap, all from `[s3]`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::endpoint::{Endpoint, EndpointPolicy};
use super::rate::RateLimiter;
use super::{S3ClientSettings, S3Clients, S3Credentials, S3Source};
use crate::config::S3Config;
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

//! The OpenAI-compatible `POST /embeddings` wire format (OpenAI, Azure OpenAI,
//! text-embeddings-inference, Ollama, vLLM, Infinity): one batch per request, retried on 429,
//! 5xx and timeouts, the answer checked before any vector is used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use super::config::{Auth, EncodingFormat, ModelConfig, ProviderConfig};
use crate::error::{ErrorCode, FileError};
use crate::job::Secret;
use crate::provider::{self, Failure, backoff, retry_after, source_chain};

/// Bytes of JSON per vector value a response may use (`-0.0123456789012345,` is 20).
const RESPONSE_BYTES_PER_VALUE: usize = 32;

/// Requests and outcomes of every provider, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered with vectors.
    pub succeeded: AtomicU64,
    /// Requests that failed and were tried again.
    pub retried: AtomicU64,
    /// Batches that failed for good.
    pub failed: AtomicU64,
    /// Texts embedded.
    pub inputs: AtomicU64,
}

/// One provider: its endpoint, key and request slots.
pub(super) struct Provider {
    name: String,
    client: reqwest::Client,
    /// `<url>/embeddings` with its query.
    endpoint: reqwest::Url,
    /// The endpoint as errors show it (no query, no user info).
    shown: String,
    key: Option<(Auth, Secret)>,
    encoding_format: EncodingFormat,
    max_attempts: u32,
    max_retry_wait: Duration,
    /// Requests in flight at once.
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    stats: Arc<Stats>,
}

/// A model of a provider, as requests name and answers are checked against it.
pub(super) struct Model {
    name: String,
    dimensions: Option<usize>,
    request_dimensions: bool,
    /// Set by the first answer when the configuration does not say.
    learned: OnceLock<usize>,
}

impl Model {
    pub(super) fn new(config: &ModelConfig) -> Self {
        Model {
            name: config.model.clone(),
            dimensions: config.dimensions,
            request_dimensions: config.request_dimensions,
            learned: OnceLock::new(),
        }
    }
}

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    input: &'a [&'a str],
    model: &'a str,
    encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingData>,
}

#[derive(Deserialize)]
struct EmbeddingData {
    index: Option<usize>,
    embedding: Vector,
}

/// A vector as JSON numbers or as base64 of little-endian f32 values, whichever was sent.
struct Vector(Result<Vec<f32>, String>);

impl<'de> Deserialize<'de> for Vector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Vector;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of numbers or a base64 string")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vector, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(1536));
                while let Some(value) = seq.next_element::<f32>()? {
                    values.push(value);
                }
                Ok(Vector(Ok(values)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vector, E> {
                Ok(Vector(decode_base64(text)))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// Little-endian f32 values from base64.
fn decode_base64(text: &str) -> Result<Vec<f32>, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|err| format!("a vector is not valid base64: {err}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "a base64 vector holds {} bytes, not a whole number of f32 values",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// A batch that failed for good.
pub(super) struct Failed {
    pub(super) error: FileError,
    /// The provider refused the request's content, with this answer: without one bad input,
    /// the rest may pass.
    pub(super) refused: Option<String>,
}

impl Provider {
    /// A client for `config`; `key` is its API key when it sends one.
    ///
    /// # Errors
    /// When the URL is unusable or the HTTP client cannot be built.
    pub(super) fn new(
        name: &str,
        config: &ProviderConfig,
        key: Option<Secret>,
        stats: Arc<Stats>,
    ) -> Result<Self, String> {
        let mut endpoint = reqwest::Url::parse(config.url.trim_end_matches('/'))
            .map_err(|err| format!("provider `{name}`: url: {err}"))?;
        endpoint
            .path_segments_mut()
            .map_err(|()| format!("provider `{name}`: url cannot take a path"))?
            .push("embeddings");
        if let Some(version) = &config.api_version {
            endpoint
                .query_pairs_mut()
                .append_pair("api-version", version);
        }
        let shown = provider::shown(&endpoint);
        let client = provider::client(config.timeout_secs)
            .map_err(|err| format!("provider `{name}`: {err}"))?;
        Ok(Provider {
            name: name.to_owned(),
            client,
            endpoint,
            shown,
            key: key.map(|key| (config.auth, key)),
            encoding_format: config.encoding_format,
            max_attempts: config.max_attempts,
            max_retry_wait: Duration::from_secs(config.max_retry_wait_secs),
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
            stats,
        })
    }

    /// One vector per input, in order; retried while the failure may pass.
    ///
    /// # Errors
    /// The last attempt's classified failure.
    pub(super) async fn embed(
        &self,
        model: &Model,
        inputs: &[&str],
    ) -> Result<Vec<Vec<f32>>, Failed> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.attempt(model, inputs).await {
                Ok(vectors) => {
                    self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .inputs
                        .fetch_add(inputs.len() as u64, Ordering::Relaxed);
                    return Ok(vectors);
                }
                Err(failure) => failure,
            };
            let (error, after) = match failure {
                Failure::Stop(error) => return Err(self.failed(error, None)),
                Failure::Refused { error, reason } => return Err(self.failed(error, Some(reason))),
                Failure::Retry { error, after } => (error, after),
            };
            // The provider's word is waited out up to max_retry_wait, never less than backoff.
            let too_long = after.is_some_and(|after| after > self.max_retry_wait);
            let wait = after.map_or(backoff(attempt), |after| after.max(backoff(attempt)));
            if attempt >= self.max_attempts || too_long {
                let why = if too_long {
                    format!(
                        "; the provider asked to wait {} s, over max_retry_wait_secs",
                        after.unwrap_or_default().as_secs()
                    )
                } else {
                    format!(" after {attempt} attempts")
                };
                let error = FileError {
                    message: format!("{}{why}", error.message),
                    ..error
                };
                return Err(self.failed(error, None));
            }
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(provider = %self.name, attempt, wait_ms = wait.as_millis(), error = %error.message, "embedding request retried");
            tokio::time::sleep(wait).await;
        }
    }

    fn failed(&self, error: FileError, refused: Option<String>) -> Failed {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        Failed { error, refused }
    }

    async fn attempt(&self, model: &Model, inputs: &[&str]) -> Result<Vec<Vec<f32>>, Failure> {
        let what = format!(
            "embedding {} chunk(s) with {} at {}",
            inputs.len(),
            model.name,
            self.shown
        );
        let body = EmbeddingsRequest {
            input: inputs,
            model: &model.name,
            encoding_format: self.encoding_format.as_str(),
            dimensions: model.dimensions.filter(|_| model.request_dimensions),
        };
        let mut request = self.client.post(self.endpoint.clone()).json(&body);
        if let Some((auth, key)) = &self.key {
            request = provider::authorize(request, *auth, key).map_err(|()| {
                Failure::Stop(FileError::permanent(
                    ErrorCode::EmbeddingAuth,
                    format!(
                        "{what}: the API key of provider `{}` holds characters a header cannot",
                        self.name
                    ),
                ))
            })?;
        }
        let mut response = request.send().await.map_err(|err| transport(&what, err))?;
        let status = response.status();
        let headers = response.headers().clone();
        let dims = model
            .dimensions
            .or_else(|| model.learned.get().copied())
            .unwrap_or(4096);
        let cap = (inputs.len() * dims * RESPONSE_BYTES_PER_VALUE).max(1 << 20);
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(piece)) => {
                    if bytes.len() + piece.len() > cap {
                        return Err(Failure::Stop(FileError::permanent(
                            ErrorCode::EmbeddingBadResponse,
                            format!("{what}: the answer is larger than {cap} bytes"),
                        )));
                    }
                    bytes.extend_from_slice(&piece);
                }
                Ok(None) => break,
                Err(err) => return Err(transport(&what, err)),
            }
        }
        if !status.is_success() {
            return Err(self.refused(&what, status, &headers, &bytes));
        }
        let vectors =
            parse(&bytes, inputs.len()).map_err(|why| bad_response(&format!("{what}: {why}")))?;
        check(model, &vectors).map_err(|why| bad_response(&format!("{what}: {why}")))?;
        Ok(vectors)
    }

    /// A failure the provider answered with.
    fn refused(&self, what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        let answered = format!("{what}: the provider answered {status}");
        match status.as_u16() {
            // The provider's text may quote the key: it is left out.
            401 | 403 => Failure::Stop(FileError::permanent(
                ErrorCode::EmbeddingAuth,
                format!(
                    "{answered}: the API key of provider `{}` was refused",
                    self.name
                ),
            )),
            429 => Failure::Retry {
                error: FileError::transient(
                    ErrorCode::EmbeddingRateLimited,
                    format!("{answered}{}", self.quote(body)),
                ),
                after: retry_after(headers, SystemTime::now()),
            },
            408 | 409 | 500..=599 => Failure::Retry {
                error: FileError::transient(
                    ErrorCode::EmbeddingUnavailable,
                    format!("{answered}{}", self.quote(body)),
                ),
                after: retry_after(headers, SystemTime::now()),
            },
            400 | 413 | 422 => {
                let reason = format!("{status}{}", self.quote(body));
                Failure::Refused {
                    error: FileError::permanent(
                        ErrorCode::EmbeddingRejected,
                        format!("{what}: the provider answered {reason}"),
                    ),
                    reason,
                }
            }
            // A wrong URL or model (404) and the like: no input is at fault.
            _ => Failure::Stop(FileError::permanent(
                ErrorCode::EmbeddingRejected,
                format!("{answered}{}", self.quote(body)),
            )),
        }
    }

    /// `: <the provider's message>`, short, with the key blanked out.
    fn quote(&self, body: &[u8]) -> String {
        provider::quote(body, self.key.as_ref().map(|(_, key)| key))
    }
}

fn transport(what: &str, err: reqwest::Error) -> Failure {
    // reqwest's errors name the URL; `what` already does, without its query.
    let err = err.without_url();
    let why = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        format!("could not connect: {}", source_chain(&err))
    } else {
        source_chain(&err)
    };
    Failure::Retry {
        error: FileError::transient(ErrorCode::EmbeddingUnavailable, format!("{what}: {why}")),
        after: None,
    }
}

fn bad_response(message: &str) -> Failure {
    Failure::Stop(FileError::permanent(
        ErrorCode::EmbeddingBadResponse,
        message.to_owned(),
    ))
}

/// The vectors of an answer, in input order.
fn parse(bytes: &[u8], inputs: usize) -> Result<Vec<Vec<f32>>, String> {
    let response: EmbeddingsResponse = serde_json::from_slice(bytes)
        .map_err(|err| format!("the answer is not an embeddings response: {err}"))?;
    if response.data.len() != inputs {
        return Err(format!(
            "the answer holds {} vectors for {inputs} inputs",
            response.data.len()
        ));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for (position, item) in response.data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        let vector = item.embedding.0?;
        match vectors.get_mut(index) {
            Some(slot @ None) => *slot = Some(vector),
            Some(Some(_)) => return Err(format!("the answer repeats index {index}")),
            None => return Err(format!("the answer has index {index} for {inputs} inputs")),
        }
    }
    // Every slot is filled: as many distinct indexes as inputs, each in range.
    Ok(vectors.into_iter().flatten().collect())
}

/// Every vector has the model's length and only finite values. A model whose length is not
/// configured takes it from the first answer that passes.
fn check(model: &Model, vectors: &[Vec<f32>]) -> Result<(), String> {
    let known = model.dimensions.or_else(|| model.learned.get().copied());
    let want = known.unwrap_or_else(|| vectors.first().map_or(0, Vec::len));
    for (i, vector) in vectors.iter().enumerate() {
        if vector.len() != want || want == 0 {
            return Err(format!(
                "vector {i} has {} dimensions; {} has {want}",
                vector.len(),
                model.name
            ));
        }
        if vector.iter().any(|v| !v.is_finite()) {
            return Err(format!("vector {i} holds a value that is not finite"));
        }
    }
    if known.is_none() {
        let _ = model.learned.set(want);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dimensions: Option<usize>) -> Model {
        Model {
            name: "m".to_owned(),
            dimensions,
            request_dimensions: false,
            learned: OnceLock::new(),
        }
    }

    #[test]
    fn answers_are_put_in_input_order_and_checked() {
        let body =
            br#"{"data": [{"index": 1, "embedding": [3, 4]}, {"index": 0, "embedding": [1, 2]}]}"#;
        assert_eq!(
            parse(body, 2).unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        assert!(parse(body, 3).unwrap_err().contains("2 vectors for 3"));
        let repeated =
            br#"{"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}]}"#;
        assert!(parse(repeated, 2).unwrap_err().contains("repeats"));
        let beyond = br#"{"data": [{"index": 5, "embedding": [1]}]}"#;
        assert!(parse(beyond, 1).unwrap_err().contains("index 5"));
        assert!(parse(b"<html>", 1).is_err());
        // 1.0 and -2.0 as little-endian f32, base64: the form OpenAI sends when asked.
        let encoded = br#"{"data": [{"index": 0, "embedding": "AACAPwAAAMA="}]}"#;
        assert_eq!(parse(encoded, 1).unwrap(), vec![vec![1.0, -2.0]]);
        let ragged = br#"{"data": [{"index": 0, "embedding": "AACAPwAA"}]}"#;
        assert!(parse(ragged, 1).unwrap_err().contains("whole number"));
        let garbage = br#"{"data": [{"index": 0, "embedding": "not base64!"}]}"#;
        assert!(parse(garbage, 1).unwrap_err().contains("base64"));

        assert!(check(&model(Some(2)), &[vec![1.0, 2.0]]).is_ok());
        assert!(check(&model(Some(3)), &[vec![1.0, 2.0]]).is_err());
        assert!(check(&model(Some(2)), &[vec![1.0, f32::NAN]]).is_err());
        let learning = model(None);
        assert!(check(&learning, &[vec![1.0, f32::NAN]]).is_err());
        assert!(check(&learning, &[vec![]]).is_err());
        assert_eq!(
            learning.learned.get(),
            None,
            "a failed answer teaches nothing"
        );
        assert!(check(&learning, &[vec![1.0, 2.0]]).is_ok());
        assert!(check(&learning, &[vec![1.0, 2.0, 3.0]]).is_err());
    }
}

//! `[embedding]` of `pipeline.toml`: providers (where vectors come from) and models (Carbon's
//! `embedding_model` names, each mapped to a provider and the provider's model).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::ConfigError;

/// The variable OpenAI's key is read from, by the shipped configuration and `ingestd sync`.
pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";

/// `[embedding]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingConfig {
    /// The model of jobs that name none (Carbon's default, `OPENAI`).
    pub default_model: String,
    /// Inputs per request at most (OpenAI accepts 2048).
    pub max_batch_inputs: usize,
    /// Tokens per request at most, summed over its inputs (OpenAI accepts 300,000). A chunk
    /// larger than this on its own is sent alone.
    pub max_batch_tokens: usize,
    /// Milliseconds a batch that is not full waits for more chunks before it is sent.
    pub batch_linger_ms: u64,
    /// Providers by a name of the operator's choosing.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Models by the name jobs use (`embedding_model`).
    pub models: BTreeMap<String, ModelConfig>,
}

/// `[embedding.providers.<name>]`: one OpenAI-compatible `/embeddings` endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Base URL; requests go to `<url>/embeddings` (`https://api.openai.com/v1`, an Azure
    /// deployment `https://<resource>.openai.azure.com/openai/deployments/<deployment>`, or a
    /// self-hosted server's `http://127.0.0.1:8080/v1`).
    pub url: String,
    /// How the key is sent.
    #[serde(default)]
    pub auth: Auth,
    /// The environment variable holding the key (required unless `auth = "none"`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Azure's `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// How vectors are asked for: `base64` (little-endian f32, compact and fast to read) or
    /// `float` (JSON numbers), for servers that know only that. Either form is read in answers.
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Requests in flight at once to this provider.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Seconds one request may take, body included.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts per batch, the first included; 429, 5xx and timeouts are retried.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The longest `Retry-After` waited out in process; a longer one ends the attempts at once
    /// (`EMBEDDING_RATE_LIMITED`, retryable: the worker retries the job through the broker).
    #[serde(default = "default_max_retry_wait_secs")]
    pub max_retry_wait_secs: u64,
}

/// How a provider's key is sent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI and most self-hosted servers).
    #[default]
    Bearer,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
    /// No key (a server on a private network).
    None,
}

/// How a provider is asked to send vectors (`encoding_format` of the request).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncodingFormat {
    /// Base64 of little-endian f32 values.
    #[default]
    Base64,
    /// JSON numbers.
    Float,
}

impl EncodingFormat {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EncodingFormat::Base64 => "base64",
            EncodingFormat::Float => "float",
        }
    }
}

/// `[embedding.models.<NAME>]`: what a job's `embedding_model` means.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The provider, a key of `[embedding.providers]`.
    pub provider: String,
    /// The provider's name for the model (`text-embedding-3-small`).
    pub model: String,
    /// Length of the vectors; every response is checked against it. When absent, the first
    /// response sets it.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Ask the provider for `dimensions` (text-embedding-3-* shorten their vectors on request).
    #[serde(default)]
    pub request_dimensions: bool,
    /// The model's input limit in tokens; a job's `chunk_size` may not exceed it.
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: usize,
}

fn default_max_concurrent_requests() -> usize {
    4
}

fn default_timeout_secs() -> u64 {
    60
}

fn default_max_attempts() -> u32 {
    5
}

fn default_max_retry_wait_secs() -> u64 {
    60
}

/// OpenAI's embedding models take 8191 tokens.
fn default_max_input_tokens() -> usize {
    8191
}

impl ProviderConfig {
    /// A provider at `url` with the default limits.
    #[must_use]
    pub fn new(url: &str, auth: Auth, api_key_env: Option<String>) -> Self {
        ProviderConfig {
            url: url.to_owned(),
            auth,
            api_key_env,
            api_version: None,
            encoding_format: EncodingFormat::Base64,
            max_concurrent_requests: default_max_concurrent_requests(),
            timeout_secs: default_timeout_secs(),
            max_attempts: default_max_attempts(),
            max_retry_wait_secs: default_max_retry_wait_secs(),
        }
    }
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        let openai = ProviderConfig::new(
            "https://api.openai.com/v1",
            Auth::Bearer,
            Some(OPENAI_API_KEY.to_owned()),
        );
        // Carbon's names for OpenAI's models; the numbered ones are shortened vectors.
        let models = [
            ("OPENAI", "text-embedding-ada-002", 1536, false),
            ("OPENAI_ADA_SMALL_512", "text-embedding-3-small", 512, true),
            (
                "OPENAI_ADA_SMALL_1536",
                "text-embedding-3-small",
                1536,
                false,
            ),
            ("OPENAI_ADA_LARGE_256", "text-embedding-3-large", 256, true),
            (
                "OPENAI_ADA_LARGE_1024",
                "text-embedding-3-large",
                1024,
                true,
            ),
            (
                "OPENAI_ADA_LARGE_3072",
                "text-embedding-3-large",
                3072,
                false,
            ),
        ]
        .into_iter()
        .map(|(name, model, dimensions, request_dimensions)| {
            let config = ModelConfig {
                provider: "openai".to_owned(),
                model: model.to_owned(),
                dimensions: Some(dimensions),
                request_dimensions,
                max_input_tokens: default_max_input_tokens(),
            };
            (name.to_owned(), config)
        })
        .collect();
        EmbeddingConfig {
            default_model: "OPENAI".to_owned(),
            max_batch_inputs: 256,
            max_batch_tokens: 100_000,
            batch_linger_ms: 5,
            providers: BTreeMap::from([("openai".to_owned(), openai)]),
            models,
        }
    }
}

impl EmbeddingConfig {
    /// Checks ranges and that every model names a provider that exists.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &'static str, message: String| Err(ConfigError::Invalid { field, message });
        if !(1..=2048).contains(&self.max_batch_inputs) {
            return invalid(
                "embedding.max_batch_inputs",
                format!("{} is outside 1..=2048", self.max_batch_inputs),
            );
        }
        if self.max_batch_tokens == 0 {
            return invalid(
                "embedding.max_batch_tokens",
                "must be at least 1".to_owned(),
            );
        }
        for (name, provider) in &self.providers {
            let parsed = reqwest::Url::parse(&provider.url);
            if !matches!(&parsed, Ok(url) if matches!(url.scheme(), "http" | "https")) {
                return invalid(
                    "embedding.providers.*.url",
                    format!(
                        "provider `{name}`: `{}` is not an http(s) URL",
                        provider.url
                    ),
                );
            }
            if provider.auth != Auth::None && provider.api_key_env.is_none() {
                return invalid(
                    "embedding.providers.*.api_key_env",
                    format!(
                        "provider `{name}` sends a key: name the environment variable that holds \
                         it, or set auth = \"none\""
                    ),
                );
            }
            if provider.max_concurrent_requests == 0
                || provider.timeout_secs == 0
                || provider.max_attempts == 0
            {
                return invalid(
                    "embedding.providers.*",
                    format!(
                        "provider `{name}`: max_concurrent_requests, timeout_secs and \
                         max_attempts must be at least 1"
                    ),
                );
            }
        }
        if !self.models.is_empty() && !self.models.contains_key(&self.default_model) {
            return invalid(
                "embedding.default_model",
                format!(
                    "`{}` is not in [embedding.models] (a file's models replace the built-in \
                     ones)",
                    self.default_model
                ),
            );
        }
        for (name, model) in &self.models {
            if !self.providers.contains_key(&model.provider) {
                return invalid(
                    "embedding.models.*.provider",
                    format!(
                        "model `{name}` names provider `{}`, which is not in \
                         [embedding.providers]",
                        model.provider
                    ),
                );
            }
            if model.dimensions == Some(0) || model.max_input_tokens == 0 {
                return invalid(
                    "embedding.models.*",
                    format!("model `{name}`: dimensions and max_input_tokens must be at least 1"),
                );
            }
            if model.request_dimensions && model.dimensions.is_none() {
                return invalid(
                    "embedding.models.*.request_dimensions",
                    format!("model `{name}` asks for dimensions but does not say how many"),
                );
            }
        }
        Ok(())
    }
}

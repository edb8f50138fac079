//! Embeddings for chunk records. Carbon's `embedding_model` names map to OpenAI-compatible
//! providers (`[embedding]` of `pipeline.toml`); chunks of every file in flight are batched
//! together per model, and every vector is checked before it goes on a record.

mod batch;
mod config;
mod openai;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use config::{
    Auth, EmbeddingConfig, EncodingFormat, ModelConfig, OPENAI_API_KEY, ProviderConfig,
};
pub use openai::Stats;

use crate::error::{ErrorCode, FileError};
use crate::job::Secret;

/// Chunks that may wait for a model's batcher before senders pause (each is also held by a
/// file's window of records waiting for vectors, which bounds their bytes).
const QUEUE: usize = 1024;

/// Whether and how one request's chunks are embedded.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// `skip_embedding_generation`: records leave with `embedding: null`.
    Skip,
    /// Every record gets a vector from this model.
    Model(Route),
    /// Embeddings were asked for and cannot be made: each file fails with this error.
    Unavailable(FileError),
}

/// Every configured model, ready to embed; built once per process.
pub struct Embedder {
    routes: BTreeMap<String, Result<Route, String>>,
    default_model: String,
    stats: Arc<Stats>,
}

/// One model's way to its provider.
#[derive(Clone)]
pub struct Route {
    inner: Arc<RouteInner>,
}

struct RouteInner {
    name: String,
    max_input_tokens: usize,
    queue: mpsc::Sender<batch::Pending>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Clients and batchers for every model of `config`, reading API keys with `env`. A model
    /// whose provider has no key stays unavailable: jobs asking for it fail their files with
    /// `EMBEDDING_NOT_CONFIGURED`. Must be called within a Tokio runtime.
    #[must_use]
    pub fn start(config: &EmbeddingConfig, env: impl Fn(&str) -> Option<String>) -> Self {
        let stats = Arc::new(Stats::default());
        let limits = batch::Limits {
            max_inputs: config.max_batch_inputs,
            max_tokens: config.max_batch_tokens,
            linger: Duration::from_millis(config.batch_linger_ms),
        };
        let mut providers = BTreeMap::new();
        for (name, provider) in &config.providers {
            let key = match (provider.auth, &provider.api_key_env) {
                (Auth::None, _) => Ok(None),
                (_, Some(var)) => env(var)
                    .filter(|key| !key.trim().is_empty())
                    .map(|key| Some(Secret::new(key.trim())))
                    .ok_or_else(|| {
                        format!("provider `{name}` needs its API key in {var}, which is not set")
                    }),
                (_, None) => Err(format!("provider `{name}` has no api_key_env")),
            };
            let built = key.and_then(|key| {
                openai::Provider::new(name, provider, key, Arc::clone(&stats)).map(Arc::new)
            });
            providers.insert(name.clone(), built);
        }
        let routes = config
            .models
            .iter()
            .map(|(name, model)| {
                let route = match providers.get(&model.provider) {
                    Some(Ok(provider)) => {
                        let (queue, receiver) = mpsc::channel(QUEUE);
                        tokio::spawn(batch::run(
                            receiver,
                            Arc::clone(provider),
                            Arc::new(openai::Model::new(model)),
                            limits,
                        ));
                        Ok(Route {
                            inner: Arc::new(RouteInner {
                                name: name.clone(),
                                max_input_tokens: model.max_input_tokens,
                                queue,
                            }),
                        })
                    }
                    Some(Err(why)) => Err(why.clone()),
                    None => Err(format!("provider `{}` is not configured", model.provider)),
                };
                (name.clone(), route)
            })
            .collect::<BTreeMap<_, _>>();
        for (name, route) in &routes {
            if let Err(why) = route {
                tracing::warn!(model = %name, "embedding model unavailable: {why}");
            }
        }
        Embedder {
            routes,
            default_model: config.default_model.clone(),
            stats,
        }
    }

    /// The route of `model` (the default model when `None`).
    ///
    /// # Errors
    /// `EMBEDDING_NOT_CONFIGURED` naming what is missing.
    pub fn route(&self, model: Option<&str>) -> Result<Route, FileError> {
        let name = model.unwrap_or(&self.default_model);
        let not_configured = |why: String| {
            FileError::permanent(
                ErrorCode::EmbeddingNotConfigured,
                format!("embeddings with model {name} were asked for: {why}"),
            )
        };
        match self.routes.get(name) {
            Some(Ok(route)) => Ok(route.clone()),
            Some(Err(why)) => Err(not_configured(why.clone())),
            None => {
                let known: Vec<&str> = self.routes.keys().map(String::as_str).collect();
                Err(not_configured(format!(
                    "no such model is configured (embedding.models has {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )))
            }
        }
    }

    /// What `embedding_model` of a job asks for: no provider called when skipped, else the
    /// model's route or why there is none. `chunk_size` must fit the model's input limit.
    ///
    /// # Errors
    /// A chunk size over the model's input limit: the job itself is invalid.
    pub fn plan(
        &self,
        skip: bool,
        model: Option<&str>,
        chunk_size: usize,
    ) -> Result<Embedding, String> {
        if skip {
            return Ok(Embedding::Skip);
        }
        match self.route(model) {
            Ok(route) if chunk_size > route.max_input_tokens() => Err(format!(
                "chunk_size {chunk_size} is above the input limit of embedding model {} ({} tokens)",
                route.name(),
                route.max_input_tokens()
            )),
            Ok(route) => Ok(Embedding::Model(route)),
            Err(err) => Ok(Embedding::Unavailable(err)),
        }
    }

    /// Requests and outcomes so far.
    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }
}

impl Route {
    /// The model's name as jobs give it; records carry it as `embedding_model`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The model's input limit in tokens.
    #[must_use]
    pub fn max_input_tokens(&self) -> usize {
        self.inner.max_input_tokens
    }

    /// Queues `text` (of `tokens` tokens) for the next batch; the returned future resolves to
    /// its vector. Waits while the queue is full.
    ///
    /// # Errors
    /// When the batcher is gone (the process is stopping).
    pub async fn submit(
        &self,
        text: String,
        tokens: usize,
    ) -> Result<impl Future<Output = Result<Vec<f32>, FileError>> + Send + 'static, FileError> {
        let (reply, vector) = oneshot::channel();
        let stopped = || {
            FileError::transient(
                ErrorCode::EmbeddingUnavailable,
                "the embedding batcher has stopped",
            )
        };
        self.inner
            .queue
            .send(batch::Pending {
                text,
                tokens,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        Ok(async move { vector.await.unwrap_or_else(|_| Err(stopped())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_get_a_route_a_skip_or_the_reason_there_is_none() {
        let config = EmbeddingConfig::default();
        let keyed = Embedder::start(&config, |var| {
            (var == OPENAI_API_KEY).then(|| "sk-test".to_owned())
        });
        assert!(matches!(keyed.plan(true, None, 1500), Ok(Embedding::Skip)));
        match keyed.plan(false, Some("OPENAI_ADA_SMALL_1536"), 1500) {
            Ok(Embedding::Model(route)) => assert_eq!(route.name(), "OPENAI_ADA_SMALL_1536"),
            other => panic!("{other:?}"),
        }
        let too_large = keyed.plan(false, None, 9000).unwrap_err();
        assert!(too_large.contains("8191"), "{too_large}");
        match keyed.plan(false, Some("COHERE_MULTILINGUAL_V3"), 1500) {
            Ok(Embedding::Unavailable(err)) => {
                assert_eq!(err.code, ErrorCode::EmbeddingNotConfigured);
                assert!(
                    err.message.contains("OPENAI_ADA_LARGE_3072"),
                    "{}",
                    err.message
                );
            }
            other => panic!("{other:?}"),
        }

        let keyless = Embedder::start(&config, |_| None);
        match keyless.plan(false, None, 1500) {
            Ok(Embedding::Unavailable(err)) => {
                assert_eq!(err.code, ErrorCode::EmbeddingNotConfigured);
                assert!(err.message.contains(OPENAI_API_KEY), "{}", err.message);
                assert!(!err.retryable());
            }
            other => panic!("{other:?}"),
        }
    }
}

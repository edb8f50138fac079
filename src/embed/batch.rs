//! Gathers the chunks of every file in flight into batches for one model: a batch is sent when
//! it reaches the count or token limit, or when no more chunks arrive for `linger`, and only
//! when the provider has a free request slot, so batches grow while the provider is busy.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::openai::{Failed, Model, Provider};
use crate::error::FileError;

/// One chunk waiting for its vector.
pub(super) struct Pending {
    pub(super) text: String,
    pub(super) tokens: usize,
    pub(super) reply: oneshot::Sender<Result<Vec<f32>, FileError>>,
}

/// How large a batch may grow and how long it waits to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_inputs: usize,
    pub(super) max_tokens: usize,
    pub(super) linger: Duration,
}

/// Batches `queue` for `model` until every sender is gone.
pub(super) async fn run(
    mut queue: mpsc::Receiver<Pending>,
    provider: Arc<Provider>,
    model: Arc<Model>,
    limits: Limits,
) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Chunks that arrive while every slot is busy join the batch.
        let Ok(slot) = Arc::clone(&provider.slots).acquire_owned().await else {
            return;
        };
        let mut tokens = first.tokens;
        let mut batch = vec![first];
        let linger = tokio::time::sleep(limits.linger);
        tokio::pin!(linger);
        while batch.len() < limits.max_inputs {
            let next = match queue.try_recv() {
                Ok(pending) => Some(pending),
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    pending = queue.recv() => pending,
                    () = &mut linger => None,
                },
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            let Some(next) = next else { break };
            if tokens + next.tokens > limits.max_tokens {
                carried = Some(next);
                break;
            }
            tokens += next.tokens;
            batch.push(next);
        }
        let (provider, model) = (Arc::clone(&provider), Arc::clone(&model));
        tokio::spawn(async move {
            let _ = settle(&provider, &model, batch).await;
            drop(slot);
        });
    }
}

/// Sends `batch` and answers each chunk.
///
/// A batch whose content the provider refuses (400, 413, 422) is split in halves and each half
/// tried, so one bad input fails only its own file. When a whole half fails with the same
/// refusal, the request itself is at fault, not an input: the other half is tried once, and not
/// split further. Returns the refusal when every chunk of the batch was refused with it.
async fn settle(provider: &Provider, model: &Model, mut batch: Vec<Pending>) -> Option<String> {
    // Files that failed meanwhile no longer want their vectors.
    batch.retain(|pending| !pending.reply.is_closed());
    if batch.is_empty() {
        return None;
    }
    let failed = match send(provider, model, &batch).await {
        Ok(vectors) => {
            for (pending, vector) in batch.into_iter().zip(vectors) {
                let _ = pending.reply.send(Ok(vector));
            }
            return None;
        }
        Err(failed) => failed,
    };
    let Some(refusal) = failed.refused.clone().filter(|_| batch.len() > 1) else {
        answer_all(batch, &failed.error);
        return failed.refused;
    };
    let mut first = batch;
    let second = first.split_off(first.len() / 2);
    if Box::pin(settle(provider, model, first)).await.as_ref() != Some(&refusal) {
        // Some of the first half passed: the inputs are at fault, one by one.
        Box::pin(settle(provider, model, second)).await;
        return None;
    }
    match send(provider, model, &second).await {
        Ok(vectors) => {
            for (pending, vector) in second.into_iter().zip(vectors) {
                let _ = pending.reply.send(Ok(vector));
            }
            None
        }
        Err(failed) => {
            answer_all(second, &failed.error);
            failed.refused
        }
    }
}

async fn send(
    provider: &Provider,
    model: &Model,
    batch: &[Pending],
) -> Result<Vec<Vec<f32>>, Failed> {
    let texts: Vec<&str> = batch.iter().map(|p| p.text.as_str()).collect();
    let started = std::time::Instant::now();
    let vectors = provider.embed(model, &texts).await;
    crate::telemetry::timed(crate::telemetry::Stage::Embed, started.elapsed());
    vectors
}

/// Fails every chunk of `batch` with `error`.
fn answer_all(batch: Vec<Pending>, error: &FileError) {
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}

//! One delivery from the jobs queue: parse the job, run it, and settle the delivery — ack,
//! retry through a wait queue, or park it in the dead-letter queue with the reason.

use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::AMQPValue;
use serde_json::Value;

use super::jobs::{self, Context, Outcome, Outputs};
use super::{
    ATTEMPT_HEADER, BROKER_TIMEOUT, ERROR_CODE_HEADER, ERROR_HEADER, JOB_TYPE_HEADER, topology,
};
use crate::job::Job;
use crate::sink::amqp::{Confirms, Message, PublishError, Publisher, text};
use crate::state::StateError;

/// What to do with a delivery once its job has run.
enum Disposition {
    Ack,
    Retry { code: &'static str, reason: String },
    Refuse { code: &'static str, reason: String },
}

/// Runs one delivery's job and settles it. `Err` means the broker connection is unusable.
pub(super) async fn handle(
    ctx: &Context,
    publisher: &Publisher,
    delivery: Delivery,
) -> Result<(), String> {
    let started = Instant::now();
    ctx.metrics.job_started();
    let w = &ctx.config.worker;
    // Jobs back from a wait queue carry the queue's name as routing key; their type is in a
    // header.
    let job_type = match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(JOB_TYPE_HEADER))
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => delivery.routing_key.as_str().to_owned(),
    };
    let disposition = match decide(ctx, publisher, &delivery).await {
        Ok(disposition) => disposition,
        Err(why) => {
            ctx.metrics
                .job_done(&job_type, "interrupted", started.elapsed());
            return Err(why);
        }
    };
    let attempt = attempt(&delivery);
    let (disposition, label) = match disposition {
        Disposition::Retry { code, reason } if (attempt as usize) < w.retry_delays_secs.len() => {
            let delay = w.retry_delays_secs[attempt as usize];
            tracing::info!(
                job_type,
                attempt = attempt + 1,
                delay_secs = delay,
                code,
                reason,
                "job will be retried"
            );
            let queue = topology::wait_queue(w, delay);
            republish(publisher, &delivery, &queue, attempt + 1, code, &reason).await?;
            (None, "retried")
        }
        Disposition::Retry { code, reason } => (
            Some((
                "RETRIES_EXHAUSTED",
                format!("{code} after {} attempts: {reason}", attempt + 1),
            )),
            "dead_lettered",
        ),
        Disposition::Refuse { code, reason } => (Some((code, reason)), "dead_lettered"),
        Disposition::Ack => (None, "done"),
    };
    if let Some((code, reason)) = disposition {
        tracing::warn!(job_type, code, reason, "job dead-lettered");
        republish(
            publisher,
            &delivery,
            &w.dead_letter_queue,
            attempt,
            code,
            &reason,
        )
        .await?;
    }
    let acked = tokio::time::timeout(
        BROKER_TIMEOUT,
        delivery.acker.ack(BasicAckOptions::default()),
    )
    .await
    .map_err(|_| "an ack was not sent in time".to_owned())?
    .map_err(|err| format!("acking: {err}"))?;
    ctx.metrics.job_done(&job_type, label, started.elapsed());
    if acked {
        Ok(())
    } else {
        // The ack did not reach the broker: the job will be delivered again.
        Err("an ack could not be sent".to_owned())
    }
}

/// Parses and runs the job. `Err` means the broker connection is unusable.
async fn decide(
    ctx: &Context,
    publisher: &Publisher,
    delivery: &Delivery,
) -> Result<Disposition, String> {
    let w = &ctx.config.worker;
    if delivery.data.len() > w.max_message_bytes {
        return Ok(Disposition::Refuse {
            code: "MESSAGE_TOO_LARGE",
            reason: format!(
                "the message has {} bytes; worker.max_message_bytes is {}",
                delivery.data.len(),
                w.max_message_bytes
            ),
        });
    }
    let job = match Job::from_json(&delivery.data, ctx.config.chunking.limits()) {
        Ok(job) => job,
        Err(err) => {
            return Ok(Disposition::Refuse {
                code: err.code(),
                reason: redact(&err.to_string(), &delivery.data),
            });
        }
    };
    let mut out = Outputs::new(publisher, w);
    let deadline = Duration::from_secs(w.job_timeout_secs);
    let outcome = match tokio::time::timeout(deadline, jobs::execute(&job, ctx, &mut out)).await {
        Err(_) => {
            let reason = format!(
                "the job ran past worker.job_timeout_secs ({})",
                w.job_timeout_secs
            );
            // The abandoned file still gets its outcome; it says whether another try follows.
            let retried = (attempt(delivery) as usize) < w.retry_delays_secs.len();
            let mut out = Outputs::new(publisher, w);
            let told = tokio::time::timeout(BROKER_TIMEOUT, async {
                jobs::timed_out(&job, &reason, retried, &mut out).await?;
                out.finish().await.map(drop)
            })
            .await
            .map_err(|_| "the broker did not confirm in time".to_owned())?;
            if let Err(err) = told {
                return published(err);
            }
            return Ok(Disposition::Retry {
                code: "JOB_TIMEOUT",
                reason,
            });
        }
        Ok(Err(err)) => return published(err),
        Ok(Ok(outcome)) => outcome,
    };
    match tokio::time::timeout(BROKER_TIMEOUT, out.finish()).await {
        Ok(Ok(changes)) => {
            // The outputs are confirmed: now, and only now, the state they stand for. If this
            // fails the job runs again and publishes the same records (at least once).
            let written = match (&ctx.state, changes.is_empty()) {
                (Some(store), false) => tokio::time::timeout(BROKER_TIMEOUT, store.apply(changes))
                    .await
                    .unwrap_or_else(|_| {
                        Err(StateError::Unavailable(
                            "the state store did not answer in time".to_owned(),
                        ))
                    }),
                _ => Ok(()),
            };
            if let Err(err) = written {
                return Ok(if err.retryable() {
                    Disposition::Retry {
                        code: err.code(),
                        reason: err.to_string(),
                    }
                } else {
                    Disposition::Refuse {
                        code: err.code(),
                        reason: err.to_string(),
                    }
                });
            }
        }
        Ok(Err(err)) => return published(err),
        Err(_) => return Err("the broker did not confirm the job's outputs in time".to_owned()),
    }
    Ok(match outcome {
        Outcome::Done => Disposition::Ack,
        Outcome::Retry(reason) => Disposition::Retry {
            code: "TRANSIENT_FAILURE",
            reason,
        },
        Outcome::Refuse { code, reason } => Disposition::Refuse { code, reason },
    })
}

/// A failed publish: a lost connection ends the session, anything else retries the job.
fn published(err: PublishError) -> Result<Disposition, String> {
    match err {
        PublishError::Broker(err) => Err(format!("publishing: {err}")),
        other => Ok(Disposition::Retry {
            code: "OUTPUT_NOT_DELIVERED",
            reason: other.to_string(),
        }),
    }
}

/// The attempt number carried by the delivery (0 for the first).
fn attempt(delivery: &Delivery) -> u32 {
    let headers = delivery.properties.headers().as_ref();
    match headers.and_then(|h| h.inner().get(ATTEMPT_HEADER)) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// Publishes the delivery's message unchanged to `queue` with the reason in headers, and waits
/// for the confirm.
async fn republish(
    publisher: &Publisher,
    delivery: &Delivery,
    queue: &str,
    attempt: u32,
    code: &str,
    reason: &str,
) -> Result<(), String> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    // A copy with the broker's dead-letter history would look like a dead-letter cycle to
    // RabbitMQ when the wait queue hands it back, and be dropped.
    let headers_in = headers.inner().clone();
    headers = headers_in
        .into_iter()
        .filter(|(name, _)| {
            !name.as_str().starts_with("x-death")
                && !name.as_str().starts_with("x-first-death")
                && !name.as_str().starts_with("x-last-death")
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    headers.insert(ERROR_CODE_HEADER.into(), text(code));
    headers.insert(ERROR_HEADER.into(), text(reason));
    if !headers.contains_key(JOB_TYPE_HEADER) {
        headers.insert(JOB_TYPE_HEADER.into(), text(delivery.routing_key.as_str()));
    }
    let message = Message {
        exchange: "",
        routing_key: queue,
        payload: &delivery.data,
        headers,
    };
    let mut confirms = Confirms::default();
    let sent = tokio::time::timeout(BROKER_TIMEOUT, async {
        publisher.send(message, &mut confirms).await?;
        confirms.settle().await
    })
    .await
    .map_err(|_| format!("parking a job in {queue}: no confirm in time"))?;
    sent.map_err(|err| format!("parking a job in {queue}: {err}"))
}

/// `reason` with every secret of the raw job blanked out: parser messages may quote values.
fn redact(reason: &str, raw: &[u8]) -> String {
    fn secrets(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    if key.contains("secret") || key.contains("password") {
                        match value {
                            Value::String(s) if !s.is_empty() => found.push(s.clone()),
                            Value::Number(n) => found.push(n.to_string()),
                            _ => {}
                        }
                    }
                    secrets(value, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| secrets(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    if let Ok(value) = serde_json::from_slice::<Value>(raw) {
        secrets(&value, &mut found);
    }
    found.iter().fold(reason.to_owned(), |reason, secret| {
        reason.replace(secret.as_str(), "***")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_of_the_job_are_blanked_out_of_reasons() {
        let raw =
            br#"{"data_source": {"access_key_secret": "s3cr3t", "nested": [{"password": 12345}]}}"#;
        let reason = "invalid type: string \"s3cr3t\", and 12345 too";
        let redacted = redact(reason, raw);
        assert!(
            !redacted.contains("s3cr3t") && !redacted.contains("12345"),
            "{redacted}"
        );
        assert_eq!(redact("nothing secret", b"not json"), "nothing secret");
    }
}

//! `ingestd worker`: consumes jobs from RabbitMQ, runs them through the pipeline and publishes
//! their outputs with confirms. The only module that knows about deliveries.
//!
//! A delivery is acked only after every output of its job is confirmed. Jobs that fail
//! transiently wait in a TTL queue and come back; jobs that can never succeed are parked in the
//! dead-letter queue with the reason in headers. Losing the broker ends the session: unacked
//! deliveries go back to the queue, and the worker reconnects with jittered backoff.

pub mod health;
pub mod jobs;
pub mod metrics;
pub mod topology;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Config, WorkerConfig};
use crate::job::Job;
use crate::sink::amqp::{Confirms, Message, PublishError, Publisher, text};
use crate::source::S3Access;
use jobs::{Context, Outcome, Outputs};
use metrics::Metrics;

/// Header counting a job's attempts after the first.
pub const ATTEMPT_HEADER: &str = "ingestd-attempt";
/// Header with the stable code of why a job was dead-lettered or retried.
pub const ERROR_CODE_HEADER: &str = "ingestd-error-code";
/// Header with the reason, for people.
pub const ERROR_HEADER: &str = "ingestd-error";
/// Header with the job's type (its first routing key).
pub const JOB_TYPE_HEADER: &str = "ingestd-job-type";

/// Longest wait for the broker on anything that is not a job: connecting, declaring, a
/// confirm, an ack. Past it the connection is given up and made again.
const BROKER_TIMEOUT: Duration = Duration::from_mins(1);

/// A session that lasted this long was healthy: the reconnection backoff starts over.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The health and metrics address could not be bound.
    #[error("listening on {address}: {source}")]
    Listen {
        /// The configured address.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Runs the worker until `shutdown` resolves, then stops consuming, lets jobs in flight finish
/// within `worker.shutdown_grace_secs` and returns; unfinished jobs go back to the queue.
///
/// # Errors
/// Only when it cannot start; broker trouble is retried for as long as it lasts.
pub async fn run(
    config: Arc<Config>,
    allow_private_endpoint: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let metrics = Arc::new(Metrics::default());
    let address = config.worker.listen.clone();
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|source| WorkerError::Listen { address, source })?;
    let health = tokio::spawn(health::serve(listener, Arc::clone(&metrics)));
    let ctx = Arc::new(Context {
        access: S3Access::new(&config.s3, allow_private_endpoint),
        cpu: Arc::new(Semaphore::new(crate::config::cpu_slots())),
        metrics: Arc::clone(&metrics),
        config,
    });
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut failures = 0u32;
    loop {
        match session(&ctx, stop.clone()).await {
            Ended::Stopped => break,
            Ended::Lost { why, consumed } => {
                metrics.set_ready(false);
                metrics.reconnected();
                failures = if consumed {
                    1
                } else {
                    failures.saturating_add(1)
                };
                let delay = backoff(failures);
                tracing::warn!(error = %why, retry_in_ms = delay.as_millis(), "broker unavailable");
                let mut stop = stop.clone();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|stopped| *stopped) => break,
                }
            }
        }
    }
    health.abort();
    tracing::info!("worker stopped");
    Ok(())
}

/// How a session with the broker ended.
enum Ended {
    /// Shutdown was asked for and done.
    Stopped,
    /// The broker went away (or never answered).
    Lost {
        /// What happened.
        why: String,
        /// Whether the session got as far as consuming (the backoff starts over).
        consumed: bool,
    },
}

/// Reconnection delay after `failures` failed attempts in a row: exponential from 0.5 s to
/// 30 s, with ±25% jitter so replicas do not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    let base = 0.5 * f64::from(1u32 << failures.saturating_sub(1).min(6));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
    Duration::from_secs_f64((base * jitter).min(30.0))
}

/// The broker URL with the configured heartbeat and a connection timeout, unless it sets them.
fn amqp_url(config: &WorkerConfig) -> String {
    let mut url = config.amqp_url.expose().to_owned();
    for (name, value) in [
        ("heartbeat", u64::from(config.heartbeat_secs)),
        ("connection_timeout", 10_000),
    ] {
        if !url.contains(&format!("{name}=")) {
            let separator = if url.contains('?') { '&' } else { '?' };
            let _ = write!(url, "{separator}{name}={value}");
        }
    }
    url
}

async fn connect(config: &WorkerConfig, name: &str) -> Result<Connection, String> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    // lapin's errors name the host, not the URL; the password stays out of logs.
    Connection::connect(&amqp_url(config), properties)
        .await
        .map_err(|err| format!("connecting to the broker: {err}"))
}

/// The broker side of a session: two connections, the consuming channel and its consumer,
/// and the confirm-mode publisher.
struct Session {
    consuming: Connection,
    publishing: Connection,
    channel: lapin::Channel,
    publisher: Publisher,
    consumer: lapin::Consumer,
}

/// Connects, declares the topology and starts consuming.
async fn open_session(w: &WorkerConfig) -> Result<Session, String> {
    let consuming = connect(w, "ingestd consumer").await?;
    // Outputs travel on their own connection, so flow control on publishing cannot stall
    // acks.
    let publishing = connect(w, "ingestd publisher").await?;
    let channels = async {
        let channel = consuming.create_channel().await?;
        topology::declare(&channel, w).await?;
        channel
            .basic_qos(w.concurrency, BasicQosOptions { global: false })
            .await?;
        let publisher = Publisher::open(&publishing).await?;
        let consumer = channel
            .basic_consume(
                ShortString::from(w.jobs_queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, publisher, consumer))
    };
    match channels.await {
        Ok((channel, publisher, consumer)) => Ok(Session {
            consuming,
            publishing,
            channel,
            publisher,
            consumer,
        }),
        Err(err) => Err(format!("setting up: {err}")),
    }
}

/// One connection's life: declare, consume, dispatch, until the broker goes or shutdown.
async fn session(ctx: &Arc<Context>, mut stop: watch::Receiver<bool>) -> Ended {
    let lost = |why: String| Ended::Lost {
        why,
        consumed: false,
    };
    let w = &ctx.config.worker;
    let setup = open_session(w);
    // A peer that accepts TCP and never speaks AMQP must not hold the worker (or SIGTERM).
    let setup = tokio::select! {
        done = tokio::time::timeout(BROKER_TIMEOUT, setup) => done,
        _ = stop.wait_for(|stopped| *stopped) => return Ended::Stopped,
    };
    let Session {
        consuming,
        publishing,
        channel,
        publisher,
        mut consumer,
    } = match setup {
        Ok(Ok(parts)) => parts,
        Ok(Err(why)) => return lost(why),
        Err(_) => return lost("the broker did not complete the handshake in time".to_owned()),
    };
    let consuming_since = Instant::now();
    ctx.metrics.set_ready(true);
    tracing::info!(queue = %w.jobs_queue, concurrency = w.concurrency, "consuming");
    let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
    // A publishing connection that died while idle is noticed here, not at the next job.
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let broke = loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break None,
            _ = check.tick() => {
                if !consuming.status().connected() || !publishing.status().connected() {
                    break Some("a broker connection closed".to_owned());
                }
            }
            Some(done) = tasks.join_next() => match done {
                Ok(Err(why)) => break Some(why),
                Ok(Ok(())) => {}
                // A bug; its delivery was neither acked nor returned: start over so the broker
                // redelivers it (and parks it once it reaches the delivery limit).
                Err(join) => break Some(format!("a job task failed: {join}")),
            },
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let (ctx, publisher) = (Arc::clone(ctx), publisher.clone());
                    tasks.spawn(async move { handle(&ctx, &publisher, delivery).await });
                }
                Some(Err(err)) => break Some(format!("consuming: {err}")),
                None => break Some("the broker cancelled the consumer".to_owned()),
            },
        }
    };
    ctx.metrics.set_ready(false);
    if let Some(why) = broke {
        // Unacked deliveries go back to the queue when the connection closes.
        tasks.abort_all();
        let _ = consuming.close(200, "reconnecting".into()).await;
        let _ = publishing.close(200, "reconnecting".into()).await;
        return Ended::Lost {
            why,
            // A session that dies as soon as it starts must not reset the backoff.
            consumed: consuming_since.elapsed() > STABLE_SESSION,
        };
    }
    tracing::info!(
        jobs = tasks.len(),
        "stopping: no new jobs; waiting for jobs in flight"
    );
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let grace = tokio::time::sleep(Duration::from_secs(w.shutdown_grace_secs));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            () = &mut grace => {
                tracing::warn!(jobs = tasks.len(), "grace period over: requeueing jobs in flight");
                tasks.abort_all();
                break;
            }
        }
    }
    // Closing the channel returns every unacked delivery (prefetched or unfinished) to the queue.
    let _ = channel.close(200, "shutting down".into()).await;
    let _ = consuming.close(200, "shutting down".into()).await;
    let _ = publishing.close(200, "shutting down".into()).await;
    Ended::Stopped
}

/// What to do with a delivery once its job has run.
enum Disposition {
    Ack,
    Retry { code: &'static str, reason: String },
    Refuse { code: &'static str, reason: String },
}

/// Runs one delivery's job and settles it. `Err` means the broker connection is unusable.
async fn handle(ctx: &Context, publisher: &Publisher, delivery: Delivery) -> Result<(), String> {
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
    let job = match Job::from_json(&delivery.data, &ctx.config.chunking) {
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
                out.finish().await
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
        Ok(Ok(())) => {}
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

/// Publishes `job` to the jobs exchange (declaring the topology first) and waits for the
/// broker's confirm: the producer of `ingestd enqueue`.
///
/// # Errors
/// When the broker cannot be reached or does not confirm the job.
pub async fn enqueue(config: &WorkerConfig, job: &Job) -> Result<(), String> {
    let connection = tokio::time::timeout(BROKER_TIMEOUT, connect(config, "ingestd enqueue"))
        .await
        .map_err(|_| "the broker did not answer in time".to_owned())??;
    let sent = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|err| err.to_string())?;
        // The job must be routable; output queues are the workers' business.
        let jobs_only = WorkerConfig {
            declare_output_queues: false,
            ..config.clone()
        };
        topology::declare(&channel, &jobs_only)
            .await
            .map_err(|err| format!("declaring the topology: {err}"))?;
        let publisher = Publisher::open(&connection)
            .await
            .map_err(|err| err.to_string())?;
        let payload = serde_json::to_vec(job).map_err(|err| err.to_string())?;
        let message = Message {
            exchange: &config.jobs_exchange,
            routing_key: job.kind.name(),
            payload: &payload,
            headers: FieldTable::default(),
        };
        let mut confirms = Confirms::default();
        publisher
            .send(message, &mut confirms)
            .await
            .map_err(|err| err.to_string())?;
        confirms.settle().await.map_err(|err| err.to_string())
    };
    let sent = tokio::time::timeout(BROKER_TIMEOUT, sent)
        .await
        .unwrap_or_else(|_| Err("the broker did not confirm the job in time".to_owned()));
    let _ = connection.close(200, "done".into()).await;
    sent
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

    #[test]
    fn the_broker_url_gets_a_heartbeat_unless_it_has_one() {
        let mut config = WorkerConfig::default();
        assert!(amqp_url(&config).ends_with("/%2f?heartbeat=10&connection_timeout=10000"));
        config.amqp_url = crate::job::Secret::new("amqp://h/%2f?heartbeat=3");
        assert_eq!(
            amqp_url(&config),
            "amqp://h/%2f?heartbeat=3&connection_timeout=10000"
        );
    }

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        let first = backoff(1);
        assert!(first >= Duration::from_millis(375) && first <= Duration::from_millis(625));
        assert!(backoff(4) > backoff(1));
        assert!(backoff(50) <= Duration::from_secs(30));
    }
}

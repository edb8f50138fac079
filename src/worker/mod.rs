//! `ingestd worker`: consumes jobs from RabbitMQ, runs them through the pipeline and publishes
//! their outputs with confirms. The only module that knows about deliveries.
//!
//! A delivery is acked only after every output of its job is confirmed. Jobs that fail
//! transiently wait in a TTL queue and come back; jobs that can never succeed are parked in the
//! dead-letter queue with the reason in headers. Losing the broker ends the session: unacked
//! deliveries go back to the queue, and the worker reconnects with jittered backoff.

mod delivery;
pub mod health;
pub mod jobs;
pub mod metrics;
mod schedule;
pub mod topology;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Config, WorkerConfig};
use crate::embed::Embedder;
use crate::job::Job;
use crate::sink::amqp::{Confirms, Message, Publisher};
use crate::source::S3Access;
use crate::state::{StateError, Store};
use crate::transcribe::{NO_PROVIDER, Transcriber};
use jobs::Context;
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
    /// The state store can never be used as it is (not a store, too new, wrong key).
    #[error("{code}: {0}", code = .0.code())]
    State(StateError),
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
    let embedder = Embedder::start(&config.embedding, |var| std::env::var(var).ok());
    // Without a usable provider, audio and video get their metadata records only.
    let transcriber = Transcriber::start(&config.transcription, |var| std::env::var(var).ok())
        .and_then(|started| started.ok_or_else(|| NO_PROVIDER.to_owned()))
        .inspect_err(|why| {
            if config.transcription.url.is_some() {
                tracing::warn!(%why, "audio and video will not be transcribed");
            }
        });
    let transcription = transcriber
        .as_ref()
        .map_or_else(|_| Arc::default(), |started| started.stats());
    let metrics = Arc::new(Metrics::new(embedder.stats(), transcription));
    let address = config.worker.listen.clone();
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|source| WorkerError::Listen { address, source })?;
    let health = tokio::spawn(health::serve(listener, Arc::clone(&metrics)));
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let state = match config.state.location() {
        None => None,
        Some(location) => {
            let key = std::env::var(&config.state.key_env).ok();
            match open_state(&location, key.as_deref(), stop.clone()).await {
                Ok(Some(store)) => Some(store),
                Ok(None) => {
                    health.abort();
                    return Ok(());
                }
                Err(err) => {
                    health.abort();
                    return Err(WorkerError::State(err));
                }
            }
        }
    };
    let ctx = Arc::new(Context {
        access: S3Access::new(&config.s3, allow_private_endpoint),
        cpu: Arc::new(Semaphore::new(crate::config::cpu_slots())),
        metrics: Arc::clone(&metrics),
        embedder,
        transcriber,
        state,
        sources: jobs::SourceCache::default(),
        worker_id: format!(
            "{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
        config,
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

/// Opens the state store, trying again with backoff while it cannot be reached (the worker is
/// not ready meanwhile and consumes nothing). `None` when shutdown came first.
async fn open_state(
    location: &str,
    key: Option<&str>,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<Store>, StateError> {
    let mut failures = 0u32;
    loop {
        match Store::open(location, key).await {
            Ok(store) => return Ok(Some(store)),
            Err(err) if err.retryable() => {
                failures = failures.saturating_add(1);
                let delay = backoff(failures);
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis(), "state store unavailable");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|stopped| *stopped) => return Ok(None),
                }
            }
            Err(err) => return Err(err),
        }
    }
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

/// Time a polite close may take; a connection that is already broken may never answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes `connection` politely if it answers within `limit`; a broken one is dropped.
async fn close(connection: &Connection, why: &str, limit: Duration) {
    if connection.status().connected() {
        let _ = tokio::time::timeout(limit, connection.close(200, why.into())).await;
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
    let mut auto_sync =
        tokio::time::interval(Duration::from_secs(ctx.config.state.auto_sync_poll_secs));
    let scheduling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let broke = loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break None,
            _ = check.tick() => {
                if !consuming.status().connected() || !publishing.status().connected() {
                    break Some("a broker connection closed".to_owned());
                }
            }
            _ = auto_sync.tick(), if ctx.state.is_some() => {
                // One round at a time per worker; rounds of other workers skip what this one
                // holds.
                if !scheduling.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    let (ctx, publisher) = (Arc::clone(ctx), publisher.clone());
                    let scheduling = Arc::clone(&scheduling);
                    tasks.spawn(async move {
                        let round = schedule::round(&ctx, &publisher).await;
                        scheduling.store(false, std::sync::atomic::Ordering::Release);
                        round
                    });
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
                    tasks.spawn(async move { delivery::handle(&ctx, &publisher, delivery).await });
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
        // Usually one of them is already broken and would never answer: do not wait long.
        let brief = Duration::from_millis(250);
        close(&consuming, "reconnecting", brief).await;
        close(&publishing, "reconnecting", brief).await;
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
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "shutting down".into())).await;
    close(&consuming, "shutting down", CLOSE_TIMEOUT).await;
    close(&publishing, "shutting down", CLOSE_TIMEOUT).await;
    Ended::Stopped
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
    close(&connection, "done", CLOSE_TIMEOUT).await;
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The broker objects the worker relies on, declared idempotently at every (re)connection.
//!
//! * `jobs_exchange` (direct) → `jobs_queue` (quorum, `x-delivery-limit`, at-least-once
//!   dead-lettering), bound once per job
//!   type. A job delivered more often than the limit (it keeps killing workers) is dead-lettered
//!   by the broker to `dead_letter_queue`.
//! * `dead_letter_queue` (quorum): refused and exhausted jobs, with the reason in headers.
//! * `{jobs_queue}.wait.{n}s` (quorum, message TTL n s): jobs waiting for their next attempt;
//!   when the TTL expires the broker dead-letters them back to `jobs_queue`. One queue per delay,
//!   because TTL expiry only happens at the head of a queue.
//! * `chunks_exchange`, `events_exchange` (topic): the outputs; with `declare_output_queues`,
//!   durable queues of the same names bound to `#`.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::WorkerConfig;

/// Job types routed to the jobs queue (the routing key is the job's `type`).
pub const JOB_TYPES: [&str; 7] = [
    "sync_files",
    "sync_object",
    "resync_file",
    "delete_files",
    "sync_items",
    "connect_data_source",
    "update_users",
];

/// The wait queue for retries after `delay_secs`.
#[must_use]
pub fn wait_queue(config: &WorkerConfig, delay_secs: u64) -> String {
    format!("{}.wait.{delay_secs}s", config.jobs_queue)
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares every exchange, queue and binding. Safe to repeat; fails (and the channel closes)
/// when an existing queue was declared with other arguments — change names or delete it.
///
/// # Errors
/// The broker's refusal, naming the object.
pub async fn declare(channel: &Channel, config: &WorkerConfig) -> Result<(), lapin::Error> {
    let exchange = |name: &str, kind: ExchangeKind| {
        let channel = channel.clone();
        let name = ShortString::from(name);
        async move {
            channel
                .exchange_declare(
                    name,
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
        }
    };
    exchange(&config.jobs_exchange, ExchangeKind::Direct).await?;
    exchange(&config.chunks_exchange, ExchangeKind::Topic).await?;
    exchange(&config.events_exchange, ExchangeKind::Topic).await?;
    if config.declare_output_queues {
        for name in [&config.chunks_exchange, &config.events_exchange] {
            let name = ShortString::from(name.as_str());
            channel
                .queue_declare(name.clone(), durable(), FieldTable::default())
                .await?;
            channel
                .queue_bind(
                    name.clone(),
                    name,
                    ShortString::from("#"),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }

    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), string("quorum"));
    channel
        .queue_declare(
            ShortString::from(config.dead_letter_queue.as_str()),
            durable(),
            quorum.clone(),
        )
        .await?;

    // Dead-lettering from quorum queues is at-most-once by default: a job could vanish when
    // its target is briefly unavailable. At-least-once needs reject-publish overflow.
    let mut safe = quorum.clone();
    safe.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    safe.insert("x-overflow".into(), string("reject-publish"));
    let mut jobs = safe.clone();
    jobs.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(config.delivery_limit)),
    );
    jobs.insert("x-dead-letter-exchange".into(), string(""));
    jobs.insert(
        "x-dead-letter-routing-key".into(),
        string(&config.dead_letter_queue),
    );
    channel
        .queue_declare(
            ShortString::from(config.jobs_queue.as_str()),
            durable(),
            jobs,
        )
        .await?;
    for job_type in JOB_TYPES {
        channel
            .queue_bind(
                ShortString::from(config.jobs_queue.as_str()),
                ShortString::from(config.jobs_exchange.as_str()),
                ShortString::from(job_type),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    for &delay in &config.retry_delays_secs {
        let mut wait = safe.clone();
        wait.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.saturating_mul(1000)).unwrap_or(i64::MAX)),
        );
        wait.insert("x-dead-letter-exchange".into(), string(""));
        wait.insert(
            "x-dead-letter-routing-key".into(),
            string(&config.jobs_queue),
        );
        channel
            .queue_declare(
                ShortString::from(wait_queue(config, delay).as_str()),
                durable(),
                wait,
            )
            .await?;
    }
    Ok(())
}

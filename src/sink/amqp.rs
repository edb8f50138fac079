//! Publishing to RabbitMQ with publisher confirms. A message counts as sent only when the broker
//! has confirmed it *and* routed it somewhere (`mandatory`): an exchange with no queue bound
//! would otherwise drop it silently.

use std::collections::VecDeque;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

/// Confirms awaited at once by one [`Confirms`] before it waits for the oldest.
const CONFIRM_WINDOW: usize = 512;

/// Why a message may not have reached a queue. Every case is transient for the job that
/// published it: it is retried, never acked.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (`basic.nack`).
    #[error("the broker refused a message to {0}")]
    Nacked(String),
    /// No queue is bound for the routing key.
    #[error("no queue is bound to {0}")]
    Unroutable(String),
    /// The message could not be serialized (a bug).
    #[error("encoding a message: {0}")]
    Encode(serde_json::Error),
}

/// A channel in confirm mode on the worker's publishing connection.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

/// A message to publish: persistent JSON with optional headers.
pub struct Message<'a> {
    /// The exchange ("" for the default exchange, which routes by queue name).
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// The body.
    pub payload: &'a [u8],
    /// Application headers.
    pub headers: FieldTable,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    ///
    /// # Errors
    /// When the channel cannot be opened.
    pub async fn open(connection: &Connection) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    /// Publishes `message`; its confirm is collected by `confirms`.
    ///
    /// # Errors
    /// When the channel fails, or a confirm waited for (the window is full) is not a delivery.
    pub async fn send(
        &self,
        message: Message<'_>,
        confirms: &mut Confirms,
    ) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(message.headers);
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(message.exchange),
                ShortString::from(message.routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                message.payload,
                properties,
            )
            .await?;
        let target = format!("{}/{}", message.exchange, message.routing_key);
        confirms.push(target, confirm).await
    }

    /// Whether the channel is still usable.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}

/// The outstanding confirms of one unit of work (a job), in publishing order.
#[derive(Default)]
pub struct Confirms {
    pending: VecDeque<(String, PublisherConfirm)>,
}

impl Confirms {
    async fn push(
        &mut self,
        target: String,
        confirm: PublisherConfirm,
    ) -> Result<(), PublishError> {
        self.pending.push_back((target, confirm));
        if self.pending.len() > CONFIRM_WINDOW
            && let Some((target, oldest)) = self.pending.pop_front()
        {
            settle(target, oldest).await?;
        }
        Ok(())
    }

    /// Waits for every outstanding confirm.
    ///
    /// # Errors
    /// The first message that was not delivered.
    pub async fn settle(&mut self) -> Result<(), PublishError> {
        while let Some((target, confirm)) = self.pending.pop_front() {
            settle(target, confirm).await?;
        }
        Ok(())
    }
}

async fn settle(target: String, confirm: PublisherConfirm) -> Result<(), PublishError> {
    let started = std::time::Instant::now();
    let confirmed = confirm.await;
    crate::telemetry::timed(crate::telemetry::Stage::Publish, started.elapsed());
    match confirmed? {
        // A returned message is acked too; only an ack without one was delivered.
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(target)),
        Confirmation::Nack(_) => Err(PublishError::Nacked(target)),
    }
}

/// A header value from a string.
#[must_use]
pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

//! Where records and events go: JSON Lines in one-shot mode, RabbitMQ exchanges with publisher
//! confirms in the worker.

pub mod amqp;
mod jsonl;
pub mod spool;

pub use jsonl::{JsonlSink, to_line};

/// Output could not be written or delivered.
#[derive(Debug, thiserror::Error)]
#[error("writing {what}: {source}")]
pub struct SinkError {
    /// `chunks` or `events`.
    pub what: &'static str,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

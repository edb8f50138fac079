//! Where records and events go. JSON Lines (one-shot mode) is here; the AMQP sink of the
//! worker joins it.

mod jsonl;

pub use jsonl::JsonlSink;

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

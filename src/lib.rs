//! ingestd: the ingestion and chunking worker.
pub mod chunk;
pub mod detect;
pub mod error;

//! ingestd: the ingestion and chunking worker behind an S3 / DigitalOcean Spaces data
//! connector. Crate map — one line per module, in the order data flows:
//!
//! * [`config`]    — `pipeline.toml` → validated [`config::Config`], environment overrides.
//! * [`job`]       — the message contract: jobs in, chunk records and events out, JSON Schemas.
//! * [`source`]    — where objects come from ([`source::Source`]): local files, S3 and Spaces.
//! * [`detect`]    — bytes + content type + name → format and media type.
//! * [`extract`]   — text out of each format family (text, document, image, media), with limits,
//!   off the async runtime.
//! * [`chunk`]     — token-exact chunking with overlap on semantic boundaries.
//! * [`embed`]     — vectors for chunk records from OpenAI-compatible providers, batched.
//! * [`provider`]  — what the HTTP providers we call share: keys, retry timing, quoted errors.
//! * [`transcribe`] — transcripts of audio and video from OpenAI-compatible speech-to-text.
//! * [`pipeline`]  — one object through detect → extract → chunk → embed → records; a file per
//!   family (`text`, `document`, `image`, `media`), records cut in `records`.
//! * [`sink`]      — where records and events go: JSON Lines (and the spool where a file's lines
//!   wait for their turn), RabbitMQ with confirms.
//! * [`state`]     — what is remembered between syncs: stored data sources (secrets sealed),
//!   synced objects and their chunk ids, auto-sync settings; SQLite or PostgreSQL.
//! * [`sync`]      — the one-shot `ingestd sync` run over a whole source.
//! * [`worker`]    — `ingestd worker`: jobs from RabbitMQ, retries, dead letters, health.
//! * [`error`]     — stable error codes and skip reasons carried by events; configuration errors.
//! * [`secret`]    — a value never shown (credentials in jobs and configuration).
//! * [`telemetry`] — tracing set-up and the progress bar.

pub mod chunk;
pub mod config;
pub mod cores;
pub mod detect;
pub mod embed;
pub mod error;
pub mod extract;
pub mod job;
pub mod pipeline;
pub mod provider;
pub mod secret;
pub mod sink;
pub mod source;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod transcribe;
pub mod worker;

//! Speech to text through an OpenAI-compatible `POST /audio/transcriptions` (OpenAI, Azure
//! OpenAI, faster-whisper-server, whisper.cpp's server, LocalAI): one request per piece of a
//! recording (16 kHz mono WAV), verbose JSON with segment timestamps back, retried on 429, 5xx,
//! timeouts and garbage, then `TRANSCRIPTION_FAILED`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use crate::embed::{Auth, OPENAI_API_KEY};
use crate::error::{ErrorCode, FileError};
use crate::extract::media::{Piece, TRANSCRIPTION_RATE};
use crate::job::Secret;
use crate::provider::{self, Failure, backoff, retry_after, source_chain};

/// Why audio and video get no transcript when `[transcription]` names no provider.
pub const NO_PROVIDER: &str = "no transcription provider is configured ([transcription] url)";

/// `[transcription]` of `pipeline.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TranscriptionConfig {
    /// Base URL of the provider; requests go to `<url>/audio/transcriptions`
    /// (`https://api.openai.com/v1`). Unset: audio and video get their metadata record only.
    pub url: Option<String>,
    /// The provider's model (`whisper-1`; `gpt-4o-transcribe` does not give timestamps).
    pub model: String,
    /// The names a job's `file_sync_config.transcription_service` may give for this provider
    /// (compared without case); a job naming another service is refused (`INVALID_JOB`).
    pub service_names: Vec<String>,
    /// The model asked when a job wants speaker labels (`gpt-4o-transcribe-diarize`, answered
    /// as `diarized_json`). Unset: the provider cannot label speakers, and transcripts have none.
    pub speaker_labels_model: Option<String>,
    /// How the key is sent.
    pub auth: Auth,
    /// The environment variable holding the key (required unless `auth = "none"`).
    pub api_key_env: Option<String>,
    /// ISO-639-1 language sent unless a job asks to detect it (`detect_audio_language`). Unset:
    /// the provider always detects it.
    pub language: Option<String>,
    /// Largest upload the provider takes (OpenAI: 25 MB); pieces are cut to fit.
    pub max_upload_bytes: u64,
    /// Longest piece in seconds, whatever the upload limit allows.
    pub max_piece_secs: u64,
    /// Requests in flight at once.
    pub max_concurrent_requests: usize,
    /// Seconds one request may take, upload and answer included.
    pub timeout_secs: u64,
    /// Attempts per piece, the first included.
    pub max_attempts: u32,
    /// The longest `Retry-After` waited out in process.
    pub max_retry_wait_secs: u64,
}

impl Default for TranscriptionConfig {
    fn default() -> Self {
        TranscriptionConfig {
            url: None,
            model: "whisper-1".to_owned(),
            service_names: vec!["OPENAI".to_owned(), "OPENAI_WHISPER".to_owned()],
            speaker_labels_model: None,
            auth: Auth::Bearer,
            api_key_env: Some(OPENAI_API_KEY.to_owned()),
            language: None,
            max_upload_bytes: 25_000_000,
            max_piece_secs: 600,
            max_concurrent_requests: 2,
            timeout_secs: 300,
            max_attempts: 4,
            max_retry_wait_secs: 60,
        }
    }
}

impl TranscriptionConfig {
    /// Checks ranges and the URL.
    ///
    /// # Errors
    /// A sentence naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            let parsed = reqwest::Url::parse(url);
            if !matches!(&parsed, Ok(u) if matches!(u.scheme(), "http" | "https")) {
                return Err(format!("transcription.url: `{url}` is not an http(s) URL"));
            }
        }
        if self.auth != Auth::None && self.api_key_env.is_none() {
            return Err(
                "transcription.api_key_env: name the variable holding the key, or set \
                        auth = \"none\""
                    .to_owned(),
            );
        }
        if self.max_concurrent_requests == 0
            || self.timeout_secs == 0
            || self.max_attempts == 0
            || self.max_piece_secs < 5
            || self.max_upload_bytes < 1_000_000
        {
            return Err(
                "transcription: max_concurrent_requests, timeout_secs and max_attempts \
                        must be at least 1, max_piece_secs at least 5 and max_upload_bytes at \
                        least 1000000"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// What a job asks of its transcripts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// `include_speaker_labels`.
    pub speaker_labels: bool,
    /// `detect_audio_language`.
    pub detect_language: bool,
}

/// One stretch of speech.
#[derive(Debug, Clone, PartialEq)]
pub struct Spoken {
    /// Start in the recording.
    pub start_ms: u64,
    /// End in the recording.
    pub end_ms: u64,
    /// The words.
    pub text: String,
    /// Who spoke, when the provider labels speakers.
    pub speaker: Option<String>,
}

/// The transcript of one piece.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    /// The language the provider heard.
    pub language: Option<String>,
    /// Segments in order, in the recording's time.
    pub segments: Vec<Spoken>,
}

/// A configured provider.
pub struct Transcriber {
    stats: Arc<Stats>,
    client: reqwest::Client,
    endpoint: reqwest::Url,
    /// The endpoint as errors show it.
    shown: String,
    key: Option<(Auth, Secret)>,
    config: TranscriptionConfig,
    slots: tokio::sync::Semaphore,
}

/// Requests to the transcription provider and their outcomes, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Pieces transcribed.
    pub succeeded: AtomicU64,
    /// Requests that failed and were tried again.
    pub retried: AtomicU64,
    /// Pieces that failed for good.
    pub failed: AtomicU64,
    /// Milliseconds of audio transcribed.
    pub audio_ms: AtomicU64,
}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcriber")
            .field("endpoint", &self.shown)
            .field("model", &self.config.model)
            .finish_non_exhaustive()
    }
}

impl Transcriber {
    /// The provider `config` names, with its key from `env`; `None` when none is configured.
    ///
    /// # Errors
    /// When the key is not set or the client cannot be built.
    pub fn start(
        config: &TranscriptionConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Arc<Self>>, String> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let key = match (&config.auth, &config.api_key_env) {
            (Auth::None, _) | (_, None) => None,
            (auth, Some(var)) => match env(var).filter(|k| !k.is_empty()) {
                Some(key) => Some((*auth, Secret::new(key))),
                None => {
                    return Err(format!(
                        "the transcription provider's key is not set ({var} is empty)"
                    ));
                }
            },
        };
        let mut endpoint = reqwest::Url::parse(url.trim_end_matches('/'))
            .map_err(|err| format!("transcription.url: {err}"))?;
        endpoint
            .path_segments_mut()
            .map_err(|()| "transcription.url cannot take a path".to_owned())?
            .extend(["audio", "transcriptions"]);
        let shown = provider::shown(&endpoint);
        let client =
            provider::client(config.timeout_secs).map_err(|err| format!("transcription: {err}"))?;
        Ok(Some(Arc::new(Transcriber {
            stats: Arc::default(),
            client,
            endpoint,
            shown,
            key,
            slots: tokio::sync::Semaphore::new(config.max_concurrent_requests),
            config: config.clone(),
        })))
    }

    /// Its requests and their outcomes so far.
    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The longest piece sent: within the upload limit and `max_piece_secs`.
    #[must_use]
    pub fn max_piece_ms(&self) -> u64 {
        let bytes_per_ms = u64::from(TRANSCRIPTION_RATE) * 2 / 1000;
        let by_upload = self
            .config
            .max_upload_bytes
            .saturating_sub(WAV_HEADER as u64)
            / bytes_per_ms;
        by_upload.min(self.config.max_piece_secs.saturating_mul(1000))
    }

    /// The transcript of `piece`, its times in the recording's.
    ///
    /// # Errors
    /// `TRANSCRIPTION_FAILED`: retryable after the attempts for 429, 5xx, timeouts and
    /// garbage; permanent when the provider refuses the key or the request.
    pub async fn transcribe(&self, piece: &Piece, ask: Ask) -> Result<Transcript, FileError> {
        let wav = bytes::Bytes::from(wav(&piece.samples));
        let piece_ms = piece.samples.len() as u64 * 1000 / u64::from(TRANSCRIPTION_RATE);
        let what = format!(
            "transcribing {:.1} s of audio from {:.1} s with {}",
            piece_ms as f64 / 1000.0,
            piece.start_ms as f64 / 1000.0,
            self.shown
        );
        let max_wait = Duration::from_secs(self.config.max_retry_wait_secs);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = {
                let _slot = self.slots.acquire().await;
                self.attempt(&what, wav.clone(), piece_ms, ask).await
            };
            let (error, after) = match outcome {
                Ok(mut transcript) => {
                    for segment in &mut transcript.segments {
                        segment.start_ms += piece.start_ms;
                        segment.end_ms += piece.start_ms;
                    }
                    self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                    self.stats.audio_ms.fetch_add(piece_ms, Ordering::Relaxed);
                    return Ok(transcript);
                }
                Err(Failure::Stop(error) | Failure::Refused { error, .. }) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(error);
                }
                Err(Failure::Retry { error, after }) => (error, after),
            };
            let too_long = after.is_some_and(|after| after > max_wait);
            if attempt >= self.config.max_attempts || too_long {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                return Err(FileError {
                    message: format!("{} (gave up after {attempt} attempts)", error.message),
                    ..error
                });
            }
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            let wait = after.map_or(backoff(attempt), |after| after.max(backoff(attempt)));
            tracing::debug!(attempt, wait_ms = wait.as_millis(), error = %error.message, "transcription request retried");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        what: &str,
        wav: bytes::Bytes,
        piece_ms: u64,
        ask: Ask,
    ) -> Result<Transcript, Failure> {
        let diarized = ask.speaker_labels && self.config.speaker_labels_model.is_some();
        let (model, format) = match (&self.config.speaker_labels_model, diarized) {
            (Some(model), true) => (model.clone(), "diarized_json"),
            _ => (self.config.model.clone(), "verbose_json"),
        };
        let file = reqwest::multipart::Part::stream_with_length(wav.clone(), wav.len() as u64)
            .file_name("audio.wav")
            .mime_str("audio/wav")
            .map_err(|err| failed(format!("{what}: {err}")))?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", model)
            .text("response_format", format);
        if diarized {
            form = form.text("chunking_strategy", "auto");
        } else {
            form = form.text("timestamp_granularities[]", "segment");
        }
        if !ask.detect_language
            && let Some(language) = &self.config.language
        {
            form = form.text("language", language.clone());
        }
        let mut request = self.client.post(self.endpoint.clone()).multipart(form);
        if let Some((auth, key)) = &self.key {
            request = provider::authorize(request, *auth, key).map_err(|()| {
                failed(format!(
                    "{what}: the API key holds characters a header cannot"
                ))
            })?;
        }
        let response = request.send().await.map_err(|err| retry(what, err))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|err| retry(what, err))?;
        if !status.is_success() {
            return Err(self.refused(what, status, &headers, &body));
        }
        parse(&body, piece_ms).map_err(|why| Failure::Retry {
            error: FileError::transient(ErrorCode::TranscriptionFailed, format!("{what}: {why}")),
            after: None,
        })
    }

    fn refused(
        &self,
        what: &str,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Failure {
        let key = self.key.as_ref().map(|(_, key)| key);
        let answered = format!("{what}: the provider answered {status}");
        match status.as_u16() {
            401 | 403 => failed(format!("{answered}: the API key was refused")),
            408 | 409 | 429 | 500..=599 => Failure::Retry {
                error: FileError::transient(
                    ErrorCode::TranscriptionFailed,
                    format!("{answered}{}", provider::quote(body, key)),
                ),
                after: retry_after(headers, std::time::SystemTime::now()),
            },
            _ => failed(format!("{answered}{}", provider::quote(body, key))),
        }
    }
}

fn failed(message: String) -> Failure {
    Failure::Stop(FileError::permanent(
        ErrorCode::TranscriptionFailed,
        message,
    ))
}

fn retry(what: &str, err: reqwest::Error) -> Failure {
    // reqwest's errors name the URL, user info and query included; `what` names it safely.
    let err = err.without_url();
    let why = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        source_chain(&err)
    };
    Failure::Retry {
        error: FileError::transient(ErrorCode::TranscriptionFailed, format!("{what}: {why}")),
        after: None,
    }
}

/// Bytes of a canonical WAV header.
const WAV_HEADER: usize = 44;

/// 16-bit mono PCM at [`TRANSCRIPTION_RATE`] as a WAV file.
fn wav(samples: &[i16]) -> Vec<u8> {
    let data = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let rate = TRANSCRIPTION_RATE;
    let mut out = Vec::with_capacity(WAV_HEADER + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    segments: Option<Vec<AnswerSegment>>,
}

#[derive(Deserialize)]
struct AnswerSegment {
    start: f64,
    end: f64,
    text: String,
    #[serde(default)]
    speaker: Option<String>,
}

/// A verbose or diarized JSON answer for a piece of `piece_ms`, its times checked and kept
/// within the piece.
fn parse(body: &[u8], piece_ms: u64) -> Result<Transcript, String> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|err| format!("the answer is not a transcription: {err}"))?;
    let to_ms = |seconds: f64| -> Result<u64, String> {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(format!("a segment has the time {seconds}"));
        }
        #[allow(clippy::cast_sign_loss)] // not negative, checked above
        let ms = (seconds * 1000.0).round() as u64;
        // Past the end is rounding, or a provider's mistake: kept within the piece either way
        // (asking again would get the same answer).
        if ms > piece_ms + 2000 {
            tracing::warn!(ms, piece_ms, "a transcript segment ends past its piece");
        }
        Ok(ms.min(piece_ms))
    };
    let segments = match answer.segments {
        Some(segments) if !segments.is_empty() => segments
            .into_iter()
            .map(|s| {
                let (start_ms, end_ms) = (to_ms(s.start)?, to_ms(s.end)?);
                Ok(Spoken {
                    start_ms: start_ms.min(end_ms),
                    end_ms,
                    text: s.text.trim().to_owned(),
                    speaker: s.speaker,
                })
            })
            .collect::<Result<Vec<_>, String>>()?,
        // No timestamps: the whole text spans the piece.
        _ => answer
            .text
            .map(|text| Spoken {
                start_ms: 0,
                end_ms: piece_ms,
                text: text.trim().to_owned(),
                speaker: None,
            })
            .into_iter()
            .collect(),
    };
    Ok(Transcript {
        language: answer.language.filter(|l| !l.is_empty()),
        segments: segments
            .into_iter()
            .filter(|s| !s.text.is_empty())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_headers_describe_16k_mono_pcm() {
        let bytes = wav(&[0, 1, -1, i16::MAX]);
        assert_eq!(bytes.len(), WAV_HEADER + 8);
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
            16_000
        );
        assert_eq!(u32::from_le_bytes(bytes[40..44].try_into().unwrap()), 8);
        assert_eq!(i16::from_le_bytes([bytes[50], bytes[51]]), i16::MAX);
    }

    #[test]
    fn answers_are_checked_and_kept_within_their_piece() {
        let verbose = br#"{"text": "a b", "language": "english", "segments": [
            {"id": 0, "start": 0.5, "end": 1.25, "text": " a "},
            {"id": 1, "start": 1.5, "end": 3.0004, "text": "b"},
            {"id": 2, "start": 2.9, "end": 3.0, "text": "  "}]}"#;
        let transcript = parse(verbose, 3000).unwrap();
        assert_eq!(transcript.language.as_deref(), Some("english"));
        assert_eq!(transcript.segments.len(), 2);
        assert_eq!(transcript.segments[0].start_ms, 500);
        assert_eq!(transcript.segments[0].text, "a");
        assert_eq!(transcript.segments[1].end_ms, 3000);
        let plain = parse(br#"{"text": "hello"}"#, 1200).unwrap();
        assert_eq!(plain.segments[0].end_ms, 1200);
        assert!(
            parse(
                br#"{"segments": [{"start": -1, "end": 1, "text": "x"}]}"#,
                900
            )
            .is_err()
        );
        let past = parse(
            br#"{"segments": [{"start": 0, "end": 99, "text": "x"}]}"#,
            900,
        );
        assert_eq!(past.unwrap().segments[0].end_ms, 900);
        let untimed = parse(br#"{"text": "all of it", "segments": []}"#, 700).unwrap();
        assert_eq!(untimed.segments[0].text, "all of it");
        assert!(parse(b"<html>", 900).is_err());
    }
}

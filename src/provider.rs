//! What every HTTP provider we call (embeddings, transcription) has in common: how the key is
//! sent, how long to wait before trying again, and how its errors are quoted.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::embed::Auth;
use crate::error::FileError;
use crate::job::Secret;

/// First retry delay; doubled per attempt, with equal jitter (half fixed, half random).
const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// Longest delay between attempts when the provider does not say.
const BACKOFF_CAP: Duration = Duration::from_secs(20);

/// Longest provider message quoted in an error.
const QUOTED_MESSAGE_CHARS: usize = 300;

/// Longest wait a `Retry-After` is taken at its word for (longer ones end the attempts anyway).
const LONGEST_RETRY_AFTER: Duration = Duration::from_hours(24);

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorDetail {
    Object { message: Option<String> },
    Text(String),
}

/// Why one attempt failed.
pub(crate) enum Failure {
    /// Worth another attempt, after at least `after` when the provider said so.
    Retry {
        error: FileError,
        after: Option<Duration>,
    },
    /// Another attempt would fail the same way.
    Stop(FileError),
    /// The provider refused what was sent (400, 413, 422): an input may be at fault. `reason`
    /// is the provider's answer alone, the same whatever the batch.
    Refused { error: FileError, reason: String },
}

/// `: <the provider's message>` from an error body (OpenAI's `{"error": {"message"}}`, or the
/// text as it is), short, with `key` blanked out wherever it appears; empty when there is none.
pub(crate) fn quote(body: &[u8], key: Option<&Secret>) -> String {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: ErrorDetail::Object { message: Some(m) } | ErrorDetail::Text(m),
        }) => m,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    // The key is blanked out before the text is cut, so no part of it survives the cut.
    let message = match key {
        Some(key) if !key.expose().is_empty() => message.replace(key.expose(), "***"),
        _ => message,
    };
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(QUOTED_MESSAGE_CHARS)
        .collect();
    if message.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", message.trim())
    }
}

/// The HTTP client of a provider whose requests may take `timeout_secs`, answer included
/// (connecting at most 10 s of it).
///
/// # Errors
/// When the client cannot be built (no TLS roots).
pub(crate) fn client(timeout_secs: u64) -> Result<reqwest::Client, String> {
    let timeout = Duration::from_secs(timeout_secs);
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .user_agent(concat!("ingestd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| format!("HTTP client: {err}"))
}

/// `endpoint` as errors and logs show it: scheme, host, port and path, never user info or
/// query.
pub(crate) fn shown(endpoint: &reqwest::Url) -> String {
    let port = endpoint
        .port()
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        endpoint.scheme(),
        endpoint.host_str().unwrap_or(""),
        endpoint.path()
    )
}

/// `request` with `key` in the header `auth` names, marked sensitive (never logged).
///
/// # Errors
/// When the key holds characters a header cannot.
pub(crate) fn authorize(
    request: reqwest::RequestBuilder,
    auth: Auth,
    key: &Secret,
) -> Result<reqwest::RequestBuilder, ()> {
    let value = match auth {
        Auth::Bearer => format!("Bearer {}", key.expose()),
        Auth::ApiKey | Auth::None => key.expose().to_owned(),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| ())?;
    value.set_sensitive(true);
    Ok(match auth {
        Auth::Bearer => request.header(reqwest::header::AUTHORIZATION, value),
        Auth::ApiKey => request.header("api-key", value),
        Auth::None => request,
    })
}

/// The error and its causes, `: `-joined (reqwest's own text is terse).
pub(crate) fn source_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The wait a 429 or 503 asks for: `retry-after-ms` (OpenAI, Azure), else `Retry-After` in
/// seconds or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // Whatever the header says, the wait is a real duration of at most a day.
    let seconds = |secs: f64| {
        (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(LONGEST_RETRY_AFTER.as_secs_f64())))
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && let Some(wait) = seconds(ms / 1000.0)
    {
        return Some(wait);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or_default()
            .min(LONGEST_RETRY_AFTER),
    )
}

/// Exponential backoff with full jitter before attempt `attempt + 1`.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(jitter())
}

/// A number in [0.5, 1): enough spread that replicas do not retry in step.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    0.5 + 0.5 * (mixed as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_shown_without_user_info_or_query() {
        let url =
            reqwest::Url::parse("http://user:secret@127.0.0.1:9/v1/embeddings?key=abc").unwrap();
        assert_eq!(shown(&url), "http://127.0.0.1:9/v1/embeddings");
        let url = reqwest::Url::parse("https://api.openai.com/v1/embeddings").unwrap();
        assert_eq!(shown(&url), "https://api.openai.com/v1/embeddings");
    }

    #[test]
    fn retry_after_is_read_in_all_three_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:20 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(20)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(
            retry_after(&headers, now),
            Some(Duration::from_millis(1500))
        );
        headers.insert("retry-after-ms", HeaderValue::from_static("soon"));
        headers.insert("retry-after", HeaderValue::from_static("never"));
        assert_eq!(retry_after(&headers, now), None);
        // Absurd values are clamped, not a panic.
        headers.insert("retry-after", HeaderValue::from_static("1e20"));
        assert_eq!(retry_after(&headers, now), Some(LONGEST_RETRY_AFTER));
        headers.insert("retry-after", HeaderValue::from_static("-5"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..30 {
            let wait = backoff(attempt);
            assert!(wait <= BACKOFF_CAP, "{attempt}: {wait:?}");
            let ceiling = BACKOFF_BASE.saturating_mul(1 << (attempt - 1).min(16));
            assert!(wait >= ceiling.min(BACKOFF_CAP) / 2, "{attempt}: {wait:?}");
        }
    }

    #[test]
    fn quotes_are_short_and_never_hold_the_key() {
        let key = Secret::new("sk-secret-value".to_owned());
        let body = br#"{"error": {"message": "bad key sk-secret-value given"}}"#;
        assert_eq!(quote(body, Some(&key)), ": bad key *** given");
        assert_eq!(quote(b"  ", None), "");
        let long = "x".repeat(1000);
        assert_eq!(quote(long.as_bytes(), None).len(), 2 + QUOTED_MESSAGE_CHARS);
    }
}

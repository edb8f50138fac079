//! A local transcription provider speaking OpenAI's `POST /v1/audio/transcriptions` wire
//! format (multipart upload; `verbose_json` with segments, or `diarized_json` with speakers).
//! It cannot understand words, but it hears where speech is: every stretch of sound in the
//! uploaded WAV becomes one segment with that stretch's start and end, so a test can check
//! time ranges against where the fixture's sentences really are. Switches inject 401, 429
//! with `Retry-After`, 500, garbage and slow answers.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::http::lock;

/// The key the server accepts.
pub const API_KEY: &str = "sk-ingestd-transcribe-key-never-printed";

/// One failure to answer with instead of a transcript.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429, with this `Retry-After` when given.
    RateLimited(Option<&'static str>),
    /// 500.
    ServerError,
    /// A 200 whose body is not a transcription.
    Garbage,
    /// A transcript, after this long.
    Slow(Duration),
}

/// What one request sent.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The text fields of the form (`model`, `response_format`, `language`, …).
    pub fields: BTreeMap<String, String>,
    /// Samples of the uploaded WAV (16 kHz mono), when it was one.
    pub samples: usize,
    /// Sample rate and channels the WAV header said.
    pub format: Option<(u32, u16)>,
    /// What the server answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    next: Mutex<VecDeque<Fault>>,
    always: Mutex<Option<Fault>>,
    seen: Mutex<Vec<Seen>>,
}

/// A running provider.
pub struct Provider {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Provider {
    /// Starts a provider on a loopback port, on a thread of its own.
    pub fn start() -> Provider {
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let addr = super::http::serve(move |request| {
            let state = Arc::clone(&shared);
            Box::pin(async move { answer(&state, request).await })
        });
        Provider { addr, state }
    }

    /// The OpenAI-style base URL (`http://127.0.0.1:<port>/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answers the next requests with these faults, one each, then normally.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.state.next).extend(faults);
    }

    /// Answers every request with `fault`; `None` answers normally again.
    pub fn fail_always(&self, fault: Option<Fault>) {
        *lock(&self.state.always) = fault;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }
}

fn reply(status: u16, body: String, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).expect("a status"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response
        .body(Full::new(Bytes::from(body)))
        .expect("a response")
}

fn error(status: u16, message: &str, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    reply(status, body.to_string(), headers)
}

/// The parts of a `multipart/form-data` body: name → bytes.
fn parts(content_type: &str, body: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut parts = BTreeMap::new();
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return parts;
    };
    let delimiter = format!("--{}", boundary.trim_matches('"'));
    let mut rest = body;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        let Some(headers_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let headers = String::from_utf8_lossy(&rest[..headers_end]).into_owned();
        let content = &rest[headers_end + 4..];
        let end = find(content, delimiter.as_bytes()).unwrap_or(content.len());
        let value = content[..end.saturating_sub(2)].to_vec();
        if let Some(name) = headers
            .split("name=\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
        {
            parts.insert(name.to_owned(), value);
        }
        rest = &content[end..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sample rate, channels and 16-bit samples of a canonical WAV.
pub fn wav(bytes: &[u8]) -> Option<(u32, u16, Vec<i16>)> {
    if bytes.len() < 44 || &bytes[..4] != b"RIFF" || &bytes[8..16] != b"WAVEfmt " {
        return None;
    }
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let rate = u32::from_le_bytes(bytes[24..28].try_into().ok()?);
    let samples = bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Some((rate, channels, samples))
}

/// Stretches of sound (start, end) in seconds: 20 ms frames louder than -40 dBFS, joined
/// across pauses shorter than 400 ms, dropping blips shorter than 150 ms.
pub fn speech(samples: &[i16], rate: u32) -> Vec<(f64, f64)> {
    let frame = (rate / 50) as usize;
    let loud: Vec<bool> = samples
        .chunks(frame)
        .map(|f| {
            let energy: f64 = f.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / f.len() as f64;
            energy.sqrt() > 328.0
        })
        .collect();
    let seconds = |frames: usize| frames as f64 * frame as f64 / f64::from(rate);
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, on) in loud.iter().enumerate() {
        if !on {
            continue;
        }
        match runs.last_mut() {
            Some((_, end)) if seconds(i - *end) < 0.4 => *end = i + 1,
            _ => runs.push((i, i + 1)),
        }
    }
    runs.into_iter()
        .filter(|(start, end)| seconds(end - start) >= 0.15)
        .map(|(start, end)| (seconds(start), seconds(end)))
        .collect()
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let uri = request.uri().to_string();
    let headers = request.headers().clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    let content_type = header("content-type").unwrap_or_default().to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(400, "unreadable body", &[]),
    };
    let form = parts(&content_type, &body);
    let fields: BTreeMap<String, String> = form
        .iter()
        .filter(|(name, _)| name.as_str() != "file")
        .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
        .collect();
    let audio = form.get("file").and_then(|bytes| wav(bytes));
    let fault = lock(&state.next)
        .pop_front()
        .or_else(|| lock(&state.always).clone());
    let response = if !uri.ends_with("/audio/transcriptions") {
        error(404, "no such route", &[])
    } else if key.as_deref() != Some(API_KEY) {
        let shown = key.unwrap_or_default();
        error(401, &format!("Incorrect API key provided: {shown}."), &[])
    } else {
        match (&fault, &audio) {
            (Some(Fault::RateLimited(after)), _) => {
                let headers: Vec<(&str, &str)> =
                    after.map(|a| ("retry-after", a)).into_iter().collect();
                error(429, "Rate limit reached for requests", &headers)
            }
            (Some(Fault::ServerError), _) => error(500, "The server had an error", &[]),
            (Some(Fault::Garbage), _) => reply(200, "<html>upstream hiccup</html>".to_owned(), &[]),
            (_, None) => error(400, "`file` must be a WAV upload", &[]),
            (_, Some((rate, _, samples))) => transcript(&fields, samples, *rate),
        }
    };
    lock(&state.seen).push(Seen {
        fields,
        samples: audio.as_ref().map_or(0, |a| a.2.len()),
        format: audio.as_ref().map(|a| (a.0, a.1)),
        status: response.status().as_u16(),
    });
    if let Some(Fault::Slow(pause)) = fault {
        tokio::time::sleep(pause).await;
    }
    response
}

/// One segment per stretch of sound, in the form `response_format` asks for.
fn transcript(
    fields: &BTreeMap<String, String>,
    samples: &[i16],
    rate: u32,
) -> Response<Full<Bytes>> {
    let diarized = fields.get("response_format").map(String::as_str) == Some("diarized_json");
    let duration = samples.len() as f64 / f64::from(rate);
    let segments: Vec<_> = speech(samples, rate)
        .into_iter()
        .enumerate()
        .map(|(id, (start, end))| {
            let text = format!(
                " Passage {id} lasting {} ms.",
                ((end - start) * 1000.0).round()
            );
            if diarized {
                let speaker = if id % 2 == 0 { "A" } else { "B" };
                json!({"type": "transcript.text.segment", "id": format!("seg_{id}"),
                       "start": start, "end": end, "text": text, "speaker": speaker})
            } else {
                json!({"id": id, "seek": 0, "start": start, "end": end, "text": text,
                       "tokens": [], "temperature": 0.0, "avg_logprob": -0.2,
                       "compression_ratio": 1.2, "no_speech_prob": 0.01})
            }
        })
        .collect();
    let text: String = segments
        .iter()
        .map(|s| s["text"].as_str().unwrap_or_default())
        .collect();
    let mut body = json!({"task": "transcribe", "duration": duration, "text": text.trim(),
                          "segments": segments});
    if !diarized {
        body["language"] = json!("english");
    }
    reply(200, body.to_string(), &[])
}

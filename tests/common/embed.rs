//! A local embedding provider speaking OpenAI's `POST /v1/embeddings` wire format, started
//! in-process by the tests that need one. Vectors are derived from the input text (see
//! [`vector`]), so a test can tell which text got which vector. Switches inject the failures
//! real providers produce: 401, 429 with `Retry-After`, 500, slow answers, wrong counts, wrong
//! dimensions, values that are not finite, bad JSON and 400 for chosen inputs.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// The key the server accepts.
pub const API_KEY: &str = "sk-ingestd-test-key-never-printed";

/// Dimensions of the test models' vectors, unless a request asks for others.
pub const DIMENSIONS: usize = 8;

/// One failure to answer with instead of vectors.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429, with this `Retry-After` when given.
    RateLimited(Option<&'static str>),
    /// 500.
    ServerError,
    /// Vectors, after this long.
    Slow(Duration),
    /// One vector fewer than inputs.
    WrongCount,
    /// Vectors one value short.
    WrongDimensions,
    /// A value beyond f32 (`1e39`, infinity once read as f32) in the first vector.
    NotFinite,
    /// A body that is not JSON.
    BadJson,
    /// 400 for the whole request, whatever its inputs (a parameter the server does not take).
    BadRequest,
}

/// What one request asked for.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub uri: String,
    /// `model` of the body.
    pub model: String,
    /// The texts, in order.
    pub inputs: Vec<String>,
    /// `dimensions` of the body.
    pub dimensions: Option<usize>,
    /// `encoding_format` of the body.
    pub encoding_format: String,
    /// Which header carried a key: `bearer`, `api-key` or `none`.
    pub auth: &'static str,
    /// What the server answered.
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    /// Faults for the next requests, in order.
    next: Mutex<VecDeque<Fault>>,
    /// A fault for every request once `next` is empty.
    always: Mutex<Option<Fault>>,
    /// Inputs containing this are refused with 400.
    poison: Mutex<Option<String>>,
    /// A share of requests (percent) answered with these faults, in turn.
    share: Mutex<Option<(u64, Vec<Fault>)>>,
    /// Requests answered so far: the share's dice.
    requests: std::sync::atomic::AtomicU64,
    /// Answer every input with the same vector, built once (benchmarks: a provider that
    /// costs next to nothing).
    constant: std::sync::atomic::AtomicBool,
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

    /// The `[embedding]` of a `pipeline.toml` whose default model `TEST` is this provider, two
    /// attempts a batch, its key in `INGESTD_TEST_EMBEDDING_KEY`.
    pub fn pipeline_toml(&self) -> String {
        format!(
            r#"
[embedding]
default_model = "TEST"
batch_linger_ms = 5

[embedding.providers.test]
url = "{}"
api_key_env = "INGESTD_TEST_EMBEDDING_KEY"
max_attempts = 2

[embedding.models.TEST]
provider = "test"
model = "test-embedder"
dimensions = {DIMENSIONS}
max_input_tokens = 1000
"#,
            self.url()
        )
    }

    /// Answers the next requests with these faults, one each, then normally.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.state.next).extend(faults);
    }

    /// Answers every request with `fault` (after those of [`Provider::fail_next`]); `None`
    /// answers normally again.
    pub fn fail_always(&self, fault: Option<Fault>) {
        *lock(&self.state.always) = fault;
    }

    /// Answers `percent` of the requests (chosen pseudo-randomly, the same ones on every run)
    /// with `faults` in turn; an empty list answers normally again.
    pub fn fail_share(&self, percent: u64, faults: Vec<Fault>) {
        *lock(&self.state.share) = (!faults.is_empty()).then_some((percent, faults));
    }

    /// Refuses with 400 every request holding an input that contains `marker`.
    pub fn poison(&self, marker: &str) {
        *lock(&self.state.poison) = Some(marker.to_owned());
    }

    /// Answers every input with one fixed vector from now on, at almost no cost.
    pub fn answer_instantly(&self) {
        self.state
            .constant
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    /// How many times each distinct batch of inputs was sent.
    pub fn attempts(&self) -> Vec<usize> {
        let mut counts = std::collections::BTreeMap::<Vec<String>, usize>::new();
        for seen in self.seen() {
            *counts.entry(seen.inputs).or_default() += 1;
        }
        counts.into_values().collect()
    }
}

use super::http::lock;

/// The vector the provider gives `text`: `dimensions` values from the text's BLAKE3 stream,
/// each a multiple of 1/1024 in [-1, 1), so it survives JSON exactly.
pub fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut reader = blake3::Hasher::new().update(text.as_bytes()).finalize_xof();
    let mut bytes = vec![0u8; dimensions * 2];
    reader.fill(&mut bytes);
    bytes
        .chunks(2)
        .map(|pair| f32::from(u16::from_le_bytes([pair[0], pair[1]]) % 2048) / 1024.0 - 1.0)
        .collect()
}

fn reply(status: u16, body: Vec<u8>, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
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
    reply(status, body.to_string().into_bytes(), headers)
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let uri = request.uri().to_string();
    let headers = request.headers().clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (auth, key) = match (header("authorization"), header("api-key")) {
        (Some(bearer), _) => ("bearer", bearer.strip_prefix("Bearer ").map(str::to_owned)),
        (None, Some(key)) => ("api-key", Some(key.to_owned())),
        (None, None) => ("none", None),
    };
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(400, "unreadable body", &[]),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "the body is not JSON", &[]);
    };
    let inputs: Vec<String> = match &body["input"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => return error(400, "`input` must be a string or an array of strings", &[]),
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let dimensions = body["dimensions"].as_u64().map(|n| n as usize);
    let nth = state
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fault = lock(&state.next)
        .pop_front()
        .or_else(|| lock(&state.always).clone())
        .or_else(|| share(state, nth));
    let poisoned = lock(&state.poison)
        .as_ref()
        .is_some_and(|marker| inputs.iter().any(|i| i.contains(marker.as_str())));
    let response = if !uri.ends_with("/embeddings") && !uri.contains("/embeddings?") {
        error(404, "no such route", &[])
    } else if auth != "none" && key.as_deref() != Some(API_KEY) {
        let shown = key.unwrap_or_default();
        // Like OpenAI's: the key, partly masked, in the message.
        error(
            401,
            &format!(
                "Incorrect API key provided: {shown}. You can find your API key in your settings."
            ),
            &[],
        )
    } else if poisoned {
        // Like some proxies: the caller's key echoed in the refusal.
        let echoed = key.unwrap_or_default();
        error(
            400,
            &format!("this input is refused (request by {echoed})"),
            &[],
        )
    } else if state.constant.load(std::sync::atomic::Ordering::Relaxed) {
        let base64 = body["encoding_format"] == "base64";
        constant(inputs.len(), dimensions.unwrap_or(DIMENSIONS), base64)
    } else {
        vectors(fault.as_ref(), &inputs, &body)
    };
    lock(&state.seen).push(Seen {
        uri,
        model,
        inputs,
        dimensions,
        encoding_format: body["encoding_format"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        auth,
        status: response.status().as_u16(),
        at,
    });
    // Seen before the pause: a client that gives up waiting drops this handler.
    if let Some(Fault::Slow(pause)) = fault {
        tokio::time::sleep(pause).await;
    }
    response
}

/// The fault of the share for the `nth` request, if it is one of them.
fn share(state: &State, nth: u64) -> Option<Fault> {
    let share = lock(&state.share);
    let (percent, faults) = share.as_ref()?;
    // splitmix64's finaliser: the dice.
    let mut x = nth.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % 100 < *percent).then(|| faults[(x / 100) as usize % faults.len()].clone())
}

/// A vector as the request asked for it: base64 of little-endian f32 values, or numbers.
fn encode(values: &[f32], base64: bool) -> Value {
    if base64 {
        use base64::Engine as _;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(values)
    }
}

/// `count` copies of one vector, the body written as text.
fn constant(count: usize, dimensions: usize, base64: bool) -> Response<Full<Bytes>> {
    let values = encode(&vector("", dimensions), base64).to_string();
    let mut body = String::with_capacity(count * (values.len() + 48) + 64);
    body.push_str(r#"{"object":"list","data":["#);
    for index in 0..count {
        if index > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"object":"embedding","index":{index},"embedding":{values}}}"#
        );
    }
    body.push_str(r#"],"model":"constant"}"#);
    reply(200, body.into_bytes(), &[])
}

fn vectors(fault: Option<&Fault>, inputs: &[String], request: &Value) -> Response<Full<Bytes>> {
    let dims = request["dimensions"]
        .as_u64()
        .map_or(DIMENSIONS, |n| n as usize);
    let base64 = request["encoding_format"] == "base64";
    let mut vectors: Vec<Vec<f32>> = inputs.iter().map(|text| vector(text, dims)).collect();
    match fault {
        Some(Fault::RateLimited(after)) => {
            let headers: Vec<(&str, &str)> =
                after.map(|a| ("retry-after", a)).into_iter().collect();
            return error(429, "Rate limit reached for requests", &headers);
        }
        Some(Fault::ServerError) => return error(500, "The server had an error", &[]),
        Some(Fault::BadRequest) => return error(400, "dimensions is not supported here", &[]),
        Some(Fault::BadJson) => return reply(200, b"<html>upstream hiccup</html>".to_vec(), &[]),
        Some(Fault::WrongCount) => {
            vectors.pop();
        }
        Some(Fault::WrongDimensions) => {
            for values in &mut vectors {
                values.pop();
            }
        }
        // As numbers, the value is written in below: JSON has no infinity.
        Some(Fault::NotFinite) if base64 => vectors[0][0] = f32::INFINITY,
        Some(Fault::NotFinite) => {
            vectors[0].remove(0);
        }
        // A slow answer is paused by the caller.
        Some(Fault::Slow(_)) | None => {}
    }
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, values)| {
            json!({"object": "embedding", "index": index, "embedding": encode(values, base64)})
        })
        .collect();
    let mut body = json!({
        "object": "list",
        "data": data,
        "model": request["model"],
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    })
    .to_string();
    if matches!(fault, Some(Fault::NotFinite)) && !base64 {
        // A number beyond f32 is how a broken server sends infinity.
        body = body.replacen("\"embedding\":[", "\"embedding\":[1e39,", 1);
    }
    reply(200, body.into_bytes(), &[])
}

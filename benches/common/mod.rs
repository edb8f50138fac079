//! Helpers shared by the benchmarks (each uses some of them).

#![allow(dead_code)]

/// A 64-bit mixer (splitmix64's finaliser): deterministic pseudo-random numbers from a seed.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Peak resident memory of a running process in KiB (`VmHWM`), 0 once it is gone.
pub fn vm_hwm(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `command` to its end, sampling its peak RSS: how long it took and the peak in KiB.
/// Panics (it is a benchmark) when it cannot run or fails.
pub fn run_sampled(command: &mut std::process::Command) -> (std::time::Duration, u64) {
    let started = std::time::Instant::now();
    let mut child = command.spawn().expect("running the command");
    let mut peak = 0;
    loop {
        peak = peak.max(vm_hwm(child.id()));
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            assert!(status.success(), "the command failed: {status}");
            return (started.elapsed(), peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Text of `min` to `min + spread` bytes from a small vocabulary, different for every seed.
pub fn prose(seed: u64, min: usize, spread: usize) -> String {
    let words = [
        "river", "stone", "ledger", "harbour", "signal", "copper", "meadow", "lantern", "quarry",
        "thread", "orbit", "candle", "summit", "garden", "engine", "violet",
    ];
    let len = min + (mix(seed) % spread as u64) as usize;
    let mut text = String::with_capacity(len + 16);
    let mut x = mix(seed ^ 0x9e37);
    while text.len() < len {
        x = mix(x);
        text.push_str(words[(x % 16) as usize]);
        text.push(if x.is_multiple_of(11) { '\n' } else { ' ' });
    }
    text
}

/// An aws-sdk-s3 client of the in-process test server at `endpoint` (path-style, us-east-1).
pub fn s3_client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            access_key, secret_key, None, None, "bench",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The median of some timings (sorts them).
pub fn median(times: &mut [std::time::Duration]) -> std::time::Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// Books of the Rust toolchain whose prose makes the text corpus, in the order they are read.
pub const BOOKS: &[&str] = &[
    "book",
    "reference",
    "nomicon",
    "rust-by-example",
    "cargo",
    "edition-guide",
    "embedded-book",
    "rustc",
    "unstable-book",
    "style-guide",
    "clippy",
    "error_codes",
    "rustdoc",
    // The books hold about 8 MB of prose; the standard library's documentation pages (English
    // with code samples) make up the rest.
    "std",
    "alloc",
];

/// Page texts of the toolchain's books, up to about `want` bytes.
pub fn corpus(want: usize) -> Vec<String> {
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc --print sysroot");
    let html = std::path::PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("share/doc/rust/html");
    assert!(
        html.join("book").is_dir(),
        "no books under {}: run `rustup component add rust-docs`",
        html.display()
    );
    let mut files = Vec::new();
    for book in BOOKS {
        collect_html(&html.join(book), &mut files);
    }
    let mut pages = Vec::new();
    let mut total = 0;
    for file in files {
        let Ok(raw) = std::fs::read_to_string(&file) else {
            continue;
        };
        // mdBook repeats the table of contents on every page; the prose is in <main>.
        let body = match (raw.find("<main>"), raw.rfind("</main>")) {
            (Some(a), Some(b)) if a < b => &raw[a..b + 7],
            _ => continue,
        };
        let detected = ingestd::detect::detect(body.as_bytes(), Some("text/html"), "page.html");
        let Ok(text) = ingestd::extract::extract(body.as_bytes(), detected, None, usize::MAX)
        else {
            continue;
        };
        if text.text.len() < 500 {
            continue;
        }
        total += text.text.len();
        pages.push(text.text);
        if total >= want {
            break;
        }
    }
    assert!(total >= want, "only {:.1} MB of prose found", mb(total));
    pages
}

fn collect_html(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_html(&path, out);
        } else if path.extension().is_some_and(|e| e == "html") && !path.ends_with("print.html") {
            out.push(path);
        }
    }
}

/// The shortest of `runs` timings of `f`.
pub fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> std::time::Duration {
    (0..runs)
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Bytes as MB (10^6).
pub fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

/// MB/s of `bytes` in `took`.
pub fn rate(bytes: usize, took: std::time::Duration) -> f64 {
    mb(bytes) / took.as_secs_f64()
}

/// `text` repeated (paragraphs apart) to exactly `size` bytes, cut at a character boundary.
pub fn repeat_to(text: &str, size: usize) -> String {
    let mut out = String::with_capacity(size + text.len());
    while out.len() < size {
        out.push_str(text);
        out.push_str("\n\n");
    }
    let mut cut = size;
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out
}

/// Waits until a worker answers 200 on `/readyz` at `listen`; panics (it is a benchmark) after
/// 30 s.
pub fn wait_ready(listen: std::net::SocketAddr) {
    use std::io::{Read as _, Write as _};
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        if let Ok(mut stream) = std::net::TcpStream::connect(listen) {
            let _ = stream.write_all(b"GET /readyz HTTP/1.1\r\n\r\n");
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            if response.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("a worker did not become ready");
}

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

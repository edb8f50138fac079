//! Audio decode + resample throughput, as a multiple of real time on one core: ingestd's path
//! for transcription (symphonia decodes, the channels are mixed to mono, rubato resamples to
//! 16 kHz, pieces are cut at quiet moments) on MP3, FLAC and AAC (M4A), against
//! `ffmpeg -threads 1 -i … -ar 16000 -ac 1 -f s16le` on the same files in the same run.
//!
//! The input is ten minutes of the fixture speech repeated, at 44.1 kHz stereo (the common
//! case: music and phone recordings), encoded by ffmpeg: MP3 at 128 kbit/s, FLAC, AAC at
//! 128 kbit/s. Both sides read the file from memory or the page cache; ffmpeg's process start
//! is inside its time (a few ms against seconds of work).
//!
//! Run: `cargo bench --bench audio` (needs ffmpeg: `apt-get install ffmpeg`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::median;
use ingestd::extract::media::{self, Input, MediaLimits};

const RUNS: usize = 3;
const SECONDS: u64 = 600;

fn main() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/speech/speech.wav");
    let long = dir.path().join("long.wav");
    ffmpeg(&[
        "-stream_loop",
        "-1",
        "-i",
        source.to_str().expect("a UTF-8 path"),
        "-t",
        &SECONDS.to_string(),
        "-ar",
        "44100",
        "-ac",
        "2",
        long.to_str().expect("a UTF-8 path"),
    ]);
    println!("audio bench: {SECONDS} s of speech, 44.1 kHz stereo, one core, median of {RUNS}");
    println!(
        "{:<6} {:>10} {:>14} {:>14} {:>8}",
        "format", "MB", "ingestd ×RT", "ffmpeg ×RT", "ratio"
    );
    for (name, format, args) in [
        ("mp3", "mp3", &["-c:a", "libmp3lame", "-b:a", "128k"][..]),
        ("flac", "flac", &["-c:a", "flac"][..]),
        ("m4a", "m4a", &["-c:a", "aac", "-b:a", "128k"][..]),
    ] {
        let file = dir.path().join(format!("long.{name}"));
        let mut all = vec!["-i", long.to_str().expect("a UTF-8 path")];
        all.extend_from_slice(args);
        all.push(file.to_str().expect("a UTF-8 path"));
        ffmpeg(&all);
        let bytes = std::fs::read(&file).expect("the encoded file");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            ours.push(decode(&bytes, format));
            theirs.push(reference(&file));
        }
        let (ours, theirs) = (median(&mut ours), median(&mut theirs));
        let real_time = |took: Duration| SECONDS as f64 / took.as_secs_f64();
        println!(
            "{name:<6} {:>10.1} {:>14.0} {:>14.0} {:>7.2}×",
            bytes.len() as f64 / 1e6,
            real_time(ours),
            real_time(theirs),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
}

/// ingestd's decode + resample of `bytes`, pieces dropped as they come.
fn decode(bytes: &[u8], format: &str) -> Duration {
    let limits = MediaLimits {
        max_duration_ms: 24 * 3_600_000,
        max_metadata_bytes: 32 << 20,
    };
    let started = Instant::now();
    let input = Input::new(bytes.to_vec(), None, bytes.len() as u64);
    let Ok(probed) = media::probe(input, format, limits) else {
        panic!("{format}: the bench file should be readable");
    };
    let mut samples = 0usize;
    let decoded = probed
        .decode(600_000, |piece| {
            samples += piece.samples.len();
            Ok(())
        })
        .expect("decoding the bench file");
    let took = started.elapsed();
    assert!(
        decoded.duration_ms.abs_diff(SECONDS * 1000) < 1000,
        "{format}: decoded {} ms",
        decoded.duration_ms
    );
    assert!(samples as u64 >= (SECONDS - 1) * 16_000);
    took
}

/// ffmpeg's decode + resample to 16 kHz mono s16le, on one thread.
fn reference(file: &Path) -> Duration {
    let started = Instant::now();
    ffmpeg(&[
        "-threads",
        "1",
        "-i",
        file.to_str().expect("a UTF-8 path"),
        "-ar",
        "16000",
        "-ac",
        "1",
        "-f",
        "s16le",
        "/dev/null",
    ]);
    started.elapsed()
}

fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg (apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg {args:?}");
}

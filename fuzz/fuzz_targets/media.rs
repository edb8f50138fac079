//! Audio and video, as the pipeline reads them: bytes detected as audio or video are probed,
//! then decoded and resampled (the transcription path, without a provider). Never panics past
//! the demuxer's own catch, never runs past the duration limit, and pieces stay within their
//! size.
#![no_main]

use ingestd::detect::{self, Family};
use ingestd::extract::media::{self, Input, MediaLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: MediaLimits = MediaLimits {
    max_duration_ms: 60_000,
    max_metadata_bytes: 1 << 20,
};
const MAX_PIECE_MS: u64 = 10_000;

fuzz_target!(|data: &[u8]| {
    let detected = detect::detect(data, None, "recording");
    if !matches!(detected.format.family(), Family::Audio | Family::Video) {
        return;
    }
    let input = Input::new(data.to_vec(), None, data.len() as u64);
    let Ok(probed) = media::probe(input, detected.format.name(), LIMITS) else {
        return;
    };
    if let Some(ms) = probed.media.duration_ms {
        assert!(ms <= LIMITS.max_duration_ms);
    }
    let _ = probed.decode(MAX_PIECE_MS, |piece| {
        assert!(piece.samples.len() as u64 <= MAX_PIECE_MS * 16);
        Ok(())
    });
});

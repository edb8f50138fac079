//! The frame-rate reader, on any bytes taken as an MP4 and as a Matroska file: never panics,
//! never loops, and any rate it gives is one a video can have.
#![no_main]

use std::io::Cursor;

use ingestd::extract::frames::frame_rate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in ["mp4", "mkv"] {
        if let Some(rate) = frame_rate(&mut Cursor::new(data), format, 1 << 20) {
            assert!(rate > 0.0 && rate <= 1000.0, "{rate}");
        }
    }
});
